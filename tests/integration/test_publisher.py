"""The pipelined, auto-batching Publisher against three real nodes.

What these tests hold the Publisher (and the broker behind it) to:

* every future resolves, to the offset its message really got: per topic, offsets are dense and
  in the order messages were handed in, and HISTORY holds exactly what was handed in;
* with plain PUBs (batch_size 1) pipelined, the same;
* exactly once and in order while the leader is SIGKILLed mid-stream (the resends carry the same
  seqs; the new leader's sessions answer those already stored);
* a PUB_BATCH is all or none, also when the leader dies with batches in its log;
* fan-out sends one message per stored message of a batch, each once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from tests.conftest import ClusterHarness, settled_subscribers, wait_for
from tests.integration.test_election import agreed_leader
from wiber.client import Ack, Client, Message, Timeouts
from wiber.errors import WiberError
from wiber.publisher import Publisher, PublishFuture

#: Generous per try on a loaded 2-core machine: a resend is safe, but a storm of them is slow.
PUBLISHER_TIMEOUTS = Timeouts(per_try_s=1.0, total_s=30.0)


def read_all(client: Client, topic: str) -> list[Message]:
    """Returns: every kept message of `topic`, paging a linearizable HISTORY up to its end offset."""
    messages: list[Message] = []
    offset = 0
    while True:
        history = client.history(topic, from_offset=offset, limit=1000, consistency="linearizable")
        messages.extend(history.messages)
        if history.next_offset >= history.end_offset or not history.messages:
            return messages
        offset = history.next_offset


def acks_of(futures: list[PublishFuture]) -> list[Ack]:
    """Returns: each future's Ack; fails the test naming the first future that is unresolved or failed."""
    acks = []
    for k, future in enumerate(futures):
        assert future.done(), f"future {k} of {len(futures)} is unresolved"
        assert future.exception() is None, f"future {k} failed: {future.exception()!r}"
        acks.append(future.result(timeout=0))
    return acks


def check_stream(client: Client, handed: dict[str, list[bytes]],
                 futures: dict[str, list[PublishFuture]]) -> None:
    """Every future acknowledged at offsets 0, 1, 2, ... in hand-in order; HISTORY is what was handed in."""
    for topic, datas in handed.items():
        acks = acks_of(futures[topic])
        assert [a.offset for a in acks] == list(range(len(datas))), f"{topic}: offsets not dense, in order"
        assert all(a.topic == topic for a in acks)
        lamports = [a.lamport for a in acks]
        assert lamports == sorted(lamports), f"{topic}: Lamport stamps go back"
        stored = read_all(client, topic)
        assert [m.offset for m in stored] == list(range(len(datas)))
        if [m.data for m in stored] != datas:
            wrong = next(k for k, (m, d) in enumerate(zip(stored, datas)) if m.data != d)
            raise AssertionError(f"{topic}: HISTORY differs from what was handed in at offset {wrong}: "
                                 f"{stored[wrong].data!r} != {datas[wrong]!r}")


def stream(publisher: Publisher, topics: list[str], total: int,
           on_handed: Callable[[int], None] | None = None
           ) -> tuple[dict[str, list[bytes]], dict[str, list[PublishFuture]]]:
    """Hand `total` messages to `publisher`, round-robin over `topics`, then flush.

    Returns: per topic, the payloads in hand-in order and their futures.
    """
    handed: dict[str, list[bytes]] = {t: [] for t in topics}
    futures: dict[str, list[PublishFuture]] = {t: [] for t in topics}
    for i in range(total):
        topic = topics[i % len(topics)]
        data = b"%s-%06d" % (topic.encode(), i)
        handed[topic].append(data)
        futures[topic].append(publisher.publish(topic, data))
        if on_handed is not None:
            on_handed(i)
    publisher.flush(timeout=40.0)
    return handed, futures


