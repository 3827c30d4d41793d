"""Tests of wiber.protocol: the docs/design.md section 3 wire contract, without sockets.

What they pin: the normalized form of every op's good request; the error class and a message
fragment for every bad field of every op; that bool never passes as an int; that the request `id`
is echoed, on errors too; that hostile frames (garbage, truncation, huge declared lengths, nested
array bombs) become BadRequest without large allocations; and, with hypothesis, that no input
makes `parse_request` raise anything but a WireError.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wiber import protocol
from wiber.errors import BadRequest, NotLeader, TooLarge, Unavailable, UnknownOp, WireError, error_from_reply
from wiber.protocol import (
    HEARTBEAT_PREFIX,
    MAX_BATCH_MESSAGES,
    OPS,
    WRITE_OPS,
    Limits,
    error_reply,
    fanout_frames,
    heartbeat_frames,
    ok_reply,
    pack,
    parse_reply,
    parse_request,
    request_id,
    topic_prefix,
    unpack_frame,
    validate_request,
    validate_topic,
)

LIMITS = Limits()
SMALL = Limits(max_message_bytes=10)
"""Small limits make the size rules cheap to test: 10 bytes a message, 160 a batch."""

INT63_MAX = 2**63 - 1


def roundtrip(request: Any, limits: Limits = LIMITS) -> dict[str, Any]:
    """Returns: the validated request after packing it and parsing it as the node does."""
    _rid, normalized = parse_request(pack(request), limits)
    return normalized


def raw_map(*pairs: tuple[Any, bytes]) -> bytes:
    """Returns: a msgpack map frame built by hand; each value is given as already-encoded bytes."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(pack(key) + value for key, value in pairs)


def peak_allocation(action: Callable[[], object]) -> int:
    """Returns: the peak bytes Python allocated while running `action` (which must raise WireError)."""
    tracemalloc.start()
    try:
        with pytest.raises(WireError):
            action()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


# ----------------------------------------------------------------------------- constants and limits


def test_ops_and_constants_match_the_contract() -> None:
    consumer_ops = {"GROUP_CREATE", "GROUP_DELETE", "FETCH", "ACK", "NAK"}
    assert OPS == {"PING", "PUB", "PUB_BATCH", "HISTORY", "SUB", "TOPICS", "STATUS", "GROUPS", *consumer_ops,
                   "MEMBERS", "MEMBER_ADD", "MEMBER_REMOVE"}
    assert WRITE_OPS == {"PUB", "PUB_BATCH", *consumer_ops} and WRITE_OPS <= OPS
    assert protocol.CONSUMER_OPS == consumer_ops
    assert MAX_BATCH_MESSAGES == 10_000
    assert protocol.BATCH_BYTES_FACTOR == 16
    assert protocol.HISTORY_DEFAULT_LIMIT == 100
    assert protocol.HISTORY_MAX_LIMIT == 1000
    assert HEARTBEAT_PREFIX == b"$hb\0"


def test_limits_default_and_derived_sizes() -> None:
    assert LIMITS.max_message_bytes == 1_048_576
    assert LIMITS.max_batch_bytes == 16 * 1_048_576
    assert LIMITS.max_frame_bytes == 16 * 1_048_576 + 64 * 1024
    assert SMALL.max_frame_bytes == 160 + 65536


