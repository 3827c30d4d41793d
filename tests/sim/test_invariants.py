"""Unit tests of the simulation's `SafetyChecker`: fabricated histories that break each property are
reported with that property's name, and legal histories that look alike are not."""

from __future__ import annotations

import pytest

from wiber.raft import Entry, EntryKind, SnapshotMeta

from .invariants import (
    ELECTION_SAFETY,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LINEARIZABLE_READS,
    LOG_MATCHING,
    PROPERTIES,
    STATE_MACHINE_SAFETY,
    InvariantViolation,
    SafetyChecker,
    chain,
)


def entries(first: int, *terms: int, data: bytes = b"x") -> list[Entry]:
    """Returns: entries from index `first`, one per term in `terms`, carrying `data` (NOOPs if empty)."""
    kind = EntryKind.NORMAL if data else EntryKind.NOOP
    return [Entry(first + k, term, kind, data) for k, term in enumerate(terms)]


def checker(*nodes: str) -> SafetyChecker:
    """Returns: a checker tracking `nodes` (default n1, n2, n3), each with an empty log."""
    c = SafetyChecker()
    for node in nodes or ("n1", "n2", "n3"):
        c.add_node(node)
    return c


def state_after(log: list[Entry]) -> tuple[int, int]:
    """Returns: the applied state (index, chain hash) of a state machine that applied `log` (from 1)."""
    h = 0
    for e in log:
        h = chain(h, e)
    return len(log), h


def violation(prop: str) -> pytest.RaisesExc[InvariantViolation]:
    """Returns: a context that expects an `InvariantViolation` naming `prop` at its start."""
    return pytest.raises(InvariantViolation, match=f"^{prop}: ")


# -- Election Safety ------------------------------------------------------------------------------------


def test_two_leaders_of_one_term_break_election_safety() -> None:
    """A second node leading a term someone already led is reported."""
    c = checker()
    c.observe_role("n1", True, 2, 0)
    with violation(ELECTION_SAFETY) as info:
        c.observe_role("n2", True, 2, 0)
    assert info.value.broken == ELECTION_SAFETY


def test_leaders_of_successive_terms_are_legal() -> None:
    """One leader per term, even the same node again in a later term, is fine; followers are not looked at."""
    c = checker()
    c.observe_role("n1", True, 1, 0)
    c.observe_role("n2", True, 2, 0)
    c.observe_role("n1", True, 3, 0)
    c.observe_role("n3", False, 3, 0)
    assert c.leaders == {1: "n1", 2: "n2", 3: "n1"}


# -- Leader Append-Only ---------------------------------------------------------------------------------


def test_a_leader_whose_log_shrinks_breaks_append_only() -> None:
    """A leader's last index going down within its term is reported."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 1, 1), 0, True)
    c.observe_role("n1", True, 1, 3)
    with violation(LEADER_APPEND_ONLY):
        c.observe_role("n1", True, 1, 2)


def test_a_leader_overwriting_its_persisted_log_breaks_append_only() -> None:
    """A leader writing at or below what it had persisted is reported, even with the same entries."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 1), 0, True)
    with violation(LEADER_APPEND_ONLY):
        c.persisted_entries("n1", entries(2, 1), 2, True)


def test_a_leader_of_a_new_term_may_hold_less_than_it_led_before() -> None:
    """Between its terms, a former leader's uncommitted tail may be overwritten as a follower."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 1, 1), 0, True)
    c.observe_role("n1", True, 1, 3)
    c.persisted_entries("n1", entries(2, 2), 3, False)
    c.observe_role("n1", True, 3, 2)


# -- Log Matching ---------------------------------------------------------------------------------------


def test_one_index_and_term_with_other_data_breaks_log_matching() -> None:
    """Two logs holding different commands at the same index and term are reported."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 1, data=b"a"), 0, False)
    with violation(LOG_MATCHING):
        c.persisted_entries("n2", entries(1, 1, 1, data=b"b"), 0, False)


def test_one_index_and_term_after_another_prefix_breaks_log_matching() -> None:
    """Equal entries at (2, term 2) after different entries at index 1 are reported (the prefix differs)."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 2), 0, False)
    with violation(LOG_MATCHING):
        c.persisted_entries("n2", entries(1, 2, 2), 0, False)


def test_an_entry_after_a_gap_breaks_log_matching() -> None:
    """A log written past its end (index 3 after 1) is reported."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1), 0, False)
    with violation(LOG_MATCHING):
        c.persisted_entries("n1", entries(3, 1), 1, False)


def test_a_snapshot_of_an_entry_no_log_held_breaks_log_matching() -> None:
    """A snapshot at an (index, term) that no node ever persisted is reported."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 1), 0, False)
    with violation(LOG_MATCHING):
        c.persisted_snapshot("n2", SnapshotMeta(2, 2))


def test_a_follower_overwriting_an_uncommitted_suffix_is_legal() -> None:
    """A follower replacing entries of an old term by a new leader's, and logs sharing a prefix, are fine."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 1, 1), 0, False)
    c.persisted_entries("n2", entries(1, 1, 2), 0, False)
    c.persisted_entries("n1", entries(2, 2, data=b"x"), 3, False)
    c.persisted_entries("n1", entries(3, 2), 2, False)
    c.persisted_entries("n3", entries(1, 1, 2, 2), 0, False)


