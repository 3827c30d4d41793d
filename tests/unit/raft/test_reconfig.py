"""Membership in the Raft core (Ongaro's thesis, chapter 4; `wiber/raft/reconfig.py`), by hand on
the sans-I/O core: single-server changes, learners, the 2015 fix, a leader that removes itself, a
removed node that cannot disturb, and the double vote of a node whose disk was emptied."""

from __future__ import annotations

from typing import Any

import pytest

from wiber.raft import (
    AppendEntries,
    ChangeKind,
    ConfChange,
    EntryKind,
    Membership,
    MembershipError,
    MemoryStorage,
    Raft,
    RequestVote,
    RequestVoteReply,
    Role,
    TimeoutNow,
)

from .helpers import IDS3, Net, Node, elected, of_type, role


def joiner(net: Net, node_id: str, **settings: Any) -> Node:
    """Returns: node `node_id` started with `join` and an empty log, wired into `net`."""
    node = Node(node_id, [*net.nodes, node_id], join=True, seed=len(net.nodes), **settings)
    net.nodes[node_id] = node
    return node


def change(net: Net, leader: str, kind: ChangeKind, node: str) -> int:
    index = net.raft(leader).propose_change(ConfChange(kind, node))
    net.deliver_all()
    return index


def test_a_node_joins_as_a_learner_is_promoted_once_caught_up_and_then_counts() -> None:
    net = elected()
    n1 = net.raft("n1")
    for k in range(5):
        n1.propose([b"m%d" % k])
    net.deliver_all()
    n4 = joiner(net, "n4")
    assert n4.raft.membership == Membership(frozenset(), frozenset())
    n4.tick(50)  # a joining node never campaigns
    assert role(n4.raft) is Role.FOLLOWER and n4.raft.term == 0
    change(net, "n1", ChangeKind.ADD_LEARNER, "n4")
    net.tick_all(3)  # heartbeats bring the learner up to date; the leader promotes it by itself
    assert n1.membership == Membership.of({"n1", "n2", "n3", "n4"})
    assert all(net.raft(i).membership.voters == {"n1", "n2", "n3", "n4"} for i in net.nodes)
    assert [e.data for e in n4.applied if e.kind is EntryKind.NORMAL] == [b"m%d" % k for k in range(5)]
    # Four voters: a write needs three of them now.
    net.isolate("n2")
    net.isolate("n3")
    index, _ = n1.propose([b"needs three"])
    net.deliver_all()
    assert n1.commit_index < index
    net.heal()
    net.tick_all(2)
    assert n1.commit_index >= index


def test_a_learner_neither_votes_nor_counts_toward_a_commit() -> None:
    net = elected()
    n4 = joiner(net, "n4")
    net.isolate("n4")  # it cannot catch up, so it stays a learner
    change(net, "n1", ChangeKind.ADD_LEARNER, "n4")
    assert net.raft("n1").membership.learners == {"n4"}
    net.heal()
    net.isolate("n2")
    net.isolate("n3")
    index, _ = net.raft("n1").propose([b"x"])
    net.deliver_all()
    # n1 and the learner would be two of three voters: its acknowledgement does not count. (Caught
    # up, it was promoted at once, by a change that cannot commit either: two of four voters.)
    n1 = net.raft("n1")
    assert n1.commit_index < index and n4.raft.last_index >= index
    assert n1.membership_at(n1.commit_index).learners == {"n4"}


def test_a_learner_never_campaigns() -> None:
    net = elected()
    n4 = joiner(net, "n4")
    net.isolate("n4")
    change(net, "n1", ChangeKind.ADD_LEARNER, "n4")
    term = net.raft("n1").term
    ae = AppendEntries(term, "n1", "n4", 0, 0, tuple(net["n1"].storage.entries(1, 3)), 2, 0)
    n4.step(ae)
    assert n4.raft.membership.learners == {"n4"}
    assert not of_type(n4.tick(50), RequestVote) and role(n4.raft) is Role.FOLLOWER


def test_one_change_at_a_time_and_none_before_the_leader_committed_in_its_term() -> None:
    net = elected()
    joiner(net, "n4")
    joiner(net, "n5")
    net.isolate("n2")
    net.isolate("n3")
    n1 = net.raft("n1")
    n1.propose_change(ConfChange(ChangeKind.ADD_LEARNER, "n4"))  # cannot commit: n2 and n3 are cut off
    with pytest.raises(MembershipError, match="not committed yet; one change at a time"):
        n1.propose_change(ConfChange(ChangeKind.ADD_LEARNER, "n5"))
    net.heal()
    net.tick_all(2)  # the first change commits, and every node learns it
    # The 2015 fix: a new leader changes nothing before an entry of its own term is committed.
    net.isolate("n1")
    net.drop = lambda m: isinstance(m, AppendEntries)  # the new leader's first entry never arrives
    n2 = new_leader(net, "n1")
    with pytest.raises(MembershipError, match="not committed an entry of its own term"):
        n2.propose_change(ConfChange(ChangeKind.REMOVE, "n1"))


