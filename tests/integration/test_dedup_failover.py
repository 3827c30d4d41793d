"""Promise 3 across failover: a PUB that committed but whose answer the client never saw, retried
with the same client_id and seq at the next leader (and after every node restarted from its
checkpoint), comes back `duplicate: true` with the first offset, and is stored once."""

from __future__ import annotations

from typing import Any, Callable

import msgpack
import zmq

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_durability import local_log
from tests.integration.test_election import agreed_leader


def _pub(zmq_socket: Callable[[int], zmq.Socket], addr: str, seq: int, data: bytes) -> dict[str, Any]:
    """One PUB with a session, over a fresh REQ. Returns: the reply (waits up to 10 s)."""
    req = zmq_socket(zmq.REQ)
    req.connect(addr)
    req.send(msgpack.packb({"op": "PUB", "topic": "once", "data": data, "client_id": "retrying-client",
                            "seq": seq}, use_bin_type=True))
    assert req.poll(10_000), f"no answer from {addr}"
    reply: dict[str, Any] = msgpack.unpackb(req.recv(), raw=False)
    return reply


def _pub_to_leader(cluster: ClusterHarness, zmq_socket: Callable[[int], zmq.Socket], seq: int,
                   data: bytes) -> dict[str, Any]:
    """The PUB sent to the current leader, again while the answer is NOT_LEADER or UNAVAILABLE."""
    for _ in range(10):
        leader, _ = wait_for(lambda: agreed_leader(cluster), 20, "a leader")
        reply = _pub(zmq_socket, cluster.addr(leader), seq, data)
        if reply["ok"] or reply["error"] not in ("NOT_LEADER", "UNAVAILABLE"):
            return reply
    raise AssertionError(f"no leader answered: {reply}")


def test_a_committed_pub_retried_after_a_leader_change_is_a_duplicate(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(3, snapshot_every=5)
    for seq in range(1, 4):
        assert _pub_to_leader(cluster, zmq_socket, seq, b"m%d" % seq)["ok"]
    first = _pub_to_leader(cluster, zmq_socket, 4, b"the one")  # committed; pretend its answer was lost
    assert first["ok"] and not first["duplicate"]
    for seq in range(5, 12):  # more entries, so checkpoints cover the session
        assert _pub_to_leader(cluster, zmq_socket, seq, b"m%d" % seq)["ok"]
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    cluster.kill(leader)

    retry = _pub_to_leader(cluster, zmq_socket, 4, b"the one")  # the client's retry, at the next leader
    assert retry["ok"] and retry["duplicate"] is True
    assert (retry["offset"], retry["index"]) == (first["offset"], first["index"])

    for nid in cluster.nodes:  # every node down at once, then back from checkpoints and the log
        cluster.kill(nid)
    cluster.start()
    cluster.wait_up()
    again = _pub_to_leader(cluster, zmq_socket, 4, b"the one")
    assert again["ok"] and again["duplicate"] is True and again["offset"] == first["offset"]
    expected = [b"m1", b"m2", b"m3", b"the one"] + [b"m%d" % s for s in range(5, 12)]
    for nid in cluster.nodes:
        wait_for(lambda nid=nid: [d for _, d in local_log(cluster, nid, "once")] == expected, 15,
                 f"{nid} to hold every PUB exactly once")
