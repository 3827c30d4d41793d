"""Durable consumer groups in the broker (`wiber.broker.consumers`, docs/design.md section 11, issue 16).

What they pin: the ops' place in a log entry (PUB-only entries unchanged byte for byte, consumer ops
decoded as strictly as PUB ops); CREATE at the end or from the start, later topics from 0, idempotent
or a conflict; FETCH redeliveries first in (topic, offset) order then first deliveries in offset order,
retention skipped, the caps and their error; redelivery by the entry's ts; NAK; ACK of unknown refs;
DELETE; determinism; snapshots and checkpoint rows round trip and refuse corrupt rows.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from wiber.broker import AppliedEntry, Broker, BrokerSettings, MalformedEntry, PubOp, SnapshotError
from wiber.broker import consumers
from wiber.broker.checkpoint import rebuild, take_delta
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
    GroupConflict,
    NakOp,
    NakResult,
    PendingCapReached,
    TooManyGroups,
    UnknownGroup,
)
from wiber.broker.entry import EntryOp, decode_entry, encode_entry
from wiber.broker.snapshot import dump, load
from wiber.config import RetentionConfig

T0 = 1_700_000_000.0


def pub(topic: str, data: bytes = b"x") -> PubOp:
    """Returns: a PUB op."""
    return PubOp(topic, (data,), False)


class Log:
    """A broker fed with entries at increasing indexes, as a node applies committed entries."""

    def __init__(self, settings: BrokerSettings | None = None) -> None:
        self.broker = Broker(settings or BrokerSettings())
        self.index = 0
        self.entries: list[tuple[int, bytes]] = []

    def apply(self, *ops: EntryOp, ts: float = T0) -> AppliedEntry:
        """Apply one entry of `ops` at the next index. Returns: what applying it gave."""
        self.index += 1
        data = encode_entry(ts, ops)
        self.entries.append((self.index, data))
        return self.broker.apply_entry(self.index, data)

    def one(self, op: ConsumerOp, ts: float = T0) -> Any:
        """Returns: the result of an entry holding only consumer op `op`."""
        ((_, result),) = self.apply(op, ts=ts).consumer_results
        return result

    def publish(self, topic: str, count: int, ts: float = T0) -> None:
        """Store `count` messages in `topic`, one entry."""
        self.apply(*[pub(topic, b"m%d" % n) for n in range(count)], ts=ts)

    def fetch(self, group: str, member: str, most: int, ts: float = T0) -> list[tuple[str, int, int]]:
        """Returns: what a FETCH delivered, as plain tuples (it must succeed)."""
        result = self.one(FetchOp(group, member, most), ts=ts)
        assert result.error is None, result.error
        return [tuple(delivered) for delivered in result.deliveries]


# ---------------------------------------------------------------------------------- the entry


def test_a_pub_only_entry_encodes_byte_for_byte_as_before() -> None:
    ops = [PubOp("a", (b"x",), False), PubOp("b", (b"1", b"2"), True, "c", 3, 2, 9, True)]
    before = msgpack.packb((1, T0, [("a", b"x", 0, 0), ("b", (b"1", b"2"), 1, 9, "c", 3, 2)]), use_bin_type=True)
    assert encode_entry(T0, ops) == before
    assert decode_entry(before) == (T0, ops)


def test_pub_and_consumer_ops_share_an_entry_in_order() -> None:
    ops: list[EntryOp] = [
        CreateGroupOp("g", "orders.>", 5000, True),
        pub("orders.eu"),
        FetchOp("g", "m1", 10),
        AckOp("g", "m1", (("orders.eu", 0),)),
        NakOp("g", "m1", (("orders.eu", 1), ("x", 2))),
        DeleteGroupOp("g"),
    ]
    assert decode_entry(encode_entry(T0, ops)) == (T0, ops)
    raw = msgpack.unpackb(encode_entry(T0, ops), raw=False)
    assert raw[2][0] == [consumers.CREATE, "g", "orders.>", 5000, True]
    assert raw[2][5] == [consumers.DELETE, "g"]

    log = Log()
    applied = log.apply(*ops)
    assert [type(r) for r in applied.results] == [
        CreateResult, type(applied.pub_results[0]), FetchResult, AckResult, NakResult, DeleteResult]
    assert [position for position, _ in applied.consumer_results] == [0, 2, 3, 4, 5]
    fetched = applied.results[2]
    assert isinstance(fetched, FetchResult) and fetched.deliveries == (Delivered("orders.eu", 0, 1),)
    assert log.broker.apply(log.index + 1, encode_entry(T0, [pub("t"), FetchOp("nope", "m", 1)]))[0].answer


BAD_ITEMS: list[list[Any]] = [
    [9, "g"],                                      # unknown kind
    [True, "g"],                                   # a bool is no kind
    [1.0, "g", "p", 1000, False],                  # a float is no kind
    [consumers.DELETE],                            # too short
    [consumers.DELETE, "g", "extra"],              # too long
    [consumers.DELETE, ""],                        # empty group
    [consumers.DELETE, "g*"],                      # wildcard in a group name
    [consumers.DELETE, "x" * 256],                 # too long a name
    [consumers.DELETE, b"g"],                      # not a str
    [consumers.CREATE, "g", "a.>.b", 1000, False],  # not a pattern
    [consumers.CREATE, "g", "a", 0, False],        # ack_wait 0
    [consumers.CREATE, "g", "a", 86_400_001, False],
    [consumers.CREATE, "g", "a", 1000, 1],         # from_start not a bool
    [consumers.FETCH, "g", "m", 0],
    [consumers.FETCH, "g", "m", 1001],
    [consumers.FETCH, "g", "m>", 1],
    [consumers.FETCH, "g", "m", True],
    [consumers.ACK, "g", "m", []],
    [consumers.ACK, "g", "m", [["t", 0]] * 1001],
    [consumers.ACK, "g", "m", [["t", -1]]],
    [consumers.ACK, "g", "m", [["t", 0, 1]]],
    [consumers.NAK, "g", "m", [["", 0]]],
    [consumers.NAK, "g", "m", [[b"t", 0]]],
]


@pytest.mark.parametrize("item", BAD_ITEMS, ids=[repr(item)[:40] for item in BAD_ITEMS])
def test_a_malformed_consumer_op_makes_the_entry_malformed_and_it_is_skipped(item: list[Any]) -> None:
    data = msgpack.packb([1, T0, [["t", b"x", 0, 0], item]], use_bin_type=True)
    with pytest.raises(MalformedEntry, match="op 1"):
        decode_entry(data)
    log = Log()
    log.one(CreateGroupOp("g", ">"))
    assert log.broker.apply_entry(2, data) == AppliedEntry([], [])
    assert log.broker.applied_index == 2 and log.broker.topics() == {}


def test_encoding_refuses_an_op_decoding_would_refuse() -> None:
    with pytest.raises(ValueError, match="op 1: a fetch's max"):
        encode_entry(T0, [pub("t"), FetchOp("g", "m", 0)])
    with pytest.raises(ValueError, match="a group name"):
        encode_entry(T0, [DeleteGroupOp("a*")])


# ---------------------------------------------------------------------------------- CREATE and DELETE


def test_a_new_group_starts_at_the_end_or_from_the_first_kept_offset() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_messages=3)))
    log.publish("a", 5)  # keeps 2, 3, 4
    log.publish("b", 1)
    assert log.one(CreateGroupOp("end", ">")) == CreateResult("end", True, None)
    assert log.one(CreateGroupOp("start", ">", from_start=True)).created
    assert log.fetch("end", "m", 10) == []
    assert log.fetch("start", "m", 10) == [("a", 2, 1), ("a", 3, 1), ("a", 4, 1), ("b", 0, 1)]
    log.publish("a", 1)
    assert log.fetch("end", "m", 10) == [("a", 5, 1)]


def test_a_topic_created_after_the_group_is_delivered_from_offset_0_and_others_are_not() -> None:
    log = Log()
    log.publish("orders.old", 2)
    log.one(CreateGroupOp("g", "orders.*"))
    log.publish("orders.new", 3)
    log.publish("other.new", 3)
    log.publish("orders.new.deep", 3)
    assert log.fetch("g", "m", 10) == [("orders.new", 0, 1), ("orders.new", 1, 1), ("orders.new", 2, 1)]


def test_create_is_idempotent_with_equal_settings_and_a_conflict_otherwise() -> None:
    log = Log()
    assert log.one(CreateGroupOp("g", "a.>", 1000)).created
    log.publish("a.b", 1)
    assert log.one(CreateGroupOp("g", "a.>", 1000)) == CreateResult("g", False, None)
    assert log.fetch("g", "m", 5) == [("a.b", 0, 1)]  # the repeat did not move the cursors
    for other in (CreateGroupOp("g", "a.*", 1000), CreateGroupOp("g", "a.>", 999), CreateGroupOp("g", "a.>", 1000, True)):
        result = log.one(other)
        assert not result.created and isinstance(result.error, GroupConflict)
        assert "delete it first" in str(result.error)


def test_delete_removes_the_group_and_its_pending_and_is_idempotent() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t"))
    log.publish("t", 3)
    log.fetch("g", "m", 3)
    assert log.broker.groups.total_pending == 3
    assert log.one(DeleteGroupOp("g")) == DeleteResult("g", True, None)
    assert log.broker.groups.total_pending == 0
    assert log.one(DeleteGroupOp("g")) == DeleteResult("g", False, None)
    for op in (FetchOp("g", "m", 1), AckOp("g", "m", (("t", 0),)), NakOp("g", "m", (("t", 0),))):
        error = log.one(op).error
        assert isinstance(error, UnknownGroup) and "create it first" in str(error)
    assert log.one(CreateGroupOp("g", "t")).created  # a new group starts at the end again
    assert log.fetch("g", "m", 3) == []


def test_the_number_of_groups_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "MAX_GROUPS", 2)
    log = Log()
    assert log.one(CreateGroupOp("a", ">")).created and log.one(CreateGroupOp("b", ">")).created
    result = log.one(CreateGroupOp("c", ">"))
    assert isinstance(result.error, TooManyGroups) and not result.created
    assert log.one(CreateGroupOp("a", ">")).error is None  # an existing one is still idempotent


# ---------------------------------------------------------------------------------- FETCH, ACK, NAK


def test_first_deliveries_follow_offset_order_per_topic_in_creation_order_up_to_max() -> None:
    log = Log()
    log.one(CreateGroupOp("g", ">"))
    log.publish("b", 2)
    log.publish("a", 2)
    log.publish("b", 1)
    assert log.fetch("g", "m1", 2) == [("b", 0, 1), ("b", 1, 1)]
    assert log.fetch("g", "m2", 2) == [("b", 2, 1), ("a", 0, 1)]
    assert log.fetch("g", "m1", 5) == [("a", 1, 1)]
    assert log.fetch("g", "m1", 5) == []


def test_a_fetch_sees_pubs_before_it_in_its_entry_and_a_caught_up_topic_again_after_more() -> None:
    log = Log()
    log.one(CreateGroupOp("g", ">"))
    applied = log.apply(pub("a"), pub("b"), FetchOp("g", "m", 10), pub("a"), FetchOp("g", "m", 10), pub("b"))
    fetched = [result.deliveries for _, result in applied.consumer_results]
    assert fetched == [(Delivered("a", 0, 1), Delivered("b", 0, 1)), (Delivered("a", 1, 1),)]
    assert log.fetch("g", "m", 10) == [("b", 1, 1)]
    assert log.broker.groups.groups["g"].backlog == []
    log.publish("b", 2)
    log.publish("a", 1)
    assert log.fetch("g", "m", 2) == [("a", 2, 1), ("b", 2, 1)]
    assert log.broker.groups.groups["g"].backlog == [1]


def test_an_unacked_delivery_is_redelivered_after_ack_wait_by_the_entry_ts_first_and_in_order() -> None:
    log = Log()
    log.one(CreateGroupOp("g", ">", ack_wait_ms=2000))
    log.publish("a", 2)
    log.publish("b", 2)
    assert log.fetch("g", "m1", 1, ts=T0) == [("a", 0, 1)]
    assert log.fetch("g", "m1", 2, ts=T0 + 1) == [("a", 1, 1), ("b", 0, 1)]
    assert log.fetch("g", "m2", 1, ts=T0 + 1.999) == [("b", 1, 1)]  # nothing is due yet
    assert log.fetch("g", "m2", 5, ts=T0 + 2) == [("a", 0, 2)]  # a deadline reached is due
    log.publish("a", 1, ts=T0 + 3)
    # due: a.1 and b.0 (deadline T0+3); b.1 not (T0+3.999); redeliveries before the new a.2
    assert log.fetch("g", "m3", 5, ts=T0 + 3) == [("a", 1, 2), ("b", 0, 2), ("a", 2, 1)]
    held = log.broker.groups.groups["g"].pending
    assert {key: (p.member, p.count, p.deadline) for key, p in held.items()} == {
        (0, 0): ("m2", 2, T0 + 4), (0, 1): ("m3", 2, T0 + 5), (1, 0): ("m3", 2, T0 + 5),
        (1, 1): ("m2", 1, T0 + 3.999), (0, 2): ("m3", 1, T0 + 5)}


def test_a_leader_whose_clock_is_behind_does_not_turn_time_back() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=1000))
    log.publish("t", 1, ts=T0 + 10)
    assert log.fetch("g", "m", 1, ts=T0 + 10) == [("t", 0, 1)]
    assert log.fetch("g", "m", 1, ts=T0) == []  # the broker's ts stays at T0 + 10
    assert log.fetch("g", "m", 1, ts=T0 + 11) == [("t", 0, 2)]


def test_ack_removes_for_good_and_counts_unknown_refs() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=1000))
    log.publish("t", 3)
    log.fetch("g", "m1", 3)
    result = log.one(AckOp("g", "m2", (("t", 0), ("t", 0), ("t", 7), ("nope", 1), ("t", 2))))
    assert result == AckResult("g", "m2", 2, 3, None)  # any member may ack; a repeat is unknown
    assert log.fetch("g", "m1", 5, ts=T0 + 5) == [("t", 1, 2)]
    assert log.broker.groups.total_pending == 1
    assert log.one(AckOp("g", "m1", (("t", 1),))).acked == 1
    assert log.fetch("g", "m1", 5, ts=T0 + 50) == []


def test_nak_makes_the_holders_deliveries_due_now_and_others_refs_unknown() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=60_000))
    log.publish("t", 3)
    log.fetch("g", "m1", 2)
    log.fetch("g", "m2", 1)
    assert log.one(NakOp("g", "m1", (("t", 1), ("t", 2), ("t", 9)))) == NakResult("g", "m1", 1, 2, None)
    assert log.one(NakOp("g", "m1", (("t", 1),))).nakked == 1  # again: still held, still due
    log.publish("t", 1)
    assert log.fetch("g", "m3", 5) == [("t", 1, 2), ("t", 3, 1)]
    assert log.one(AckOp("g", "m3", (("t", 1),))).acked == 1


def test_an_acked_due_delivery_leaves_the_due_list() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=1000))
    log.publish("t", 3)
    log.fetch("g", "m", 3)
    log.one(NakOp("g", "m", (("t", 0), ("t", 1), ("t", 2))))
    assert log.one(AckOp("g", "m", (("t", 1),))).acked == 1
    assert log.fetch("g", "m", 5) == [("t", 0, 2), ("t", 2, 2)]


def test_first_deliveries_skip_what_retention_removed_and_pending_removed_messages_are_dropped() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_messages=3)))
    log.one(CreateGroupOp("g", "t", ack_wait_ms=1000))
    log.publish("t", 10)  # keeps 7, 8, 9
    assert log.fetch("g", "m", 2) == [("t", 7, 1), ("t", 8, 1)]
    log.publish("t", 2)  # keeps 9, 10, 11: 7 and 8 are gone
    assert log.fetch("g", "m", 10, ts=T0 + 5) == [("t", 9, 1), ("t", 10, 1), ("t", 11, 1)]
    assert log.broker.groups.total_pending == 3
    assert set(log.broker.groups.groups["g"].pending) == {(0, 9), (0, 10), (0, 11)}


def test_a_full_group_refuses_first_deliveries_with_a_clear_error_but_redelivers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "MAX_GROUP_PENDING", 3)
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=1000))
    log.publish("t", 10)
    assert log.fetch("g", "m", 5) == [("t", 0, 1), ("t", 1, 1), ("t", 2, 1)]
    result = log.one(FetchOp("g", "m", 1))
    assert isinstance(result.error, PendingCapReached) and result.deliveries == ()
    assert "ack or nak" in str(result.error) and "3 unacked" in str(result.error)
    assert log.fetch("g", "m2", 5, ts=T0 + 1) == [("t", 0, 2), ("t", 1, 2), ("t", 2, 2)]
    log.one(AckOp("g", "m2", (("t", 0),)))
    assert log.fetch("g", "m", 5, ts=T0 + 1) == [("t", 3, 1)]


def test_all_groups_together_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "MAX_TOTAL_PENDING", 4)
    log = Log()
    log.one(CreateGroupOp("a", "t"))
    log.one(CreateGroupOp("b", "t"))
    log.publish("t", 5)
    assert len(log.fetch("a", "m", 3)) == 3
    assert log.fetch("b", "m", 3) == [("t", 0, 1)]
    assert isinstance(log.one(FetchOp("b", "m", 1)).error, PendingCapReached)
    log.one(DeleteGroupOp("a"))
    assert len(log.fetch("b", "m", 5)) == 3


def test_stale_timers_are_compacted() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t", ack_wait_ms=60_000))
    log.publish("t", 1000)
    for start in range(0, 1000, 100):
        log.apply(FetchOp("g", "m", 100), AckOp("g", "m", tuple(("t", n) for n in range(start, start + 100))))
    group = log.broker.groups.groups["g"]
    assert not group.pending and len(group.timers) <= consumers._COMPACT_SLACK + 100


# ---------------------------------------------------------------------------------- determinism and persistence


def random_log(seed: int, count: int = 250) -> Log:
    """Returns: a Log after `count` random entries mixing PUBs and every consumer op."""
    rng = random.Random(seed)
    log = Log(BrokerSettings(retention=RetentionConfig(max_messages=30)))
    held: list[tuple[str, str, int]] = []
    for n in range(count):
        ops: list[EntryOp] = []
        for _ in range(rng.randrange(1, 5)):
            group = f"g{rng.randrange(3)}"
            choice = rng.random()
            if choice < 0.4:
                ops.append(pub(f"t.{rng.randrange(5)}", rng.randbytes(rng.randrange(1, 20))))
            elif choice < 0.5:
                ops.append(CreateGroupOp(group, rng.choice(["t.*", "t.1", ">"]), 1000 * rng.randrange(1, 4),
                                         rng.random() < 0.5))
            elif choice < 0.75:
                ops.append(FetchOp(group, f"m{rng.randrange(3)}", rng.randrange(1, 8)))
            elif choice < 0.9 and held:
                refs = tuple((topic, offset) for _, topic, offset in rng.sample(held, min(len(held), 3)))
                kind = AckOp if rng.random() < 0.7 else NakOp
                ops.append(kind(group, f"m{rng.randrange(3)}", refs))
            elif choice < 0.93:
                ops.append(DeleteGroupOp(group))
        applied = log.apply(*ops, ts=T0 + n * 0.5)
        for _, result in applied.consumer_results:
            if isinstance(result, FetchResult):
                held.extend((result.group, d.topic, d.offset) for d in result.deliveries)
    return log


def test_two_brokers_applying_the_same_entries_are_equal() -> None:
    first, second = random_log(5), Log(BrokerSettings(retention=RetentionConfig(max_messages=30)))
    results_first = []
    replay = Broker(second.broker.settings)
    for index, data in first.entries:
        results_first.append([comparable(r) for r in second.broker.apply_entry(index, data).results])
        replay.apply(index, data)
    assert results_first == results_of(Log(second.broker.settings).broker, first.entries)
    assert dump(first.broker) == dump(second.broker) == dump(replay)
    assert first.broker.groups.groups  # the random log did make groups
    assert sum(len(g.pending) for g in first.broker.groups.groups.values()) == first.broker.groups.total_pending
    for group in first.broker.groups.groups.values():  # every topic with undelivered messages is in the backlog
        behind = {tid for tid, cursor in group.cursors.items() if cursor < first.broker.topic_by_id(tid).end}
        assert behind <= set(group.backlog) and group.backlog == sorted(set(group.backlog))


def results_of(broker: Broker, entries: list[tuple[int, bytes]]) -> list[list[Any]]:
    """Returns: every op's result of `entries` applied to `broker`, errors as (type, text) to compare."""
    return [[comparable(result) for result in broker.apply_entry(index, data).results] for index, data in entries]


