"""The leader's view of one follower: match/next index and a flow-control state (etcd `tracker/`).

States (thesis section 10.2.1 pipelining, etcd `tracker/progress.go`):

* PROBE: the leader does not know where the follower's log matches its own. It sends one
  AppendEntries at a time (``probe_sent`` pauses it) and moves `next_index` back on each rejection
  (with the follower's conflict hint) until one succeeds. A heartbeat reply unpauses it, so a lost
  probe is retried once per heartbeat interval.
* REPLICATE: the follower's log matches up to `match_index`; the leader streams batches without
  waiting, ``next_index`` running ahead of `match_index`, at most `max_inflight` batches unacknowledged.
* SNAPSHOT: the follower needs entries the leader has compacted; one InstallSnapshot was sent and
  the leader waits for its reply (or a timeout) before probing again.

Invariants: ``match_index < next_index``; in REPLICATE the in-flight batch ends are increasing
and all above `match_index`.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(Enum):
    """How the leader currently sends to a follower."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last index of each AppendEntries batch sent and not yet acknowledged, oldest first."""

    __slots__ = ("_ends", "capacity")

    def __init__(self, capacity: int) -> None:
        self._ends: deque[int] = deque()
        self.capacity = capacity

    def add(self, last_index: int) -> None:
        """Record a batch ending at `last_index` as sent."""
        self._ends.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every batch ending at or before `index` (acknowledged)."""
        ends = self._ends
        while ends and ends[0] <= index:
            ends.popleft()

    def free_first_one(self) -> None:
        """Forget the oldest batch (lets a full window send again after messages were lost)."""
        if self._ends:
            self._ends.popleft()

    def reset(self) -> None:
        """Forget every batch."""
        self._ends.clear()

    def full(self) -> bool:
        """Returns: whether `capacity` batches are in flight."""
        return len(self._ends) >= self.capacity

    def __len__(self) -> int:
        return len(self._ends)


class Progress:
    """Replication progress of one peer, kept by the leader (mutable, one per peer per term)."""

    __slots__ = (
        "acked_round",
        "inflights",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "sent_commit",
        "snapshot_elapsed",
        "state",
    )

    def __init__(self, match: int, next_index: int, max_inflight: int) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        # CheckQuorum: heard from since the last check (thesis section 6.2).
        self.recent_active = False
        # ReadIndex: the highest heartbeat round this peer has echoed (thesis section 6.4).
        self.acked_round = 0
        # The highest commit index this peer can learn from what was sent to it (a follower
        # commits min(leader commit, last index of the batch)): commit-only messages that
        # would not raise it are not sent.
        self.sent_commit = 0

    def maybe_update(self, index: int) -> bool:
        """The follower holds the leader's log up to `index`. Returns: whether match grew."""
        if index > self.match:
            self.match = index
            if self.next <= index:
                self.next = index + 1
            return True
        if self.next <= index:
            self.next = index + 1
        return False

    def become_probe(self) -> None:
        """Fall back to one-at-a-time probing from the last known match (or the snapshot sent)."""
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        """Start streaming from just after the match."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        """An InstallSnapshot up to `snapshot_index` was sent; wait for its reply."""
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_elapsed = 0
        self.probe_sent = False
        self.inflights.reset()

    def sent_entries(self, last_index: int) -> None:
        """A batch ending at `last_index` was sent: advance `next` (REPLICATE) or pause (PROBE)."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        else:
            self.probe_sent = True

    def is_paused(self) -> bool:
        """Returns: whether the leader must not send this peer another batch now."""
        state = self.state
        if state is ProgressState.REPLICATE:
            return self.inflights.full()
        if state is ProgressState.PROBE:
            return self.probe_sent
        return True

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, {self.state.value}, "
                f"inflight={len(self.inflights)}, paused={self.is_paused()})")
