"""Randomized properties of wiber.broker (hypothesis).

* Model: random workloads (few topics, clients and seqs, so retries, floors, window overflow,
  eviction and every retention limit happen often) applied to the broker and to `NaiveBroker`, a
  direct transcription of the rules with no care for speed; every result and every topic's
  content must agree after every entry. The invariants of the module docstring are checked too.
* Determinism: the same workload applied to a broker and to one restored from its snapshot at a
  random point ends with identical snapshot bytes and identical results.
* Hostile bytes: `decode_entry` raises only MalformedEntry, `Broker.restore` only SnapshotError;
  whatever decodes re-encodes to the same ops.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import msgpack
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wiber.broker import (
    ENTRY_FORMAT,
    Broker,
    BrokerSettings,
    MalformedEntry,
    PubOp,
    PubResult,
    Record,
    SnapshotError,
    decode_entry,
    encode_entry,
)
from wiber.broker.sessions import MAX_SESSION_BYTES, MAX_SESSIONS_BYTES, answer_bytes, session_bytes
from wiber.config import RetentionConfig
from wiber.errors import BadRequest, SessionExpired

TOPICS = ("a", "b", "c")
CLIENTS = (None, "p", "q", "r", "s")

# ----------------------------------------------------------------------------- strategies


@st.composite
def pub_ops(draw: st.DrawFn) -> PubOp:
    """Returns: a valid PubOp over a small space of topics, clients and seqs."""
    client_id = draw(st.sampled_from(CLIENTS))
    seq = ack_floor = None
    if client_id is not None:
        seq = draw(st.integers(1, 8))
        ack_floor = draw(st.none() | st.integers(1, seq))
    is_batch = draw(st.booleans())
    count = draw(st.integers(1, 3)) if is_batch else 1
    messages = tuple(draw(st.binary(max_size=6)) for _ in range(count))
    return PubOp(
        topic=draw(st.sampled_from(TOPICS)),
        messages=messages,
        batch=is_batch,
        client_id=client_id,
        seq=seq,
        ack_floor=ack_floor,
        lamport=draw(st.sampled_from((0, 0, 1, 5, 30, 2**63 - 1))),
        late=draw(st.booleans()),
    )


Step = tuple[str, Any]
"""("entry", (ts delta, ops)) | ("noop", None) | ("bad", data)."""

steps = st.lists(
    st.one_of(
        st.tuples(st.just("entry"), st.tuples(st.floats(-5, 10), st.lists(pub_ops(), max_size=6))),
        st.tuples(st.just("noop"), st.none()),
        st.tuples(st.just("bad"), st.binary(max_size=8)),
    ),
    max_size=30,
)

limits = st.builds(
    RetentionConfig,
    max_messages=st.none() | st.integers(1, 5),
    max_bytes=st.none() | st.integers(1, 12),
    max_age_s=st.none() | st.sampled_from((1.0, 4.5, 12.0)),
)

broker_settings = st.builds(
    BrokerSettings,
    session_window=st.integers(1, 4),
    max_sessions=st.integers(1, 3),
    max_sessions_bytes=st.sampled_from((MAX_SESSIONS_BYTES, 1300, 2600)),
    retention=limits,
    topic_retention=st.dictionaries(st.sampled_from(TOPICS), limits, max_size=2),
)


def entries(workload: list[Step]) -> list[tuple[str, Any]]:
    """Returns: the workload with absolute entry times and encoded entries: (kind, (ts, ops, data))."""
    ts = 1000.0
    out: list[tuple[str, Any]] = []
    for kind, value in workload:
        if kind == "entry":
            delta, ops = value
            ts = max(0.0, ts + delta)
            out.append((kind, (ts, ops, encode_entry(ts, ops))))
        else:
            out.append((kind, value))
    return out


def run(broker: Broker, kind: str, value: Any, index: int) -> list[PubResult]:
    """Apply one step to `broker` at `index`. Returns: its results."""
    if kind == "noop":
        broker.apply_noop(index)
        return []
    if kind == "bad":
        return broker.apply(index, value)
    return broker.apply(index, value[2])


def outcome(results: list[PubResult]) -> list[tuple[Any, ...]]:
    """Returns: results in a comparable form (the error by class and message)."""
    return [(r.reply, type(r.error).__name__, getattr(r.error, "message", None), r.records) for r in results]


# ----------------------------------------------------------------------------- the naive model


@dataclasses.dataclass
class NaiveSession:
    floor: int
    last_index: int
    answers: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)


class NaiveBroker:
    """The rules of the brief, transcribed as plainly as possible (quadratic, and fine for tests)."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.kept: dict[str, list[Record]] = {}
        self.end: dict[str, int] = {}
        self.sessions: dict[str, NaiveSession] = {}
        self.evicted: list[str] = []
        self.last_lamport = 0
        self.last_ts = 0.0
        self.late_count = 0

    def apply(self, index: int, entry_ts: float, ops: list[PubOp]) -> list[tuple[Any, ...]]:
        ts = max(entry_ts, self.last_ts)
        self.last_ts = ts
        out: list[tuple[Any, ...]] = []
        touched: list[str] = []
        for op in ops:
            if op.client_id is None:
                out.append(self.store(op, index, ts, touched))
                continue
            cid, seq = op.client_id, op.seq
            assert seq is not None
            session = self.sessions.get(cid)
            if session is None:
                if cid in self.evicted:
                    out.append(("expired",))
                    continue
                if len(self.sessions) >= self.settings.max_sessions:
                    victim = min(self.sessions, key=lambda c: (self.sessions[c].last_index, c))
                    del self.sessions[victim]
                    self.evicted.append(victim)
                    self.evicted = self.evicted[-self.settings.max_sessions :]
                session = self.sessions[cid] = NaiveSession(op.ack_floor or 1, index)
                self.shrink(cid)
            session.last_index = index
            session.floor = max(session.floor, op.ack_floor or 1)
            session.answers = {s: a for s, a in session.answers.items() if s >= session.floor}
            if seq in session.answers:
                out.append(("ok", {**session.answers[seq], "duplicate": True}, ()))
            elif seq < session.floor:
                out.append(("expired",))
            else:
                result = self.store(op, index, ts, touched)
                if result[0] == "refused":
                    out.append(result)
                    continue
                session.answers[seq] = result[1]
                while len(session.answers) > self.settings.session_window:
                    lowest = min(session.answers)
                    del session.answers[lowest]
                    session.floor = lowest + 1
                while sum(answer_bytes(_as_answer(a)) for a in session.answers.values()) > MAX_SESSION_BYTES:
                    lowest = min(session.answers)
                    del session.answers[lowest]
                    session.floor = lowest + 1
                self.shrink(cid)
                out.append(result)
        for topic in touched:
            retention = self.settings.topic_retention.get(topic, self.settings.retention)
            kept = self.kept[topic]
            if retention.max_messages is not None:
                del kept[: max(0, len(kept) - retention.max_messages)]
            while retention.max_bytes is not None and sum(len(r.data) for r in kept) > retention.max_bytes:
                del kept[0]
        for topic, kept in self.kept.items():
            max_age = self.settings.topic_retention.get(topic, self.settings.retention).max_age_s
            if max_age is not None:
                kept[:] = [r for r in kept if not r.ts < ts - max_age]
        return out

    def nbytes(self) -> int:
        """Returns: the bytes the sessions count for, counted from scratch."""
        return sum(session_bytes(cid) + sum(answer_bytes(_as_answer(a)) for a in s.answers.values())
                   for cid, s in self.sessions.items())

    def shrink(self, keep: str) -> None:
        """Evict the least recently active sessions but `keep` while over the bytes cap."""
        while self.nbytes() > self.settings.max_sessions_bytes and len(self.sessions) > 1:
            victim = min((c for c in self.sessions if c != keep), key=lambda c: (self.sessions[c].last_index, c))
            del self.sessions[victim]
            self.evicted.append(victim)
            self.evicted = self.evicted[-self.settings.max_sessions :]

    def store(self, op: PubOp, index: int, ts: float, touched: list[str]) -> tuple[Any, ...]:
        if max(self.last_lamport + 1, op.lamport + 1) + len(op.messages) - 1 > 2**63 - 1:
            return ("refused",)  # a lamport at or above 2**63 is never stored
        self.late_count += op.late
        records = []
        for data in op.messages:
            lamport = max(self.last_lamport + 1, op.lamport + 1)
            self.last_lamport = lamport
            offset = self.end.get(op.topic, 0)
            self.end[op.topic] = offset + 1
            records.append(Record(op.topic, offset, data, lamport, ts, index, op.late))
        self.kept.setdefault(op.topic, []).extend(records)
        touched.append(op.topic)
        reply = {
            "topic": op.topic,
            "offset": records[0].offset,
            "index": index,
            "lamport": records[0].lamport,
            "ts": ts,
            "duplicate": False,
        }
        if op.batch:
            reply["count"] = len(records)
        return ("ok", reply, tuple(records))