def comparable(result: Any) -> Any:
    """Returns: `result` with its error (an exception: equal only to itself) as (type name, text)."""
    if isinstance(result, ConsumerResult) and result.error is not None:
        return result._replace(error=(type(result.error).__name__, str(result.error)))
    return result


def test_a_snapshot_round_trips_and_the_restored_broker_goes_on_alike() -> None:
    whole = random_log(6, 300)
    settings = whole.broker.settings
    half = Log(settings)
    for index, data in whole.entries[:150]:
        half.broker.apply(index, data)
    restored = load(Broker, dump(half.broker), settings, None)
    assert dump(restored) == dump(half.broker)
    assert results_of(restored, whole.entries[150:]) == results_of(half.broker, whole.entries[150:])
    assert dump(restored) == dump(whole.broker)


def test_a_snapshot_without_groups_is_the_old_8_item_layout_and_loads() -> None:
    log = Log()
    log.publish("t", 2)
    assert len(msgpack.unpackb(dump(log.broker))) == 8
    log.one(CreateGroupOp("g", "t"))
    assert len(msgpack.unpackb(dump(log.broker))) == 9
    log.one(DeleteGroupOp("g"))
    assert len(msgpack.unpackb(dump(log.broker))) == 8


def test_checkpoint_rows_hold_only_changed_groups_and_rebuild_round_trips() -> None:
    whole = random_log(7, 300)
    settings = whole.broker.settings
    live = Log(settings)
    table: dict[str, dict[Any, Any]] = {"topics": {}, "sessions": {}, "groups": {}}
    counters = b""
    for index, data in whole.entries[:200]:
        live.broker.apply(index, data)
        if index % 37 == 0:
            delta = take_delta(live.broker)
            counters = delta.counters
            for row in delta.topics:
                table["topics"][row[0]] = row
            for name, kind in (("sessions", delta.sessions), ("groups", delta.groups)):
                for key, value in kind:
                    if value is None:
                        table[name].pop(key, None)
                    else:
                        table[name][key] = value
    assert take_delta(live.broker).groups  # changes since the last delta
    assert take_delta(live.broker).groups == []  # and none right after
    delta_index = max(index for index, _ in whole.entries[:200] if index % 37 == 0)
    reference = Log(settings)
    for index, data in whole.entries[:delta_index]:
        reference.broker.apply(index, data)
    rebuilt = rebuild(settings, reference.broker.store, counters, [table["topics"][k] for k in sorted(table["topics"])],
                      table["sessions"].items(), table["groups"].items())
    assert dump(rebuilt) == dump(reference.broker)
    after = whole.entries[delta_index:]
    assert results_of(rebuilt, after) == results_of(reference.broker, after)
    assert dump(rebuilt) == dump(whole.broker)


