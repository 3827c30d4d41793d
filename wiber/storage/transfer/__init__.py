"""Streaming a snapshot's files from a leader to a follower: pull-based, resumable, bounded memory.

A Raft snapshot (checkpoint) is a small metadata blob plus a set of immutable files in a directory
(sealed segment files, hard-linked at checkpoint time, and a copy of the index database). A
follower that needs it gets those files streamed, chunk by chunk: no frame and no buffer ever holds
a whole snapshot, and the only size limit is the disk. This module is the protocol, the two ends
of it and the final install of the files; it does no network I/O (the node moves the frames it
returns and hands it the frames it receives) and does all file I/O through a `FileSystem`, so
the crash-consistent in-memory file system of the test suite can check its fsyncs.

Theory of operation
-------------------
The leader describes the snapshot with a `Manifest`: the snapshot's last index and term, the opaque
``meta`` blob, and every file's name, size and CRC-32. It builds a `Sender` for one follower and one
transfer id (a random u64) and sends `Sender.manifest_frame`. The follower's `Receiver` answers the
MANIFEST with REQUEST frames, each for at most `CHUNK_BYTES` of one file at one offset; the Sender
answers each REQUEST with one DATA frame read with ``pread`` from the source file. The transfer is
**pulled**: the Receiver decides what to fetch and keeps at most ``window`` requests unsettled
(asked for, or arrived ahead of a gap), so a fast leader cannot flood a slow follower and the
follower's memory is bounded by ``window * CHUNK_BYTES``. The Sender keeps no per-transfer progress
at all, only a few open file descriptors: a lost frame, a restarted follower or a new leader never
needs the two ends to agree on anything but the manifest.

The Receiver writes each file of the manifest under its own name in a staging directory. Bytes are
written in order: a DATA frame at the end of the file's contiguous prefix is written (``pwrite`` at
its offset) at once and folded into the file's running CRC; one that arrives ahead of a gap (a
frame was lost and re-requested) is held until the gap fills. Hence a staged file is always its
contiguous received prefix, and its length says how far it got. When a file's last byte is in, its
CRC is compared with the manifest's: a match makes the file durable (``fsync``) and closes it; a
mismatch truncates it and fetches it again from 0 (after `MAX_CRC_FAILURES` mismatches of one file
the transfer fails with an ABORT: the leader's copy is bad). When every file matches, the staging
directory and its parent are fsynced, `Receiver.complete` becomes true and the Receiver sends DONE.
The node then calls `install_staged` to make the staged files those of the target directory.

Lost frames and silence: the Receiver never times out by itself. The node calls `Receiver.resend`
when nothing arrived for a while; it sends again every outstanding REQUEST (a DATA frame that then
arrives twice is stale the second time: dropped and counted, never written).

Resuming: `Receiver.on_manifest` looks at what the staging directory already holds. A file the
manifest names that is fully present with the manifest's size and CRC is kept; a shorter one is
kept as a prefix (its CRC is computed by reading it back) and fetched from its current length on,
its CRC checked at the end as always (a mismatch, e.g. a prefix torn by a power loss, refetches it
from 0); a longer one is emptied; anything the manifest does not name is removed. So a follower
restarted mid-transfer, given the MANIFEST again, fetches only what it lacks. Reading back what is
staged costs O(bytes staged) once per Receiver: still far cheaper than fetching them again. (Staged
files are fsynced only when complete: after a process crash everything written is resumed; after
a power loss, whatever happened to reach the disk, and the CRCs catch a torn prefix.) A
MANIFEST with another transfer id, index or term (a new leader, a newer snapshot) replaces the
current transfer in the same way, and a file with the same name, size and CRC in both manifests is
kept as it stands, without reading it back (same content by the CRC, as far as CRC-32 tells).
Which MANIFEST to follow (the current leader's) is the node's decision, not this module's.

Installing: `install_staged` makes the staged files the files of ``target_dir`` (T) with a
journal, so that only whole files change place, by hard link and same-directory ``replace``: no
directory is renamed and no file moves between directories in one step, so the argument holds
under the strictest reading of POSIX (the one `tests/crashfs.py` models: each directory's names are
durable only at its own ``fsync_dir``, independently of every other directory's). With
``J = T + JOURNAL_SUFFIX`` in T's parent:

1. Create T if missing (fsync its parent). Write the journal ``[staging dir, new file names]`` to
   ``J.tmp``, fsync it, replace it to J, fsync T's parent. **Commit point**: J is durable, whole.
2. For each new name x still in staging: link ``staging/x`` to ``T/L`` (L, `_link_name`, a name no
   new file has), replace ``T/L`` to ``T/x`` (atomic within T: x is the old file or the new one).
3. Remove every name in T that the journal does not list (the old files, a leftover L); fsync T:
   every new name is durable in T, and no old one is left.
4. Remove the staging directory (its names are now second links of T's files); fsync its parent.
5. Unlink J; fsync T's parent.

`recover_install` (call it at start, before reading T) does nothing without J (it removes a
leftover ``J.tmp``: the switch never committed, T is the complete old set, staging is intact), and
with J does steps 2-5 again: each is idempotent (a staged file already linked into place is linked
again onto itself, which renaming leaves as it is; a file no longer in staging was linked into T
and made durable there before staging lost it, since staging is touched only after step 3's
fsync), so a crash during recovery is recovered by recovering again.

Invariants: (a) Before J is durable, T holds exactly its old files, untouched, and staging its
complete new ones. (b) Once J is durable, every new file is reachable, by its staging name or its
T name, until it has its T name durably. (c) T is read only after `recover_install`: an
interrupted switch shows T as a mix of old and new files only until recovery completes it, after
which T holds exactly the journal's files with their staged (fsynced) contents. So a crash at any
point leaves the complete old set or the complete new set, never a mix, once recovered.
(d) The Receiver writes only bytes it asked for, at the offset it asked for, within the
manifest's size, in files the manifest names (plain names: no ``/``, no ``..``, no NUL): a forged
or stale frame is dropped and counted. (e) Memory: the Receiver holds at most ``window`` chunks;
the Sender at most ``max_open`` file descriptors and one chunk at a time; decoding a frame
allocates within limits set by its kind.

Frames
------
Every frame is ``MARKER`` (``b"\\xc1F"``: 0xc1 is a byte msgpack never uses, so no Raft message
starts with it; ``chunks`` uses ``b"\\xc1C"`` and ``timesync`` ``b"\\xc1T"``), then one msgpack array
whose first item is the kind and the next two the sender's node id and the transfer id (u64):

* MANIFEST (1): ``[1, sender, transfer_id, manifest]``, manifest as in `Manifest.encode`. The one
  frame that may exceed a chunk: a few hundred bytes a file plus ``meta``, so a few KiB for a usual
  snapshot, about 44 MB at the limits (`MAX_FILES` names of 255 bytes, `MAX_META_BYTES`).
* REQUEST (2): ``[2, sender, transfer_id, name, offset, length]``, 1 <= length <= `CHUNK_BYTES`.
* DATA (3): ``[3, sender, transfer_id, name, offset, bytes]``, at most `CHUNK_BYTES` bytes.
* DONE (4): ``[4, sender, transfer_id]``: the Receiver has every file, durable.
* ABORT (5): ``[5, sender, transfer_id, reason]``: the transfer cannot go on (a source file
  unreadable at the leader, a file failing its CRC again and again at the follower).

`decode_frame` validates everything (types, ranges, names, sizes, no trailing bytes) and raises
`TransferError` on anything malformed; a frame's length and every declared length inside it are
bounded by its kind before anything is allocated for it.
"""

