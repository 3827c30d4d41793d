"""One test per rule of the Raft paper's Figure 2, and per extension the core implements.

Each docstring quotes the rule (Ongaro & Ousterhout, "In Search of an Understandable Consensus
Algorithm", Figure 2; Ongaro's thesis for the extensions). Cores are driven directly with
messages (etcd `raft_paper_test.go`).
"""

from __future__ import annotations

import logging
import random

import pytest

from wiber.errors import InvariantError
from wiber.raft import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    MemoryStorage,
    ProposalDropped,
    Raft,
    RaftConfig,
    ReadState,
    RequestVote,
    RequestVoteReply,
    Role,
    SnapshotMeta,
    TimeoutNow,
)
from wiber.raft.progress import ProgressState

from .helpers import IDS3, Net, Node, appends, elected, entries, of_type, role, storage_with

IDS5 = ["n1", "n2", "n3", "n4", "n5"]


def transferee(r: Raft) -> str | None:
    """Returns: the transfer target of `r` (a call, for the same reason as `role`)."""
    return r.lead_transferee


def ae(term: int, prev_index: int, prev_term: int, ents: list[Entry], commit: int, frm: str = "n1",
       to: str = "n2", ctx: int = 0) -> AppendEntries:
    return AppendEntries(term, frm, to, prev_index, prev_term, tuple(ents), commit, ctx)


def vote(term: int, last_index: int, last_term: int, frm: str = "n3", to: str = "n2",
         pre: bool = False, force: bool = False) -> RequestVote:
    return RequestVote(term, frm, to, last_index, last_term, pre, force)


# -- Rules for all servers ------------------------------------------------------------------------

def test_apply_committed_entries_in_order() -> None:
    """All servers: "If commitIndex > lastApplied: increment lastApplied, apply log[lastApplied]
    to state machine." Committed entries come out once, in index order."""
    n = Node("n2", IDS3)
    n.step(ae(1, 0, 0, entries(1, [1, 1, 1]), commit=2))
    assert [e.index for e in n.applied] == [1, 2]
    n.step(ae(1, 3, 1, [], commit=3))
    assert [e.index for e in n.applied] == [1, 2, 3]
    n.step(ae(1, 3, 1, [], commit=3))
    assert [e.index for e in n.applied] == [1, 2, 3]


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_higher_term_converts_to_follower(role: str) -> None:
    """All servers: "If RPC request or response contains term T > currentTerm: set currentTerm = T,
    convert to follower." """
    net = Net(IDS3, pre_vote=False)
    if role == "leader":
        net.campaign("n1")
    elif role == "candidate":
        net.send(net["n1"].tick(25))
    r = net.raft("n1")
    assert r.role.value == role
    net["n1"].step(AppendEntriesReply(r.term + 5, "n2", "n1", False, 0, 0, 0, 0))
    assert r.role is Role.FOLLOWER and r.voted_for is None
    assert net["n1"].storage.initial_state()[0].term == r.term


# -- Followers ------------------------------------------------------------------------------------

def test_follower_responds_to_candidates_and_leaders() -> None:
    """Followers: "Respond to RPCs from candidates and leaders." """
    n = Node("n2", IDS3)
    out = n.step(vote(1, 0, 0))
    assert of_type(out, RequestVoteReply) == [RequestVoteReply(1, "n2", "n3", True, False)]
    out = n.step(ae(1, 0, 0, entries(1, [1]), commit=0, frm="n3"))
    assert of_type(out, AppendEntriesReply) == [AppendEntriesReply(1, "n2", "n3", True, 1, 0, 0, 0)]


def test_follower_election_timeout_converts_to_candidate() -> None:
    """Followers: "If election timeout elapses without receiving AppendEntries RPC from current
    leader or granting vote to candidate: convert to candidate." Hearing the leader, or granting a
    vote, restarts the timeout."""
    n = Node("n2", IDS3, pre_vote=False)
    for _ in range(5):
        n.tick(9)
        n.step(ae(1, 0, 0, [], commit=0, frm="n1"))
    assert n.raft.role is Role.FOLLOWER
    for _ in range(3):
        n.tick(9)
        n.step(vote(n.raft.term + 1, 0, 0))  # granting a vote resets the timer as well
    assert role(n.raft) is Role.FOLLOWER
    n.tick(20)
    assert role(n.raft) is Role.CANDIDATE


