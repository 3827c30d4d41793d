"""A simulated node's disk: the real `DurableStorage` over the node's own `CrashFS`, written as a node
writes it, with a power loss at any single file operation.

Theory of operation
-------------------
Each node of a ``Cluster(storage="durable")`` owns a `SimDisk`: a `CrashFS` (``tests/crashfs.py``:
every write and directory entry not fsynced is lost at `CrashFS.crash`) holding its data directory.
Its `DurableStorage` is written in the node's order (`wiber.node.loop.Node._persist`, by
`write_ready`): the leader's snapshot (durable on return), the entries, the hard state (durable on
return when term or vote changed), then one `sync` when the Ready `must_sync`, and only then are
`messages_after_persist` sent. A compaction is the node's checkpoint (`wiber.node.checkpoints`): the
segments the previous compaction dropped are unlinked, the snapshot file written durably
(`write_snapshot_file`), then `compact(..., written=True, unlink_later=...)` takes it in.

A crash point is the k-th mutating file operation of one such write (a Ready's persist or a
compaction): `crash_point` counts the write's operations on a deep copy of the disk and its storage
(a dry run), draws k from the simulation's seeded rng, and `CrashFS.crash_after(k)` makes that
operation raise `SimulatedCrash`. The power loss (`power_loss`) then keeps what was durable, and,
drawn from the rng too, a torn tail of the unsynced bytes or a prefix of the unsynced name
changes. The restarted node reopens `DurableStorage` on what is left (`open`: its recovery).
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable

from tests.crashfs import CrashFS, SimulatedCrash
from wiber.raft import Ready
from wiber.raft.messages import SnapshotMeta
from wiber.raft.storage import MemoryStorage
from wiber.storage.durable import DurableStorage, write_snapshot_file

__all__ = [
    "APPEND", "COMPACTION", "HARD_STATE", "SNAPSHOT_INSTALL", "SYNC", "SimDisk", "SimulatedCrash",
    "write_ready",
]

SNAPSHOT_INSTALL = "snapshot install"
APPEND = "append"
HARD_STATE = "hard state"
SYNC = "sync"
COMPACTION = "compaction"

QUIET = logging.getLogger("wiber.sim.disk")
QUIET.disabled = True  # recovery warns about every torn tail it cuts: expected here, by the dozen


def _nothing(stage: str) -> None:
    """A `write_ready` observer that does nothing (dry runs)."""


def write_ready(storage: MemoryStorage | DurableStorage, rd: Ready,
                before: Callable[[str], None] = _nothing) -> None:
    """Persist `rd` in the node's order: snapshot, entries, hard state, then one sync (on disk).

    `before(stage)` is called before each of these writes, with the stage's name, so that the
    caller can observe it (the checker) and know which one a crash interrupted.
    """
    if rd.snapshot is not None:
        before(SNAPSHOT_INSTALL)
        storage.apply_snapshot(*rd.snapshot)
    if rd.entries:
        before(APPEND)
        storage.append(rd.entries)
    if rd.hard_state is not None:
        before(HARD_STATE)
        storage.set_hard_state(rd.hard_state)
    if rd.must_sync and isinstance(storage, DurableStorage):
        before(SYNC)
        storage.sync()


class SimDisk:
    """One node's disk: its `CrashFS` with the data directory, the `DurableStorage` open on it, and
    the segments its next checkpoint unlinks."""

    def __init__(self, directory: str, segment_bytes: int) -> None:
        """A new, empty disk; the storage is opened on it at once."""
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fs = CrashFS()
        self.unlink_later: list[str] = []
        self.storage = self.open()

    def open(self) -> DurableStorage:
        """Returns: the storage as recovery finds it on this disk (a node starting or restarting)."""
        self.unlink_later = []
        self.storage = DurableStorage.open(self.directory, segment_bytes=self.segment_bytes, logger=QUIET,
                                           fs=self.fs)
        return self.storage

    def compact(self, index: int, data: bytes) -> None:
        """Compact the log to `index` with snapshot `data` as a node's checkpoint does, thread and loop
        in turn: unlink what the last compaction dropped, write the snapshot file, take it in."""
        for path in self.unlink_later:
            try:
                self.fs.unlink(path)
            except FileNotFoundError:
                pass
        self.unlink_later = []
        storage = self.storage
        meta = SnapshotMeta(index, storage.term(index))
        write_snapshot_file(self.fs, storage.directory, meta, data, True)  # fsyncs the directory too
        storage.compact(index, data, written=True, unlink_later=self.unlink_later)

    def crash_point(self, write: Callable[[SimDisk], object], rng: random.Random) -> int | None:
        """Returns: k, drawn with `rng`, such that `fs.crash_after(k)` interrupts `write(self)` at one
        of its mutating file operations, each equally likely; None when it has none.

        The operations are counted by running `write` on a deep copy of this disk (a dry run).
        """
        copied = copy.deepcopy(self)
        before = copied.fs.mutations
        write(copied)
        count = copied.fs.mutations - before
        return rng.randrange(count) if count else None

    def power_loss(self, rng: random.Random) -> None:
        """Lose power: keep what was durable and, drawn with `rng`, a torn tail of each file's
        unsynced bytes and a prefix of each directory's unsynced name changes (or neither)."""
        mode = rng.randrange(4)
        torn = random.Random(rng.getrandbits(64)) if mode & 1 else None
        names = random.Random(rng.getrandbits(64)) if mode & 2 else None
        self.fs.crash(torn, names=names)
        self.unlink_later = []
