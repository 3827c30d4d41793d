"""Promise 5 on real processes: HISTORY `local` never shows an uncommitted message."""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import msgpack
import zmq

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_election import agreed_leader
from wiber.node import Node
from wiber.raft import Role


def test_local_history_never_shows_an_uncommitted_message(cluster_factory: Callable[..., ClusterHarness],
                                                          zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """The leader appends a PUB its followers (stopped) cannot acknowledge: the entry is in its log,
    uncommitted, and a local HISTORY on that same leader must not show it."""
    cluster = cluster_factory(3, election_timeout_ms=3000, heartbeat_ms=300)  # time to look before it steps down
    leader, _ = wait_for(lambda: agreed_leader(cluster), 15, "a leader")
    client = cluster.client([leader])
    client.publish("t", b"committed")
    followers = [n for n in cluster.nodes if n != leader]
    for follower in followers:
        cluster.signal(follower, signal.SIGSTOP)
    try:
        dealer = zmq_socket(zmq.DEALER)
        dealer.connect(cluster.addr(leader))
        dealer.send_multipart([b"", msgpack.packb({"op": "PUB", "topic": "t", "data": b"uncommitted"},
                                                  use_bin_type=True)])

        def appended() -> dict[str, Any] | None:
            status = client.request_to(cluster.addr(leader), "STATUS")
            return status if status["last_index"] > status["commit_index"] else None

        status = wait_for(appended, 5, "the leader to append the PUB it cannot commit")
        page = client.request_to(cluster.addr(leader), "HISTORY", topic="t", from_offset=0, limit=100)
        assert [m["data"] for m in page["messages"]] == [b"committed"], (status, page)
        assert page["end_offset"] == 1 and page["commit_index"] < status["last_index"]
    finally:
        for follower in followers:
            cluster.signal(follower, signal.SIGCONT)


def test_a_local_history_claims_no_commit_past_what_it_shows(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """A follower that learns of a commit in the same loop turn as it answers a local HISTORY answers
    from what it has applied, so the reply's `commit_index` must not reach past that: a subscriber
    that attached there counts everything up to it as read, and waited for a live frame of a message
    the page lacked (it never came when the frame left before its SUB socket was connected: the
    first `get` of a fresh subscription waited 10 s in CI). Three in-process node loops, turned by
    hand so that the commit and the HISTORY land in one turn of the follower."""
    cluster = cluster_factory(3, start=False)
    nodes = {nid: Node(cluster.config, nid) for nid in cluster.nodes}
    ctx = zmq.Context()
    try:
        def turn(which: list[Node], done: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 20
            while not done():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                for node in which:
                    node.run_once()

        everyone = list(nodes.values())
        turn(everyone, lambda: any(n.raft.role is Role.LEADER for n in everyone), "a leader")
        leader = next(n for n in everyone if n.raft.role is Role.LEADER)
        turn(everyone, lambda: all(n.applied_index == leader.raft.commit_index > 0 for n in everyone),
             "every node to apply the leader's first entry")
        late, other = [n for n in everyone if n is not leader]
        pub = ctx.socket(zmq.REQ)
        pub.connect(leader.me.client_addr)
        pub.send(msgpack.packb({"op": "PUB", "topic": "t", "data": b"m0"}, use_bin_type=True))
        turn([leader, other], lambda: bool(pub.poll(0)), "the PUB's ok (leader and one follower)")
        index = msgpack.unpackb(pub.recv(), raw=False)["index"]
        turn([late], lambda: late.raft.last_index >= index, "the late follower to append the PUB")
        turn([leader], lambda: leader.raft.match_index(late.id) >= index, "the leader to hear its ack")
        turn([leader], lambda: bool(late.transport.raft_in.poll(0)), "the leader's next append or heartbeat")
        read = ctx.socket(zmq.REQ)
        read.connect(late.me.client_addr)
        read.send(msgpack.packb({"op": "HISTORY", "topic": "t", "from_offset": 0}, use_bin_type=True))
        wait_for(lambda: late.transport.client.poll(0), 5, "the HISTORY to wait at the late follower")
        assert late.raft.commit_index < index
        late.run_once()  # one turn: the appends commit the PUB, then the HISTORY is answered
        assert late.raft.commit_index >= index, "the commit and the read were not in one turn"
        assert read.poll(5000), "no answer to the HISTORY"
        page = msgpack.unpackb(read.recv(), raw=False)
        shown = [m["index"] for m in page["messages"]]
        assert page["commit_index"] < index or index in shown, page
    finally:
        for node in nodes.values():
            node.close()
        ctx.destroy(linger=0)