def test_limits_is_frozen_and_slotted() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIMITS.max_message_bytes = 5  # type: ignore[misc]
    assert not hasattr(LIMITS, "__dict__")


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1024"])
def test_limits_refuses_a_bad_max_message_bytes(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        Limits(max_message_bytes=bad)


# ----------------------------------------------------------------------------- good requests

GOOD: list[tuple[str, dict[str, Any], dict[str, Any], Limits]] = [
    ("ping", {"op": "PING"}, {"op": "PING"}, LIMITS),
    ("ping ignores extras", {"op": "PING", "id": 7, "future": [1, {"x": b""}]}, {"op": "PING"}, LIMITS),
    ("topics", {"op": "TOPICS"}, {"op": "TOPICS"}, LIMITS),
    ("status", {"op": "STATUS", "verbose": True}, {"op": "STATUS"}, LIMITS),
    ("sub", {"op": "SUB", "topic": "orders", "junk": 1}, {"op": "SUB", "topic": "orders"}, LIMITS),
    (
        "pub minimal",
        {"op": "PUB", "topic": "orders", "data": b"hello"},
        {"op": "PUB", "topic": "orders", "data": b"hello"},
        LIMITS,
    ),
    (
        "pub empty data",
        {"op": "PUB", "topic": "t", "data": b""},
        {"op": "PUB", "topic": "t", "data": b""},
        LIMITS,
    ),
    (
        "pub data exactly max_message_bytes",
        {"op": "PUB", "topic": "t", "data": b"x" * 10},
        {"op": "PUB", "topic": "t", "data": b"x" * 10},
        SMALL,
    ),
    (
        "pub every optional field",
        {
            "op": "PUB",
            "topic": "t",
            "data": b"d",
            "client_id": "c" * 128,
            "seq": 5,
            "ack_floor": 5,
            "lamport": INT63_MAX,
            "ts": 1_700_000_000.25,
            "id": "req-1",
            "unknown": "ignored",
        },
        {
            "op": "PUB",
            "topic": "t",
            "data": b"d",
            "client_id": "c" * 128,
            "seq": 5,
            "ack_floor": 5,
            "lamport": INT63_MAX,
            "ts": 1_700_000_000.25,
        },
        LIMITS,
    ),
    (
        "pub smallest optional values",
        {
            "op": "PUB",
            "topic": "t",
            "data": b"d",
            "client_id": "c",
            "seq": 1,
            "ack_floor": 1,
            "lamport": 0,
            "ts": 0,
        },
        {
            "op": "PUB",
            "topic": "t",
            "data": b"d",
            "client_id": "c",
            "seq": 1,
            "ack_floor": 1,
            "lamport": 0,
            "ts": 0,
        },
        LIMITS,
    ),
    (
        "pub nil optional fields count as absent",
        {
            "op": "PUB",
            "topic": "t",
            "data": b"d",
            "client_id": None,
            "seq": None,
            "lamport": None,
            "ts": None,
        },
        {"op": "PUB", "topic": "t", "data": b"d"},
        LIMITS,
    ),
    (
        "pub_batch minimal",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"a", b"", b"c"]},
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"a", b"", b"c"]},
        LIMITS,
    ),
    (
        "pub_batch with session",
        {
            "op": "PUB_BATCH",
            "topic": "t",
            "messages": [b"a"],
            "client_id": "c",
            "seq": 9,
            "ack_floor": 3,
            "ts": 5,
        },
        {
            "op": "PUB_BATCH",
            "topic": "t",
            "messages": [b"a"],
            "client_id": "c",
            "seq": 9,
            "ack_floor": 3,
            "ts": 5,
        },
        LIMITS,
    ),
    (
        "pub_batch exactly 16 x max_message_bytes",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"x" * 10] * 16, "lamport": 3},
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"x" * 10] * 16, "lamport": 3},
        SMALL,
    ),
    (
        "pub_batch exactly 10,000 messages",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b""] * MAX_BATCH_MESSAGES},
        {"op": "PUB_BATCH", "topic": "t", "messages": [b""] * MAX_BATCH_MESSAGES},
        LIMITS,
    ),
    (
        "history defaults",
        {"op": "HISTORY", "topic": "t"},
        {"op": "HISTORY", "topic": "t", "from_offset": 0, "limit": 100, "consistency": "local"},
        LIMITS,
    ),
    (
        "history from_offset",
        {"op": "HISTORY", "topic": "t", "from_offset": 42, "limit": 1000, "consistency": "linearizable"},
        {"op": "HISTORY", "topic": "t", "from_offset": 42, "limit": 1000, "consistency": "linearizable"},
        LIMITS,
    ),
    (
        "history last keeps last and drops the from_offset default",
        {"op": "HISTORY", "topic": "t", "last": 10, "limit": 1},
        {"op": "HISTORY", "topic": "t", "last": 10, "limit": 1, "consistency": "local"},
        LIMITS,
    ),
    (
        "history nil last is absent",
        {"op": "HISTORY", "topic": "t", "last": None, "from_offset": 3},
        {"op": "HISTORY", "topic": "t", "from_offset": 3, "limit": 100, "consistency": "local"},
        LIMITS,
    ),
    (
        "topic of 255 ascii bytes",
        {"op": "SUB", "topic": "a" * 255},
        {"op": "SUB", "topic": "a" * 255},
        LIMITS,
    ),
    (
        "topic of 255 utf-8 bytes",
        {"op": "SUB", "topic": "é" * 127 + "a"},
        {"op": "SUB", "topic": "é" * 127 + "a"},
        LIMITS,
    ),
    ("topic with $ inside", {"op": "SUB", "topic": "a$b"}, {"op": "SUB", "topic": "a$b"}, LIMITS),
    (
        "unicode topic",
        {"op": "SUB", "topic": "zamówienia/🚚"},
        {"op": "SUB", "topic": "zamówienia/🚚"},
        LIMITS,
    ),
    # consumer groups (docs/design.md section 11)
    (
        "group create defaults",
        {"op": "GROUP_CREATE", "group": "g", "pattern": "orders.*"},
        {"op": "GROUP_CREATE", "group": "g", "pattern": "orders.*", "ack_wait_ms": 30_000, "from_start": False},
        LIMITS,
    ),
    (
        "group create with settings",
        {"op": "GROUP_CREATE", "group": "g", "pattern": "orders.eu", "ack_wait_ms": 5, "from_start": True},
        {"op": "GROUP_CREATE", "group": "g", "pattern": "orders.eu", "ack_wait_ms": 5, "from_start": True},
        LIMITS,
    ),
    ("group delete", {"op": "GROUP_DELETE", "group": "g"}, {"op": "GROUP_DELETE", "group": "g"}, LIMITS),
    ("groups", {"op": "GROUPS"}, {"op": "GROUPS"}, LIMITS),
    (
        "fetch defaults",
        {"op": "FETCH", "group": "g", "member": "m"},
        {"op": "FETCH", "group": "g", "member": "m", "max": 100, "wait_ms": 0},
        LIMITS,
    ),
    (
        "ack refs become pairs",
        {"op": "ACK", "group": "g", "member": "m", "refs": [["orders.eu", 0], ("orders.us", 7)]},
        {"op": "ACK", "group": "g", "member": "m", "refs": [("orders.eu", 0), ("orders.us", 7)]},
        LIMITS,
    ),
    (
        "nak",
        {"op": "NAK", "group": "g", "member": "m", "refs": [["t", 2**63 - 1]]},
        {"op": "NAK", "group": "g", "member": "m", "refs": [("t", 2**63 - 1)]},
        LIMITS,
    ),
    ("members", {"op": "MEMBERS"}, {"op": "MEMBERS"}, LIMITS),
    ("member add", {"op": "MEMBER_ADD", "node": "n4"}, {"op": "MEMBER_ADD", "node": "n4"}, LIMITS),
    ("member remove", {"op": "MEMBER_REMOVE", "node": "n1"}, {"op": "MEMBER_REMOVE", "node": "n1"}, LIMITS),
]


