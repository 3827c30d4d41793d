"""Hardening of the broker and the client protocol (issue 15): no number at or above 2**63 is taken
or stored, no NaN time reaches a message, and dedup sessions are capped in bytes, evicting alike on
every node."""

from __future__ import annotations

import math

import msgpack
import pytest

from wiber import protocol
from wiber.broker import Broker, BrokerSettings, PubOp
from wiber.broker import state as state_module
from wiber.broker.sessions import MAX_SESSION_BYTES, answer_bytes, session_bytes
from wiber.broker.state import LAMPORT_MAX_AHEAD
from wiber.errors import BadRequest, SessionExpired

LIMITS = protocol.Limits()


@pytest.mark.parametrize("field, value", [
    ("lamport", 2**63), ("lamport", 2**64 - 1), ("seq", 2**63), ("ack_floor", 2**63), ("ts", math.nan),
    ("ts", math.inf), ("ts", -1.0),
])
def test_a_publish_with_a_number_out_of_range_is_a_bad_request(field: str, value: object) -> None:
    """Client numbers at or above 2**63 (and times that are not finite epoch seconds) never get past the codec."""
    request = {"op": "PUB", "topic": "t", "data": b"x", "client_id": "c", "seq": 2**63 - 1, field: value}
    with pytest.raises(BadRequest):
        protocol.parse_request(msgpack.packb(request, use_bin_type=True), LIMITS)


@pytest.mark.parametrize("field", ["from_offset", "last"])
def test_a_history_offset_at_2_63_is_a_bad_request(field: str) -> None:
    with pytest.raises(BadRequest):
        protocol.validate_request({"op": "HISTORY", "topic": "t", field: 2**63}, LIMITS)


def test_a_lamport_far_ahead_of_the_clock_is_refused_and_the_next_pub_is_stored() -> None:
    """One PUB at lamport 2**63 - 1 once spent the cluster's Lamport clock: every later PUB was
    refused. A client's lamport comes from messages it saw, so one more than `LAMPORT_MAX_AHEAD`
    ahead of the clock is BAD_REQUEST and stores nothing."""
    broker = Broker(BrokerSettings())
    broker.apply_ops(1, 1.0, [PubOp("t", (b"a",), False, lamport=100)])
    [far] = broker.apply_ops(2, 1.0, [PubOp("t", (b"x",), False, lamport=2**63 - 2)])
    assert isinstance(far.error, BadRequest) and "ahead of the cluster's Lamport clock" in str(far.error)
    [near] = broker.apply_ops(3, 1.0, [PubOp("t", (b"b",), False, lamport=101 + LAMPORT_MAX_AHEAD)])
    assert near.error is None and broker.last_lamport == 102 + LAMPORT_MAX_AHEAD
    [after] = broker.apply_ops(4, 1.0, [PubOp("t", (b"c",), False)])
    assert after.error is None and broker.end_offset("t") == 3


def test_no_lamport_at_or_above_2_63_is_ever_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PUB at the largest lamport a client may send, or a batch that would run past 2**63 - 1, is
    refused with BAD_REQUEST and stores nothing (it once stored lamport 2**63, which no codec of the
    cluster then accepted); the broker goes on. (The clock is let jump here, to reach the edge.)"""
    monkeypatch.setattr(state_module, "LAMPORT_MAX_AHEAD", 2**63)
    broker = Broker(BrokerSettings())
    [top] = broker.apply_ops(1, 1.0, [PubOp("t", (b"a",), False, lamport=2**63 - 1)])
    assert isinstance(top.error, BadRequest) and top.records == ()
    [batch] = broker.apply_ops(2, 1.0, [PubOp("t", (b"a",) * 10, True, "c", 1, lamport=2**63 - 5)])
    assert isinstance(batch.error, BadRequest)
    [edge] = broker.apply_ops(3, 1.0, [PubOp("t", (b"a", b"b"), True, lamport=2**63 - 3)])
    assert edge.error is None and [r[3] for r in edge.records] == [2**63 - 2, 2**63 - 1]
    assert broker.last_lamport == 2**63 - 1 and broker.end_offset("t") == 2
    [after] = broker.apply_ops(4, 1.0, [PubOp("t", (b"c",), False)])
    assert isinstance(after.error, BadRequest) and broker.end_offset("t") == 2
    assert broker.sessions.by_client["c"].answers == {}  # the refused batch's seq keeps no answer


def test_a_nan_entry_time_keeps_the_previous_ts() -> None:
    """Should the leader's clock ever give NaN, the stored ts stays the previous one, never NaN."""
    broker = Broker(BrokerSettings())
    broker.apply_ops(1, 5.0, [PubOp("t", (b"a",), False)])
    [result] = broker.apply_ops(2, math.nan, [PubOp("t", (b"b",), False)])
    assert result.records[0][4] == 5.0 and broker.last_ts == 5.0


def test_one_session_keeps_at_most_its_byte_cap() -> None:
    """A client with a huge window and 255-byte topics keeps at most MAX_SESSION_BYTES of answers;
    the lowest go first and its floor rises past them, as past the window."""
    broker = Broker(BrokerSettings(session_window=1_000_000))
    topic = "t" * 255
    seqs = MAX_SESSION_BYTES // answer_bytes((topic, 0, 0, 0, 0, 0.0)) + 100
    for seq in range(1, seqs + 1):
        broker.apply_ops(seq, 1.0, [PubOp(topic, (b"x",), False, "c", seq)])
    session = broker.sessions.by_client["c"]
    assert session.nbytes <= MAX_SESSION_BYTES < session.nbytes + answer_bytes(session.answers[seqs])
    assert session.floor == min(session.answers) > 1
    [old] = broker.apply_ops(seqs + 1, 1.0, [PubOp(topic, (b"x",), False, "c", 1)])
    assert isinstance(old.error, SessionExpired)


def _flood(broker: Broker, first_index: int, clients: range) -> None:
    for k in clients:
        broker.apply_ops(first_index + k, 1.0, [PubOp("t", (b"x",), False, f"flood-{k}", 1)])


def test_all_sessions_keep_at_most_their_byte_cap_and_evict_alike_after_a_restore() -> None:
    """10,000 fresh client_ids within a 1 MiB cap: the bytes stay under it (least recently active
    evicted first); a node restored from a snapshot midway evicts exactly as one that never stopped."""
    settings = BrokerSettings(max_sessions_bytes=1 << 20)
    live = Broker(settings)
    live.apply_ops(1, 1.0, [PubOp("t", (b"x",), False, "victim", 1)])
    _flood(live, 2, range(5_000))
    restored = Broker.restore(live.snapshot(), settings)
    for broker in (live, restored):
        _flood(broker, 2, range(5_000, 10_000))
        table = broker.sessions
        assert table.nbytes <= 1 << 20
        assert table.nbytes == sum(session_bytes(c) + s.nbytes for c, s in table.by_client.items())
        assert "victim" not in table.by_client  # without authentication a flood evicts other clients:
        # their retries get SESSION_EXPIRED (never a second copy); with it, sessions are per client name
    assert live.snapshot() == restored.snapshot()
    assert sorted(live.sessions.by_client) == sorted(restored.sessions.by_client)