def test_randomized_election_timeout_range() -> None:
    """Section 5.2: "election timeouts are chosen randomly from a fixed interval"; here
    [election_ticks, 2 * election_ticks), drawn from the injected random source."""
    seen = set()
    for seed in range(60):
        n = Node("n1", IDS3, seed=seed, pre_vote=False)
        ticks = 0
        while n.raft.role is Role.FOLLOWER:
            n.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) <= 19 and len(seen) > 5


# -- Candidates -----------------------------------------------------------------------------------

def test_candidate_starts_election() -> None:
    """Candidates: "On conversion to candidate, start election: increment currentTerm, vote for
    self, reset election timer, send RequestVote RPCs to all other servers." The term and vote are
    in the same Ready, to be fsynced."""
    n = Node("n1", IDS3, storage=storage_with([1, 2], term=2), pre_vote=False)
    out = n.tick(20)
    r = n.raft
    assert (r.role, r.term, r.voted_for) == (Role.CANDIDATE, 3, "n1")
    requests = of_type(out, RequestVote)
    assert {m.to for m in requests} == {"n2", "n3"}
    assert all((m.term, m.last_log_index, m.last_log_term, m.pre_vote) == (3, 2, 2, False) for m in requests)
    rd = next(rd for rd in n.readys if rd.hard_state is not None and rd.hard_state.term == 3)
    assert rd.hard_state == HardState(3, "n1", 0) and rd.must_sync


def test_candidate_wins_with_a_majority() -> None:
    """Candidates: "If votes received from majority of servers: become leader." Its own vote counts
    once durable; in a 5-node cluster two more grants are needed."""
    n = Node("n1", IDS5, pre_vote=False)
    n.tick(20)
    assert n.storage.initial_state()[0] == HardState(1, "n1", 0)
    n.step(RequestVoteReply(1, "n2", "n1", True, False))
    assert n.raft.role is Role.CANDIDATE
    n.step(RequestVoteReply(1, "n3", "n1", False, False))
    n.step(RequestVoteReply(1, "n3", "n1", True, False))  # a changed mind does not count twice
    assert n.raft.role is Role.CANDIDATE
    n.step(RequestVoteReply(1, "n4", "n1", True, False))
    assert role(n.raft) is Role.LEADER and n.raft.leader_id == "n1"


def test_candidate_loses_with_a_majority_of_refusals() -> None:
    """Section 5.2: a candidate that cannot win any more returns to follower."""
    n = Node("n1", IDS3, pre_vote=False)
    n.tick(20)
    n.step(RequestVoteReply(1, "n2", "n1", False, False))
    n.step(RequestVoteReply(1, "n3", "n1", False, False))
    assert n.raft.role is Role.FOLLOWER and n.raft.term == 1


def test_candidate_steps_down_for_a_new_leader() -> None:
    """Candidates: "If AppendEntries RPC received from new leader: convert to follower." """
    n = Node("n1", IDS3, pre_vote=False)
    n.tick(20)
    out = n.step(ae(1, 0, 0, [], commit=0, frm="n2", to="n1"))
    assert (n.raft.role, n.raft.leader_id, n.raft.term) == (Role.FOLLOWER, "n2", 1)
    assert of_type(out, AppendEntriesReply)[0].success


def test_candidate_timeout_starts_a_new_election() -> None:
    """Candidates: "If election timeout elapses: start new election." """
    n = Node("n1", IDS3, pre_vote=False)
    n.tick(20)
    assert n.raft.term == 1
    out = n.tick(20)
    assert n.raft.role is Role.CANDIDATE and n.raft.term == 2
    assert {m.term for m in of_type(out, RequestVote)} == {2}


# -- Leaders --------------------------------------------------------------------------------------

def test_leader_sends_initial_append_and_heartbeats() -> None:
    """Leaders: "Upon election: send initial empty AppendEntries RPCs (heartbeat) to each server;
    repeat during idle periods to prevent election timeouts." The initial one carries the NOOP of
    section 6.4; heartbeats go every heartbeat_ticks."""
    net = Net(IDS3, heartbeat_ticks=3)
    n1 = net["n1"]
    for _ in range(40):
        out = n1.tick()
        net.send(out)
        if n1.raft.role is not Role.FOLLOWER:
            break
    # Answer the vote requests, catching what the new leader sends.
    net.deliver_all()
    first = [m for m in net.log if m.frm == "n1" and type(m) is AppendEntries]
    assert {m.to for m in first[:2]} == {"n2", "n3"}
    assert first[0].entries[0].kind is EntryKind.NOOP
    beats = []
    for _ in range(9):
        beats += appends(n1.tick())
    assert len(beats) == 6 and all(m.entries == () and m.ctx > 0 for m in beats)


