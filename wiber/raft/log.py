"""`RaftLog`: the core's view of its log, stable storage plus an unstable tail (etcd `log.go`).

Theory of operation
-------------------
Entries the core has accepted but the application has not yet persisted live in the *unstable*
tail, ``_unstable``, starting at index ``_offset``. Everything below ``_offset`` is read from the
storage (or, while a snapshot received from the leader is pending, is covered by that snapshot)::

        storage (stable)               unstable tail
    [first_index ... _offset - 1] [_offset ... last_index]

Invariants (checked where they could break; a breach raises InvariantError):

* ``last_index() == _offset + len(_unstable) - 1``: the log has no gap.
* Storage entries at or above ``_offset`` are stale: a conflict truncated them from the tail
  and the application will overwrite them with `Ready.entries` (which starts at ``_offset``);
  `term()` and `entries()` never read them.
* ``snapshot index <= applied <= committed <= last_index()``, and `committed` never decreases:
  a committed entry is never truncated (Figure 2's AppendEntries rule 3 never reaches it, or the
  leader completeness property is broken).
* While a snapshot is pending, ``_offset == snapshot.index + 1``: the whole stored log is replaced.

The tail becomes stable only in `stable_to`/`stable_snap_to`, called from `Raft.advance()`
once the application has written the Ready that carried it.
"""

from __future__ import annotations

from wiber.errors import InvariantError
from wiber.raft.messages import ENTRY_OVERHEAD, Entry, SnapshotMeta
from wiber.raft.storage import Compacted, EntryUnavailable, LogRangeError, LogStorage, limit_size

__all__ = ["RaftLog"]


