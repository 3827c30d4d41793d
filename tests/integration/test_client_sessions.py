"""The sync Client as docs/design.md section 12 has it, on real nodes: shared by threads, a fixed client_id
whose seqs survive a restart, errors naming the operation called, the cluster's size limit, no clock
sync before a first publish."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import ClusterHarness, free_port
from wiber.client import HEARTBEAT_SILENCE_S, Client, Timeouts
from wiber.errors import ClientError, TooLarge


def test_one_client_shared_by_20_threads_stores_each_publish_once(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=30.0)
    errors: list[BaseException] = []
    offsets: list[int] = []

    def publish_50(thread: int) -> None:
        try:
            for i in range(50):
                offsets.append(client.publish("shared", f"{thread}-{i}".encode()).offset)
        except BaseException as exc:  # reported below: a raw ZMQError here was the bug
            errors.append(exc)

    threads = [threading.Thread(target=publish_50, args=(t,)) for t in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert sorted(offsets) == list(range(1000))
    stored = []
    while len(stored) < 1000:
        stored.extend(client.history("shared", from_offset=len(stored), limit=1000).messages)
    for thread in range(20):  # each thread's messages in the order it published them
        mine = [m.data for m in stored if m.data.startswith(f"{thread}-".encode())]
        assert mine == [f"{thread}-{i}".encode() for i in range(50)]


def test_a_fixed_client_id_continues_its_seqs_after_a_restart(
        cluster_factory: Callable[..., ClusterHarness], tmp_path: Path) -> None:
    cluster = cluster_factory(3)
    seq_file = tmp_path / "producer.seq"
    with pytest.raises(ValueError, match="needs seq_file"):
        Client(cluster.addrs(), client_id="producer-1")
    first = Client(cluster.addrs(), Timeouts(0.5, 10.0), client_id="producer-1", seq_file=seq_file)
    acks = [first.publish("ledger", f"before-{i}".encode()) for i in range(3)]
    unknown_seq = first.reserve_seq()  # recorded with a message whose publish the process did not live to see
    first.close()
    again = Client(cluster.addrs(), Timeouts(0.5, 10.0), client_id="producer-1", seq_file=seq_file)  # restarted
    fresh = again.publish("ledger", b"after")
    assert not fresh.duplicate and fresh.offset == 3, "a restarted client's new message must not pass for a retry"
    retried = again.publish("ledger", b"recorded", dedup=(again.client_id, unknown_seq))
    twice = again.publish("ledger", b"recorded", dedup=(again.client_id, unknown_seq))
    assert not retried.duplicate and twice.duplicate and twice.offset == retried.offset
    assert [m.data for m in again.history("ledger").messages] == [b"before-0", b"before-1", b"before-2", b"after",
                                                                  b"recorded"]
    assert [a.offset for a in acks] == [0, 1, 2]
    again.close()


def test_errors_name_the_operation_called_and_the_first_publish_needs_no_clock_sync() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead], Timeouts(per_try_s=0.1, total_s=0.3)) as client:
        with pytest.raises(ClientError, match=r"^publish to 'orders': no answer from tcp://127\.0\.0\.1"):
            client.publish("orders", b"x")
        with pytest.raises(ClientError, match=r"^history of 'orders': no answer"):
            client.history("orders")


def test_the_size_limit_is_the_clusters(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, max_message_bytes=4 << 20)
    client = cluster.client()
    assert client.publish("big", b"x" * (2 << 20)).offset == 0  # over the old fixed 1 MiB check
    client.ping()
    assert client.limits.max_message_bytes == 4 << 20
    with pytest.raises(TooLarge, match="4194304"):
        client.publish("big", b"x" * ((4 << 20) + 1))
    small = cluster.client()
    small.publish("big", b"first")  # no PING: a publish's reply does not carry the limit
    assert small.history("big", from_offset=0).messages[0].data == b"x" * (2 << 20)


def test_a_subscriber_away_longer_than_the_heartbeat_silence_does_not_fail_over(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    publisher = cluster.client()
    publisher.publish("slow", b"m0")
    subscription = cluster.client().subscribe("slow", from_offset=0)
    first = subscription.get(timeout=10)
    assert first is not None and first.data == b"m0"
    for away in range(3):
        # The subscriber is busy elsewhere (a starved or slow thread) for twice the heartbeat silence,
        # while its node stays up and publishing goes on: that is the behaviour under test, not a wait.
        time.sleep(2 * HEARTBEAT_SILENCE_S)
        publisher.publish("slow", f"m{away + 1}".encode())
        message = subscription.get(timeout=10)
        assert message is not None and message.data == f"m{away + 1}".encode()
    assert subscription.failovers == 0, "a healthy node was abandoned because the subscriber was away"
    subscription.close()
