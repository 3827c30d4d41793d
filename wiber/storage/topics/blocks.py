"""The topic segments' on-disk record: a *block*, one topic's consecutive messages, framed with a CRC.

Every topic shares one sequence of segment files (``seg-<number>.dat``), so many topics cost no file,
descriptor or fsync each (docs/storage.md; NATS JetStream's message blocks and BookKeeper's entry
logs share one log the same way). Applied messages gather in a write buffer and are written sorted by
(topic, offset), so a topic's messages sit together; a run of one topic is cut into blocks of at most
`BLOCK_BYTES` of data, which is the grain of the sparse index (one index row per block) and of a read.

Frame::

    u32 length | u32 crc32(payload) | payload
    payload = u32 topic_id | u64 first_offset | u32 count | msgpack [[data, lamport, ts, index, late], ...]

One CRC covers a block rather than each message: a block is written, read and checked whole, and a
per-message CRC would cost every node ~1 us per message on the apply path for nothing more.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgpack

from wiber.broker.records import StoredRecord

__all__ = [
    "BLOCK_BYTES",
    "BlockError",
    "BlockRef",
    "decode_block",
    "encode_blocks",
    "parse_segment_name",
    "scan_blocks",
    "segment_name",
]

FRAME: Final = struct.Struct(">II")
HEAD: Final = struct.Struct(">IQI")
HEAD_SIZE: Final = FRAME.size + HEAD.size
BLOCK_BYTES: Final = 64 << 10
"""A run of one topic is cut into blocks of at most this much message data (a single larger message
is a block of its own)."""
MAX_BLOCK: Final = 0xFFFFFFFF
_SEGMENT_RE: Final = re.compile(r"seg-(\d{8})\.dat")


class BlockError(ValueError):
    """Bytes that are not a valid block; `position` is where in its segment."""

    def __init__(self, problem: str, position: int) -> None:
        self.problem = problem
        self.position = position
        super().__init__(f"{problem} at byte {position}")


@dataclass(frozen=True, slots=True)
class BlockRef:
    """Where one block is: its topic's offsets ``first .. first + count - 1`` at (segment, position, length)."""

    topic_id: int
    first: int
    count: int
    segment: int
    position: int
    length: int

    @property
    def end(self) -> int:
        """Returns: the offset after the block's last message."""
        return self.first + self.count


def segment_name(number: int) -> str:
    """Returns: the file name of topic segment `number`."""
    return f"seg-{number:08d}.dat"


def parse_segment_name(name: str) -> int | None:
    """Returns: the number a segment file name carries, or None if `name` is not one."""
    m = _SEGMENT_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def encode_blocks(topic_id: int, records: Sequence[StoredRecord]) -> list[tuple[int, int, bytes]]:
    """Cut one topic's consecutive `records` into framed blocks.

    Returns: ``(first_offset, count, frame)`` per block, in offset order.
    """
    blocks: list[tuple[int, int, bytes]] = []
    start = 0
    total = len(records)
    pack = msgpack.Packer(use_bin_type=True).pack
    while start < total:
        size = 0
        stop = start
        while stop < total and (stop == start or size + len(records[stop][2]) <= BLOCK_BYTES):
            size += len(records[stop][2])
            stop += 1
        chosen = records[start:stop]
        first = chosen[0][1]
        body = HEAD.pack(topic_id, first, len(chosen)) + pack([record[2:] for record in chosen])
        if len(body) > MAX_BLOCK:
            raise ValueError(f"a block of {len(body)} bytes is too large")
        blocks.append((first, len(chosen), FRAME.pack(len(body), zlib.crc32(body)) + body))
        start = stop
    return blocks


def decode_block(buf: bytes, name: str, position: int = 0) -> list[StoredRecord]:
    """Decode one whole frame (as `encode_blocks` made it) back into records of topic `name`.

    Raises: BlockError: a bad frame, checksum or content.
    """
    topic_id, first, count, body = _check_frame(buf, 0, position)
    try:
        items = msgpack.unpackb(body, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises many types; each means the same here
        raise BlockError(f"block body is not msgpack ({type(exc).__name__})", position) from None
    if type(items) is not tuple or len(items) != count:
        raise BlockError(f"block holds {len(items) if type(items) is tuple else '?'} records, not {count}", position)
    try:
        return [(name, first + n, data, lamport, ts, index, late)
                for n, (data, lamport, ts, index, late) in enumerate(items)]
    except (TypeError, ValueError):
        raise BlockError("a block record is not [data, lamport, ts, index, late]", position) from None


def _check_frame(buf: bytes, pos: int, position: int) -> tuple[int, int, int, bytes]:
    """Returns: (topic_id, first, count, msgpack body) of the frame at `buf[pos:]`. Raises: BlockError."""
    if len(buf) - pos < HEAD_SIZE:
        raise BlockError(f"block header cut short ({len(buf) - pos} of {HEAD_SIZE} bytes)", position)
    length, crc = FRAME.unpack_from(buf, pos)
    start = pos + FRAME.size
    if length < HEAD.size:
        raise BlockError(f"block length {length} is below its header's {HEAD.size}", position)
    if start + length > len(buf):
        raise BlockError(f"block cut short ({len(buf) - start} of {length} bytes)", position)
    body = buf[start:start + length]
    if zlib.crc32(body) != crc:
        raise BlockError("block checksum mismatch", position)
    topic_id, first, count = HEAD.unpack_from(body, 0)
    if count < 1:
        raise BlockError("block holds no record", position)
    return topic_id, first, count, body[HEAD.size:]


@dataclass(slots=True)
class SegmentScan:
    """What `scan_blocks` found: the valid blocks from the start, where they end, and why it stopped."""

    blocks: list[BlockRef]
    end: int
    problem: str | None


def scan_blocks(buf: bytes, segment: int) -> SegmentScan:
    """Check a segment's blocks from byte 0 until its end or the first invalid one.

    Returns: the valid blocks, the byte after the last of them, and the problem that stopped the
    scan (None when the whole buffer is valid blocks).
    """
    pos = 0
    blocks: list[BlockRef] = []
    while pos < len(buf):
        try:
            topic_id, first, count, _ = _check_frame(buf, pos, pos)
        except BlockError as err:
            return SegmentScan(blocks, pos, err.problem)
        length = FRAME.size + FRAME.unpack_from(buf, pos)[0]
        blocks.append(BlockRef(topic_id, first, count, segment, pos, length))
        pos += length
    return SegmentScan(blocks, pos, None)