def test_leader_appends_commands_and_commits_them_after_a_majority() -> None:
    """Leaders: "If command received from client: append entry to local log, respond after entry
    applied to state machine." The entry is applied only once a majority holds it."""
    net = elected()
    net.cut.add(("n1", "n3"))
    first, last = net.raft("n1").propose([b"a", b"b"])
    assert (first, last) == (2, 3)
    n1 = net["n1"]
    n1.flush()
    assert n1.storage.last_index() == 3 and net.raft("n1").commit_index == 1
    net.cut.add(("n1", "n2"))
    net.deliver_all()
    assert [e.data for e in n1.applied if e.kind is EntryKind.NORMAL] == []
    net.heal()
    net.tick_all()
    assert [e.data for e in n1.applied if e.kind is EntryKind.NORMAL] == [b"a", b"b"]


def test_leader_sends_from_next_index_and_backs_up_on_inconsistency() -> None:
    """Leaders: "If last log index >= nextIndex for a follower: send AppendEntries RPC with log
    entries starting at nextIndex. If successful: update nextIndex and matchIndex for follower. If
    AppendEntries fails because of log inconsistency: decrement nextIndex and retry." """
    storages = {"n1": storage_with([1, 1, 1, 1], term=1), "n2": storage_with([1], term=1),
                "n3": storage_with([1, 1, 1, 1], term=1)}
    net = Net(IDS3, storages=storages)
    net.campaign("n1")
    sent = [m for m in net.log if type(m) is AppendEntries and m.to == "n2"]
    replies = [m for m in net.log if type(m) is AppendEntriesReply and m.frm == "n2"]
    assert sent[0].prev_index == 4 and not replies[0].success
    assert sent[1].prev_index == 1 and sent[1].entries[0].index == 2
    assert net.raft("n1").match_index("n2") == 5 and net["n2"].storage.last_index() == 5


def test_leader_commits_only_when_a_majority_matches_an_entry_of_its_term() -> None:
    """Leaders: "If there exists an N such that N > commitIndex, a majority of matchIndex[i] >= N,
    and log[N].term == currentTerm: set commitIndex = N." """
    net = elected(IDS5)
    r = net.raft("n1")
    for cut in ("n3", "n4", "n5"):
        net.cut.add(("n1", cut))
    r.propose([b"x"])
    net.deliver_all()
    assert r.commit_index == 1 and r.match_index("n2") == 2
    net.cut.discard(("n1", "n3"))
    net.tick_all(2)
    assert r.commit_index == 2


# -- AppendEntries receiver -----------------------------------------------------------------------

def test_append_receiver_refuses_a_stale_term() -> None:
    """AppendEntries receiver: "Reply false if term < currentTerm." The reply carries the newer
    term, so the stale leader steps down."""
    n = Node("n2", IDS3, storage=storage_with([], term=5))
    out = n.step(ae(3, 0, 0, entries(1, [3]), commit=1))
    assert of_type(out, AppendEntriesReply) == [AppendEntriesReply(5, "n2", "n1", False, 0, 0, 0, 0)]
    assert n.storage.last_index() == 0
    old = Node("n1", IDS3, storage=storage_with([], term=2))
    old.raft._become_leader()  # a stale leader (test shortcut)
    old.step(of_type(out, AppendEntriesReply)[0])
    assert old.raft.role is Role.FOLLOWER and old.raft.term == 5


def test_append_receiver_refuses_a_missing_prev_entry() -> None:
    """AppendEntries receiver: "Reply false if log doesn't contain an entry at prevLogIndex whose term
    matches prevLogTerm." """
    n = Node("n2", IDS3, storage=storage_with([1, 1], term=2))
    out = n.step(ae(2, 3, 2, entries(4, [2]), commit=0))
    reply = of_type(out, AppendEntriesReply)[0]
    assert not reply.success and reply.match_index == 3
    out = n.step(ae(2, 2, 2, entries(3, [2]), commit=0))
    assert not of_type(out, AppendEntriesReply)[0].success
    assert n.storage.last_index() == 2


def test_append_receiver_deletes_conflicting_entries() -> None:
    """AppendEntries receiver: "If an existing entry conflicts with a new one (same index but
    different terms), delete the existing entry and all that follow it." """
    n = Node("n2", IDS3, storage=storage_with([1, 1, 1, 1], term=1))
    n.step(ae(2, 2, 1, entries(3, [2]), commit=0))
    s = n.storage
    assert s.last_index() == 3 and [s.term(i) for i in (1, 2, 3)] == [1, 1, 2]


