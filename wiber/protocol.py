"""The client wire contract of docs/design.md section 3 in one place: ops, limits, validation, msgpack codec.

Theory of operation
-------------------
Every request is one frame holding a msgpack map with ``op``; every reply is one frame holding a
msgpack map with ``ok``. The node calls `parse_request` on each frame it receives and answers with
`ok_reply` or `error_reply`; the client builds requests, checks them locally with
`validate_request` (so a bad request fails before a round trip) and reads answers with
`parse_reply`. Nothing here touches a socket, a file or a clock (as h11 keeps its protocol apart
from I/O), so all of it is tested with plain bytes.

Validation is table-driven: `_OP_FIELDS` lists, per op, the fields it takes as `FieldSpec` rows
(name, checker, required, default, and the relations ``requires`` / ``excludes`` / ``at_most``),
and one function, `validate_request`, walks the table. A checker is a small reusable function
``(field name, value, limits) -> normalized value`` that raises `BadRequest` or `TooLarge` with a
message naming the field, what was expected and what was sent. Adding an op or a field is a row in
the table, not new control flow.

Rules the table encodes (docs/design.md section 3):

* not msgpack, not a map, ``op`` missing or not a str -> BAD_REQUEST; an op outside `OPS` ->
  UNKNOWN_OP naming the known ones;
* unknown fields are ignored (forward compatibility), except ``id``, which is echoed in the reply;
  an optional field sent as nil counts as absent (clients that serialize "no value" as nil work);
* a Python ``bool`` is never accepted where an integer is expected;
* topic names follow `wiber.topics`: SUB takes a name or a pattern (``orders.*``, ``orders.>``),
  HISTORY one name, PUB and PUB_BATCH one name without empty tokens (``a..b``); a pattern
  anywhere but SUB is BAD_REQUEST saying patterns are for subscriptions;
* a payload over ``max_message_bytes``, or a batch over 16 times that in all -> TOO_LARGE.

Invariants of the output of `validate_request`: it is a new dict; it has ``op``; it holds only
fields of that op's table, each checked and normalized; optional fields without a default are
absent when not sent; it is a fixed point (validating it again returns an equal dict).

Untrusted input and memory
--------------------------
`unpack_frame` bounds what a frame can make the node allocate. The frame size is capped by
`Limits.max_frame_bytes`; str/bin/ext lengths cannot exceed the frame. Arrays need more care:
msgpack's C unpacker pre-allocates a declared array before reading its items, so a few kilobytes
of nested "array of 10,000" headers would make it allocate (and zero) tens of megabytes. Hence the
top two levels (the request map and the arrays in it, such as ``messages``) are read header by
header, refusing a declared count the remaining bytes cannot hold, and deeper values are unpacked
with arrays and maps capped at `_NESTED_CONTAINER_MAX` items (worst case about 8 MiB transient,
from msgpack's nesting limit of 1024 levels times 1024 slots of 8 bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, TypeGuard

import msgpack

from wiber import topics
from wiber.errors import BadRequest, TooLarge, UnknownOp, WireError

__all__ = [
    "BATCH_BYTES_FACTOR",
    "CLIENT_ID_MAX_CHARS",
    "ACK_REFS_MAX",
    "ACK_WAIT_MS_DEFAULT",
    "ACK_WAIT_MS_MAX",
    "CONSISTENCY_LEVELS",
    "CONSUMER_OPS",
    "FETCH_DEFAULT",
    "FETCH_MAX",
    "GROUP_NAME_MAX_CHARS",
    "ENVELOPE_HEADROOM_BYTES",
    "HEARTBEAT_PREFIX",
    "HISTORY_DEFAULT_LIMIT",
    "HISTORY_MAX_LIMIT",
    "MAX_BATCH_MESSAGES",
    "OPS",
    "REUSED_PACKER_MAX_BYTES",
    "TOPIC_MAX_BYTES",
    "WRITE_OPS",
    "FieldSpec",
    "Limits",
    "TopicUse",
    "error_reply",
    "fanout_frames",
    "heartbeat_frames",
    "ok_reply",
    "pack",
    "parse_reply",
    "parse_request",
    "pub_reply",
    "request_id",
    "topic_prefix",
    "unpack_frame",
    "validate_request",
    "validate_topic",
]

# ----------------------------------------------------------------------------- constants

WRITE_OPS: Final = frozenset({"PUB", "PUB_BATCH", "GROUP_CREATE", "GROUP_DELETE", "FETCH", "ACK", "NAK"})
"""Ops that append to the replicated log: only a leader serves them (NOT_LEADER elsewhere)."""

CONSUMER_OPS: Final = frozenset({"GROUP_CREATE", "GROUP_DELETE", "FETCH", "ACK", "NAK"})
"""The write ops of consumer groups (docs/design.md section 11): each becomes an op of a log entry."""

FETCH_MAX: Final = 1000
"""Most messages one FETCH asks for (the broker's limit too)."""

FETCH_DEFAULT: Final = 100
"""Messages a FETCH asks for when it does not say `max`."""

ACK_REFS_MAX: Final = 1000
"""Most [topic, offset] refs one ACK or NAK carries (the broker's limit too)."""

ACK_WAIT_MS_DEFAULT: Final = 30_000
"""How long a member holds a delivery before it is delivered again, unless GROUP_CREATE says otherwise."""

ACK_WAIT_MS_MAX: Final = 86_400_000
"""Longest `ack_wait_ms` a group may have: one day (the broker's limit too)."""

GROUP_NAME_MAX_CHARS: Final = 255
"""Longest group or member name on the wire (the broker also holds it to 255 bytes of UTF-8)."""

MAX_BATCH_MESSAGES: Final = 10_000
"""Most messages one PUB_BATCH may carry."""

BATCH_BYTES_FACTOR: Final = 16
"""A PUB_BATCH's payloads may total at most this many times `Limits.max_message_bytes`."""

HISTORY_DEFAULT_LIMIT: Final = 100
"""Messages a HISTORY returns when it does not say `limit`."""

HISTORY_MAX_LIMIT: Final = 1000
"""Largest `limit` a HISTORY may ask for."""

ENVELOPE_HEADROOM_BYTES: Final = 64 * 1024
"""Room in a frame beyond the payloads, for the map, field names and per-item headers.

A full batch has 10,000 bin headers of at most 5 bytes (50,000 bytes) plus a topic of at most 255
bytes and a few small fields, so 64 KiB is enough for every valid request.
"""

HEARTBEAT_PREFIX: Final = b"$hb\0"
"""First frame of a node heartbeat on the PUB socket; `$` keeps it out of the topic namespace."""

TOPIC_MAX_BYTES: Final = topics.TOPIC_MAX_BYTES
CLIENT_ID_MAX_CHARS: Final = 128
CONSISTENCY_LEVELS: Final = ("local", "linearizable")

_INT63_MAX: Final = 2**63 - 1
"""Upper bound of every counter on the wire (offsets, seqs, lamport): fits a signed 64-bit int."""

_NESTED_CONTAINER_MAX: Final = 1024
"""Most items of an array or entries of a map nested below the second level of a frame."""

_HEADER_READ_DEPTH: Final = 2
"""Containers at depths 0 and 1 are read header by header (see the module docstring)."""

_MAP_LEADS: Final = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ARRAY_LEADS: Final = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of the wire contract, from the cluster's `max_message_bytes` (docs/design.md section 2).

    Raises:
        ValueError: `max_message_bytes` is not a positive integer.
    """

    max_message_bytes: int = 1_048_576

    def __post_init__(self) -> None:
        value = self.max_message_bytes
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_message_bytes must be a positive integer, got {value!r}")

    @property
    def max_batch_bytes(self) -> int:
        """Returns: the most bytes a PUB_BATCH's payloads may total."""
        return BATCH_BYTES_FACTOR * self.max_message_bytes

    @property
    def max_frame_bytes(self) -> int:
        """Returns: the largest request frame the node's unpacker accepts.

        The largest batch plus `ENVELOPE_HEADROOM_BYTES` for the envelope; also a sound value for
        the client socket's `MAXMSGSIZE` (docs/design.md section 8).
        """
        return self.max_batch_bytes + ENVELOPE_HEADROOM_BYTES


# ----------------------------------------------------------------------------- codec


#: A reused `msgpack.Packer` keeps the largest buffer it ever grew for good: the hot paths that reuse
#: one (node replies and fan-out, the Publisher) pack anything with payloads over this with `pack`.
REUSED_PACKER_MAX_BYTES: Final = 1 << 20

#: Frames up to this size are decoded in one C call rather than header by header (the hot path).
FAST_PATH_BYTES = 512


def pack(obj: Any) -> bytes:
    """Returns: `obj` as msgpack, with bytes as bin and str as str (``use_bin_type=True``)."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack_frame(frame: bytes, limits: Limits) -> Any:
    """Decode one untrusted frame, bounding what it can make us allocate (see the module docstring).

    Returns: the decoded value (str stays str, bin stays bytes; map keys may be of any type).

    Raises:
        TooLarge: the frame is longer than `limits.max_frame_bytes`.
        BadRequest: anything else wrong ("not msgpack: ..."): empty, truncated, invalid msgpack or
            UTF-8, trailing bytes, a declared length the frame cannot hold, unhashable map keys.
    """
    size = len(frame)
    # (A frame within FAST_PATH_BYTES is always within max_frame_bytes, at least 64 KiB: the
    # property, two additions per call, is asked only for larger ones.)
    if size > FAST_PATH_BYTES and size > limits.max_frame_bytes:
        raise TooLarge(f"request frame is {size} bytes, over the limit of {limits.max_frame_bytes}")
    if size == 0:
        raise BadRequest("not msgpack: empty frame")
    if size <= FAST_PATH_BYTES:
        # Small frames (a typical PUB) are decoded in one C call: no declared count may exceed the
        # frame's length, so even nested containers preallocate at most a few MB in all.
        # Bad input falls through to the careful reader below, which names what is wrong.
        try:
            return msgpack.unpackb(frame, raw=False, strict_map_key=False,
                                   max_str_len=size, max_bin_len=size, max_ext_len=size,
                                   max_array_len=size, max_map_len=size)
        except Exception:  # msgpack raises many types; every one of them means bad input
            pass
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        max_buffer_size=size,
        max_str_len=size,
        max_bin_len=size,
        max_ext_len=size,
        max_array_len=min(size, _NESTED_CONTAINER_MAX),
        max_map_len=min(size, _NESTED_CONTAINER_MAX),
    )
    try:
        unpacker.feed(frame)
        value = _read_value(unpacker, frame, 0)
        trailing = size - unpacker.tell()
    except Exception as exc:  # msgpack raises many types; every one of them means bad input
        raise BadRequest(f"not msgpack: {_describe_exception(exc)}") from exc
    if trailing:
        raise BadRequest(f"not msgpack: {trailing} bytes after the end of the value")
    return value


def _read_value(unpacker: Any, frame: bytes, depth: int) -> Any:
    """Read one value; maps and arrays above `_HEADER_READ_DEPTH` header by header.

    Reading a container's items one at a time allocates only for items that are really there,
    so a declared count costs nothing until the bytes arrive; a count the rest of the frame
    cannot hold (each item takes at least one byte) is refused at once.

    Returns: the value. Raises: ValueError (or a msgpack error) on malformed input.
    """
    if depth >= _HEADER_READ_DEPTH:
        return unpacker.unpack()
    position = unpacker.tell()
    if position >= len(frame):
        raise ValueError("incomplete input")
    lead = frame[position]
    if lead in _MAP_LEADS:
        count = unpacker.read_map_header()
        _check_room(2 * count, frame, unpacker, f"a map of {count} entries")
        result: dict[Any, Any] = {}
        for _ in range(count):
            key = unpacker.unpack()
            result[key] = _read_value(unpacker, frame, depth + 1)
        return result
    if lead in _ARRAY_LEADS:
        count = unpacker.read_array_header()
        _check_room(count, frame, unpacker, f"an array of {count} items")
        if depth + 1 >= _HEADER_READ_DEPTH:
            return [unpacker.unpack() for _ in range(count)]
        return [_read_value(unpacker, frame, depth + 1) for _ in range(count)]
    return unpacker.unpack()


def _check_room(min_bytes: int, frame: bytes, unpacker: Any, what: str) -> None:
    """Raises: ValueError when fewer than `min_bytes` remain in `frame` after the header just read."""
    remaining = len(frame) - unpacker.tell()
    if min_bytes > remaining:
        raise ValueError(f"{what} declared, but only {remaining} bytes follow")


def _describe_exception(exc: BaseException) -> str:
    """Returns: one short line about why unpacking failed (some msgpack errors have no text)."""
    if isinstance(exc, msgpack.OutOfData):
        text = "incomplete input"
    elif isinstance(exc, msgpack.ExtraData):
        text = "bytes after the end of the value"
    elif isinstance(exc, msgpack.StackError):
        text = "nested too deeply"
    elif isinstance(exc, msgpack.FormatError):
        text = "invalid msgpack type byte"
    else:
        text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# ----------------------------------------------------------------------------- checkers

Checker = Callable[[str, Any, Limits], Any]
"""``(field name, value, limits) -> normalized value``; raises BadRequest or TooLarge."""


def _show(value: Any) -> str:
    """Returns: a short description of a received value for an error message (never the whole of it)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return f"{value} (a bool)"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if len(value) <= 40:
            return repr(value)
        return f"{value[:40]!r}... (a str of {len(value)} characters)"
    if isinstance(value, (bytes, bytearray)):
        return f"bytes of length {len(value)}"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} items"
    if isinstance(value, dict):
        return f"a map of {len(value)} entries"
    return f"a value of type {type(value).__name__}"


