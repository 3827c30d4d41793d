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

import os
import struct
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Final, Union

import msgpack

from wiber.storage.fs import FileSystem

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

MARKER: Final = b"\xc1F"
"""First two bytes of every transfer frame (see the module docstring)."""

CHUNK_BYTES: Final = 1 << 20
"""Most bytes one REQUEST asks for and one DATA frame carries."""

MAX_META_BYTES: Final = 16 << 20
"""Largest `Manifest.meta`."""

MAX_FILES: Final = 100_000
"""Most files in one manifest."""

MAX_NAME_BYTES: Final = 255
"""Longest file name, in UTF-8 bytes (NAME_MAX of common file systems)."""

MAX_SENDER_BYTES: Final = 255
"""Longest node id in a frame, in UTF-8 bytes."""

MAX_REASON_BYTES: Final = 1024
"""Longest ABORT reason, in UTF-8 bytes."""

MAX_WINDOW: Final = 64
"""Largest `Receiver` window (chunks unsettled at once)."""

MAX_CRC_FAILURES: Final = 3
"""CRC mismatches of one file after which the Receiver gives the transfer up."""

MAX_U64: Final = (1 << 64) - 1
MAX_OFFSET: Final = (1 << 63) - 1
"""Largest file size or offset (what ``off_t`` holds)."""

JOURNAL_SUFFIX: Final = ".install"
"""``target_dir + JOURNAL_SUFFIX`` (in the target's parent) is the journal of an `install_staged`
under way: its existence is the commit point (``+ ".tmp"`` while it is written)."""

JOURNAL_VERSION: Final = 1

MANIFEST_VERSION: Final = 1
"""First item of an encoded manifest; a different one is refused."""

MANIFEST: Final = 1
REQUEST: Final = 2
DATA: Final = 3
DONE: Final = 4
ABORT: Final = 5

# Bytes one manifest file entry takes at most: fixarray(3), str8 header + name, u64 size, u32 crc.
_FILE_ENTRY_MAX: Final = 1 + 2 + MAX_NAME_BYTES + 9 + 5
_MANIFEST_MAX_BYTES: Final = 64 + (5 + MAX_META_BYTES) + 5 + MAX_FILES * _FILE_ENTRY_MAX
_HEADER_MAX: Final = 2 + 1 + 1 + (2 + MAX_SENDER_BYTES) + 9  # marker, array, kind, sender, id
# Longest frame of each kind, checked before anything is decoded.
_FRAME_MAX: Final = {
    MANIFEST: _HEADER_MAX + _MANIFEST_MAX_BYTES,
    REQUEST: _HEADER_MAX + (2 + MAX_NAME_BYTES) + 9 + 9,
    DATA: _HEADER_MAX + (2 + MAX_NAME_BYTES) + 9 + 5 + CHUNK_BYTES,
    DONE: _HEADER_MAX,
    ABORT: _HEADER_MAX + 3 + MAX_REASON_BYTES,
}
# Items of each kind's top-level array.
_FRAME_ITEMS: Final = {MANIFEST: 4, REQUEST: 6, DATA: 6, DONE: 3, ABORT: 4}
# Longest str / bin any item of a kind may hold (the unpacker refuses longer before allocating).
_MAX_STR: Final = max(MAX_NAME_BYTES, MAX_SENDER_BYTES, MAX_REASON_BYTES)
_FRAME_MAX_BIN: Final = {MANIFEST: MAX_META_BYTES, REQUEST: 0, DATA: CHUNK_BYTES, DONE: 0, ABORT: 0}


class TransferError(ValueError):
    """A manifest or frame is malformed or breaks a limit (input from the network), or a transfer
    was asked for something impossible (a staging dir that is an install name)."""


# ------------------------------------------------------------------------------------ validation


