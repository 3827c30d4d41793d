"""No peer input ends a node's loop, and a flood of peer frames is taken a bounded slice per turn
(issue 15's "no peer input ends the loop"). One real node loop in this process, its raft port fed
by a plain DEALER as an attacker on an insecure loopback cluster would."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from tests.conftest import ClusterHarness, turn_until
from wiber.node import Node
from wiber.raft import Role
from wiber.storage.transfer.frames import MARKER


@pytest.fixture
def leader(cluster_factory: Callable[..., ClusterHarness]) -> Iterator[Node]:
    cluster = cluster_factory(1, start=False)
    node = Node(cluster.config, "n1")
    try:
        turn_until(node, lambda: node.raft.role is Role.LEADER, "the single node to lead")
        yield node
    finally:
        node.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def _dealer(ctx: zmq.Context[Any], addr: str) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    return sock


def _publish(node: Node, ctx: zmq.Context[Any], data: bytes) -> dict[str, Any]:
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(node.me.client_addr)
        req.send(msgpack.packb({"op": "PUB", "topic": "t", "data": data}, use_bin_type=True))
        turn_until(node, lambda: bool(req.poll(0)), "the PUB's reply")
        reply: dict[str, Any] = msgpack.unpackb(req.recv(), raw=False)
        return reply
    finally:
        req.close()


def test_a_peer_frame_whose_handling_raises_is_dropped_counted_and_the_node_serves_on(
        leader: Node, ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug that a frame reaches (here: the snapshot receiver raising) costs that frame, not the node."""
    calls: list[bytes] = []

    def broken(frame: bytes, *args: object) -> list[Any]:
        calls.append(frame)
        raise KeyError("a bug input reached")

    monkeypatch.setattr(leader.shipping, "on_frame", broken)
    attacker = _dealer(ctx, leader.me.raft_addr)
    attacker.send_multipart([MARKER + b"\x93\x01\xa2n9\x00", MARKER + b"\x93\x01\xa2n9\x01"])
    turn_until(leader, lambda: leader.transport.stats.peer_frames_failed == 2, "both frames to fail")
    assert len(calls) == 2  # the second frame of the message was still handled after the first failed
    assert "whose handling failed" in caplog.text and "KeyError" in caplog.text
    assert _publish(leader, ctx, b"after")["ok"]
    assert leader.clients.on_status({}, None, None)["transport"]["peer_frames_failed"] == 2  # type: ignore[arg-type]


def test_a_storage_error_from_peer_input_still_stops_the_loop(
        leader: Node, ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard keeps the node's own failures deliberate: its disk failing is not swallowed."""
    from wiber.storage import StorageFailure

    def disk_gone(frame: bytes, *args: object) -> list[Any]:
        raise StorageFailure("the node's disk is gone")

    monkeypatch.setattr(leader.shipping, "on_frame", disk_gone)
    attacker = _dealer(ctx, leader.me.raft_addr)  # held: a collected socket with linger 0 sends nothing
    attacker.send(MARKER + b"\x93\x01\xa2n9\x00")
    with pytest.raises(StorageFailure):
        turn_until(leader, lambda: False, "the storage failure", timeout=5.0)


def test_peer_messages_are_taken_a_bounded_number_of_bytes_per_turn(leader: Node, ctx: zmq.Context[Any]) -> None:
    attacker = _dealer(ctx, leader.me.raft_addr)
    sent = [bytes([i]) * 1000 for i in range(5)]
    for body in sent:
        attacker.send(body)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < len(sent):
        assert time.monotonic() < deadline, f"only {len(got)} of {len(sent)} messages arrived"
        leader.transport.raft_in.poll(100)
        batch = leader.transport.recv_peers(100, max_bytes=1)
        assert len(batch) <= 1  # the first message reaches the cap: the rest waits for the next turn
        got.extend(frames[0] for _, frames in batch)
    assert got == sent
    attacker.send(b"x" * 100)
    assert leader.transport.raft_in.poll(5000)
    assert len(leader.transport.recv_peers(100)) == 1  # the default cap lets ordinary traffic through


def test_a_peer_frame_above_the_nodes_frame_limit_is_refused_by_the_socket(
        leader: Node, ctx: zmq.Context[Any]) -> None:
    """libzmq drops the connection of a frame above MAXMSGSIZE before buffering it."""
    limit = leader.transport.raft_in.getsockopt(zmq.MAXMSGSIZE)
    assert limit == leader._peer_frame_limit
    flooder = _dealer(ctx, leader.me.raft_addr)
    flooder.send(b"\x00" * (limit + 1))
    honest = _dealer(ctx, leader.me.raft_addr)
    honest.send(b"small")
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while b"small" not in got:
        assert time.monotonic() < deadline, "the small frame never arrived"
        leader.transport.raft_in.poll(100)
        got.extend(frames[0] for _, frames in leader.transport.recv_peers(100))
    assert all(len(frame) <= limit for frame in got)
