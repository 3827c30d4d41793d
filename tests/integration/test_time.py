"""docs/design.md section 5 on real processes: clock sync under skew, ts and lamport order, causality, reordering."""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_election import agreed_leader
from wiber.client import Client, Timeouts
from wiber.clock import SystemClock

SKEWS_MS = {"n1": 2000, "n2": -1500, "n3": 0}


def start_skewed(cluster: ClusterHarness, skews_ms: dict[str, int]) -> None:
    for nid, skew in skews_ms.items():
        cluster.start(nid, env={"WIBER_CLOCK_SKEW_MS": str(skew)})
    cluster.wait_up()


def cluster_time_spread(cluster: ClusterHarness) -> float | None:
    """Returns: the spread (s) of every node's PING `time`, each corrected to one local instant, less
    what the measurement itself cannot tell apart (half of each of the two slowest round trips);
    None when a node did not answer."""
    corrected = []
    halves = []
    for nid in cluster.nodes:
        t_send = time.time()
        pong = cluster.ping(nid, timeout=0.5)
        t_recv = time.time()
        if pong is None:
            return None
        corrected.append(pong["time"] - (t_send + t_recv) / 2)  # node time minus local time
        halves.append((t_recv - t_send) / 2)
    return max(0.0, max(corrected) - min(corrected) - sum(sorted(halves)[-2:]))


def test_skewed_nodes_converge_to_one_cluster_time(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, start=False)
    start_skewed(cluster, SKEWS_MS)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    bound = cluster.timing.clock_error_s
    wait_for(lambda: (s := cluster_time_spread(cluster)) is not None and s < bound, 10,
             f"every node's PING time to agree within {bound * 1000:g} ms")
    for nid in cluster.nodes:
        st = cluster.client([nid]).status()
        if st["role"] != "leader":
            assert st["clock"]["samples"] > 0
            assert abs(st["clock"]["error_ms"]) < bound * 1000


def test_ts_never_goes_back_and_lamport_goes_up_across_a_leader_3_5_s_behind(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, start=False)
    start_skewed(cluster, {"n1": 0, "n2": 0, "n3": -3500})
    client = cluster.client(per_try_s=0.5, total_s=15)
    for i in range(20):
        client.publish("clock", b"%d" % i)
    # Move leadership until n3, whose own clock is 3.5 s behind, leads: kill -9 whichever other node
    # leads (the survivors then elect n3 or the other one), restart it, and try again.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
        if leader == "n3":
            break
        cluster.kill(leader)
        wait_for(lambda leader=leader: agreed_leader(cluster, [n for n in cluster.nodes if n != leader]),
                 10, "a new leader")
        cluster.start(leader)
        cluster.wait_up()
        client.publish("clock", b"between")
    assert leader == "n3", "n3 never became leader"
    for i in range(20):
        client.publish("clock", b"after-%d" % i)
    history = client.history("clock", limit=1000, consistency="linearizable")
    ts = [m.ts for m in history.messages]
    lamports = [m.lamport for m in history.messages]
    assert ts == sorted(ts), "ts went back"
    assert all(b > a for a, b in zip(lamports, lamports[1:])), "lamport did not go up"


def test_causality_gives_the_reader_who_publishes_a_larger_lamport(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    a, b = cluster.client(), cluster.client()
    for i in range(30):  # A's messages push the log's lamports far past anything B has seen
        a.publish("a-topic", b"noise-%d" % i)
    a_ack = a.publish("chat", b"question")
    seen = b.history("chat", consistency="linearizable")
    assert [m.data for m in seen.messages] == [b"question"]
    b_ack = b.publish("other-topic", b"answer")
    assert b_ack.lamport > a_ack.lamport


def _publish_with_network_delays(cluster: ClusterHarness, topic: str, seed: int) -> list[tuple[float, bytes]]:
    """Four clients with skewed clocks publish; each message waits a random delay (< 60 ms) between
    being stamped with its send time and leaving, as a slow network would. Returns: (ts, data) sent.

    The window (800 ms) must cover the whole delay, simulated plus real: on a 2-core machine busy with
    the rest of the suite a request can wait hundreds of ms for CPU, so the window is generous and
    each client first connects to the leader and syncs its clock."""
    sent: list[tuple[float, bytes]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(k: int, skew_s: float) -> None:
        rng = random.Random(seed * 10 + k)
        with Client(cluster.addrs(), Timeouts(per_try_s=1.0, total_s=15), clock=SystemClock(skew_s)) as client:
            try:
                client.publish("warm-up", b"connect to the leader first")
                client.sync_clock(samples=8)
                for i in range(12):
                    ts = client.now()
                    data = b"c%d-%d" % (k, i)
                    time.sleep(rng.uniform(0.0, 0.06))  # the simulated network delay, not a wait
                    client.publish(topic, data, ts=ts)
                    with lock:
                        sent.append((ts, data))
            except BaseException as exc:  # surfaced to the test below
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(k, skew)) for k, skew in enumerate((2.0, -1.5, 0.5, 0.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return sent


def _inversions(sent: list[tuple[float, bytes]], logged: list[bytes]) -> int:
    position = {data: k for k, data in enumerate(logged)}
    by_send = [data for _, data in sorted(sent)]
    order = [position[d] for d in by_send]
    return sum(1 for i in range(len(order)) for j in range(i + 1, len(order)) if order[i] > order[j])


def test_reorder_window_puts_the_log_in_sending_order(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """What arrives within the window is logged in `ts` order; what arrives after its slot (a
    request held up longer than the window: under the whole suite, a client thread can wait most
    of a second for the CPU) is stored at once, flagged `late` and counted, never dropped."""
    on = cluster_factory(3, reorder_window_ms=800)
    sent = _publish_with_network_delays(on, "ordered", seed=1)
    client = on.client()
    messages = client.history("ordered", limit=1000, consistency="linearizable").messages
    logged = [m.data for m in messages]
    assert sorted(logged) == sorted(d for _, d in sent)
    late = {m.data for m in messages if m.late}
    on_time = [s for s in sent if s[1] not in late]
    assert _inversions(on_time, [d for d in logged if d not in late]) == 0, (  # the whole story, if it fails
        f"sent (ts, data) in send order: {sorted(on_time)}; logged (data, index, lamport, late): "
        f"{[(m.data, m.index, m.lamport, m.late) for m in messages]}")
    assert len(late) <= len(sent) // 4, f"{len(late)} of {len(sent)} late: the order check would prove little"
    status: dict[str, Any] = client.status()
    assert status["reorder"]["window_ms"] == 800 and status["reorder"]["late"] == len(late)

    off = cluster_factory(3)
    sent_off = _publish_with_network_delays(off, "unordered", seed=1)
    logged_off = [m.data for m in off.client().history("unordered", limit=1000, consistency="linearizable").messages]
    assert sorted(logged_off) == sorted(d for _, d in sent_off)
    assert _inversions(sent_off, logged_off) > 0, "without the window the log should follow arrival order"


def test_a_message_past_its_slot_is_stored_at_once_and_flagged_late(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, reorder_window_ms=200)
    client = cluster.client()
    client.publish("slots", b"on time", ts=client.now())  # an unsynced client's first publish has no ts
    client.publish("slots", b"from the past", ts=client.now() - 5.0)  # its slot passed 4.8 s ago
    messages = client.history("slots", consistency="linearizable").messages
    assert [(m.data, m.late) for m in messages] == [(b"on time", False), (b"from the past", True)]
    assert client.status()["reorder"]["late"] == 1
