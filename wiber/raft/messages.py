"""Raft's records and messages, as frozen slotted dataclasses (h11 `_events.py` style).

Theory of operation
-------------------
Everything that crosses the boundary of the core is a value here: log `Entry`s, the `HardState`
that must be durable, `SnapshotMeta`, the seven peer messages, and `ReadState` (an answered
ReadIndex request). Values are immutable, so a message can sit in an outbox, a simulated network
queue and a trace at once without copies.

Every peer message carries `term`, `frm` and `to` first (Raft paper Figure 2: "If RPC request or
response contains term T > currentTerm: set currentTerm = T, convert to follower"). Timeouts are
not messages here: the core handles `tick()` directly.

Field meanings that the paper leaves open:

* `AppendEntries.ctx`: 0 for a replication batch, the leader's heartbeat round (>= 1) for a
  heartbeat. The follower echoes it in `AppendEntriesReply.ctx`; a quorum of echoes of a round
  started after a ReadIndex request proves the leader was still leader (thesis section 6.4).
* `AppendEntriesReply.match_index`: on success, the index of the last entry the follower now
  knows to match the leader's log (`prev_index + len(entries)`, or the follower's commit index
  when the request was older than that). On rejection, the `prev_index` that was rejected, so the
  leader can tell a stale rejection from a fresh one (etcd `MsgAppResp.Index`).
* `AppendEntriesReply.conflict_term`/`conflict_index` (rejections only, thesis section 5.3's
  optimisation): the follower's term at `prev_index` and the first index it holds of that term, or
  `conflict_term = 0` and `conflict_index = last_index + 1` when its log is too short.
* `RequestVote.force`: the campaign was started by `TimeoutNow` (leadership transfer, thesis
  section 3.10), so voters skip the leader-lease check (thesis section 4.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from wiber.raft.membership import Membership

__all__ = [
    "ENTRY_OVERHEAD",
    "MAX_ENTRIES_PER_MESSAGE",
    "MAX_NUMBER",
    "AppendEntries",
    "AppendEntriesReply",
    "Entry",
    "EntryKind",
    "HardState",
    "InstallSnapshot",
    "InstallSnapshotReply",
    "Message",
    "ReadState",
    "RequestVote",
    "RequestVoteReply",
    "SnapshotMeta",
    "TimeoutNow",
    "describe",
    "entry_size",
]


class EntryKind(IntEnum):
    """What an entry carries: an application command, the leader's empty start-of-term entry, or a
    new cluster membership."""

    NORMAL = 0
    NOOP = 1
    CONFIG = 2
    """A membership change: the data is the whole new membership (`wiber.raft.membership`)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: position, the term of the leader that created it, and the command bytes."""

    index: int
    term: int
    kind: EntryKind
    data: bytes


#: Bytes counted per entry on top of its data when batches are sized (index, term, kind, framing).
ENTRY_OVERHEAD = 16

#: The most entries one AppendEntries may carry (the codec refuses more; the config cannot ask for
#: more). Bounds the objects a peer's frame can make the decoder create.
MAX_ENTRIES_PER_MESSAGE = 1 << 17


#: The largest term, index or counter any peer message, entry or hard state may hold: a signed
#: 64-bit int. The codec refuses larger ones, so ``term + 1`` and ``index + 1`` always stay within
#: what msgpack and the on-disk formats can hold (a forged term 2**64 - 1 once made every node fail
#: encoding ``term + 1``, and again at each restart from its persisted term).
MAX_NUMBER = 2**63 - 1


def entry_size(entry: Entry) -> int:
    """Returns: the size an entry counts for in `max_batch_bytes` and storage `max_bytes` limits."""
    return len(entry.data) + ENTRY_OVERHEAD


@dataclass(frozen=True, slots=True)
class HardState:
    """The state that must be on stable storage before a node answers anyone (Figure 2).

    `commit` is persisted too (it is not required for safety, but it lets a restarted node apply
    what it knows to be committed without waiting for a leader).
    """

    term: int
    voted_for: str | None
    commit: int


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The last index and term a snapshot covers; `SnapshotMeta(0, 0)` means "no snapshot"."""

    index: int
    term: int


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A (pre-)candidate asks for a vote in `term` (for a pre-vote: the term it would campaign in)."""

    term: int
    frm: str
    to: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool
    force: bool


@dataclass(frozen=True, slots=True)
class RequestVoteReply:
    """A vote granted or refused; a pre-vote grant carries the requested (future) term."""

    term: int
    frm: str
    to: str
    granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Entries after `prev_index`/`prev_term`, the leader's commit index, and a heartbeat round."""

    term: int
    frm: str
    to: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    ctx: int