@pytest.mark.parametrize(("request_", "expected", "limits"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_request_is_normalized(
    request_: dict[str, Any], expected: dict[str, Any], limits: Limits
) -> None:
    before = dict(request_)
    normalized = validate_request(request_, limits)
    assert normalized == expected
    assert next(iter(normalized)) == "op"
    assert normalized is not request_ and request_ == before  # a new dict; the input is untouched
    assert roundtrip(request_, limits) == expected  # the same through the wire codec
    assert validate_request(normalized, limits) == normalized  # a fixed point


def test_every_op_has_a_good_request() -> None:
    assert {g[2]["op"] for g in GOOD} == OPS


def test_batch_messages_are_copied_and_a_tuple_is_accepted_locally() -> None:
    messages = [b"a", b"b"]
    normalized = validate_request({"op": "PUB_BATCH", "topic": "t", "messages": messages}, LIMITS)
    assert normalized["messages"] == messages and normalized["messages"] is not messages
    from_tuple = validate_request({"op": "PUB_BATCH", "topic": "t", "messages": (b"a", b"b")}, LIMITS)
    assert from_tuple["messages"] == [b"a", b"b"]


def test_largest_valid_requests_fit_the_frame_limit() -> None:
    """The 64 KiB envelope headroom covers the worst valid batch: many items, or few large ones."""
    session = {"client_id": "c" * 128, "seq": INT63_MAX, "ack_floor": 1, "lamport": INT63_MAX, "ts": 1.5}
    item = LIMITS.max_batch_bytes // MAX_BATCH_MESSAGES
    many: dict[str, Any] = {
        "op": "PUB_BATCH",
        "topic": "t" * 255,
        "messages": [b"x" * item] * MAX_BATCH_MESSAGES,
        **session,
    }
    few: dict[str, Any] = {
        "op": "PUB_BATCH",
        "topic": "t" * 255,
        "messages": [b"x" * LIMITS.max_message_bytes] * 16,
        **session,
    }
    for request_ in (many, few):
        frame = pack({**request_, "id": "x" * 64})
        assert len(frame) <= LIMITS.max_frame_bytes
        _rid, normalized = parse_request(frame, LIMITS)
        assert len(normalized["messages"]) == len(request_["messages"])


# ----------------------------------------------------------------------------- bad requests


def _bad_topic_cases() -> list[tuple[str, dict[str, Any], type[WireError], str]]:
    """Returns: every bad topic, for every op that takes one."""
    base: dict[str, dict[str, Any]] = {
        "PUB": {"op": "PUB", "data": b"x"},
        "PUB_BATCH": {"op": "PUB_BATCH", "messages": [b"x"]},
        "HISTORY": {"op": "HISTORY"},
        "SUB": {"op": "SUB"},
    }
    topics: list[tuple[str, Any, str]] = [
        ("missing", ..., "requires field 'topic'"),
        ("nil", None, "requires field 'topic'"),
        ("int", 5, "field 'topic' must be a string"),
        ("bytes", b"orders", "field 'topic' must be a string"),
        ("list", ["a"], "field 'topic' must be a string"),
        ("empty", "", "1 to 255 bytes of UTF-8, got 0 bytes"),
        ("256 bytes", "a" * 256, "got 256 bytes"),
        ("256 utf-8 bytes", "é" * 128, "got 256 bytes"),
        ("nul", "a\0b", "must not contain NUL"),
        ("reserved", "$hb", "must not start with '$'"),
        ("reserved other", "$sys.x", "(reserved)"),
    ]
    cases: list[tuple[str, dict[str, Any], type[WireError], str]] = []
    for op, request_ in base.items():
        for name, topic, fragment in topics:
            bad = dict(request_) if topic is ... else {**request_, "topic": topic}
            cases.append((f"{op} topic {name}", bad, BadRequest, fragment))
    return cases


def _session_cases() -> list[tuple[str, dict[str, Any], type[WireError], str]]:
    """Returns: every bad session, lamport and ts field, for PUB and PUB_BATCH."""
    fields: list[tuple[str, dict[str, Any], str]] = [
        (
            "client_id empty",
            {"client_id": "", "seq": 1},
            "field 'client_id' must be a string of 1 to 128 characters",
        ),
        ("client_id too long", {"client_id": "c" * 129, "seq": 1}, "got 'cccc"),
        ("client_id int", {"client_id": 7, "seq": 1}, "field 'client_id' must be a string"),
        ("client_id bytes", {"client_id": b"c", "seq": 1}, "got bytes of length 1"),
        ("client_id without seq", {"client_id": "c"}, "field 'client_id' requires field 'seq'"),
        ("seq without client_id", {"seq": 1}, "field 'seq' requires field 'client_id'"),
        ("seq zero", {"client_id": "c", "seq": 0}, "field 'seq' must be an integer from 1 to 2**63-1, got 0"),
        ("seq negative", {"client_id": "c", "seq": -3}, "got -3"),
        ("seq float", {"client_id": "c", "seq": 1.0}, "field 'seq' must be an integer"),
        ("seq str", {"client_id": "c", "seq": "1"}, "got '1'"),
        ("seq over 63 bits", {"client_id": "c", "seq": 2**63}, "2**63-1, got 9223372036854775808"),
        ("ack_floor without client_id", {"ack_floor": 1}, "field 'ack_floor' requires field 'client_id'"),
        (
            "ack_floor zero",
            {"client_id": "c", "seq": 2, "ack_floor": 0},
            "field 'ack_floor' must be an integer from 1",
        ),
        (
            "ack_floor above seq",
            {"client_id": "c", "seq": 5, "ack_floor": 6},
            "field 'ack_floor' must be at most field 'seq' (5), got 6",
        ),
        ("lamport negative", {"lamport": -1}, "field 'lamport' must be an integer from 0 to 2**63-1, got -1"),
        ("lamport over 63 bits", {"lamport": 2**63}, "field 'lamport' must be an integer"),
        ("lamport float", {"lamport": 1.5}, "got 1.5"),
        ("ts negative", {"ts": -0.5}, "field 'ts' must be a finite number >= 0"),
        ("ts nan", {"ts": math.nan}, "got nan"),
        ("ts infinite", {"ts": math.inf}, "got inf"),
        ("ts str", {"ts": "now"}, "got 'now'"),
    ]
    base: dict[str, dict[str, Any]] = {
        "PUB": {"op": "PUB", "topic": "t", "data": b"x"},
        "PUB_BATCH": {"op": "PUB_BATCH", "topic": "t", "messages": [b"x"]},
    }
    return [
        (f"{op} {name}", {**request_, **extra}, BadRequest, fragment)
        for op, request_ in base.items()
        for name, extra, fragment in fields
    ]


BAD: list[tuple[str, Any, type[WireError], str]] = [
    # envelope
    ("not a map: int", 5, BadRequest, "request must be a map, got 5"),
    ("not a map: array", ["PING"], BadRequest, "request must be a map, got an array of 1 items"),
    ("not a map: str", "PING", BadRequest, "request must be a map"),
    ("not a map: nil", None, BadRequest, "request must be a map, got nil"),
    ("no op", {"topic": "t"}, BadRequest, "request has no field 'op'"),
    ("nil op", {"op": None}, BadRequest, "request has no field 'op'"),
    ("op int", {"op": 1}, BadRequest, "field 'op' must be a string, got 1"),
    ("op bytes", {"op": b"PING"}, BadRequest, "field 'op' must be a string, got bytes"),
    ("op bool", {"op": True}, BadRequest, "field 'op' must be a string, got True (a bool)"),
    ("op lower case", {"op": "ping"}, UnknownOp, "unknown op 'ping'"),
    (
        "op unknown",
        {"op": "DELETE"},
        UnknownOp,
        "known ops: ACK, FETCH, GROUPS, GROUP_CREATE, GROUP_DELETE, HISTORY, MEMBERS, MEMBER_ADD, MEMBER_REMOVE, NAK, "
        "PING, PUB, PUB_BATCH, STATUS, SUB, TOPICS",
    ),
    ("op empty", {"op": ""}, UnknownOp, "unknown op ''"),
    ("op PONG is a reply", {"op": "PONG"}, UnknownOp, "unknown op 'PONG'"),
    # PUB data
    ("pub no data", {"op": "PUB", "topic": "t"}, BadRequest, "PUB requires field 'data'"),
    ("pub nil data", {"op": "PUB", "topic": "t", "data": None}, BadRequest, "PUB requires field 'data'"),
    (
        "pub str data",
        {"op": "PUB", "topic": "t", "data": "hello"},
        BadRequest,
        "got a str: payloads are binary",
    ),
    ("pub str data hint", {"op": "PUB", "topic": "t", "data": "hello"}, BadRequest, "send bytes"),
    ("pub int data", {"op": "PUB", "topic": "t", "data": 5}, BadRequest, "field 'data' must be bytes, got 5"),
    ("pub list data", {"op": "PUB", "topic": "t", "data": [b"x"]}, BadRequest, "field 'data' must be bytes"),
    (
        "pub data too large",
        {"op": "PUB", "topic": "t", "data": b"x" * 11},
        TooLarge,
        "field 'data' is 11 bytes, over max_message_bytes (10)",
    ),
    # PUB_BATCH messages
    (
        "batch no messages",
        {"op": "PUB_BATCH", "topic": "t"},
        BadRequest,
        "PUB_BATCH requires field 'messages'",
    ),
    (
        "batch messages bytes",
        {"op": "PUB_BATCH", "topic": "t", "messages": b"xx"},
        BadRequest,
        "field 'messages' must be an array of bytes, got bytes of length 2",
    ),
    (
        "batch messages map",
        {"op": "PUB_BATCH", "topic": "t", "messages": {"a": b"x"}},
        BadRequest,
        "field 'messages' must be an array of bytes, got a map",
    ),
    (
        "batch empty",
        {"op": "PUB_BATCH", "topic": "t", "messages": []},
        BadRequest,
        "field 'messages' must hold 1 to 10000 items, got 0",
    ),
    (
        "batch too many",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b""] * (MAX_BATCH_MESSAGES + 1)},
        BadRequest,
        "got 10001",
    ),
    (
        "batch str item",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"a", "b"]},
        BadRequest,
        "field 'messages[1]' must be bytes, got a str",
    ),
    (
        "batch nil item",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"a", b"b", None]},
        BadRequest,
        "field 'messages[2]' must be bytes, got nil",
    ),
    (
        "batch nested item",
        {"op": "PUB_BATCH", "topic": "t", "messages": [[b"a"]]},
        BadRequest,
        "field 'messages[0]' must be bytes, got an array",
    ),
    (
        "batch item too large",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"a", b"x" * 11]},
        TooLarge,
        "field 'messages[1]' is 11 bytes, over max_message_bytes (10)",
    ),
    (
        "batch total too large",
        {"op": "PUB_BATCH", "topic": "t", "messages": [b"x" * 10] * 16 + [b"y"]},
        TooLarge,
        "field 'messages' totals 161 bytes, over 16 x max_message_bytes (160)",
    ),
    # HISTORY
    (
        "history from_offset negative",
        {"op": "HISTORY", "topic": "t", "from_offset": -1},
        BadRequest,
        "field 'from_offset' must be an integer from 0 to 2**63-1, got -1",
    ),
    ("history from_offset str", {"op": "HISTORY", "topic": "t", "from_offset": "0"}, BadRequest, "got '0'"),
    ("history from_offset float", {"op": "HISTORY", "topic": "t", "from_offset": 0.0}, BadRequest, "got 0.0"),
    (
        "history last zero",
        {"op": "HISTORY", "topic": "t", "last": 0},
        BadRequest,
        "field 'last' must be an integer from 1 to 2**63-1, got 0",
    ),
    (
        "history from_offset and last",
        {"op": "HISTORY", "topic": "t", "from_offset": 0, "last": 5},
        BadRequest,
        "HISTORY takes field 'from_offset' or 'last', not both",
    ),
    (
        "history limit over max",
        {"op": "HISTORY", "topic": "t", "limit": 5000},
        BadRequest,
        "field 'limit' must be an integer from 1 to 1000, got 5000",
    ),
    ("history limit 1001", {"op": "HISTORY", "topic": "t", "limit": 1001}, BadRequest, "got 1001"),
    ("history limit zero", {"op": "HISTORY", "topic": "t", "limit": 0}, BadRequest, "from 1 to 1000, got 0"),
    ("history limit float", {"op": "HISTORY", "topic": "t", "limit": 10.0}, BadRequest, "got 10.0"),
    (
        "history consistency unknown",
        {"op": "HISTORY", "topic": "t", "consistency": "strong"},
        BadRequest,
        "field 'consistency' must be one of 'local', 'linearizable', got 'strong'",
    ),
    (
        "history consistency case",
        {"op": "HISTORY", "topic": "t", "consistency": "LOCAL"},
        BadRequest,
        "got 'LOCAL'",
    ),
    ("history consistency int", {"op": "HISTORY", "topic": "t", "consistency": 1}, BadRequest, "got 1"),
    *_bad_topic_cases(),
    *_session_cases(),
    # consumer groups
    ("group create without pattern", {"op": "GROUP_CREATE", "group": "g"}, BadRequest,
     "GROUP_CREATE requires field 'pattern'"),
    ("group create bad pattern", {"op": "GROUP_CREATE", "group": "g", "pattern": "a.>.b"}, BadRequest, "'>'"),
    ("group create from_start int", {"op": "GROUP_CREATE", "group": "g", "pattern": "a", "from_start": 1},
     BadRequest, "field 'from_start' must be true or false, got 1"),
    ("group create ack_wait 0", {"op": "GROUP_CREATE", "group": "g", "pattern": "a", "ack_wait_ms": 0},
     BadRequest, "field 'ack_wait_ms' must be an integer from 1 to 86400000"),
    ("fetch max 1001", {"op": "FETCH", "group": "g", "member": "m", "max": 1001}, BadRequest,
     "field 'max' must be an integer from 1 to 1000"),
    ("fetch without member", {"op": "FETCH", "group": "g"}, BadRequest, "FETCH requires field 'member'"),
    ("ack no refs", {"op": "ACK", "group": "g", "member": "m", "refs": []}, BadRequest,
     "field 'refs' must be an array of 1 to 1000 [topic, offset] pairs"),
    ("ack ref not a pair", {"op": "ACK", "group": "g", "member": "m", "refs": [["t"]]}, BadRequest,
     "field 'refs[0]' must be a [topic, offset] pair"),
    ("ack ref negative offset", {"op": "ACK", "group": "g", "member": "m", "refs": [["t", -1]]}, BadRequest,
     "field 'refs[0][1]' must be an integer from 0 to 2**63-1"),
    ("nak ref pattern topic", {"op": "NAK", "group": "g", "member": "m", "refs": [["t.*", 1]]}, BadRequest,
     "patterns are for subscriptions"),
]


