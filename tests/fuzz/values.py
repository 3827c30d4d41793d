"""Boundary values, random msgpack value trees and hand-crafted msgpack: the fuzzer's raw material.

Every function takes the `random.Random` of one sample, so a sample is a pure function of its seed.
Values stay within what ``msgpack.packb`` can encode (ints in [-2**63, 2**64 - 1]); what msgpack
cannot produce from Python values (huge declared lengths, invalid UTF-8, unhashable map keys,
malformed timestamps, nesting past the unpacker's limit) is built as bytes by `crafted`.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any, Final

import msgpack

INT_BOUNDARIES: Final[tuple[int, ...]] = (
    0, 1, 2, 7, 127, 128, 255, 256, 1023, 1024, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
    2**53, 2**53 + 1, 2**62, 2**63 - 2, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1,
    -1, -2, -128, -129, -2**31, -2**53, -2**63 + 1, -2**63,
)
"""Integers at the edges of msgpack's encodings and of the product's bounds (2**63 on the wire)."""

FLOAT_BOUNDARIES: Final[tuple[float, ...]] = (
    math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, -5e-324, 1e-300, 1.5, -1.5,
    1.7e9, 1.7e12, 1.7e18, 2.0**53, 2.0**63, 2.0**64, 1e308, -1e308, 1.7976931348623157e308,
)
"""Floats a number field may meet: NaN, infinities, subnormals, epoch-like times, the largest."""

STR_BOUNDARIES: Final[tuple[str, ...]] = (
    "", "a", "\x00", "a\x00b", "$", "$hb", ">", "*", "orders.>", ".", "..", "/", "../x", "é",
    "x" * 127, "x" * 128, "x" * 129, "x" * 255, "x" * 256, "é" * 128, "\U0001f600" * 64, "PING", "ping",
    "PUB ", "n1", "n2", "n3", "n9", "index.db", "seg-00000001.dat",
)
"""Strings at the edges of name rules: empty, NUL, reserved `$`, lengths around 128 and 255 bytes."""

BYTES_BOUNDARIES: Final[tuple[bytes, ...]] = (
    b"", b"\x00", b"\xff", b"\xc1", b"\xc1T", b"\xc1F", b"SQLite format 3\x00", b"\x00" * 64,
)

KEYS: Final[tuple[str, ...]] = (
    "op", "id", "topic", "data", "messages", "client_id", "seq", "ack_floor", "lamport", "ts",
    "from_offset", "last", "limit", "consistency", "term", "frm", "to", "ok",
)
"""Map keys the product reads (client fields and a few of its own), so random maps hit real paths."""

EXT_CODES: Final[tuple[int, ...]] = (0, 1, 5, 127)
"""Application ext type codes (`msgpack.ExtType` takes 0 to 127; the reserved negative ones,
-1 being msgpack's Timestamp, decoded by default, are built by `crafted`)."""


def boundary_int(rng: random.Random) -> int:
    """Returns: a boundary integer, or now and then a random one of random width."""
    if rng.random() < 0.8:
        return rng.choice(INT_BOUNDARIES)
    bits = rng.choice((7, 8, 16, 31, 32, 53, 63))
    value = rng.getrandbits(bits)
    return -value if rng.random() < 0.2 else value


def boundary_float(rng: random.Random) -> float:
    """Returns: a boundary float, or a random one over the whole exponent range."""
    if rng.random() < 0.8:
        return rng.choice(FLOAT_BOUNDARIES)
    value: float = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0]
    return value


def random_bytes(rng: random.Random, max_len: int = 256) -> bytes:
    """Returns: random bytes, most of them short, with a long tail up to `max_len`."""
    size = min(max_len, int(rng.expovariate(1 / 24))) if rng.random() < 0.9 else rng.randint(0, max_len)
    return rng.randbytes(size)


def random_str(rng: random.Random) -> str:
    """Returns: a boundary string or a random one (printable, control and non-ASCII characters)."""
    if rng.random() < 0.6:
        return rng.choice(STR_BOUNDARIES)
    alphabet = "abcxyz.>*$\x00\x7f é\u2028\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def scalar(rng: random.Random) -> Any:
    """Returns: one scalar of any msgpack type (nil, bool, int, float, str, bin, ext)."""
    pick = rng.randrange(9)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick in (2, 3):
        return boundary_int(rng)
    if pick == 4:
        return boundary_float(rng)
    if pick == 5:
        return random_str(rng)
    if pick == 6:
        return rng.choice(BYTES_BOUNDARIES) if rng.random() < 0.3 else random_bytes(rng)
    return msgpack.ExtType(rng.choice(EXT_CODES), random_bytes(rng, 16))


def tree(rng: random.Random, depth: int = 4) -> Any:
    """Returns: a random value tree: maps (keys mostly the product's field names), arrays, scalars."""
    if depth <= 0 or rng.random() < 0.45:
        return scalar(rng)
    if rng.random() < 0.5:
        size = rng.choice((0, 1, 2, 3, 5, 8))
        out: dict[Any, Any] = {}
        for _ in range(size):
            key = rng.choice(KEYS) if rng.random() < 0.7 else scalar(rng)
            if isinstance(key, (list, dict)):
                continue
            out[key] = tree(rng, depth - 1)
        return out
    return [tree(rng, depth - 1) for _ in range(rng.choice((0, 1, 2, 3, 4, 9)))]


