"""What a node takes from its peers' frames: Raft messages stepped into the core, snapshot transfer
frames staged on disk, clock-sync probes answered and samples taken.

No frame from the network may end the loop: one whose handling raises is dropped, counted
(STATUS `transport.peer_frames_failed`) and logged with its traceback. With security, each frame is
bound to the node that authenticated its connection: one claiming another sender is forged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from wiber.errors import InvariantError, StorageError
from wiber.node import timesync
from wiber.node.auth import claimed_sender
from wiber.raft import InstallSnapshot, MalformedMessage, Role, decode_message
from wiber.storage import StorageFailure
from wiber.storage.transfer import is_transfer_frame

if TYPE_CHECKING:
    from wiber.node.loop import Node

log = logging.getLogger("wiber.node.loop")

#: Peer frames whose failure is logged with its traceback; after these, every 1,000th is.
LOGGED_FRAME_FAILURES = 20


class PeerIntake:
    """Hands one node's incoming peer frames to its Raft core, its snapshot shipping and its clock."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def on_frames(self, frames: list[bytes], user: str | None = None) -> None:
        """Step each Raft message of one peer frame; anything malformed from the network is dropped.

        With security `user` is the node that authenticated the connection: a frame claiming
        another sender is dropped and counted (so a node's key cannot speak for another node)."""
        node = self.node
        if self._stopped():
            return  # a node that cannot persist must not vote or acknowledge: it stays out of Raft
        stats = node.transport.stats
        for frame in frames:
            try:
                self._on_frame(frame, user)
            except (StorageError, InvariantError):
                raise  # the node's own disk or a broken invariant: stopping is the safe answer
            except Exception:  # noqa: BLE001 - no frame from the network may end the loop
                # A bug that input reached: the frame is dropped, counted, and its traceback logged
                # (the fuzzer and the suite fail on it); the node goes on serving.
                failed = stats.peer_frames_failed = stats.peer_frames_failed + 1
                if failed <= LOGGED_FRAME_FAILURES or failed % 1000 == 0:  # a repeated frame: not every time
                    log.error("node %s dropped a peer frame (%d bytes) whose handling failed (%d so far)",
                              node.id,
                              len(frame), failed, exc_info=True)
            if self._stopped():
                return  # a staged snapshot chunk failed on our disk: nothing more from Raft

    def _stopped(self) -> bool:
        """Returns: whether the node's storage failed (it then stays out of Raft)."""
        return self.node.storage_failure is not None

    def _on_frame(self, frame: bytes, user: str | None) -> None:
        """Handle one frame of a peer message: clock sync, snapshot transfer or a Raft message."""
        node = self.node
        if timesync.is_timesync(frame):
            self._on_timesync(frame, user)
            return
        if is_transfer_frame(frame):
            if user is not None:
                claimed = claimed_sender(frame)
                if claimed != user:
                    self._forged(user, str(claimed), "snapshot transfer frame")
                    return
            try:
                node._send_frames(node.shipping.on_frame(frame, node.raft.leader_id, node.raft.term))
            except OSError as exc:  # our disk refused a staged chunk: ours to fix, never the peer's
                node._on_storage_failure(StorageFailure(f"staging a snapshot from the leader failed: {exc}"))
                return
            node._step_completed_snapshot()
            return
        try:
            msg = decode_message(frame, node._peer_frame_limit)
        except MalformedMessage as exc:
            log.warning("node %s dropped a malformed peer message: %s", node.id, exc)
            return
        if user is not None and msg.frm != user:
            self._forged(user, msg.frm, type(msg).__name__)
            return
        if msg.to == node.id and msg.frm not in node._peer_contact:
            node.member_peers.learn(msg.frm)  # a member added while this node could not hear of it?
        if msg.to != node.id or msg.frm not in node._peer_contact:
            log.debug("node %s dropped a message %s -> %s", node.id, msg.frm, msg.to)
            return
        if isinstance(msg, InstallSnapshot):  # snapshots arrive as files (shipping), never as one message
            log.warning("node %s dropped an InstallSnapshot message from %s: snapshots are streamed as files",
                        node.id, msg.frm)
            return
        node._peer_contact[msg.frm] = node.clock.monotonic()
        node.raft.step(msg)

    def _forged(self, user: str, claimed: str, what: str) -> None:
        security = self.node.security
        assert security is not None
        security.forged(self.node.id, user, claimed, what)

    def _on_timesync(self, frame: bytes, user: str | None = None) -> None:
        """Answer a follower's clock probe, or take a sample from the leader's answer."""
        node = self.node
        received = node.clock.wall()
        try:
            sender, t1, t2, t3 = timesync.parse(frame)
        except ValueError as exc:
            log.debug("node %s dropped a bad clock-sync frame: %s", node.id, exc)
            return
        if user is not None and sender != user:
            self._forged(user, sender, "clock-sync frame")
            return
        if sender not in node._peer_contact:
            return
        if t2 is None or t3 is None:
            now = node.synced.now()
            node._outbox.setdefault(sender, []).append(timesync.reply(node.id, t1, now, now))
        elif sender == node.raft.leader_id and node.raft.role is not Role.LEADER:
            node.synced.estimator.add(t1, t2, t3, received)