def _short(value: object) -> str:
    """Returns: `value`'s repr cut to a readable length, for error messages about untrusted input."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(what: str, value: object, hi: int) -> int:
    """Returns: `value`, checked to be an int (not a bool) in ``[0, hi]``."""
    if type(value) is not int or not 0 <= value <= hi:
        raise TransferError(f"{what} must be an int in [0, {hi}], got {_short(value)}")
    return value


def _utf8_len(what: str, value: object, lo: int, hi: int) -> int:
    """Returns: the UTF-8 length of the str `value`, checked to be in ``[lo, hi]``."""
    if type(value) is not str:
        raise TransferError(f"{what} must be a str, got {_short(value)}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise TransferError(f"{what} is not valid UTF-8: {_short(value)}") from None
    if not lo <= size <= hi:
        raise TransferError(f"{what} must be {lo} to {hi} UTF-8 bytes, got {size}")
    return size


def check_name(name: object) -> str:
    """Returns: `name`, checked to be a plain file name, safe to join to a directory.

    Plain: a non-empty str of at most `MAX_NAME_BYTES` UTF-8 bytes, not ``.`` or ``..``, without
    ``/`` or NUL. So ``os.path.join(directory, name)`` always names an entry of `directory`.

    Raises:
        TransferError: anything else.
    """
    _utf8_len("file name", name, 1, MAX_NAME_BYTES)
    assert isinstance(name, str)
    if name in (".", "..") or "/" in name or "\x00" in name:
        raise TransferError(f"file name must be a plain name, got {_short(name)}")
    return name


def _check_sender(sender: object) -> None:
    _utf8_len("sender id", sender, 1, MAX_SENDER_BYTES)


# -------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file of a snapshot: its plain name, size in bytes and CRC-32 (``zlib.crc32``).

    Raises:
        TransferError: a bad name, a size outside ``[0, 2**63)``, a CRC outside ``[0, 2**32)``, or
            an empty file whose CRC is not 0 (the CRC of no bytes).
    """

    name: str
    size: int
    crc32: int

    def __post_init__(self) -> None:
        check_name(self.name)
        _check_int("file size", self.size, MAX_OFFSET)
        _check_int("file crc32", self.crc32, 0xFFFFFFFF)
        if self.size == 0 and self.crc32 != 0:
            raise TransferError(f"empty file {self.name!r} must have crc32 0, got {self.crc32}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a snapshot is: its last index and term, an opaque metadata blob and its files.

    Immutable and validated at construction, whatever its source: every field is type-checked,
    ``meta`` is at most `MAX_META_BYTES`, there are at most `MAX_FILES` files, with unique names.

    Raises:
        TransferError: any of that is not so.
    """

    index: int
    term: int
    meta: bytes
    files: tuple[FileInfo, ...]
    _by_name: dict[str, FileInfo] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_int("snapshot index", self.index, MAX_OFFSET)
        _check_int("snapshot term", self.term, MAX_OFFSET)
        if type(self.meta) is not bytes:
            raise TransferError(f"meta must be bytes, got {type(self.meta).__name__}")
        if len(self.meta) > MAX_META_BYTES:
            raise TransferError(f"meta is {len(self.meta)} bytes, over {MAX_META_BYTES}")
        if type(self.files) is not tuple:
            raise TransferError(f"files must be a tuple, got {type(self.files).__name__}")
        if len(self.files) > MAX_FILES:
            raise TransferError(f"{len(self.files)} files, over {MAX_FILES}")
        by_name: dict[str, FileInfo] = {}
        for info in self.files:
            if type(info) is not FileInfo:
                raise TransferError(f"files must hold FileInfo, got {_short(info)}")
            if info.name in by_name:
                raise TransferError(f"file {info.name!r} is named twice")
            by_name[info.name] = info
        object.__setattr__(self, "_by_name", by_name)

    def file(self, name: str) -> FileInfo | None:
        """Returns: the file named `name`, or None if the manifest has none."""
        return self._by_name.get(name)

    @property
    def total_bytes(self) -> int:
        """Returns: the sum of the files' sizes."""
        return sum(f.size for f in self.files)

    def _wire(self) -> list[object]:
        return [MANIFEST_VERSION, self.index, self.term, self.meta,
                [[f.name, f.size, f.crc32] for f in self.files]]

    def encode(self) -> bytes:
        """Returns: the manifest as msgpack ``[version, index, term, meta, [[name, size, crc32], ...]]``."""
        packed: bytes = msgpack.packb(self._wire(), use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Returns: the manifest `data` encodes (as `encode` makes it).

        Raises:
            TransferError: `data` is not exactly one valid manifest.
        """
        if type(data) is not bytes or len(data) > _MANIFEST_MAX_BYTES:
            raise TransferError("manifest is not bytes, or too long")
        try:
            reader = _Reader(data, 0, MAX_NAME_BYTES, MAX_META_BYTES)
            manifest = _read_manifest(reader)
            reader.end()
            return manifest
        except TransferError:
            raise
        except Exception as exc:  # msgpack raises many types; every one of them means bad input
            raise TransferError(f"malformed manifest: {type(exc).__name__}: {exc}") from None


class _Reader:
    """Reads a msgpack value item by item with every declared length bounded before allocation.

    Arrays are read header by header (a declared count the remaining bytes cannot hold is refused
    at once); scalars are unpacked with containers and ext types refused and str / bin capped, so
    nothing in the input makes the unpacker allocate more than the input's length.
    """

    def __init__(self, data: bytes, start: int, max_str: int, max_bin: int) -> None:
        self._size = len(data) - start
        self._unpacker = msgpack.Unpacker(
            raw=False, max_buffer_size=max(self._size, 1), max_str_len=max_str,
            max_bin_len=max_bin, max_array_len=0, max_map_len=0, max_ext_len=0)
        self._unpacker.feed(memoryview(data)[start:])

    def array(self, what: str, lo: int, hi: int) -> int:
        """Returns: the item count of the array that comes next, checked to be in ``[lo, hi]``."""
        count: int = self._unpacker.read_array_header()
        if not lo <= count <= hi or count > self._size - self._unpacker.tell():
            raise TransferError(f"{what} has {count} items, expected {lo} to {hi}")
        return count

    def value(self) -> Any:
        """Returns: the scalar that comes next (a container or ext there is an error); the caller
        checks its type (the frame and manifest constructors do)."""
        return self._unpacker.unpack()

    def end(self) -> None:
        """Check that the input ends here."""
        trailing = self._size - self._unpacker.tell()
        if trailing:
            raise TransferError(f"{trailing} bytes after the end of the value")


def _read_manifest(reader: _Reader) -> Manifest:
    """Returns: the manifest `reader` is at (validated by the constructors)."""
    reader.array("manifest", 5, 5)
    version = reader.value()
    if type(version) is not int or version != MANIFEST_VERSION:
        raise TransferError(f"manifest version {_short(version)} is not {MANIFEST_VERSION}")
    index, term, meta = reader.value(), reader.value(), reader.value()
    count = reader.array("manifest files", 0, MAX_FILES)
    files = []
    for _ in range(count):
        reader.array("manifest file", 3, 3)
        name, size, crc = reader.value(), reader.value(), reader.value()
        files.append(FileInfo(name, size, crc))
    return Manifest(index, term, meta, tuple(files))


# ---------------------------------------------------------------------------------------- frames


def _pack(items: list[object]) -> bytes:
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return MARKER + packed


@dataclass(frozen=True, slots=True)
class ManifestFrame:
    """MANIFEST: the leader (`sender`) starts transfer `transfer_id` of `manifest`."""

    sender: str
    transfer_id: int
    manifest: Manifest

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_int("transfer id", self.transfer_id, MAX_U64)
        if type(self.manifest) is not Manifest:
            raise TransferError("manifest must be a Manifest")

    def encode(self) -> bytes:
        """Returns: the frame's bytes."""
        return _pack([MANIFEST, self.sender, self.transfer_id, self.manifest._wire()])


@dataclass(frozen=True, slots=True)
class Request:
    """REQUEST: the follower (`sender`) asks for `length` bytes of file `name` at `offset`."""

    sender: str
    transfer_id: int
    name: str
    offset: int
    length: int

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_int("transfer id", self.transfer_id, MAX_U64)
        check_name(self.name)
        _check_int("offset", self.offset, MAX_OFFSET)
        _check_int("length", self.length, CHUNK_BYTES)
        if self.length == 0 or self.offset + self.length > MAX_OFFSET:
            raise TransferError(f"bad request range {self.offset}+{self.length}")

    def encode(self) -> bytes:
        """Returns: the frame's bytes."""
        return _pack([REQUEST, self.sender, self.transfer_id, self.name, self.offset, self.length])


@dataclass(frozen=True, slots=True)
class Data:
    """DATA: the leader (`sender`) sends bytes of file `name` at `offset`, answering a REQUEST."""

    sender: str
    transfer_id: int
    name: str
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_int("transfer id", self.transfer_id, MAX_U64)
        check_name(self.name)
        _check_int("offset", self.offset, MAX_OFFSET)
        if type(self.data) is not bytes:
            raise TransferError(f"data must be bytes, got {type(self.data).__name__}")
        if len(self.data) > CHUNK_BYTES or self.offset + len(self.data) > MAX_OFFSET:
            raise TransferError(f"bad data range {self.offset}+{len(self.data)}")

    def encode(self) -> bytes:
        """Returns: the frame's bytes (the payload is copied once, not twice as by ``packb``)."""
        packer = msgpack.Packer(use_bin_type=True)
        head = packer.pack_array_header(6) + packer.pack(DATA) + packer.pack(self.sender)
        head += packer.pack(self.transfer_id) + packer.pack(self.name) + packer.pack(self.offset)
        size = len(self.data)
        if size < 1 << 8:
            head += struct.pack(">BB", 0xC4, size)
        elif size < 1 << 16:
            head += struct.pack(">BH", 0xC5, size)
        else:
            head += struct.pack(">BI", 0xC6, size)
        return b"".join((MARKER, head, self.data))


@dataclass(frozen=True, slots=True)
class Done:
    """DONE: the follower (`sender`) holds every file of the transfer, durable."""

    sender: str
    transfer_id: int

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_int("transfer id", self.transfer_id, MAX_U64)

    def encode(self) -> bytes:
        """Returns: the frame's bytes."""
        return _pack([DONE, self.sender, self.transfer_id])


@dataclass(frozen=True, slots=True)
class Abort:
    """ABORT: `sender` gives the transfer up, for `reason` (for logs; at most 1 KiB)."""

    sender: str
    transfer_id: int
    reason: str

    def __post_init__(self) -> None:
        _check_sender(self.sender)
        _check_int("transfer id", self.transfer_id, MAX_U64)
        _utf8_len("abort reason", self.reason, 0, MAX_REASON_BYTES)

    def encode(self) -> bytes:
        """Returns: the frame's bytes."""
        return _pack([ABORT, self.sender, self.transfer_id, self.reason])


Frame = Union[ManifestFrame, Request, Data, Done, Abort]
"""Any decoded transfer frame."""


def _abort(sender: str, transfer_id: int, reason: str) -> Abort:
    """Returns: an ABORT with `reason` cut to `MAX_REASON_BYTES`."""
    cut = reason.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")
    return Abort(sender, transfer_id, cut)


def is_transfer_frame(frame: bytes) -> bool:
    """Returns: whether `frame` is a transfer frame (rather than a Raft message or another kind)."""
    return frame[:2] == MARKER


def decode_frame(frame: bytes) -> Frame:
    """Returns: the frame `frame` holds, validated in full.

    The kind (the frame's third and fourth bytes: a fixarray header and a positive fixint, as
    ``msgpack`` writes them) is read first and sets the limits: the frame's length, the items of
    the array, the longest str and bin; only then is the rest decoded.

    Raises:
        TransferError: anything malformed: not a transfer frame, unknown kind, over a limit,
            truncated, trailing bytes, wrong types, a value out of range, a name that is not plain.
    """
    if type(frame) is not bytes or len(frame) < 4 or frame[:2] != MARKER:
        raise TransferError("not a transfer frame")
    kind = frame[3]
    if kind not in _FRAME_ITEMS or frame[2] != 0x90 | _FRAME_ITEMS[kind]:
        raise TransferError(f"unknown transfer frame kind or layout {frame[2]:#x} {frame[3]:#x}")
    if len(frame) > _FRAME_MAX[kind]:
        raise TransferError(f"frame of kind {kind} is {len(frame)} bytes, over {_FRAME_MAX[kind]}")
    try:
        reader = _Reader(frame, 2, _MAX_STR, _FRAME_MAX_BIN[kind])
        reader.array("frame", _FRAME_ITEMS[kind], _FRAME_ITEMS[kind])
        reader.value()  # the kind, read above
        sender, transfer_id = reader.value(), reader.value()
        decoded: Frame
        if kind == MANIFEST:
            decoded = ManifestFrame(sender, transfer_id, _read_manifest(reader))
        elif kind == REQUEST:
            decoded = Request(sender, transfer_id, reader.value(), reader.value(), reader.value())
        elif kind == DATA:
            decoded = Data(sender, transfer_id, reader.value(), reader.value(), reader.value())
        elif kind == DONE:
            decoded = Done(sender, transfer_id)
        else:
            decoded = Abort(sender, transfer_id, reader.value())
        reader.end()
        return decoded
    except TransferError:
        raise
    except Exception as exc:  # msgpack raises many types; every one of them means bad input
        raise TransferError(f"malformed transfer frame: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------- sender


class Sender:
    """The leader's end of one transfer to one follower: answers REQUESTs with DATA from the files.

    Stateless about progress: each REQUEST is answered on its own (the Receiver keeps track), so
    answering the same one twice is harmless. Source files are opened on first use and at most
    `max_open` stay open (least recently used closed first); `close` closes them. The node routes
    REQUEST frames to the Sender of their transfer id and drops the Sender on DONE or ABORT. With
    `peer` set, REQUESTs from any other node are refused.

    Attributes:
        served: REQUESTs answered with DATA.
        refused: REQUESTs refused (another transfer id or peer, a name not in the manifest, a
            range outside the file): stale or forged; answered with nothing.
        failed: why the transfer cannot go on (a source file unreadable or shorter than the
            manifest says), or None.
    """

    def __init__(self, fs: FileSystem, node_id: str, transfer_id: int, manifest: Manifest,
                 source_dir: str, max_open: int = 4, peer: str | None = None) -> None:
        _check_sender(node_id)
        _check_int("transfer id", transfer_id, MAX_U64)
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.fs = fs
        self.node_id = node_id
        self.transfer_id = transfer_id
        self.manifest = manifest
        self.source_dir = source_dir
        self.max_open = max_open
        self.peer = peer
        self.served = 0
        self.refused = 0
        self.failed: str | None = None
        self._fds: OrderedDict[str, int] = OrderedDict()

    def manifest_frame(self) -> bytes:
        """Returns: the MANIFEST frame that starts (or, sent again, resumes) the transfer."""
        return ManifestFrame(self.node_id, self.transfer_id, self.manifest).encode()

    def on_request(self, req: Request) -> bytes | None:
        """Returns: the DATA frame answering `req`; an ABORT frame if the source cannot be read
        (see `failed`; every later REQUEST of the transfer gets it too); None if `req` is refused
        (see `refused`).

        Raises:
            OSError: only from closing a file descriptor; reading errors become an ABORT.
        """
        mine = req.transfer_id == self.transfer_id and self.peer in (None, req.sender)
        if mine and self.failed is not None:
            return _abort(self.node_id, self.transfer_id, self.failed).encode()  # (it may be lost)
        info = self.manifest.file(req.name)
        if (not mine or info is None
                or not 0 < req.length <= CHUNK_BYTES or req.offset + req.length > info.size):
            self.refused += 1
            return None
        try:
            data = self.fs.pread(self._fd(info.name), req.length, req.offset)
        except OSError as exc:
            return self._fail(f"cannot read {info.name!r}: {exc}")
        if len(data) != req.length:
            return self._fail(f"{info.name!r} is shorter than the manifest's {info.size} bytes")
        self.served += 1
        return Data(self.node_id, self.transfer_id, info.name, req.offset, data).encode()

    def _fd(self, name: str) -> int:
        """Returns: an open descriptor of source file `name`, opening it (and closing the least
        recently used one past `max_open`) if needed."""
        fd = self._fds.get(name)
        if fd is not None:
            self._fds.move_to_end(name)
            return fd
        fd = self.fs.open(os.path.join(self.source_dir, name), os.O_RDONLY)
        self._fds[name] = fd
        while len(self._fds) > self.max_open:
            _, old = self._fds.popitem(last=False)
            self.fs.close(old)
        return fd

    def _fail(self, reason: str) -> bytes:
        self.failed = reason
        self.close()
        return _abort(self.node_id, self.transfer_id, reason).encode()

    @property
    def open_files(self) -> int:
        """Returns: how many source files are open."""
        return len(self._fds)

    def close(self) -> None:
        """Close every open source file (the Sender may still answer; it reopens them)."""
        while self._fds:
            _, fd = self._fds.popitem()
            self.fs.close(fd)


# -------------------------------------------------------------------------------------- receiver


@dataclass(slots=True, eq=False)
class _Staged:
    """The Receiver's state of one file of the manifest."""

    info: FileInfo
    written: int = 0  # bytes [0, written) are in the staged file and folded into `crc`
    crc: int = 0
    next_offset: int = 0  # first byte not yet requested
    held: dict[int, bytes] = field(default_factory=dict)  # arrived ahead of a gap: offset -> bytes
    fd: int | None = None
    done: bool = False  # complete, CRC checked, fsynced
    failures: int = 0  # CRC mismatches so far


class Receiver:
    """The follower's end: fetches a manifest's files into `staging_dir`, resumably.

    Feed it the frames of the transfer (`on_manifest`, `on_data`, `on_abort`, or `on_frame` for
    any) and send the frames each call returns to the transfer's sender; call `resend` when
    nothing arrived for a while. Once `complete`, every file is in `staging_dir` with the
    manifest's size and CRC, durable, and `install_staged` may switch it into place.

    Attributes:
        manifest, peer, transfer_id: the transfer under way (None before the first MANIFEST).
        complete: every file is staged, checked and durable.
        error: why the transfer stopped (an ABORT from the sender, a file failing its CRC
            `MAX_CRC_FAILURES` times), or None. A MANIFEST starts it again.
        dropped: frames refused: stale (another transfer, already received), forged or not
            asked for. Never written.
        refetched: files fetched again from 0 after their CRC did not match.
        bytes_written: payload bytes written to staged files.

    Raises (from `on_manifest`, `on_data`): OSError from the file system (disk full, I/O error):
    the node's storage failure, not the peer's fault. The transfer stops first (`error` says
    why); a MANIFEST restarts it, resuming from what is staged.
    """

    def __init__(self, fs: FileSystem, node_id: str, staging_dir: str, window: int = 4) -> None:
        _check_sender(node_id)
        if type(window) is not int or not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1 to {MAX_WINDOW}, got {window!r}")
        self.fs = fs
        self.node_id = node_id
        self.staging_dir = staging_dir
        self.window = window
        self.manifest: Manifest | None = None
        self.peer: str | None = None
        self.transfer_id: int | None = None
        self.complete = False
        self.error: str | None = None
        self.dropped = 0
        self.refetched = 0
        self.bytes_written = 0
        self._files: dict[str, _Staged] = {}
        self._queue: deque[str] = deque()  # files with bytes not yet requested, in fetch order
        self._outstanding: dict[tuple[str, int], int] = {}  # (name, offset) -> length asked for
        self._held = 0  # chunks held ahead of a gap, in all files
        self._remaining = 0  # files not done

    # ---------------------------------------------------------------- frames in

    @property
    def active(self) -> bool:
        """Returns: whether a transfer is under way (started, not complete, not stopped)."""
        return self.manifest is not None and not self.complete and self.error is None

    def on_frame(self, frame: Frame) -> list[bytes]:
        """Dispatch any decoded frame addressed to the follower. Returns: frames for the sender."""
        if isinstance(frame, ManifestFrame):
            return self.on_manifest(frame)
        if isinstance(frame, Data):
            return self.on_data(frame)
        if isinstance(frame, Abort):
            self.on_abort(frame)
            return []
        self.dropped += 1  # REQUEST and DONE are for the Sender
        return []

    def on_manifest(self, m: ManifestFrame) -> list[bytes]:
        """Start the transfer `m` announces, resume it, or replace the current one with it.

        The same transfer announced again (same sender, transfer id and manifest) is answered with
        its outstanding REQUESTs, or DONE if complete. Anything else (re)starts from what the
        staging directory holds (see the module docstring: kept, resumed, emptied, removed).

        Returns: the first REQUEST frames (up to `window`), plus DONE if nothing is missing.
        """
        same = (self.manifest is not None and m.sender == self.peer
                and m.transfer_id == self.transfer_id and m.manifest == self.manifest)
        if same and self.complete:
            return [self._done_frame()]
        if same and self.error is None:
            return self.resend()
        prior, self._files = self._files, {}
        self._outstanding.clear()
        self._queue.clear()
        self._held = 0
        self._remaining = 0
        self.manifest, self.peer, self.transfer_id = m.manifest, m.sender, m.transfer_id
        self.complete = False
        self.error = None
        try:
            self.fs.makedirs(self.staging_dir, 0o700)
            on_disk = set(self.fs.listdir(self.staging_dir))
            for name in on_disk:
                if m.manifest.file(name) is None:
                    _remove_tree(self.fs, os.path.join(self.staging_dir, name))
            for info in m.manifest.files:
                st = self._adopt(info, prior.pop(info.name, None), info.name in on_disk)
                self._files[info.name] = st
                if not st.done:
                    self._remaining += 1
                    if st.next_offset < info.size:
                        self._queue.append(info.name)
            return self._next_frames()
        except OSError as exc:
            self._stop(f"local I/O error: {exc}")
            raise
        finally:
            for old in prior.values():
                self._close(old)

    def on_data(self, d: Data) -> list[bytes]:
        """Write `d` if it answers an outstanding REQUEST of the current transfer exactly (its
        sender, transfer id, file, offset and length); else drop it and count it in `dropped`.

        Returns: the next REQUEST frames; DONE once every file is complete; an ABORT if a file
        failed its CRC `MAX_CRC_FAILURES` times.
        """
        key = (d.name, d.offset)
        if (not self.active or d.sender != self.peer or d.transfer_id != self.transfer_id
                or self._outstanding.get(key) != len(d.data)):
            self.dropped += 1
            return []
        del self._outstanding[key]
        st = self._files[d.name]
        if d.offset != st.written:
            st.held[d.offset] = d.data
            self._held += 1
            return self._fill()
        try:
            self._write(st, d.data)
            while st.written in st.held:
                self._held -= 1
                self._write(st, st.held.pop(st.written))
            if st.written == st.info.size:
                abort = self._file_complete(st)
                if abort is not None:
                    return [abort]
            return self._next_frames()
        except OSError as exc:
            self._stop(f"local I/O error: {exc}")
            raise

    def _next_frames(self) -> list[bytes]:
        """Returns: new REQUESTs while the window has room, and DONE once nothing is missing."""
        frames = self._fill()
        if self._remaining == 0:
            frames.append(self._finish())
        return frames

    def on_abort(self, a: Abort) -> None:
        """Stop the current transfer if `a` is its sender's ABORT (staged files stay, for a
        resume); else count `a` as dropped."""
        if not self.active or a.sender != self.peer or a.transfer_id != self.transfer_id:
            self.dropped += 1
            return
        self._stop(f"sender aborted: {a.reason}")

    def resend(self) -> list[bytes]:
        """Returns: every outstanding REQUEST again, plus new ones if the window has room (for
        the node to call when nothing arrived for a while: a lost frame, a reconnect)."""
        if not self.active:
            return []
        assert self.transfer_id is not None
        frames = [Request(self.node_id, self.transfer_id, name, offset, length).encode()
                  for (name, offset), length in self._outstanding.items()]
        return frames + self._fill()

    @property
    def outstanding(self) -> int:
        """Returns: REQUESTs sent and not answered yet."""
        return len(self._outstanding)

    @property
    def bytes_staged(self) -> int:
        """Returns: bytes of the manifest's files already staged (in order), for progress."""
        return sum(st.info.size if st.done else st.written for st in self._files.values())

    def close(self) -> None:
        """Close every staged file still open (a closed Receiver may be replaced by a new one on
        the same staging directory: it resumes)."""
        for st in self._files.values():
            self._close(st)

    # ---------------------------------------------------------------- inside

    def _path(self, name: str) -> str:
        return os.path.join(self.staging_dir, name)

    def _adopt(self, info: FileInfo, old: _Staged | None, on_disk: bool) -> _Staged:
        """Returns: the state of file `info` at the start of a transfer, from what this Receiver
        knew of it (`old`, for a file of the same name in the previous manifest) and what the
        staging directory holds."""
        if old is not None and on_disk and old.info == info:
            # Same file in both manifests: keep what is staged, without reading it back. What was
            # held ahead of a gap is dropped (its requests are gone with the old transfer).
            old.held.clear()
            old.next_offset = old.written
            return old
        st = _Staged(info)
        try:
            if old is not None:
                self._close(old)
                if on_disk:  # the previous manifest's file of that name: other content
                    st.fd = self._open(info.name)
                    self.fs.ftruncate(st.fd, 0)
            elif on_disk:
                self._resume(st)
            if info.size == 0:  # nothing to fetch: create it (the CRC of no bytes is 0, as checked)
                if st.fd is None:
                    st.fd = self._open(info.name)
                self._seal(st)
            elif not st.done:
                self._close(st)  # opened again on its first write: few descriptors stay open
        except OSError:
            if st.fd is not None:  # not in `_files` yet: `_stop` would not close it
                fd, st.fd = st.fd, None
                try:
                    self.fs.close(fd)
                except OSError:
                    pass
            raise
        return st

    def _resume(self, st: _Staged) -> None:
        """Take what the staging directory already holds of file `st` (from an earlier Receiver):
        read it back for its CRC; all of it with the right CRC -> done; a prefix -> fetch the
        rest (its CRC is checked at the end); anything else -> empty it."""
        try:
            st.fd = fd = self._open(st.info.name)
        except IsADirectoryError:
            _remove_tree(self.fs, self._path(st.info.name))
            st.fd = self._open(st.info.name)
            return
        length = self.fs.file_size(fd)
        if length > st.info.size:
            self.fs.ftruncate(fd, 0)
            return
        crc = done = 0
        while done < length:
            piece = self.fs.pread(fd, min(CHUNK_BYTES, length - done), done)
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            done += len(piece)
        if done == st.info.size and crc != st.info.crc32:
            crc = done = 0
        if done != length:
            self.fs.ftruncate(fd, done)
        st.written = st.next_offset = done
        st.crc = crc
        if done == st.info.size and done > 0:
            self._seal(st)

    def _open(self, name: str) -> int:
        return self.fs.open(self._path(name), os.O_RDWR | os.O_CREAT, 0o600)

    def _close(self, st: _Staged) -> None:
        if st.fd is not None:
            fd, st.fd = st.fd, None
            self.fs.close(fd)

    def _write(self, st: _Staged, data: bytes) -> None:
        """Write `data` at the end of `st`'s staged prefix and fold it into its CRC."""
        if st.fd is None:
            st.fd = self._open(st.info.name)
        self.fs.pwrite(st.fd, data, st.written)
        st.crc = zlib.crc32(data, st.crc)
        st.written += len(data)
        self.bytes_written += len(data)

    def _seal(self, st: _Staged) -> None:
        """File `st` is staged whole with the right CRC: make it durable and close it."""
        assert st.fd is not None
        self.fs.fsync(st.fd)
        self._close(st)
        st.done = True

    def _file_complete(self, st: _Staged) -> bytes | None:
        """The last byte of `st` is written: seal it if its CRC matches, else empty it and fetch
        it again. Returns: an ABORT frame if it failed `MAX_CRC_FAILURES` times, else None."""
        if st.crc == st.info.crc32:
            self._seal(st)
            self._remaining -= 1
            return None
        st.failures += 1
        self.refetched += 1
        assert st.fd is not None
        self.fs.ftruncate(st.fd, 0)
        st.written = st.next_offset = st.crc = 0
        if st.failures >= MAX_CRC_FAILURES:
            reason = f"{st.info.name!r} failed its CRC {st.failures} times"
            self._stop(reason)
            assert self.transfer_id is not None
            return _abort(self.node_id, self.transfer_id, reason).encode()
        self._queue.appendleft(st.info.name)
        return None

    def _fill(self) -> list[bytes]:
        """Returns: new REQUEST frames, while fewer than `window` chunks are unsettled."""
        frames: list[bytes] = []
        if not self.active:
            return frames
        assert self.transfer_id is not None
        while self._queue and len(self._outstanding) + self._held < self.window:
            st = self._files[self._queue[0]]
            if st.next_offset >= st.info.size:
                self._queue.popleft()
                continue
            length = min(CHUNK_BYTES, st.info.size - st.next_offset)
            self._outstanding[(st.info.name, st.next_offset)] = length
            frames.append(Request(self.node_id, self.transfer_id, st.info.name, st.next_offset,
                                  length).encode())
            st.next_offset += length
        return frames

    def _finish(self) -> bytes:
        """Every file is done: make the staged names durable. Returns: the DONE frame."""
        self.fs.fsync_dir(self.staging_dir)
        self.fs.fsync_dir(_parent(self.staging_dir))
        self.complete = True
        return self._done_frame()

    def _done_frame(self) -> bytes:
        assert self.transfer_id is not None
        return Done(self.node_id, self.transfer_id).encode()

    def _stop(self, reason: str) -> None:
        """Stop the transfer: nothing outstanding or held, every file closed (errors closing
        ignored: this also runs on the way out of a failing call)."""
        self.error = reason
        self._outstanding.clear()
        self._queue.clear()
        self._held = 0
        for st in self._files.values():
            st.held.clear()
            try:
                self._close(st)
            except OSError:
                pass


# --------------------------------------------------------------------------------------- install


def _parent(path: str) -> str:
    return os.path.dirname(os.path.normpath(path)) or "."


def _remove_tree(fs: FileSystem, path: str) -> None:
    """Remove file or directory `path` with everything under it (gone already is fine).

    Not atomic: a crash midway leaves part of it, which only ever happens to garbage (a leftover
    of staging, an old file) that the next call removes.
    """
    try:
        names = fs.listdir(path)
    except NotADirectoryError:
        fs.unlink(path)
        return
    except FileNotFoundError:
        return
    for name in names:
        _remove_tree(fs, os.path.join(path, name))
    fs.rmdir(path)


def _link_name(names: set[str]) -> str:
    """Returns: the name in the target directory through which each staged file is linked into
    place: one that no new file has (so it is removed with the old files), the same every time
    for the same names (so recovery finds it)."""
    n = 0
    while f".install-link-{n}" in names:
        n += 1
    return f".install-link-{n}"


def _encode_journal(staging_dir: str, names: list[str]) -> bytes:
    packed: bytes = msgpack.packb([JOURNAL_VERSION, staging_dir, names], use_bin_type=True)
    return packed


def _decode_journal(data: bytes) -> tuple[str, list[str]]:
    """Returns: (staging dir, new file names) of an install journal.

    Raises:
        TransferError: not a journal `_encode_journal` wrote (it is written whole, then renamed
            into place, so this means the disk corrupted it).
    """
    try:
        reader = _Reader(data, 0, 4096, 0)
        reader.array("install journal", 3, 3)
        version, staging = reader.value(), reader.value()
        count = reader.array("install journal names", 0, MAX_FILES)
        names = [check_name(reader.value()) for _ in range(count)]
        reader.end()
    except TransferError:
        raise
    except Exception as exc:  # msgpack raises many types; every one of them means bad input
        raise TransferError(f"malformed install journal: {type(exc).__name__}: {exc}") from None
    if version != JOURNAL_VERSION or type(staging) is not str or not staging:
        raise TransferError("malformed install journal")
    return staging, names


def recover_install(fs: FileSystem, target_dir: str) -> str:
    """Finish an interrupted `install_staged` of `target_dir`, so that it holds the complete old
    set of files (the switch had not committed) or the complete new one (it had). Call it at
    start, before reading `target_dir`; `install_staged` calls it too. Idempotent, and a crash
    during it is recovered by calling it again (see the module docstring).

    Returns: what it did: ``"clean"`` (nothing to do), ``"rolled forward"`` (a committed switch
    completed), ``"discarded"`` (a journal that was never committed removed).

    Raises:
        TransferError: the journal is unreadable (a corrupted disk).
    """
    target = os.path.normpath(target_dir)
    journal, parent = target + JOURNAL_SUFFIX, _parent(target)
    if not fs.exists(journal):
        if fs.exists(journal + ".tmp"):
            fs.unlink(journal + ".tmp")
            fs.fsync_dir(parent)
            return "discarded"
        return "clean"
    staging, names = _decode_journal(fs.read_file(journal))
    keep = set(names)
    link = os.path.join(target, _link_name(keep))
    for name in names:  # 1. every staged file linked into place (replacing an old one)
        src = os.path.join(staging, name)
        if not fs.exists(src):
            continue  # moved before a crash (staging is removed only once the target is durable)
        if fs.exists(link):
            fs.unlink(link)
        fs.link(src, link)
        fs.replace(link, os.path.join(target, name))
    for name in fs.listdir(target):  # 2. the old files (and the link name, if left) removed
        if name not in keep:
            _remove_tree(fs, os.path.join(target, name))
    fs.fsync_dir(target)  # every new name durable in T, before staging loses one
    _remove_tree(fs, staging)  # 3. the staging names, now second links of the new files
    fs.fsync_dir(_parent(staging))
    fs.unlink(journal)  # 4. done
    fs.fsync_dir(parent)
    return "rolled forward"


def install_staged(fs: FileSystem, staging_dir: str, target_dir: str) -> None:
    """Make the files of the complete, durable `staging_dir` (a `Receiver`'s, once `complete`)
    the files of `target_dir`, replacing those it held, so that a crash at any point leaves, once
    `recover_install` ran, the complete old set or the complete new one; `staging_dir` is removed.

    `staging_dir` must be on the same file system as `target_dir` (its files are hard-linked,
    never copied), hold only regular files, and be neither inside `target_dir` nor contain it.
    Paths are kept in the journal as given: give the same ones after a restart.

    Raises:
        TransferError: `staging_dir` and `target_dir` overlap, or staging holds a directory.
        FileNotFoundError: `staging_dir` does not exist.
    """
    staging, target = os.path.normpath(staging_dir), os.path.normpath(target_dir)
    journal = target + JOURNAL_SUFFIX
    a, b = os.path.abspath(staging), os.path.abspath(target)
    if os.path.commonpath([a, b]) in (a, b) or staging in (journal, journal + ".tmp"):
        raise TransferError(f"staging dir {staging_dir!r} overlaps target dir {target_dir!r}")
    recover_install(fs, target)
    names = fs.listdir(staging)
    for name in names:
        check_name(name)
        try:
            fs.listdir(os.path.join(staging, name))
        except NotADirectoryError:
            continue
        raise TransferError(f"staging dir {staging_dir!r} holds a directory {name!r}")
    parent = _parent(target)
    if not fs.exists(target):
        fs.makedirs(target, 0o700)
        fs.fsync_dir(parent)
    fd = fs.open(journal + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fs.pwrite(fd, _encode_journal(staging_dir, sorted(names)), 0)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    fs.replace(journal + ".tmp", journal)
    fs.fsync_dir(parent)  # the commit point
    recover_install(fs, target)
