"""`_State`: the fields of one Raft node and the helpers every role uses (outbox, flush marks, reset).

`Raft` (core.py) is this class plus one mixin per role: election.py, replication.py, reads.py,
snapshots.py. The fields are declared here once, so each mixin type-checks on its own; a method one
role calls in another is declared here for the type checker only, and the call stays a plain
method call (these run on every message).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from enum import Enum
from typing import TYPE_CHECKING

from wiber.raft.config import RaftConfig
from wiber.raft.log import RaftLog
from wiber.raft.membership import Membership
from wiber.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    HardState,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    ReadState,
    RequestVote,
    RequestVoteReply,
)
from wiber.raft.progress import Progress, ProgressState
from wiber.raft.ready import Ready
from wiber.raft.storage import LogStorage

__all__ = ["Role"]

_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT

# Why a peer must be looked at when the outbox is flushed (see `_Replication._flush`).
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


class _State:
    """The fields of one node (`Raft.__init__` sets them) and the helpers every role shares."""

    # Configuration and collaborators.
    _cfg: RaftConfig
    _id: str
    _peers: tuple[str, ...]  # the other voters, sorted
    _replicas: tuple[str, ...]  # the other members (voters and learners), sorted: who gets the log
    _known: frozenset[str]  # whose messages are taken: the configured peers and every member
    _extra_known: set[str]  # ... and the nodes `add_known` named
    _voters: tuple[str, ...]  # every voter, this node included if it is one
    _voter_set: frozenset[str]
    _quorum: int
    # Membership (reconfig.py): the base (a snapshot's, or the configured one) and the CONFIG
    # entries after it, (index, term, membership); the newest is followed.
    _membership: Membership
    _conf_base: tuple[int, Membership]
    _conf_log: list[tuple[int, int, Membership]]
    _fresh: bool  # started with an empty log, not joining: votes only once caught up
    _history_seen: bool  # ... and a leader showed that the cluster has history
    _listened: int  # ... ticks since it started (it votes only after `_listen_ticks` of them)
    _listen_ticks: int
    _storage: LogStorage
    _rng: random.Random
    _logger: logging.Logger
    _log: RaftLog
    # Persistent state (Figure 2) and what of it is durable.
    _persisted: HardState
    _term: int
    _voted_for: str | None
    # Role, and the outputs collected for the next Ready.
    _role: Role
    _leader_id: str | None
    _msgs: list[Message]  # may leave before the Ready's writes
    _msgs_after: list[Message]  # leave once the Ready's writes are durable
    _read_states: list[ReadState]
    _outstanding: Ready | None  # the Ready handed out and not yet advanced
    # Election state.
    _votes: dict[str, bool]
    _election_elapsed: int
    _heartbeat_elapsed: int
    _randomized_timeout: int
    # Leader state.
    _prs: dict[str, Progress]
    _self_match: int
    _dirty: dict[str, int]  # peer -> why it must be looked at (_SEND | _COMMIT | _GAP)
    _transferee: str | None
    _transfer_elapsed: int
    _round: int  # the last heartbeat round started
    _round_unsent: bool  # its heartbeats are still in the outbox
    _pending_reads: list[bytes]  # reads waiting for a commit in this term
    _read_queue: deque[tuple[int, int, bytes]]  # (round, read index, ctx) waiting for a round's echo

    if TYPE_CHECKING:
        # Defined by the role mixins `Raft` is made of; one role calls these in another.
        def _campaign(self, pre: bool, force: bool) -> None: ...
        def _step_follower(self, msg: Message) -> None: ...
        def _on_success(self, frm: str, pr: Progress, match: int) -> None: ...
        def _bcast_heartbeat(self) -> None: ...
        def _start_read(self, ctx: bytes) -> None: ...
        def _release_reads(self) -> None: ...
        def _handle_snapshot(self, msg: InstallSnapshot) -> None: ...
        def _handle_snapshot_reply(self, msg: InstallSnapshotReply) -> None: ...
        def _send_snapshot(self, peer: str, pr: Progress) -> None: ...
        def _become_follower(self, term: int, leader: str | None) -> None: ...
        def _maybe_commit(self) -> bool: ...
        def _on_commit(self) -> None: ...
        def _conf_after_append(self, entries: tuple[Entry, ...] | list[Entry]) -> None: ...
        def _conf_restore(self, index: int, membership: Membership | None) -> None: ...
        def membership_at(self, index: int) -> Membership: ...
        def _maybe_promote(self, peer: str, pr: Progress) -> None: ...
        def _leave_if_removed(self) -> None: ...
        def _refuses_votes(self, msg: RequestVote) -> bool: ...
        def _note_history(self, msg: AppendEntries) -> None: ...

    # -- outbox ---------------------------------------------------------------------------------

    # A mutation test (tests/sim/mutations.py) switches this rule off: keep it small.
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

    def _send(self, msg: Message) -> None:
        """Queue `msg` in the outbox `_reply_channel` picks."""
        self._reply_channel(msg).append(msg)

    # -- flush marks (see `_Replication._flush`) ------------------------------------------------

    def _mark(self, peer: str, why: int) -> None:
        """Note that `peer` must be looked at when the outbox is flushed."""
        self._dirty[peer] = self._dirty.get(peer, 0) | why

    def _mark_all(self, why: int) -> None:
        """Note that every peer must be looked at when the outbox is flushed."""
        dirty = self._dirty
        for p in self._replicas:
            dirty[p] = dirty.get(p, 0) | why

    # -- per-term state -------------------------------------------------------------------------

    def _draw_timeout(self) -> int:
        """Returns: a randomized election timeout in ``[election_ticks, 2 * election_ticks)``."""
        et = self._cfg.election_ticks
        return self._rng.randrange(et, 2 * et)

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
