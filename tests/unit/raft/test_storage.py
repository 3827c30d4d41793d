"""`MemoryStorage`: the LogStorage contract and the writer side."""

from __future__ import annotations

import pytest

from wiber.errors import InvariantError
from wiber.raft.messages import Entry, EntryKind, HardState, SnapshotMeta
from wiber.raft.storage import Compacted, EntryUnavailable, LogStorage, MemoryStorage


def ents(first: int, terms: list[int], size: int = 0) -> list[Entry]:
    return [Entry(first + k, t, EntryKind.NORMAL, b"x" * size) for k, t in enumerate(terms)]


def make(terms: list[int], size: int = 0) -> MemoryStorage:
    s = MemoryStorage()
    s.append(ents(1, terms, size))
    return s


def test_empty_storage() -> None:
    """A new storage: empty log after the 0/0 snapshot, zero hard state."""
    s = MemoryStorage()
    assert isinstance(s, MemoryStorage)
    view: LogStorage = s
    assert view.initial_state() == (HardState(0, None, 0), SnapshotMeta(0, 0))
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    assert s.entries(1, 1) == []
    with pytest.raises(EntryUnavailable):
        s.term(1)
    assert s.snapshot() == (SnapshotMeta(0, 0), b"")


def test_term_and_entries_ranges() -> None:
    """term() covers snapshot index..last; entries() raises outside, returns [lo, hi)."""
    s = make([1, 1, 2, 3])
    assert [s.term(i) for i in range(5)] == [0, 1, 1, 2, 3]
    assert [e.index for e in s.entries(2, 5)] == [2, 3, 4]
    with pytest.raises(EntryUnavailable):
        s.entries(2, 6)
    with pytest.raises(Compacted):
        s.entries(0, 2)
    with pytest.raises(ValueError):
        s.entries(3, 2)


def test_entries_respect_max_bytes_but_return_at_least_one() -> None:
    """max_bytes cuts the batch; a single entry over the budget is still returned."""
    s = make([1] * 5, size=84)  # 100 bytes each with the overhead
    assert len(s.entries(1, 6, 250)) == 2
    assert len(s.entries(1, 6, 300)) == 3
    assert len(s.entries(1, 6, 10)) == 1
    assert len(s.entries(1, 6, None)) == 5


def test_append_truncates_the_suffix() -> None:
    """Appending at an existing index replaces it and everything after."""
    s = make([1, 1, 1, 1])
    s.append(ents(3, [2, 2]))
    assert [s.term(i) for i in range(1, 5)] == [1, 1, 2, 2]
    s.append(ents(2, [3]))
    assert s.last_index() == 2 and s.term(2) == 3


def test_append_refuses_a_gap() -> None:
    """Entries that would leave a hole are a programming error."""
    s = make([1])
    with pytest.raises(InvariantError):
        s.append(ents(3, [1]))


def test_compact_keeps_the_snapshot_term() -> None:
    """compact(i) drops the prefix; term(i) is the snapshot's; below it is Compacted."""
    s = make([1, 1, 2, 2, 3])
    s.compact(3, b"state@3")
    assert s.first_index() == 4 and s.last_index() == 5
    assert s.term(3) == 2 and s.term(5) == 3
    assert s.snapshot() == (SnapshotMeta(3, 2), b"state@3")
    assert s.initial_state()[1] == SnapshotMeta(3, 2)
    with pytest.raises(Compacted):
        s.term(2)
    with pytest.raises(Compacted):
        s.compact(3, b"again")
    with pytest.raises(EntryUnavailable):
        s.compact(6, b"future")


def test_append_skips_entries_covered_by_the_snapshot() -> None:
    """Entries at or below the snapshot index are ignored, the rest appended."""
    s = make([1, 1, 1])
    s.compact(2, b"s")
    s.append(ents(1, [1, 1, 1, 2]))
    assert s.last_index() == 4 and s.term(4) == 2 and s.first_index() == 3


def test_apply_snapshot_replaces_everything() -> None:
    """A leader's snapshot replaces the whole log, even entries after it."""
    s = make([1, 1, 1, 1, 1])
    s.apply_snapshot(SnapshotMeta(3, 2), b"leader-state")
    assert (s.first_index(), s.last_index(), s.term(3)) == (4, 3, 2)
    assert s.snapshot() == (SnapshotMeta(3, 2), b"leader-state")
    with pytest.raises(InvariantError):
        s.apply_snapshot(SnapshotMeta(1, 1), b"old")


def test_hard_state_round_trip() -> None:
    """set_hard_state is what initial_state returns."""
    s = MemoryStorage()
    s.set_hard_state(HardState(4, "n2", 0))
    assert s.initial_state()[0] == HardState(4, "n2", 0)
