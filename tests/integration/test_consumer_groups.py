"""Durable consumer groups on three real nodes (docs/design.md section 11, docs/consumers.md).

What the issue's done-when asks, each on real node processes:

1. a member `kill -9`ed and restarted three times while 1,000 messages are published loses none, and
   with the exactly-once pattern (publish under `publish_key`, then ack) the output holds each once;
2. two members share a topic: each message goes to exactly one; a killed member's unacked
   messages go to the other after ack_wait_ms, with delivery count 2;
3. the group's position (acked, pending with its member and count, never delivered) survives
   `kill -9` of the leader and then of every node.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.conftest import REPO, ClusterHarness, wait_for
from tests.integration.test_cli import LineReader
from tests.integration.test_election import agreed_leader
from wiber.client import Client, ConsumedMessage, Consumer
from wiber.errors import GroupConflict, UnknownGroup


class Worker:
    """A `tests.integration.consumer_worker` process and the lines it has said so far."""

    def __init__(self, cluster: ClusterHarness, *args: str) -> None:
        addrs = [arg for addr in cluster.addrs() for arg in ("--addr", addr)]
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.integration.consumer_worker", *addrs, *args],
                                     stdout=subprocess.PIPE, cwd=str(REPO))
        self.reader = LineReader(self.proc.stdout)
        self.said: list[list[str]] = []
        self.killed = False

    def read(self) -> list[list[str]]:
        """Returns: every line said so far, split in words (reads what has arrived, without waiting)."""
        while not self.killed and self.reader.any_line():
            *lines, self.reader.buffer = self.reader.buffer.split(b"\n")
            self.said.extend(line.decode().split() for line in lines)
        return self.said

    def kill(self) -> None:
        """kill -9 the worker and reap it, then take in what it said before (its pipe is closed after:
        its descriptor number goes to the next pipe opened)."""
        if self.killed:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.read()
        self.killed = True
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Every worker a test starts; all are killed at teardown."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def publish_in_background(client: Client, topic: str, count: int) -> threading.Thread:
    """Returns: a started thread publishing `topic`-ordered messages ``0 .. count-1`` on its own Client."""
    def run() -> None:
        for i in range(count):
            client.publish(topic, f"m{i}".encode())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def group_info(client: Client, group: str) -> dict[str, int] | None:
    """Returns: the group as GROUPS lists it, or None when the answering node does not know it."""
    return client.groups().get(group)


def fetch_all(consumer: Consumer, count: int, batch: int = 50, timeout: float = 20.0) -> list[ConsumedMessage]:
    """Returns: exactly `count` messages fetched by `consumer` (not acked), within `timeout`."""
    got: list[ConsumedMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} messages within {timeout:g} s"
        got.extend(consumer.fetch(min(batch, count - len(got)), timeout=1.0))
    assert len(got) == count, f"fetched {len(got)} messages, asked for {count}"
    return got


def test_a_member_killed_three_times_loses_nothing_and_its_output_holds_each_message_once(
        cluster_factory: object, workers: list[Worker]) -> None:
    cluster: ClusterHarness = cluster_factory(3)  # type: ignore[operator]
    client = cluster.client(total_s=30.0)
    client.consumer("jobs-group", "jobs", ack_wait_ms=1000, from_start=True)
    publisher = publish_in_background(cluster.client(total_s=30.0), "jobs", 1000)
    rng = random.Random(16)
    killed_while_publishing = []
    for kill in range(3):
        worker = Worker(cluster, "--group", "jobs-group", "--pattern", "jobs", "--out", "jobs.done",
                        "--ack-wait-ms", "1000", "--batch", "20")
        workers.append(worker)
        goal = len([line for w in workers for line in w.read() if line[0] == "acked"]) + rng.randint(20, 80)
        wait_for(lambda w=worker, goal=goal: len([line for x in workers for line in x.read() if line[0] == "acked"])
                 >= goal, 30, f"worker {kill + 1} to ack its share")
        # Kill it in the middle of a message (fetched or published, not yet acked) when that comes soon.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and worker.read()[-1][0] == "acked":
            pass
        killed_while_publishing.append(publisher.is_alive())
        worker.kill()
    last = Worker(cluster, "--group", "jobs-group", "--pattern", "jobs", "--out", "jobs.done",
                  "--ack-wait-ms", "1000", "--batch", "20")
    workers.append(last)
    assert killed_while_publishing == [True, True, True], "the kills should land while the 1,000 are published"
    publisher.join(timeout=60)
    assert not publisher.is_alive(), "publishing 1,000 messages took over a minute"
    wait_for(lambda: client.topics().get("jobs.done", 0) >= 1000 and group_info(client, "jobs-group") is not None
             and group_info(client, "jobs-group")["pending"] == 0  # type: ignore[index]
             and group_info(client, "jobs-group")["lag"] == 0, 60,  # type: ignore[index]
             "the group to ack every message")
    last.kill()

    output: list[bytes] = []
    while len(output) < client.topics()["jobs.done"]:
        output.extend(m.data for m in client.history("jobs.done", from_offset=len(output), limit=1000).messages)
    copies = Counter(output)
    assert set(copies) == {f"jobs:{i}".encode() for i in range(1000)}, "a message is missing from the output"
    assert max(copies.values()) == 1, f"published twice: {[k for k, v in copies.items() if v > 1][:10]}"
    said = [line for worker in workers for line in worker.said]
    removed = Counter(int(line[2]) for line in said if line[0] == "acked" and line[3] == "1")
    assert max(removed.values()) == 1, "an ack removed the same delivery twice"
    redelivered = [line for line in said if line[0] == "fetched" and int(line[3]) > 1]
    assert redelivered, "no kill left a message unacked: the test did not exercise redelivery"
    duplicates = [line for line in said if line[0] == "published" and line[3] == "1"]
    # What a killed worker published but did not ack was published again under the same key.
    assert {(line[1], line[2]) for line in duplicates} <= {(line[1], line[2]) for line in redelivered}


def test_two_members_share_a_topic_and_a_killed_members_messages_go_to_the_other(
        cluster_factory: object, workers: list[Worker]) -> None:
    cluster: ClusterHarness = cluster_factory(3)  # type: ignore[operator]
    publisher = cluster.client()
    alice = cluster.client().consumer("shared", "tasks", ack_wait_ms=1000, from_start=True, member="alice")
    bob = cluster.client().consumer("shared", "tasks", ack_wait_ms=1000, from_start=True, member="bob")
    for i in range(200):
        publisher.publish("tasks", f"t{i}".encode())
    got: dict[str, list[ConsumedMessage]] = {"alice": [], "bob": []}
    deadline = time.monotonic() + 30
    while len(got["alice"]) + len(got["bob"]) < 200:
        assert time.monotonic() < deadline, f"stalled at {len(got['alice'])} + {len(got['bob'])} of 200"
        for member in (alice, bob):
            batch = member.fetch(17, timeout=0.2)
            assert member.ack(batch) == len(batch)
            got[member.member].extend(batch)
    offsets = {name: [m.offset for m in messages] for name, messages in got.items()}
    assert offsets["alice"] and offsets["bob"], "one member got nothing"
    assert not set(offsets["alice"]) & set(offsets["bob"]), "a message went to both members"
    assert sorted(offsets["alice"] + offsets["bob"]) == list(range(200))
    assert {m.delivery for messages in got.values() for m in messages} == {1}
    for messages in got.values():  # first deliveries of one topic follow offset order
        assert [m.offset for m in messages] == sorted(m.offset for m in messages)

    for i in range(200, 230):
        publisher.publish("tasks", f"t{i}".encode())
    doomed = Worker(cluster, "--group", "shared", "--pattern", "tasks", "--member", "carol",
                    "--ack-wait-ms", "1000", "--hold", "30")
    workers.append(doomed)
    wait_for(lambda: any(line[0] == "holding" for line in doomed.read()), 20, "carol to hold 30 messages")
    held = sorted(int(line[2]) for line in doomed.said if line[0] == "fetched")
    assert held == list(range(200, 230))
    doomed.kill()
    taken_over = fetch_all(alice, 30)
    assert sorted(m.offset for m in taken_over) == held
    assert {m.delivery for m in taken_over} == {2}, "carol's messages should come back as second deliveries"
    assert alice.ack(taken_over) == 30
    wait_for(lambda: group_info(publisher, "shared") == {
        "pattern": "tasks", "ack_wait_ms": 1000, "from_start": True, "topics": 1, "pending": 0, "lag": 0},
        10, "the group to show nothing pending")


def test_a_groups_position_survives_kill_9_of_the_leader_and_of_all_nodes(cluster_factory: object) -> None:
    cluster: ClusterHarness = cluster_factory(3, snapshot_every=20)  # type: ignore[operator]
    client = cluster.client(total_s=30.0)
    for start in range(0, 300, 100):
        client.publish_batch("ledger", [f"l{i}".encode() for i in range(start, start + 100)])
    consumer = client.consumer("positions", "ledger", ack_wait_ms=600_000, from_start=True, member="m1")
    first = fetch_all(consumer, 100)
    assert [m.offset for m in first] == list(range(100))
    assert consumer.ack(first) == 100
    held = fetch_all(consumer, 10)  # pending, not acked: must survive too
    assert [m.offset for m in held] == list(range(100, 110))

    leader = wait_for(lambda: agreed_leader(cluster), 15, "a leader")[0]
    cluster.kill(leader)
    after_failover = fetch_all(consumer, 20)
    assert [(m.offset, m.delivery) for m in after_failover] == [(o, 1) for o in range(110, 130)]
    assert consumer.ack(after_failover) == 20
    cluster.start(leader)
    cluster.wait_up()
    expected = {"pattern": "ledger", "ack_wait_ms": 600_000, "from_start": True, "topics": 1, "pending": 10,
                "lag": 170}
    for node in cluster.nodes:  # every node applied it before all of them die
        wait_for(lambda n=node: cluster.client([n]).groups().get("positions") == expected, 15,
                 f"{node} to apply the group's position")

    for node in cluster.nodes:
        cluster.kill(node)
    cluster.start()
    cluster.wait_up()
    wait_for(lambda: agreed_leader(cluster), 15, "a leader after restarting every node")
    for node in cluster.nodes:
        wait_for(lambda n=node: cluster.client([n]).groups().get("positions") == expected, 15,
                 f"{node} to restore the group's position")
    assert consumer.nak(held) == 10, "the held deliveries should still belong to m1"
    again = fetch_all(consumer, 10)
    assert [(m.offset, m.delivery) for m in again] == [(o, 2) for o in range(100, 110)]
    rest = fetch_all(consumer, 170, batch=100)
    assert [(m.offset, m.delivery) for m in rest] == [(o, 1) for o in range(130, 300)]
    assert consumer.ack([*again, *rest]) == 180
    assert consumer.fetch(10, timeout=0.3) == []
    assert client.groups()["positions"]["pending"] == 0


def test_a_redelivered_message_republished_under_its_key_is_stored_once(cluster_factory: object) -> None:
    cluster: ClusterHarness = cluster_factory(3)  # type: ignore[operator]
    client = cluster.client()
    client.publish("in", b"payload")
    consumer = client.consumer("copy", "in", from_start=True)
    (message,) = consumer.fetch(1, timeout=5)
    first = client.publish("out", b"derived", dedup=message.publish_key)
    assert not first.duplicate
    assert message.nak()  # as if the member died before its ack: the group delivers it again
    (again,) = consumer.fetch(1, timeout=5)
    assert (again.offset, again.delivery, again.publish_key) == (0, 2, message.publish_key)
    second = client.publish("out", b"derived", dedup=again.publish_key)
    assert second.duplicate and (second.offset, second.index) == (first.offset, first.index)
    assert again.ack()
    assert [m.data for m in client.history("out").messages] == [b"derived"]


def test_group_settings_errors_and_deletion(cluster_factory: object) -> None:
    cluster: ClusterHarness = cluster_factory(3)  # type: ignore[operator]
    client = cluster.client()
    client.publish("orders.eu", b"old")
    consumer = client.consumer("g", "orders.*")  # from the end: the old message is not for it
    assert consumer.created and not client.consumer("g", "orders.*").created
    with pytest.raises(GroupConflict, match="pattern 'orders.\\*'"):
        client.consumer("g", "orders.>")
    assert consumer.fetch(10, timeout=0.2) == []
    client.publish("orders.us", b"new")  # a topic created after the group: delivered from offset 0
    client.publish("orders.eu", b"newer")
    got = consumer.fetch(10, timeout=5)
    got += consumer.fetch(10, timeout=1) if len(got) < 2 else []
    assert sorted((m.topic, m.offset, m.data) for m in got) == [("orders.eu", 1, b"newer"), ("orders.us", 0, b"new")]
    assert consumer.delete() and not consumer.delete()
    with pytest.raises(UnknownGroup):
        client.request("FETCH", group="g", member="m")
    with pytest.raises(UnknownGroup):  # a member's fetch does not bring a deleted group back
        consumer.fetch(1, timeout=0.2)
    assert "g" not in client.groups()


def test_an_idle_fetch_waits_without_log_entries_and_wakes_for_a_new_message(cluster_factory: object) -> None:
    cluster: ClusterHarness = cluster_factory(3)  # type: ignore[operator]
    client = cluster.client()
    consumer = client.consumer("idle", "quiet.>", member="waiter")
    leader = wait_for(lambda: agreed_leader(cluster), 15, "a leader")[0]
    leader_client = cluster.client([leader])
    before = leader_client.status()["last_index"]
    for _ in range(3):
        assert consumer.fetch(10, timeout=0.3) == []
    assert leader_client.status()["last_index"] == before, "an empty FETCH should not be written to the log"
    assert leader_client.status()["consumers"] == {"groups": 1, "pending": 0, "waiting_fetches": 0}

    got: list[ConsumedMessage] = []
    waiting = threading.Thread(target=lambda: got.extend(consumer.fetch(10, timeout=20)), daemon=True)
    waiting.start()
    wait_for(lambda: leader_client.status()["consumers"]["waiting_fetches"] == 1, 5, "the fetch to wait on the leader")
    cluster.client().publish("quiet.here", b"wake up")
    waiting.join(timeout=20)
    assert [(m.topic, m.offset, m.data, m.delivery) for m in got] == [("quiet.here", 0, b"wake up", 1)]


def test_a_fetch_larger_than_max_reply_bytes_still_delivers_every_message(cluster_factory: object) -> None:
    cluster: ClusterHarness = cluster_factory(3, max_reply_bytes=1000)  # type: ignore[operator]
    client = cluster.client()
    payloads = [bytes([i]) * 400 for i in range(10)]
    client.publish_batch("big", payloads)
    consumer = client.consumer("big-readers", "big", from_start=True)
    items = client.request("FETCH", group="big-readers", member="raw", max=10)["messages"]
    with_data = [item for item in items if "data" in item]
    assert 1 <= len(with_data) < 10, "the reply should stop carrying data at max_reply_bytes"
    assert [item["offset"] for item in items] == list(range(10)) and all(item["delivery"] == 1 for item in items)
    got = consumer.fetch(10, timeout=5)  # the raw member holds 0..9: nothing for this one until acked
    assert got == []
    client.request("NAK", group="big-readers", member="raw", refs=[["big", o] for o in range(10)])
    got = consumer.fetch(10, timeout=5)
    assert [(m.offset, m.data, m.delivery) for m in got] == [(o, payloads[o], 2) for o in range(10)]