def test_append_receiver_appends_only_new_entries() -> None:
    """AppendEntries receiver: "Append any new entries not already in the log." A retransmitted or
    reordered older batch does not truncate what follows it."""
    n = Node("n2", IDS3, storage=storage_with([1, 1, 1], term=1))
    n.step(ae(1, 1, 1, entries(2, [1, 1, 1, 1]), commit=0))
    assert n.storage.last_index() == 5
    rds = len(n.readys)
    out = n.step(ae(1, 1, 1, entries(2, [1]), commit=0))
    assert n.storage.last_index() == 5
    assert all(not rd.entries for rd in n.readys[rds:])
    assert of_type(out, AppendEntriesReply)[0].match_index == 2


def test_append_receiver_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    """AppendEntries receiver: "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit,
    index of last new entry)." Entries past the batch that may not match are not committed."""
    n = Node("n2", IDS3, storage=storage_with([1, 1, 1, 1, 1], term=1))
    n.step(ae(1, 1, 1, entries(2, [1]), commit=5))
    assert n.raft.commit_index == 2
    n.step(ae(1, 4, 1, [], commit=3))
    assert n.raft.commit_index == 3


# -- RequestVote receiver -------------------------------------------------------------------------

def test_vote_receiver_refuses_a_stale_term() -> None:
    """RequestVote receiver: "Reply false if term < currentTerm." """
    n = Node("n2", IDS3, storage=storage_with([], term=4))
    assert n.step(vote(3, 0, 0)) == []  # a real vote request of an old term is not worth an answer
    out = n.step(vote(3, 0, 0, pre=True))
    assert of_type(out, RequestVoteReply) == [RequestVoteReply(4, "n2", "n3", False, True)]
    assert n.raft.voted_for is None


def test_vote_receiver_grants_once_per_term_to_an_up_to_date_candidate() -> None:
    """RequestVote receiver: "If votedFor is null or candidateId, and candidate's log is at least as
    up-to-date as receiver's log, grant vote." The vote is durable before the grant leaves."""
    n = Node("n2", IDS3, storage=storage_with([1, 2], term=2))
    n.raft.step(vote(3, 2, 2))
    rd = n.raft.ready()
    assert rd.hard_state == HardState(3, "n3", 0) and rd.must_sync
    assert rd.messages == [] and rd.messages_after_persist == [RequestVoteReply(3, "n2", "n3", True, False)]
    n.persist(rd)
    n.raft.advance(rd)
    out = n.step(vote(3, 5, 2, frm="n1"))
    assert of_type(out, RequestVoteReply)[0].granted is False
    out = n.step(vote(3, 2, 2))  # the same candidate again (a retry)
    assert of_type(out, RequestVoteReply)[0].granted is True


@pytest.mark.parametrize("last_index,last_term,granted", [
    (1, 3, True),  # later last term wins even with a shorter log
    (3, 2, True),  # same last term, longer log
    (2, 2, True),  # same last term, same length
    (1, 2, False),  # same last term, shorter log
    (9, 1, False),  # earlier last term loses even with a longer log
])
def test_vote_requires_an_up_to_date_log(last_index: int, last_term: int, granted: bool) -> None:
    """Section 5.4.1: "If the logs have last entries with different terms, then the log with the
    later term is more up-to-date. If the logs end with the same term, then whichever log is longer
    is more up-to-date." """
    n = Node("n2", IDS3, storage=storage_with([1, 2], term=3))
    out = n.step(vote(4, last_index, last_term))
    assert of_type(out, RequestVoteReply)[0].granted is granted


# -- Persistence ----------------------------------------------------------------------------------

def test_replies_wait_for_persistence_but_leader_appends_do_not() -> None:
    """Figure 2: "Persistent state on all servers: (Updated on stable storage before responding to
    RPCs)". Thesis 10.2.1: the leader may send AppendEntries before writing its own log."""
    n = Node("n2", IDS3)
    n.raft.step(ae(1, 0, 0, entries(1, [1]), commit=0))
    rd = n.raft.ready()
    assert rd.entries == entries(1, [1]) and rd.must_sync
    assert rd.messages == [] and of_type(rd.messages_after_persist, AppendEntriesReply)
    n.persist(rd)
    n.raft.advance(rd)

    net = elected()
    leader = net.raft("n1")
    leader.propose([b"x"])
    rd = leader.ready()
    assert rd.entries[-1].index == 2 and [m.to for m in appends(rd.messages)] == ["n2", "n3"]
    assert leader.match_index("n1") == 1  # its own entry counts only once persisted
    net["n1"].persist(rd)
    leader.advance(rd)
    assert leader.match_index("n1") == 2