def new_leader(net: Net, old: str) -> Raft:
    """Tick every node until one other than `old` leads. Returns: its core."""
    for _ in range(200):
        net.tick_all()
        leaders = [i for i in net.leaders() if i != old]
        if leaders:
            return net.raft(leaders[0])
    raise AssertionError("no new leader")


def test_a_change_removed_by_a_conflicting_leader_takes_its_membership_with_it() -> None:
    net = elected()
    joiner(net, "n4")
    net.isolate("n1")
    n1 = net.raft("n1")
    n1.propose_change(ConfChange(ChangeKind.ADD_LEARNER, "n4"))
    net.deliver_all()
    assert n1.membership.learners == {"n4"}  # in force in its log though uncommitted
    net.heal()
    net.isolate("n1")
    new = new_leader(net, "n1")  # n2 and n3 elect a leader whose log lacks the change
    new.propose([b"of a later term"])
    net.deliver_all()
    net.heal()
    net.tick_all(3)  # n1 learns of the new leader, and its conflicting tail is replaced
    assert net.leaders() == [new.id] and n1.membership == Membership.of(IDS3)


def test_a_restart_rebuilds_the_membership_from_the_log() -> None:
    net = elected()
    change(net, "n1", ChangeKind.REMOVE, "n3")
    net["n2"].restart()
    assert net.raft("n2").membership == Membership.of({"n1", "n2"})


def test_removing_a_voter_shrinks_the_majority_and_it_can_no_longer_disturb_the_cluster() -> None:
    net = elected()
    change(net, "n1", ChangeKind.REMOVE, "n3")
    n1 = net.raft("n1")
    assert n1.membership.voters == net.raft("n2").membership.voters == {"n1", "n2"}
    # The leader stopped replicating to n3 with the change: n3 never heard of its removal, so it
    # campaigns, and forged requests of ever higher terms join in: nobody takes notice.
    term = n1.term
    for _ in range(4):
        net.send(net["n3"].tick(25))
        net.deliver_all()
    for t in range(term + 1, term + 6):
        for to in ("n1", "n2"):
            for pre in (True, False):
                net.send(net[to].step(RequestVote(t, "n3", to, 99, t - 1, pre, False)))
    net.deliver_all()
    assert n1.term == net.raft("n2").term == term and net.leaders() == ["n1"]
    assert not [m for m in net.log if isinstance(m, RequestVoteReply) and m.to == "n3"]
    index, _ = n1.propose([b"two of two"])
    net.isolate("n3")
    net.deliver_all()
    assert n1.commit_index >= index


def test_a_leader_that_removes_itself_hands_over_once_the_change_commits() -> None:
    net = elected()
    n1 = net.raft("n1")
    index = n1.propose_change(ConfChange(ChangeKind.REMOVE, "n1"))
    assert role(n1) is Role.LEADER  # it leads until the change commits, no longer counting itself
    net.deliver_all()
    assert n1.commit_index >= index
    assert role(n1) is Role.FOLLOWER and n1.membership.voters == {"n2", "n3"}
    assert [m.to for m in net.log if isinstance(m, TimeoutNow)] and len(net.leaders()) == 1
    new = net.leaders()[0]
    assert new in ("n2", "n3") and net.raft(new).term == n1.term + 1  # elected at once, no timeout
    before = len(net.log)
    net.send(net["n1"].tick(50))
    net.deliver_all()
    assert not [m for m in net.log[before:] if m.frm == "n1"]  # no longer a voter: it never campaigns


def test_only_voters_may_be_promoted_to_and_the_last_voter_stays() -> None:
    net = elected(["n1"])
    with pytest.raises(MembershipError, match="last voter"):
        net.raft("n1").propose_change(ConfChange(ChangeKind.REMOVE, "n1"))
    with pytest.raises(MembershipError, match="not a learner"):
        net.raft("n1").propose_change(ConfChange(ChangeKind.PROMOTE, "n2"))


def test_a_snapshot_carries_the_membership_as_of_its_index() -> None:
    net = elected()
    change(net, "n1", ChangeKind.REMOVE, "n3")
    n4 = joiner(net, "n4")
    change(net, "n1", ChangeKind.ADD_LEARNER, "n4")
    net.isolate("n4")
    n1 = net["n1"]
    for k in range(5):
        n1.raft.propose([b"m%d" % k])
    net.deliver_all()
    n1.storage.compact(n1.raft.commit_index, b"state")
    net.heal()
    net.tick_all(4)
    assert n4.storage.snapshot()[0].index > 0  # it got the snapshot, not the entries
    assert n4.raft.membership == n1.raft.membership == Membership.of({"n1", "n2", "n4"})


# -- a node whose disk was emptied (issue: "a lost disk that cannot vote twice") ------------------

