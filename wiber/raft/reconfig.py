"""`_Reconfig`, the membership role of `Raft` (Ongaro's thesis, chapter 4): the membership a node
follows, the single-server changes a leader makes, learners promoted once caught up, a leader that
removed itself handing over, and the rule that keeps a node whose disk was emptied from voting.

* A node follows the newest membership in its log, committed or not (thesis 4.1); a CONFIG entry
  removed by a conflicting leader takes its membership with it (`_conf_after_append`).
* A leader makes one change at a time, and only after it committed an entry of its own term (the
  2015 fix: a change proposed before could be lost while a change of an earlier term commits).
* Learners receive the log but neither vote nor count toward a commit; the leader promotes one
  once its match index is within one batch of the leader's log (thesis 4.2.1).
* Only voters campaign. Vote requests are judged as always, whatever the candidate's place in this
  node's membership (thesis 4.2.3: it may know a newer one); a removed node that does not know it
  cannot disturb a cluster with a live leader: PreVote and the lease keep its terms out.
* A leader that removed itself keeps leading until the change commits (it no longer counts itself),
  then hands leadership to the most up-to-date voter with TimeoutNow and steps down (thesis 4.2.2).
* A node that started with an empty log and no `join` cannot tell a new cluster from one whose
  history its wiped disk lost. It grants no vote before it has listened for an election timeout
  (a live leader's heartbeats show the history within it), none to a candidate whose log is not
  empty, and once it saw history none until its log holds an entry of its leader's term (votes of
  a term it may have cast before the wipe are then moot: every candidate of that term is behind).
"""

from __future__ import annotations

from wiber.errors import InvariantError
from wiber.raft.membership import ChangeBlocked, ChangeKind, ConfChange, Membership, decode_membership

__all__: list[str] = []  # the mixin is private to `Raft`
from wiber.raft.messages import AppendEntries, Entry, EntryKind, RequestVote, TimeoutNow
from wiber.raft.progress import Progress
from wiber.raft.state import _LEADER, _SEND, _State


