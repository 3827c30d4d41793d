"""The on-disk formats of the durable log: segment records, the hard state file, snapshot files.

Pure encoding and decoding, no file I/O: `wiber.storage.durable` does the I/O and the recovery
policy. Every integer is little-endian; every checksum is `zlib.crc32` (CRC-32/ISO-HDLC).

A node's data directory
-----------------------
::

    LOCK                                              flock'ed while a DurableStorage has it open
    hardstate                                         current term, vote, commit
    snapshot-<index:020d>-<term:020d>.snap            the newest snapshot (normally exactly one)
    log-<first index:020d>.seg                        log segments, in index order
    *.tmp                                             an atomic replace that a crash interrupted
    *.corrupt                                         a snapshot recovery set aside (never read)

Segment file ``log-<first index:020d>.seg``
-------------------------------------------
Nothing but records, back to back, from byte 0 (no file header: a segment is well formed at every
record boundary, so a torn append leaves a valid prefix). The first record's index is the one in
the file name, and each next record's index is one more::

    offset  size  field
    0       4     length   u32   bytes of payload that follow the crc (>= 17)
    4       4     crc      u32   crc32 of the payload
    8       8     index    u64  -+
    16      8     term     u64   |  payload
    24      1     kind     u8    |  (EntryKind: 0 NORMAL, 1 NOOP, 2 CONFIG)
    25      n     data           -+ (n = length - 17)

A record is valid when its header is complete, ``17 <= length``, the payload is complete, the crc
matches and the kind is known. Which index it must carry is the recovery's business.

Hard state file ``hardstate``
-----------------------------
::

    magic b"WBHS" | version u8 = 1 | term u64 | commit u64 | has_vote u8 | vote_len u16 |
    vote (UTF-8, vote_len bytes) | crc u32 of every byte before it

Snapshot file ``snapshot-<index:020d>-<term:020d>.snap``
--------------------------------------------------------
::

    magic b"WBSN" | version u8 = 1 | index u64 | term u64 | data_len u64 |
    crc u32 of the 29 header bytes before it and then of the data | data (data_len bytes)

The index and term in the header must equal those in the file name, and the file must end right
after the data.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from wiber.raft.messages import MAX_NUMBER, Entry, EntryKind, HardState, SnapshotMeta

__all__ = [
    "CORRUPT_SUFFIX",
    "FRAME",
    "FRAME_SIZE",
    "HARD_STATE_NAME",
    "LOCK_NAME",
    "MIN_PAYLOAD",
    "PAYLOAD_HEAD",
    "RECORD_OVERHEAD",
    "TEMP_SUFFIX",
    "FormatError",
    "SegmentScan",
    "decode_hard_state",
    "decode_snapshot",
    "encode_hard_state",
    "encode_record",
    "encode_snapshot_header",
    "find_valid_record",
    "parse_segment_name",
    "parse_snapshot_name",
    "records_size",
    "scan_segment",
    "segment_name",
    "snapshot_name",
]

#: Record frame: payload length and payload crc.
FRAME = struct.Struct("<II")
FRAME_SIZE = FRAME.size
#: The fixed head of a payload: index, term, kind.
PAYLOAD_HEAD = struct.Struct("<QQB")
MIN_PAYLOAD = PAYLOAD_HEAD.size
#: Bytes a record takes on disk on top of its entry's data.
RECORD_OVERHEAD = FRAME_SIZE + MIN_PAYLOAD
_MAX_PAYLOAD = 0xFFFFFFFF

_HS_HEAD = struct.Struct("<4sBQQBH")
_HS_MAGIC = b"WBHS"
_SNAP_HEAD = struct.Struct("<4sBQQQ")
_SNAP_CRC = struct.Struct("<I")
_SNAP_MAGIC = b"WBSN"
_VERSION = 1
_KIND_BY_VALUE = {int(k): k for k in EntryKind}
_KINDS = frozenset(_KIND_BY_VALUE)
#: Offsets that may start a record whose index is below 2**32: length not zero, high 4 bytes of the
#: index zero, a known kind byte (see `find_valid_record`).
_CANDIDATE_RE = re.compile(
    rb"(?=(?!\x00\x00\x00\x00)[\s\S]{12}\x00\x00\x00\x00[\s\S]{8}["
    + b"".join(re.escape(bytes([k])) for k in sorted(_KINDS)) + rb"])")

HARD_STATE_NAME = "hardstate"
LOCK_NAME = "LOCK"
TEMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"

_SEGMENT_RE = re.compile(r"log-(\d{20})\.seg")
_SNAPSHOT_RE = re.compile(r"snapshot-(\d{20})-(\d{20})\.snap")


class FormatError(ValueError):
    """Bytes that do not decode; `position` is the byte offset of the problem in its file."""

    def __init__(self, problem: str, position: int) -> None:
        self.problem = problem
        self.position = position
        super().__init__(f"{problem} at byte {position}")


# -- names ---------------------------------------------------------------------------------------


def segment_name(first_index: int) -> str:
    """Returns: the file name of the segment whose first record has index `first_index`."""
    return f"log-{first_index:020d}.seg"


def parse_segment_name(name: str) -> int | None:
    """Returns: the first index a segment file name carries, or None if `name` is not a segment."""
    m = _SEGMENT_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def snapshot_name(meta: SnapshotMeta) -> str:
    """Returns: the file name of the snapshot at `meta`."""
    return f"snapshot-{meta.index:020d}-{meta.term:020d}.snap"


def parse_snapshot_name(name: str) -> SnapshotMeta | None:
    """Returns: the meta a snapshot file name carries, or None if `name` is not a snapshot."""
    m = _SNAPSHOT_RE.fullmatch(name)
    return SnapshotMeta(int(m.group(1)), int(m.group(2))) if m else None


# -- log records ---------------------------------------------------------------------------------


def encode_record(entry: Entry) -> bytes:
    """Returns: the framed record of one entry (the writer inlines this loop for speed).

    Raises:
        ValueError: the entry's data does not fit a u32 length.
    """
    data = entry.data
    length = MIN_PAYLOAD + len(data)
    if length > _MAX_PAYLOAD:
        raise ValueError(f"entry {entry.index}: {len(data)} bytes of data is too large for one record")
    head = PAYLOAD_HEAD.pack(entry.index, entry.term, entry.kind)
    return FRAME.pack(length, zlib.crc32(data, zlib.crc32(head))) + head + data


@dataclass(slots=True)
class SegmentScan:
    """What `scan_segment` found in a segment's bytes.

    Attributes:
        offsets: byte offset of each valid record, in order (record k has index ``first + k``).
        entries: the valid records' entries whose index is above `skip_to` (the snapshot index).
        end: byte offset just after the last valid record (== len(buf) for a clean segment).
        problem: why decoding stopped before the end of `buf`, or None.
        mismatched_index: the problem is a well-formed record (crc valid) carrying the wrong index,
            which is never a torn write.
    """

    offsets: list[int]
    entries: list[Entry]
    end: int
    problem: str | None
    mismatched_index: bool = False


def _check_record(buf: bytes, pos: int) -> tuple[str | None, int]:
    """Returns: (problem or None, length) of the record framed at `pos`."""
    size = len(buf)
    if pos + FRAME_SIZE > size:
        return f"record header cut short ({size - pos} of {FRAME_SIZE} bytes)", 0
    length, crc = FRAME.unpack_from(buf, pos)
    if length < MIN_PAYLOAD:
        return f"record length {length} is below the minimum {MIN_PAYLOAD}", length
    start = pos + FRAME_SIZE
    if start + length > size:
        return f"record payload cut short ({size - start} of {length} bytes)", length
    if zlib.crc32(buf[start:start + length]) != crc:
        return "record checksum mismatch", length
    if buf[start + 16] not in _KINDS:
        return f"record has unknown entry kind {buf[start + 16]}", length
    return None, length


def scan_segment(buf: bytes, first_index: int, skip_to: int) -> SegmentScan:
    """Decode a segment's records from byte 0 until the end or the first invalid record.

    Args:
        buf: the whole file.
        first_index: the index the file name says the first record carries.
        skip_to: entries with ``index <= skip_to`` are checked but not returned (the snapshot covers them).

    Returns:
        A `SegmentScan`; ``problem is None`` exactly when the whole of `buf` decoded.
    """
    offsets: list[int] = []
    entries: list[Entry] = []
    pos = 0
    size = len(buf)
    expected = first_index
    unpack_frame = FRAME.unpack_from
    unpack_head = PAYLOAD_HEAD.unpack_from
    crc32 = zlib.crc32
    kinds = _KIND_BY_VALUE
    view = memoryview(buf)
    while pos < size:
        start = pos + FRAME_SIZE
        if start <= size:
            length, crc = unpack_frame(buf, pos)
            end = start + length
            if length >= MIN_PAYLOAD and end <= size and crc32(view[start:end]) == crc:
                index, term, kind_value = unpack_head(buf, start)
                kind = kinds.get(kind_value)
                if kind is not None and index == expected:
                    offsets.append(pos)
                    if index > skip_to:
                        entries.append(Entry(index, term, kind, buf[start + MIN_PAYLOAD:end]))
                    expected += 1
                    pos = end
                    continue
                if kind is not None:
                    return SegmentScan(offsets, entries, pos,
                                       f"record carries index {index} where {expected} was expected",
                                       mismatched_index=True)
        problem, _ = _check_record(buf, pos)
        return SegmentScan(offsets, entries, pos, problem or "invalid record")
    return SegmentScan(offsets, entries, pos, None)


def find_valid_record(buf: bytes, start: int, max_index: int) -> int | None:
    """Look for any well-formed record (crc valid, ``1 <= index <= max_index``) at or after `start`.

    Recovery calls this after an invalid record in the last segment: a torn write leaves nothing
    valid after it, so a valid record further on means the invalid one is corruption of data that
    may have been acknowledged. Every byte offset is a candidate (the invalid record's length
    cannot be trusted). A regular expression (run in C) preselects offsets whose length is not zero,
    whose index has the high bytes that ``max_index`` allows and whose kind byte is known, so the
    common case (a few torn bytes, or a zero-filled tail) stays fast.

    Returns:
        The offset of the first such record, or None.
    """
    size = len(buf)
    candidates: Iterator[int]
    if max_index < (1 << 32):
        candidates = (m.start() for m in _CANDIDATE_RE.finditer(buf, start))
    else:
        candidates = iter(range(start, size))
    for pos in candidates:
        if pos + FRAME_SIZE + MIN_PAYLOAD > size:
            return None
        problem, _ = _check_record(buf, pos)
        if problem is None:
            index = PAYLOAD_HEAD.unpack_from(buf, pos + FRAME_SIZE)[0]
            if 1 <= index <= max_index:
                return pos
    return None


# -- hard state ----------------------------------------------------------------------------------


def encode_hard_state(hs: HardState) -> bytes:
    """Returns: the bytes of a hard state file holding `hs`.

    Raises:
        ValueError: a term or commit above `MAX_NUMBER` (only forged messages lead there), or a vote too long.
    """
    if not 0 <= hs.term <= MAX_NUMBER or not 0 <= hs.commit <= MAX_NUMBER:
        raise ValueError(f"hard state term {hs.term} or commit {hs.commit} is over 2**63 - 1: refused")
    vote = b"" if hs.voted_for is None else hs.voted_for.encode("utf-8")
    if len(vote) > 0xFFFF:
        raise ValueError(f"voted_for is {len(vote)} bytes long; at most 65535 fit")
    body = _HS_HEAD.pack(_HS_MAGIC, _VERSION, hs.term, hs.commit, hs.voted_for is not None, len(vote)) + vote
    return body + _SNAP_CRC.pack(zlib.crc32(body))


def decode_hard_state(buf: bytes) -> HardState:
    """Returns: the hard state a file holds.

    Raises:
        FormatError: short file, bad magic or version, bad checksum, trailing bytes, bad UTF-8.
    """
    if len(buf) < _HS_HEAD.size + 4:
        raise FormatError(f"hard state file is {len(buf)} bytes, shorter than its header", len(buf))
    magic, version, term, commit, has_vote, vote_len = _HS_HEAD.unpack_from(buf, 0)
    if magic != _HS_MAGIC or version != _VERSION:
        raise FormatError(f"not a version {_VERSION} hard state file (magic {magic!r}, version {version})", 0)
    end = _HS_HEAD.size + vote_len
    if len(buf) != end + 4:
        raise FormatError(f"hard state file is {len(buf)} bytes, expected {end + 4}", min(len(buf), end))
    if zlib.crc32(buf[:end]) != _SNAP_CRC.unpack_from(buf, end)[0]:
        raise FormatError("hard state checksum mismatch", end)
    if term > MAX_NUMBER or commit > MAX_NUMBER:
        raise FormatError(f"hard state term {term} or commit {commit} is over 2**63 - 1 (a forged message's? "
                          "this version never writes one)", 5)
    try:
        vote = buf[_HS_HEAD.size:end].decode("utf-8") if has_vote else None
    except UnicodeDecodeError as exc:
        raise FormatError(f"voted_for is not UTF-8: {exc.reason}", _HS_HEAD.size + exc.start) from None
    return HardState(term, vote, commit)


# -- snapshots -----------------------------------------------------------------------------------


def encode_snapshot_header(meta: SnapshotMeta, data: bytes) -> bytes:
    """Returns: the header to write before `data` in the snapshot file of `meta`."""
    head = _SNAP_HEAD.pack(_SNAP_MAGIC, _VERSION, meta.index, meta.term, len(data))
    return head + _SNAP_CRC.pack(zlib.crc32(data, zlib.crc32(head)))


def decode_snapshot(buf: bytes, expected: SnapshotMeta) -> bytes:
    """Returns: the state machine data of a snapshot file whose name says `expected`.

    Raises:
        FormatError: short file, bad magic or version, meta not matching the name, wrong length,
            bad checksum.
    """
    header_size = _SNAP_HEAD.size + _SNAP_CRC.size
    if len(buf) < header_size:
        raise FormatError(f"snapshot file is {len(buf)} bytes, shorter than its header", len(buf))
    magic, version, index, term, length = _SNAP_HEAD.unpack_from(buf, 0)
    if magic != _SNAP_MAGIC or version != _VERSION:
        raise FormatError(f"not a version {_VERSION} snapshot file (magic {magic!r}, version {version})", 0)
    if (index, term) != (expected.index, expected.term):
        raise FormatError(f"header says index {index} term {term}, the file name says "
                          f"index {expected.index} term {expected.term}", 5)
    if len(buf) != header_size + length:
        raise FormatError(f"snapshot file is {len(buf)} bytes, its header says {header_size + length}",
                          min(len(buf), header_size + length))
    (crc,) = _SNAP_CRC.unpack_from(buf, _SNAP_HEAD.size)
    view = memoryview(buf)
    if zlib.crc32(view[header_size:], zlib.crc32(view[:_SNAP_HEAD.size])) != crc:
        raise FormatError("snapshot checksum mismatch", _SNAP_HEAD.size)
    return buf[header_size:]


def records_size(entries: Sequence[Entry]) -> int:
    """Returns: the bytes `entries` take as records on disk."""
    return sum(len(e.data) for e in entries) + RECORD_OVERHEAD * len(entries)
