"""Promise 5 on real processes: HISTORY `local` never shows an uncommitted message."""

from __future__ import annotations

import signal
from typing import Any, Callable

import msgpack
import zmq

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_election import agreed_leader


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
