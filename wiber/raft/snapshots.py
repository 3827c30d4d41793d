"""`_Snapshots`, the InstallSnapshot role of `Raft` (thesis chapter 5): the leader sends the
storage's snapshot to a follower that needs compacted entries, and the follower installs it.

The leader's retry timer for a lost snapshot runs in `Raft._tick_leader`; while one is in flight
the leader holds its follower in `ProgressState.SNAPSHOT` (progress.py).
"""

from __future__ import annotations

from wiber.errors import InvariantError
from wiber.raft.messages import InstallSnapshot, InstallSnapshotReply, describe
from wiber.raft.progress import Progress
from wiber.raft.state import _State


class _Snapshots(_State):
    """Mixin of `Raft`: send, install and acknowledge snapshots."""

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
            self._conf_restore(meta.index, msg.membership)
            self._logger.info("%s restored snapshot %d/%d from %s at term %d", self._id, meta.term,
                              meta.index, msg.frm, self._term)
        self._send(InstallSnapshotReply(self._term, self._id, msg.frm, meta.index))

    def _handle_snapshot_reply(self, msg: InstallSnapshotReply) -> None:
        """Leaders: the follower holds our log up to the snapshot it installed (or its commit index)."""
        pr = self._prs.get(msg.frm)
        if pr is None:
            return  # no longer a member
        pr.recent_active = True
        if msg.match_index > self._log.last_index():
            self._logger.warning("%s dropped %s: beyond its last index", self._id, describe(msg))
            return
        self._on_success(msg.frm, pr, msg.match_index)

    def _send_snapshot(self, peer: str, pr: Progress) -> None:
        """Send the storage's snapshot to a follower that needs compacted entries."""
        meta, data = self._storage.snapshot()
        if meta.index == 0:
            raise InvariantError(f"{self._id}: the log is compacted but the storage has no snapshot")
        pr.become_snapshot(meta.index)
        membership = self.membership_at(meta.index)  # none known there: a node that joined after it
        self._send(InstallSnapshot(self._term, self._id, peer, meta, data,
                                   membership if membership.voters else None))
        self._logger.info("%s sent snapshot %d/%d to %s at term %d", self._id, meta.term, meta.index,
                          peer, self._term)
