"""The log storage the core reads (`LogStorage`), and `MemoryStorage`, its in-memory implementation.

Theory of operation (etcd `storage.go`)
--------------------------------------
The core never writes storage. It reads the stable log through `LogStorage` and hands the
application, in each `Ready`, what to write; the application writes it (to `MemoryStorage`'s writer
methods in the simulation, to the durable segment store in a node) and then calls `advance()`.

A storage holds a snapshot (`SnapshotMeta(index, term)` plus opaque state machine bytes; index 0
means none) and the entries that follow it without a gap::

    first_index() = snapshot.index + 1        last_index() = snapshot.index + number of entries

`term(i)` is defined for ``snapshot.index <= i <= last_index()`` (the snapshot's own term at its
index; `term(0) == 0` for an empty log); below that it raises `Compacted`, above it
`EntryUnavailable`. `entries(lo, hi, max_bytes)` returns ``[lo, hi)`` cut to `max_bytes`, but never
empty when ``lo < hi`` (one entry over the budget is still returned, so replication always advances).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from wiber.errors import InvariantError, WiberError
from wiber.raft.messages import ENTRY_OVERHEAD, Entry, HardState, SnapshotMeta

__all__ = [
    "Compacted", "EntryUnavailable", "LogRangeError", "LogStorage", "MemoryStorage", "limit_size",
]


class LogRangeError(WiberError, LookupError):
    """A log index outside what a storage holds was asked for."""


class Compacted(LogRangeError):
    """The index is below the storage's first index: it was compacted into the snapshot."""


class EntryUnavailable(LogRangeError):
    """The index is above the storage's last index: no such entry (yet)."""


class LogStorage(Protocol):
    """The read-only view of stable storage the Raft core uses (etcd `Storage`)."""

    def initial_state(self) -> tuple[HardState, SnapshotMeta]:
        """Returns: the persisted hard state and the meta of the persisted snapshot (0/0 if none)."""
        ...

    def first_index(self) -> int:
        """Returns: the index of the first entry still held (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Returns: the index of the last entry held (the snapshot index when there are none)."""
        ...

    def term(self, index: int) -> int:
        """Returns: the term of the entry at `index` (the snapshot's term at its index).

        Raises:
            Compacted: `index` is below the snapshot index.
            EntryUnavailable: `index` is above the last index.
        """
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Returns: the entries with ``lo <= index < hi``, cut to `max_bytes` (at least one).

        Raises:
            Compacted: `lo` is at or below the snapshot index.
            EntryUnavailable: `hi` is above last index + 1.
        """
        ...

    def snapshot(self) -> tuple[SnapshotMeta, bytes]:
        """Returns: the latest snapshot's meta and state machine bytes."""
        ...


