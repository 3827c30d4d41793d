"""The node side of consumer groups (`wiber.node.consumers`): requests to ops, FETCH replies within
max_reply_bytes, parked FETCHes, and consumer errors crossing the wire as their own classes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_consumers import T0, Log, pub
from wiber import protocol
from wiber.broker.consumers import AckOp, CreateGroupOp, DeleteGroupOp, Delivered, FetchOp, NakOp
from wiber.errors import GroupConflict, PendingCapReached
from wiber.errors import BadRequest, ConsumerError, TooManyGroups, UnknownGroup, error_from_reply
from wiber.node.consumers import (
    ParkedFetches,
    consumer_op_from_request,
    deliveries_to_wire,
    group_pattern,
    result_fields,
)
from wiber.node.waiting import Waiter


def request(**fields: Any) -> dict[str, Any]:
    """Returns: `fields` as the node sees a request after the protocol validated it."""
    return protocol.validate_request(fields, protocol.Limits())


def test_requests_become_the_ops_the_log_carries() -> None:
    assert consumer_op_from_request(request(op="FETCH", group="g", member="m", max=7)) == FetchOp("g", "m", 7)
    assert consumer_op_from_request(request(op="ACK", group="g", member="m", refs=[["t", 3]])) == \
        AckOp("g", "m", (("t", 3),))
    assert consumer_op_from_request(request(op="NAK", group="g", member="m", refs=[["t", 3]])) == \
        NakOp("g", "m", (("t", 3),))
    assert consumer_op_from_request(request(op="GROUP_CREATE", group="g", pattern="a.*")) == \
        CreateGroupOp("g", "a.*", 30_000, False)


@pytest.mark.parametrize("name", ["a*b", "x>", "$sys"])
def test_a_name_the_broker_refuses_is_a_bad_request_before_the_log(name: str) -> None:
    with pytest.raises(BadRequest):
        consumer_op_from_request(request(op="FETCH", group=name, member="m"))


def test_the_pattern_a_request_needs_to_read_is_its_groups() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "orders.>"))
    assert group_pattern(log.broker, request(op="FETCH", group="g", member="m")) == "orders.>"
    assert group_pattern(log.broker, request(op="GROUP_CREATE", group="h", pattern="x.*")) == "x.*"
    with pytest.raises(UnknownGroup):
        group_pattern(log.broker, request(op="ACK", group="nope", member="m", refs=[["t", 1]]))


def fetched(log: Log, count: int) -> list[Delivered]:
    """Returns: the deliveries of a FETCH of `count` of group g by member m."""
    result = log.one(FetchOp("g", "m", count))
    assert result.error is None
    return list(result.deliveries)


def test_a_fetch_reply_carries_data_up_to_max_bytes_then_lists_the_rest_without() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t.>", from_start=True))
    log.apply(*[pub("t.a", bytes([n]) * 100) for n in range(4)])
    log.apply(*[pub("t.b", b"b" * 100) for _ in range(2)])
    deliveries = fetched(log, 6)
    whole = deliveries_to_wire(log.broker, deliveries, 10_000)
    assert [(item["topic"], item["offset"], item["data"], item["delivery"]) for item in whole] == [
        ("t.a", 0, b"\0" * 100, 1), ("t.a", 1, b"\1" * 100, 1), ("t.a", 2, b"\2" * 100, 1), ("t.a", 3, b"\3" * 100, 1),
        ("t.b", 0, b"b" * 100, 1), ("t.b", 1, b"b" * 100, 1)]
    assert all(set(item) >= {"lamport", "ts", "index"} for item in whole)
    cut = deliveries_to_wire(log.broker, deliveries, 250)
    assert [("data" in item) for item in cut] == [True, True, False, False, False, False]
    assert [(item["topic"], item["offset"]) for item in cut] == [(i["topic"], i["offset"]) for i in whole]
    tiny = deliveries_to_wire(log.broker, deliveries, 1)  # one message always fits, as in HISTORY
    assert [("data" in item) for item in tiny] == [True, False, False, False, False, False]


def test_results_become_reply_fields() -> None:
    log = Log()
    created = log.one(CreateGroupOp("g", "t", from_start=True))
    assert result_fields(log.broker, created, 100) == {"group": "g", "created": True}
    log.publish("t", 2)
    fetch = log.one(FetchOp("g", "m", 5))
    assert [item["offset"] for item in result_fields(log.broker, fetch, 100)["messages"]] == [0, 1]
    acked = log.one(AckOp("g", "m", (("t", 0), ("t", 9))))
    assert result_fields(log.broker, acked, 100) == {"group": "g", "acked": 1, "unknown": 1}
    nakked = log.one(NakOp("g", "m", (("t", 1),)))
    assert result_fields(log.broker, nakked, 100) == {"group": "g", "nakked": 1, "unknown": 0}


def waiter(group: str) -> Waiter[FetchOp]:
    return Waiter([b"client"], None, 100.0, FetchOp(group, "m", 10))


def test_parked_fetches_wake_for_work_end_at_their_time_or_when_the_group_goes() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=1000))
    log.one(CreateGroupOp("gone", "u"))
    parked = ParkedFetches()
    early, late, orphan = waiter("g"), waiter("g"), waiter("gone")
    parked.park(early, until=5.0)
    parked.park(late, until=50.0)
    parked.park(orphan, until=50.0)
    assert parked.sort_out(log.broker, T0, now=1.0) == ([], [])
    assert parked.sort_out(log.broker, T0, now=5.0) == ([], [early])
    log.apply(pub("t", b"x"))
    log.one(DeleteGroupOp("gone"))
    assert parked.sort_out(log.broker, T0, now=6.0) == ([late], [orphan])
    assert len(parked) == 0
    parked.park(waiter("g"), until=50.0)
    assert len(parked.drain()) == 1 and len(parked) == 0


def test_a_due_redelivery_wakes_a_parked_fetch_at_its_deadline() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=1000, from_start=True))
    log.publish("t", 1)
    assert len(fetched(log, 1)) == 1
    parked = ParkedFetches()
    waiting = waiter("g")
    parked.park(waiting, until=50.0)
    assert log.broker.groups.has_work("g", T0 + 0.5) is False
    assert parked.sort_out(log.broker, T0 + 0.5, now=1.0) == ([], [])
    assert parked.sort_out(log.broker, T0 + 1.0, now=1.5) == ([waiting], [])
    assert log.broker.groups.has_work("nope", T0) is None


@pytest.mark.parametrize("error", [
    UnknownGroup("no consumer group 'g'"), GroupConflict("exists"), TooManyGroups("1000"), PendingCapReached("full")])
def test_a_consumer_error_crosses_the_wire_as_its_own_class(error: ConsumerError) -> None:
    reply = protocol.parse_reply(protocol.error_reply(error, 7))
    assert reply["error"] == "BAD_REQUEST" and reply["reason"] == error.reason
    again = error_from_reply(reply)
    assert type(again) is type(error) and again.message == error.message
    assert isinstance(again, BadRequest)  # a client that knows only the codes still sees BAD_REQUEST


def test_an_unknown_reason_is_still_a_consumer_error() -> None:
    again = error_from_reply({"ok": False, "error": "BAD_REQUEST", "message": "m", "reason": "FUTURE"})
    assert type(again) is ConsumerError


def test_a_delivered_message_that_retention_removed_is_listed_without_data() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", from_start=True))
    log.publish("t", 4)
    deliveries = fetched(log, 4)
    log.broker.store.trim(log.broker.topic_states()["t"].id, 2)  # as retention would, before the reply is built
    log.broker.topic_states()["t"].first = 2
    items = deliveries_to_wire(log.broker, deliveries, 10_000)
    assert [(item["offset"], "data" in item) for item in items] == [(0, False), (1, False), (2, True), (3, True)]
