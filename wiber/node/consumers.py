"""The node side of consumer groups (docs/design.md section 11): requests to ops, results to replies,
and FETCHes parked until their group has something to deliver.

A consumer op travels like a PUB: the leader puts it in the turn's entry and answers when the entry is
applied, from the op's result (`wiber.broker.consumers`). Two things happen only here, on the leader:

* A FETCH reply carries the delivered messages' data, read from the record store when the entry is
  applied, up to ``max_reply_bytes`` (at least one message); past that the deliveries are listed without
  ``data`` and the client reads them with HISTORY (a delivery is never lost to the reply size).
* A FETCH whose group has nothing to deliver costs no log entry: it is answered empty at once, or with
  ``wait_ms`` parked here until the group has work (a PUB to a matching topic, a redelivery falling due)
  or its wait ends. Each loop turn looks at the parked ones: O(parked).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wiber.broker import Broker, record_to_wire
from wiber.broker.consumers import (
    AckOp,
    AckResult,
    ConsumerOp,
    ConsumerResult,
    CreateGroupOp,
    CreateResult,
    DeleteGroupOp,
    DeleteResult,
    Delivered,
    FetchOp,
    FetchResult,
    NakOp,
    NakResult,
    consumer_op_problem,
)
from wiber.errors import BadRequest, UnknownGroup
from wiber.node.waiting import Waiter

__all__ = ["ParkedFetches", "consumer_op_from_request", "deliveries_to_wire", "group_pattern", "result_fields"]


def consumer_op_from_request(msg: dict[str, Any]) -> ConsumerOp:
    """Returns: the log op of a validated consumer request (op GROUP_CREATE, GROUP_DELETE, FETCH, ACK, NAK).

    Raises: BadRequest: a name the broker refuses (the protocol checks types and lengths only).
    """
    kind = msg["op"]
    op: ConsumerOp
    if kind == "FETCH":
        op = FetchOp(msg["group"], msg["member"], msg["max"])
    elif kind == "ACK":
        op = AckOp(msg["group"], msg["member"], tuple(msg["refs"]))
    elif kind == "NAK":
        op = NakOp(msg["group"], msg["member"], tuple(msg["refs"]))
    elif kind == "GROUP_CREATE":
        op = CreateGroupOp(msg["group"], msg["pattern"], msg["ack_wait_ms"], msg["from_start"])
    elif kind == "GROUP_DELETE":
        op = DeleteGroupOp(msg["group"])
    else:
        raise ValueError(f"{kind!r} is not a consumer op")
    problem = consumer_op_problem(op)
    if problem is not None:
        raise BadRequest(problem)
    return op


def group_pattern(broker: Broker, msg: dict[str, Any]) -> str:
    """Returns: the pattern whose read right a consumer request needs: its own (GROUP_CREATE) or its group's.

    Raises: UnknownGroup: the group does not exist on this node.
    """
    if msg["op"] == "GROUP_CREATE":
        return str(msg["pattern"])
    group = broker.groups.groups.get(msg["group"])
    if group is None:
        raise UnknownGroup(f"no consumer group {msg['group']!r}: create it first")
    return group.pattern.text


def deliveries_to_wire(broker: Broker, deliveries: Iterable[Delivered], max_bytes: int) -> list[dict[str, Any]]:
    """Returns: each delivery as a FETCH reply item: a HISTORY item plus ``delivery`` (its count).

    Data is read in runs of consecutive offsets of one topic, until `max_bytes` of it (at least one
    message's); the items past that, and any whose message retention removed meanwhile, carry only
    ``topic``, ``offset`` and ``delivery``.
    """
    items: list[dict[str, Any]] = []
    pending = list(deliveries)
    topics = broker.topic_states()
    budget = max_bytes
    given = False  # whether an item carries data yet: the first one always may
    position = 0
    while position < len(pending):
        first = pending[position]
        stop = position + 1
        while (stop < len(pending) and pending[stop].topic == first.topic
               and pending[stop].offset == pending[stop - 1].offset + 1):
            stop += 1
        topic = topics.get(first.topic)
        records: dict[int, Any] = {}
        if topic is not None and (budget > 0 or not given):
            low = max(first.offset, topic.first)  # what retention left of the run
            high = min(pending[stop - 1].offset + 1, topic.end)
            if low < high:
                records = {record[1]: record for record in broker.store.read(topic.id, low, high, max(budget, 1))}
        for delivered in pending[position:stop]:
            record = records.get(delivered.offset)
            if record is None or (budget <= 0 and given):
                items.append({"topic": delivered.topic, "offset": delivered.offset, "delivery": delivered.delivery_count})
                if topic is not None and delivered.offset >= topic.first:
                    budget = 0  # cut by the budget, not by retention: no later run is read either
                continue
            item = record_to_wire(record)
            item["delivery"] = delivered.delivery_count
            budget -= len(record[2])
            given = True
            items.append(item)
        position = stop
    return items


def result_fields(broker: Broker, result: ConsumerResult, max_reply_bytes: int) -> dict[str, Any]:
    """Returns: the ok reply fields of a consumer op's result (the caller answers its error instead)."""
    if type(result) is FetchResult:
        return {"group": result.group, "messages": deliveries_to_wire(broker, result.deliveries, max_reply_bytes)}
    if type(result) is AckResult:
        return {"group": result.group, "acked": result.acked, "unknown": result.unknown}
    if type(result) is NakResult:
        return {"group": result.group, "nakked": result.nakked, "unknown": result.unknown}
    if type(result) is CreateResult:
        return {"group": result.group, "created": result.created}
    if type(result) is DeleteResult:
        return {"group": result.group, "deleted": result.deleted}
    raise TypeError(f"{type(result).__name__} is not a consumer result")


class ParkedFetches:
    """FETCHes waiting for their group to have something to deliver, each until its own time."""

    def __init__(self) -> None:
        self._parked: list[tuple[float, Waiter[FetchOp]]] = []

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, waiter: Waiter[FetchOp], until: float) -> None:
        """Hold `waiter` until its group has work or `until` (node monotonic time) passes."""
        self._parked.append((until, waiter))

    def sort_out(self, broker: Broker, synced_now: float, now: float) -> tuple[list[Waiter[FetchOp]], list[Waiter[FetchOp]]]:
        """Returns: (the FETCHes whose group has work now: to propose; those whose wait is over or whose group
        is gone: to answer), both removed; the rest stay parked."""
        ready: list[Waiter[FetchOp]] = []
        done: list[Waiter[FetchOp]] = []
        keep: list[tuple[float, Waiter[FetchOp]]] = []
        has_work = broker.groups.has_work
        for until, waiter in self._parked:
            work = has_work(waiter.request.group, synced_now)
            if work:
                ready.append(waiter)
            elif work is None or now >= until:
                done.append(waiter)
            else:
                keep.append((until, waiter))
        self._parked = keep
        return ready, done

    def drain(self) -> list[Waiter[FetchOp]]:
        """Returns: every parked FETCH (removed): leadership was lost or the node stops writing."""
        out = [waiter for _, waiter in self._parked]
        self._parked = []
        return out
