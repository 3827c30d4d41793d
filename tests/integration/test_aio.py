"""wiber.aio.Client on real node processes: many tasks on one socket, exactly once through kill -9 of
the leader, NOT_LEADER following, subscriptions and consumer groups as async iterators, errors that
name the operation, a close that never hangs, CURVE.

Each test runs its coroutine with asyncio.run (no plugin needed); waits are on events or polled
conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, TypeVar

import pytest

from tests.conftest import ClusterHarness, free_port, wait_for
from tests.integration.test_election import agreed_leader
from wiber.aio import Ack, Client, Message, Timeouts
from wiber.client import HEARTBEAT_SILENCE_S
from wiber.errors import BadRequest, ClientError, UnknownGroup, WiberError

T = TypeVar("T")

TASKS = 100
PER_TASK = 100


def run(coro: Awaitable[T], limit_s: float = 50.0) -> T:
    """Run `coro` on a fresh loop, failing the test past `limit_s`."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit_s)
    return asyncio.run(bounded())


async def until(condition: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Await `condition()` until it is truthy. Returns: its value. Raises: AssertionError past `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.02)


def test_100_tasks_publish_10000_through_a_leader_kill_9_and_a_subscriber_gets_each_once_in_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """The done-when of issue 17: 100 tasks publish 10,000 numbered messages through one client while an
    ``async for`` reads them; the leader is killed with -9 halfway. Every message is stored once, and
    the subscriber sees each once, in offset order, each task's messages in the task's own order."""
    cluster = cluster_factory(3)
    leader, _term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    total = TASKS * PER_TASK

    async def main() -> tuple[list[Ack], list[Message], int, int]:
        # The leader first: the subscription listens to it too, so both have to move when it dies.
        addrs = [cluster.addr(leader), *(cluster.addr(nid) for nid in cluster.nodes if nid != leader)]
        async with Client(addrs, Timeouts(per_try_s=1.0, total_s=30.0)) as client:
            acks: list[Ack] = []
            halfway = asyncio.Event()
            received: list[Message] = []
            subscription = client.subscribe("stress", from_offset=0)

            async def read() -> None:
                async for message in subscription:
                    received.append(message)
                    if len(received) == total:
                        return

            async def publish(task: int) -> None:
                for k in range(PER_TASK):
                    acks.append(await client.publish("stress", f"{task}:{k}"))
                    if len(acks) >= total // 2:
                        halfway.set()

            async def kill_leader() -> None:
                await halfway.wait()
                await asyncio.to_thread(cluster.kill, leader)

            reader = asyncio.create_task(read())
            await asyncio.gather(kill_leader(), *(publish(task) for task in range(TASKS)))
            await asyncio.wait_for(reader, 30)
            return acks, received, client.failovers, subscription.failovers

    acks, received, failovers, subscription_failovers = run(main())
    assert not cluster.nodes[leader].running()
    assert failovers >= 1, "the publishes never left the killed leader"
    assert subscription_failovers >= 1, "the subscription never left the killed leader"
    assert sorted(ack.offset for ack in acks) == list(range(total)), "each publish stored exactly once"
    assert [m.offset for m in received] == list(range(total)), "each message once, in offset order"
    seen: dict[int, list[int]] = defaultdict(list)
    for message in received:
        task, k = map(int, message.data.split(b":"))
        seen[task].append(k)
    assert seen == {task: list(range(PER_TASK)) for task in range(TASKS)}, "each task's messages in its order"
    stored = {m.offset: m.data for m in received}
    assert all(stored[ack.offset] == received[ack.offset].data for ack in acks)


def test_not_leader_is_followed_to_the_leader(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, _term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    followers = [nid for nid in cluster.nodes if nid != leader]

    async def main() -> tuple[list[Ack], dict[str, Any], int]:
        # The followers come first: the first write meets NOT_LEADER and moves to the leader it names.
        addrs = [cluster.addr(nid) for nid in (*followers, leader)]
        async with Client(addrs, Timeouts(per_try_s=1.0, total_s=10.0)) as client:
            acks = list(await asyncio.gather(*(client.publish("follow", b"%d" % i) for i in range(50))))
            return acks, await client.status(), client.failovers

    acks, status, failovers = run(main())
    assert sorted(a.offset for a in acks) == list(range(50))
    assert failovers == 1, "one NOT_LEADER moved every request in flight at once"
    assert status["role"] == "leader" and status["node"] == leader


def test_consumer_fetch_and_ack_through_async_iteration(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)

    async def main() -> tuple[list[tuple[str, int, bytes]], dict[str, Any], list[Any]]:
        async with Client(cluster.addrs(), Timeouts(per_try_s=1.0, total_s=10.0)) as client:
            for topic in ("jobs.a", "jobs.b"):
                await asyncio.gather(*(client.publish(topic, b"%s-%d" % (topic.encode(), i)) for i in range(10)))
            consumer = await client.consumer("workers", "jobs.*", from_start=True)
            assert consumer.created
            got: list[tuple[str, int, bytes]] = []
            async for message in consumer:
                assert message.delivery == 1
                assert await message.ack()
                got.append((message.topic, message.offset, message.data))
                if len(got) == 20:
                    break
            again = await consumer.fetch(10, timeout=0.3)
            info = await until(lambda: _settled(consumer), 10, "the acks to be applied")
            return got, info, again

    got, info, again = run(main())
    assert sorted(got) == sorted((t, i, b"%s-%d" % (t.encode(), i)) for t in ("jobs.a", "jobs.b") for i in range(10))
    for topic in ("jobs.a", "jobs.b"):
        assert [o for t, o, _ in got if t == topic] == list(range(10)), "each topic in offset order"
    assert again == [] and info["pending"] == 0 and info["lag"] == 0


def test_a_deleted_group_is_not_recreated_by_a_members_fetch(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """A recreated group would start at the end and skip what was published since the delete; the
    asyncio member follows the sync one's rule: UnknownGroup after a short grace."""
    cluster = cluster_factory(3)

    async def main() -> bool:
        async with Client(cluster.addrs(), Timeouts(per_try_s=1.0, total_s=10.0)) as client:
            consumer = await client.consumer("gone", "jobs.*", from_start=True)
            assert await consumer.delete()
            await client.publish("jobs.a", b"published after the delete")
            with pytest.raises(UnknownGroup):
                await consumer.fetch(10, timeout=0.3)
            groups = (await client.request("GROUPS"))["groups"]
            return "gone" in groups

    assert not run(main()), "the fetch brought the deleted group back"


async def _settled(consumer: Any) -> dict[str, Any] | None:
    info: dict[str, Any] = await consumer.info()
    return info if info["pending"] == 0 and info["lag"] == 0 else None


def test_pattern_subscription_follows_every_matching_topic(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)

    async def main() -> list[tuple[str, int]]:
        async with Client(cluster.addrs(), Timeouts(per_try_s=1.0, total_s=10.0)) as client:
            await client.publish("orders.eu", b"before")  # exists at the start: followed from its end
            subscription = client.subscribe("orders.*")
            assert await subscription.get(timeout=0.3) is None  # attached, nothing new yet
            for k in range(5):
                await client.publish("orders.eu", b"eu%d" % k)
                await client.publish("orders.us", b"us%d" % k)  # new since the start: from 0
                await client.publish("orders.eu.x", b"not matched")
            got: list[tuple[str, int]] = []
            async for message in subscription:
                got.append((message.topic, message.offset))
                if len(got) == 10:
                    break
            return got

    got = run(main())
    assert [o for t, o in got if t == "orders.eu"] == [1, 2, 3, 4, 5]
    assert [o for t, o in got if t == "orders.us"] == [0, 1, 2, 3, 4]


def test_a_subscriber_whose_loop_is_held_longer_than_the_heartbeat_silence_does_not_fail_over(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    publisher = cluster.client()
    publisher.publish("slow", b"m0")

    async def main() -> int:
        async with Client(cluster.addrs(), Timeouts(per_try_s=1.0, total_s=10.0)) as client:
            subscription = client.subscribe("slow", from_offset=0)
            first = await subscription.get(timeout=10)
            assert first is not None and first.data == b"m0"
            for away in range(3):
                # Another task holds the event loop (a blocking call) for twice the heartbeat silence while
                # the node stays up and publishing goes on: that is the behaviour under test, not a wait.
                time.sleep(2 * HEARTBEAT_SILENCE_S)
                publisher.publish("slow", f"m{away + 1}".encode())
                message = await subscription.get(timeout=10)
                assert message is not None and message.data == f"m{away + 1}".encode()
            return subscription.failovers

    assert run(main()) == 0, "a healthy node was abandoned because the subscriber's loop was held"


def test_errors_name_the_operation_and_are_wiber_errors(cluster_factory: Callable[..., ClusterHarness]) -> None:
    nobody = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        async with Client(nobody, Timeouts(per_try_s=0.2, total_s=0.8)) as client:
            for call in (lambda: client.publish("orders", b"x"), lambda: client.history("orders"),
                         lambda: client.topics(), lambda: client.request_to(nobody[0], "PING")):
                try:
                    await call()
                except WiberError as exc:
                    errors.append(exc)
            with pytest.raises(BadRequest):
                await client.publish("orders.*", b"patterns are for subscriptions")
        async with Client(["tcp://127.0.0.1"], Timeouts(per_try_s=0.2, total_s=0.5)) as client:
            try:
                await client.ping()  # no port: libzmq refuses the endpoint
            except WiberError as exc:
                errors.append(exc)
        return errors

    errors = run(main())
    assert len(errors) == 5 and all(isinstance(e, ClientError) for e in errors)
    assert "publish to 'orders'" in str(errors[0])
    assert "history of 'orders'" in str(errors[1])
    assert str(errors[2]).startswith("TOPICS")
    assert str(errors[3]).startswith("PING")
    assert "cannot connect" in str(errors[4])


def test_close_ends_requests_subscriptions_and_consumers_without_hanging(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)

    async def main() -> tuple[float, list[BaseException | None], bool]:
        client = Client(cluster.addrs(), Timeouts(per_try_s=1.0, total_s=30.0))
        await client.publish("quiet", b"x")
        consumer = await client.consumer("idle", "quiet")  # new: starts at the end, nothing to deliver
        subscription = client.subscribe("quiet")
        assert await subscription.get(timeout=0.3) is None  # attached, waiting on the socket

        async def iterate(source: Any) -> None:
            async for _ in source:
                raise AssertionError("nothing was published")

        iterations = [asyncio.create_task(iterate(subscription)), asyncio.create_task(iterate(consumer))]
        for node in cluster.nodes:  # every node stopped: a publish now waits for an answer that never comes
            cluster.signal(node, 19)  # SIGSTOP
        pending = asyncio.create_task(client.publish("quiet", b"never answered"))
        await until(lambda: _true(client.in_flight > 0), 5, "the publish to be in flight")
        started = time.monotonic()
        await client.close()
        outcomes = await asyncio.wait_for(asyncio.gather(pending, *iterations, return_exceptions=True), 5)
        took = time.monotonic() - started
        return took, list(outcomes), subscription.closed

    took, outcomes, closed = run(main())
    try:
        assert took < 2.0, f"close and the endings it caused took {took:.2f} s"
        assert isinstance(outcomes[0], ClientError) and "publish to 'quiet'" in str(outcomes[0])
        assert outcomes[1:] == [None, None], "the async for loops ended"
        assert closed
    finally:
        for node in cluster.nodes:
            cluster.signal(node, 18)  # SIGCONT, so the harness's kill reaps them at once


async def _true(value: bool) -> bool:
    return value


def test_curve_keys_secure_every_socket(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, security=[{"name": "app", "publish": [">"], "subscribe": [">"]}])

    async def main() -> tuple[list[int], list[int]]:
        # The nodes' keys from the config's keys_dir, for their client and PUB ports alike.
        async with Client.from_config(cluster.config, cluster.keys["app"], Timeouts(per_try_s=1.0, total_s=10.0)) \
                as client:
            acks = await asyncio.gather(*(client.publish("secret", b"%d" % i) for i in range(20)))
            got = []
            async for message in client.subscribe("secret", from_offset=0):
                got.append(message.offset)
                if len(got) == 20:
                    break
            return sorted(a.offset for a in acks), got

    offsets, got = run(main())
    assert offsets == got == list(range(20))