from __future__ import annotations

from wiber.storage.transfer.frames import (
    ABORT,
    CHUNK_BYTES,
    DATA,
    DONE,
    JOURNAL_SUFFIX,
    MANIFEST,
    MARKER,
    MAX_CRC_FAILURES,
    MAX_FILES,
    MAX_META_BYTES,
    MAX_NAME_BYTES,
    MAX_WINDOW,
    REQUEST,
    Abort,
    Data,
    Done,
    FileInfo,
    Frame,
    Manifest,
    ManifestFrame,
    Request,
    TransferError,
    check_name,
    decode_frame,
    is_transfer_frame,
)
from wiber.storage.transfer.install import install_staged, recover_install
from wiber.storage.transfer.receiver import Receiver
from wiber.storage.transfer.sender import Sender

__all__ = [
    "ABORT",
    "CHUNK_BYTES",
    "DATA",
    "DONE",
    "MANIFEST",
    "MARKER",
    "MAX_CRC_FAILURES",
    "MAX_FILES",
    "MAX_META_BYTES",
    "MAX_NAME_BYTES",
    "MAX_WINDOW",
    "JOURNAL_SUFFIX",
    "REQUEST",
    "Abort",
    "Data",
    "Done",
    "FileInfo",
    "Frame",
    "Manifest",
    "ManifestFrame",
    "Receiver",
    "Request",
    "Sender",
    "TransferError",
    "check_name",
    "decode_frame",
    "install_staged",
    "is_transfer_frame",
    "recover_install",
]
