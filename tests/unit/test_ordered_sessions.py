"""The ``ordered`` flag of PUB and PUB_BATCH (docs/design.md section 3): a session stores an ordered
request only as its next seq, so one client's ordered messages are stored in seq order.

The hazard it closes (found with real nodes, tests/integration/test_publisher_order.py): a node answers
NOT_LEADER to seqs 1..k of a client's stream, becomes leader, and stores k+1.. from the rest of the
same stream; the client's resend of 1..k then lands after them. What these tests pin, on the broker
alone: such a later seq is refused OUT_OF_SEQUENCE and stores nothing; the earlier ones, then the later
ones, are stored when they come again; duplicates and expired seqs are answered as before; ack_floor
past a seq the client gave up on ends the gap; requests without the flag (a `Client.publish` with
``dedup``) are stored with gaps and out of order as before; the flag survives the entry codec and the
protocol's two validation paths, and costs nothing to an op without it.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from tests.unit.test_broker import T0, Log, batch, pub
from wiber.broker import (
    ENTRY_FORMAT,
    Broker,
    BrokerSettings,
    MalformedEntry,
    PubOp,
    decode_entry,
    encode_entry,
    pub_op_from_request,
)
from wiber.errors import BadRequest, OutOfSequence, SessionExpired, error_from_reply
from wiber.protocol import Limits, error_reply, parse_reply, validate_request

LIMITS = Limits()


def ordered(seq: int, ack_floor: int | None = None, data: bytes | None = None, client_id: str = "p") -> PubOp:
    """Returns: an ordered PUB of client `client_id` carrying `seq` (its data, unless given)."""
    return pub("t", data if data is not None else b"%d" % seq, client_id=client_id, seq=seq,
               ack_floor=ack_floor, ordered=True)


def test_a_seq_past_a_gap_is_refused_and_stored_after_the_gap_is_filled() -> None:
    log = Log()
    for seq in (1, 2, 3):
        assert log.one(ordered(seq, ack_floor=1)).reply is not None
    # Seq 4 was refused on its way (NOT_LEADER from a node that then became leader); 5 and 6 arrive.
    for seq in (5, 6):
        refused = log.one(ordered(seq, ack_floor=4))
        assert refused.reply is None and refused.records == ()
        assert isinstance(refused.error, OutOfSequence)
        assert "stores seq 4 next" in refused.error.message
    assert log.datas("t") == [b"1", b"2", b"3"]
    for seq in (4, 5, 6):  # the client sends them again, in order
        assert log.one(ordered(seq, ack_floor=4)).reply["duplicate"] is False  # type: ignore[index]
    assert log.datas("t") == [b"%d" % seq for seq in range(1, 7)]


def test_the_refusal_travels_as_out_of_sequence_on_the_wire() -> None:
    log = Log()
    log.one(ordered(1))
    err = log.one(ordered(3)).error
    assert isinstance(err, OutOfSequence)
    reply = parse_reply(error_reply(err, 3))
    assert reply["error"] == "OUT_OF_SEQUENCE" and reply["id"] == 3
    assert isinstance(error_from_reply(reply), OutOfSequence)


def test_one_entry_holding_a_gap_stores_up_to_it_and_refuses_what_follows() -> None:
    log = Log()
    results = log.apply(ordered(1), ordered(2), ordered(4), ordered(5), ordered(3))
    assert [r.error is None for r in results] == [True, True, False, False, True]
    assert log.datas("t") == [b"1", b"2", b"3"]


def test_duplicates_and_expired_seqs_are_answered_as_without_the_flag() -> None:
    log = Log()
    for seq in (1, 2, 3):
        log.one(ordered(seq))
    again = log.one(ordered(2))
    assert again.reply is not None and again.reply["duplicate"] and again.reply["offset"] == 1
    log.one(ordered(4, ack_floor=3))
    assert isinstance(log.one(ordered(2)).error, SessionExpired)
    assert log.datas("t") == [b"1", b"2", b"3", b"4"]


def test_ack_floor_past_a_seq_the_client_gave_up_on_ends_the_gap() -> None:
    log = Log()
    log.apply(ordered(1), ordered(2))
    assert isinstance(log.one(ordered(4, ack_floor=3)).error, OutOfSequence)  # 3 still awaited
    assert log.one(ordered(4, ack_floor=4)).error is None  # the client gave up on 3 (it failed)
    assert isinstance(log.one(ordered(3)).error, SessionExpired)  # and 3 can never come after 4
    assert log.datas("t") == [b"1", b"2", b"4"]


def test_a_new_session_starts_at_its_floor() -> None:
    log = Log()
    assert isinstance(log.one(ordered(3, ack_floor=1)).error, OutOfSequence)
    assert log.broker.session_count == 1  # the refusal is activity, as an expired retry is
    assert log.one(ordered(1, ack_floor=1)).error is None
    fresh = Log()
    assert fresh.one(ordered(7, ack_floor=7)).error is None  # seqs 1-6 failed before reaching the log
    assert isinstance(fresh.one(ordered(9, ack_floor=7)).error, OutOfSequence)


def test_batches_take_one_seq_each_in_order() -> None:
    log = Log()
    first = batch("t", b"a", b"b", client_id="p", seq=1, ordered=True)
    third = batch("t", b"e", b"f", client_id="p", seq=3, ordered=True)
    second = batch("t", b"c", b"d", client_id="p", seq=2, ordered=True)
    results = log.apply(first, third, second, third)
    assert [type(r.error) for r in results] == [type(None), OutOfSequence, type(None), type(None)]
    assert log.datas("t") == [b"a", b"b", b"c", b"d", b"e", b"f"]


def test_the_next_seq_follows_the_highest_answer_past_the_session_window() -> None:
    log = Log(BrokerSettings(session_window=3))
    for seq in range(1, 11):
        assert log.one(ordered(seq)).error is None
    assert isinstance(log.one(ordered(12)).error, OutOfSequence)
    assert isinstance(log.one(ordered(5)).error, SessionExpired)
    assert log.one(ordered(11)).error is None


def test_restored_sessions_expect_the_same_next_seq() -> None:
    log = Log()
    for seq in (1, 2, 3):
        log.one(ordered(seq))
    restored = Log(broker=Broker.restore(log.broker.snapshot(), BrokerSettings()))
    restored.index = log.index
    assert isinstance(restored.one(ordered(5)).error, OutOfSequence)
    assert restored.one(ordered(4)).error is None
    assert restored.datas("t") == [b"1", b"2", b"3", b"4"]


def test_without_the_flag_one_client_id_stores_gaps_and_any_order() -> None:
    # Client.publish(topic, data, dedup=(client_id, seq)): a consumer's publish_key numbers by the
    # input's offsets, with gaps and out of order; those requests never carry ordered.
    log = Log()
    for seq in (7, 3, 10, 4):
        assert log.one(pub("t", b"%d" % seq, client_id="k", seq=seq)).error is None
    assert log.datas("t") == [b"7", b"3", b"10", b"4"]
    # An ordered request after them follows the highest answer kept.
    assert isinstance(log.one(ordered(12, client_id="k")).error, OutOfSequence)
    assert log.one(ordered(11, client_id="k")).error is None


def test_the_flag_survives_the_entry_codec_and_an_op_without_it_packs_as_before() -> None:
    ops = [ordered(1, ack_floor=1), batch("t", b"a", b"b", client_id="p", seq=2, ordered=True, late=True),
           pub("t", client_id="p", seq=3), pub("u")]
    assert decode_entry(encode_entry(T0, ops)) == (T0, ops)
    plain = pub("t", b"x", client_id="p", seq=3, ack_floor=2, lamport=9)
    assert encode_entry(T0, [plain]) == msgpack.packb(
        (ENTRY_FORMAT, T0, [("t", b"x", 0, 9, "p", 3, 2)]), use_bin_type=True)
    assert msgpack.unpackb(encode_entry(T0, [ordered(3)]))[2][0][2] == 2  # flags bit 1


def test_ordered_needs_a_client_id_in_the_codec() -> None:
    with pytest.raises(ValueError, match="ordered needs a client_id"):
        encode_entry(T0, [pub("t", ordered=True)])
    with pytest.raises(MalformedEntry, match="ordered needs a client_id"):
        decode_entry(msgpack.packb([ENTRY_FORMAT, T0, [["t", b"x", 2, 0]]]))
    with pytest.raises(MalformedEntry, match="flags"):
        decode_entry(msgpack.packb([ENTRY_FORMAT, T0, [["t", b"x", 4, 0, "p", 1, None]]]))


@pytest.mark.parametrize("op", ["PUB", "PUB_BATCH"])
def test_the_protocol_takes_ordered_as_a_bool_with_a_client_id(op: str) -> None:
    payload: dict[str, Any] = {"data": b"x"} if op == "PUB" else {"messages": [b"x", b"y"]}
    request = {"op": op, "topic": "t", **payload, "client_id": "p", "seq": 2, "ack_floor": 1, "ordered": True}
    valid = validate_request(request, LIMITS)
    assert valid["ordered"] is True and pub_op_from_request(valid).ordered
    assert validate_request(valid, LIMITS) == valid  # a fixed point
    assert not pub_op_from_request(validate_request({**request, "ordered": False}, LIMITS)).ordered
    assert "ordered" not in validate_request({k: v for k, v in request.items() if k != "ordered"}, LIMITS)
    with pytest.raises(BadRequest, match="ordered"):
        validate_request({**request, "ordered": 1}, LIMITS)
    without_session = {k: v for k, v in request.items() if k not in ("client_id", "seq", "ack_floor")}
    with pytest.raises(BadRequest, match="requires field 'client_id'"):
        validate_request(without_session, LIMITS)


def test_the_fast_pub_path_and_the_table_agree_on_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    from wiber import protocol

    base = {"op": "PUB", "topic": "t", "data": b"x", "client_id": "p", "seq": 2}
    fast = {value: protocol._plain_pub({**base, "ordered": value}, LIMITS) for value in (True, False, None)}
    assert protocol._plain_pub({**base, "ordered": 1}, LIMITS) is None  # left to the table, which names it
    assert protocol._plain_pub({"op": "PUB", "topic": "t", "data": b"x", "ordered": True}, LIMITS) is None
    monkeypatch.setattr(protocol, "_plain_pub", lambda msg, limits: None)  # the table alone
    for value, decided in fast.items():
        assert decided is not None and decided == validate_request({**base, "ordered": value}, LIMITS)
