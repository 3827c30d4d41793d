"""Promise 1's fsync half, on the node's real loop: a PUB's `ok` never leaves before the fsync that
makes its entry durable. `kill -9` keeps the page cache, so only a simulated power loss shows it:
the node's Raft log runs on the suite's crash-consistent file system (`tests/crashfs.py`), which
forgets at `crash()` every write not fsynced. Publish, wait for the `ok`, cut the power, reopen the
log: the acknowledged entry must be there. With the fsync deleted from the node's persist step, or
made to happen after the reply, the same check fails (issue 20's "show it" for the fsync).

The last test generalizes it to every frame that vouches for a disk: three real node loops in one
process, each Raft log on its own CrashFS, and at the instant any append ack, granted vote or PUB
`ok` is handed to a socket, what a power loss would leave of its sender's log must already hold it.
An fsync merely moved to the next loop turn passes the first tests and fails this one."""

from __future__ import annotations

import os
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from tests.conftest import ClusterHarness, turn_until
from tests.crashfs import CrashFS
from wiber.node import Node
from wiber.raft import Role
from wiber.raft.messages import AppendEntriesReply, Message, RequestVoteReply
from wiber.raft.wire import MalformedMessage, decode_message
from wiber.storage import DurableStorage


@pytest.fixture
def node_on_crashfs(cluster_factory: Callable[..., ClusterHarness]) -> Iterator[tuple[Node, CrashFS, str]]:
    cluster = cluster_factory(1, start=False)
    fs = CrashFS()
    node = Node(cluster.config, "n1", log_fs=fs)
    try:
        turn_until(node, lambda: node.raft.role is Role.LEADER, "the single node to lead")
        yield node, fs, cluster.config.node_data_dir("n1")
    finally:
        node.close()


def _publish_and_crash(node: Node, fs: CrashFS, directory: str, ctx: zmq.Context[Any]) -> list[bytes]:
    """Publish one PUB through the node's client port, wait for its `ok`, cut the power.

    Returns: the data of every entry the Raft log holds after reopening.
    """
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(node.me.client_addr)
        req.send(msgpack.packb({"op": "PUB", "topic": "t", "data": b"acknowledged"}, use_bin_type=True))
        turn_until(node, lambda: bool(req.poll(0)), "the PUB's reply")
        reply = msgpack.unpackb(req.recv(), raw=False)
    finally:
        req.close()
    assert reply["ok"], reply
    fs.crash()  # power loss right after the client saw `ok`
    node.storage = DurableStorage.open(directory, fs=fs)  # what a restarted node would read (close() closes it)
    first, last = node.storage.first_index(), node.storage.last_index()
    return [e.data for e in node.storage.entries(first, last + 1)] if last >= first else []


def test_an_acknowledged_pub_survives_a_power_loss(node_on_crashfs: tuple[Node, CrashFS, str]) -> None:
    node, fs, directory = node_on_crashfs
    ctx = zmq.Context()
    try:
        held = _publish_and_crash(node, fs, directory, ctx)
    finally:
        ctx.term()
    assert any(b"acknowledged" in data for data in held), "the acknowledged PUB's entry was lost"


@pytest.mark.parametrize("mutation", ["no fsync", "fsync after the reply"])
def test_the_check_fails_without_the_fsync_before_the_reply(
        node_on_crashfs: tuple[Node, CrashFS, str], mutation: str) -> None:
    """Teeth: the node's persist step without its fsync, or with the fsync deferred past the turn
    that replies, loses the acknowledged entry at the power loss."""
    node, fs, directory = node_on_crashfs
    storage = node.storage
    real_fsync = fs.fsync
    deferred: list[int] = []
    if mutation == "no fsync":
        storage._fsync = False  # the storage still counts the sync, the file system never sees it
    else:
        def later(fd: int) -> None:
            deferred.append(fd)  # performed only after the reply was seen (below): too late

        fs.fsync = later  # type: ignore[method-assign]
    ctx = zmq.Context()
    try:
        held = _publish_and_crash(node, fs, directory, ctx)
    finally:
        ctx.term()
        fs.fsync = real_fsync  # type: ignore[method-assign]
    assert not any(b"acknowledged" in data for data in held)


# -- every reply frame of a three-node cluster, checked as it leaves -----------------------------------

