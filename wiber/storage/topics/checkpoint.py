"""What a topic-store checkpoint writes off the loop: the job (fsync, one SQLite transaction, more
file work after it), the blocks one flush wrote (in flat arrays), and the layout of a checkpoint
for a follower (`export`). `wiber.storage.topics.store` prepares jobs and takes them in."""

from __future__ import annotations

import bisect
import os
import sqlite3
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from wiber.broker.checkpoint import BrokerDelta
from wiber.storage.fs import FileSystem
from wiber.storage.topics.blocks import BlockRef, segment_name
from wiber.storage.topics.index import INDEX_NAME, CheckpointRecord, IndexDb, create_private

__all__ = ["CheckpointJob", "Flushed", "export"]


@dataclass
class CheckpointJob:
    """The slow half of a checkpoint, safe to run off the loop thread (see the module docstring)."""

    record: CheckpointRecord
    blocks: list[Flushed]
    delta: BrokerDelta | None
    sync_fds: list[int]
    sync_dir: bool
    dropped: list[int]
    replace: bool
    find_dead: bool
    db_path: str
    fsync: bool
    fs: FileSystem
    directory: str
    export_dir: str | None = None
    """Where to lay the checkpoint out for a follower (`export`), or None."""
    after_commit: Callable[[], None] | None = None
    """More file work for the same thread once the checkpoint is committed (the Raft snapshot file)."""
    dead: list[int] = field(default_factory=list)
    """Sealed segments found emptied by retention after the commit (dropped at the next checkpoint)."""
    exported: list[tuple[str, int, int]] = field(default_factory=list)
    """The exported files: (name, size, crc32), once `run` made the export."""
    unsynced: set[int] = field(default_factory=set)
    """The segments it fsyncs (given back to the store if the job fails)."""

    def run(self) -> None:
        """Fsync what the checkpoint points to, then commit it. Raises: OSError, sqlite3.Error."""
        if self.fsync:
            for fd in self.sync_fds:
                self.fs.fsync(fd)
            if self.sync_dir:
                self.fs.fsync_dir(self.directory)
        db = IndexDb(self.db_path, fsync=self.fsync, thread_safe=True)
        try:
            assert self.delta is not None
            rows = (row for flushed in self.blocks for row in flushed.rows())
            db.commit(self.record, rows, self.delta.topics, self.delta.sessions, self.dropped, self.replace,
                      self.delta.groups)
            self.delta = None  # its rows are in the database: an export kept for followers need not hold them
            if self.find_dead:
                for segment in self.record.segments[:-1]:
                    if not db.segment_is_dead(segment):
                        break
                    self.dead.append(segment)
        finally:
            db.close()
        if self.after_commit is not None:
            self.after_commit()
        if self.export_dir is not None:
            self.exported = export(self.fs, self.directory, self.db_path, self.record, self.export_dir)


class Flushed:
    """The blocks one flush wrote to one segment, sorted by (topic id, first offset), in flat arrays:
    about 40 bytes a block, where one object per block cost ~150 (100,000 topics written round-robin
    make one block per message until the next checkpoint)."""

    __slots__ = ("counts", "firsts", "lengths", "positions", "segment", "topics")

    def __init__(self, segment: int) -> None:
        self.segment = segment
        self.topics = array("Q")
        self.firsts = array("Q")
        self.counts = array("Q")
        self.positions = array("Q")
        self.lengths = array("Q")

    def add(self, topic_id: int, first: int, count: int, position: int, length: int) -> None:
        """Note one block (in (topic, first) order)."""
        self.topics.append(topic_id)
        self.firsts.append(first)
        self.counts.append(count)
        self.positions.append(position)
        self.lengths.append(length)

    def __len__(self) -> int:
        return len(self.topics)

    def blocks_of(self, topic_id: int) -> list[BlockRef]:
        """Returns: the blocks of `topic_id` in this flush, in offset order."""
        lo = bisect.bisect_left(self.topics, topic_id)
        hi = bisect.bisect_right(self.topics, topic_id, lo)
        return [BlockRef(topic_id, self.firsts[i], self.counts[i], self.segment, self.positions[i], self.lengths[i])
                for i in range(lo, hi)]

    def rows(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        """Returns: the index rows ``(topic_id, first, count, segment, position, length)``."""
        segment = self.segment
        for topic_id, first, count, position, length in zip(self.topics, self.firsts, self.counts,
                                                            self.positions, self.lengths):
            yield topic_id, first, count, segment, position, length


EXPORT_INDEX_NAME: Final = INDEX_NAME
_CRC_READ: Final = 1 << 20


def export(fs: FileSystem, directory: str, db_path: str, record: CheckpointRecord,
           export_dir: str) -> list[tuple[str, int, int]]:
    """Lay a just-committed checkpoint out in `export_dir` for a follower: a hard link to each live
    segment (immutable up to the sizes given: a sealed segment whole, the active one to the
    checkpoint's length) and a consistent copy of the index database (SQLite's backup).

    Returns: ``(name, size, crc32)`` of every file, the index last. Runs off the loop thread: it
    reads every byte once for the CRCs (pread and zlib release the GIL).
    """
    fs.makedirs(export_dir, 0o700)
    files: list[tuple[str, int, int]] = []
    for number in record.segments:
        name = segment_name(number)
        target = os.path.join(export_dir, name)
        if not fs.exists(target):
            fs.link(os.path.join(directory, name), target)
        fd = fs.open(target, os.O_RDONLY)
        try:
            size = record.active_length if number == record.segments[-1] else fs.file_size(fd)
            files.append((name, size, _crc(fs, fd, size, name)))
        finally:
            fs.close(fd)
    copy = os.path.join(export_dir, EXPORT_INDEX_NAME)
    if os.path.exists(copy):
        os.unlink(copy)
    source = sqlite3.connect(db_path)
    create_private(copy)
    target_db = sqlite3.connect(copy)
    try:
        source.backup(target_db)
        target_db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no WAL beside it
    finally:
        target_db.close()
        source.close()
    fs.fsync_dir(export_dir)
    fd = fs.open(copy, os.O_RDONLY)
    try:
        size = fs.file_size(fd)
        files.append((EXPORT_INDEX_NAME, size, _crc(fs, fd, size, EXPORT_INDEX_NAME)))
    finally:
        fs.close(fd)
    return files


def _crc(fs: FileSystem, fd: int, size: int, name: str) -> int:
    """Returns: the CRC-32 of the first `size` bytes of open file `fd`, read a megabyte at a time."""
    crc = 0
    position = 0
    while position < size:
        chunk = fs.pread(fd, min(_CRC_READ, size - position), position)
        if not chunk:
            raise OSError(f"{name} ends at byte {position}, before its {size}")
        crc = zlib.crc32(chunk, crc)
        position += len(chunk)
    return crc