def test_crash_restart_keeps_only_what_was_persisted() -> None:
    """A restarted node is rebuilt from storage alone: term, vote and log survive."""
    n = Node("n2", IDS3)
    n.step(vote(2, 0, 0))
    n.step(ae(2, 0, 0, entries(1, [2, 2]), commit=1, frm="n3"))
    n.raft.step(ae(2, 2, 2, entries(3, [2]), commit=1, frm="n3"))  # never persisted
    n.restart()
    r = n.raft
    assert (r.term, r.voted_for, r.last_index, r.commit_index, r.role) == (2, "n3", 2, 1, Role.FOLLOWER)


# -- Extensions: NOOP, Figure 8, replication flow ---------------------------------------------------

def test_leader_appends_a_noop_at_the_start_of_its_term() -> None:
    """Thesis 6.4: "each leader commit a blank no-op entry into the log at the start of its term"."""
    net = elected()
    e = net["n2"].applied[0]
    assert (e.index, e.term, e.kind, e.data) == (1, 1, EntryKind.NOOP, b"")


def test_figure_8_old_term_entries_are_not_committed_by_counting() -> None:
    """Section 5.4.2 / Figure 8: "Raft never commits log entries from previous terms by counting
    replicas. Only log entries from the leader's current term are committed by counting replicas."
    A majority holding the term-2 entry is not enough; the NOOP of term 4 commits both."""
    storages = {"n1": storage_with([1, 2], term=3, commit=1)}
    for i in ("n2", "n3", "n4"):
        storages[i] = storage_with([1], term=3, commit=1)
    storages["n5"] = storage_with([1, 3], term=3, commit=1)
    net = Net(IDS5, storages=storages, max_batch_entries=1)
    net.drop = lambda m: type(m) is AppendEntries and any(e.index == 3 for e in m.entries)
    net.cut.update({("n1", "n5"), ("n5", "n1")})
    net.campaign("n1")
    net.tick_all(2)
    leader = net.raft("n1")
    assert leader.role is Role.LEADER and leader.term == 4
    assert sum(1 for i in IDS5 if net[i].storage.last_index() >= 2 and net[i].storage.term(2) == 2) >= 3
    assert leader.commit_index == 1
    net.drop = None
    net.tick_all(3)
    assert leader.commit_index == 3


def test_fast_backtracking_with_conflict_term() -> None:
    """Section 5.3: "when rejecting an AppendEntries request, the follower can include the term of
    the conflicting entry and the first index it stores for that term. With this information, the
    leader can decrement nextIndex to bypass all of the conflicting entries in that term"."""
    storages = {"n1": storage_with([1, 1, 1] + [3] * 8, term=3),
                "n3": storage_with([1, 1, 1] + [3] * 8, term=3),
                "n2": storage_with([1, 1, 1] + [2] * 9, term=2)}
    net = Net(IDS3, storages=storages)
    net.campaign("n1")
    rejections = [m for m in net.log if type(m) is AppendEntriesReply and m.frm == "n2" and not m.success]
    assert len(rejections) == 1
    assert (rejections[0].conflict_term, rejections[0].conflict_index) == (2, 4)
    s2 = net["n2"].storage
    assert s2.last_index() == 12 and [s2.term(i) for i in range(1, 13)] == [1, 1, 1] + [3] * 8 + [4]


def test_replicate_state_pipelines_a_bounded_window() -> None:
    """Thesis 10.2.1: the leader pipelines AppendEntries (REPLICATE) up to max_inflight batches;
    a follower that rejected is probed one batch at a time (PROBE)."""
    net = elected(max_batch_entries=2, max_inflight=3)
    leader = net.raft("n1")
    assert leader._prs["n2"].state is ProgressState.REPLICATE
    for k in range(10):
        leader.propose([b"%d" % k])
    out = net["n1"].flush()
    to_n2 = [m for m in appends(out) if m.to == "n2"]
    assert [len(m.entries) for m in to_n2] == [2, 2, 2]
    net.send(out)
    net.deliver_all()
    assert leader.match_index("n2") == 11
    # Now a follower that lost a batch: the gap is refused and the leader falls back to probing.
    leader.propose([b"a"])
    net["n1"].flush()  # lost
    leader.propose([b"b"])
    out = [m for m in net["n1"].flush() if m.to == "n2"]
    reply = net["n2"].step(out[0])[0]
    assert isinstance(reply, AppendEntriesReply) and not reply.success
    out = net["n1"].step(reply)
    assert leader._prs["n2"].state.value == ProgressState.PROBE.value
    probes = [m for m in out if type(m) is AppendEntries and m.to == "n2"]
    assert len(probes) == 1 and probes[0].prev_index == 11


