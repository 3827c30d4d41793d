"""`RaftLog`: the stable view plus the unstable tail, and their invariants."""

from __future__ import annotations

import pytest

from wiber.errors import InvariantError
from wiber.raft.log import RaftLog
from wiber.raft.messages import Entry, EntryKind, SnapshotMeta
from wiber.raft.storage import Compacted, EntryUnavailable, MemoryStorage


def ents(first: int, terms: list[int], size: int = 0) -> list[Entry]:
    return [Entry(first + k, t, EntryKind.NORMAL, b"y" * size) for k, t in enumerate(terms)]


def stored(terms: list[int]) -> MemoryStorage:
    s = MemoryStorage()
    s.append(ents(1, terms))
    return s


def test_reads_span_storage_and_tail() -> None:
    """term/entries see the stored prefix and the unstable tail as one log."""
    log = RaftLog(stored([1, 1, 2]))
    log.append(ents(4, [3, 3]))
    assert log.last_index() == 5 and log.last_term() == 3
    assert [log.term(i) for i in range(6)] == [0, 1, 1, 2, 3, 3]
    assert [e.index for e in log.entries(2, 6)] == [2, 3, 4, 5]
    assert log.unstable_entries() == ents(4, [3, 3])
    with pytest.raises(EntryUnavailable):
        log.term(6)


def test_entries_size_limit_across_the_boundary() -> None:
    """max_bytes applies to the whole batch, storage part and tail part together."""
    s = MemoryStorage()
    s.append(ents(1, [1, 1], size=84))
    log = RaftLog(s)
    log.append(ents(3, [1, 1], size=84))
    assert len(log.entries(1, 5, 300)) == 3
    assert len(log.entries(1, 5, 150)) == 1
    assert len(log.entries(3, 5, 150)) == 1
    assert len(log.entries(1, 5, None)) == 4


def test_append_must_follow_the_last_index() -> None:
    """A leader's append with a gap or an overlap is an invariant breach."""
    log = RaftLog(stored([1]))
    with pytest.raises(InvariantError):
        log.append(ents(3, [1]))


def test_maybe_append_truncates_a_conflicting_suffix() -> None:
    """Figure 2 receiver rule 3: a conflict deletes the existing entry and all that follow."""
    log = RaftLog(stored([1, 1, 1, 1]))
    log.maybe_append(ents(3, [2, 2, 2]))
    assert [log.term(i) for i in range(1, 6)] == [1, 1, 2, 2, 2]
    # The stale stored suffix is hidden: the tail starts at the conflict.
    assert log.unstable_entries()[0].index == 3


def test_maybe_append_ignores_entries_already_present() -> None:
    """Rule 4: only entries not already in the log are appended (a duplicate changes nothing)."""
    log = RaftLog(stored([1, 1, 2]))
    log.maybe_append(ents(2, [1, 2]))
    assert not log.has_unstable() and log.last_index() == 3
    log.maybe_append(ents(2, [1]))  # a shorter, older message must not truncate
    assert log.last_index() == 3


def test_conflict_with_the_committed_prefix_is_an_invariant_breach() -> None:
    """A committed entry is never overwritten."""
    log = RaftLog(stored([1, 1, 1]))
    log.commit_to(2)
    with pytest.raises(InvariantError):
        log.maybe_append(ents(2, [5]))


def test_commit_never_moves_back_nor_past_the_end() -> None:
    """commit_to only raises the commit index, and never beyond the log."""
    log = RaftLog(stored([1, 1, 1]))
    assert log.commit_to(2) and not log.commit_to(1)
    assert log.committed == 2
    with pytest.raises(InvariantError):
        log.commit_to(4)


def test_next_committed_and_applied() -> None:
    """Committed entries are handed out once; applied cannot pass committed."""
    log = RaftLog(stored([1, 1, 1]))
    log.commit_to(2)
    assert [e.index for e in log.next_committed(1 << 20)] == [1, 2]
    log.applied_to(2)
    assert log.next_committed(1 << 20) == [] and not log.has_next_committed()
    with pytest.raises(InvariantError):
        log.applied_to(3)


def test_stable_to_checks_the_storage() -> None:
    """advance() may only mark as stable what storage really holds."""
    s = stored([1])
    log = RaftLog(s)
    log.append(ents(2, [1, 1]))
    with pytest.raises(InvariantError):
        log.stable_to(3, 1)  # not written yet
    log2 = RaftLog(s)
    log2.append(ents(2, [1, 1]))
    s.append(log2.unstable_entries())
    log2.stable_to(3, 1)
    assert not log2.has_unstable() and log2.stable_last_index() == 3


def test_restore_replaces_the_log_until_persisted() -> None:
    """A snapshot from the leader hides the whole stored log; its index is committed and applied."""
    s = stored([1, 1, 1])
    log = RaftLog(s)
    log.restore(SnapshotMeta(10, 4), b"state")
    assert (log.first_index(), log.last_index(), log.term(10)) == (11, 10, 4)
    assert log.committed == 10 and log.applied == 10
    with pytest.raises(Compacted):
        log.term(3)
    s.apply_snapshot(SnapshotMeta(10, 4), b"state")
    log.stable_snap_to(SnapshotMeta(10, 4))
    assert log.pending_snapshot() is None and log.first_index() == 11


def test_compacted_reads_raise() -> None:
    """Reading below the first index raises Compacted."""
    s = stored([1, 1, 2, 2])
    s.compact(2, b"")
    log = RaftLog(s)
    assert log.first_index() == 3 and log.term(2) == 1
    with pytest.raises(Compacted):
        log.entries(2, 4)


def test_is_up_to_date() -> None:
    """Section 5.4.1: a later last term wins; with equal last terms the longer log wins."""
    log = RaftLog(stored([1, 2, 2]))
    assert log.is_up_to_date(1, 3)
    assert log.is_up_to_date(3, 2) and log.is_up_to_date(4, 2)
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(10, 1)
