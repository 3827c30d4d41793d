"""Frame families of the client port (docs/design.md section 3): random, crafted and mutated requests
of every op, in the envelopes a DEALER or a REQ sends."""

from __future__ import annotations

import random
from typing import Any, Callable, Final

import msgpack

from tests.fuzz import mutate, values
from tests.fuzz.sample import CLIENT, Context, Sample

OPS: Final = ("PING", "PUB", "PUB_BATCH", "HISTORY", "SUB", "TOPICS", "STATUS",
               "GROUP_CREATE", "GROUP_DELETE", "GROUPS", "FETCH", "ACK", "NAK",
               "MEMBERS", "MEMBER_ADD", "MEMBER_REMOVE")
"""Every op of the contract (wiber/protocol.py's table); a unit test keeps the two equal."""

TOPICS: Final = ("fuzz", "fuzz.a", "fuzz.b.c", "orders.eu", "é.topic", "x" * 255)
PATTERNS: Final = ("fuzz.*", "fuzz.>", ">", "orders.eu", "*.eu")
GROUPS: Final = ("g1", "g2", "workers", "é-group")

LAST_LAMPORTS: Final = 2**63 - 2**20
"""A stored lamport from here to 2**63 - 1 would leave the cluster's Lamport clock (almost) no room:
every later PUB refused. The broker now refuses a lamport far ahead of its clock; `far_lamport`
sends such lamports to show it, and the other families keep theirs below."""


def within_lamport_room(body: bytes) -> bytes:
    """Returns: `body`, or when it decodes as a map whose ``lamport`` is an int of `LAST_LAMPORTS`
    or more, the same map with a lamport of 2**62 (see `LAST_LAMPORTS`)."""
    try:
        req = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises many types: not a map the node would read a lamport from
        return body
    if not isinstance(req, dict) or type(req.get("lamport")) is not int or req["lamport"] < LAST_LAMPORTS:
        return body
    req["lamport"] = 2**62
    return values.pack(req)


def _request_id(rng: random.Random) -> Any:
    return rng.choice((rng.randrange(1 << 31), "req-" + str(rng.randrange(1000)), b"\x00id", 2**63 - 1))


def _session(rng: random.Random, ctx: Context, req: dict[str, Any]) -> None:
    """Adds the optional session and time fields of PUB and PUB_BATCH, each now and then."""
    if rng.random() < 0.4:
        seq = rng.choice((1, 2, rng.randrange(1, 1 << 20), 2**63 - 1))
        req["client_id"] = rng.choice(("fuzz-1", "fuzz-2", "c" * 128))
        req["seq"] = seq
        if rng.random() < 0.5:
            req["ack_floor"] = rng.randint(1, seq) if seq < 1 << 20 else seq
    if rng.random() < 0.3:
        req["lamport"] = rng.choice((0, 1, rng.randrange(1 << 32), 2**62))
    if rng.random() < 0.3:
        req["ts"] = ctx.wall + rng.uniform(-5, 5)


def valid_request(rng: random.Random, ctx: Context) -> dict[str, Any]:
    """Returns: a request the node accepts, of any op (at times just over a size limit: TOO_LARGE)."""
    op = rng.choice(OPS)
    req: dict[str, Any] = {"op": op}
    if rng.random() < 0.5:
        req["id"] = _request_id(rng)
    topic = rng.choice(TOPICS)
    if op == "PUB":
        req["topic"] = topic
        req["data"] = values.random_bytes(rng, 512)
        if rng.random() < 0.02:
            req["data"] = b"\x00" * rng.choice((ctx.max_message_bytes, ctx.max_message_bytes + 1))
        _session(rng, ctx, req)
    elif op == "PUB_BATCH":
        req["topic"] = topic
        req["messages"] = [values.random_bytes(rng, 64) for _ in range(rng.choice((1, 2, 5, 20)))]
        if rng.random() < 0.02:
            req["messages"] = [b""] * rng.choice((10_000, 10_001))
        _session(rng, ctx, req)
    elif op == "HISTORY":
        req["topic"] = topic
        if rng.random() < 0.5:
            req["from_offset"] = rng.choice((0, 1, rng.randrange(100), 2**63 - 1))
        else:
            req["last"] = rng.choice((1, 10, 1000, 2**63 - 1))
        if rng.random() < 0.5:
            req["limit"] = rng.choice((1, 100, 1000))
        if rng.random() < 0.5:
            req["consistency"] = rng.choice(("local", "linearizable"))
    elif op == "SUB":
        req["topic"] = topic
    elif op in ("MEMBER_ADD", "MEMBER_REMOVE"):
        req["node"] = "n9"  # in no config: refused, so the fuzzed cluster keeps its voters
    elif op in ("GROUP_CREATE", "GROUP_DELETE", "FETCH", "ACK", "NAK"):
        req["group"] = rng.choice(GROUPS)
        if op == "GROUP_CREATE":
            req["pattern"] = rng.choice(PATTERNS)
            if rng.random() < 0.5:
                req["ack_wait_ms"] = rng.choice((1, 100, 30_000, 86_400_000))
            if rng.random() < 0.5:
                req["from_start"] = rng.random() < 0.5
        elif op != "GROUP_DELETE":
            req["member"] = rng.choice(("m1", "m2"))
        if op == "FETCH":
            req["max"] = rng.choice((1, 10, 1000))
            if rng.random() < 0.3:
                req["wait_ms"] = rng.choice((0, 10, 100))
        elif op in ("ACK", "NAK"):
            req["refs"] = [[rng.choice(TOPICS), rng.choice((0, rng.randrange(100), 2**63 - 1))]
                           for _ in range(rng.choice((1, 3, 1000)))]
    return req


