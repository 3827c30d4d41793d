"""`Raft`: the consensus core as a pure state machine (etcd `raft.go` + `rawnode.go`).

Theory of operation
-------------------
The core does no I/O and reads no clock. The application feeds it `tick()` (its unit of time),
peer messages through `step()`, and `propose()`/`read_index()`/`transfer_leadership()` calls, then
collects a `Ready` (what to persist, send and apply), performs it in the order the `Ready`
docstring states, and calls `advance()`. Randomness (the election timeout) comes from the injected
`random.Random`, so a seeded simulation replays exactly.

Rules implemented (Raft paper Figure 2; Ongaro's thesis, chapters cited):

* Elections (section 5.2): a follower that hears nothing from a leader for its randomized
  timeout, drawn in ``[election_ticks, 2 * election_ticks)``, campaigns; a vote is granted once per
  term, only to a candidate whose log is at least as up-to-date (section 5.4.1, `_log_is_up_to_date`).
* PreVote (thesis 9.6): before bumping its term a node asks whether it *would* win; a pre-vote
  grant changes neither the voter's term nor its vote.
* CheckQuorum and the leader lease (thesis 6.2, 4.2.3): a leader that has not heard from a
  majority within an election timeout steps down; a node that heard from a leader within the
  minimum election timeout ignores vote requests of higher terms unless they are `force`d by a
  leadership transfer.
* Log replication (section 5.3): a leader appends a NOOP at the start of its term, replicates
  with a bounded window of pipelined batches per follower (see `progress.py`), backs up with the
  follower's conflict hint, and commits only entries of its own term by counting replicas
  (section 5.4.2, Figure 8: `_maybe_commit`). A follower's commit index is
  ``min(leader commit, index of last new entry)``.
* ReadIndex (thesis 6.4), leadership transfer with TimeoutNow (thesis 3.10), InstallSnapshot
  (chapter 5) for followers that need compacted entries.

Persistence contract (Figure 2: "updated on stable storage before responding to RPCs"):

* Term and vote are durable before a vote is granted: grants, like every reply, go to
  `Ready.messages_after_persist` (`_reply_channel`).
* Entries are durable before they are acknowledged to the leader: append replies also go to
  `messages_after_persist`.
* The leader's own AppendEntries go to `Ready.messages` and may leave before its own write
  (thesis 10.2.1); the leader counts its own match index only in `advance()`, once the Ready's
  entries are persisted. Likewise a candidate counts its own vote only once it is durable.

Nothing may be stepped, ticked or proposed between `ready()` and `advance()`.

Invariant breaches raise `InvariantError`; malformed but well-typed peer input is dropped
and logged. Role and term changes are logged at INFO ("n1 became leader at term 3"), messages at DEBUG.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Sequence
from enum import Enum

from wiber.errors import InvariantError, WiberError
from wiber.raft.config import RaftConfig
from wiber.raft.log import RaftLog
from wiber.raft.messages import (
    MAX_NUMBER,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    ReadState,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
    describe,
)
from wiber.raft.progress import Progress, ProgressState
from wiber.raft.quorum import VoteResult, committed_index, vote_result
from wiber.raft.ready import Ready
from wiber.raft.storage import Compacted, LogRangeError, LogStorage

__all__ = ["ProposalDropped", "Raft", "Role"]

_module_log = logging.getLogger(__name__)

_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT

# Why a peer must be looked at when the outbox is flushed (see `_flush`).
_SEND = 1  # new entries may be sendable
_COMMIT = 2  # the commit index moved: tell it even if there is nothing else to send
_GAP = 4  # a heartbeat reply while it lags: retry the probe / check for a lost tail

# Replies wait for persistence (Figure 2); see `_reply_channel`.
_AFTER_PERSIST = frozenset({RequestVoteReply, AppendEntriesReply, InstallSnapshotReply})


class Role(Enum):
    """A node's role in its current term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


_FOLLOWER = Role.FOLLOWER
_PRE_CANDIDATE = Role.PRE_CANDIDATE
_CANDIDATE = Role.CANDIDATE
_LEADER = Role.LEADER