def _must(field: str, expected: str, value: Any) -> BadRequest:
    """Returns: the BadRequest "field 'x' must be <expected>, got <value>"."""
    return BadRequest(f"field '{field}' must be {expected}, got {_show(value)}")


def _is_int(value: Any) -> TypeGuard[int]:
    """Returns: whether `value` is an integer; a bool is not (True would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int) -> Checker:
    """Returns: a checker of an integer from `low` to `high` inclusive."""
    high_text = "2**63-1" if high == _INT63_MAX else str(high)
    expected = f"an integer from {low} to {high_text}"

    def check(field: str, value: Any, limits: Limits) -> int:
        if not _is_int(value) or not low <= value <= high:
            raise _must(field, expected, value)
        return value

    return check


def _string(min_chars: int, max_chars: int) -> Checker:
    """Returns: a checker of a str of `min_chars` to `max_chars` characters."""
    expected = f"a string of {min_chars} to {max_chars} characters"

    def check(field: str, value: Any, limits: Limits) -> str:
        if not isinstance(value, str) or not min_chars <= len(value) <= max_chars:
            raise _must(field, expected, value)
        return value

    return check


def _one_of(*choices: str) -> Checker:
    """Returns: a checker of a str equal to one of `choices`."""
    expected = "one of " + ", ".join(repr(choice) for choice in choices)

    def check(field: str, value: Any, limits: Limits) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _must(field, expected, value)
        return value

    return check


def _check_bool(field: str, value: Any, limits: Limits) -> bool:
    """Checker of a true/false flag: a msgpack bool, never an integer."""
    if not isinstance(value, bool):
        raise _must(field, "true or false", value)
    return value


def _check_refs(field: str, value: Any, limits: Limits) -> list[tuple[str, int]]:
    """Checker of an ACK's or NAK's refs: 1 to `ACK_REFS_MAX` pairs [topic, offset].

    Returns: a new list of (topic, offset) tuples.
    """
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= ACK_REFS_MAX:
        raise _must(field, f"an array of 1 to {ACK_REFS_MAX} [topic, offset] pairs", value)
    refs: list[tuple[str, int]] = []
    for position, ref in enumerate(value):
        if not isinstance(ref, (list, tuple)) or len(ref) != 2:
            raise _must(f"{field}[{position}]", "a [topic, offset] pair", ref)
        topic, offset = ref
        validate_topic(topic, f"{field}[{position}][0]", use="read")
        if not _is_int(offset) or not 0 <= offset <= _INT63_MAX:
            raise _must(f"{field}[{position}][1]", "an integer from 0 to 2**63-1", offset)
        refs.append((topic, offset))
    return refs


def _check_topic(field: str, value: Any, limits: Limits) -> str:
    """Checker of the topic a HISTORY reads: one name, not a pattern (`validate_topic` for "read")."""
    return validate_topic(value, field, use="read")


def _check_publish_topic(field: str, value: Any, limits: Limits) -> str:
    """Checker of the topic a PUB or PUB_BATCH writes (`validate_topic` for "publish")."""
    return validate_topic(value, field, use="publish")


def _check_subscribe_topic(field: str, value: Any, limits: Limits) -> str:
    """Checker of what a SUB follows: a topic name or a pattern (`validate_topic` for "subscribe")."""
    return validate_topic(value, field, use="subscribe")


def _check_timestamp(field: str, value: Any, limits: Limits) -> int | float:
    """Checker of a time in epoch seconds: an int or a finite float, not negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _must(field, "a finite number >= 0 (epoch seconds)", value)
    if not math.isfinite(value) or value < 0:
        raise _must(field, "a finite number >= 0 (epoch seconds)", value)
    return value


