"""The Publisher's background I/O thread (the default), against three real nodes.

What these tests hold it to:

* a message published and then left alone (no further call of any kind) is stored within
  `linger_s` plus a margin, and its future resolves by itself;
* `close()` alone sends and acknowledges everything handed in;
* `publish` from several threads at once: every message stored once, each thread's in the order
  it handed them in;
* callbacks run on the I/O thread, in resolution order; one may publish, wait for another future
  and flush without a deadlock; one that raises is logged and stops nothing;
* `result` and `flush` wait from other threads; `close` from a callback is refused, and after
  `close` a publish is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_election import agreed_leader
from tests.integration.test_publisher_order import stored
from wiber.client import Timeouts
from wiber.errors import ClientError
from wiber.publisher import Publisher, PublishFuture

TIMEOUTS = Timeouts(per_try_s=1.0, total_s=30.0)


@pytest.mark.timeout(60)
def test_a_message_left_alone_is_stored_within_its_linger(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    client = cluster.client(total_s=10.0)
    linger_s = 0.3
    with Publisher(cluster.addrs(), batch_size=1000, linger_s=linger_s, timeouts=TIMEOUTS) as publisher:
        publisher.publish("warmup", b"w").result(timeout=20)  # the leader found, the connection made
        handed_at = time.monotonic()
        future = publisher.publish("alone", b"left alone")
        # No call on the publisher from here on: only HISTORY, from another client.
        wait_for(lambda: client.history("alone", from_offset=0).messages, linger_s + 3.0,
                 "the message to be stored without any further call", interval=0.01)
        took = time.monotonic() - handed_at
        assert took >= linger_s * 0.9, f"stored after {took:.3f} s: the batch did not wait for its linger"
        wait_for(future.done, 3.0, "its future to resolve by itself", interval=0.01)
        assert future.result(timeout=0).offset == 0
    assert stored(client, "alone") == [b"left alone"]


@pytest.mark.timeout(60)
def test_close_alone_sends_and_acknowledges_everything(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    publisher = Publisher(cluster.addrs(), batch_size=100, linger_s=5.0, window=5, timeouts=TIMEOUTS)
    futures = [publisher.publish("closing", b"%05d" % i) for i in range(2_050)]
    publisher.close()  # no flush first: the last partial batch would wait 5 s for its linger
    assert all(f.done() and f.exception() is None for f in futures)
    assert [f.result(timeout=0).offset for f in futures] == list(range(2_050))
    assert stored(cluster.client(total_s=20.0), "closing") == [b"%05d" % i for i in range(2_050)]
    with pytest.raises(ClientError, match="closed"):
        publisher.publish("closing", b"late")


@pytest.mark.timeout(90)
def test_publish_from_several_threads_keeps_each_threads_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    threads_n, each = 4, 5_000
    with Publisher(cluster.addrs(), batch_size=200, window=20, timeouts=TIMEOUTS) as publisher:
        futures: dict[int, list[PublishFuture]] = {}

        def hand_in(k: int) -> None:
            futures[k] = [publisher.publish("mixed", b"%d-%05d" % (k, i)) for i in range(each)]

        threads = [threading.Thread(target=hand_in, args=(k,)) for k in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        publisher.flush(timeout=60)
        for k in range(threads_n):
            assert all(f.done() and f.exception() is None for f in futures[k]), f"thread {k}"
            offsets = [f.result(timeout=0).offset for f in futures[k]]
            assert offsets == sorted(offsets), f"thread {k}: its acknowledgements go back"
    datas = stored(cluster.client(total_s=20.0), "mixed")
    assert len(datas) == threads_n * each
    for k in range(threads_n):
        assert [d for d in datas if d.startswith(b"%d-" % k)] == [b"%d-%05d" % (k, i) for i in range(each)]


@pytest.mark.timeout(60)
def test_callbacks_run_on_the_io_thread_and_may_publish_wait_and_flush(
        cluster_factory: Callable[..., ClusterHarness], caplog: pytest.LogCaptureFixture) -> None:
    cluster = cluster_factory(3)
    ran_on: set[str] = set()
    follow_ups: list[PublishFuture] = []
    waited: list[int] = []
    with Publisher(cluster.addrs(), batch_size=50, window=4, timeouts=TIMEOUTS) as publisher:

        def acknowledged(future: PublishFuture) -> None:
            ran_on.add(threading.current_thread().name)
            offset = future.result(timeout=0).offset
            follow = publisher.publish("follow", b"%05d" % offset)  # never waits on the I/O thread
            follow_ups.append(follow)
            if offset % 100 == 0:
                waited.append(follow.result(timeout=20).offset)  # drives the I/O from inside the callback
            if offset == 500:
                publisher.flush(timeout=20)
            if offset == 700:
                raise ValueError("a callback that raises")

        with caplog.at_level(logging.ERROR, logger="wiber.client.publisher"):
            futures = [publisher.publish("main", b"%05d" % i, callback=acknowledged) for i in range(1_000)]
            publisher.flush(timeout=30)
            publisher.flush(timeout=30)  # the follow-ups handed in by the last callbacks
        assert all(f.done() and f.exception() is None for f in futures + follow_ups)
        closed_inside: list[BaseException] = []

        def close_inside(future: PublishFuture) -> None:
            try:
                publisher.close()
            except RuntimeError as exc:
                closed_inside.append(exc)

        publisher.publish("main", b"close", callback=close_inside)
        publisher.flush(timeout=20)
        assert len(closed_inside) == 1 and "callback" in str(closed_inside[0])
    assert len(ran_on) == 1 and ran_on.pop().startswith("wiber-publisher-")
    assert len(waited) == 10
    assert any("a callback raised" in r.getMessage() for r in caplog.records)
    client = cluster.client(total_s=20.0)
    assert stored(client, "main")[:1_000] == [b"%05d" % i for i in range(1_000)]
    assert sorted(stored(client, "follow")) == [b"%05d" % i for i in range(1_000)]


@pytest.mark.timeout(60)
def test_result_and_flush_wait_from_other_threads(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    with Publisher(cluster.addrs(), batch_size=10, linger_s=0.05, timeouts=TIMEOUTS) as publisher:
        futures = [publisher.publish("waits", b"%d" % i) for i in range(100)]
        offsets: list[int] = []
        flushed: list[bool] = []
        waiters = [threading.Thread(target=lambda: offsets.append(futures[-1].result(timeout=20).offset)),
                   threading.Thread(target=lambda: (publisher.flush(timeout=20), flushed.append(True)))]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join(timeout=30)
        assert offsets == [99] and flushed == [True]
        with pytest.raises(TimeoutError):
            publisher.publish("waits", b"x").result(timeout=0)  # not yet: the batch lingers 50 ms