def _as_answer(reply: dict[str, Any]) -> tuple[str, int, int, int, int, float]:
    """Returns: a kept reply as the broker's answer tuple (what its byte count reads)."""
    return (reply["topic"], reply["offset"], reply.get("count", 0), reply["index"], reply["lamport"], reply["ts"])


def as_naive(result: PubResult) -> tuple[Any, ...]:
    """Returns: a broker result in the naive model's form."""
    if result.error is not None:
        assert result.reply is None and result.records == ()
        if isinstance(result.error, BadRequest):
            return ("refused",)
        assert isinstance(result.error, SessionExpired)
        return ("expired",)
    return ("ok", result.reply, result.records)


def check_invariants(broker: Broker, settings: BrokerSettings, seen: list[Record]) -> None:
    """Check the module docstring's invariants on `broker`; `seen` is every record stored so far."""
    for earlier, later in itertools.pairwise(seen):
        assert later.lamport > earlier.lamport and later.ts >= earlier.ts
        assert later.index >= earlier.index
    assert broker.session_count <= settings.max_sessions
    table = broker.sessions
    assert table.nbytes == sum(session_bytes(c) + sum(map(answer_bytes, s.answers.values()))
                               for c, s in table.by_client.items())
    assert table.nbytes <= settings.max_sessions_bytes or len(table) == 1
    for topic, end in broker.topics().items():
        history = broker.history(topic, limit=10**6)
        offsets = [m["offset"] for m in history["messages"]]
        assert offsets == list(range(history["first_offset"], end))
        retention = settings.retention_of(topic)
        if retention.max_messages is not None:
            assert len(offsets) <= retention.max_messages
        if retention.max_bytes is not None:
            assert sum(len(m["data"]) for m in history["messages"]) <= retention.max_bytes
        if retention.max_age_s is not None:
            assert all(not m["ts"] < broker.last_ts - retention.max_age_s for m in history["messages"])