class RaftLog:
    """The log as the core sees it; `committed` and `applied` are plain attributes the core moves."""

    __slots__ = ("_offset", "_snapshot", "_storage", "_unstable", "applied", "committed")

    def __init__(self, storage: LogStorage) -> None:
        self._storage = storage
        self._unstable: list[Entry] = []
        self._offset = storage.last_index() + 1
        self._snapshot: tuple[SnapshotMeta, bytes] | None = None
        first = storage.first_index()
        self.committed = first - 1
        self.applied = first - 1

    # -- reading --------------------------------------------------------------------------------

    def first_index(self) -> int:
        """Returns: the first index whose entry is available (snapshot index + 1)."""
        if self._snapshot is not None:
            return self._snapshot[0].index + 1
        return self._storage.first_index()

    def last_index(self) -> int:
        """Returns: the index of the last entry (stable or not)."""
        return self._offset + len(self._unstable) - 1

    def stable_last_index(self) -> int:
        """Returns: the last index known to be persisted (the leader's own match index)."""
        if self._snapshot is not None:
            raise InvariantError("stable_last_index with a snapshot not yet persisted")
        return self._offset - 1

    def snapshot_index(self) -> int:
        """Returns: the index of the snapshot the log starts after (pending or stored)."""
        return self.first_index() - 1

    def term(self, index: int) -> int:
        """Returns: the term at `index`.

        Raises:
            Compacted: below the snapshot index.
            EntryUnavailable: above the last index.
        """
        offset = self._offset
        if index >= offset:
            k = index - offset
            if k < len(self._unstable):
                return self._unstable[k].term
            raise EntryUnavailable(f"index {index} is beyond the last index {self.last_index()}")
        snap = self._snapshot
        if snap is not None:
            if index == snap[0].index:
                return snap[0].term
            raise Compacted(f"index {index} is covered by the pending snapshot at {snap[0].index}")
        return self._storage.term(index)

    def last_term(self) -> int:
        """Returns: the term of the last entry (the snapshot's term for an empty log)."""
        return self.term(self._offset + len(self._unstable) - 1)

    def match_term(self, index: int, term: int) -> bool:
        """Returns: whether the log holds an entry at `index` with `term` (False if out of range)."""
        try:
            return self.term(index) == term
        except LogRangeError:
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Paper section 5.4.1: is a log ending at `last_index`/`last_term` at least as up-to-date as ours?

        "If the logs have last entries with different terms, then the log with the later term is
        more up-to-date. If the logs end with the same term, then whichever log is longer is more
        up-to-date."
        """
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Returns: entries ``[lo, hi)``, cut to `max_bytes` (never empty when lo < hi).

        Raises:
            Compacted: `lo` is below the first index.
            EntryUnavailable: `hi` is above last index + 1.
        """
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise EntryUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        offset = self._offset
        if lo >= offset:
            tail = self._unstable[lo - offset:hi - offset]
            return tail if max_bytes is None else limit_size(tail, max_bytes)
        stored = self._storage.entries(lo, min(hi, offset), max_bytes)
        if hi <= offset or len(stored) < offset - lo:
            return stored
        tail = self._unstable[:hi - offset]
        if max_bytes is None:
            return stored + tail
        budget = max_bytes - sum(len(e.data) + ENTRY_OVERHEAD for e in stored)
        result = list(stored)
        for e in tail:
            budget -= len(e.data) + ENTRY_OVERHEAD
            if budget < 0:
                break
            result.append(e)
        return result

    def unstable_entries(self) -> list[Entry]:
        """Returns: a copy of the tail the application has not persisted yet."""
        return list(self._unstable)

    def has_unstable(self) -> bool:
        """Returns: whether there are entries to persist."""
        return bool(self._unstable)

    def pending_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """Returns: the snapshot received from the leader and not yet persisted, if any."""
        return self._snapshot

    def has_next_committed(self) -> bool:
        """Returns: whether committed entries wait to be applied."""
        return self.committed > self.applied

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Returns: the committed entries after `applied`, cut to `max_bytes` (at least one)."""
        if self.committed <= self.applied:
            return []
        return self.entries(self.applied + 1, self.committed + 1, max_bytes)

    # -- changing -------------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append a leader's new entries at the end of the log.

        Raises:
            InvariantError: they do not start right after the last index.
        """
        if entries and entries[0].index != self.last_index() + 1:
            raise InvariantError(
                f"append at {entries[0].index} does not follow the last index {self.last_index()}")
        self._unstable.extend(entries)

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Returns: the index of the first entry not already in the log (absent or another term), or 0."""
        last = self.last_index()
        for e in entries:
            if e.index > last or not self.match_term(e.index, e.term):
                return e.index
        return 0

    def maybe_append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Figure 2, AppendEntries receiver rules 3 and 4, for entries that follow a matching prev.

        "If an existing entry conflicts with a new one (same index but different terms), delete
        the existing entry and all that follow it. Append any new entries not already in the log."

        Raises:
            InvariantError: the conflict is at or below the commit index.
        """
        conflict = self.find_conflict(entries)
        if conflict == 0:
            return
        if conflict <= self.committed:
            raise InvariantError(
                f"entry {conflict} conflicts with the committed prefix (commit {self.committed})")
        self._truncate_and_append(entries[conflict - entries[0].index:])

    def _truncate_and_append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Put `entries` at their indexes, dropping whatever the tail held from the first of them."""
        after = entries[0].index
        offset = self._offset
        if after == offset + len(self._unstable):
            self._unstable.extend(entries)
        elif after <= offset:
            # The stored suffix from `after` is now stale: Ready.entries will overwrite it.
            self._offset = after
            self._unstable = list(entries)
        else:
            del self._unstable[after - offset:]
            self._unstable.extend(entries)

    def commit_to(self, index: int) -> bool:
        """Raise the commit index to `index` (never lowers it). Returns: whether it moved.

        Raises:
            InvariantError: `index` is beyond the last index.
        """
        if index <= self.committed:
            return False
        if index > self.last_index():
            raise InvariantError(f"commit {index} beyond the last index {self.last_index()}")
        self.committed = index
        return True

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the whole log by a snapshot from the leader (pending until persisted)."""
        if meta.index < self.committed:
            raise InvariantError(f"restore to {meta.index} below the commit index {self.committed}")
        self._snapshot = (meta, data)
        self._unstable = []
        self._offset = meta.index + 1
        self.committed = meta.index
        self.applied = meta.index

    def stable_to(self, index: int, term: int) -> None:
        """The application persisted the tail up to `index` (a Ready's last entry, of `term`).

        Raises:
            InvariantError: that is not what the tail holds, or the storage does not hold it.
        """
        k = index - self._offset + 1
        if k <= 0 or k > len(self._unstable) or self._unstable[k - 1].term != term:
            raise InvariantError(
                f"advance() with entries up to {index}/{term} that are not in the unstable tail")
        del self._unstable[:k]
        self._offset = index + 1
        try:
            stored = self._storage.term(index)
        except LogRangeError:
            stored = -1
        if stored != term or self._storage.last_index() != index:
            raise InvariantError(
                f"storage does not hold Ready.entries up to {index}/{term} (last index "
                f"{self._storage.last_index()}): persist them, truncating the old suffix, before advance()")

    def stable_snap_to(self, meta: SnapshotMeta) -> None:
        """The application persisted the pending snapshot `meta`.

        Raises:
            InvariantError: the storage does not start after it.
        """
        if self._snapshot is not None and self._snapshot[0] == meta:
            self._snapshot = None
        if self._storage.first_index() != meta.index + 1:
            raise InvariantError(
                f"storage does not start after the snapshot at {meta.index}: "
                f"persist Ready.snapshot before advance()")

    def applied_to(self, index: int) -> None:
        """The application applied every committed entry up to `index`.

        Raises:
            InvariantError: `index` is not between the applied and the commit index.
        """
        if index < self.applied or index > self.committed:
            raise InvariantError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def __repr__(self) -> str:
        return (f"RaftLog(first={self.first_index()}, offset={self._offset}, unstable={len(self._unstable)}, "
                f"last={self.last_index()}, committed={self.committed}, applied={self.applied})")