@pytest.mark.parametrize(("request_", "error", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_is_refused(request_: Any, error: type[WireError], fragment: str) -> None:
    with pytest.raises(error) as direct:
        validate_request(request_, SMALL)
    assert type(direct.value) is error
    assert fragment in direct.value.message
    with pytest.raises(error) as wired:
        parse_request(pack(request_), SMALL)
    assert wired.value.message == direct.value.message


INT_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"op": "PUB", "topic": "t", "data": b"x", "client_id": "c", "seq": 3}, "seq"),
    ({"op": "PUB", "topic": "t", "data": b"x", "client_id": "c", "seq": 3}, "ack_floor"),
    ({"op": "PUB", "topic": "t", "data": b"x"}, "lamport"),
    ({"op": "PUB", "topic": "t", "data": b"x"}, "ts"),
    ({"op": "PUB_BATCH", "topic": "t", "messages": [b"x"], "client_id": "c", "seq": 3}, "seq"),
    ({"op": "PUB_BATCH", "topic": "t", "messages": [b"x"], "client_id": "c", "seq": 3}, "ack_floor"),
    ({"op": "PUB_BATCH", "topic": "t", "messages": [b"x"]}, "lamport"),
    ({"op": "PUB_BATCH", "topic": "t", "messages": [b"x"]}, "ts"),
    ({"op": "HISTORY", "topic": "t"}, "from_offset"),
    ({"op": "HISTORY", "topic": "t"}, "last"),
    ({"op": "HISTORY", "topic": "t"}, "limit"),
]


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize(("base", "field"), INT_FIELDS, ids=[f"{b['op']}.{f}" for b, f in INT_FIELDS])
def test_bool_is_never_an_int(base: dict[str, Any], field: str, flag: bool) -> None:
    """msgpack true/false decode to Python bool, a subclass of int: it must not pass as 1 or 0."""
    assert validate_request({**base, field: 1}, LIMITS)[field] == 1  # the same field takes a real 1
    with pytest.raises(BadRequest, match=rf"field '{field}' must be .*, got {flag} \(a bool\)"):
        parse_request(pack({**base, field: flag}), LIMITS)


