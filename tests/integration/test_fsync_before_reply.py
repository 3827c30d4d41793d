"""Promise 1's fsync half, on the node's real loop: a PUB's `ok` never leaves before the fsync that
makes its entry durable. `kill -9` keeps the page cache, so only a simulated power loss shows it:
the node's Raft log runs on the suite's crash-consistent file system (`tests/crashfs.py`), which
forgets at `crash()` every write not fsynced. Publish, wait for the `ok`, cut the power, reopen the
log: the acknowledged entry must be there. With the fsync deleted from the node's persist step, or
made to happen after the reply, the same check fails (issue 20's "show it" for the fsync)."""

from __future__ import annotations

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
from wiber.storage import DurableStorage


def _run_until(node: Node, done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Turn the node's loop until `done()` (a deadline, never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        node.run_once()


@pytest.fixture
def node_on_crashfs(cluster_factory: Callable[..., ClusterHarness]) -> Iterator[tuple[Node, CrashFS, str]]:
    cluster = cluster_factory(1, start=False)
    fs = CrashFS()
    node = Node(cluster.config, "n1", log_fs=fs)
    try:
        _run_until(node, lambda: node.raft.role is Role.LEADER, "the single node to lead")
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
        _run_until(node, lambda: bool(req.poll(0)), "the PUB's reply")
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
