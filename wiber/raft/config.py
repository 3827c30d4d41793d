"""`RaftConfig`: the core's settings, in ticks (the node maps milliseconds to ticks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from wiber.raft.messages import MAX_ENTRIES_PER_MESSAGE

__all__ = ["RaftConfig"]


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Settings of one Raft core (etcd `Config`); call `validate()` before use (`Raft` does).

    Fields:
        id: this node's id.
        peers: the other voters' ids (the node's own id may be listed too; it is ignored): the
            membership as of the snapshot in storage (or of a new cluster); CONFIG entries in the
            log after it change it (`wiber.raft.membership`).
        learners: the learners of that membership (they receive the log but do not vote); this node
            is a learner when listed here.
        others: more nodes whose messages are taken though they are not members here (the node's
            config file: a member added later, or a leader of a newer membership than the one a
            restarted node knows).
        member: whether this node belongs to that membership (as a voter unless it is a learner);
            False for a node removed before the snapshot it starts from.
        empty_listen_ticks: how long a node that started with an empty log (and not `join`) listens
            before it grants a vote: a live leader's heartbeats show it within an election timeout
            whether the cluster has a history its disk lacks (wiber/raft/reconfig.py). None means
            `election_ticks`; 0 turns the wait off (hand-driven tests that tick one node only).
        join: this node joins an existing cluster with an empty log: it knows no membership until
            the leader's log or snapshot tells it, so it never campaigns or votes before.
        election_ticks: the election timeout; each follower draws its own from
            ``[election_ticks, 2 * election_ticks)``. CheckQuorum and the leader lease use it as is.
        heartbeat_ticks: a leader sends heartbeats this often; must be below election_ticks.
        max_inflight: REPLICATE-state batches a leader may have unacknowledged per follower.
        max_batch_bytes: an AppendEntries (and a Ready's committed entries) holds at most this many
            bytes of entries (one entry is always sent, however large).
        max_batch_entries: an AppendEntries holds at most this many entries (at most
            `MAX_ENTRIES_PER_MESSAGE`).
        pre_vote: run a PreVote round before a real election (thesis section 9.6).
        check_quorum: a leader steps down without a majority's contact for an election timeout,
            and nodes that heard a leader recently refuse to vote (thesis sections 6.2 and 4.2.3).
        logger: where the core logs (role and term changes at INFO, messages at DEBUG);
            None means the `wiber.raft.core` module logger.
    """

    id: str
    peers: tuple[str, ...]
    learners: tuple[str, ...] = ()
    member: bool = True
    others: tuple[str, ...] = ()
    election_ticks: int = 30
    heartbeat_ticks: int = 5
    max_inflight: int = 64
    max_batch_bytes: int = 1 << 20
    max_batch_entries: int = 10_000
    pre_vote: bool = True
    check_quorum: bool = True
    join: bool = False
    empty_listen_ticks: int | None = None
    logger: logging.Logger | None = None

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: a field is out of range; the message names the field and the fix.
        """
        if not isinstance(self.id, str) or not self.id or len(self.id) > 255:
            raise ValueError(
                f"RaftConfig.id must be a non-empty string of at most 255 characters, got {self.id!r}")
        if not isinstance(self.peers, tuple) or not all(isinstance(p, str) and p and len(p) <= 255
                                                        for p in self.peers):
            raise ValueError(f"RaftConfig.peers must be a tuple of node id strings, got {self.peers!r}")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError(f"RaftConfig.peers lists an id twice: {self.peers!r}")
        if not isinstance(self.learners, tuple) or not all(isinstance(p, str) and p and len(p) <= 255
                                                           for p in self.learners):
            raise ValueError(f"RaftConfig.learners must be a tuple of node id strings, got {self.learners!r}")
        both = set(self.learners) & set(self.peers)
        if both:
            raise ValueError(f"RaftConfig.learners and the voters share ids: {sorted(both)}")
        for name in ("election_ticks", "heartbeat_ticks", "max_inflight", "max_batch_bytes",
                     "max_batch_entries"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"RaftConfig.{name} must be a positive integer, got {value!r}")
        if self.max_batch_entries > MAX_ENTRIES_PER_MESSAGE:
            raise ValueError(f"RaftConfig.max_batch_entries must be at most {MAX_ENTRIES_PER_MESSAGE} "
                             f"(what peers accept in one message), got {self.max_batch_entries}")
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError(
                f"RaftConfig.heartbeat_ticks ({self.heartbeat_ticks}) must be below election_ticks "
                f"({self.election_ticks}); use an election timeout of about 10 heartbeats")
        if self.empty_listen_ticks is not None and (type(self.empty_listen_ticks) is not int
                                                    or self.empty_listen_ticks < 0):
            raise ValueError(f"RaftConfig.empty_listen_ticks must be None or an integer >= 0, "
                             f"got {self.empty_listen_ticks!r}")
        for name in ("pre_vote", "check_quorum", "join", "member"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"RaftConfig.{name} must be True or False")
        if self.logger is not None and not isinstance(self.logger, logging.Logger):
            raise ValueError("RaftConfig.logger must be a logging.Logger or None")

    @property
    def voters(self) -> tuple[str, ...]:
        """Returns: every voter, this node included, sorted."""
        return tuple(sorted(set(self.peers) | {self.id}))
