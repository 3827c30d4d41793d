"""`Raft`: the consensus core as a pure state machine (etcd `raft.go` + `rawnode.go`).

Theory of operation
-------------------
The core does no I/O and reads no clock. The application feeds it `tick()` (its unit of time),
peer messages through `step()`, and `propose()`/`read_index()`/`transfer_leadership()` calls, then
collects a `Ready` (what to persist, send and apply), performs it in the order the `Ready`
docstring states, and calls `advance()`. Randomness (the election timeout) comes from the injected
`random.Random`, so a seeded simulation replays exactly.

Rules implemented (Raft paper Figure 2; Ongaro's thesis, chapters cited), each in its role's module:

* Elections (section 5.2): a follower that hears nothing from a leader for its randomized
  timeout, drawn in ``[election_ticks, 2 * election_ticks)``, campaigns; a vote is granted once per
  term, only to a candidate whose log is at least as up-to-date (section 5.4.1, `_log_is_up_to_date`).
  In election.py, with PreVote and CheckQuorum.
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
  ``min(leader commit, index of last new entry)``. In replication.py.
* ReadIndex (thesis 6.4, reads.py), leadership transfer with TimeoutNow (thesis 3.10, here),
  InstallSnapshot (chapter 5, snapshots.py) for followers that need compacted entries.

Layout: `Raft` is `_State` (state.py: the fields, the outbox, the per-term reset) plus one mixin
per role, so a role's rules read in one file and every call stays a direct method call. This module
keeps the public API, the dispatch of inputs by role and term, the Ready cycle and the leader's
clock. A new concern (cluster membership) gets its own module and mixin in the same way.

Persistence contract (Figure 2: "updated on stable storage before responding to RPCs"):

* Term and vote are durable before a vote is granted: grants, like every reply, go to
  `Ready.messages_after_persist` (`_reply_channel`, state.py).
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

from wiber.errors import InvariantError, WiberError
from wiber.raft.config import RaftConfig
from wiber.raft.election import _Election
from wiber.raft.log import RaftLog
from wiber.raft.membership import ConfChange, Membership
from wiber.raft.messages import (
    AppendEntries,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
    describe,
)
from wiber.raft.reads import _Reads
from wiber.raft.reconfig import _Reconfig
from wiber.raft.ready import Ready
from wiber.raft.replication import _Replication
from wiber.raft.snapshots import _Snapshots
from wiber.raft.state import _CANDIDATE, _FOLLOWER, _LEADER, _SEND, _SNAPSHOT, Role
from wiber.raft.storage import LogStorage

__all__ = ["ProposalDropped", "Raft", "Role"]

_module_log = logging.getLogger(__name__)


class ProposalDropped(WiberError):
    """A proposal or read was refused: this node is not the leader, or is handing leadership over.

    `leader_id` is the leader this node knows of (None when unknown or changing); the node answers
    the client NOT_LEADER with it.
    """

    def __init__(self, leader_id: str | None, reason: str = "not the leader") -> None:
        self.leader_id = leader_id
        self.reason = reason
        super().__init__(f"proposal dropped: {reason} (leader: {leader_id or 'unknown'})")


class Raft(_Election, _Replication, _Reads, _Snapshots, _Reconfig):
    """One node's Raft state machine (see the module docstring for the rules, the contract and the
    mixins it is made of)."""

    def __init__(self, config: RaftConfig, storage: LogStorage, rng: random.Random) -> None:
        """Restore a node from what `storage` holds (a crash-restart is just this).

        Raises:
            ValueError: the config is invalid.
            InvariantError: the storage's hard state commits beyond its log.
        """
        config.validate()
        self._cfg = config
        self._id = config.id
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
        self._leader_id = None
        self._msgs = []
        self._msgs_after = []
        self._read_states = []
        self._outstanding = None
        self._self_match = 0
        self._read_queue = deque()
        self._reset()  # the election and leader state: timers (the timeout drawn), votes, progress, reads
        base = Membership(frozenset(), frozenset())
        if not config.join:
            me_voting = config.member and config.id not in config.learners
            base = Membership.of(config.voters if me_voting else set(config.peers) - {config.id},
                                 config.learners)
        self._extra_known = set()
        self._init_membership(base, snap.index)
        # An empty node: a new cluster's, one joining (`join`), or one whose disk was lost. Joining, it
        # knows the cluster has history: no vote before it holds an entry of its leader's term.
        self._fresh = snap.index == 0 and self._log.last_index() == 0 and hard_state.term == 0
        self._history_seen = config.join and self._fresh
        self._listened = 0
        listen = config.empty_listen_ticks
        self._listen_ticks = config.election_ticks if listen is None else listen
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
        if self._fresh:
            self._listened += 1
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
        if msg.to != self._id or frm not in self._known:
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
        elif target not in self._voter_set:
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

    @property
    def membership(self) -> Membership:
        """The membership this node follows: the newest in its log, committed or not."""
        return self._membership

    @property
    def membership_index(self) -> int:
        """The log index of the CONFIG entry `membership` comes from (its base's: a snapshot, or 0);
        the membership is committed once `commit_index` reaches it."""
        return self._conf_index()

    def propose_change(self, change: ConfChange) -> int:
        """Start a single-server membership change (thesis 4.1): add a learner, promote one (the
        leader also promotes learners by itself once they caught up), or remove a member. A leader
        that removes itself hands leadership over once the change commits.

        Returns:
            the index of the CONFIG entry; the change is done when that index is committed.
        Raises:
            MembershipError: not the leader, a change is still in progress, the leader has not yet
                committed an entry of its term, or the change does not fit (the message says which).
        """
        self._check_idle("propose_change")
        return self._propose_change(change)

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

    # -- machinery ------------------------------------------------------------------------------

    def _check_idle(self, what: str) -> None:
        """Raises: InvariantError if a Ready is waiting for `advance()`."""
        if self._outstanding is not None:
            raise InvariantError(f"{self._id}: {what}() between ready() and advance()")

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
            if self._id not in self._voter_set and self._conf_index() <= self._log.committed:
                self._logger.info("%s stepped down at term %d: it left the cluster, and no voter caught up "
                                  "for a handover", self._id, self._term)
                self._become_follower(self._term, None)
                return
            if cfg.check_quorum and not self._check_quorum():
                return
        for p, pr in self._prs.items():
            if pr.state is _SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= 2 * cfg.election_ticks:
                    pr.become_probe()  # the snapshot or its reply was probably lost: start over
                    self._mark(p, _SEND)
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def __repr__(self) -> str:
        return (f"Raft({self._id}, {self._role.value}, term={self._term}, leader={self._leader_id}, "
                f"{self._log!r})")
