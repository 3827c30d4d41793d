"""Recovery of the durable Raft log at start: read and check everything, then repair what a crash
left (rules 2-9 of the crash-safety argument in `wiber.storage.durable`)."""

from __future__ import annotations

import fcntl
import os
from array import array

from wiber.raft.messages import HardState, SnapshotMeta
from wiber.storage.durable.errors import CorruptLog, DirectoryLocked
from wiber.storage.durable.files import Files, Plan, Segment
from wiber.storage.format import (
    CORRUPT_SUFFIX,
    FRAME,
    HARD_STATE_NAME,
    LOCK_NAME,
    PAYLOAD_HEAD,
    TEMP_SUFFIX,
    FormatError,
    decode_hard_state,
    decode_snapshot,
    find_valid_record,
    parse_segment_name,
    parse_snapshot_name,
    scan_segment,
)
from wiber.storage.fs import OsFileSystem, makedirs_durably

__all__ = ["Recovery"]


class Recovery(Files):
    """Opening a data directory: the lock, then recovery (`_recover`), which `DurableStorage.open` runs."""

    def last_index(self) -> int:
        """Returns: the last index held (`DurableStorage` defines it)."""
        raise NotImplementedError

    def _open_directory(self) -> None:
        """Create the directory (durably: its name too) and, on the real file system, take the lock."""
        fs = self._fs
        # 0o700: the log is the node's own (messages, sessions); no other user reads it.
        self._sync_count += makedirs_durably(fs, self._dir, 0o700, self._fsync)
        if not isinstance(fs, OsFileSystem):
            return   # no other process can reach an in-memory file system (module docstring)
        os.chmod(self._dir, 0o700)  # a directory made by an older version (0o755) is closed too
        self._lock_fd = os.open(self._path(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
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
        plan = Plan(temps=[n for n in names if n.endswith(TEMP_SUFFIX)])
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

    def _find_snapshot(self, names: list[str], plan: Plan) -> None:
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

    def _scan_log(self, names: list[str], plan: Plan) -> None:
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
            seg = Segment(first, path, array("q", scan.offsets), scan.end)
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

    def _repair(self, plan: Plan) -> None:
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

    def _term_on_disk(self, seg: Segment, index: int) -> int:
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
