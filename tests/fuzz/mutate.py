"""Mutations of valid frames: bytes flipped, cut, grown, spliced; values in the decoded tree swapped
for boundary values; multipart messages with frames dropped, repeated or added.

A mutation of a valid frame reaches deeper code than random bytes do: most of it still parses, so
the checks after parsing (types, ranges, relations between fields) are what it exercises.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Final

import msgpack

from tests.fuzz import values

INTERESTING_BYTES: Final = (0x00, 0x01, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC3, 0xCB, 0xCF, 0xD3, 0xDD, 0xDF,
                           0xFF)


def _flip_bits(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)


def _set_byte(rng: random.Random, data: bytearray) -> None:
    data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)


def _widen_int(rng: random.Random, data: bytearray) -> None:
    """A positive fixint byte becomes a uint64 or int64 extreme: valid msgpack when it was a value."""
    spots = [i for i, b in enumerate(data) if b < 0x80]
    if spots:
        pos = rng.choice(spots)
        data[pos:pos + 1] = rng.choice((b"\xcf" + b"\xff" * 8, b"\xcf\x80" + b"\x00" * 7,
                                        b"\xcf\x7f" + b"\xff" * 7, b"\xd3\xff" + b"\xff" * 7,
                                        b"\xcb\x7f\xf8" + b"\x00" * 6))


def _truncate(rng: random.Random, data: bytearray) -> None:
    del data[rng.randrange(len(data)):]


def _extend(rng: random.Random, data: bytearray) -> None:
    data += rng.choice((values.random_bytes(rng, 64), bytes(data[-8:]), b"\x00", b"\xc0"))


def _insert(rng: random.Random, data: bytearray) -> None:
    pos = rng.randrange(len(data) + 1)
    data[pos:pos] = values.random_bytes(rng, 16) or b"\xc1"


def _delete_range(rng: random.Random, data: bytearray) -> None:
    start = rng.randrange(len(data))
    del data[start:start + rng.randint(1, 8)]


def _duplicate_range(rng: random.Random, data: bytearray) -> None:
    start = rng.randrange(len(data))
    chunk = data[start:start + rng.randint(1, 16)]
    pos = rng.randrange(len(data) + 1)
    data[pos:pos] = chunk


BYTE_MUTATIONS: Final[tuple[Callable[[random.Random, bytearray], None], ...]] = (
    _flip_bits, _set_byte, _widen_int, _truncate, _extend, _insert, _delete_range, _duplicate_range,
)


def mutate_bytes(rng: random.Random, frame: bytes, keep: int = 0) -> bytes:
    """Returns: `frame` with 1 to 3 byte-level mutations; its first `keep` bytes (a marker) untouched."""
    head, body = frame[:keep], bytearray(frame[keep:])
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not body:
            body += b"\x00"
        rng.choice(BYTE_MUTATIONS)(rng, body)
    return head + bytes(body)


# --------------------------------------------------------------------------------- value trees


def _same_kind_boundary(rng: random.Random, value: Any) -> Any:
    """Returns: a boundary value of `value`'s own type most of the time (so parsing gets past type checks)."""
    if isinstance(value, bool):
        return rng.choice((not value, 0, 1, None))
    if isinstance(value, int):
        return values.boundary_int(rng)
    if isinstance(value, float):
        return values.boundary_float(rng)
    if isinstance(value, str):
        return values.random_str(rng)
    if isinstance(value, bytes):
        return values.random_bytes(rng, 64) if rng.random() < 0.5 else rng.choice(values.BYTES_BOUNDARIES)
    return values.scalar(rng)


def _slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Returns: the path of every node of a value tree (the root is the empty path)."""
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _slots(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _slots(item, path + (index,))
    return out


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _mutate_node(rng: random.Random, node: Any) -> Any:
    """Returns: a replacement for one node of the tree."""
    pick = rng.random()
    if pick < 0.55:
        return _same_kind_boundary(rng, node)
    if pick < 0.75:
        return values.scalar(rng)
    if isinstance(node, list) and node and pick < 0.9:
        items = list(node)
        change = rng.randrange(4)
        if change == 0:
            del items[rng.randrange(len(items))]
        elif change == 1:
            items.append(values.scalar(rng))
        elif change == 2:
            items = items * rng.choice((2, 3))
        else:
            rng.shuffle(items)
        return items
    if isinstance(node, dict) and pick < 0.9:
        items_map = dict(node)
        if items_map and rng.random() < 0.5:
            del items_map[rng.choice(list(items_map))]
        else:
            items_map[rng.choice(values.KEYS)] = values.scalar(rng)
        return items_map
    return values.tree(rng, 2)


def mutate_tree(rng: random.Random, value: Any) -> Any:
    """Returns: a copy of a decoded frame (maps, arrays, scalars) with 1 to 3 of its nodes replaced."""
    value = msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)
    for _ in range(rng.choice((1, 1, 2, 3))):
        paths = _slots(value)
        path = rng.choice(paths[1:] or paths)
        if not path:
            value = _mutate_node(rng, value)
            continue
        parent = _get(value, path[:-1])
        parent[path[-1]] = _mutate_node(rng, parent[path[-1]])
    return value


def mutate_packed(rng: random.Random, frame: bytes, keep: int = 0) -> bytes:
    """Returns: `frame` (msgpack after `keep` marker bytes) decoded, tree-mutated and packed again;
    bytes-mutated instead when it does not decode."""
    try:
        decoded = msgpack.unpackb(frame[keep:], raw=False, strict_map_key=False)
    except Exception:  # msgpack raises many types; any of them: mutate the bytes instead
        return mutate_bytes(rng, frame, keep)
    return frame[:keep] + values.pack(mutate_tree(rng, decoded))


# ----------------------------------------------------------------------------------- multipart


def mutate_parts(rng: random.Random, parts: list[bytes]) -> list[bytes]:
    """Returns: a multipart message with frames dropped, repeated, emptied, or added; never empty."""
    out = list(parts)
    change = rng.randrange(5)
    if change == 0 and len(out) > 1:
        del out[rng.randrange(len(out))]
    elif change == 1:
        out = out * rng.randint(2, 8)
    elif change == 2:
        out.insert(rng.randrange(len(out) + 1), b"")
    elif change == 3:
        out.insert(rng.randrange(len(out) + 1), values.random_bytes(rng, 32))
    else:
        out = [rng.choice(out) for _ in range(rng.randint(1, 20))]
    return out or [b""]