def test_proposals_of_one_turn_are_batched() -> None:
    """Proposals are batched into as few AppendEntries as max_batch_bytes/entries allow."""
    net = elected()
    for k in range(50):
        net.raft("n1").propose([b"%d" % k])
    out = appends(net["n1"].flush())
    assert sorted((m.to, len(m.entries)) for m in out) == [("n2", 50), ("n3", 50)]
    net2 = elected(max_batch_bytes=100)  # 16 bytes of overhead + 9 of data per entry: 4 fit
    net2.raft("n1").propose([b"123456789"] * 10)
    out = [m for m in appends(net2["n1"].flush()) if m.to == "n2"]
    assert [len(m.entries) for m in out] == [4, 4, 2]


# -- Extensions: PreVote, CheckQuorum, leader lease --------------------------------------------------

def test_pre_vote_does_not_bump_terms() -> None:
    """Thesis 9.6: "a candidate would first ask other servers whether its log was up-to-date enough
    to get their vote. Only if the candidate believed it could get votes from a majority of the
    cluster would it increment its term and start a normal election." A pre-vote grant changes
    neither the voter's term nor its vote."""
    net = elected()
    net.isolate("n3")
    n3 = net["n3"]
    for _ in range(100):
        net.send(n3.tick())
        net.deliver_all()
    assert n3.raft.term == 1 and n3.raft.role is Role.PRE_CANDIDATE
    voter = Node("n2", IDS3, storage=storage_with([1], term=1))
    out = voter.step(vote(2, 1, 1, pre=True))
    assert of_type(out, RequestVoteReply) == [RequestVoteReply(2, "n2", "n3", True, True)]
    assert (voter.raft.term, voter.raft.voted_for) == (1, None)
    net.heal()
    net.tick_all(3)
    assert net.leaders() == ["n1"] and net.raft("n1").term == 1


def test_check_quorum_leader_steps_down() -> None:
    """Thesis 6.2: "a leader steps down if an election timeout elapses without a successful round
    of heartbeats to a majority of its cluster"."""
    net = elected()
    net.isolate("n1")
    n1 = net["n1"]
    for _ in range(2 * 10):
        net.send(n1.tick())
    assert n1.raft.role is Role.FOLLOWER and n1.raft.term == 1
    with pytest.raises(ProposalDropped):
        n1.raft.propose([b"x"])


def test_check_quorum_keeps_a_leader_that_hears_a_majority() -> None:
    """Thesis 6.2: with one follower down, a leader of three still hears a majority and stays."""
    net = elected()
    net.isolate("n3")
    net.tick_all(50)
    assert net.raft("n1").role is Role.LEADER


def test_leader_lease_ignores_disruptive_votes_unless_forced() -> None:
    """Thesis 4.2.3: "if a server receives a RequestVote request within the minimum election timeout
    of hearing from a current leader, it does not update its term or grant its vote" — unless the
    request comes from a leadership transfer (TimeoutNow)."""
    net = elected()
    n2 = net["n2"]
    n2.tick(3)
    assert n2.step(vote(5, 9, 1)) == []
    assert n2.raft.term == 1 and n2.raft.leader_id == "n1"
    assert n2.step(vote(5, 9, 1, pre=True)) == []
    out = n2.step(vote(5, 9, 1, force=True))
    assert of_type(out, RequestVoteReply) == [RequestVoteReply(5, "n2", "n3", True, False)]


# -- Extensions: ReadIndex, leadership transfer, snapshots ---------------------------------------------