@dataclass(frozen=True, slots=True)
class AppendEntriesReply:
    """The follower's answer to AppendEntries (see the module docstring for the field meanings)."""

    term: int
    frm: str
    to: str
    success: bool
    match_index: int
    conflict_index: int
    conflict_term: int
    ctx: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """The leader tells an up-to-date follower to campaign at once (leadership transfer)."""

    term: int
    frm: str
    to: str


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """The leader's whole snapshot, for a follower that needs entries the leader has compacted."""

    term: int
    frm: str
    to: str
    meta: SnapshotMeta
    data: bytes
    membership: Membership | None = None
    """The membership as of `meta.index` (None: the receiver keeps the one its log says)."""


@dataclass(frozen=True, slots=True)
class InstallSnapshotReply:
    """The follower now holds the log up to `match_index` (the snapshot's index, or its commit)."""

    term: int
    frm: str
    to: str
    match_index: int


#: Any peer message.
Message = Union[  # noqa: UP007 - a runtime alias; `X | Y` of classes also works from 3.10, Union reads better here
    RequestVote,
    RequestVoteReply,
    AppendEntries,
    AppendEntriesReply,
    TimeoutNow,
    InstallSnapshot,
    InstallSnapshotReply,
]


@dataclass(frozen=True, slots=True)
class ReadState:
    """An answered `read_index(ctx)`: reads are linearizable once `index` is applied locally."""

    index: int
    ctx: bytes


def describe(msg: Message) -> str:
    """One short line for a message, for DEBUG logs and simulation transcripts.

    Log positions read ``term/index`` as in etcd's transcripts: ``prev=1/11`` is index 11 of term 1.

    Returns:
        e.g. ``n1->n2 AppendEntries t=2 prev=1/11 n=3 commit=10``.
    """
    head = f"{msg.frm}->{msg.to} {type(msg).__name__} t={msg.term}"
    if isinstance(msg, AppendEntries):
        text = f"{head} prev={msg.prev_term}/{msg.prev_index} n={len(msg.entries)} commit={msg.commit}"
        return f"{text} ctx={msg.ctx}" if msg.ctx else text
    if isinstance(msg, AppendEntriesReply):
        if msg.success:
            text = f"{head} ok match={msg.match_index}"
        else:
            text = f"{head} reject={msg.match_index} hint={msg.conflict_term}/{msg.conflict_index}"
        return f"{text} ctx={msg.ctx}" if msg.ctx else text
    if isinstance(msg, RequestVote):
        flags = (" pre" if msg.pre_vote else "") + (" force" if msg.force else "")
        return f"{head} last={msg.last_log_term}/{msg.last_log_index}{flags}"
    if isinstance(msg, RequestVoteReply):
        return f"{head} {'granted' if msg.granted else 'refused'}{' pre' if msg.pre_vote else ''}"
    if isinstance(msg, InstallSnapshot):
        return f"{head} snap={msg.meta.term}/{msg.meta.index} bytes={len(msg.data)}"
    if isinstance(msg, InstallSnapshotReply):
        return f"{head} match={msg.match_index}"
    return head