class ProposalDropped(WiberError):
    """A proposal or read was refused: this node is not the leader, or is handing leadership over.

    `leader_id` is the leader this node knows of (None when unknown or changing); the node answers
    the client NOT_LEADER with it.
    """

    def __init__(self, leader_id: str | None, reason: str = "not the leader") -> None:
        self.leader_id = leader_id
        self.reason = reason
        super().__init__(f"proposal dropped: {reason} (leader: {leader_id or 'unknown'})")


class Raft:
    """One node's Raft state machine (see the module docstring for the rules and the contract)."""

    def __init__(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> None:
        """Restore a node from what `storage` holds (a crash-restart is just this).

        Raises:
            ValueError: the config is invalid.
            InvariantError: the storage's hard state commits beyond its log.
        """
        config.validate()
        self._cfg = config
        self._id = config.id
        self._peers: tuple[str, ...] = tuple(sorted(set(config.peers) - {config.id}))
        self._peer_set = frozenset(self._peers)
        self._voters = config.voters
        self._quorum = len(self._voters) // 2 + 1
        self._storage = storage
        self._rng = rng
        self._logger = config.logger if config.logger is not None else _module_log
        self._log = RaftLog(storage)
        hard_state, snap = storage.initial_state()
        self._persisted = hard_state
        last = self._log.last_index()
        if hard_state.commit > last:
            raise InvariantError(
                f"{self._id}: the persisted commit index {hard_state.commit} is beyond the persisted log "
                f"(last index {last}): the storage lost entries it had made durable (see Ready)")
        self._log.committed = max(hard_state.commit, snap.index)
        self._log.applied = snap.index
        self._term = hard_state.term
        self._voted_for = hard_state.voted_for
        # A crash before a Ready's writes were all durable may have kept its entries but not its
        # hard state (Ready: durable in order, snapshot, entries, hard state). Raising the term to
        # the last entry's is safe: this node saw that term, and granted no vote in it (a grant
        # leaves only after its hard state is durable).
        last_term = self._log.last_term()
        if last_term > self._term:
            self._logger.warning("%s: persisted term %d is below its last entry's term %d: using %d",
                                 self._id, self._term, last_term, last_term)
            self._term = last_term
            self._voted_for = None
        self._role = _FOLLOWER
        self._leader_id: str | None = None
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._read_states: list[ReadState] = []
        self._outstanding: Ready | None = None
        # Election state.
        self._votes: dict[str, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._draw_timeout()
        # Leader state.
        self._prs: dict[str, Progress] = {}
        self._self_match = 0
        self._dirty: dict[str, int] = {}
        self._transferee: str | None = None
        self._transfer_elapsed = 0
        self._round = 0
        self._round_unsent = False
        self._pending_reads: list[bytes] = []
        self._read_queue: deque[tuple[int, int, bytes]] = deque()
        self._logger.info("%s started as follower at term %d (commit %d, last index %d)",
                          self._id, self._term, self._log.committed, self._log.last_index())

    # -- read-only state ------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This node's id."""
        return self._id

    @property
    def role(self) -> Role:
        """The current role."""
        return self._role

    @property
    def term(self) -> int:
        """The current term."""
        return self._term

    @property
    def leader_id(self) -> str | None:
        """The leader of the current term as far as this node knows (itself when leader)."""
        return self._leader_id

    @property
    def voted_for(self) -> str | None:
        """Who this node voted for in the current term."""
        return self._voted_for

    @property
    def commit_index(self) -> int:
        """The highest index known to be committed."""
        return self._log.committed

    @property
    def applied_index(self) -> int:
        """The highest index handed out for applying (in a Ready already advanced)."""
        return self._log.applied

    @property
    def last_index(self) -> int:
        """The index of the last entry in the log (persisted or not)."""
        return self._log.last_index()

    @property
    def lead_transferee(self) -> str | None:
        """The target of a leadership transfer in progress, if any."""
        return self._transferee

    def match_index(self, peer: str) -> int:
        """Returns: how far `peer`'s log is known to match the leader's (0 when not leader)."""
        if self._role is not _LEADER:
            return 0
        if peer == self._id:
            return self._self_match
        pr = self._prs.get(peer)
        return pr.match if pr is not None else 0

    def progress(self) -> dict[str, int]:
        """Returns: the match index of every voter, this leader included (empty when not leader)."""
        if self._role is not _LEADER:
            return {}
        result = {p: pr.match for p, pr in self._prs.items()}
        result[self._id] = self._self_match
        return result

    # -- inputs ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance time by one tick: election timeout, heartbeats, CheckQuorum, transfer timeout."""
        self._check_idle("tick")
        if self._role is _LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, msg: Message) -> None:
        """Handle one message from a peer.

        Messages for another node, from unknown senders, of stale terms, duplicated or reordered
        are tolerated (dropped or answered as the rules say).
        """
        self._check_idle("step")
        frm = msg.frm
        debug = self._logger.isEnabledFor(logging.DEBUG)
        if msg.to != self._id or frm not in self._peer_set:
            if debug:
                self._logger.debug("%s dropped %s: not addressed to it from a peer", self._id, describe(msg))
            return
        if debug:
            self._logger.debug("%s got %s", self._id, describe(msg))
        term = msg.term
        if term > self._term:
            if isinstance(msg, RequestVote):
                if not msg.force and self._in_lease():
                    # Thesis 4.2.3: a live leader's followers do not help disrupt it.
                    if debug:
                        self._logger.debug("%s ignored %s: heard from leader %s %d ticks ago", self._id,
                                           describe(msg), self._leader_id, self._election_elapsed)
                    return
                if not msg.pre_vote:
                    self._become_follower(term, None)
            elif isinstance(msg, RequestVoteReply) and msg.pre_vote and msg.granted:
                pass  # a pre-vote grant carries the future term; it changes nothing here
            elif isinstance(msg, (AppendEntries, InstallSnapshot, TimeoutNow)):
                self._become_follower(term, frm)
            else:
                self._become_follower(term, None)
        elif term < self._term:
            self._step_stale(msg)
            return
        if isinstance(msg, RequestVote):
            self._handle_vote_request(msg)
        elif self._role is _LEADER:
            self._step_leader(msg)
        elif self._role is _FOLLOWER:
            self._step_follower(msg)
        else:
            self._step_candidate(msg)

    def propose(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Append commands to the leader's log, as consecutive entries, and replicate them.

        Returns:
            the first and last index of the new entries.
        Raises:
            ProposalDropped: not the leader, or a leadership transfer is in progress.
            ValueError: `datas` is empty.
            TypeError: an item is not bytes.
        """
        self._check_idle("propose")
        if self._role is not _LEADER:
            raise ProposalDropped(self._leader_id)
        if self._transferee is not None:
            raise ProposalDropped(None, f"leadership transfer to {self._transferee} in progress")
        if not datas:
            raise ValueError("propose() needs at least one command")
        log = self._log
        first = log.last_index() + 1
        term = self._term
        entries = []
        for k, data in enumerate(datas):
            if type(data) is not bytes:
                raise TypeError(f"a command must be bytes, not {type(data).__name__}")
            entries.append(Entry(first + k, term, EntryKind.NORMAL, data))
        log.append(entries)
        self._mark_all(_SEND)
        return first, first + len(entries) - 1

    def read_index(self, ctx: bytes) -> None:
        """Start a linearizable read (thesis 6.4); the answer comes as a `ReadState` in a later Ready.

        The read state's index is the commit index once the leader has committed an entry of its
        own term; it is released after a majority acknowledged a heartbeat round sent after the
        request. A single-node leader answers at once.

        Raises:
            ProposalDropped: not the leader.
        """
        self._check_idle("read_index")
        if self._role is not _LEADER:
            raise ProposalDropped(self._leader_id)
        if not self._committed_in_term():
            self._pending_reads.append(ctx)
            return
        self._start_read(ctx)

    def transfer_leadership(self, target: str | None = None) -> None:
        """Hand leadership to `target` (thesis 3.10); None picks the most up-to-date voter.

        Proposals are refused from now on; the target is brought up to date, then sent TimeoutNow
        so it campaigns at once. The transfer is abandoned after an election timeout.

        Raises:
            ProposalDropped: not the leader.
            ValueError: `target` is not a voter.
        """
        self._check_idle("transfer_leadership")
        if self._role is not _LEADER:
            raise ProposalDropped(self._leader_id)
        if target is None:
            if not self._peers:
                return
            target = self._peers[0]
            for p in self._peers:
                if self._prs[p].match > self._prs[target].match:
                    target = p
        elif target == self._id:
            return
        elif target not in self._peer_set:
            raise ValueError(f"cannot transfer leadership to {target!r}: not a voter of this cluster")
        if target == self._transferee:
            return
        if self._transferee is not None:
            self._logger.info("%s abandoned the transfer to %s at term %d", self._id, self._transferee,
                              self._term)
        self._transferee = target
        self._transfer_elapsed = 0
        self._logger.info("%s transferring leadership to %s at term %d", self._id, target, self._term)
        if self._prs[target].match == self._log.last_index():
            self._send(TimeoutNow(self._term, self._id, target))
        else:
            self._mark(target, _SEND)

    # -- outputs --------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Returns: whether `ready()` has work (False while a Ready awaits `advance()`)."""
        if self._outstanding is not None:
            return False
        if self._dirty:
            self._flush()
        log = self._log
        persisted = self._persisted
        return bool(
            self._msgs or self._msgs_after or self._read_states or log.has_unstable()
            or log.committed > log.applied or log.pending_snapshot() is not None
            or self._term != persisted.term or self._voted_for != persisted.voted_for
            or log.committed != persisted.commit)

    def ready(self) -> Ready:
        """Collect what must be persisted, sent and applied now (see `Ready` for the order).

        Raises:
            InvariantError: the previous Ready was not advanced.
        """
        if self._outstanding is not None:
            raise InvariantError(f"{self._id}: ready() called again before advance()")
        if self._dirty:
            self._flush()
        log = self._log
        persisted = self._persisted
        hard_state = None
        must_sync = False
        if self._term != persisted.term or self._voted_for != persisted.voted_for:
            hard_state = HardState(self._term, self._voted_for, log.committed)
            must_sync = True
        elif log.committed != persisted.commit:
            hard_state = HardState(self._term, self._voted_for, log.committed)
        snapshot = log.pending_snapshot()
        entries = log.unstable_entries()
        if snapshot is not None or entries:
            must_sync = True
        rd = Ready(
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            messages=self._msgs,
            messages_after_persist=self._msgs_after,
            committed_entries=log.next_committed(self._cfg.max_batch_bytes),
            read_states=self._read_states,
            must_sync=must_sync,
        )
        self._msgs = []
        self._msgs_after = []
        self._read_states = []
        self._round_unsent = False  # the heartbeats of the current round are now on their way
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The application persisted, sent and applied `rd`.

        Now the leader counts its own persisted entries towards commitment and a candidate its
        own durable vote.

        Raises:
            InvariantError: `rd` is not the outstanding Ready, or storage does not hold what it said
                to persist.
        """
        if rd is not self._outstanding:
            raise InvariantError(f"{self._id}: advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        log = self._log
        if rd.hard_state is not None:
            self._persisted = rd.hard_state
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot[0])
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
        role = self._role
        if role is _LEADER:
            stable = log.stable_last_index()
            if stable > self._self_match:
                self._self_match = stable
                if self._maybe_commit():
                    self._on_commit()
        elif role is _CANDIDATE:
            persisted = self._persisted
            if (self._id not in self._votes and persisted.term == self._term
                    and persisted.voted_for == self._id):
                self._votes[self._id] = True
                self._check_votes()

    # -- the rules that mutation tests switch off (keep each one small) -------------------------

    def _log_is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Section 5.4.1: grant a vote only to a candidate whose log is at least as up-to-date."""
        return self._log.is_up_to_date(last_index, last_term)

    def _maybe_commit(self) -> bool:
        """Figure 2 (leaders): commit N if a majority holds N and ``log[N].term == currentTerm``.

        Section 5.4.2 / Figure 8: entries of earlier terms are never committed by counting
        replicas; they are committed indirectly, with the first entry of the current term.

        Returns:
            whether the commit index moved.
        """
        matches = {p: pr.match for p, pr in self._prs.items()}
        matches[self._id] = self._self_match
        index = committed_index(matches, self._voters)
        log = self._log
        if index > log.committed and log.term(index) == self._term:
            log.commit_to(index)
            return True
        return False

    def _reply_channel(self, msg: Message) -> list[Message]:
        """Returns: the outbox for `msg`.

        Replies — vote grants and refusals, append and snapshot acknowledgements — may only leave
        once the term, vote and entries they vouch for are durable (Figure 2), so they go to
        `messages_after_persist`; everything else (the leader's appends, heartbeats, TimeoutNow,
        snapshots, vote requests) may leave before the write (thesis 10.2.1).
        """
        if type(msg) in _AFTER_PERSIST:
            return self._msgs_after
        return self._msgs

    # -- common machinery -----------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        """Queue `msg` in the outbox `_reply_channel` picks."""
        self._reply_channel(msg).append(msg)

    def _check_idle(self, what: str) -> None:
        """Raises: InvariantError if a Ready is waiting for `advance()`."""
        if self._outstanding is not None:
            raise InvariantError(f"{self._id}: {what}() between ready() and advance()")

    def _draw_timeout(self) -> int:
        """Returns: a randomized election timeout in ``[election_ticks, 2 * election_ticks)``."""
        et = self._cfg.election_ticks
        return self._rng.randrange(et, 2 * et)

    def _in_lease(self) -> bool:
        """Returns: whether this node heard from a live leader within the minimum election timeout."""
        return (self._cfg.check_quorum and self._leader_id is not None
                and self._election_elapsed < self._cfg.election_ticks)

    def _committed_in_term(self) -> bool:
        """Returns: whether the commit index is at an entry of the current term."""
        return self._log.term(self._log.committed) == self._term

    def _reset(self) -> None:
        """Clear per-term and per-role state (timers, votes, progress, reads, transfer)."""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._draw_timeout()
        self._votes = {}
        self._prs = {}
        self._dirty = {}
        self._transferee = None
        self._transfer_elapsed = 0
        self._round = 0
        self._round_unsent = False
        self._pending_reads = []
        self._read_queue.clear()

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
        self._reset()
        log = self._log
        last = log.last_index()
        cap = self._cfg.max_inflight
        self._prs = {p: Progress(0, last + 1, cap) for p in self._peers}
        self._self_match = log.stable_last_index()
        log.append([Entry(last + 1, self._term, EntryKind.NOOP, b"")])
        self._mark_all(_SEND)
        self._logger.info("%s became leader at term %d", self._id, self._term)

    def _campaign(self, pre: bool, force: bool) -> None:
        """Start a pre-vote (`pre`) or an election; `force` marks a transfer's campaign."""
        if self._term >= MAX_NUMBER:  # only forged messages get a term this high: never go past it
            self._logger.error("%s cannot campaign: its term %d is the largest there is", self._id, self._term)
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

    # -- ticks ----------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        """Followers and candidates: campaign once the randomized election timeout elapses."""
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._campaign(pre=self._cfg.pre_vote, force=False)

    def _tick_leader(self) -> None:
        """Leaders: heartbeats, CheckQuorum, the transfer timeout and the snapshot retry timer."""
        cfg = self._cfg
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= cfg.election_ticks:
                self._logger.info("%s abandoned the transfer to %s at term %d: timed out",
                                  self._id, self._transferee, self._term)
                self._transferee = None
        if self._election_elapsed >= cfg.election_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum:
                active = 1 + sum(1 for pr in self._prs.values() if pr.recent_active)
                if active < self._quorum:
                    self._logger.info("%s stepped down at term %d: heard from %d of %d voters "
                                      "in an election timeout", self._id, self._term, active,
                                      len(self._voters))
                    self._become_follower(self._term, None)
                    return
                for pr in self._prs.values():
                    pr.recent_active = False
        for p, pr in self._prs.items():
            if pr.state is _SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= 2 * cfg.election_ticks:
                    pr.become_probe()  # the snapshot or its reply was probably lost: start over
                    self._mark(p, _SEND)
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    # -- message handling -----------------------------------------------------------------------

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

    def _step_follower(self, msg: Message) -> None:
        """Followers: accept the leader's appends, snapshots and TimeoutNow."""
        if isinstance(msg, AppendEntries):
            self._election_elapsed = 0
            self._leader_id = msg.frm
            self._handle_append(msg)
        elif isinstance(msg, InstallSnapshot):
            self._election_elapsed = 0
            self._leader_id = msg.frm
            self._handle_snapshot(msg)
        elif isinstance(msg, TimeoutNow) and msg.frm == self._leader_id:
            self._logger.info("%s got TimeoutNow from %s at term %d: campaigning", self._id,
                              msg.frm, self._term)
            self._campaign(pre=False, force=True)

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

    def _step_leader(self, msg: Message) -> None:
        """Leaders: process acknowledgements."""
        if isinstance(msg, AppendEntriesReply):
            self._handle_append_reply(msg)
        elif isinstance(msg, InstallSnapshotReply):
            pr = self._prs[msg.frm]
            pr.recent_active = True
            if msg.match_index > self._log.last_index():
                self._logger.warning("%s dropped %s: beyond its last index", self._id, describe(msg))
                return
            self._on_success(msg.frm, pr, msg.match_index)
        elif isinstance(msg, (AppendEntries, InstallSnapshot)):
            self._logger.error("%s dropped %s: two leaders at term %d", self._id, describe(msg), self._term)

    def _handle_append(self, msg: AppendEntries) -> None:
        """Figure 2 (AppendEntries receiver), replying after persistence."""
        log = self._log
        if msg.prev_index < log.committed:
            # Older than what we know committed (a delayed or duplicated message): report our commit.
            self._send(AppendEntriesReply(self._term, self._id, msg.frm, True, log.committed, 0, 0, msg.ctx))
            return
        entries = msg.entries
        if entries and not _entries_follow(msg):
            self._logger.warning("%s dropped %s: entries do not follow prev or exceed the term",
                                 self._id, describe(msg))
            return
        if log.match_term(msg.prev_index, msg.prev_term):
            last_new = msg.prev_index + len(entries)
            if entries:
                log.maybe_append(entries)
            log.commit_to(min(msg.commit, last_new))
            self._send(AppendEntriesReply(self._term, self._id, msg.frm, True, last_new, 0, 0, msg.ctx))
        else:
            conflict_index, conflict_term = self._conflict_hint(msg.prev_index)
            self._send(AppendEntriesReply(self._term, self._id, msg.frm, False, msg.prev_index,
                                          conflict_index, conflict_term, msg.ctx))

    def _conflict_hint(self, prev_index: int) -> tuple[int, int]:
        """Returns: (conflict_index, conflict_term) for a rejected `prev_index` (section 5.3)."""
        log = self._log
        last = log.last_index()
        if prev_index > last:
            return last + 1, 0
        conflict_term = log.term(prev_index)
        # The first index of conflict_term after the commit index (terms never decrease along a log).
        lo = max(log.committed, log.first_index() - 1) + 1
        hi = prev_index
        while lo < hi:
            mid = (lo + hi) // 2
            if log.term(mid) >= conflict_term:
                hi = mid
            else:
                lo = mid + 1
        return lo, conflict_term

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        """Install the leader's snapshot unless the log already covers it (thesis chapter 5)."""
        meta = msg.meta
        log = self._log
        if meta.term > msg.term:
            self._logger.warning("%s dropped %s: snapshot term above the message's", self._id, describe(msg))
            return
        if meta.index <= log.committed:
            self._send(InstallSnapshotReply(self._term, self._id, msg.frm, log.committed))
            return
        if log.match_term(meta.index, meta.term):
            log.commit_to(meta.index)
        else:
            log.restore(meta, msg.data)
            self._logger.info("%s restored snapshot %d/%d from %s at term %d", self._id, meta.term,
                              meta.index, msg.frm, self._term)
        self._send(InstallSnapshotReply(self._term, self._id, msg.frm, meta.index))

    def _handle_append_reply(self, msg: AppendEntriesReply) -> None:
        """Leaders: advance or back up a follower's progress; count a heartbeat round's echo."""
        frm = msg.frm
        pr = self._prs[frm]
        pr.recent_active = True
        ctx = msg.ctx
        if ctx and pr.acked_round < ctx <= self._round:
            pr.acked_round = ctx
            if self._read_queue:
                self._release_reads()
        log = self._log
        if msg.success:
            if msg.match_index > log.last_index():
                self._logger.warning("%s dropped %s: beyond its last index", self._id, describe(msg))
                return
            self._on_success(frm, pr, msg.match_index)
        else:
            self._on_reject(frm, pr, msg)
        if ctx:
            # A heartbeat's echo: restart a probe that may have been lost, free a full window.
            if pr.state is _PROBE:
                pr.probe_sent = False
            elif pr.state is _REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < log.last_index() or pr.state is _PROBE:
                self._mark(frm, _GAP)

    def _on_success(self, frm: str, pr: Progress, match: int) -> None:
        """A follower holds our log up to `match`."""
        updated = pr.maybe_update(match)
        state = pr.state
        if state is _PROBE:
            if match == pr.match:
                pr.become_replicate()
        elif state is _SNAPSHOT:
            if pr.match >= pr.pending_snapshot or pr.match + 1 >= self._log.first_index():
                pr.become_replicate()
        elif updated:
            pr.inflights.free_le(match)
        if updated:
            if self._maybe_commit():
                self._on_commit()
            if frm == self._transferee and pr.match == self._log.last_index():
                self._send(TimeoutNow(self._term, self._id, frm))
        self._mark(frm, _SEND)

    def _on_reject(self, frm: str, pr: Progress, msg: AppendEntriesReply) -> None:
        """A follower's log does not match at the rejected prev index: back up (section 5.3)."""
        rejected = msg.match_index
        state = pr.state
        if msg.ctx and rejected == pr.match and msg.conflict_index <= pr.match and state is not _SNAPSHOT:
            # A heartbeat anchored at the follower's match index was refused: within one term a
            # follower never drops what it acknowledged, so its disk was wiped or lost. Start over
            # from what it says it holds (a snapshot if that is compacted here).
            self._logger.warning("%s: %s no longer holds index %d it acknowledged (data lost?); "
                                 "resending from %d", self._id, frm, pr.match, msg.conflict_index)
            pr.match = max(0, msg.conflict_index - 1)
            pr.become_probe()
            pr.probe_sent = False
            self._mark(frm, _GAP)
            return
        if state is _REPLICATE:
            if rejected <= pr.match:
                return  # stale
        elif state is _PROBE:
            if rejected != pr.next - 1:
                return  # stale: not the probe in flight
        else:
            return
        if rejected > self._log.last_index():
            return
        nxt = max(min(self._next_from_hint(pr, rejected, msg.conflict_index, msg.conflict_term),
                      rejected), pr.match + 1)
        if state is _REPLICATE:
            pr.become_probe()
        pr.next = nxt
        pr.probe_sent = False
        self._mark(frm, _SEND)

    def _next_from_hint(self, pr: Progress, rejected: int, conflict_index: int, conflict_term: int) -> int:
        """Returns: where to probe next: after our last entry of the follower's conflicting term,
        or at its conflict index when we hold no entry of that term (section 5.3)."""
        if conflict_term == 0:
            return conflict_index
        log = self._log
        lo = max(pr.match, log.first_index() - 1)
        hi = min(rejected, log.last_index())
        if lo > hi or log.term(lo) > conflict_term:
            return conflict_index
        while lo < hi:  # the last index in [lo, hi] whose term is <= conflict_term
            mid = (lo + hi + 1) // 2
            if log.term(mid) <= conflict_term:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1 if log.term(lo) == conflict_term else conflict_index

    def _on_commit(self) -> None:
        """The leader's commit index moved: tell followers; release reads waiting for a commit."""
        self._mark_all(_COMMIT)
        if self._pending_reads and self._committed_in_term():
            pending = self._pending_reads
            self._pending_reads = []
            for ctx in pending:
                self._start_read(ctx)

    # -- leader output --------------------------------------------------------------------------

    def _mark(self, peer: str, why: int) -> None:
        """Note that `peer` must be looked at when the outbox is flushed."""
        self._dirty[peer] = self._dirty.get(peer, 0) | why

    def _mark_all(self, why: int) -> None:
        """Note that every peer must be looked at when the outbox is flushed."""
        dirty = self._dirty
        for p in self._peers:
            dirty[p] = dirty.get(p, 0) | why

    def _flush(self) -> None:
        """Send what marked peers need: as few, as full batches as the limits allow.

        Batching per flush (not per proposal) is what turns many proposals of one loop turn into
        one AppendEntries per follower.
        """
        dirty = self._dirty
        self._dirty = {}
        if self._role is not _LEADER:
            return
        for peer, why in dirty.items():
            pr = self._prs[peer]
            sent = False
            while self._send_append(peer, pr, False):
                sent = True
            if sent:
                continue
            if why & _GAP:
                self._send_append(peer, pr, True)
            elif why & _COMMIT and min(self._log.committed, pr.match) > pr.sent_commit:
                self._send(self._empty_append(peer, pr, 0))

    def _send_append(self, peer: str, pr: Progress, allow_empty: bool) -> bool:
        """Send `peer` the next batch from its next index (or a snapshot if that is compacted).

        With `allow_empty`, an empty AppendEntries at ``next - 1`` goes out when there is nothing new:
        it is acknowledged if the follower holds everything sent, refused if a batch was lost.

        Returns:
            whether a batch with entries was sent (so another may follow).
        """
        if pr.is_paused():
            return False
        log = self._log
        last = log.last_index()
        nxt = pr.next
        if nxt > last and not allow_empty:
            return False
        try:
            prev_term = log.term(nxt - 1)
            if nxt <= last:
                cfg = self._cfg
                entries = log.entries(nxt, min(last + 1, nxt + cfg.max_batch_entries), cfg.max_batch_bytes)
            else:
                entries = []
        except Compacted:
            self._send_snapshot(peer, pr)
            return False
        except LogRangeError as exc:
            raise InvariantError(f"{self._id}: next index {nxt} of {peer} is beyond the log: {exc}") from exc
        commit = log.committed
        self._send(AppendEntries(self._term, self._id, peer, nxt - 1, prev_term, tuple(entries), commit, 0))
        reach = min(commit, nxt - 1 + len(entries))
        pr.sent_commit = max(pr.sent_commit, reach)
        if entries:
            pr.sent_entries(entries[-1].index)
            return True
        if pr.state is _PROBE:
            pr.probe_sent = True
        return False

    def _send_snapshot(self, peer: str, pr: Progress) -> None:
        """Send the storage's snapshot to a follower that needs compacted entries."""
        meta, data = self._storage.snapshot()
        if meta.index == 0:
            raise InvariantError(f"{self._id}: the log is compacted but the storage has no snapshot")
        pr.become_snapshot(meta.index)
        self._send(InstallSnapshot(self._term, self._id, peer, meta, data))
        self._logger.info("%s sent snapshot %d/%d to %s at term %d", self._id, meta.term, meta.index,
                          peer, self._term)

    def _empty_append(self, peer: str, pr: Progress, ctx: int) -> AppendEntries:
        """Returns: a heartbeat for `peer`: no entries, anchored at its match index (which it holds,
        so it is never refused), carrying the commit index and heartbeat round `ctx`."""
        prev = pr.match
        try:
            prev_term = self._log.term(prev)
        except LogRangeError:
            prev, prev_term = 0, 0  # compacted: the follower answers with its own commit index
        commit = self._log.committed
        pr.sent_commit = max(pr.sent_commit, min(commit, prev))
        return AppendEntries(self._term, self._id, peer, prev, prev_term, (), commit, ctx)

    def _bcast_heartbeat(self) -> None:
        """Start a new heartbeat round: every follower gets a heartbeat carrying the round number."""
        self._round += 1
        self._round_unsent = True
        for p in self._peers:
            self._send(self._empty_append(p, self._prs[p], self._round))

    def _start_read(self, ctx: bytes) -> None:
        """Queue a read at the current commit index behind a heartbeat round not yet sent."""
        if not self._peers:
            self._read_states.append(ReadState(self._log.committed, ctx))
            return
        if not self._round_unsent:
            self._bcast_heartbeat()
        self._read_queue.append((self._round, self._log.committed, ctx))

    def _release_reads(self) -> None:
        """Answer the reads whose heartbeat round a majority (this leader included) has echoed."""
        rounds = {p: pr.acked_round for p, pr in self._prs.items()}
        rounds[self._id] = self._round
        acked = committed_index(rounds, self._voters)
        queue = self._read_queue
        while queue and queue[0][0] <= acked:
            _, index, ctx = queue.popleft()
            self._read_states.append(ReadState(index, ctx))

    def __repr__(self) -> str:
        return (f"Raft({self._id}, {self._role.value}, term={self._term}, leader={self._leader_id}, "
                f"{self._log!r})")


def _entries_follow(msg: AppendEntries) -> bool:
    """Returns: whether the entries are numbered from ``prev_index + 1`` with terms that never
    decrease from ``prev_term`` and never exceed the message's term."""
    index = msg.prev_index
    term = msg.prev_term
    top = msg.term
    if term > top:
        return False
    for e in msg.entries:
        index += 1
        if e.index != index or e.term < term or e.term > top:
            return False
        term = e.term
    return True