def pack(value: Any) -> bytes:
    """Returns: `value` as msgpack (bin for bytes, str for str), or a nil byte if it cannot be packed."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError):
        return b"\xc0"
    return packed


# ------------------------------------------------------------------------------- crafted msgpack


def _huge_len(rng: random.Random) -> int:
    return rng.choice((0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000000, 1 << 20, 1000, 10_001))


def _crafted_header(rng: random.Random) -> bytes:
    """Returns: one msgpack header declaring far more than follows (str/bin/ext/array/map 16 and 32)."""
    size = _huge_len(rng)
    kind = rng.randrange(9)
    if kind == 0:
        return b"\xdd" + struct.pack(">I", size)            # array 32
    if kind == 1:
        return b"\xdf" + struct.pack(">I", size)            # map 32
    if kind == 2:
        return b"\xdc" + struct.pack(">H", min(size, 0xFFFF))  # array 16
    if kind == 3:
        return b"\xde" + struct.pack(">H", min(size, 0xFFFF))  # map 16
    if kind == 4:
        return b"\xdb" + struct.pack(">I", size)            # str 32
    if kind == 5:
        return b"\xc6" + struct.pack(">I", size)            # bin 32
    if kind == 6:
        return b"\xc9" + struct.pack(">I", size) + b"\x01"  # ext 32
    if kind == 7:
        return b"\xda" + struct.pack(">H", min(size, 0xFFFF))  # str 16
    return b"\xc5" + struct.pack(">H", min(size, 0xFFFF))   # bin 16


def _crafted_value(rng: random.Random) -> bytes:
    """Returns: one msgpack value Python's packer would never write."""
    kind = rng.randrange(12)
    if kind == 0:
        return _crafted_header(rng) + random_bytes(rng, 32)
    if kind == 1:  # invalid UTF-8 in a str
        bad = rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80"))
        return bytes([0xA0 | len(bad)]) + bad
    if kind == 2:  # a map whose key is an array or a map (unhashable)
        return b"\x81" + rng.choice((b"\x90", b"\x91\x01", b"\x80")) + b"\x00"
    if kind == 3:  # a reserved ext type; -1 (0xff) is msgpack's Timestamp: wrong lengths, bad nanoseconds
        data = rng.choice((b"", b"\x00", b"\xff" * 3, b"\xff" * 4, b"\xff" * 8, b"\xff" * 12, b"\x00" * 7))
        return b"\xc7" + bytes([len(data)]) + rng.choice((b"\xff", b"\xff", b"\x80", b"\xfe")) + data
    if kind == 4:  # nesting past msgpack's limit of 1024 levels
        depth = rng.choice((1023, 1024, 1025, 3000))
        return rng.choice((b"\x91", b"\x81\xa1k")) * depth + b"\xc0"
    if kind == 5:  # float32 specials
        return b"\xca" + rng.choice((b"\x7f\xc0\x00\x00", b"\x7f\x80\x00\x00", b"\xff\x80\x00\x00"))
    if kind == 6:  # float64 NaN with payload bits
        return b"\xcb" + b"\x7f\xf8" + rng.randbytes(6)
    if kind == 7:  # the byte msgpack never uses
        return b"\xc1"
    if kind == 8:  # uint64 / int64 extremes
        return rng.choice((b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7, b"\xcf\x80" + b"\x00" * 7))
    if kind == 9:  # an array of many nils, declared right (a large but honest container)
        count = rng.choice((1024, 1025, 10_000, 10_001))
        return b"\xdc" + struct.pack(">H", count) + b"\xc0" * count
    if kind == 10:  # a map with the same key many times
        return b"\xde" + struct.pack(">H", 200) + (b"\xa2op\xa4PING") * 200
    return pack(tree(rng, 2))


def crafted(rng: random.Random) -> bytes:
    """Returns: a frame of hand-built msgpack: a bad value alone, or inside a request-like map."""
    value = _crafted_value(rng)
    shape = rng.randrange(4)
    if shape == 0:
        return value
    if shape == 1:  # {"op": <known op>, <field>: value}
        op = rng.choice(("PING", "PUB", "PUB_BATCH", "HISTORY", "SUB", "TOPICS", "STATUS"))
        key = rng.choice(KEYS)
        return b"\x82" + pack("op") + pack(op) + pack(key) + value
    if shape == 2:  # a peer message array with the bad value in one slot
        slots: tuple[Any, ...] = (rng.randint(1, 7), 1, "n2", "n1", 0, 0, [], 0, 0)
        items = [pack(x) for x in slots]
        items[rng.randrange(1, len(items))] = value
        return bytes([0x90 | len(items)]) + b"".join(items)
    return value + random_bytes(rng, 8)  # trailing bytes after the value