def test_a_snapshot_install_then_appends_are_legal() -> None:
    """A follower installs a snapshot of an entry another log held, then appends after it."""
    c = checker()
    leader_log = entries(1, 1, 1, 1, 1)
    c.persisted_entries("n1", leader_log, 0, True)
    c.persisted_snapshot("n3", SnapshotMeta(3, 1))
    c.persisted_entries("n3", leader_log[2:], 3, False)  # index 3 is covered by the snapshot
    c.persisted_entries("n3", entries(5, 2), 4, False)
    c.persisted_entries("n1", entries(5, 2), 4, False)


# -- Leader Completeness --------------------------------------------------------------------------------


def test_a_leader_without_a_committed_entry_breaks_completeness() -> None:
    """A new leader whose log stops short of the highest applied index is reported."""
    c = checker()
    log = entries(1, 1, 1)
    c.persisted_entries("n1", log, 0, True)
    c.persisted_entries("n2", log, 0, False)
    c.persisted_entries("n3", log[:1], 0, False)
    c.applied("n1", (0, 0), log)
    with violation(LEADER_COMPLETENESS):
        c.observe_role("n3", True, 2, 1)


def test_a_leader_with_another_committed_entry_breaks_completeness() -> None:
    """A new leader holding a different entry at the highest applied index is reported."""
    c = checker()
    c.persisted_entries("n1", entries(1, 1, 1), 0, True)
    c.persisted_entries("n3", entries(1, 1, 2), 0, False)  # a different term-2 entry at index 2
    c.applied("n1", (0, 0), entries(1, 1, 1))
    with violation(LEADER_COMPLETENESS):
        c.observe_role("n3", True, 3, 2)


def test_a_leader_holding_every_committed_entry_is_legal() -> None:
    """A new leader holding the committed prefix and more, or a log from a snapshot past it, is fine."""
    c = checker()
    log = entries(1, 1, 1, 1)
    c.persisted_entries("n1", log, 0, True)
    c.persisted_entries("n2", log, 0, False)
    c.applied("n1", (0, 0), log[:2])
    c.observe_role("n2", True, 2, 3)
    c.persisted_snapshot("n3", SnapshotMeta(3, 1))
    c.observe_role("n3", True, 3, 3)


# -- State Machine Safety -------------------------------------------------------------------------------


def test_applying_another_entry_at_an_index_breaks_state_machine_safety() -> None:
    """Two nodes applying different entries at index 2 is reported."""
    c = checker()
    c.applied("n1", (0, 0), entries(1, 1, 1))
    with violation(STATE_MACHINE_SAFETY):
        c.applied("n2", (0, 0), entries(1, 1, 2))


def test_applying_out_of_order_breaks_state_machine_safety() -> None:
    """A node applying index 3 right after 1 is reported."""
    c = checker()
    state = c.applied("n1", (0, 0), entries(1, 1))
    with violation(STATE_MACHINE_SAFETY):
        c.applied("n1", state, entries(3, 1))


def test_restoring_a_snapshot_of_another_state_breaks_state_machine_safety() -> None:
    """A snapshot whose state differs from the committed one at its index is reported."""
    c = checker()
    c.applied("n1", (0, 0), entries(1, 1, 1))
    with violation(STATE_MACHINE_SAFETY):
        c.restored("n2", state_after(entries(1, 1, 2)))


def test_restoring_a_snapshot_beyond_anything_applied_breaks_state_machine_safety() -> None:
    """A snapshot past the highest index any node applied is reported."""
    c = checker()
    c.applied("n1", (0, 0), entries(1, 1))
    with violation(STATE_MACHINE_SAFETY):
        c.restored("n2", state_after(entries(1, 1, 1)))


def test_applying_the_same_entries_in_batches_and_from_a_snapshot_is_legal() -> None:
    """Nodes applying one log at different paces, and one restoring its snapshot, agree."""
    c = checker()
    log = entries(1, 1, 1, 2, 2)
    assert c.applied("n1", (0, 0), log) == state_after(log)
    state = c.applied("n2", (0, 0), log[:2])
    assert c.applied("n2", state, log[2:]) == state_after(log)
    c.restored("n3", state_after(log[:3]))
    assert c.applied("n3", state_after(log[:3]), log[3:]) == state_after(log)
    assert c.read_floor() == 4


# -- Linearizable reads ---------------------------------------------------------------------------------


def test_a_read_below_what_was_committed_when_asked_breaks_linearizability() -> None:
    """A read answered at index 2 though 3 was committed when it was requested is reported."""
    c = checker()
    c.applied("n1", (0, 0), entries(1, 1, 1, 1))
    floor = c.read_floor()
    with violation(LINEARIZABLE_READS):
        c.read_answered("n2", 2, floor)


def test_a_read_at_or_above_its_floor_is_legal() -> None:
    """A read answered at the committed index, or past it (more committed since), is fine."""
    c = checker()
    c.applied("n1", (0, 0), entries(1, 1, 1))
    floor = c.read_floor()
    c.read_answered("n1", floor, floor)
    c.read_answered("n1", floor + 3, floor)


def test_every_property_named_in_a_message_is_a_known_property() -> None:
    """`InvariantViolation.broken` reads the name before the first colon."""
    for prop in PROPERTIES:
        assert InvariantViolation(f"{prop}: detail: more").broken == prop
