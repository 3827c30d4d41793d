"""The durable Raft log's files: a segment's bookkeeping, what recovery plans, and the file helpers
every part of `DurableStorage` shares (paths, fsyncs counted and skippable, failure marking)."""

from __future__ import annotations

import errno
import logging
import os
from array import array
from dataclasses import dataclass, field

from wiber.errors import InvariantError
from wiber.raft.messages import Entry, HardState, SnapshotMeta
from wiber.storage.durable.errors import StorageFailure, describe
from wiber.storage.format import FormatError
from wiber.storage.fs import FileSystem

__all__ = ["Files", "Plan", "Segment", "pwrite_all"]


class Segment:
    """One segment file: its first index and the byte offset of each record (for truncation)."""

    __slots__ = ("first", "offsets", "path", "size")

    def __init__(self, first: int, path: str, offsets: array[int] | None = None, size: int = 0) -> None:
        self.first = first
        self.path = path
        self.offsets: array[int] = offsets if offsets is not None else array("q")
        self.size = size

    @property
    def last(self) -> int:
        """Returns: the index of its last record (first - 1 when empty)."""
        return self.first + len(self.offsets) - 1


@dataclass
class Plan:
    """What recovery found, and so what it will repair once everything has been checked."""

    temps: list[str] = field(default_factory=list)
    snap: SnapshotMeta = field(default_factory=lambda: SnapshotMeta(0, 0))
    snap_name: str | None = None
    snap_data: bytes = b""
    bad_snaps: list[tuple[SnapshotMeta, str, FormatError]] = field(default_factory=list)
    older_snaps: list[str] = field(default_factory=list)
    below: list[str] = field(default_factory=list)      # segments entirely covered by the snapshot
    segments: list[Segment] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    torn: tuple[Segment, int, int, str] | None = None   # segment, cut at, file size, problem
    discard: bool = False                               # the log does not continue the snapshot
    empty_last: bool = False


class Files:
    """The state and file helpers shared by recovery and the writer (`DurableStorage` sets them up)."""

    _fs: FileSystem
    _dir: str
    _fsync: bool
    _segment_bytes: int
    _log: logging.Logger
    _hard_state: HardState
    _snap: SnapshotMeta
    _snap_data: bytes
    _entries: list[Entry]
    _terms: array[int]
    _cached_from: int
    _segments: list[Segment]
    _fd: int | None
    _lock_fd: int | None
    _snap_path: str | None
    _durable_vote: tuple[int, str | None]
    _unsynced: bool
    _dir_dirty: bool
    _failed: StorageFailure | None
    _closed: bool
    _sync_count: int
    _bytes_written: int

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def _read(self, name: str) -> bytes:
        return self._fs.read_file(self._path(name))

    def _fsync_fd(self, fd: int) -> None:
        self._sync_count += 1
        if self._fsync:
            self._fs.fsync(fd)

    def _fsync_dir(self) -> None:
        self._sync_count += 1
        if self._fsync:
            self._fs.fsync_dir(self._dir)
        self._dir_dirty = False

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._fs.close(fd)

    def _release(self) -> None:
        """Close every descriptor, ignoring errors (used on close and when open fails)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                self._fs.close(fd)
            except OSError:
                pass
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            try:
                os.close(lock_fd)   # releases the flock
            except OSError:
                pass

    def _check_writable(self) -> None:
        if self._closed:
            raise InvariantError(f"storage {self._dir} is closed")
        if self._failed is not None:
            raise StorageFailure(f"storage {self._dir} refuses writes since an earlier failure: "
                                 f"{self._failed.message}")

    def _fail(self, what: str, exc: OSError) -> StorageFailure:
        """Returns: the StorageFailure for `exc` during `what`, after marking the storage failed."""
        where = f" ({exc.filename})" if exc.filename else ""
        err = StorageFailure(f"storage {self._dir}: {what} failed: {describe(exc)}{where}", exc.errno)
        self._mark_failed(err)
        return err

    def _mark_failed(self, err: StorageFailure) -> None:
        if self._failed is None:
            self._failed = err
            self._log.error("%s; refusing every write from now on", err.message)


def pwrite_all(fs: FileSystem, fd: int, data: bytes, offset: int) -> int:
    """Write all of `data` at `offset`. Returns: len(data). A short write is an EIO `OSError`.

    `FileSystem.pwrite` writes everything or raises; this checks it, because a record half written
    and believed whole would shift every later offset of the segment.
    """
    written = fs.pwrite(fd, data, offset)
    if written != len(data):
        raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes at offset {offset}")
    return written
