"""The transfer's wire: limits, the manifest, the five frame kinds and their strict decoding."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final, Union

import msgpack

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