def test_a_deleted_group_is_a_tombstone_row() -> None:
    log = Log()
    log.one(CreateGroupOp("g", "t"))
    assert [name for name, row in take_delta(log.broker).groups] == ["g"]
    log.one(DeleteGroupOp("g"))
    assert take_delta(log.broker).groups == [("g", None)]


def good_row(**changes: Any) -> list[Any]:
    """Returns: a valid group row over topic ``t`` (offsets 0..4), with `changes` by field name."""
    row = {"pattern": "t", "ack_wait_ms": 1000, "from_start": False, "created_at": 3,
           "topics": [["t", 4, [[1, "m", 2, T0 + 1.0], [3, "m", 1, T0]]]]}
    row.update(changes)
    return list(row.values())


BAD_ROWS: dict[str, Any] = {
    "not an array": "x",
    "short": good_row()[:4],
    "bad pattern": good_row(pattern="a..b"),
    "ack_wait 0": good_row(ack_wait_ms=0),
    "from_start int": good_row(from_start=1),
    "created_at negative": good_row(created_at=-1),
    "unknown topic": good_row(topics=[["nope", 0, []]]),
    "topic not matching": good_row(pattern="u"),
    "topic twice": good_row(topics=[["t", 4, []], ["t", 4, []]]),
    "cursor past end": good_row(topics=[["t", 6, []]]),
    "pending at cursor": good_row(topics=[["t", 3, [[3, "m", 1, T0]]]]),
    "pending out of order": good_row(topics=[["t", 4, [[2, "m", 1, T0], [1, "m", 1, T0]]]]),
    "count 0": good_row(topics=[["t", 4, [[1, "m", 0, T0]]]]),
    "int deadline": good_row(topics=[["t", 4, [[1, "m", 1, 5]]]]),
    "nan deadline": good_row(topics=[["t", 4, [[1, "m", 1, float("nan")]]]]),
    "bad member": good_row(topics=[["t", 4, [[1, "*", 1, T0]]]]),
    "short pending": good_row(topics=[["t", 4, [[1, "m", 1]]]]),
}


