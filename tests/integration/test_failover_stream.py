"""Issue 4's acceptance run: a steady publish stream while the leader is kill -9'd three times."""

from __future__ import annotations

import threading
import time
from typing import Callable

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_durability import local_log
from tests.integration.test_election import agreed_leader
from wiber.errors import ClientError


def test_steady_stream_through_three_leader_kills(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(per_try_s=0.25, total_s=20)
    acked: list[tuple[float, int, bytes]] = []  # (ack time, offset, value)
    unknown: list[bytes] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set() and i < 100_000:
            value = b"v%d" % i
            try:
                ack = client.publish("stream", value)
                acked.append((time.monotonic(), ack.offset, value))
            except ClientError:
                unknown.append(value)  # outcome unknown: may or may not be stored, at most once
            i += 1

    publisher = threading.Thread(target=stream)
    publisher.start()
    failovers = []
    try:
        for _ in range(3):
            wait_for(lambda: len(acked) > 50, 10, "publishes flowing")
            leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
            before = len(acked)
            wait_for(lambda: len(acked) > before + 20, 10, "publishes before the kill")
            killed_at = time.monotonic()
            cluster.kill(leader)
            first_after = wait_for(
                lambda: next((t for t, _, _ in acked[before:] if t > killed_at), None), 10,
                "the first acknowledged publish after the kill")
            failovers.append(first_after - killed_at)
            cluster.start(leader)
            cluster.wait_up()
            acked_now = len(acked)
            wait_for(lambda: len(acked) > acked_now + 50, 10, "publishes after the restart")
    finally:
        stop.set()
        publisher.join(timeout=30)
    assert not publisher.is_alive()
    assert all(f < cluster.timing.failover_s for f in failovers), f"failovers took {failovers} s"

    final = wait_for(lambda: _same_everywhere(cluster), 20, "every node to hold the same log")
    values = [v for _, v in final]
    assert len(values) == len(set(values)), "a message was stored twice"
    where = dict((v, o) for o, v in final)
    for _, offset, value in acked:
        assert where.get(value) == offset, f"acknowledged {value!r} at {offset} is missing or moved"
    assert [o for o, _ in final] == list(range(len(final)))  # dense offsets
    stray = set(values) - {v for _, _, v in acked} - set(unknown)
    assert not stray, f"values in the log that were never published: {sorted(stray)[:5]}"


def _same_everywhere(cluster: ClusterHarness) -> list[tuple[int, bytes]] | None:
    logs = [local_log(cluster, nid, "stream") for nid in cluster.nodes]
    return logs[0] if all(log == logs[0] for log in logs) else None