def test_error_messages_do_not_echo_huge_values() -> None:
    with pytest.raises(BadRequest) as info:
        validate_request(
            {"op": "PUB", "topic": "t", "data": b"x", "client_id": "c" * 100_000, "seq": 1}, LIMITS
        )
    assert len(info.value.message) < 200 and "100000 characters" in info.value.message
    with pytest.raises(UnknownOp) as unknown:
        validate_request({"op": "X" * 100_000}, LIMITS)
    assert len(unknown.value.message) < 250


# ----------------------------------------------------------------------------- topics and ids


def test_validate_topic_names_the_field() -> None:
    assert validate_topic("orders") == "orders"
    with pytest.raises(BadRequest, match="field 'stream' must be a string"):
        validate_topic(5, "stream")
    with pytest.raises(BadRequest, match="field 'topic' must be valid UTF-8"):
        validate_topic("a\ud800")


PATTERN_REFUSED = "is a pattern (a '*' or '>' token): patterns are for subscriptions"


@pytest.mark.parametrize(("topic", "fragment"), [
    ("orders.*", PATTERN_REFUSED),
    ("orders.>", PATTERN_REFUSED),
    ("*", PATTERN_REFUSED),
    ("a..b", "must not have an empty token"),
    (".a", "must not have an empty token"),
    ("a.", "must not have an empty token"),
])
@pytest.mark.parametrize("op", ["PUB", "PUB_BATCH"])
def test_a_publish_goes_to_one_topic_without_wildcard_or_empty_tokens(op: str, topic: str,
                                                                      fragment: str) -> None:
    payload = {"data": b"x"} if op == "PUB" else {"messages": [b"x"]}
    with pytest.raises(BadRequest) as refused:
        validate_request({"op": op, "topic": topic, **payload}, LIMITS)
    assert fragment in refused.value.message and repr(topic) in refused.value.message
    assert refused.value.code == "BAD_REQUEST"


def test_a_history_reads_one_topic_and_stored_names_stay_readable() -> None:
    for pattern in ("orders.*", "orders.>", "*.eu"):
        with pytest.raises(BadRequest, match=re.escape(PATTERN_REFUSED)):
            validate_request({"op": "HISTORY", "topic": pattern}, LIMITS)
    # A name stored before the rules (empty tokens) and a '*' inside a token (a literal) stay readable.
    for name in ("a..b", ".a", "a.", "a*b.c>", "orders.eu"):
        assert validate_request({"op": "HISTORY", "topic": name}, LIMITS)["topic"] == name
    assert validate_request({"op": "PUB", "topic": "a*b.c>", "data": b""}, LIMITS)["topic"] == "a*b.c>"


