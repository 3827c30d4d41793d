"""`_Election`, the election role of `Raft`: campaigns and PreVote, votes, role changes, CheckQuorum
and the leader lease.

Implements the Raft paper's section 5.2 (elections) and 5.4.1 (the up-to-date check), and thesis
sections 9.6 (PreVote), 6.2 (CheckQuorum) and 4.2.3 (ignoring disruptive vote requests).
"""

from __future__ import annotations

import logging

from wiber.raft.messages import (
    MAX_NUMBER,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    EntryKind,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteReply,
    describe,
)
from wiber.raft.progress import Progress
from wiber.raft.quorum import VoteResult, vote_result
from wiber.raft.state import _CANDIDATE, _FOLLOWER, _LEADER, _PRE_CANDIDATE, _SEND, _State


class _Election(_State):
    """Mixin of `Raft`: how a node becomes follower, (pre-)candidate or leader, and how it votes."""

    # A mutation test (tests/sim/mutations.py) switches this rule off: keep it small.
    def _log_is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Section 5.4.1: grant a vote only to a candidate whose log is at least as up-to-date."""
        return self._log.is_up_to_date(last_index, last_term)

    # -- role changes ---------------------------------------------------------------------------

    def _become_follower(self, term: int, leader: str | None) -> None:
        """Become a follower of `leader` (None: unknown) at `term` (a new term clears the vote)."""
        changed = term != self._term or self._role is not _FOLLOWER
        if term != self._term:
            self._term = term
            self._voted_for = None
        self._role = _FOLLOWER
        self._leader_id = leader
        self._reset()
        if changed:
            self._logger.info("%s became follower at term %d%s", self._id, term,
                              f" (leader {leader})" if leader else "")

    def _become_pre_candidate(self) -> None:
        """Start a pre-vote: term and vote unchanged (thesis 9.6)."""
        self._role = _PRE_CANDIDATE
        self._leader_id = None
        self._reset()
        self._votes = {self._id: True}
        self._logger.info("%s became pre-candidate at term %d", self._id, self._term)

    def _become_candidate(self) -> None:
        """Figure 2: increment currentTerm, vote for self (counted once durable), reset the timer."""
        self._term += 1
        self._voted_for = self._id
        self._role = _CANDIDATE
        self._leader_id = None
        self._reset()
        self._logger.info("%s became candidate at term %d", self._id, self._term)

    def _become_leader(self) -> None:
        """Take office: fresh progress for every peer (probing), and a NOOP entry for this term."""
        self._role = _LEADER
        self._leader_id = self._id
        self._fresh = False  # its log now holds an entry of its term (reconfig.py's rule for empty nodes)
        self._reset()
        log = self._log
        last = log.last_index()
        cap = self._cfg.max_inflight
        self._prs = {p: Progress(0, last + 1, cap) for p in self._replicas}
        self._self_match = log.stable_last_index()
        log.append([Entry(last + 1, self._term, EntryKind.NOOP, b"")])
        self._mark_all(_SEND)
        self._logger.info("%s became leader at term %d", self._id, self._term)

    def _campaign(self, pre: bool, force: bool) -> None:
        """Start a pre-vote (`pre`) or an election; `force` marks a transfer's campaign."""
        if self._term >= MAX_NUMBER:  # only forged messages get a term this high: never go past it
            self._logger.error("%s cannot campaign: its term %d is the largest there is", self._id,
                               self._term)
            return
        if pre:
            self._become_pre_candidate()
            term = self._term + 1
        else:
            self._become_candidate()
            term = self._term
        log = self._log
        last_index = log.last_index()
        last_term = log.last_term()
        for p in self._peers:
            self._send(RequestVote(term, self._id, p, last_index, last_term, pre, force))
        if pre:
            self._check_votes()

    def _check_votes(self) -> None:
        """Act on the election's outcome so far."""
        result = vote_result(self._votes, self._voters)
        if result is VoteResult.WON:
            if self._role is _PRE_CANDIDATE:
                self._campaign(pre=False, force=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._logger.info("%s lost the %s at term %d", self._id,
                              "pre-vote" if self._role is _PRE_CANDIDATE else "election", self._term)
            self._become_follower(self._term, None)

    # -- timers ---------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        """Followers and candidates: campaign once the randomized election timeout elapses."""
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            if self._id in self._voter_set:  # learners, joining and removed nodes never campaign
                self._campaign(pre=self._cfg.pre_vote, force=False)

    def _in_lease(self) -> bool:
        """Returns: whether this node heard from a live leader within the minimum election timeout."""
        return (self._cfg.check_quorum and self._leader_id is not None
                and self._election_elapsed < self._cfg.election_ticks)

    def _check_quorum(self) -> bool:
        """Leaders, at each election timeout: step down unless a majority was heard from during it
        (thesis 6.2, CheckQuorum).

        Returns:
            whether this node is still leader (each follower's activity is then cleared for the next).
        """
        prs = self._prs
        active = (self._id in self._voter_set) + sum(1 for p in self._peers if prs[p].recent_active)
        if active < self._quorum:
            self._logger.info("%s stepped down at term %d: heard from %d of %d voters "
                              "in an election timeout", self._id, self._term, active,
                              len(self._voters))
            self._become_follower(self._term, None)
            return False
        for pr in self._prs.values():
            pr.recent_active = False
        return True

    # -- messages -------------------------------------------------------------------------------

    def _step_stale(self, msg: Message) -> None:
        """A message of an older term (Figure 2: "reply false if term < currentTerm").

        A stale leader's append or snapshot and a stale pre-vote request are refused with our term,
        so the sender steps down or stops waiting (with CheckQuorum this node may have advanced its
        term in a partition and be unable to disrupt the old leader by voting). Replies and real vote
        requests of old terms are dropped: nobody waits for an answer to them.
        """
        if isinstance(msg, (AppendEntries, InstallSnapshot)):
            self._send(AppendEntriesReply(self._term, self._id, msg.frm, False, 0, 0, 0, 0))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(RequestVoteReply(self._term, self._id, msg.frm, False, True))
        elif self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug("%s ignored stale %s", self._id, describe(msg))

    def _handle_vote_request(self, msg: RequestVote) -> None:
        """Figure 2 (RequestVote receiver): grant if not voted for another in this term (and no
        leader is known) and the candidate's log is at least as up-to-date; a pre-vote for a later
        term is granted on the log check alone and records nothing."""
        if self._refuses_votes(msg):
            self._send(RequestVoteReply(self._term, self._id, msg.frm, False, msg.pre_vote))
            return
        can_vote = (self._voted_for == msg.frm
                    or (self._voted_for is None and self._leader_id is None)
                    or (msg.pre_vote and msg.term > self._term))
        if can_vote and self._log_is_up_to_date(msg.last_log_index, msg.last_log_term):
            self._send(RequestVoteReply(msg.term, self._id, msg.frm, True, msg.pre_vote))
            if not msg.pre_vote:
                self._election_elapsed = 0
                self._voted_for = msg.frm
                self._logger.info("%s voted for %s at term %d", self._id, msg.frm, self._term)
        else:
            self._send(RequestVoteReply(self._term, self._id, msg.frm, False, msg.pre_vote))

    def _step_candidate(self, msg: Message) -> None:
        """(Pre-)candidates: count votes; a leader's append of this term makes us its follower."""
        if isinstance(msg, (AppendEntries, InstallSnapshot)):
            self._become_follower(msg.term, msg.frm)
            self._step_follower(msg)
        elif isinstance(msg, RequestVoteReply):
            if self._role is _PRE_CANDIDATE:
                if not msg.pre_vote or msg.term != (self._term + 1 if msg.granted else self._term):
                    return
            elif msg.pre_vote:
                return
            self._votes.setdefault(msg.frm, msg.granted)
            self._check_votes()
