"""`DurableStorage`: the Raft log on disk, its read side and the writer API a node calls each turn
(the theory and the crash-safety argument are in `wiber.storage.durable`)."""

from __future__ import annotations

import bisect
import logging
import os
import zlib
from array import array
from collections.abc import Sequence

from wiber.errors import InvariantError, NodeStartError
from wiber.raft.messages import ENTRY_OVERHEAD, Entry, HardState, SnapshotMeta
from wiber.raft.storage import Compacted, EntryUnavailable, InMemoryLogView, limit_size
from wiber.storage.durable.errors import StorageFailure, describe
from wiber.storage.durable.files import Segment, pwrite_all
from wiber.storage.durable.recovery import Recovery
from wiber.storage.format import (
    FRAME,
    FRAME_SIZE,
    HARD_STATE_NAME,
    PAYLOAD_HEAD,
    RECORD_OVERHEAD,
    TEMP_SUFFIX,
    encode_hard_state,
    encode_snapshot_header,
    scan_segment,
    segment_name,
    snapshot_name,
)
from wiber.storage.fs import OS, FileSystem

__all__ = ["DurableStorage", "write_snapshot_file"]

log = logging.getLogger("wiber.storage.durable")

_MAX_PAYLOAD = 0xFFFFFFFF


class DurableStorage(Recovery, InMemoryLogView):
    """`LogStorage` on disk, with the writer API a node calls once per loop turn. Create with `open`."""

    def __init__(self, directory: str, *, fsync: bool, segment_bytes: int, logger: logging.Logger,
                 fs: FileSystem = OS) -> None:
        """Set up an empty, unopened instance; use `DurableStorage.open`, which also recovers."""
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        self._fs = fs
        self._dir = os.path.abspath(directory)
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._log = logger
        # the state readers see (exactly MemoryStorage's)
        self._hard_state = HardState(0, None, 0)
        self._snap = SnapshotMeta(0, 0)
        self._snap_data = b""
        self._entries: list[Entry] = []      # the entries from self._cached_from to the last
        self._terms: array[int] = array("Q")  # the term of every entry after the snapshot
        self._cached_from = 1
        # the files
        self._segments: list[Segment] = []
        self._fd: int | None = None          # open on self._segments[-1], when there is one
        self._lock_fd: int | None = None     # an os fd (not the FileSystem's), over OsFileSystem only
        self._snap_path: str | None = None
        self._durable_vote: tuple[int, str | None] = (0, None)
        self._unsynced = False                # bytes written to self._fd since its last fsync
        self._dir_dirty = False               # a file created or removed since the last dir fsync
        self._failed: StorageFailure | None = None
        self._closed = False
        self._sync_count = 0
        self._bytes_written = 0

    # -- opening and recovery --------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str, *, fsync: bool = True, segment_bytes: int = 64 << 20,
             logger: logging.Logger | None = None, fs: FileSystem = OS) -> DurableStorage:
        """Open (creating it if needed) a data directory and recover the log in it.

        Args:
            directory: the node's own data directory (``data_dir/<id>``).
            fsync: False skips every fsync (tests and benchmarks only: nothing is durable then).
            segment_bytes: roll to a new segment file once the current one would exceed this.
            logger: where recovery warnings go (default: this module's logger).
            fs: the file system every file operation goes through (tests pass an in-memory one).

        Returns:
            The storage, holding the hard state, the newest valid snapshot and every entry after it.

        Raises:
            CorruptLog: damage that is not a torn last write (the message says how to recover).
            DirectoryLocked: another instance has the directory open.
            NodeStartError: the directory cannot be created, read or written (CorruptLog and
                DirectoryLocked are NodeStartErrors too, so the CLI reports all three in one line).
        """
        self = cls(directory, fsync=fsync, segment_bytes=segment_bytes,
                   logger=logger if logger is not None else log, fs=fs)
        try:
            self._open_directory()
            self._recover()
        except OSError as exc:
            self._release()
            where = f" ({exc.filename})" if exc.filename else ""
            raise NodeStartError(f"cannot open the data directory {self._dir}: {describe(exc)}{where}") from exc
        except BaseException:
            self._release()
            raise
        return self

    # -- counters ----------------------------------------------------------------------------------

    @property
    def last_snapshot_index(self) -> int:
        """The index the current snapshot covers (0 for none)."""
        return self._snap.index

    @property
    def sync_count(self) -> int:
        """How many fsyncs (of files and of the directory) were issued; with fsync=False, would have been."""
        return self._sync_count

    @property
    def bytes_written(self) -> int:
        """Bytes written to disk since open: log records, hard state and snapshot files."""
        return self._bytes_written

    @property
    def failed(self) -> bool:
        """Whether a write failed: the storage then refuses every write (reads still work)."""
        return self._failed is not None

    @property
    def directory(self) -> str:
        """The absolute path of the data directory."""
        return self._dir

    # -- the writer side -----------------------------------------------------------------------------

    # -- the read side: terms in memory, entries in memory from `cached_from` on ----------------------

    def last_index(self) -> int:
        """Returns: the last index held."""
        return self._snap.index + len(self._terms)

    def _term_after_snapshot(self, offset: int) -> int:
        """Returns: the term `offset` entries after the snapshot, from the terms kept for every entry."""
        return self._terms[offset - 1]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Returns: entries ``[lo, hi)`` cut to `max_bytes` (never empty if lo < hi); released ones
        are read back from the segments.

        Raises:
            Compacted: ``lo <= snapshot index``.
            EntryUnavailable: ``hi > last_index() + 1``.
            ValueError: ``lo > hi``.
            StorageFailure: a released entry cannot be read back (the storage is then failed).
        """
        base = self._snap.index
        if lo <= base:
            raise Compacted(f"index {lo} is compacted (snapshot at {base})")
        if hi > base + len(self._terms) + 1:
            raise EntryUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        if lo > hi:
            raise ValueError(f"empty range: lo {lo} > hi {hi}")
        cached = self._cached_from
        if lo >= cached:
            ents = self._entries[lo - cached:hi - cached]
        else:
            ents = self._read_back(lo, min(hi, cached), max_bytes)
            if hi > cached and (max_bytes is None or sum(len(e.data) for e in ents) < max_bytes):
                ents.extend(self._entries[:hi - cached])
        if max_bytes is not None:
            return limit_size(ents, max_bytes)
        return ents

    @property
    def cached_from(self) -> int:
        """Returns: the first index whose entry is held in memory."""
        return self._cached_from

    def release(self, index: int) -> None:
        """The entries up to `index` are applied: drop them from memory (reads fetch them from disk)."""
        index = min(index, self.last_index())
        if index >= self._cached_from:
            del self._entries[:index - self._cached_from + 1]
            self._cached_from = index + 1

    def _read_back(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Returns: the released entries ``[lo, hi)`` read from their segments, at least every one
        that `limit_size(..., max_bytes)` keeps (it trims the rest). Raises: StorageFailure."""
        out: list[Entry] = []
        budget = max_bytes  # counted as limit_size counts: data + ENTRY_OVERHEAD per entry
        for seg in self._segments:
            if seg.last < lo or seg.first >= hi or (budget is not None and budget < 0 and out):
                continue
            start = max(lo, seg.first) - seg.first
            stop = min(hi, seg.last + 1) - seg.first
            begin = seg.offsets[start]
            if budget is not None:
                # A record on disk is its entry's data plus RECORD_OVERHEAD bytes, never less than the
                # ENTRY_OVERHEAD the budget counts: reading up to budget + (RECORD - ENTRY overhead) per
                # record covers every entry within the budget, and one more.
                slack = (RECORD_OVERHEAD - ENTRY_OVERHEAD) * (stop - start)
                limit = bisect.bisect_right(seg.offsets, begin + budget + slack, start + 1, stop)
                stop = min(stop, limit + 1)
            end = seg.offsets[stop] if stop < len(seg.offsets) else seg.size
            try:
                fd = self._fs.open(seg.path, os.O_RDONLY)
                try:
                    buf = self._fs.pread(fd, end - begin, begin)
                finally:
                    self._fs.close(fd)
            except OSError as exc:
                raise self._fail(f"reading entries back from {seg.path}", exc) from exc
            scan = scan_segment(buf, seg.first + start, seg.first + start - 1)
            if scan.problem is not None or len(scan.entries) != stop - start:
                err = StorageFailure(f"entries {seg.first + start}..{seg.first + stop - 1} of {seg.path} do not "
                                     f"read back: {scan.problem or 'short'}")
                self._mark_failed(err)
                raise err
            out.extend(scan.entries)
            if budget is not None:
                budget -= sum(len(e.data) for e in scan.entries) + ENTRY_OVERHEAD * len(scan.entries)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        """Write `entries` (no fsync: call `sync` before acknowledging them).

        If ``entries[0].index <= last_index()``, the stored suffix from there is first removed,
        durably (see the module docstring, rule 4). Entries at or below the snapshot index are
        skipped, as `MemoryStorage` does.

        Raises:
            InvariantError: a gap after the last index, or indexes that are not contiguous.
            StorageFailure: the disk refused (and the storage is now failed).
        """
        self._check_writable()
        entries = self._not_covered(entries)
        if not entries:
            return
        first = entries[0].index
        try:
            if first <= self.last_index():
                self._truncate_from(first)
            self._write(entries)
        except OSError as exc:
            raise self._fail(f"appending entries {first}..{entries[-1].index}", exc) from exc
        except InvariantError:
            raise   # found before writing the records it concerns; what was written is in memory too
        except BaseException:   # interrupted inside a write: memory and disk may now disagree
            self._mark_failed(StorageFailure(f"appending entries {first}..{entries[-1].index} was interrupted"))
            raise

    def _truncate_from(self, first: int) -> None:
        """Durably remove every stored entry at or after `first` (``base < first <= last_index``)."""
        while self._segments[-1].first > first:
            seg = self._segments.pop()
            self._close_fd()
            self._fs.unlink(seg.path)
            self._fsync_dir()
        seg = self._segments[-1]
        if self._fd is None:
            self._fd = self._fs.open(seg.path, os.O_RDWR)
        k = first - seg.first
        cut = seg.offsets[k]
        self._fs.ftruncate(self._fd, cut)
        self._fsync_fd(self._fd)
        self._unsynced = False
        seg.size = cut
        del seg.offsets[k:]
        del self._terms[first - self._snap.index - 1:]
        if first >= self._cached_from:
            del self._entries[first - self._cached_from:]
        else:
            self._entries = []
            self._cached_from = first

    def _write(self, entries: Sequence[Entry]) -> None:
        """Encode `entries` (which start at last_index + 1) and write them, rolling segments as needed.

        The hot path of a loop turn: one pass builds every record (local names for the bound
        methods, one crc32 per record), then one pwrite per segment touched.
        """
        seg = self._segments[-1] if self._segments else None
        limit = self._segment_bytes
        pos = seg.size if seg is not None else 0
        parts: list[bytes] = []
        offsets: list[int] = []
        add, add_offset = parts.append, offsets.append
        frame, head, crc32 = FRAME.pack, PAYLOAD_HEAD.pack, zlib.crc32
        done = 0
        index = entries[0].index
        for k, e in enumerate(entries):
            if e.index != index:
                raise InvariantError(f"append is not contiguous: index {e.index} at position {k} "
                                     f"of a batch starting at {entries[0].index}")
            payload = head(index, e.term, e.kind) + e.data
            size = len(payload) + FRAME_SIZE
            if seg is None or (pos and pos + size > limit):
                if seg is not None:
                    self._write_chunk(seg, parts, offsets)
                    self._extend_entries(entries, done, k)
                    done = k
                    self._roll()
                    parts, offsets = [], []
                    add, add_offset = parts.append, offsets.append
                seg = self._new_segment(index)
                pos = 0
            if len(payload) > _MAX_PAYLOAD:
                raise InvariantError(f"entry {index}: {len(e.data)} bytes is too large for one record")
            add(frame(len(payload), crc32(payload)))
            add(payload)
            add_offset(pos)
            pos += size
            index += 1
        assert seg is not None
        self._write_chunk(seg, parts, offsets)
        self._extend_entries(entries, done, len(entries))

    def _extend_entries(self, entries: Sequence[Entry], lo: int, hi: int) -> None:
        """Make ``entries[lo:hi]``, now written, visible to readers."""
        if lo == 0 and hi == len(entries):
            self._entries.extend(entries)
            self._terms.extend([e.term for e in entries])
        else:
            self._entries.extend(entries[lo:hi])
            self._terms.extend([e.term for e in entries[lo:hi]])

    def _write_chunk(self, seg: Segment, parts: list[bytes], offsets: list[int]) -> None:
        """Write the records `parts` at the end of `seg` (the current segment) with one pwrite."""
        if not parts:
            return
        assert self._fd is not None
        buf = b"".join(parts)
        written = pwrite_all(self._fs, self._fd, buf, seg.size)
        self._unsynced = True
        self._bytes_written += written
        seg.size += written
        seg.offsets.extend(offsets)

    def _roll(self) -> None:
        """Close the full current segment, durably (rule 2: only the last segment can be torn)."""
        if self._fd is not None:
            self._fsync_fd(self._fd)
            self._unsynced = False
        self._close_fd()

    def _new_segment(self, first: int) -> Segment:
        """Create the segment file for records from `first` and make it the current one."""
        path = self._path(segment_name(first))
        self._close_fd()
        self._fd = self._fs.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._dir_dirty = True
        seg = Segment(first, path)
        self._segments.append(seg)
        return seg

    def set_hard_state(self, hs: HardState) -> None:
        """Record the hard state: durably (atomic replace) when term or vote changed, else in memory.

        When it writes, pending log writes are synced first, so the commit index on disk never
        points past the durable log (the following `sync` then finds nothing to do).

        Raises:
            StorageFailure: the disk refused (and the storage is now failed).
        """
        self._check_writable()
        vote = (hs.term, hs.voted_for)
        if vote != self._durable_vote:
            try:
                encoded = encode_hard_state(hs)
            except ValueError as exc:  # never from this version's core: refuse rather than write it
                err = StorageFailure(f"storage {self._dir}: {exc}")
                self._mark_failed(err)
                raise err from None
            try:
                self._sync_log()
                self._replace(HARD_STATE_NAME, [encoded])
            except OSError as exc:
                raise self._fail(f"writing the hard state (term {hs.term}, vote {hs.voted_for})", exc) from exc
            self._durable_vote = vote
        self._hard_state = hs

    def sync(self) -> None:
        """Make everything appended so far durable, with one fsync (group commit).

        That is one fsync of the current segment, plus one of the directory if a segment file was
        created or removed since the last sync; nothing at all when nothing changed.

        Raises:
            StorageFailure: the fsync failed (and the storage is now failed): acknowledge nothing.
        """
        self._check_writable()
        try:
            self._sync_log()
        except OSError as exc:
            raise self._fail("syncing the log", exc) from exc

    def _sync_log(self) -> None:
        if self._unsynced and self._fd is not None:
            self._fsync_fd(self._fd)
        self._unsynced = False
        if self._dir_dirty:
            self._fsync_dir()

    def compact(self, index: int, data: bytes, *, written: bool = False,
                unlink_later: list[str] | None = None) -> None:
        """Record the state machine's snapshot `data` at `index` and drop the log up to it.

        The snapshot file is written durably first; then older snapshot files and the segments
        entirely at or below `index` are removed. Compact only what has been applied. With
        `written`, `write_snapshot_file` already wrote the file (off the loop thread): only the
        removals are left, a few unlinks made durable at the next sync. With `unlink_later`, the
        paths of the segments dropped go there instead of being unlinked (freeing a 64 MiB file
        can hold the caller tens of ms): the caller unlinks them later, off its loop, and a crash
        before it does leaves segments wholly below the snapshot, which recovery removes (rule 6).

        Raises:
            Compacted: `index` is at or below the current snapshot index.
            EntryUnavailable: `index` is above the last index.
            StorageFailure: the disk refused (and the storage is now failed).
        """
        self._check_writable()
        base = self._snap.index
        if index <= base:
            raise Compacted(f"index {index} is already compacted (snapshot at {base})")
        if index > self.last_index():
            raise EntryUnavailable(f"cannot compact to {index}: last index is {self.last_index()}")
        meta = SnapshotMeta(index, self._terms[index - base - 1])
        try:
            self._write_snapshot(meta, data, written)
        except OSError as exc:
            raise self._fail(f"writing the snapshot at {index}", exc) from exc
        self._snap = meta
        self._snap_data = data
        del self._terms[:index - base]
        if index >= self._cached_from:
            del self._entries[:index - self._cached_from + 1]
            self._cached_from = index + 1
        try:
            segs = self._segments
            while segs and (segs[1].first <= index + 1 if len(segs) > 1 else segs[0].last <= index):
                seg = segs.pop(0)
                if not segs:
                    self._close_fd()
                    self._unsynced = False
                if unlink_later is not None:
                    unlink_later.append(seg.path)
                else:
                    self._fs.unlink(seg.path)
                    self._dir_dirty = True
        except OSError as exc:
            raise self._fail(f"removing segments compacted into the snapshot at {index}", exc) from exc

    def apply_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the whole log by a snapshot from the leader; the next append starts at meta.index + 1.

        Durable on return: the snapshot is written atomically, then every segment is removed.

        Raises:
            InvariantError: the snapshot is older than the one held.
            StorageFailure: the disk refused (and the storage is now failed).
        """
        self._check_writable()
        if meta.index < self._snap.index:
            raise InvariantError(f"snapshot at {meta.index} is older than the one held ({self._snap.index})")
        try:
            self._write_snapshot(meta, data)
        except OSError as exc:
            raise self._fail(f"writing the snapshot at {meta.index} from the leader", exc) from exc
        self._snap = meta
        self._snap_data = data
        self._entries = []
        self._terms = array("Q")
        self._cached_from = meta.index + 1
        try:
            self._close_fd()
            self._unsynced = False
            while self._segments:
                self._fs.unlink(self._segments.pop().path)
                self._fsync_dir()
        except OSError as exc:
            raise self._fail(f"removing the log replaced by the snapshot at {meta.index}", exc) from exc

    def _write_snapshot(self, meta: SnapshotMeta, data: bytes, written: bool = False) -> None:
        """Atomically write the snapshot file of `meta` (unless `written`), then remove the previous one."""
        name = snapshot_name(meta)
        path = self._path(name)
        if written:
            if not self._fs.exists(path):
                raise InvariantError(f"snapshot file {path} was to be written already")
        else:
            self._replace(name, [encode_snapshot_header(meta, data), data])
        if self._snap_path is not None and self._snap_path != path:
            self._fs.unlink(self._snap_path)
            self._dir_dirty = True
        self._snap_path = path

    def _replace(self, name: str, parts: list[bytes]) -> None:
        """Atomically replace file `name` by `parts`: temp file, fsync, rename, fsync directory."""
        fs = self._fs
        path = self._path(name)
        tmp = path + TEMP_SUFFIX
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            offset = 0
            for part in parts:
                offset += pwrite_all(fs, fd, part, offset)
            self._bytes_written += offset
            self._fsync_fd(fd)
        finally:
            fs.close(fd)
        fs.replace(tmp, path)
        self._fsync_dir()

    def close(self) -> None:
        """Sync what is pending (unless failed), close every file and release the directory lock.

        Raises:
            StorageFailure: the final sync failed (the files are closed all the same).
        """
        if self._closed:
            return
        error: StorageFailure | None = None
        if self._failed is None:
            try:
                self._sync_log()
            except OSError as exc:
                error = self._fail("syncing the log at close", exc)
        self._release()
        self._closed = True
        if error is not None:
            raise error

    def __enter__(self) -> DurableStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_snapshot_file(fs: FileSystem, directory: str, meta: SnapshotMeta, data: bytes, fsync: bool) -> None:
    """Write the snapshot file of `meta` durably (temp file, fsync, rename, directory fsync), for a
    `DurableStorage.compact(..., written=True)` to take in later.

    It touches no `DurableStorage` state, so it may run on another thread while the loop appends:
    a snapshot file that appears before its compaction is the state a crash between compaction's
    two steps leaves (rule 6 of `wiber.storage.durable`), which recovery finishes. Its fsyncs are
    the ones that held the loop (tens of ms on a busy disk). Raises: OSError.
    """
    path = os.path.join(directory, snapshot_name(meta))
    tmp = path + TEMP_SUFFIX
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        offset = 0
        for part in (encode_snapshot_header(meta, data), data):
            offset += pwrite_all(fs, fd, part, offset)
        if fsync:
            fs.fsync(fd)
    finally:
        fs.close(fd)
    fs.replace(tmp, path)
    if fsync:
        fs.fsync_dir(directory)