@pytest.mark.parametrize(("topic", "fragment"), [
    ("orders.>.x", "'>' may only be the last token"),
    ("orders.*.x*", "wildcards only as whole tokens"),  # a pattern; "orders.*x" alone is a literal name
    ("orders..*", "must not have an empty token"),
    ("$sys.*", "must not start with '$'"),
])
def test_a_sub_takes_a_pattern_only_when_it_is_a_valid_one(topic: str, fragment: str) -> None:
    for good in ("orders.*", "orders.>", ">", "*.eu", "a.*.c.>", "orders", "a..b", "a*b"):
        assert validate_request({"op": "SUB", "topic": good}, LIMITS) == {"op": "SUB", "topic": good}
    with pytest.raises(BadRequest, match="'topic' is not a valid pattern|must not start with") as refused:
        validate_request({"op": "SUB", "topic": topic}, LIMITS)
    assert fragment in refused.value.message


@pytest.mark.parametrize(
    ("rid", "echoed"),
    [
        (7, 7),
        (0, 0),
        (-1, -1),
        (2**64 - 1, 2**64 - 1),
        ("req-7", "req-7"),
        ("", ""),
        (b"\x00\x01", b"\x00\x01"),
        (True, None),
        (1.5, None),
        ([1], None),
        ({"a": 1}, None),
        (None, None),
    ],
)
def test_request_id_is_echoed_when_int_str_or_bytes(rid: Any, echoed: Any) -> None:
    request_ = {"op": "PING", "id": rid}
    assert request_id(request_) == echoed
    got_id, normalized = parse_request(pack(request_), LIMITS)
    assert got_id == echoed and type(got_id) is type(echoed)
    assert "id" not in normalized


def test_request_id_of_a_non_map_or_a_map_without_id() -> None:
    assert request_id(["PING"]) is None
    assert request_id("id") is None
    assert request_id({"op": "PING"}) is None


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"op": "HISTORY", "topic": "t", "limit": 5000, "id": 41}, BadRequest),
        ({"op": "FROB", "id": "abc"}, UnknownOp),
        ({"op": "PUB", "topic": "t", "data": b"x" * 11, "id": b"\x07"}, TooLarge),
        ({"id": 3}, BadRequest),
    ],
)
def test_errors_carry_the_request_id(request_: dict[str, Any], error: type[WireError]) -> None:
    with pytest.raises(error) as info:
        parse_request(pack(request_), SMALL)
    assert vars(info.value)["request_id"] == request_["id"]
    reply = parse_reply(error_reply(info.value))  # error_reply picks the attached id up by itself
    assert reply == {"ok": False, "error": error.code, "message": info.value.message, "id": request_["id"]}


def test_errors_before_the_map_is_read_carry_no_id() -> None:
    for frame in (b"", b"\xc1", pack(["PING", 7]), pack({"op": "PING", "id": 1})[:-1]):
        with pytest.raises(BadRequest) as info:
            parse_request(frame, LIMITS)
        assert vars(info.value)["request_id"] is None
        assert "id" not in parse_reply(error_reply(info.value))


