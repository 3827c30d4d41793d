"""Wiber's Raft: a sans-I/O consensus core (etcd-io/raft style) and its building blocks.

The application (the node, or the simulation) owns storage, sockets and the clock::

    raft = Raft(RaftConfig(id="n1", peers=("n2", "n3")), storage, random.Random())
    raft.tick(); raft.step(msg); raft.propose([b"cmd"])
    while raft.has_ready():
        rd = raft.ready()      # persist, send, apply in the order `Ready` documents
        ...
        raft.advance(rd)
"""

from __future__ import annotations

from wiber.raft.config import RaftConfig
from wiber.raft.core import ProposalDropped, Raft, Role
from wiber.raft.membership import ChangeKind, ConfChange, Membership, MembershipError
from wiber.raft.messages import (
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
    SnapshotMeta,
    TimeoutNow,
    describe,
)
from wiber.raft.quorum import VoteResult, committed_index, vote_result
from wiber.raft.ready import Ready
from wiber.raft.storage import Compacted, EntryUnavailable, LogRangeError, LogStorage, MemoryStorage
from wiber.raft.wire import MalformedMessage, decode_message, encode_message

__all__ = [
    "ChangeKind",
    "ConfChange",
    "Membership",
    "MembershipError",
    "AppendEntries",
    "AppendEntriesReply",
    "Compacted",
    "Entry",
    "EntryKind",
    "EntryUnavailable",
    "HardState",
    "InstallSnapshot",
    "InstallSnapshotReply",
    "LogRangeError",
    "LogStorage",
    "MalformedMessage",
    "MemoryStorage",
    "Message",
    "ProposalDropped",
    "Raft",
    "RaftConfig",
    "ReadState",
    "Ready",
    "RequestVote",
    "RequestVoteReply",
    "Role",
    "SnapshotMeta",
    "TimeoutNow",
    "VoteResult",
    "committed_index",
    "decode_message",
    "describe",
    "encode_message",
    "vote_result",
]