def broker_with_topic_t() -> Log:
    """Returns: a Log whose broker has topic ``t`` with offsets 0..4."""
    log = Log()
    log.publish("t", 5)
    return log


@pytest.mark.parametrize("row", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_a_corrupt_group_row_is_a_snapshot_error(row: Any) -> None:
    log = broker_with_topic_t()
    delta = take_delta(log.broker)
    topics, sessions = delta.topics, delta.sessions
    with pytest.raises(SnapshotError, match="consumer group"):
        rebuild(BrokerSettings(), log.broker.store, delta.counters, topics, [(k, v) for k, v in sessions if v],
                [("g", msgpack.packb(row, use_bin_type=True))])
    snapshot = msgpack.unpackb(dump(log.broker), raw=False)
    with pytest.raises(SnapshotError, match="consumer group"):
        load(Broker, msgpack.packb([*snapshot, [["g", *row]]] if isinstance(row, list) else [*snapshot, [row]],
                                   use_bin_type=True), BrokerSettings(), None)


def test_a_good_row_loads_and_bad_names_and_bytes_are_refused() -> None:
    log = broker_with_topic_t()
    delta = take_delta(log.broker)
    broker = rebuild(BrokerSettings(), log.broker.store, delta.counters, delta.topics, [],
                     [("g", msgpack.packb(good_row(), use_bin_type=True))])
    assert broker.groups.total_pending == 2
    assert broker.groups.row("g") == good_row()
    for name, data in (("g*", msgpack.packb(good_row())), ("g", b"\xc1"), ("g", "text")):
        with pytest.raises(SnapshotError):
            rebuild(BrokerSettings(), log.broker.store, delta.counters, delta.topics, [], [(name, data)])
    snapshot = msgpack.unpackb(dump(log.broker), raw=False)
    with pytest.raises(SnapshotError, match="nonempty"):
        load(Broker, msgpack.packb([*snapshot, []]), BrokerSettings(), None)
    with pytest.raises(SnapshotError, match="twice"):
        load(Broker, msgpack.packb([*snapshot, [["g", *good_row()], ["g", *good_row()]]]), BrokerSettings(), None)