def _dealer(body: bytes) -> tuple[bytes, ...]:
    return (b"", body)


def random_bytes(rng: random.Random, ctx: Context) -> Sample:
    """Any bytes at all as the request frame."""
    return Sample(CLIENT, "client.random_bytes", _dealer(values.random_bytes(rng, 2048)))


def random_msgpack(rng: random.Random, ctx: Context) -> Sample:
    """A random value tree (maps keyed mostly by real field names) as the request."""
    body = within_lamport_room(values.pack(values.tree(rng)))
    return Sample(CLIENT, "client.random_msgpack", _dealer(body))


def crafted(rng: random.Random, ctx: Context) -> Sample:
    """Hand-built msgpack: huge declared lengths, invalid UTF-8, deep nesting, bad timestamps."""
    return Sample(CLIENT, "client.crafted", _dealer(values.crafted(rng)))


def valid(rng: random.Random, ctx: Context) -> Sample:
    """A well-formed request of any op (the paths bad input must not disturb, exercised under it)."""
    return Sample(CLIENT, "client.valid", _dealer(values.pack(valid_request(rng, ctx))))


def field_mutated(rng: random.Random, ctx: Context) -> Sample:
    """A valid request with fields swapped for boundary values, dropped, added or retyped."""
    body = values.pack(mutate.mutate_tree(rng, valid_request(rng, ctx)))
    return Sample(CLIENT, "client.field_mutated", _dealer(within_lamport_room(body)))


def byte_mutated(rng: random.Random, ctx: Context) -> Sample:
    """A valid request's bytes flipped, cut, grown or widened into uint64 extremes."""
    body = mutate.mutate_bytes(rng, values.pack(valid_request(rng, ctx)))
    return Sample(CLIENT, "client.byte_mutated", _dealer(within_lamport_room(body)))


def far_lamport(rng: random.Random, ctx: Context) -> Sample:
    """A valid PUB or PUB_BATCH with a lamport from `LAST_LAMPORTS` to 2**63 - 1 (the protocol's
    bound): once stored, the cluster's Lamport clock has (almost) no room left."""
    req = valid_request(rng, ctx)
    while req["op"] not in ("PUB", "PUB_BATCH"):
        req = valid_request(rng, ctx)
    req["lamport"] = rng.choice((2**63 - 1, 2**63 - 2, 2**63 - 10_001, LAST_LAMPORTS))
    return Sample(CLIENT, "client.far_lamport", _dealer(values.pack(req)))


def framing(rng: random.Random, ctx: Context) -> Sample:
    """A request in an odd envelope: no delimiter, extra frames, empty frames, many parts."""
    body = values.pack(valid_request(rng, ctx)) if rng.random() < 0.7 else values.random_bytes(rng, 64)
    return Sample(CLIENT, "client.framing", tuple(mutate.mutate_parts(rng, [b"", body])))


def via_req(rng: random.Random, ctx: Context) -> Sample:
    """A request (valid, mutated or random) from a REQ socket, which adds its own envelope."""
    maker = rng.choice((valid, field_mutated, byte_mutated, random_msgpack))
    inner = maker(rng, ctx)
    return Sample(CLIENT, "client.req", (inner.frames[-1],), socket="req")


FAMILIES: Final[dict[str, tuple[Callable[[random.Random, Context], Sample], float]]] = {
    "client.random_bytes": (random_bytes, 1.0),
    "client.random_msgpack": (random_msgpack, 1.5),
    "client.crafted": (crafted, 1.5),
    "client.valid": (valid, 1.0),
    "client.field_mutated": (field_mutated, 3.0),
    "client.byte_mutated": (byte_mutated, 2.0),
    "client.far_lamport": (far_lamport, 0.02),
    "client.framing": (framing, 0.7),
    "client.req": (via_req, 0.7),
}
"""Family name -> (maker, weight)."""
