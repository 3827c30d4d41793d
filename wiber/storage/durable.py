"""`DurableStorage`: the Raft log on disk (segments, CRC, group commit, hard state, snapshots, recovery).

Promise 1 rests on this module: an entry acknowledged by a node is fsynced, and stays. The node
calls the writer API once per loop turn, in `Ready` order (`wiber.raft.ready`)::

    storage.apply_snapshot(...)   # when the leader sent one      (durable on return)
    storage.append(entries)       # write, no fsync               (a truncation is durable on return)
    storage.set_hard_state(hs)    # durable on return when term or vote changed
    storage.sync()                # ONE fsync for everything appended since the last sync
    ... only now send acknowledgements and votes ...

The read side is the `LogStorage` Protocol with exactly `MemoryStorage`'s semantics and
exceptions. Every entry's term since the snapshot is kept in memory (8 bytes each), and the entries
themselves from `cached_from` on: the node calls `release(index)` once entries are applied, and
`entries()` reads older ones back from the segments (a follower that lags, a restart's re-apply).
So the Raft log's memory is what is not applied yet, not all since the last snapshot. The file
formats are in `wiber.storage.format`.

Not thread-safe: one node loop owns one instance. One process at a time: `open` takes an exclusive
`flock` on ``LOCK`` in the directory.

Every file operation goes through a `wiber.storage.fs.FileSystem` (``fs=`` of `DurableStorage.open`,
the real `OS` by default), so that the test suite can run this module over a crash-consistent
in-memory file system and crash it at every single operation (``tests/crashfs.py``). Only the
``LOCK`` file's ``flock`` stays on `os` and `fcntl`, and only over `OsFileSystem`: it excludes other
*processes*, and an in-memory file system belongs to one process and one test, so there is nothing
to lock there (nor any lock API in `FileSystem` to lock with).

Crash-safety argument
---------------------
What a crash (``kill -9`` or power loss) may leave is, per file, any prefix-ish mixture of the writes
not yet fsynced; what was fsynced stays. The rules below make every such state recover to a log
that holds everything that was ever synced (hence everything acknowledged), possibly followed by a
prefix of what was not.

1. **Group commit.** `append` writes records with one ``pwrite`` per segment touched; `sync` fsyncs
   the current segment and, if a segment was created or removed since, the directory (a new file's
   name must be durable too, not only its bytes). The node acknowledges only after `sync` returns.
2. **Only the last segment can be torn.** Before rolling to a new segment, the full one is fsynced
   and closed; the new one is created after that. So after a crash, every segment but the last is
   complete, and a bad record in one of them is corruption, never a torn write.
3. **Torn tail versus corruption.** Recovery reads every segment in order, checking framing, crc and
   index continuity. In the last segment, the first invalid record is a torn write, cut off with
   ``ftruncate`` + fsync and one WARNING, *only if no valid record follows it anywhere in the file*
   (an fsynced record after it would prove the damaged bytes had been synced too). Anything else —
   a bad record with valid ones after it, a bad record in an earlier segment, a valid record with
   the wrong index, a gap between segments or between the snapshot and the log — raises `CorruptLog`
   and the node does not start. Nothing is dropped silently.
4. **Truncation (a conflicting suffix) is made durable before the new entries are written.** Later
   segments are unlinked newest first with a directory fsync after each (so a crash leaves a
   prefix of the segments, never a gap), then the segment holding the first conflicting index is
   ``ftruncate``'d to that record's offset and fsynced. A crash anywhere in between leaves a prefix
   of the old log, which is safe: Raft only truncates entries that are not committed.
5. **Atomic replace** for the hard state and snapshots: write ``<name>.tmp``, fsync it, ``rename``
   over the name, fsync the directory. A reader sees the old file or the new one, never a mix;
   leftover ``.tmp`` files are deleted at recovery. The hard state is rewritten only when the term
   or the vote changes (elections are rare), and the log is synced first, so the commit index it
   carries never points past the durable log. (Recovery still clamps commit into
   ``[snapshot index, last index]``: commit is not needed for safety.)
6. **Compaction** writes the snapshot durably first, then removes older snapshot files and the
   segments entirely at or below its index; recovery finishes an interrupted compaction by deleting
   segments that lie entirely below the snapshot and skipping entries at or below its index.
7. **A snapshot from the leader** replaces the whole log: it is made durable first, then every
   segment is unlinked newest first, with a directory fsync after each. If a crash interrupts that,
   recovery keeps what is left only if it continues the snapshot (the entry at the snapshot's index
   has the snapshot's term, Log Matching), read even from a segment lying wholly below the snapshot
   (when the snapshot's index is that segment's last); otherwise it finishes the removal (with a
   WARNING), newest first and before the segments below the snapshot go, so that the segment
   holding the evidence outlives the ones it condemns.
8. **A snapshot file with a bad checksum** is set aside (renamed ``.corrupt``) only when the log
   still holds every entry it covered, on top of an older valid snapshot or from index 1;
   otherwise recovery refuses with `CorruptLog`.
9. **Recovery makes what it read durable** (fsync of the last segment and of the directory), so a
   restarted node never acknowledges, from the page cache, entries that a power loss could still take.

Disk trouble
------------
Any `OSError` from a write path raises `StorageFailure` (a `StorageError`: wire code STORAGE) and
marks the storage failed: every later write raises at once, reads keep working from memory. There
is deliberately no retry: after a failed fsync, Linux may already have dropped the dirty pages and
a second fsync would report success for data that is not on disk (PostgreSQL's "fsyncgate", 2018).
Entries appended since the last successful `sync` must never be acknowledged.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import os
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from wiber.errors import InvariantError, NodeStartError, StorageError
from wiber.raft.messages import Entry, HardState, SnapshotMeta
from wiber.raft.storage import Compacted, EntryUnavailable, InMemoryLogView, limit_size
from wiber.storage.format import (
    CORRUPT_SUFFIX,
    FRAME,
    FRAME_SIZE,
    HARD_STATE_NAME,
    LOCK_NAME,
    PAYLOAD_HEAD,
    TEMP_SUFFIX,
    FormatError,
    decode_hard_state,
    decode_snapshot,
    encode_hard_state,
    encode_snapshot_header,
    find_valid_record,
    parse_segment_name,
    parse_snapshot_name,
    scan_segment,
    segment_name,
    snapshot_name,
)
from wiber.storage.fs import OS, FileSystem, OsFileSystem

__all__ = ["CorruptLog", "DirectoryLocked", "DurableStorage", "StorageFailure"]

log = logging.getLogger(__name__)

_MAX_PAYLOAD = 0xFFFFFFFF


class CorruptLog(NodeStartError):
    """The data directory holds damage that is not a torn last write; the node must not start.

    Attributes:
        path: the damaged file.
        position: the byte offset of the damage in it.
        problem: what is wrong there.
    """

    def __init__(self, path: str, position: int, problem: str, directory: str) -> None:
        self.path = path
        self.position = position
        self.problem = problem
        super().__init__(
            f"corrupt log: {path} at byte {position}: {problem}. Refusing to start, so that no "
            f"acknowledged data is silently lost. To recover: stop this node, wipe its data "
            f"directory ({directory}) and restart it; it rejoins empty and catches up from the other "
            f"nodes (snapshot catch-up). Do this on one node at a time, and only while a majority of "
            f"the other nodes is healthy.")


class DirectoryLocked(NodeStartError):
    """Another DurableStorage (another process, or an unclosed one in this process) has the directory."""


class StorageFailure(StorageError):
    """The disk refused a write (disk full, I/O error); the storage now refuses every write.

    Attributes:
        errno: the errno of the first failure (None when refusing because of an earlier one).
    """

    def __init__(self, message: str, err: int | None = None) -> None:
        self.errno = err
        super().__init__(message)


class _Segment:
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
class _Plan:
    """What recovery found, and so what it will repair once everything has been checked."""

    temps: list[str] = field(default_factory=list)
    snap: SnapshotMeta = field(default_factory=lambda: SnapshotMeta(0, 0))
    snap_name: str | None = None
    snap_data: bytes = b""
    bad_snaps: list[tuple[SnapshotMeta, str, FormatError]] = field(default_factory=list)
    older_snaps: list[str] = field(default_factory=list)
    below: list[str] = field(default_factory=list)      # segments entirely covered by the snapshot
    segments: list[_Segment] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    torn: tuple[_Segment, int, int, str] | None = None   # segment, cut at, file size, problem
    discard: bool = False                               # the log does not continue the snapshot
    empty_last: bool = False


class DurableStorage(InMemoryLogView):
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
        self._segments: list[_Segment] = []
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
            raise NodeStartError(f"cannot open the data directory {self._dir}: {_describe(exc)}{where}") from exc
        except BaseException:
            self._release()
            raise
        return self

    def _open_directory(self) -> None:
        """Create the directory (durably: its name too) and, on the real file system, take the lock."""
        fs = self._fs
        missing: list[str] = []
        path = self._dir
        while not fs.exists(path) and path not in missing:
            missing.append(path)
            path = os.path.dirname(path)
        if missing:
            fs.makedirs(self._dir, 0o777)   # os.makedirs' default: the umask decides
            for path in reversed(missing):   # a new directory's name is durable once its parent is fsynced
                self._sync_count += 1
                if self._fsync:
                    fs.fsync_dir(os.path.dirname(path))
        if not isinstance(fs, OsFileSystem):
            return   # no other process can reach an in-memory file system (module docstring)
        self._lock_fd = os.open(self._path(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryLocked(f"{self._dir} is in use by another storage (lock {self._path(LOCK_NAME)}); "
                                  f"is this node already running?") from None

    def _recover(self) -> None:
        """Read hard state, snapshot and segments and check them all; then repair what a crash left.

        Everything is checked before anything on disk is changed: a refusal leaves the directory
        exactly as it was found, for an operator to look at.
        """
        names = sorted(self._fs.listdir(self._dir))
        plan = _Plan(temps=[n for n in names if n.endswith(TEMP_SUFFIX)])
        hard_state = self._read_hard_state()
        self._find_snapshot(names, plan)
        self._scan_log(names, plan)
        self._repair(plan)

        self._segments = plan.segments
        self._snap = plan.snap
        self._snap_data = plan.snap_data
        self._snap_path = self._path(plan.snap_name) if plan.snap_name else None
        self._entries = plan.entries
        self._terms = array("Q", (e.term for e in plan.entries))
        self._cached_from = plan.snap.index + 1
        self._durable_vote = (hard_state.term, hard_state.voted_for)
        self._hard_state = self._clamped(hard_state)
        self._log.info("opened %s: snapshot at %d/%d, entries %d..%d in %d segment(s), term %d",
                       self._dir, plan.snap.term, plan.snap.index, plan.snap.index + 1, self.last_index(),
                       len(plan.segments), hard_state.term)

    def _find_snapshot(self, names: list[str], plan: _Plan) -> None:
        """Pick the newest snapshot file that decodes; note the newer bad ones and the older good ones."""
        snaps = sorted(((m, n) for n in names if (m := parse_snapshot_name(n)) is not None),
                       key=lambda mn: (mn[0].index, mn[0].term), reverse=True)
        for k, (meta, name) in enumerate(snaps):
            try:
                plan.snap_data = decode_snapshot(self._read(name), meta)
            except FormatError as bad:
                plan.bad_snaps.append((meta, name, bad))
                continue
            plan.snap, plan.snap_name = meta, name
            plan.older_snaps = [n for _, n in snaps[k + 1:]]
            return

    def _scan_log(self, names: list[str], plan: _Plan) -> None:
        """Read the segments that matter, in order; raise CorruptLog for anything but a torn tail."""
        snap = plan.snap
        seg_names = sorted((first, n) for n in names if (first := parse_segment_name(n)) is not None)
        # segments entirely at or below the snapshot go without being read (compaction's leftovers)
        while len(seg_names) >= 2 and seg_names[1][0] <= snap.index + 1:
            plan.below.append(seg_names.pop(0)[1])
        expected: int | None = None
        for k, (first, name) in enumerate(seg_names):
            path = self._path(name)
            if expected is None and first > snap.index + 1:
                raise self._gap(path, first, snap, plan.bad_snaps)
            if expected is not None and first != expected:
                raise self._corrupt(path, 0, f"index gap: this segment starts at index {first} but the "
                                             f"previous one ends at {expected - 1}")
            buf = self._read(name)
            scan = scan_segment(buf, first, snap.index)
            seg = _Segment(first, path, array("q", scan.offsets), scan.end)
            if scan.problem is not None:
                if k < len(seg_names) - 1:
                    raise self._corrupt(path, scan.end, f"{scan.problem} in a segment that is not the "
                                                        f"last one (it was fsynced before the next was made)")
                if scan.mismatched_index:
                    raise self._corrupt(path, scan.end, scan.problem)
                later = find_valid_record(buf, scan.end + 1, seg.last + 1 + len(buf))
                if later is not None:
                    raise self._corrupt(path, scan.end, f"{scan.problem}, with a valid record after it "
                                                        f"at byte {later}")
                plan.torn = (seg, scan.end, len(buf), scan.problem)
            plan.segments.append(seg)
            plan.entries.extend(scan.entries)
            expected = seg.last + 1

        segments = plan.segments
        # the last segment read may lie entirely below the snapshot too
        while segments and segments[0].last <= snap.index:
            plan.below.append(os.path.basename(segments.pop(0).path))
        if plan.torn is not None and plan.torn[0] not in segments:
            plan.torn = None
        # a bad snapshot is only tolerated when the log still holds every entry it covered
        last_index = plan.entries[-1].index if plan.entries else snap.index
        for meta, name, bad in plan.bad_snaps:
            if meta.index > last_index:
                after = f"the snapshot at {snap.index}" if snap.index else "no snapshot"
                raise self._corrupt(self._path(name), bad.position,
                                    f"{bad.problem}; the log (entries {snap.index + 1}..{last_index} after "
                                    f"{after}) no longer holds the entries up to index {meta.index} that "
                                    f"it covered")
        # a snapshot from the leader whose removal of the old log a crash interrupted (rule 7)
        if segments and segments[0].first <= snap.index:
            plan.discard = self._term_on_disk(segments[0], snap.index) != snap.term
        elif segments and plan.below and snap.index:
            # the snapshot's index is the last record of the segment just below the log
            term = self._term_below(plan.below[-1], snap.index)
            plan.discard = term is not None and term != snap.term
        plan.empty_last = bool(segments) and not segments[-1].offsets and not plan.discard

    def _repair(self, plan: _Plan) -> None:
        """Carry out what `_scan_log` planned; then make the recovered log durable (rule 9)."""
        if plan.temps or plan.bad_snaps or plan.older_snaps or plan.below or plan.discard or plan.torn \
                or plan.empty_last:
            self._fsync_dir()   # what we found is what stays (kill -9 leaves renames in the page cache)
        for name in plan.temps:
            self._log.info("removing %s, left over from an interrupted atomic replace", self._path(name))
            self._fs.unlink(self._path(name))
        for _, name, bad in plan.bad_snaps:
            self._log.warning("snapshot %s is corrupt (%s); the log still holds everything it covered, "
                              "so it is set aside as %s", self._path(name), bad, name + CORRUPT_SUFFIX)
            self._fs.replace(self._path(name), self._path(name + CORRUPT_SUFFIX))
        for name in plan.older_snaps:
            self._log.info("removing %s, superseded by %s", self._path(name), plan.snap_name)
            self._fs.unlink(self._path(name))
        if plan.discard:   # before the segments below go: one of them may hold the evidence (rule 7)
            self._log.warning(
                "finishing an interrupted snapshot install: the log's term at index %d differs from "
                "the snapshot's (%d), so its %d segment(s) are removed",
                plan.snap.index, plan.snap.term, len(plan.segments))
            for seg in reversed(plan.segments):
                self._fs.unlink(seg.path)
                self._fsync_dir()
            plan.segments, plan.entries, plan.torn = [], [], None
        for name in plan.below:
            self._log.info("removing %s: entirely covered by the snapshot at index %d",
                           self._path(name), plan.snap.index)
            self._fs.unlink(self._path(name))
        if plan.torn is not None:
            seg, cut, size, problem = plan.torn
            self._log.warning("cutting %d bytes of a torn write off %s at byte %d (%s)",
                              size - cut, seg.path, cut, problem)
            fd = self._fs.open(seg.path, os.O_RDWR)
            try:
                self._fs.ftruncate(fd, cut)
                self._fsync_fd(fd)
            finally:
                self._fs.close(fd)
        if plan.empty_last:
            seg = plan.segments.pop()
            self._log.info("removing %s: empty", seg.path)
            self._fs.unlink(seg.path)
        if plan.segments:
            self._fd = self._fs.open(plan.segments[-1].path, os.O_RDWR)
            self._fsync_fd(self._fd)   # recovered entries must be on disk before the node acts on them
        self._fsync_dir()

    def _read_hard_state(self) -> HardState:
        """Returns: the hard state file's content, or HardState(0, None, 0) when there is none."""
        try:
            buf = self._read(HARD_STATE_NAME)
        except FileNotFoundError:
            return HardState(0, None, 0)
        try:
            return decode_hard_state(buf)
        except FormatError as exc:
            raise self._corrupt(self._path(HARD_STATE_NAME), exc.position, exc.problem) from None

    def _clamped(self, hs: HardState) -> HardState:
        """Returns: `hs` with commit moved into [snapshot index, last index] (where the core needs it)."""
        lo, hi = self._snap.index, self.last_index()
        if hs.commit > hi:
            self._log.warning("hard state commit %d is past the last index %d; starting from %d",
                              hs.commit, hi, hi)
        commit = min(max(hs.commit, lo), hi)
        return hs if commit == hs.commit else HardState(hs.term, hs.voted_for, commit)

    def _term_on_disk(self, seg: _Segment, index: int) -> int:
        """Returns: the term of record `index` of `seg`, read from its file."""
        fd = self._fs.open(seg.path, os.O_RDONLY)
        try:
            head = self._fs.pread(fd, PAYLOAD_HEAD.size, seg.offsets[index - seg.first] + FRAME.size)
        finally:
            self._fs.close(fd)
        return int(PAYLOAD_HEAD.unpack(head)[1])

    def _term_below(self, name: str, index: int) -> int | None:
        """Returns: the term of record `index` in segment file `name`, or None if it holds no valid one."""
        first = parse_segment_name(name)
        if first is None or first > index:
            return None
        scan = scan_segment(self._read(name), first, index - 1)
        return scan.entries[0].term if scan.entries and scan.entries[0].index == index else None

    def _gap(self, path: str, first: int, snap: SnapshotMeta,
             bad_snaps: list[tuple[SnapshotMeta, str, FormatError]]) -> CorruptLog:
        """Returns: the CorruptLog for a log (segment `path`) that does not continue the snapshot."""
        after = f"the valid snapshot ends at index {snap.index}" if snap.index else "there is no valid snapshot"
        if bad_snaps:
            meta, name, bad = bad_snaps[0]
            return self._corrupt(self._path(name), bad.position,
                                 f"{bad.problem}; this snapshot (index {meta.index}) is needed, because "
                                 f"the log starts at index {first} ({path}) and {after}")
        return self._corrupt(path, 0, f"index gap: the log starts at index {first} and {after}, so it "
                                      f"should start at {snap.index + 1}")

    def _corrupt(self, path: str, position: int, problem: str) -> CorruptLog:
        """Returns: the CorruptLog to raise (logged at ERROR, since the node will not start)."""
        err = CorruptLog(path, position, problem, self._dir)
        self._log.error("%s", err)
        return err

    # The LogStorage read side (initial_state, first_index, last_index, term, entries, snapshot)
    # comes from InMemoryLogView: everything since the snapshot is kept in memory.

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

    def term(self, index: int) -> int:
        """Returns: the term at `index`. Raises: Compacted, EntryUnavailable."""
        offset = index - self._snap.index
        if offset <= 0:
            if offset == 0:
                return self._snap.term
            raise Compacted(f"index {index} is compacted (snapshot at {self._snap.index})")
        if offset > len(self._terms):
            raise EntryUnavailable(f"index {index} is beyond the last index {self.last_index()}")
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
        """Returns: the released entries ``[lo, hi)`` read from their segments, stopping once past
        `max_bytes` of records (at least one). Raises: StorageFailure."""
        out: list[Entry] = []
        budget = max_bytes
        for seg in self._segments:
            if seg.last < lo or seg.first >= hi or (budget is not None and budget <= 0 and out):
                continue
            start = max(lo, seg.first) - seg.first
            stop = min(hi, seg.last + 1) - seg.first
            begin = seg.offsets[start]
            if budget is not None:  # whole records while within the budget, at least one
                limit = bisect.bisect_right(seg.offsets, begin + budget, start + 1, stop)
                stop = max(start + 1, limit - 1) if limit < stop else stop
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
                budget -= end - begin
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

    def _write_chunk(self, seg: _Segment, parts: list[bytes], offsets: list[int]) -> None:
        """Write the records `parts` at the end of `seg` (the current segment) with one pwrite."""
        if not parts:
            return
        assert self._fd is not None
        buf = b"".join(parts)
        written = _pwrite_all(self._fs, self._fd, buf, seg.size)
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

    def _new_segment(self, first: int) -> _Segment:
        """Create the segment file for records from `first` and make it the current one."""
        path = self._path(segment_name(first))
        self._close_fd()
        self._fd = self._fs.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._dir_dirty = True
        seg = _Segment(first, path)
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
                self._sync_log()
                self._replace(HARD_STATE_NAME, [encode_hard_state(hs)])
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

    def compact(self, index: int, data: bytes) -> None:
        """Record the state machine's snapshot `data` at `index` and drop the log up to it.

        The snapshot file is written durably first; then older snapshot files and the segments
        entirely at or below `index` are removed. Compact only what has been applied.

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
            self._write_snapshot(meta, data)
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

    def _write_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Atomically write the snapshot file of `meta`, then remove the previous one."""
        name = snapshot_name(meta)
        self._replace(name, [encode_snapshot_header(meta, data), data])
        path = self._path(name)
        if self._snap_path is not None and self._snap_path != path:
            self._fs.unlink(self._snap_path)
            self._dir_dirty = True
        self._snap_path = path

    def _replace(self, name: str, parts: list[bytes]) -> None:
        """Atomically replace file `name` by `parts`: temp file, fsync, rename, fsync directory."""
        fs = self._fs
        path = self._path(name)
        tmp = path + TEMP_SUFFIX
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for part in parts:
                offset += _pwrite_all(fs, fd, part, offset)
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

    # -- helpers -------------------------------------------------------------------------------------

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
        err = StorageFailure(f"storage {self._dir}: {what} failed: {_describe(exc)}{where}", exc.errno)
        self._mark_failed(err)
        return err

    def _mark_failed(self, err: StorageFailure) -> None:
        if self._failed is None:
            self._failed = err
            self._log.error("%s; refusing every write from now on", err.message)


def _pwrite_all(fs: FileSystem, fd: int, data: bytes, offset: int) -> int:
    """Write all of `data` at `offset`. Returns: len(data). A short write is an EIO `OSError`.

    `FileSystem.pwrite` writes everything or raises; this checks it, because a record half written
    and believed whole would shift every later offset of the segment.
    """
    written = fs.pwrite(fd, data, offset)
    if written != len(data):
        raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes at offset {offset}")
    return written


def _describe(exc: OSError) -> str:
    """Returns: e.g. ``No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text