def _payload_type_error(field: str, value: Any) -> BadRequest:
    """Returns: the BadRequest for a payload that is not bytes, with a hint when it is a str."""
    if isinstance(value, str):
        return BadRequest(
            f"field '{field}' must be bytes, got a str: payloads are binary, "
            "encode the text (e.g. text.encode('utf-8')) and send bytes"
        )
    return _must(field, "bytes", value)


def _check_payload(field: str, value: Any, limits: Limits) -> bytes:
    """Checker of one message payload: bytes of at most `max_message_bytes`."""
    if not isinstance(value, bytes):
        raise _payload_type_error(field, value)
    if len(value) > limits.max_message_bytes:
        raise TooLarge(
            f"field '{field}' is {len(value)} bytes, over max_message_bytes ({limits.max_message_bytes})"
        )
    return value


def _check_payload_list(field: str, value: Any, limits: Limits) -> list[bytes]:
    """Checker of a batch: 1 to `MAX_BATCH_MESSAGES` payloads, each and all together within limits.

    Returns: a new list of the payloads.
    """
    if not isinstance(value, (list, tuple)):
        raise _must(field, "an array of bytes", value)
    if not 1 <= len(value) <= MAX_BATCH_MESSAGES:
        raise BadRequest(f"field '{field}' must hold 1 to {MAX_BATCH_MESSAGES} items, got {len(value)}")
    total = 0
    for index, item in enumerate(value):
        if not isinstance(item, bytes):
            raise _payload_type_error(f"{field}[{index}]", item)
        if len(item) > limits.max_message_bytes:
            raise TooLarge(
                f"field '{field}[{index}]' is {len(item)} bytes, "
                f"over max_message_bytes ({limits.max_message_bytes})"
            )
        total += len(item)
    if total > limits.max_batch_bytes:
        raise TooLarge(
            f"field '{field}' totals {total} bytes, over {BATCH_BYTES_FACTOR} x max_message_bytes "
            f"({limits.max_batch_bytes})"
        )
    return list(value)