class _Reconfig(_State):
    """Mixin of `Raft`: membership from the log, single-server changes, learners, leaving."""

    # -- the membership followed ----------------------------------------------------------------

    def _init_membership(self, base: Membership, base_index: int) -> None:
        """Start from `base` (as of `base_index`), then take every CONFIG entry the log holds after it."""
        self._conf_base = (base_index, base)
        self._conf_log = []
        log = self._log
        lo, last = base_index + 1, log.last_index()
        while lo <= last:
            chunk = log.entries(lo, last + 1, 1 << 20)
            self._conf_log.extend((e.index, e.term, decode_membership(e.data)) for e in chunk
                                  if e.kind is EntryKind.CONFIG)
            lo = chunk[-1].index + 1
        self._set_membership(self._conf_log[-1][2] if self._conf_log else base)

    def add_known(self, node_id: str) -> None:
        """Take messages from `node_id` too: a node the application found in its config file after the
        start (a member added while this node could not hear of it, now leading)."""
        self._extra_known.add(node_id)
        self._known = self._known | {node_id}

    def membership_at(self, index: int) -> Membership:
        """Returns: the membership in force at log index `index` (what a snapshot there must carry)."""
        found = self._conf_base[1]
        for at, _, membership in self._conf_log:
            if at > index:
                break
            found = membership
        return found

    def _conf_index(self) -> int:
        """Returns: the index of the newest CONFIG entry in the log (the base's when none)."""
        return self._conf_log[-1][0] if self._conf_log else self._conf_base[0]

    def _set_membership(self, membership: Membership) -> None:
        """Follow `membership`: who votes, who is replicated to, and (leader) whose progress is kept."""
        me = self._id
        self._membership = membership
        self._voter_set = membership.voters
        self._voters = tuple(sorted(membership.voters))
        self._quorum = len(self._voters) // 2 + 1
        self._peers = tuple(p for p in self._voters if p != me)
        self._replicas = tuple(sorted(membership.members - {me}))
        self._known = (frozenset(self._cfg.peers) | frozenset(self._cfg.others) | self._extra_known
                       | membership.members) - {me}
        if self._role is not _LEADER:
            return
        cap = self._cfg.max_inflight
        nxt = self._log.last_index() + 1
        for p in self._replicas:
            if p not in self._prs:
                self._prs[p] = Progress(0, nxt, cap)
                self._mark(p, _SEND)
        for p in [p for p in self._prs if p not in membership.members]:
            del self._prs[p]
            self._dirty.pop(p, None)
        if self._transferee is not None and self._transferee not in membership.voters:
            self._transferee = None

    def _conf_after_append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """A follower appended `entries` (maybe after truncating a conflicting tail): drop the CONFIG
        entries the log no longer holds, take the new ones, and follow the newest."""
        log = self._log
        confs = self._conf_log
        changed = False
        while confs and (confs[-1][0] > log.last_index() or
                         (confs[-1][0] > log.committed and log.term(confs[-1][0]) != confs[-1][1])):
            confs.pop()
            changed = True
        for e in entries:
            if e.kind is EntryKind.CONFIG and (not confs or e.index > confs[-1][0]):
                confs.append((e.index, e.term, decode_membership(e.data)))
                changed = True
        if changed:
            self._set_membership(confs[-1][2] if confs else self._conf_base[1])
            self._logger.info("%s follows %s (log index %d)", self._id, self._membership.describe(),
                              self._conf_index())

    def _conf_restore(self, index: int, membership: Membership | None) -> None:
        """A snapshot replaced the log up to `index`: its membership (or ours as of there) is the base."""
        base = membership if membership is not None else self.membership_at(index)
        self._conf_base = (index, base)
        self._conf_log = []
        self._set_membership(base)

    # -- changes (leader) -----------------------------------------------------------------------

    def _change_blocked(self) -> str | None:
        """Returns: why the leader cannot start a membership change now, or None."""
        if self._role is not _LEADER:
            return "not the leader"
        if self._conf_index() > self._log.committed:
            return (f"the membership change at index {self._conf_index()} is not committed yet; "
                    f"one change at a time")
        if not self._committed_in_term():
            return "the leader has not committed an entry of its own term yet (a change must wait for it)"
        if self._transferee is not None:
            return f"leadership transfer to {self._transferee} in progress"
        return None

    def _propose_change(self, change: ConfChange) -> int:
        """Append the CONFIG entry of `change` to the leader's log. Returns: its index.

        Raises:
            ChangeBlocked: the change cannot be made now (the message says why; retry shortly).
            MembershipError: the change does not fit the membership.
        """
        blocked = self._change_blocked()
        if blocked is not None:
            raise ChangeBlocked(f"cannot {change.kind.value} {change.node} now: {blocked}")
        membership = self._membership.apply(change)
        log = self._log
        index = log.last_index() + 1
        log.append([Entry(index, self._term, EntryKind.CONFIG, membership.encode())])
        self._conf_log.append((index, self._term, membership))
        self._set_membership(membership)
        self._mark_all(_SEND)
        self._logger.info("%s proposed %s %s at index %d: %s", self._id, change.kind.value, change.node,
                          index,
                          membership.describe())
        if self._maybe_commit():  # fewer voters may make a majority at once
            self._on_commit()
        return index

    def _maybe_promote(self, peer: str, pr: Progress) -> None:
        """Promote learner `peer` once it is within one batch of the leader's log and no change waits."""
        if (peer in self._membership.learners
                and pr.match + self._cfg.max_batch_entries >= self._log.last_index()
                and self._change_blocked() is None):
            self._propose_change(ConfChange(ChangeKind.PROMOTE, peer))

    def _leave_if_removed(self) -> None:
        """A leader whose own removal committed hands over to the most up-to-date voter and steps down."""
        if (self._id in self._voter_set or self._conf_index() > self._log.committed
                or self._role is not _LEADER):
            return
        if not self._peers:
            raise InvariantError(f"{self._id}: a membership without voters committed")
        target = max(self._peers, key=lambda p: (self._prs[p].match, p))
        last = self._log.last_index()
        if self._prs[target].match < last:
            self._transferee = target  # no more proposals; TimeoutNow once it caught up (`_on_success`)
            self._mark(target, _SEND)
            return
        self._send(TimeoutNow(self._term, self._id, target))
        self._logger.info("%s left the cluster at term %d: handed leadership to %s", self._id, self._term,
                          target)
        self._become_follower(self._term, None)

    # -- the node's own eligibility -------------------------------------------------------------

    def _refuses_votes(self, msg: RequestVote) -> bool:
        """Returns: whether this node must refuse `msg` whatever its log: it is a learner, or it joined
        and knows no membership yet (wiped and joined again, it must not help a removed node's stale
        configuration to a majority, which the simulation found), or it
        started empty and the cluster has (or may have) history its disk does not hold: a leader
        showed it, the candidate's log is not empty, or the node has not yet listened for one election
        timeout (a live leader's heartbeats would have shown its history by then).

        The candidate is not judged by membership: it may hold a newer one than this node (thesis
        4.2.3; refusing non-voters deadlocked the simulation), and a removed node that does not know it
        is kept out by PreVote and the lease instead (a node that heard a leader within the minimum
        election timeout ignores it, term and all)."""
        if not self._voter_set or self._id in self._membership.learners:
            return True  # (a voter that does not know it yet, or a removed one, judges by the log: refusing
            # them too deadlocked the simulation when the only others were a voter behind and a leaver)
        return self._fresh and (self._history_seen or msg.last_log_index > 0
                                or (not msg.pre_vote and self._listened < self._listen_ticks))

    def _note_history(self, msg: AppendEntries) -> None:
        """An empty node without `join` sees a leader's append: note whether the cluster has history,
        and stop being fresh once the log holds an entry of the leader's term."""
        log = self._log
        if log.last_index() and log.last_term() == self._term:
            self._fresh = False
            if self._history_seen:
                self._logger.info("%s caught up with leader %s at term %d: it votes again", self._id,
                                  msg.frm, self._term)
            return
        if not self._history_seen and (msg.prev_index > 0 or msg.commit > 0):
            self._history_seen = True
            self._logger.warning(
                "%s started with an empty log, but the cluster has history (leader %s at term %d, "
                "commit %d): it votes only once it has caught up. If its data was lost or replaced, it may "
                "have voted in a term it no longer remembers: take it out and let it join again (wiber "
                "cluster remove %s; start it with --join; wiber cluster add %s)", self._id, msg.frm, self._term, msg.commit,
                self._id, self._id)