def test_read_index_waits_for_a_heartbeat_round_after_the_request() -> None:
    """Thesis 6.4: the leader records its commit index as the read index, "sends a new round of
    heartbeats, and waits for their acknowledgments from a majority of the cluster"; acks of a
    round sent before the request do not count."""
    net = elected()
    n1 = net["n1"]
    early = appends(n1.tick())  # a heartbeat round sent before the request
    assert early and all(m.ctx for m in early)
    n1.raft.read_index(b"r1")
    round_msgs = appends(n1.flush())
    assert round_msgs and all(m.ctx > early[0].ctx for m in round_msgs)
    for m in early:
        net.send(n1.step(net[m.to].step(m)[0]))
    assert n1.read_states == []
    reply = net["n2"].step(round_msgs[0])[0]
    n1.step(reply)
    assert n1.read_states == [ReadState(1, b"r1")]


def test_read_index_waits_for_a_commit_in_the_leaders_term() -> None:
    """Thesis 6.4: "If the leader has not yet marked an entry from its current term committed, it
    waits until it has done so." Followers refuse."""
    net = Net(IDS3)
    n1 = net["n1"]
    net.drop = lambda m: type(m) is AppendEntries
    net.campaign("n1")
    assert n1.raft.role is Role.LEADER and n1.raft.commit_index == 0
    n1.raft.read_index(b"r")
    net.drop = None
    net.send(n1.flush())
    net.tick_all(2)
    assert n1.read_states == [ReadState(1, b"r")]
    with pytest.raises(ProposalDropped) as info:
        net.raft("n2").read_index(b"r")
    assert info.value.leader_id == "n1"


def test_read_index_single_node_answers_at_once() -> None:
    """A one-node cluster is its own majority: the read is answered in the next Ready."""
    n = Node("n1", ["n1"])
    n.tick(20)
    assert n.raft.role is Role.LEADER and n.raft.commit_index == 1
    n.raft.read_index(b"solo")
    n.flush()
    assert n.read_states == [ReadState(1, b"solo")]


def test_transfer_leadership_with_timeout_now() -> None:
    """Thesis 3.10: "The prior leader sends its log entries to the target server ... then sends a
    TimeoutNow request to the target server. This request has the same effect as the target
    server's election timer firing"; the leader stops accepting client requests meanwhile."""
    net = elected()
    r1 = net.raft("n1")
    net.cut.add(("n1", "n2"))
    r1.propose([b"x"])
    net.deliver_all()
    r1.transfer_leadership("n2")
    with pytest.raises(ProposalDropped):
        r1.propose([b"y"])
    net.heal()
    net.tick_all(2)
    timeouts = [m for m in net.log if type(m) is TimeoutNow]
    assert [m.to for m in timeouts] == ["n2"]
    forced = [m for m in net.log if type(m) is RequestVote and m.frm == "n2"]
    assert forced and all(m.force and not m.pre_vote for m in forced)
    assert net.leaders() == ["n2"] and net.raft("n2").term == 2
    assert net.raft("n2").commit_index >= 3


def test_transfer_leadership_is_abandoned_after_an_election_timeout() -> None:
    """Thesis 3.10: "If the transfer does not complete within an election timeout, the prior leader
    aborts the transfer and resumes accepting client requests." None picks the most up-to-date."""
    net = elected()
    r1 = net.raft("n1")
    net.isolate("n3")
    r1.propose([b"x"])
    net.deliver_all()
    r1.transfer_leadership()
    assert transferee(r1) == "n2"
    r1.transfer_leadership("n3")
    for _ in range(10):
        net.send(net["n1"].tick())
    assert transferee(r1) is None and role(r1) is Role.LEADER
    r1.propose([b"y"])


def test_install_snapshot_to_a_follower_behind_the_compaction() -> None:
    """Thesis chapter 5: "the leader must occasionally send snapshots to followers that lag
    behind" — those that need entries it has discarded. The follower replaces its log."""
    net = elected()
    net.isolate("n3")
    r1 = net.raft("n1")
    for k in range(5):
        r1.propose([b"%d" % k])
        net.deliver_all()
    assert r1.commit_index == 6
    net["n1"].storage.compact(6, b"state@6")
    net.heal()
    net.tick_all(3)
    n3 = net["n3"]
    snaps = [m for m in net.log if type(m) is InstallSnapshot]
    assert [(m.to, m.meta) for m in snaps] == [("n3", SnapshotMeta(6, 1))]
    assert any(rd.snapshot == (SnapshotMeta(6, 1), b"state@6") for rd in n3.readys)
    assert n3.storage.snapshot() == (SnapshotMeta(6, 1), b"state@6") and n3.raft.commit_index == 6
    r1.propose([b"after"])
    net.tick_all(2)
    assert n3.applied[-1].data == b"after"