# ----------------------------------------------------------------------------- the table

_NO_DEFAULT: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One row of an op's field table.

    Attributes:
        name: the field's key in the request map.
        check: the checker that validates and normalizes its value.
        required: a request without it is refused.
        default: the value used when it is absent (unless an ``excludes`` field was given);
            `_NO_DEFAULT` leaves it absent.
        requires: fields that must also be given when this one is.
        excludes: fields that must not be given when this one is.
        at_most: a field whose value this one's must not exceed (when both are given).
    """

    name: str
    check: Checker
    required: bool = False
    default: Any = _NO_DEFAULT
    requires: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    at_most: str | None = None


_TOPIC = FieldSpec("topic", _check_topic, required=True)
_PUBLISH_TOPIC = FieldSpec("topic", _check_publish_topic, required=True)

_GROUP = FieldSpec("group", _string(1, GROUP_NAME_MAX_CHARS), required=True)
_MEMBER = FieldSpec("member", _string(1, GROUP_NAME_MAX_CHARS), required=True)
_NODE = FieldSpec("node", _string(1, 255), required=True)

_SESSION_AND_TIME = (
    FieldSpec("client_id", _string(1, CLIENT_ID_MAX_CHARS), requires=("seq",)),
    FieldSpec("seq", _int_in(1, _INT63_MAX), requires=("client_id",)),
    FieldSpec("ack_floor", _int_in(1, _INT63_MAX), requires=("client_id",), at_most="seq"),
    FieldSpec("ordered", _check_bool, requires=("client_id",)),
    FieldSpec("lamport", _int_in(0, _INT63_MAX)),
    FieldSpec("ts", _check_timestamp),
)

_OP_FIELDS: Final[Mapping[str, tuple[FieldSpec, ...]]] = MappingProxyType(
    {
        "PING": (),
        "PUB": (_PUBLISH_TOPIC, FieldSpec("data", _check_payload, required=True), *_SESSION_AND_TIME),
        "PUB_BATCH": (_PUBLISH_TOPIC, FieldSpec("messages", _check_payload_list, required=True), *_SESSION_AND_TIME),
        "HISTORY": (
            _TOPIC,
            FieldSpec("from_offset", _int_in(0, _INT63_MAX), default=0, excludes=("last",)),
            FieldSpec("last", _int_in(1, _INT63_MAX), excludes=("from_offset",)),
            FieldSpec("limit", _int_in(1, HISTORY_MAX_LIMIT), default=HISTORY_DEFAULT_LIMIT),
            FieldSpec("consistency", _one_of(*CONSISTENCY_LEVELS), default=CONSISTENCY_LEVELS[0]),
        ),
        "SUB": (FieldSpec("topic", _check_subscribe_topic, required=True),),
        "TOPICS": (FieldSpec("pattern", _check_subscribe_topic),),
        "STATUS": (),
        "GROUP_CREATE": (
            _GROUP,
            FieldSpec("pattern", _check_subscribe_topic, required=True),
            FieldSpec("ack_wait_ms", _int_in(1, ACK_WAIT_MS_MAX), default=ACK_WAIT_MS_DEFAULT),
            FieldSpec("from_start", _check_bool, default=False),
        ),
        "GROUP_DELETE": (_GROUP,),
        "GROUPS": (),
        "FETCH": (
            _GROUP,
            _MEMBER,
            FieldSpec("max", _int_in(1, FETCH_MAX), default=FETCH_DEFAULT),
            FieldSpec("wait_ms", _int_in(0, ACK_WAIT_MS_MAX), default=0),
        ),
        "ACK": (_GROUP, _MEMBER, FieldSpec("refs", _check_refs, required=True)),
        "NAK": (_GROUP, _MEMBER, FieldSpec("refs", _check_refs, required=True)),
        "MEMBERS": (),
        "MEMBER_ADD": (_NODE,),
        "MEMBER_REMOVE": (_NODE,),
    }
)

OPS: Final[frozenset[str]] = frozenset(_OP_FIELDS)
"""Every op of the contract: PING PUB PUB_BATCH HISTORY SUB TOPICS STATUS, and the consumer ops
GROUP_CREATE GROUP_DELETE GROUPS FETCH ACK NAK."""


# ----------------------------------------------------------------------------- requests


TopicUse = Literal["name", "read", "publish", "subscribe"]
"""What a topic field is for, which decides the rules it obeys (`validate_topic`)."""


def validate_topic(topic: Any, field: str = "topic", *, use: TopicUse = "name") -> str:
    """Check a topic name: a str of 1 to 255 bytes of UTF-8, without NUL, not starting with `$`.

    NUL would break the `topic + b"\\0"` fan-out prefix; `$` is reserved for system streams such as
    heartbeats (`HEARTBEAT_PREFIX`). `use` adds the rules of `wiber.topics` for what it is for:
    "read" (HISTORY) refuses a pattern; "publish" (PUB, PUB_BATCH) also refuses empty tokens;
    "subscribe" (SUB) takes a pattern too, when it is a valid one; "name" adds nothing.

    Returns: the topic. Raises: BadRequest naming `field` and the problem.
    """
    if not isinstance(topic, str):
        raise _must(field, "a string (the topic name)", topic)
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"field '{field}' must be valid UTF-8 (it holds a lone surrogate)") from None
    if not 1 <= size <= TOPIC_MAX_BYTES:
        raise BadRequest(f"field '{field}' must be 1 to {TOPIC_MAX_BYTES} bytes of UTF-8, got {size} bytes")
    if "\0" in topic:
        raise BadRequest(f"field '{field}' must not contain NUL, got {_show(topic)}")
    if topic.startswith("$"):
        raise BadRequest(f"field '{field}' must not start with '$' (reserved), got {_show(topic)}")
    if use == "name":
        return topic
    if use == "subscribe":
        problem = topics.pattern_problem(topic) if topics.is_pattern(topic) else None
        if problem is not None:
            raise BadRequest(f"field '{field}' is not a valid pattern: {problem}; got {_show(topic)}")
        return topic
    if use == "publish" or topics.is_pattern(topic):  # a read refuses only the pattern
        problem = topics.publish_problem(topic)
        if problem is not None:
            raise BadRequest(f"field '{field}' {problem}; got {_show(topic)}")
    return topic


def request_id(msg: Any) -> Any:
    """Returns: the request's `id` to echo (an int, str or bytes), or None when there is none.

    None also when `msg` is not a map or `id` is of another type (a bool, a float, a map...):
    such an id cannot be echoed faithfully, and a request is not refused for it.
    """
    if not isinstance(msg, dict):
        return None
    rid = msg.get("id")
    if type(rid) is int or isinstance(rid, (str, bytes)) or _is_int(rid):  # the usual int first
        return rid
    return None


def validate_request(msg: Any, limits: Limits) -> dict[str, Any]:
    """Check a decoded request against its op's row of the table and normalize it.

    Returns: a new dict with `op` and that op's fields only (checked, defaults applied; optional
    fields without a default are absent when not sent or sent as nil). HISTORY gets
    `from_offset` 0 when it sends neither `from_offset` nor `last`.

    Raises:
        BadRequest: not a map, no str `op`, a missing, mistyped or out-of-range field, a bad topic,
            or fields that do not go together.
        UnknownOp: `op` is not one of `OPS`.
        TooLarge: a payload over `max_message_bytes`, or a batch over 16 times that in all.
    """
    if not isinstance(msg, dict):
        raise BadRequest(f"request must be a map, got {_show(msg)}")
    op = msg.get("op")
    if op == "PUB":
        fast = _plain_pub(msg, limits)
        if fast is not None:
            return fast
    if op is None:
        raise BadRequest("request has no field 'op'")
    if not isinstance(op, str):
        raise _must("op", "a string", op)
    specs = _OP_FIELDS.get(op)
    if specs is None:
        raise UnknownOp(f"unknown op {_show(op)}; known ops: {', '.join(sorted(OPS))}")

    normalized: dict[str, Any] = {"op": op}
    for spec in specs:
        value = msg.get(spec.name)
        if value is None:
            if spec.required:
                raise BadRequest(f"{op} requires field '{spec.name}'")
            continue
        normalized[spec.name] = spec.check(spec.name, value, limits)

    given = frozenset(normalized)
    for spec in specs:
        if spec.name not in given:
            if spec.default is not _NO_DEFAULT and given.isdisjoint(spec.excludes):
                normalized[spec.name] = spec.default
            continue
        for other in spec.requires:
            if other not in given:
                raise BadRequest(f"field '{spec.name}' requires field '{other}'")
        for other in spec.excludes:
            if other in given:
                raise BadRequest(f"{op} takes field '{spec.name}' or '{other}', not both")
        bound = spec.at_most
        if bound is not None and bound in given and normalized[spec.name] > normalized[bound]:
            raise BadRequest(
                f"field '{spec.name}' must be at most field '{bound}' ({normalized[bound]}), "
                f"got {normalized[spec.name]}"
            )
    return normalized


#: Topic names `_plain_pub` has seen pass `validate_topic` for "publish" (bounded: cleared when full).
_CHECKED_TOPICS: dict[str, None] = {}
_CHECKED_TOPICS_MAX: Final = 4096


def _plain_pub(msg: dict[Any, Any], limits: Limits) -> dict[str, Any] | None:
    """The usual PUB checked in straight-line code, the hot path of every node and publisher.

    Returns: what the table would return for `msg`, or None for anything this path does not
    decide (an unusual type, any problem at all): the table then checks it and names the
    problem. A property test holds the two paths equal.
    """
    topic = msg.get("topic")
    data = msg.get("data")
    if type(data) is not bytes or len(data) > limits.max_message_bytes or type(topic) is not str:
        return None
    if topic not in _CHECKED_TOPICS:
        try:
            validate_topic(topic, use="publish")
        except BadRequest:
            return None
        if len(_CHECKED_TOPICS) >= _CHECKED_TOPICS_MAX:
            _CHECKED_TOPICS.clear()
        _CHECKED_TOPICS[topic] = None
    get = msg.get
    out: dict[str, Any] = {"op": "PUB", "topic": topic, "data": data}
    ts = get("ts")
    if ts is not None:
        if not ((type(ts) is float and math.isfinite(ts) or type(ts) is int) and ts >= 0):
            return None
        out["ts"] = ts
    client_id = get("client_id")
    seq = get("seq")
    ack_floor = get("ack_floor")
    if client_id is not None or seq is not None or ack_floor is not None:
        if type(client_id) is not str or not 1 <= len(client_id) <= CLIENT_ID_MAX_CHARS:
            return None
        if type(seq) is not int or not 1 <= seq <= _INT63_MAX:
            return None
        out["client_id"] = client_id
        out["seq"] = seq
        if ack_floor is not None:
            if type(ack_floor) is not int or not 1 <= ack_floor <= seq:
                return None
            out["ack_floor"] = ack_floor
    ordered = get("ordered")
    if ordered is not None:
        if type(ordered) is not bool or client_id is None:
            return None
        out["ordered"] = ordered
    lamport = get("lamport")
    if lamport is not None:
        if type(lamport) is not int or not 0 <= lamport <= _INT63_MAX:
            return None
        out["lamport"] = lamport
    return out


def parse_request(frame: bytes, limits: Limits) -> tuple[Any, dict[str, Any]]:
    """Decode and validate one request frame: the node's single entry point for client input.

    Returns: `(request id or None, validated request)`.

    Raises:
        WireError (BadRequest, TooLarge or UnknownOp): with the request's id, when it could be
            read, attached as `err.request_id` (None otherwise), so the error reply echoes it.
    """
    rid: Any = None
    try:
        msg = unpack_frame(frame, limits)
        rid = request_id(msg)
        return rid, validate_request(msg, limits)
    except WireError as err:
        # errors.WireError does not declare the attribute; setattr keeps strict typing honest.
        setattr(err, "request_id", rid)  # noqa: B010
        raise


# ----------------------------------------------------------------------------- replies


def ok_reply(fields: dict[str, Any], req_id: Any = None) -> bytes:
    """Returns: the packed reply ``{"ok": True, **fields}``, plus ``"id"`` when `req_id` is not None.

    `ok` is set last-wins to True, so `fields` cannot turn a success into something else.
    """
    reply: dict[str, Any] = {"ok": True}
    reply.update(fields)
    reply["ok"] = True
    if req_id is not None:
        reply["id"] = req_id
    return pack(reply)


def pub_reply(answer: tuple[str, int, int, int, int, float], duplicate: bool, req_id: Any) -> dict[str, Any]:
    """Returns: the ok reply map of a PUB or PUB_BATCH, unpacked (the caller packs it).

    `answer` is ``(topic, offset, count, index, lamport, ts)`` with count 0 for a PUB (a
    PUB_BATCH's reply alone has ``count``); ``id`` is added when `req_id` is not None.
    """
    topic, offset, count, index, lamport, ts = answer
    reply: dict[str, Any] = {"ok": True, "topic": topic, "offset": offset, "index": index, "lamport": lamport,
                             "ts": ts, "duplicate": duplicate}
    if count:
        reply["count"] = count
    if req_id is not None:
        reply["id"] = req_id
    return reply


def error_reply(err: WireError, req_id: Any = None) -> bytes:
    """Returns: the packed error reply `err.to_reply()`, plus ``"id"`` when there is one.

    The id is `req_id`, or else the `request_id` that `parse_request` attached to `err`.
    """
    reply = err.to_reply()
    rid = req_id if req_id is not None else getattr(err, "request_id", None)
    if rid is not None:
        reply["id"] = rid
    return pack(reply)


def parse_reply(frame: bytes) -> dict[str, Any]:
    """Decode one reply frame on the client side.

    Returns: the reply map, which has a bool `ok` (an error reply is returned as is; turn it into
    an exception with `wiber.errors.error_from_reply`).

    Raises:
        BadRequest: "malformed reply ...": not msgpack, not a map, or no bool `ok`.
    """
    try:
        reply = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types; every one of them means a bad reply
        raise BadRequest(f"malformed reply: not msgpack: {_describe_exception(exc)}") from exc
    if not isinstance(reply, dict):
        raise BadRequest(f"malformed reply: expected a map, got {_show(reply)}")
    if not isinstance(reply.get("ok"), bool):
        raise BadRequest(f"malformed reply: field 'ok' must be a bool, got {_show(reply.get('ok'))}")
    return reply


# ----------------------------------------------------------------------------- fan-out


def topic_prefix(topic: str) -> bytes:
    """Returns: the SUB subscription prefix matching exactly `topic` (``topic + b"\\0"``).

    Raises: BadRequest when `topic` is not a valid topic name (a `$` name would match system frames).
    """
    return validate_topic(topic).encode("utf-8") + b"\0"


def fanout_frames(topic: str, record: dict[str, Any], packer: Callable[[Any], bytes] = pack) -> list[bytes]:
    """Returns: the two PUB frames of one applied message: ``topic + b"\\0"`` and the packed record.

    `record` is ``{topic, offset, data, lamport, ts, index}``. The topic is not validated again:
    it was checked when the message was published, and this is the per-message hot path (where
    the node passes its reused `msgpack.Packer`'s pack as `packer`).
    """
    return [topic.encode("utf-8") + b"\0", packer(record)]


def heartbeat_frames(record: dict[str, Any]) -> list[bytes]:
    """Returns: the two PUB frames of a node heartbeat: `HEARTBEAT_PREFIX` and the packed record.

    `record` is ``{node, term, commit_index, time}``.
    """
    return [HEARTBEAT_PREFIX, pack(record)]
