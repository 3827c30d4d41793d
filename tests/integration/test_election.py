"""Raft in real node processes: one leader, failover after kill -9, CheckQuorum, transfer on SIGTERM."""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import msgpack
import zmq

from tests.conftest import ClusterHarness, wait_for


def agreed_leader(cluster: ClusterHarness, among: list[str] | None = None) -> tuple[str, int] | None:
    """Returns: (leader id, term) when every node in `among` answers PING naming the same leader,
    and that leader says it is leader; else None."""
    ids = among or [i for i, n in cluster.nodes.items() if n.running()]
    pongs: dict[str, dict[str, Any]] = {}
    for nid in ids:
        pong = cluster.ping(nid, timeout=0.3)
        if pong is None:
            return None
        pongs[nid] = pong
    leaders = {p["leader"] for p in pongs.values()}
    if len(leaders) != 1:
        return None
    leader = leaders.pop()
    if leader is None or leader not in pongs or pongs[leader]["role"] != "leader":
        return None
    return leader, int(pongs[leader]["term"])


def test_three_nodes_elect_one_leader_named_by_all(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "one leader named by every node")
    roles = {nid: cluster.ping(nid)["role"] for nid in cluster.nodes}  # type: ignore[index]
    assert list(roles.values()).count("leader") == 1
    assert roles[leader] == "leader"
    assert term >= 1
    status = cluster.client([leader]).status()
    assert status["commit_index"] >= 1  # the leader's no-op of its term is committed
    # A majority committed it; the last follower's ack may still be on its way on a loaded machine.
    client = cluster.client([leader])
    wait_for(lambda: all(p["match_index"] >= 1 for p in client.status()["peers"].values()), 10,
             "every follower to hold the leader's no-op")


def test_kill_9_of_the_leader_elects_a_new_one_within_promise_6(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    failovers = []
    for _ in range(2):
        leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
        # Every node must have seen this leader recently (its lease is what the others wait out).
        killed_at = time.monotonic()
        cluster.kill(leader)
        rest = [nid for nid in cluster.nodes if nid != leader]
        new_leader, new_term = wait_for(lambda: agreed_leader(cluster, rest), 10, "a new leader")
        failovers.append(time.monotonic() - killed_at)
        assert new_leader != leader and new_term > term
        cluster.start(leader)
        cluster.wait_up()
    assert all(f < cluster.timing.failover_s for f in failovers), f"failover took {failovers} s"


def test_leader_cut_off_from_both_followers_steps_down(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    followers = [nid for nid in cluster.nodes if nid != leader]
    for nid in followers:
        cluster.signal(nid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()

        def stepped_down() -> bool:
            pong = cluster.ping(leader, timeout=0.3)
            return pong is not None and pong["role"] != "leader"

        wait_for(stepped_down, 5, f"{leader} to step down without a quorum")
        # CheckQuorum: within about an election timeout, plus the poll granularity.
        assert time.monotonic() - stopped_at < cluster.timing.step_down_s
    finally:
        for nid in followers:
            cluster.signal(nid, signal.SIGCONT)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader again after SIGCONT")


def test_a_deposed_leader_answers_its_waiting_publisher_at_once(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """A write parked on a leader that loses its quorum is answered UNAVAILABLE when it steps down
    (not when the request timeout, set to a minute here, runs out): the outcome is unknown."""
    cluster = cluster_factory(3, request_timeout_ms=60_000)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    followers = [nid for nid in cluster.nodes if nid != leader]
    dealer = zmq_socket(zmq.DEALER)
    dealer.connect(cluster.addr(leader))
    for nid in followers:
        cluster.signal(nid, signal.SIGSTOP)
    try:
        dealer.send_multipart([b"", msgpack.packb({"op": "PUB", "topic": "t", "data": b"x", "id": 1})])
        assert dealer.poll(10_000), "no answer within 10 s of losing the quorum"
        reply = msgpack.unpackb(dealer.recv_multipart()[-1], raw=False)
        assert reply["ok"] is False and reply["error"] == "UNAVAILABLE" and reply["id"] == 1
        assert "lost leadership" in reply["message"]
    finally:
        for nid in followers:
            cluster.signal(nid, signal.SIGCONT)


def test_sigterm_to_the_leader_hands_leadership_over(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    rest = [nid for nid in cluster.nodes if nid != leader]
    assert cluster.stop(leader, timeout=5) == 0
    new_leader, new_term = wait_for(lambda: agreed_leader(cluster, rest), 10, "a new leader")
    assert new_term > term
    # The new leader campaigned because it was told to (TimeoutNow), not because its timer ran out.
    assert "TimeoutNow" in cluster.nodes[new_leader].log_path.read_text()
    assert "handing leadership over" in cluster.nodes[leader].log_path.read_text()