@pytest.mark.timeout(60)
def test_batched_stream_over_three_topics_is_dense_ordered_and_complete(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    with Publisher(cluster.addrs(), batch_size=500, window=50, timeouts=PUBLISHER_TIMEOUTS) as publisher:
        handed, futures = stream(publisher, ["alpha", "beta", "gamma"], 20_000)
        assert publisher.in_flight == 0
    check_stream(cluster.client(total_s=20.0), handed, futures)


@pytest.mark.timeout(60)
def test_plain_pubs_pipelined_are_dense_ordered_and_complete(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    with Publisher(cluster.addrs(), batch_size=1, window=200, timeouts=PUBLISHER_TIMEOUTS) as publisher:
        handed, futures = stream(publisher, ["one", "two"], 3_000)
        assert publisher.requests == 3_000  # one request (a plain PUB) per message
    check_stream(cluster.client(total_s=20.0), handed, futures)


@pytest.mark.timeout(60)
def test_leader_killed_mid_stream_every_message_once_in_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    rest = [n for n in cluster.nodes if n != leader]
    total = 30_000
    killed_at: list[int] = []

    def kill_once(i: int) -> None:
        # A third of the way in, with requests in flight to the leader: SIGKILL it.
        if not killed_at and i >= total // 3 and publisher.in_flight > 0:
            cluster.kill(leader)
            killed_at.append(i)

    addrs = [cluster.addr(leader)] + [cluster.addr(n) for n in rest]
    with Publisher(addrs, batch_size=200, window=50, timeouts=PUBLISHER_TIMEOUTS) as publisher:
        handed, futures = stream(publisher, ["left", "right"], total, on_handed=kill_once)
        assert killed_at, "the leader was never killed"
        assert publisher.resends > 0, "no request was resent: the kill did not hit the stream"
        assert publisher.failovers > 0
    client = cluster.client(rest, total_s=20.0)
    check_stream(client, handed, futures)

    # Restarted, the killed node catches up to the same message at the same offset.
    cluster.start(leader)
    cluster.wait_up()
    back = cluster.client([leader], total_s=20.0)
    for topic, datas in handed.items():

        def caught_up(topic: str = topic, end: int = len(datas)) -> bool:
            return back.history(topic, last=1, limit=1).end_offset == end

        wait_for(caught_up, 20, f"{leader} to catch up on {topic}")
        page = back.history(topic, from_offset=len(datas) - 1000, limit=1000)
        assert [m.data for m in page.messages] == datas[-1000:]


@pytest.mark.timeout(60)
def test_a_batch_is_stored_all_or_none_when_the_leader_dies(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """Batches in every state at the kill (committed, in the log only, in flight) end complete or absent."""
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    rest = [n for n in cluster.nodes if n != leader]
    topic, size = "atomic", 300

    def batch(source: bytes, b: int) -> list[bytes]:
        return [b"%s%03d-%04d" % (source, b, i) for i in range(size)]

    # A Client publishing batches (with retries, same seq) across the kill, in its own thread.
    results: list[tuple[int, Ack | BaseException]] = []
    stop = threading.Event()

    def client_loop() -> None:
        with Client([cluster.addr(leader)] + [cluster.addr(n) for n in rest],
                    Timeouts(per_try_s=0.5, total_s=20.0)) as client:
            b = 0
            while not stop.is_set():
                try:
                    results.append((b, client.publish_batch(topic, batch(b"c", b))))
                except WiberError as exc:  # recorded: such a batch must be complete or absent
                    results.append((b, exc))
                b += 1

    thread = threading.Thread(target=client_loop, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(results) >= 3, 20, "three client batches before the kill")
        # Raw batches straight to the leader with no session and no retry: whatever the kill
        # leaves of them is what the log held. Kill as soon as the first one is answered, while
        # the rest are committed, in the log only, or not yet read.
        raw = zmq_socket(zmq.DEALER)
        raw.connect(cluster.addr(leader))
        raw_batches = 100
        for b in range(raw_batches):
            raw.send_multipart([b"", msgpack.packb({"op": "PUB_BATCH", "topic": topic, "messages": batch(b"r", b),
                                                    "id": b}, use_bin_type=True)])
        assert raw.poll(20_000), "no raw batch was answered"
        cluster.kill(leader)
        done_at_kill = len(results)
        wait_for(lambda: len(results) >= done_at_kill + 3, 30, "three client batches after the kill")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()

    stored = read_all(cluster.client(rest, total_s=20.0), topic)
    runs: dict[bytes, list[tuple[int, int]]] = {}  # batch tag -> [(offset, position in batch)]
    for m in stored:
        tag, position = m.data.split(b"-")
        runs.setdefault(tag, []).append((m.offset, int(position)))
    for tag, items in runs.items():
        first = items[0][0]
        assert items == [(first + i, i) for i in range(size)], (
            f"batch {tag!r} stored partly or out of order: {len(items)} of {size} messages")
    acked = 0
    for b, outcome in results:
        tag = b"c%03d" % b
        if isinstance(outcome, Ack):
            acked += 1
            assert tag in runs, f"acknowledged batch {tag!r} is missing"
            assert runs[tag][0][0] == outcome.offset and outcome.count == size
    assert acked >= 6
    # One connection's requests are proposed in order and a new leader keeps a prefix of the old
    # one's log: the raw batches kept are the first k sent, k >= 1 (the one answered before the kill).
    raw_kept = [b for b in range(raw_batches) if b"r%03d" % b in runs]
    assert raw_kept == list(range(len(raw_kept))) and raw_kept, f"raw batches kept: {raw_kept}"
    offsets = [m.offset for m in stored]
    assert offsets == list(range(len(offsets)))


@pytest.mark.timeout(60)
def test_fan_out_delivers_each_message_of_a_batch_once(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client()
    subs = settled_subscribers(cluster, zmq_socket, "feed", client)

    total = 250
    with Publisher(cluster.addrs(), batch_size=100, window=10, linger_s=5.0,
                   timeouts=PUBLISHER_TIMEOUTS) as publisher:
        futures = [publisher.publish("feed", b"fan-%03d" % i) for i in range(total)]
        publisher.flush(timeout=20.0)
        assert publisher.requests == 3  # three PUB_BATCH requests: 100 + 100 + 50
    acks = acks_of(futures)
    first = acks[0].offset
    assert [a.offset for a in acks] == list(range(first, first + total))

    for k, sub in enumerate(subs):
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15.0
        while len(got) < total:
            assert sub.poll(max(1, int((deadline - time.monotonic()) * 1000))), (
                f"node {k + 1}: only {len(got)} of {total} fan-out messages")
            topic, body = sub.recv_multipart()
            assert topic == b"feed\0"
            got.append(msgpack.unpackb(body, raw=False))
        assert [g["offset"] for g in got] == [a.offset for a in acks]
        assert [g["data"] for g in got] == [b"fan-%03d" % i for i in range(total)]
        assert [g["index"] for g in got] == [a.index for a in acks]
        assert not sub.poll(300), f"node {k + 1}: a fan-out message more than was stored"


@pytest.mark.timeout(60)
def test_a_callback_may_publish_and_every_message_keeps_its_hand_in_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """A callback that publishes (acknowledge-then-publish) loses nothing and reorders nothing.

    A tiny window and a batch closed by its byte size make `publish` wait for a reply while it
    holds a batch: the callback of that reply publishes to the same topic there and then.
    """
    cluster = cluster_factory(3)
    handed: list[bytes] = []
    futures: list[PublishFuture] = []

    # Single-threaded: a callback then runs inside publish, so `handed` is in the publisher's order
    # (with the I/O thread, see test_publisher_thread.py).
    with Publisher(cluster.addrs(), batch_size=1000, window=1, linger_s=5.0, max_message_bytes=64,
                   timeouts=PUBLISHER_TIMEOUTS, io_thread=False) as publisher:

        def hand_in(data: bytes, callback: Callable[[PublishFuture], None] | None) -> None:
            handed.append(data)
            futures.append(publisher.publish("chain", data, callback=callback))

        def follow_up(future: PublishFuture) -> None:
            hand_in(b"after-%06d" % future.result(timeout=0).offset, None)

        for i in range(600):
            hand_in(b"main-%04d-" % i + b"x" * 54, follow_up)  # 64 bytes: 16 fill a batch
        publisher.flush(timeout=30.0)
        publisher.flush(timeout=30.0)  # the follow-ups handed in by the last callbacks
    acks = acks_of(futures)
    assert len(handed) == 1200
    assert sorted(a.offset for a in acks) == list(range(1200))
    assert [m.data for m in read_all(cluster.client(total_s=20.0), "chain")] == handed


def test_a_connection_ending_between_the_frames_of_a_request_loses_nothing_and_keeps_the_order(
        cluster_factory: Callable[..., ClusterHarness], monkeypatch: pytest.MonkeyPatch) -> None:
    """libzmq refuses a request's second frame (and rolls the first back) when its connection ends
    between them: the request stays in flight and is resent in order with the others."""
    from wiber import zmqcalls

    cluster = cluster_factory(1)
    real_send = zmqcalls.send
    held: list[bytes] = []
    refusals = [2, 5]  # the sends of requests 3 and 6 are refused at their second frame

    def send(sock: Any, frame: Any, flags: int = 0) -> Any:
        if flags & zmq.SNDMORE:
            held.append(frame)  # sent with the body, as libzmq does with a message's parts
            return None
        if not held:  # a single-frame send (a Client's REQ): untouched
            return real_send(sock, frame, flags)
        first = held.pop()
        if refusals and refusals[0] == send.calls:  # type: ignore[attr-defined]
            refusals.pop(0)
            send.calls += 1  # type: ignore[attr-defined]
            raise zmq.Again()
        send.calls += 1  # type: ignore[attr-defined]
        real_send(sock, first, flags | zmq.SNDMORE)
        return real_send(sock, frame, flags)

    send.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(zmqcalls, "send", send)
    with Publisher(cluster.addrs(), window=10, batch_size=1, timeouts=Timeouts(per_try_s=0.5, total_s=20.0)) as pub:
        futures = [pub.publish("split", b"m%d" % k) for k in range(10)]
        pub.flush(timeout=20)
    assert not refusals  # both refusals happened
    assert [f.result().offset for f in futures] == list(range(10))
    assert [m.data for m in read_all(cluster.client(), "split")] == [b"m%d" % k for k in range(10)]
