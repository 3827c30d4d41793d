"""`_Replication`, the log replication role of `Raft`, on both sides: the follower's AppendEntries
handling, and the leader's progress tracking, batching, heartbeats and commitment.

Implements the Raft paper's section 5.3 (log replication, the conflict hint), section 5.4.2 and
Figure 8 (commit only entries of the current term by counting replicas), and the pipelined,
batched replication of thesis section 10.2.1 (flow control in progress.py).
"""

from __future__ import annotations

from wiber.errors import InvariantError
from wiber.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    TimeoutNow,
    describe,
)
from wiber.raft.progress import Progress
from wiber.raft.quorum import committed_index
from wiber.raft.state import _COMMIT, _GAP, _LEADER, _PROBE, _REPLICATE, _SEND, _SNAPSHOT, _State
from wiber.raft.storage import Compacted, LogRangeError


class _Replication(_State):
    """Mixin of `Raft`: AppendEntries and its replies, commitment, and the leader's outbox flush."""

    # -- follower side --------------------------------------------------------------------------

    def _step_follower(self, msg: Message) -> None:
        """Followers: accept the leader's appends, snapshots and TimeoutNow."""
        if isinstance(msg, AppendEntries):
            self._election_elapsed = 0
            self._leader_id = msg.frm
            self._handle_append(msg)
            if self._fresh:
                self._note_history(msg)
        elif isinstance(msg, InstallSnapshot):
            self._election_elapsed = 0
            self._leader_id = msg.frm
            self._handle_snapshot(msg)
        elif isinstance(msg, TimeoutNow) and msg.frm == self._leader_id and self._id in self._voter_set:
            self._logger.info("%s got TimeoutNow from %s at term %d: campaigning", self._id,
                              msg.frm, self._term)
            self._campaign(pre=False, force=True)

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
                self._conf_after_append(entries)
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

    # -- leader side: acknowledgements ----------------------------------------------------------

    def _step_leader(self, msg: Message) -> None:
        """Leaders: process acknowledgements."""
        if isinstance(msg, AppendEntriesReply):
            self._handle_append_reply(msg)
        elif isinstance(msg, InstallSnapshotReply):
            self._handle_snapshot_reply(msg)
        elif isinstance(msg, (AppendEntries, InstallSnapshot)):
            self._logger.error("%s dropped %s: two leaders at term %d", self._id, describe(msg), self._term)

    def _handle_append_reply(self, msg: AppendEntriesReply) -> None:
        """Leaders: advance or back up a follower's progress; count a heartbeat round's echo."""
        frm = msg.frm
        pr = self._prs.get(frm)
        if pr is None:
            return  # no longer a member
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
        if frm not in self._voter_set:
            self._maybe_promote(frm, pr)
        if self._id not in self._voter_set:
            self._leave_if_removed()

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

    # A mutation test (tests/sim/mutations.py) switches this rule off: keep it small.
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

    def _on_commit(self) -> None:
        """The leader's commit index moved: tell followers; release reads waiting for a commit."""
        self._mark_all(_COMMIT)
        if self._id not in self._voter_set:
            self._leave_if_removed()
            if self._role is not _LEADER:
                return
        if self._pending_reads and self._committed_in_term():
            pending = self._pending_reads
            self._pending_reads = []
            for ctx in pending:
                self._start_read(ctx)

    # -- leader side: output --------------------------------------------------------------------

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
        for p in self._replicas:
            self._send(self._empty_append(p, self._prs[p], self._round))


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