def test_a_follower_that_lost_its_disk_is_caught_up_by_snapshot() -> None:
    """Not in the paper, which assumes disks are never lost: an operator wipes a damaged follower
    (README) and restarts it empty. A heartbeat anchored at its old match index is then refused;
    the leader must start it over (from a snapshot) instead of ignoring the refusal as stale."""
    net = elected()
    r1 = net.raft("n1")
    for k in range(5):
        r1.propose([b"%d" % k])
        net.deliver_all()
    assert r1.match_index("n3") == 6
    net["n1"].storage.compact(6, b"state@6")
    wiped = net["n3"]
    wiped.storage = MemoryStorage()
    wiped.restart()
    net.tick_all(5)
    assert wiped.storage.snapshot() == (SnapshotMeta(6, 1), b"state@6")
    r1.propose([b"after"])
    net.tick_all(3)
    assert wiped.applied[-1].data == b"after" and wiped.raft.commit_index == r1.commit_index


# -- Robustness of the interface ------------------------------------------------------------------

def test_messages_from_unknown_senders_or_for_others_are_dropped() -> None:
    """Only peers' messages addressed to this node are processed."""
    n = Node("n2", IDS3)
    assert n.step(ae(9, 0, 0, entries(1, [9]), commit=1, frm="mallory")) == []
    assert n.step(ae(9, 0, 0, entries(1, [9]), commit=1, to="n3")) == []
    assert n.raft.term == 0 and n.storage.last_index() == 0


def test_malformed_batches_are_dropped() -> None:
    """Entries that do not follow prev_index, or carry a term above the message's, are dropped."""
    n = Node("n2", IDS3)
    bad = AppendEntries(1, "n1", "n2", 0, 0, tuple(entries(2, [1])), 0, 0)
    assert of_type(n.step(bad), AppendEntriesReply) == []
    assert n.step(ae(1, 0, 0, entries(1, [7]), commit=0)) == []
    assert n.storage.last_index() == 0


def test_stepping_between_ready_and_advance_is_refused() -> None:
    """The Ready contract is strict: persist, send, apply, advance, then step again."""
    n = Node("n1", IDS3)
    n.raft.step(vote(1, 0, 0, frm="n2", to="n1"))
    rd = n.raft.ready()
    assert not n.raft.has_ready()
    with pytest.raises(InvariantError):
        n.raft.step(vote(1, 0, 0, frm="n2", to="n1"))
    with pytest.raises(InvariantError):
        n.raft.ready()
    n.persist(rd)
    n.raft.advance(rd)
    with pytest.raises(InvariantError):
        n.raft.advance(rd)


def test_advance_checks_that_entries_were_persisted() -> None:
    """advance() refuses a Ready whose entries the storage does not hold."""
    n = Node("n2", IDS3)
    n.raft.step(ae(1, 0, 0, entries(1, [1]), commit=0))
    rd = n.raft.ready()
    with pytest.raises(InvariantError):
        n.raft.advance(rd)


def test_proposal_on_a_follower_names_the_leader() -> None:
    """A follower refuses proposals with ProposalDropped carrying the leader it knows."""
    net = elected()
    with pytest.raises(ProposalDropped) as info:
        net.raft("n2").propose([b"x"])
    assert info.value.leader_id == "n1"
    with pytest.raises(ProposalDropped):
        net.raft("n2").transfer_leadership()


def test_restart_after_a_torn_write() -> None:
    """Writes are durable in order (snapshot, entries, hard state): a crash may keep a Ready's entries
    without its hard state. The core restarts with its term raised to its last entry's (no vote was
    granted in that term), and refuses a storage whose commit index points past its log."""
    s = storage_with([1, 3], term=1, commit=2)
    r = Raft(RaftConfig("n1", ("n2", "n3")), s, random.Random(0))
    assert (r.term, r.commit_index, r.voted_for) == (3, 2, None)
    with pytest.raises(InvariantError):
        Raft(RaftConfig("n1", ("n2", "n3")), storage_with([1], term=1, commit=5), random.Random(0))


def test_role_changes_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """INFO is for role and term changes ("n1 became leader at term 3")."""
    logger = logging.getLogger("wiber.test.paper")
    with caplog.at_level(logging.INFO, logger="wiber.test.paper"):
        net = Net(IDS3, logger=logger)
        net.campaign("n1")
    lines = [r.getMessage() for r in caplog.records]
    assert "n1 became leader at term 1" in lines and "n2 became follower at term 1" in lines