# ----------------------------------------------------------------------------- hostile frames


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (b"", "not msgpack: empty frame"),
        (b"\xc1", "not msgpack: invalid msgpack type byte"),
        (b"\xff\xfe\xfd", "not msgpack"),
        (b"GET / HTTP/1.1\r\n\r\n", "not msgpack"),
        (pack({"op": "PING"}) + b"\x00", "not msgpack: 1 bytes after the end of the value"),
        (pack("PING") + pack("PING"), "not msgpack"),
        (b"\x81\xa2op\xa4PI\xff\xfe", "not msgpack"),  # invalid UTF-8 inside a str
        (b"\x81\x91\x01\xc0", "not msgpack"),  # an array as a map key: unhashable
        (b"\x81\xa2op", "not msgpack: incomplete input"),
        (
            b"\xdd\xff\xff\xff\xff",
            "not msgpack: an array of 4294967295 items declared, but only 0 bytes follow",
        ),
        (b"\x83\xa2op", "not msgpack: a map of 3 entries declared, but only 3 bytes follow"),
        (pack(["PING"]), "request must be a map, got an array of 1 items"),
        (pack([{"op": "PING"}]), "request must be a map"),
        (pack(b"\x81\xa2op\xa4PING"), "request must be a map, got bytes"),
        (pack(7), "request must be a map, got 7"),
        (pack(None), "request must be a map, got nil"),
    ],
)
def test_frames_that_are_not_a_request_map(frame: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(frame, LIMITS)
    assert type(info.value) is BadRequest
    assert fragment in info.value.message


def test_every_truncation_of_a_request_is_refused() -> None:
    frame = pack({"op": "PUB_BATCH", "topic": "t", "messages": [b"ab", b"cd"], "client_id": "c", "seq": 1})
    for cut in range(len(frame)):
        with pytest.raises(BadRequest, match="not msgpack"):
            parse_request(frame[:cut], LIMITS)


def test_a_frame_over_max_frame_bytes_is_too_large() -> None:
    frame = pack({"op": "PING", "pad": b"x" * SMALL.max_frame_bytes})
    with pytest.raises(TooLarge, match=rf"over the limit of {SMALL.max_frame_bytes}"):
        parse_request(frame, SMALL)
    assert parse_request(pack({"op": "PING", "pad": b"x" * 100}), SMALL)[1] == {"op": "PING"}
    # unpack_frame skips the size limit for small frames: no limit can be that small.
    assert protocol.FAST_PATH_BYTES < Limits(max_message_bytes=1).max_frame_bytes


def test_unpack_frame_keeps_str_and_bytes_apart_and_accepts_any_key_type() -> None:
    value = unpack_frame(pack({"s": "text", "b": b"bin", 1: [True, None, 1.5]}), LIMITS)
    assert value == {"s": "text", "b": b"bin", 1: [True, None, 1.5]}
    assert type(value["s"]) is str and type(value["b"]) is bytes


HUGE_DECLARED = {
    "str32": b"\xdb\xff\xff\xff\xff",
    "bin32": b"\xc6\xff\xff\xff\xff",
    "ext32": b"\xc9\xff\xff\xff\xff\x01",
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "array16 of 65535": b"\xdc\xff\xff",
}


@pytest.mark.parametrize("where", ["top level", "field value", "nested in a field"])
@pytest.mark.parametrize("header", list(HUGE_DECLARED.values()), ids=list(HUGE_DECLARED))
def test_huge_declared_lengths_are_refused_without_allocating(header: bytes, where: str) -> None:
    if where == "top level":
        frame = header + b"\x00" * 16
    elif where == "field value":
        frame = raw_map(("op", pack("PUB")), ("topic", pack("t")), ("x", header + b"\x00" * 16))
    else:
        frame = raw_map(("op", pack("PUB")), ("x", b"\x91\x91" + header + b"\x00" * 16))
    peak = peak_allocation(lambda: parse_request(frame, LIMITS))
    assert peak < 256 * 1024


def test_nested_array_bomb_at_the_top_is_refused_at_once() -> None:
    """A few KB of nested "array of 10,000" headers: msgpack alone would pre-allocate 80 MB."""
    frame = (b"\xdd" + (10_000).to_bytes(4, "big")) * 1000
    assert peak_allocation(lambda: parse_request(frame, LIMITS)) < 256 * 1024


def test_nested_array_bomb_inside_a_field_stays_bounded() -> None:
    """Deeper than the header-read levels, arrays are capped at 1024 items: a bounded few MB."""
    bomb = (b"\xdd" + (1024).to_bytes(4, "big")) * 1000
    frame = raw_map(("op", pack("PUB")), ("x", b"\x91" + bomb))
    assert peak_allocation(lambda: parse_request(frame, LIMITS)) < 12 * 1024 * 1024
    too_wide = raw_map(("op", pack("PUB")), ("x", b"\x91" + (b"\xdd" + (1025).to_bytes(4, "big")) * 3))
    with pytest.raises(BadRequest, match="exceeds max_array_len"):
        parse_request(too_wide, LIMITS)


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(BadRequest, match="not msgpack"):
        parse_request(raw_map(("op", pack("PING")), ("x", b"\x91" * 100_000 + b"\xc0")), LIMITS)


# ----------------------------------------------------------------------------- hypothesis


def msgpack_trees(allow_nan: bool = True) -> st.SearchStrategy[Any]:
    """Returns: a strategy of values msgpack can carry: scalars, arrays and str-keyed maps, nested."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=allow_nan)
        | st.text(max_size=20)
        | st.binary(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
        max_leaves=12,
    )


msgpack_values = msgpack_trees()

FIELD_NAMES = ["op", "id", "topic", "data", "messages", "client_id", "seq", "ack_floor", "lamport", "ts"]
FIELD_NAMES += ["from_offset", "last", "limit", "consistency", "unknown"]

field_values = st.one_of(
    msgpack_values,
    st.sampled_from(sorted(OPS)),
    st.sampled_from(["t", "orders", "$hb", "", "local", "linearizable", "c"]),
    st.integers(min_value=-2, max_value=1002),
    st.lists(st.binary(max_size=12), max_size=20),
    st.binary(max_size=12),
)

requests = st.builds(
    lambda op, fields: {**fields, "op": op},
    st.sampled_from([*sorted(OPS), "NOPE"]),
    st.dictionaries(st.sampled_from(FIELD_NAMES[1:]), field_values, max_size=8),
)


def _parse_or_wire_error(frame: bytes, limits: Limits) -> dict[str, Any] | None:
    """Returns: the validated request, or None when parse_request raised a WireError (anything else fails)."""
    try:
        _rid, normalized = parse_request(frame, limits)
    except WireError as err:
        assert isinstance(err.message, str) and err.message
        return None
    assert normalized["op"] in OPS
    return normalized


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_wire_errors(frame: bytes) -> None:
    _parse_or_wire_error(frame, SMALL)


@settings(max_examples=300)
@given(msgpack_values)
def test_random_msgpack_values_only_ever_raise_wire_errors(value: Any) -> None:
    _parse_or_wire_error(pack(value), SMALL)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_mutated_requests_only_ever_raise_wire_errors(noise: bytes, data: st.DataObject) -> None:
    frame = bytearray(
        pack({"op": "PUB_BATCH", "topic": "t", "messages": [b"ab", b"c"], "client_id": "c", "seq": 2})
    )
    position = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    frame[position : position + len(noise)] = noise
    _parse_or_wire_error(bytes(frame), SMALL)


@settings(max_examples=500)
@given(requests)
def test_random_requests_are_refused_cleanly_or_normalized_to_a_fixed_point(request_: dict[str, Any]) -> None:
    normalized = _parse_or_wire_error(pack(request_), SMALL)
    if normalized is None:
        return
    assert normalized["op"] == request_["op"]
    assert set(normalized) <= {"op", *FIELD_NAMES}
    assert validate_request(normalized, SMALL) == normalized
    assert parse_request(pack(normalized), SMALL)[1] == normalized


def _mostly_valid(valid: st.SearchStrategy[Any], *edges: Any) -> st.SearchStrategy[Any]:
    """Returns: `valid` values mostly, else one of `edges` (just out of range) or any strange value."""
    strange = st.one_of(field_values, st.sampled_from([True, False, 1.5, None, "\ud800", b"t"]))
    odd = st.sampled_from(edges) if edges else strange
    return st.integers(min_value=0, max_value=9).flatmap(lambda k: valid if k < 7 else odd if k < 9 else strange)


plain_pubs = st.fixed_dictionaries(
    {"op": st.just("PUB"),
     "topic": _mostly_valid(st.sampled_from(["t", "orders", "é" * 127, "x" * 255, "orders.eu", "a*b.c>"]),
                            "", "x" * 256, "é" * 128, "a\0b", "$sys", "\ud800", "orders.*", "a.>", "a..b",
                            ".a", "a."),
     "data": _mostly_valid(st.binary(max_size=10), b"x" * 11, bytearray(b"x"), "text")},
    optional={
        "client_id": _mostly_valid(st.sampled_from(["c", "c" * 128]), "", "c" * 129, b"c"),
        "seq": _mostly_valid(st.integers(min_value=1, max_value=60) | st.just(2**63 - 1), 0, -1, 2**63, True),
        "ack_floor": _mostly_valid(st.integers(min_value=1, max_value=60), 0, 2**63, True),
        "lamport": _mostly_valid(st.integers(min_value=0, max_value=60) | st.just(2**63 - 1), -1, 2**63, True),
        "ts": _mostly_valid(st.none() | st.floats(min_value=0, max_value=2e9) | st.integers(0, 2**40),
                            -1, -0.5, math.inf, math.nan, True, "1"),
        "id": st.integers(min_value=0, max_value=9),
    },
)


def _table_only(msg: dict[str, Any], limits: Limits) -> dict[str, Any] | WireError:
    """Returns: what the table path alone makes of `msg` (the straight-line PUB path switched off)."""
    original = protocol._plain_pub
    protocol._plain_pub = lambda msg, limits: None  # type: ignore[assignment]
    try:
        return validate_request(msg, limits)
    except WireError as err:
        return err
    finally:
        protocol._plain_pub = original


@settings(max_examples=3000)
@given(plain_pubs)
def test_the_straight_line_pub_path_agrees_with_the_table(msg: dict[str, Any]) -> None:
    expected = _table_only(msg, SMALL)
    fast = protocol._plain_pub(msg, SMALL)
    if fast is not None:
        assert fast == expected  # it decides only what the table accepts, and alike
    try:
        got: dict[str, Any] | WireError = validate_request(msg, SMALL)
    except WireError as err:
        got = err
    if isinstance(expected, WireError):
        assert type(got) is type(expected) and got.message == expected.message  # type: ignore[union-attr]
    else:
        assert got == expected


def test_the_straight_line_pub_path_takes_the_usual_publisher_request() -> None:
    msg = {"op": "PUB", "topic": "orders", "data": b"x" * 100, "client_id": "c" * 32, "seq": 9,
           "ack_floor": 4, "id": 9, "lamport": 3}
    assert protocol._plain_pub(msg, Limits()) == {"op": "PUB", "topic": "orders", "data": b"x" * 100,
                                               "client_id": "c" * 32, "seq": 9, "ack_floor": 4, "lamport": 3}
    with_ts = protocol._plain_pub({**msg, "ts": 1.5}, Limits())
    assert with_ts is not None and with_ts["ts"] == 1.5  # what Client.publish sends
    assert protocol._plain_pub({**msg, "ts": -1.0}, Limits()) is None  # left to the table, which says why


@given(
    st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ("ok", "id")), msgpack_trees(False), max_size=6
    ),
    st.none() | st.integers(min_value=0, max_value=2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10),
)
def test_ok_reply_round_trips_through_parse_reply(fields: dict[str, Any], rid: Any) -> None:
    reply = parse_reply(ok_reply(fields, rid))
    expected = {"ok": True, **fields}
    if rid is not None:
        expected["id"] = rid
    assert reply == expected


# ----------------------------------------------------------------------------- replies


def test_ok_reply_layout() -> None:
    assert msgpack.unpackb(ok_reply({"op": "PONG", "node": "n1"}), raw=False) == {
        "ok": True,
        "op": "PONG",
        "node": "n1",
    }
    assert msgpack.unpackb(ok_reply({"offset": 3}, 9), raw=False) == {"ok": True, "offset": 3, "id": 9}
    assert parse_reply(ok_reply({"ok": False}))["ok"] is True  # fields cannot override ok
    assert parse_reply(ok_reply({"data": b"\x00"}))["data"] == b"\x00"  # bytes stay bytes


def test_error_reply_round_trips_to_the_same_exception() -> None:
    for err in (
        BadRequest("field 'topic' must be a string, got 5"),
        TooLarge("too big"),
        UnknownOp("unknown op 'X'"),
        Unavailable("no quorum"),
        NotLeader("not the leader", "n2", "tcp://127.0.0.1:9102"),
    ):
        reply = parse_reply(error_reply(err, "r1"))
        assert reply["ok"] is False and reply["error"] == err.code and reply["id"] == "r1"
        back = error_from_reply(reply)
        assert type(back) is type(err) and back.message == err.message
    leader = error_from_reply(parse_reply(error_reply(NotLeader("no", "n2", "tcp://h:1"))))
    assert isinstance(leader, NotLeader) and (leader.leader, leader.leader_addr) == ("n2", "tcp://h:1")


def test_error_reply_prefers_the_explicit_id() -> None:
    err = BadRequest("bad")
    setattr(err, "request_id", 1)  # noqa: B010
    assert parse_reply(error_reply(err, 2))["id"] == 2
    assert parse_reply(error_reply(err))["id"] == 1
    assert "id" not in parse_reply(error_reply(BadRequest("bad")))


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (b"", "malformed reply: not msgpack"),
        (b"\xc1", "malformed reply: not msgpack"),
        (pack({"ok": True})[:-1], "malformed reply: not msgpack"),
        (pack([True]), "malformed reply: expected a map, got an array"),
        (pack({"error": "X"}), "malformed reply: field 'ok' must be a bool, got nil"),
        (pack({"ok": 1}), "field 'ok' must be a bool, got 1"),
        (pack({"ok": "true"}), "field 'ok' must be a bool"),
    ],
)
def test_parse_reply_refuses_malformed_replies(frame: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest, match="malformed reply") as info:
        parse_reply(frame)
    assert fragment in info.value.message


# ----------------------------------------------------------------------------- fan-out


def test_fanout_frames_layout() -> None:
    record = {"topic": "orders", "offset": 4, "data": b"\x00payload", "lamport": 17, "ts": 1.25, "index": 99}
    frames = fanout_frames("orders", record)
    assert len(frames) == 2
    assert frames[0] == b"orders\0" == topic_prefix("orders")
    assert msgpack.unpackb(frames[1], raw=False) == record
    assert fanout_frames("zamówienia", record)[0] == "zamówienia".encode() + b"\0"


def test_topic_prefix_matches_exactly_one_topic() -> None:
    """The trailing NUL keeps a SUB on "a" from receiving "ab" (zmq SUB filters by prefix)."""
    assert not fanout_frames("ab", {})[0].startswith(topic_prefix("a"))
    assert fanout_frames("a", {})[0].startswith(topic_prefix("a"))
    with pytest.raises(BadRequest, match="must not start with"):
        topic_prefix("$hb")
    with pytest.raises(BadRequest, match="must not contain NUL"):
        topic_prefix("a\0")


def test_heartbeat_frames_layout() -> None:
    record = {"node": "n1", "term": 3, "commit_index": 42, "time": 1_700_000_000.5}
    frames = heartbeat_frames(record)
    assert frames[0] == HEARTBEAT_PREFIX == b"$hb\0"
    assert msgpack.unpackb(frames[1], raw=False) == record
    # No valid topic can collide with the heartbeat stream: "$" names are refused.
    with pytest.raises(BadRequest):
        validate_topic("$hb")