def _candidate(node: Node) -> list[RequestVote]:
    """Tick `node` until it campaigns for real (its pre-votes granted by hand). Returns: its RequestVotes."""
    out = []
    while role(node.raft) is not Role.CANDIDATE:
        for m in node.tick():
            if isinstance(m, RequestVote) and m.pre_vote:
                out.extend(node.step(RequestVoteReply(m.term, m.to, m.frm, True, True)))
            else:
                out.append(m)
    return [m for m in out if isinstance(m, RequestVote) and not m.pre_vote]


def _double_vote_scenario(rule: bool) -> tuple[Net, list[str]]:
    """The reproduction: n1 and n2 campaign in term 1; n1 wins with n3's vote and commits X with
    n3's help; n3's disk is wiped and it restarts empty, at term 0; then n2's RequestVote of term 1,
    held up in the network all this while, reaches it. Returns: the net and the leaders of term 1.
    `rule`: with the empty-node rule (False: switched off, as before it existed)."""
    net = Net(IDS3, empty_listen_ticks=None)
    n1, n2, n3 = net["n1"], net["n2"], net["n3"]
    asks_n1, asks_n2 = _candidate(n1), _candidate(n2)
    n3.tick(10)  # a new cluster: n3 listened an election timeout (its own campaign goes nowhere)
    assert {m.term for m in asks_n1 + asks_n2} == {1}
    held = [m for m in asks_n2 if m.to == "n3"]
    net.cut |= {("n1", "n2"), ("n2", "n1")}  # n2 stays a candidate of term 1, apart from n1
    net.send(m for m in asks_n1 if m.to == "n3")
    net.deliver_all()
    assert net.leaders() == ["n1"] and n1.raft.term == 1 and net.raft("n3").voted_for == "n1"
    n1.raft.propose([b"X"])
    net.deliver_all()
    assert n1.raft.commit_index == 2  # committed with n3's acknowledgement
    wiped = Node("n3", IDS3, MemoryStorage(), seed=7, empty_listen_ticks=None)  # the same node, disk empty
    if not rule:
        wiped.raft._refuses_votes = lambda msg: False  # type: ignore[method-assign]
    net.nodes["n3"] = wiped
    net.send(held)  # n2's RequestVote of term 1 arrives first
    net.deliver_all()
    net.send(n1.tick(2))  # n1's heartbeats come after
    net.deliver_all()
    n2.raft.propose([b"Y"]) if role(n2.raft) is Role.LEADER else None
    net.deliver_all()
    return net, [i for i in net.leaders() if net.raft(i).term == 1]


def test_a_wiped_node_refuses_the_delayed_vote_of_a_term_it_may_have_voted_in() -> None:
    net, leaders = _double_vote_scenario(rule=True)
    assert leaders == ["n1"], f"two leaders of term 1: {leaders}"
    n3 = net.raft("n3")
    refused = [m for m in net.log if isinstance(m, RequestVoteReply) and m.frm == "n3" and m.to == "n2"]
    assert refused and not any(m.granted for m in refused) and n3.voted_for is None


def test_without_the_rule_the_reproduction_elects_two_leaders_in_one_term() -> None:
    """The same scenario with the rule switched off: the double vote the issue reproduced."""
    _, leaders = _double_vote_scenario(rule=False)
    assert sorted(leaders) == ["n1", "n2"]


def test_a_wiped_node_votes_again_once_it_caught_up_and_an_empty_cluster_still_elects() -> None:
    net = elected()
    assert all(not net.raft(i)._fresh for i in IDS3)  # every node of a new cluster caught up
    wiped = Node("n3", IDS3, MemoryStorage(), seed=9, empty_listen_ticks=None)
    net.nodes["n3"] = wiped
    assert wiped.raft._fresh
    net.tick_all(2)  # heartbeats: it catches up with an entry of the leader's term
    assert not wiped.raft._fresh and wiped.raft.last_index == net.raft("n1").last_index


def test_a_joining_node_takes_the_leaders_log_from_scratch_config_entries_included() -> None:
    net = elected()
    n4 = joiner(net, "n4")
    change(net, "n1", ChangeKind.ADD_LEARNER, "n4")
    net.tick_all(3)
    appended = [m for m in net.log if isinstance(m, AppendEntries) and m.to == "n4" and m.entries]
    assert appended and n4.raft.membership.voters == {"n1", "n2", "n3", "n4"}


def test_a_joining_node_grants_no_vote_before_it_caught_up_with_its_leader() -> None:
    """Started with --join (a new node, or a replaced disk) it knows no membership and may be an old
    id: no vote, pre-vote or real, until its log holds an entry of its leader's term."""
    net = elected()
    n4 = joiner(net, "n4")
    for pre in (True, False):
        replies = n4.step(RequestVote(5, "n2", "n4", 9, 4, pre, False))
        assert [m.granted for m in of_type(replies, RequestVoteReply)] == [False], pre
    assert n4.raft.voted_for is None

