"""The node loop under failures of its own and limits of its config (docs/design.md section 10, "no peer
input ends the loop"): a leader whose disk failed answers STORAGE to a linearizable read and stops on
SIGTERM without a traceback (its Raft core holds a Ready it can never persist, and takes no more
calls); HISTORY replies are capped by `cluster.max_reply_bytes`; the node's data directory is 0700.

The nodes run in this process, their Raft logs on the suite's crash-consistent file system
(`tests/crashfs.py`), whose `fail_after` fails the disk on demand."""

from __future__ import annotations

import errno
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from tests.conftest import ClusterHarness
from tests.crashfs import CrashFS
from wiber.node import Node
from wiber.raft import Role


def _turn_until(nodes: list[Node], done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Turn every node's loop until `done()` (a deadline, never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for node in nodes:
            node.run_once()


def _ask(nodes: list[Node], req: zmq.Socket[bytes], request: dict[str, Any]) -> dict[str, Any]:
    """Send `request` on a REQ socket connected to one of `nodes`, turning the loops until it is answered."""
    req.send(msgpack.packb(request, use_bin_type=True))
    _turn_until(nodes, lambda: bool(req.poll(0)), f"the answer to {request['op']}")
    reply = msgpack.unpackb(req.recv(), raw=False)
    assert isinstance(reply, dict)
    return reply


@pytest.fixture
def req() -> Iterator[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close()
    ctx.term()


def _fail_the_disk(nodes: list[Node], leader: Node, fs: CrashFS, req: zmq.Socket[bytes]) -> None:
    """Make `leader`'s disk full and publish: the PUB is answered STORAGE, the node stops writing."""
    req.connect(leader.me.client_addr)
    assert _ask(nodes, req, {"op": "PUB", "topic": "t", "data": b"before"})["ok"]
    fs.fail_after(0, errno.ENOSPC)
    reply = _ask(nodes, req, {"op": "PUB", "topic": "t", "data": b"disk full"})
    assert reply["error"] == "STORAGE", reply
    assert leader._storage_failure is not None and leader.raft.role is Role.LEADER


def test_a_leader_whose_disk_failed_answers_a_linearizable_read_storage(
        cluster_factory: Callable[..., ClusterHarness], req: zmq.Socket[bytes]) -> None:
    cluster = cluster_factory(1, start=False)
    fs = CrashFS()
    node = Node(cluster.config, "n1", log_fs=fs)
    try:
        _turn_until([node], lambda: node.raft.role is Role.LEADER, "the single node to lead")
        _fail_the_disk([node], node, fs, req)
        reply = _ask([node], req, {"op": "HISTORY", "topic": "t", "consistency": "linearizable"})
        assert reply["error"] == "STORAGE" and "try another node" in reply["message"], reply
        local = _ask([node], req, {"op": "HISTORY", "topic": "t"})  # what it applied is still readable
        assert [m["data"] for m in local["messages"]] == [b"before"]
        ping = _ask([node], req, {"op": "PING"})
        assert ping["ok"] and ping["role"] == "leader"
    finally:
        node.close()


def test_a_pub_held_by_the_reorder_window_when_the_disk_fails_is_answered_storage(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1, start=False, reorder_window_ms=300)
    fs = CrashFS()
    node = Node(cluster.config, "n1", log_fs=fs)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    held, plain = ctx.socket(zmq.REQ), ctx.socket(zmq.REQ)
    try:
        _turn_until([node], lambda: node.raft.role is Role.LEADER, "the single node to lead")
        for sock in (held, plain):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(node.me.client_addr)
        held.send(msgpack.packb({"op": "PUB", "topic": "t", "data": b"held", "ts": time.time()},
                                use_bin_type=True))
        _turn_until([node], lambda: node._reorder is not None and len(node._reorder) == 1, "the PUB to be held")
        fs.fail_after(0, errno.ENOSPC)
        plain.send(msgpack.packb({"op": "PUB", "topic": "t", "data": b"fails"}, use_bin_type=True))
        _turn_until([node], lambda: bool(plain.poll(0)) and bool(held.poll(0)), "both answers")
        for sock in (plain, held):
            assert msgpack.unpackb(sock.recv(), raw=False)["error"] == "STORAGE"
        _turn_until([node], lambda: time.monotonic() > node._started + 1.0, "the window to pass")
    finally:
        held.close()
        plain.close()
        ctx.term()
        node.close()


def test_a_leader_whose_disk_failed_stops_cleanly_on_sigterm(
        cluster_factory: Callable[..., ClusterHarness], req: zmq.Socket[bytes]) -> None:
    """With peers, a stopping leader hands leadership over first: not with a failed disk."""
    cluster = cluster_factory(3, start=False)
    disks = {nid: CrashFS() for nid in ("n1", "n2", "n3")}
    nodes = [Node(cluster.config, nid, log_fs=fs) for nid, fs in disks.items()]
    previous = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    try:
        _turn_until(nodes, lambda: any(n.raft.role is Role.LEADER for n in nodes), "a leader")
        leader = next(n for n in nodes if n.raft.role is Role.LEADER)
        _fail_the_disk(nodes, leader, disks[leader.id], req)
        leader.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only asks the loop to stop
        _turn_until(nodes, lambda: leader._stopping, "the SIGTERM handler to run", timeout=5)
        leader.run()  # returns, sockets closed, instead of raising out of the core
        assert leader.transport.client.closed
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        for node in nodes:
            node.close()


def test_history_replies_are_capped_by_max_reply_bytes(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1, max_reply_bytes=2500)
    client = cluster.client()
    for k in range(10):
        client.publish("big", bytes([k]) * 1000)
    page = client.request("HISTORY", topic="big", limit=100)
    assert [m["offset"] for m in page["messages"]] == [0, 1] and page["next_offset"] == 2
    one = client.request("HISTORY", topic="big", from_offset=9, limit=100)
    assert len(one["messages"]) == 1  # at least one message, whatever its size


def test_the_node_data_directory_is_private(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1, start=False)
    node = Node(cluster.config, "n1")
    try:
        for directory in (cluster.config.cluster.data_dir, cluster.config.node_data_dir("n1")):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    finally:
        node.close()