def _durable_image(fs: CrashFS) -> CrashFS:
    """Returns: a new CrashFS holding exactly what a power loss on `fs` now would leave."""
    image = CrashFS()
    for path, data in fs.files(durable=True).items():
        image.makedirs(posixpath.dirname(path))
        fd = image.open(path, os.O_CREAT | os.O_WRONLY)
        image.pwrite(fd, data, 0)
        image.fsync(fd)
        image.close(fd)
    return image


class ReplyAudit:
    """Wraps one node's transport: every frame that vouches for the disk is held against what a
    power loss at that instant would leave of the node's Raft log."""

    def __init__(self, node: Node, fs: CrashFS, directory: str) -> None:
        self.node, self.fs, self.directory = node, fs, directory
        self.checked: Counter[str] = Counter()
        self.breaches: list[str] = []
        send_peer_frames, reply = node.transport.send_peer_frames, node.transport.reply

        def audited_peer_frames(peer: str, frames: list[bytes]) -> bool:
            for frame in frames:
                try:
                    msg = decode_message(frame)
                except MalformedMessage:
                    continue  # not a Raft message: a clock probe or a snapshot transfer frame
                self._peer_message(msg)
            return send_peer_frames(peer, frames)

        def audited_reply(envelope: list[bytes], body: bytes) -> None:
            answer = msgpack.unpackb(body, raw=False)
            if isinstance(answer, dict) and answer.get("ok") and "offset" in answer:
                self._covered(int(answer["index"]), None, f"PUB ok at index {answer['index']}")
            reply(envelope, body)

        node.transport.send_peer_frames = audited_peer_frames  # type: ignore[method-assign]
        node.transport.reply = audited_reply  # type: ignore[method-assign]

    def _peer_message(self, msg: Message) -> None:
        if isinstance(msg, AppendEntriesReply) and msg.success and msg.match_index > 0:
            self._covered(msg.match_index, None, f"append ack up to {msg.match_index} (term {msg.term})")
        elif isinstance(msg, RequestVoteReply) and msg.granted and not msg.pre_vote:
            self._covered(0, (msg.term, msg.to), f"vote for {msg.to} in term {msg.term}")

    def _covered(self, index: int, vote: tuple[int, str] | None, what: str) -> None:
        """Record a breach unless the durable image holds entry `index` as the live log does (and the vote)."""
        kind = "vote" if vote else "ack"
        self.checked[kind] += 1
        storage = DurableStorage.open(self.directory, fs=_durable_image(self.fs))
        try:
            hard, _ = storage.initial_state()
            if vote is not None and (hard.term, hard.voted_for) != vote:
                self.breaches.append(f"{self.node.id}: {what} left with {hard} on disk")
            if index and (storage.last_index() < index or storage.term(index) != self.node.storage.term(index)):
                self.breaches.append(f"{self.node.id}: {what} left with the disk's log ending at "
                                     f"{storage.last_index()}")
        finally:
            storage.close()


def test_no_reply_frame_leaves_before_the_fsync_that_covers_it(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """Three real node loops in one process, each Raft log on its own CrashFS: every append ack,
    vote and PUB `ok` must be durable on its sender's disk at the instant it is sent."""
    cluster = cluster_factory(3, start=False)
    nodes: list[Node] = []
    audits: list[ReplyAudit] = []
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        for nid in ("n1", "n2", "n3"):
            fs = CrashFS()
            node = Node(cluster.config, nid, log_fs=fs)
            nodes.append(node)
            audits.append(ReplyAudit(node, fs, cluster.config.node_data_dir(nid)))

        def turn_all_until(done: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 20
            while not done():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                for node in nodes:
                    node.run_once()

        turn_all_until(lambda: any(n.raft.role is Role.LEADER for n in nodes), "a leader")
        leader = next(n for n in nodes if n.raft.role is Role.LEADER)
        req.connect(leader.me.client_addr)
        for k in range(20):
            req.send(msgpack.packb({"op": "PUB", "topic": "t", "data": b"m%d" % k}, use_bin_type=True))
            turn_all_until(lambda: bool(req.poll(0)), f"the answer to PUB {k}")
            assert msgpack.unpackb(req.recv(), raw=False)["ok"]
    finally:
        req.close()
        for node in nodes:
            node.close()
        ctx.term()
    breaches = [b for audit in audits for b in audit.breaches]
    assert not breaches, breaches[:5]
    checked = sum((audit.checked for audit in audits), Counter[str]())
    assert checked["ack"] >= 40 and checked["vote"] >= 1, checked  # the audit saw real traffic
