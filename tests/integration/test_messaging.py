"""PUB / SUB / HISTORY / TOPICS across three real nodes, through raw zmq and the client library."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

import msgpack
import pytest
import zmq

from tests.conftest import ClusterHarness, raw_request, settled_subscribers, wait_for
from tests.integration.test_election import agreed_leader
from wiber.client import HEARTBEAT_SILENCE_S, Client, Timeouts


def raw(zmq_socket: Callable[[int], zmq.Socket], addr: str, **request: Any) -> dict[str, Any]:
    sock = zmq_socket(zmq.REQ)
    sock.connect(addr)
    return raw_request(sock, msgpack.packb(request, use_bin_type=True), timeout=6.0)


def test_every_op_over_raw_zmq_on_leader_and_followers(cluster_factory: Callable[..., ClusterHarness],
                                                       zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    followers = [n for n in cluster.nodes if n != leader]
    laddr = cluster.addr(leader)

    first = raw(zmq_socket, laddr, op="PUB", topic="orders", data=b"a", client_id="c1", seq=1, lamport=41)
    assert first["ok"] and first["offset"] == 0 and first["topic"] == "orders" and first["duplicate"] is False
    assert first["lamport"] > 41 and first["index"] >= 1 and first["ts"] > 0
    again = raw(zmq_socket, laddr, op="PUB", topic="orders", data=b"a", client_id="c1", seq=1)
    assert again["duplicate"] is True and again["offset"] == 0 and again["index"] == first["index"]
    batch = raw(zmq_socket, laddr, op="PUB_BATCH", topic="orders", messages=[b"b", b"c", b"d"],
                client_id="c1", seq=2)
    assert batch["offset"] == 1 and batch["count"] == 3 and batch["lamport"] > first["lamport"]

    for nid in followers:
        addr = cluster.addr(nid)
        refused = raw(zmq_socket, addr, op="PUB", topic="orders", data=b"x")
        assert refused["error"] == "NOT_LEADER"
        assert refused["leader"] == leader and refused["leader_addr"] == laddr
        lin = raw(zmq_socket, addr, op="HISTORY", topic="orders", consistency="linearizable")
        assert lin["error"] == "NOT_LEADER" and lin["leader"] == leader

    lin = raw(zmq_socket, laddr, op="HISTORY", topic="orders", consistency="linearizable")
    assert [m["data"] for m in lin["messages"]] == [b"a", b"b", b"c", b"d"]
    assert lin["end_offset"] == 4 and lin["first_offset"] == 0 and lin["next_offset"] == 4
    lamports = [m["lamport"] for m in lin["messages"]]
    assert lamports == sorted(set(lamports))
    for nid in cluster.nodes:
        addr = cluster.addr(nid)

        def caught_up(addr: str = addr) -> dict[str, Any] | None:
            h = raw(zmq_socket, addr, op="HISTORY", topic="orders")
            return h if h["end_offset"] == 4 else None

        local = wait_for(caught_up, 5, f"{nid} to apply four messages")
        assert local["messages"] == lin["messages"]  # same message at the same offset everywhere
        last = raw(zmq_socket, addr, op="HISTORY", topic="orders", last=2)
        assert [m["offset"] for m in last["messages"]] == [2, 3]
        page = raw(zmq_socket, addr, op="HISTORY", topic="orders", from_offset=1, limit=2)
        assert [m["offset"] for m in page["messages"]] == [1, 2] and page["next_offset"] == 3
        topics = raw(zmq_socket, addr, op="TOPICS")
        assert topics["topics"] == {"orders": 4}
        sub = raw(zmq_socket, addr, op="SUB", topic="orders")
        assert sub["next_offset"] == 4 and sub["pub_addr"] == cluster.config.node(nid).pub_addr
        empty = raw(zmq_socket, addr, op="HISTORY", topic="nothing-here")
        assert empty["messages"] == [] and empty["end_offset"] == 0


def test_fan_out_on_every_node_one_message_per_stored_message(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client()
    subs = settled_subscribers(cluster, zmq_socket, "feed", client)
    ack = client.publish_batch("feed", [b"m%d" % i for i in range(50)])
    assert ack.count == 50
    for sub in subs:
        got = []
        while len(got) < 50:
            assert sub.poll(5000), f"only {len(got)} of 50 fan-out messages"
            topic, body = sub.recv_multipart()
            assert topic == b"feed\0"
            got.append(msgpack.unpackb(body, raw=False))
        assert [g["offset"] for g in got] == list(range(ack.offset, ack.offset + 50))
        assert [g["data"] for g in got] == [b"m%d" % i for i in range(50)]
        assert set(got[0]) >= {"topic", "offset", "data", "lamport", "ts", "index"}
        assert not sub.poll(200)  # nothing more: one fan-out message per stored message


def follower_first(cluster: ClusterHarness) -> tuple[str, list[str], Client]:
    """Returns: a follower, the other nodes, and a Client that tries the follower first (its subscriptions
    start there; a test kills it midway and they must move on by themselves). The caller closes it."""
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    follower = next(n for n in cluster.nodes if n != leader)
    others = [n for n in cluster.nodes if n != follower]
    client = Client([cluster.addr(n) for n in (follower, *others)], Timeouts(per_try_s=0.5, total_s=10))
    return follower, others, client


def test_subscriber_on_a_killed_node_gets_everything_once_in_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    follower, others, sub_client = follower_first(cluster)
    pub_client = cluster.client(others)
    try:
        sub = sub_client.subscribe("events", from_offset=0)
        received: list[int] = []
        total = 300
        for i in range(100):
            pub_client.publish("events", b"%d" % i)
        while len(received) < 50:
            m = sub.get(timeout=10)
            assert m is not None
            received.append(int(m.data))
        cluster.kill(follower)
        for i in range(100, total):
            pub_client.publish("events", b"%d" % i)
        while len(received) < total:
            m = sub.get(timeout=10)
            assert m is not None, f"stalled after {len(received)}"
            received.append(int(m.data))
        assert received == list(range(total))
        # A catch-up may have read the rest from a live node's HISTORY before the dead node's PUB socket
        # counted as silent: the move is then made, and counted, while waiting for more.
        assert sub.get(timeout=2 * HEARTBEAT_SILENCE_S + 0.5) is None
        assert sub.failovers >= 1
        sub.close()
    finally:
        sub_client.close()


def test_slow_subscriber_flooded_past_the_hwm_still_gets_everything(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client()
    sub = client.subscribe("flood", from_offset=0)
    # Attach first (this returns nothing yet), then flood while the subscriber does not read.
    assert sub.get(timeout=0.3) is None
    sock = sub._sock
    assert sock is not None
    sock.setsockopt(zmq.RCVHWM, 10)  # a tiny queue for the next connection: the flood must overflow
    total = 3000
    for start in range(0, total, 500):
        client.publish_batch("flood", [b"%d" % i for i in range(start, start + 500)])
    got = []
    while len(got) < total:
        m = sub.get(timeout=10)
        assert m is not None, f"stalled after {len(got)}"
        got.append(int(m.data))
    assert got == list(range(total))
    sub.close()


def test_publish_whose_leader_dies_is_stored_exactly_once(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    client = cluster.client([leader] + [n for n in cluster.nodes if n != leader], per_try_s=0.5, total_s=15)
    client.publish("once", b"before")
    # SIGSTOP the leader so the next publish reaches it and hangs; kill it; the client retries elsewhere.
    cluster.signal(leader, signal.SIGSTOP)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(ack=client.publish("once", b"the-one")))
    thread.start()
    wait_for(lambda: client._seq == 2, 5, "the publish to be sent")
    cluster.kill(leader)
    thread.join(timeout=20)
    assert "ack" in result
    rest = [n for n in cluster.nodes if n != leader]
    history = cluster.client(rest).history("once", consistency="linearizable")
    datas = [m.data for m in history.messages]
    assert datas.count(b"the-one") == 1 and datas[0] == b"before"
    assert result["ack"].offset == datas.index(b"the-one")


def test_retention_keeps_exactly_what_the_limits_say(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, retention={"max_messages": 5},
                              topics={"big": {"max_messages": None, "max_bytes": 30}})
    client = cluster.client()
    for i in range(12):
        client.publish("small", b"%02d" % i)
    history = client.history("small", consistency="linearizable")
    assert [m.offset for m in history.messages] == list(range(7, 12))
    assert history.first_offset == 7 and history.end_offset == 12
    for i in range(8):
        client.publish("big", b"x" * 10)
    big = client.history("big", consistency="linearizable")
    assert len(big.messages) == 3 and big.first_offset == 5


def test_contract_errors_from_the_client_library(cluster_factory: Callable[..., ClusterHarness]) -> None:
    from wiber.errors import BadRequest, TooLarge

    cluster = cluster_factory(3, max_message_bytes=100)
    client = cluster.client()
    with pytest.raises(TooLarge):
        client.request("PUB", topic="t", data=b"x" * 101)
    with pytest.raises(BadRequest):
        client.publish_batch("t", [])
    assert client.publish("t", b"ok").offset == 0


def test_unavailable_and_session_expired_over_raw_zmq(cluster_factory: Callable[..., ClusterHarness],
                                                      zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(3, max_sessions=1, request_timeout_ms=1000)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    laddr = cluster.addr(leader)
    assert raw(zmq_socket, laddr, op="PUB", topic="s", data=b"a", client_id="A", seq=1)["ok"]
    assert raw(zmq_socket, laddr, op="PUB", topic="s", data=b"b", client_id="B", seq=1)["ok"]  # evicts A
    expired = raw(zmq_socket, laddr, op="PUB", topic="s", data=b"a", client_id="A", seq=1)
    assert expired["ok"] is False and expired["error"] == "SESSION_EXPIRED"
    assert "HISTORY" in expired["message"]
    history = raw(zmq_socket, laddr, op="HISTORY", topic="s", consistency="linearizable")
    assert [m["data"] for m in history["messages"]] == [b"a", b"b"]  # not stored a second time

    # Without a quorum the leader cannot commit: the write's outcome is unknown, UNAVAILABLE.
    followers = [n for n in cluster.nodes if n != leader]
    for nid in followers:
        cluster.signal(nid, signal.SIGSTOP)
    try:
        lost = raw(zmq_socket, laddr, op="PUB", topic="s", data=b"c", client_id="C", seq=1)
        assert lost["ok"] is False and lost["error"] in ("UNAVAILABLE", "NOT_LEADER"), lost
        read = raw(zmq_socket, laddr, op="HISTORY", topic="s", consistency="linearizable")
        assert read["ok"] is False and read["error"] in ("UNAVAILABLE", "NOT_LEADER"), read
    finally:
        for nid in followers:
            cluster.signal(nid, signal.SIGCONT)


def test_a_subscriber_far_behind_reads_the_backlog_in_bounded_memory(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    from wiber.client import MAX_BUFFERED

    cluster = cluster_factory(3)
    client = cluster.client()
    total = 25_000
    for start in range(0, total, 1000):
        client.publish_batch("backlog", [b"%d" % i for i in range(start, start + 1000)])
    sub = client.subscribe("backlog", from_offset=0)
    largest = 0
    got = []
    while len(got) < total:
        m = sub.get(timeout=10)
        assert m is not None, f"stalled after {len(got)}"
        got.append(int(m.data))
        largest = max(largest, sub.buffered)
    assert got == list(range(total))
    assert largest <= MAX_BUFFERED
    sub.close()