# ----------------------------------------------------------------------------- properties

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(broker_settings, steps)
def test_the_broker_agrees_with_the_naive_model_and_keeps_its_invariants(
    config: BrokerSettings, workload: list[Step]
) -> None:
    broker, model = Broker(config), NaiveBroker(config)
    seen: list[Record] = []
    for index, (kind, value) in enumerate(entries(workload), start=1):
        results = run(broker, kind, value, index)
        if kind == "entry":
            ts, ops, _ = value
            assert [as_naive(r) for r in results] == model.apply(index, ts, ops)
            seen += [Record._make(record) for result in results for record in result.records]
            assert broker.late_count == model.late_count
        else:
            assert results == []
        assert broker.applied_index == index
        for topic in TOPICS:
            assert broker.history(topic, limit=10**6)["messages"] == [
                r.to_wire() for r in model.kept.get(topic, [])
            ]
            assert broker.end_offset(topic) == model.end.get(topic, 0)
        check_invariants(broker, config, seen)


@FAST
@given(broker_settings, steps, st.data())
def test_a_broker_restored_mid_way_ends_byte_for_byte_equal(
    config: BrokerSettings, workload: list[Step], data: st.DataObject
) -> None:
    plan = entries(workload)
    cut = data.draw(st.integers(0, len(plan)), label="cut")
    original = Broker(config)
    for index, (kind, value) in enumerate(plan[:cut], start=1):
        run(original, kind, value, index)
    restored = Broker.restore(original.snapshot(), config)
    assert restored.snapshot() == original.snapshot()
    for index, (kind, value) in enumerate(plan[cut:], start=cut + 1):
        assert outcome(run(original, kind, value, index)) == outcome(run(restored, kind, value, index))
    assert restored.snapshot() == original.snapshot()
    assert restored.topics() == original.topics()
    assert restored.late_count == original.late_count
    for topic in TOPICS:
        assert restored.history(topic, last=3) == original.history(topic, last=3)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_entry_on_random_bytes_raises_only_malformed_entry(data: bytes) -> None:
    try:
        ts, ops = decode_entry(data)
    except MalformedEntry:
        return
    assert decode_entry(encode_entry(ts, ops)) == (ts, ops)