class InMemoryLogView:
    """The `LogStorage` read side, served from `_hard_state`, `_snap`, `_snap_data` and `_entries`.

    Shared by `MemoryStorage` and the durable storage, which keeps everything since its snapshot
    in memory too, so both answer every read the same way, with the same exceptions.
    Invariant the subclass keeps: ``_entries[k].index == _snap.index + 1 + k``.
    """

    __slots__ = ()

    _hard_state: HardState
    _snap: SnapshotMeta
    _snap_data: bytes
    _entries: list[Entry]

    def initial_state(self) -> tuple[HardState, SnapshotMeta]:
        """Returns: the hard state last set and the current snapshot's meta."""
        return self._hard_state, self._snap

    def first_index(self) -> int:
        """Returns: snapshot index + 1."""
        return self._snap.index + 1

    def last_index(self) -> int:
        """Returns: the last index held."""
        return self._snap.index + len(self._entries)

    def term(self, index: int) -> int:
        """Returns: the term at `index`. Raises: Compacted, EntryUnavailable."""
        offset = index - self._snap.index
        if offset <= 0:
            if offset == 0:
                return self._snap.term
            raise Compacted(f"index {index} is compacted (snapshot at {self._snap.index})")
        if index > self.last_index():
            raise EntryUnavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self._term_after_snapshot(offset)

    def _term_after_snapshot(self, offset: int) -> int:
        """Returns: the term of the entry `offset` places after the snapshot (1 <= offset <= count)."""
        return self._entries[offset - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Returns: entries ``[lo, hi)`` cut to `max_bytes` (never empty if lo < hi).

        Raises:
            Compacted: ``lo <= snapshot index``.
            EntryUnavailable: ``hi > last_index() + 1``.
            ValueError: ``lo > hi``.
        """
        base = self._snap.index
        if lo <= base:
            raise Compacted(f"index {lo} is compacted (snapshot at {base})")
        if hi > base + len(self._entries) + 1:
            raise EntryUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        if lo > hi:
            raise ValueError(f"empty range: lo {lo} > hi {hi}")
        ents = self._entries[lo - base - 1:hi - base - 1]
        if max_bytes is not None:
            return limit_size(ents, max_bytes)
        return ents

    def snapshot(self) -> tuple[SnapshotMeta, bytes]:
        """Returns: the snapshot meta and data (0/0 and b"" when none was taken)."""
        return self._snap, self._snap_data

    def _not_covered(self, entries: Sequence[Entry]) -> Sequence[Entry]:
        """Returns: the entries of an append that the snapshot does not already cover.

        Raises:
            InvariantError: they would leave a gap after the last index, or are not contiguous.
        """
        if not entries:
            return entries
        base = self._snap.index
        first = entries[0].index
        if first > self.last_index() + 1:
            raise InvariantError(
                f"append at {first} would leave a gap after the last index {self.last_index()}")
        if entries[-1].index != first + len(entries) - 1:
            raise InvariantError(f"append of {len(entries)} entries from {first} is not contiguous "
                                 f"(the last has index {entries[-1].index})")
        return entries[base + 1 - first:] if first <= base else entries


class MemoryStorage(InMemoryLogView):
    """`LogStorage` in memory, plus the writer side the application calls with each `Ready`.

    Invariants: ``_entries[k].index == _snap.index + 1 + k`` and terms never decrease along
    the list; ``_snap.index`` only grows.
    """

    __slots__ = ("_entries", "_hard_state", "_snap", "_snap_data")

    def __init__(self) -> None:
        self._hard_state = HardState(0, None, 0)
        self._snap = SnapshotMeta(0, 0)
        self._snap_data = b""
        self._entries: list[Entry] = []


    # -- the writer side (the application, following each Ready) --------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        """Persist the term, vote and commit index of a `Ready.hard_state`."""
        self._hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Persist `Ready.entries`: drop any stored entry at or after ``entries[0].index``, then append.

        Entries at or below the snapshot index are skipped (they are already covered).

        Raises:
            InvariantError: the entries would leave a gap after the last index, or are not contiguous.
        """
        entries = self._not_covered(entries)
        if not entries:
            return
        del self._entries[entries[0].index - self._snap.index - 1:]
        self._entries.extend(entries)

    def apply_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Persist `Ready.snapshot`: replace the whole log by the snapshot.

        Raises:
            InvariantError: the snapshot is older than the one held.
        """
        if meta.index < self._snap.index:
            raise InvariantError(f"snapshot at {meta.index} is older than the one held ({self._snap.index})")
        self._snap = meta
        self._snap_data = data
        self._entries = []

    def compact(self, index: int, data: bytes) -> None:
        """Record the application's snapshot `data` of its state at `index`; drop the log up to it.

        The application must only compact what it has applied (so what is committed).

        Raises:
            Compacted: `index` is at or below the current snapshot index.
            EntryUnavailable: `index` is above the last index.
        """
        base = self._snap.index
        if index <= base:
            raise Compacted(f"index {index} is already compacted (snapshot at {base})")
        if index > self.last_index():
            raise EntryUnavailable(f"cannot compact to {index}: last index is {self.last_index()}")
        self._snap = SnapshotMeta(index, self._entries[index - base - 1].term)
        self._snap_data = data
        del self._entries[:index - base]


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """Returns: the longest prefix of `entries` within `max_bytes` (always at least one entry)."""
    total = 0
    overhead = ENTRY_OVERHEAD
    for k, e in enumerate(entries):
        total += len(e.data) + overhead
        if total > max_bytes and k > 0:
            return entries[:k]
    return entries
