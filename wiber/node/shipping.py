"""Snapshots streamed between nodes: a leader's checkpoint files to a follower that needs them.

Theory of operation
-------------------
The Raft core decides *when* a follower needs a snapshot (it needs entries the leader compacted)
and says so with an `InstallSnapshot` carrying the checkpoint's small descriptor. The node does
not send that message. Instead (leader side) it streams the files of a checkpoint laid out for
followers (`Checkpoints.export`: hard links to the segments, a copy of the index) with
`wiber.storage.transfer`: a MANIFEST, then DATA frames the follower pulls with REQUESTs, 1 MiB at
a time, a few in flight. No frame or buffer holds a whole snapshot; the only limit is the disk.
When no export covers what the Raft log no longer holds, the next checkpoint makes one, and the
transfer starts once it is taken in.

The follower (`Shipping.receiver`) stages the files in ``topics.staging`` and, when every file is
there with its size and CRC and durable, steps into its core the `InstallSnapshot` the leader's
core meant: the checkpoint's (index, term) from the manifest, the leader's term from its meta. The
core's usual checks apply (a stale term is refused); its `Ready` then makes the node switch the
staged files in atomically (`Checkpoints.install_staged`) and only then acknowledge.

Resuming: the core repeats its `InstallSnapshot` every two election timeouts while the follower
has not caught up; the leader answers a repeat by sending the MANIFEST again only when the
follower has asked for nothing for `STALL_S` (a disconnect, a lost frame), and the receiver then
resumes from what it has staged. A new leader, or a newer export, sends another manifest: the
receiver keeps every staged file that has the same name, size and CRC in it (sealed segments do)
and fetches the rest. The follower takes a MANIFEST only from the leader it currently follows.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from typing import Final

import msgpack

from wiber.node.checkpoints import Checkpoints, descriptor
from wiber.raft.membership import Membership, decode_membership
from wiber.raft.messages import InstallSnapshot, SnapshotMeta
from wiber.storage.fs import OS, FileSystem
from wiber.storage.transfer import (
    Abort,
    Data,
    Done,
    FileInfo,
    Manifest,
    ManifestFrame,
    Receiver,
    Request,
    Sender,
    TransferError,
    decode_frame,
    install_staged,
)

__all__ = ["STAGING_DIR", "Shipping"]

log = logging.getLogger(__name__)

STAGING_DIR: Final = "topics.staging"
HOLD_S: Final = 10.0
"""A transfer that pulled within this long holds the leader's log compaction (`Shipping.streaming`)."""
STALL_S: Final = 1.0
"""A transfer with no frame for this long is nudged: the receiver asks again, the leader resends its manifest."""

ABANDON_S: Final = 30.0
"""Staged files of a transfer that heard nothing for this long (a leader gone, a forged manifest) are
removed: they would otherwise hold disk space until the next snapshot."""
STAGING_RESERVE_BYTES: Final = 64 << 20
"""A manifest is refused when its files would leave less than this free on the data directory's disk."""

Outgoing = list[tuple[str, bytes]]
"""Frames to send: (peer id, frame)."""