op_fields = st.sampled_from(
    (
        "a",
        "$x",
        "",
        "c",
        b"m",
        b"",
        (b"m", b"n"),
        (),
        ("m",),
        0,
        1,
        2,
        3,
        -1,
        2**63,
        True,
        None,
        1.5,
        {"a": 1},
    )
)
"""Field values near the valid ones, so that random ops are often valid and often just not."""


@st.composite
def near_ops(draw: st.DrawFn) -> list[Any]:
    """Returns: the encoded form of a valid op, often with one field replaced, dropped or added."""
    op = draw(pub_ops())
    payload: Any = op.messages if op.batch else op.messages[0]
    fields: list[Any] = [op.topic, payload, int(op.late), op.lamport]
    if op.client_id is not None:
        fields += [op.client_id, op.seq, op.ack_floor]
    change = draw(st.sampled_from(("none", "replace", "replace", "drop", "add")))
    if change == "replace":
        fields[draw(st.integers(0, len(fields) - 1))] = draw(op_fields)
    elif change == "drop":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif change == "add":
        fields.append(draw(op_fields))
    return fields


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        near_ops() | st.recursive(op_fields, lambda c: st.lists(c, max_size=4), max_leaves=8), max_size=6
    ),
    st.sampled_from((0, 1.5, 2e9, -1.0, float("nan"), float("inf"), "1", None, True)),
    st.sampled_from((ENTRY_FORMAT, ENTRY_FORMAT, 0, 2, "1", None)),
)
def test_decode_entry_on_random_structures_raises_only_malformed_entry(
    items: list[Any], ts: Any, version: Any
) -> None:
    data = msgpack.packb([version, ts, items], use_bin_type=True)
    try:
        decoded_ts, ops = decode_entry(data)
    except MalformedEntry:
        return
    assert decode_entry(encode_entry(decoded_ts, ops)) == (decoded_ts, ops)


@settings(max_examples=300, deadline=None)
@given(st.lists(pub_ops(), max_size=10), st.floats(0, 2e9), st.data())
def test_entries_round_trip_and_survive_corruption(ops: list[PubOp], ts: float, data: st.DataObject) -> None:
    encoded = encode_entry(ts, ops)
    assert decode_entry(encoded) == (ts, ops)
    assume(encoded)
    position = data.draw(st.integers(0, len(encoded) - 1))
    corrupted = bytearray(encoded)
    corrupted[position] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for damaged in (bytes(corrupted), encoded[:cut]):
        try:
            decode_entry(damaged)
        except MalformedEntry:
            pass


@settings(max_examples=300, deadline=None)
@given(broker_settings, steps, st.data())
def test_restore_of_damaged_snapshots_raises_only_snapshot_error(
    config: BrokerSettings, workload: list[Step], data: st.DataObject
) -> None:
    broker = Broker(config)
    for index, (kind, value) in enumerate(entries(workload), start=1):
        run(broker, kind, value, index)
    snapshot = broker.snapshot()
    position = data.draw(st.integers(0, len(snapshot) - 1))
    corrupted = bytearray(snapshot)
    corrupted[position] ^= data.draw(st.integers(1, 255))
    for damaged in (
        bytes(corrupted),
        snapshot[: data.draw(st.integers(0, len(snapshot) - 1))],
        data.draw(st.binary()),
    ):
        try:
            restored = Broker.restore(damaged, config)
        except SnapshotError:
            continue
        restored.snapshot()  # whatever passed the checks is a usable state
        restored.apply(restored.applied_index + 1, encode_entry(2000.0, [PubOp("a", (b"x",), False, "p", 1)]))
