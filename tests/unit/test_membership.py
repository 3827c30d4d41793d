"""`wiber.raft.membership`: single-server changes and the CONFIG entry's data (thesis chapter 4)."""

from __future__ import annotations

import msgpack
import pytest

from wiber.raft.membership import ChangeKind, ConfChange, Membership, MembershipError, decode_membership

THREE = Membership.of({"n1", "n2", "n3"})


def test_a_node_joins_as_a_learner_then_votes_once_promoted_and_leaves() -> None:
    joined = THREE.apply(ConfChange(ChangeKind.ADD_LEARNER, "n4"))
    assert joined == Membership.of({"n1", "n2", "n3"}, {"n4"}) and joined.role_of("n4") == "learner"
    promoted = joined.apply(ConfChange(ChangeKind.PROMOTE, "n4"))
    assert promoted.voters == {"n1", "n2", "n3", "n4"} and not promoted.learners
    assert promoted.apply(ConfChange(ChangeKind.REMOVE, "n1")).voters == {"n2", "n3", "n4"}
    assert joined.apply(ConfChange(ChangeKind.REMOVE, "n4")) == THREE  # a learner can leave too


@pytest.mark.parametrize(("change", "says"), [
    (ConfChange(ChangeKind.ADD_LEARNER, "n2"), "already a voter"),
    (ConfChange(ChangeKind.PROMOTE, "n2"), "not a learner"),
    (ConfChange(ChangeKind.PROMOTE, "n9"), "not a learner"),
    (ConfChange(ChangeKind.REMOVE, "n9"), "not a member"),
])
def test_changes_that_do_not_fit_say_why(change: ConfChange, says: str) -> None:
    with pytest.raises(MembershipError, match=says):
        THREE.apply(change)


def test_the_last_voter_cannot_be_removed() -> None:
    with pytest.raises(MembershipError, match="last voter"):
        Membership.of({"n1"}, {"n2"}).apply(ConfChange(ChangeKind.REMOVE, "n1"))


def test_the_config_entry_data_round_trips_and_refuses_what_is_not_a_membership() -> None:
    m = Membership.of({"n1", "n2"}, {"n3"})
    assert decode_membership(m.encode()) == m
    assert m.describe() == "voters n1,n2; learners n3"
    for bad in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"voters": ["n1"]}),
                msgpack.packb({"voters": [], "learners": []}), msgpack.packb({"voters": ["n1"], "learners": ["n1"]}),
                msgpack.packb({"voters": [1], "learners": []}), msgpack.packb({"voters": [""], "learners": []})):
        with pytest.raises(ValueError):
            decode_membership(bad)