class Shipping:
    """Both ends of snapshot transfers for one node (see the module docstring)."""

    def __init__(self, node_id: str, peers: list[str], checkpoints: Checkpoints,
                 monotonic: Callable[[], float], fs: FileSystem = OS,
                 free_bytes: Callable[[str], int | None] | None = None) -> None:
        self._id = node_id
        self._peers = set(peers)
        self._checkpoints = checkpoints
        self._now = monotonic
        self._fs = fs
        self._free_bytes = free_bytes or _free_bytes
        self._ids = random.Random(os.urandom(8))
        self._senders: dict[str, Sender] = {}
        self._asked: dict[str, float] = {}
        """Per follower, when it last asked for data (or was sent a manifest)."""
        self._waiting: set[str] = set()
        """Followers that need a snapshot while no export covers it yet."""
        self.staging_dir = os.path.join(checkpoints.data_dir, STAGING_DIR)
        self.receiver = Receiver(fs, node_id, self.staging_dir)
        self._heard = 0.0
        """When the follower's transfer last heard from its leader, or last asked again."""
        self._leader_heard = monotonic()
        """When the follower's transfer last heard from its leader (or the node started)."""
        self._manifest_term = 0
        self._manifest_membership: Membership | None = None
        """The membership the last accepted manifest carried (None: a leader that knew none there)."""
        self._checked: Manifest | None = None
        """The manifest of the complete staged snapshot that passed `Checkpoints.check_staged`."""
        self.handed_over = False
        """The complete staged snapshot was stepped into the core: nothing may discard or replace it
        until the node installs it (its Ready) or finds, at the end of that turn, that it was not needed."""
        self.sent_bytes = 0
        self.received_bytes = 0
        self.refused = 0

    def add_peer(self, peer: str) -> None:
        """Take transfer frames from `peer` too (a member added while this node runs)."""
        self._peers.add(peer)

    # ------------------------------------------------------------------------ leader side

    def snapshot_needed(self, peer: str, last_snapshot_index: int, leader_term: int,
                        membership_at: Callable[[int], Membership]) -> Outgoing:
        """The core wants `peer` to get a snapshot. Returns: frames to send (a manifest, or none yet).
        The manifest carries the leader's term and the membership as of the snapshot's index."""
        export = self._checkpoints.export
        if export is None or export.record.applied_index < last_snapshot_index or not export.exported:
            self._waiting.add(peer)
            self._checkpoints.want_export()
            return []
        sender = self._senders.get(peer)
        index = export.record.applied_index
        if sender is None or sender.manifest.index != index:
            if sender is not None:
                sender.close()
            assert export.export_dir is not None
            membership = membership_at(index)  # (none known there when this node joined after it)
            meta = msgpack.packb([leader_term, membership.encode()] if membership.voters else leader_term,
                                 use_bin_type=True)
            manifest = Manifest(index, export.record.applied_term, meta,
                                tuple(FileInfo(name, size, crc) for name, size, crc in export.exported))
            sender = Sender(self._fs, self._id, self._ids.getrandbits(64), manifest, export.export_dir)
            self._senders[peer] = sender
            log.info("node %s streams the checkpoint at index %d (%d files, %d bytes) to %s", self._id, index,
                     len(manifest.files), manifest.total_bytes, peer)
        elif self._now() - self._asked.get(peer, 0.0) < STALL_S:
            return []  # under way: the follower is pulling
        self._asked[peer] = self._now()
        return [(peer, sender.manifest_frame())]

    def streaming(self) -> bool:
        """Returns: whether a follower pulled from this leader lately (within `HOLD_S`): the Raft log
        is then not compacted, so the snapshot in flight stays good and the entries after it stay on
        disk (etcd keeps a tail of entries for the same reason); a follower gone quiet for longer
        no longer holds it (a lost DONE, a dead follower)."""
        now = self._now()
        return any(now - self._asked.get(peer, 0.0) < HOLD_S for peer in self._senders)

    def export_ready(self, last_snapshot_index: int, leader_term: int,
                     membership_at: Callable[[int], Membership]) -> Outgoing:
        """A checkpoint laid out for followers was taken in: start the transfers that waited for it."""
        waiting, self._waiting = self._waiting, set()
        out: Outgoing = []
        for peer in sorted(waiting):
            out.extend(self.snapshot_needed(peer, last_snapshot_index, leader_term, membership_at))
        return out

    def stop_sending(self) -> None:
        """No longer leader: every transfer from here stops (a new leader sends its own)."""
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
        self._waiting.clear()
        self._asked.clear()
        self._checkpoints.stop_exporting()
        self._checkpoints.drop_export()

    # ------------------------------------------------------------------------ both sides

    def on_frame(self, frame: bytes, leader: str | None, leader_term: int) -> Outgoing:
        """Take one transfer frame from a peer. Returns: frames to send.

        A frame that does not decode, or comes from a node that is no peer, or (to a follower) not
        from the leader it follows, is dropped and counted.
        """
        try:
            decoded = decode_frame(frame)
        except TransferError as exc:
            self.refused += 1
            log.warning("node %s dropped a snapshot transfer frame: %s", self._id, exc)
            return []
        sender_id = decoded.sender
        if sender_id not in self._peers:
            self.refused += 1
            return []
        if isinstance(decoded, Request):
            sender = self._senders.get(sender_id)
            if sender is None or sender.transfer_id != decoded.transfer_id:
                self.refused += 1
                return []
            self._asked[sender_id] = self._now()
            reply = sender.on_request(decoded)
            if reply is None:
                return []
            self.sent_bytes += decoded.length
            return [(sender_id, reply)]
        if isinstance(decoded, Done):
            sender = self._senders.get(sender_id)
            if sender is not None and sender.transfer_id == decoded.transfer_id:
                del self._senders[sender_id]
                sender.close()
                log.info("node %s: %s has the checkpoint at index %d", self._id, sender_id, sender.manifest.index)
                if not self._senders and not self._waiting:
                    self._checkpoints.drop_export()  # its hard links would keep retained-away segments on disk
            return []
        if isinstance(decoded, Abort) and sender_id in self._senders \
                and self._senders[sender_id].transfer_id == decoded.transfer_id:
            log.warning("node %s: %s stopped the snapshot transfer: %s", self._id, sender_id, decoded.reason)
            self._senders.pop(sender_id).close()
            return []
        # ManifestFrame, Data, Abort: to the follower, from the leader it follows only
        if self.handed_over:  # the staged snapshot is the core's now: nothing may touch it this turn
            self.refused += 1
            return []
        if sender_id != leader:
            self.refused += 1
            return []
        if isinstance(decoded, ManifestFrame):
            term, membership = _manifest_meta(decoded.manifest)
            if term is None or term != leader_term:  # the leader of the current term only
                self.refused += 1
                return []
            if not self._room_for(decoded.manifest):
                self.refused += 1
                return [(sender_id, Abort(self._id, decoded.transfer_id, "no room on the follower's disk").encode())]
            self._manifest_term, self._manifest_membership = term, membership
        self._heard = self._leader_heard = self._now()
        if isinstance(decoded, Data):
            self.received_bytes += len(decoded.data)
        return [(sender_id, out) for out in self.receiver.on_frame(decoded)]

    # ------------------------------------------------------------------------ follower side

    def completed(self) -> InstallSnapshot | None:
        """Returns: once the staged snapshot is complete and checked whole (`Checkpoints.check_staged`),
        the `InstallSnapshot` to step into the core (from the leader, at the term its manifest
        carried), else None. Staged files that do not hold the checkpoint are discarded: nothing of
        them ever replaces this node's state."""
        receiver = self.receiver
        if self.handed_over or not receiver.complete or receiver.manifest is None or receiver.peer is None:
            return None
        manifest = receiver.manifest
        meta = SnapshotMeta(manifest.index, manifest.term)
        if self._checked is not manifest:  # a new manifest is a new Manifest object (`Receiver.on_manifest`)
            problem = self._checkpoints.check_staged(self.staging_dir, meta)
            if problem is not None:
                self.refused += 1
                log.warning("node %s discarded the snapshot at index %d staged from %s: %s", self._id,
                            manifest.index, receiver.peer, problem)
                self.discard_staged()
                return None
            self._checked = manifest
        return InstallSnapshot(self._manifest_term, receiver.peer, self._id, meta, descriptor(manifest.index),
                               self._manifest_membership)

    def install(self, target_dir: str) -> None:
        """Switch the complete staged files in as `target_dir`'s (atomically) and start afresh."""
        install_staged(self._fs, self.staging_dir, target_dir)
        self.receiver.close()
        self.receiver = Receiver(self._fs, self._id, self.staging_dir)
        self.handed_over = False
        self._checked = None

    def discard_staged(self) -> None:
        """The staged snapshot is no longer needed (the log caught up another way): start afresh."""
        self.receiver.close()
        _remove_dir(self._fs, self.staging_dir)
        self.receiver = Receiver(self._fs, self._id, self.staging_dir)
        self.handed_over = False
        self._checked = None

    def _room_for(self, manifest: Manifest) -> bool:
        """Returns: whether the disk can take `manifest`'s files beside what is staged, with
        `STAGING_RESERVE_BYTES` to spare (staged bytes are capped by the disk, never more)."""
        free = self._free_bytes(self._checkpoints.data_dir)
        if free is None:
            return True
        needed = manifest.total_bytes - self.receiver.bytes_staged
        if needed + STAGING_RESERVE_BYTES <= free:
            return True
        log.warning("node %s refused a snapshot of %d bytes from its leader: %d bytes free on its disk", self._id,
                    manifest.total_bytes, free)
        return False

    def nudge(self) -> Outgoing:
        """Called every turn or so: a transfer silent for `STALL_S` asks again for what it lacks; staged
        files that heard nothing for `ABANDON_S` are removed (never those handed to the core)."""
        receiver = self.receiver
        silent = self._now() - self._leader_heard
        if not self.handed_over and silent >= ABANDON_S and self._fs.exists(self.staging_dir):
            log.warning("node %s removed a snapshot transfer staged from %s: nothing heard for %.0f s", self._id,
                        receiver.peer, silent)
            self.discard_staged()
            self._leader_heard = self._now()
            return []
        if not receiver.active or receiver.peer is None or self._now() - self._heard < STALL_S:
            return []
        self._heard = self._now()
        return [(receiver.peer, frame) for frame in receiver.resend()]

    def close(self) -> None:
        """Close every file the transfers hold open."""
        self.stop_sending()
        self.receiver.close()


def _free_bytes(path: str) -> int | None:
    """Returns: the bytes free for this user on `path`'s file system, or None when it cannot tell."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _manifest_meta(manifest: Manifest) -> tuple[int | None, Membership | None]:
    """Returns: the leader's term a manifest's meta carries and the membership as of the snapshot, each
    None when it carries none that is valid (peer input; a bare term from a node before membership)."""
    try:
        meta = msgpack.unpackb(manifest.meta)
    except Exception:  # msgpack raises many types; each means a bad meta
        return None, None
    membership = None
    if type(meta) is list and len(meta) == 2 and type(meta[1]) is bytes:
        meta, data = meta
        try:
            membership = decode_membership(data)
        except ValueError:
            return None, None
    return (meta if type(meta) is int and 0 <= meta < 2**63 else None), membership


def _remove_dir(fs: FileSystem, path: str) -> None:
    """Remove a flat directory of this node's own making (the staging directory), if it is there."""
    if not fs.exists(path):
        return
    for name in fs.listdir(path):
        fs.unlink(os.path.join(path, name))
    fs.rmdir(path)
