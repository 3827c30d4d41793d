"""Tests of wiber.broker: the replicated state machine, one rule of docs/design.md sections 3-5 per test.

What they pin: dense offsets per topic; PUB_BATCH all or none at consecutive offsets and lamports;
lamport above the publisher's and strictly increasing; ts never going back across a leader whose
clock is behind; dedup of retries (PUB and PUB_BATCH), ack_floor pruning, the session window,
eviction by last activity then client_id, SESSION_EXPIRED instead of a second copy; retention by
count, bytes, age and per-topic override, keeping exactly what the limits say; HISTORY's offsets;
malformed entries skipped; no-ops; snapshot/restore equality; the entry codec. Randomized
properties (a naive model, restore mid-way, hostile bytes) are in test_broker_props.py.
"""

from __future__ import annotations

import gc
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from wiber.broker import (
    ENTRY_FORMAT,
    Broker,
    BrokerSettings,
    MalformedEntry,
    MemoryRecordStore,
    PubOp,
    PubResult,
    Record,
    SnapshotError,
    decode_entry,
    encode_entry,
    pub_op_from_request,
)
from wiber.config import ClusterConfig, RetentionConfig
from wiber.errors import InvariantError, SessionExpired
from wiber.protocol import Limits, validate_request

T0 = 1_700_000_000.0
"""An entry time in the range a real synced clock gives."""


def pub(topic: str, data: bytes = b"x", **kwargs: Any) -> PubOp:
    """Returns: a PUB op."""
    return PubOp(topic, (data,), False, **kwargs)


def batch(topic: str, *messages: bytes, **kwargs: Any) -> PubOp:
    """Returns: a PUB_BATCH op."""
    return PubOp(topic, tuple(messages), True, **kwargs)


class Log:
    """A broker fed with entries at increasing log indexes, as the node does after commit."""

    def __init__(self, settings: BrokerSettings | None = None, broker: Broker | None = None) -> None:
        self.broker = broker if broker is not None else Broker(settings or BrokerSettings())
        self.index = self.broker.applied_index

    def apply(self, *ops: PubOp, ts: float = T0) -> list[PubResult]:
        """Apply one entry holding `ops` at the next index. Returns: its results, records as `Record`s."""
        self.index += 1
        return viewed(self.broker.apply(self.index, encode_entry(ts, ops)))

    def one(self, op: PubOp, ts: float = T0) -> PubResult:
        """Apply an entry holding only `op`. Returns: its result."""
        (result,) = self.apply(op, ts=ts)
        return result

    def noop(self) -> None:
        """Apply a Raft no-op at the next index."""
        self.index += 1
        self.broker.apply_noop(self.index)

    def datas(self, topic: str) -> list[bytes]:
        """Returns: the data of every kept message of `topic`, oldest first."""
        return [m["data"] for m in self.broker.history(topic, limit=10**9)["messages"]]

    def offsets(self, topic: str) -> list[int]:
        """Returns: the offsets of every kept message of `topic`."""
        return [m["offset"] for m in self.broker.history(topic, limit=10**9)["messages"]]


def viewed(results: list[PubResult]) -> list[PubResult]:
    """Returns: `results` with their stored records (plain tuples) as readable `Record`s."""
    for result in results:
        for record in result.records:
            assert type(record) is tuple and Record._make(record) == record  # exact tuples: untracked by gc
    return [r._replace(records=tuple(map(Record._make, r.records))) for r in results]


def stored(results: Sequence[PubResult]) -> list[Record]:
    """Returns: every record of `results`, in order."""
    return [record for result in results for record in result.records]


# ----------------------------------------------------------------------------- offsets, lamport, ts


def test_offsets_are_dense_per_topic_from_zero_across_topics_and_entries() -> None:
    log = Log()
    first = log.apply(pub("a", b"a0"), pub("b", b"b0"), pub("a", b"a1"))
    second = log.apply(pub("b", b"b1"), batch("a", b"a2", b"a3"), pub("c", b"c0"))
    assert [(r.topic, r.offset) for r in stored(first + second)] == [
        ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3), ("c", 0),
    ]  # fmt: skip
    assert log.broker.topics() == {"a": 4, "b": 2, "c": 1}
    assert log.datas("a") == [b"a0", b"a1", b"a2", b"a3"]
    assert log.broker.end_offset("a") == 4
    assert log.broker.end_offset("nope") == 0


def test_every_message_gets_its_entry_index_and_the_reply_says_where_it_went() -> None:
    log = Log()
    log.noop()
    result = log.one(pub("t", b"m"))
    assert result.error is None
    assert result.reply == {
        "topic": "t",
        "offset": 0,
        "index": 2,
        "lamport": 1,
        "ts": T0,
        "duplicate": False,
    }
    assert result.records == (Record("t", 0, b"m", 1, T0, 2, False),)


def test_batch_takes_consecutive_offsets_and_lamports_and_replies_with_the_first() -> None:
    log = Log()
    log.one(pub("t", lamport=4))
    result = log.one(batch("t", b"1", b"2", b"3"))
    assert result.reply == {
        "topic": "t",
        "offset": 1,
        "count": 3,
        "index": 2,
        "lamport": 6,
        "ts": T0,
        "duplicate": False,
    }
    assert [(r.offset, r.lamport, r.data) for r in result.records] == [
        (1, 6, b"1"),
        (2, 7, b"2"),
        (3, 8, b"3"),
    ]
    assert log.broker.last_lamport == 8


def test_a_batch_of_one_still_replies_with_count() -> None:
    log = Log()
    assert log.one(batch("t", b"only")).reply["count"] == 1  # type: ignore[index]
    assert "count" not in log.one(pub("t")).reply  # type: ignore[operator]


def test_a_batch_is_stored_all_or_none() -> None:
    log = Log()
    log.one(batch("t", b"a", b"b", client_id="c", seq=1))
    retry = log.one(batch("t", b"a", b"b", client_id="c", seq=1))
    assert retry.records == () and retry.reply is not None and retry.reply["duplicate"]
    log.one(batch("t", b"c", b"d", client_id="c", seq=2, ack_floor=2))
    expired = log.one(batch("t", b"a", b"b", client_id="c", seq=1))
    assert expired.records == () and isinstance(expired.error, SessionExpired)
    assert log.datas("t") == [b"a", b"b", b"c", b"d"]


def test_lamport_exceeds_the_publishers_and_strictly_increases_in_log_order() -> None:
    log = Log()
    results = log.apply(pub("a", lamport=100), pub("b"), pub("a", lamport=50))
    results += log.apply(batch("b", b"1", b"2", lamport=500), pub("a", lamport=3))
    lamports = [record.lamport for record in stored(results)]
    assert lamports == [101, 102, 103, 501, 502, 503]
    published = [100, 0, 50, 500, 500, 3]
    assert all(got > sent for got, sent in zip(lamports, published))
    assert log.broker.last_lamport == 503


def test_ts_never_goes_back_when_a_new_leader_is_3_5_seconds_behind() -> None:
    log = Log()
    first = log.one(pub("t"), ts=T0)
    behind = log.apply(pub("t"), pub("u"), ts=T0 - 3.5)
    later = log.one(pub("t"), ts=T0 + 0.25)
    assert first.records[0].ts == T0
    assert [r.ts for r in stored(behind)] == [T0, T0]
    assert behind[0].reply["ts"] == T0  # type: ignore[index]
    assert later.records[0].ts == T0 + 0.25
    assert log.broker.last_ts == T0 + 0.25


def test_the_ts_of_an_entry_of_only_duplicates_still_counts() -> None:
    log = Log()
    log.one(pub("t", client_id="c", seq=1), ts=T0)
    log.one(pub("t", client_id="c", seq=1), ts=T0 + 5)
    assert log.one(pub("t"), ts=T0 + 1).records[0].ts == T0 + 5


def test_late_ops_are_stored_marked_and_counted() -> None:
    log = Log()
    results = log.apply(pub("t"), batch("t", b"1", b"2")._replace(late=True), pub("t", late=True))
    assert [r.late for r in stored(results)] == [False, True, True, True]
    assert log.broker.late_count == 2  # ops, not messages
    wire = stored(results)[1].to_wire()
    assert wire["late"] is True
    assert "late" not in stored(results)[0].to_wire()


def test_record_to_wire_is_the_fan_out_map() -> None:
    record = Record("t", 7, b"d", 9, T0, 3, False)
    assert record.to_wire() == {"topic": "t", "offset": 7, "data": b"d", "lamport": 9, "ts": T0, "index": 3}


# ----------------------------------------------------------------------------- sessions


@pytest.mark.parametrize(
    "make", [lambda **kw: pub("t", b"m", **kw), lambda **kw: batch("t", b"m", b"n", **kw)]
)
def test_a_retry_gets_the_first_answer_marked_duplicate_and_stores_nothing(make: Any) -> None:
    log = Log()
    first = log.one(make(client_id="c", seq=1))
    log.one(pub("t", b"other"))
    retry = log.one(make(client_id="c", seq=1))
    assert retry.error is None and retry.records == ()
    assert retry.reply == {**first.reply, "duplicate": True}  # type: ignore[dict-item]
    assert log.broker.end_offset("t") == len(first.records) + 1


def test_a_retry_in_the_same_entry_is_a_duplicate() -> None:
    log = Log()
    first, retry = log.apply(pub("t", client_id="c", seq=1), pub("t", client_id="c", seq=1))
    assert retry.reply == {**first.reply, "duplicate": True}  # type: ignore[dict-item]
    assert log.broker.end_offset("t") == 1


def test_requests_without_client_id_are_never_deduplicated() -> None:
    log = Log()
    log.apply(pub("t"), pub("t"))
    assert log.broker.end_offset("t") == 2
    assert log.broker.session_count == 0


def test_ack_floor_drops_older_answers_and_an_old_seq_then_expires_unstored() -> None:
    log = Log()
    for seq in (1, 2, 3):
        log.one(pub("t", bytes([seq]), client_id="c", seq=seq))
    log.one(pub("t", b"\x04", client_id="c", seq=4, ack_floor=3))
    expired = log.one(pub("t", b"\x02", client_id="c", seq=2))
    assert expired.reply is None and expired.records == ()
    assert isinstance(expired.error, SessionExpired)
    assert "may or may not have been stored" in expired.error.message
    assert "HISTORY" in expired.error.message
    kept = log.one(pub("t", b"\x03", client_id="c", seq=3))
    assert kept.reply is not None and kept.reply["duplicate"] and kept.reply["offset"] == 2
    assert log.datas("t") == [b"\x01", b"\x02", b"\x03", b"\x04"]


def test_ack_floor_counts_even_on_a_duplicate() -> None:
    log = Log()
    log.apply(pub("t", client_id="c", seq=1), pub("t", client_id="c", seq=2))
    log.one(pub("t", client_id="c", seq=2, ack_floor=2))
    assert isinstance(log.one(pub("t", client_id="c", seq=1)).error, SessionExpired)


def test_a_new_seq_at_or_above_the_floor_is_stored_even_out_of_order() -> None:
    log = Log()
    log.one(pub("t", b"5", client_id="c", seq=5))
    log.one(pub("t", b"3", client_id="c", seq=3))
    assert log.datas("t") == [b"5", b"3"]
    assert log.one(pub("t", client_id="c", seq=3)).reply["duplicate"]  # type: ignore[index]


def test_session_window_overflow_drops_the_lowest_answers_and_raises_the_floor() -> None:
    log = Log(BrokerSettings(session_window=3))
    for seq in range(1, 6):
        log.one(pub("t", bytes([seq]), client_id="c", seq=seq))
    assert isinstance(log.one(pub("t", client_id="c", seq=2)).error, SessionExpired)
    for seq in (3, 4, 5):
        retry = log.one(pub("t", client_id="c", seq=seq))
        assert retry.reply is not None and retry.reply["duplicate"] and retry.reply["offset"] == seq - 1
    # A seq never sent but below the raised floor cannot be told from a lost answer: expired.
    log2 = Log(BrokerSettings(session_window=2))
    for seq in (1, 3, 4, 5):  # dropping 1 then 3 raises the floor to 4
        log2.one(pub("t", client_id="c", seq=seq))
    assert isinstance(log2.one(pub("t", client_id="c", seq=2)).error, SessionExpired)
    assert log2.broker.end_offset("t") == 4


def test_window_overflow_drops_the_lowest_seq_even_when_seqs_arrived_out_of_order() -> None:
    log = Log(BrokerSettings(session_window=3))
    for seq in (5, 3, 4, 6):  # 3 and 4 are kept below 5; 6 overflows the window: 3 goes
        log.one(pub("t", bytes([seq]), client_id="c", seq=seq))
    assert isinstance(log.one(pub("t", client_id="c", seq=3)).error, SessionExpired)
    for seq, offset in ((4, 2), (5, 0), (6, 3)):
        retry = log.one(pub("t", client_id="c", seq=seq))
        assert retry.reply is not None and retry.reply["duplicate"] and retry.reply["offset"] == offset
    restored = Log(broker=Broker.restore(log.broker.snapshot(), BrokerSettings(session_window=3)))
    restored.one(pub("t", client_id="c", seq=7))  # the restored session drops its lowest, 4, too
    assert isinstance(restored.one(pub("t", client_id="c", seq=4)).error, SessionExpired)
    assert restored.one(pub("t", client_id="c", seq=5)).reply["duplicate"]  # type: ignore[index]


def test_max_sessions_evicts_the_least_recently_active_by_log_index() -> None:
    log = Log(BrokerSettings(max_sessions=3))
    log.apply(pub("t", client_id="b", seq=1), pub("t", client_id="a", seq=1))  # index 1
    log.one(pub("t", client_id="c", seq=1))  # index 2
    log.one(pub("t", client_id="a", seq=2))  # index 3: a is active again
    log.one(pub("t", client_id="d", seq=1))  # index 4: evicts b (last active at 1)
    assert log.broker.session_count == 3
    assert isinstance(log.one(pub("t", client_id="b", seq=2)).error, SessionExpired)
    assert log.one(pub("t", client_id="a", seq=2)).reply["duplicate"]  # type: ignore[index]
    log.one(pub("t", client_id="e", seq=1))  # evicts c (2), not d (4) or a (6)
    assert isinstance(log.one(pub("t", client_id="c", seq=1)).error, SessionExpired)
    assert log.one(pub("t", client_id="d", seq=1)).reply["duplicate"]  # type: ignore[index]


def test_eviction_ties_on_last_index_go_by_client_id() -> None:
    log = Log(BrokerSettings(max_sessions=3))
    log.apply(*(pub("t", client_id=cid, seq=1) for cid in ("z", "x", "y")))  # all at index 1
    log.one(pub("t", client_id="w", seq=1))  # evicts x
    log.one(pub("t", client_id="v", seq=1))  # evicts y
    outcomes = {
        cid: type(log.one(pub("t", client_id=cid, seq=1)).error).__name__ for cid in ("x", "y", "z", "w", "v")
    }
    assert outcomes == {
        "x": "SessionExpired",
        "y": "SessionExpired",
        "z": "NoneType",
        "w": "NoneType",
        "v": "NoneType",
    }


def test_an_expired_retry_is_activity_but_an_evicted_clients_refusal_creates_no_session() -> None:
    log = Log(BrokerSettings(max_sessions=2))
    log.one(pub("t", client_id="gone", seq=1))
    log.one(pub("t", client_id="a", seq=1))
    log.one(pub("t", client_id="b", seq=1))  # evicts "gone"
    assert isinstance(log.one(pub("t", client_id="gone", seq=9, ack_floor=9)).error, SessionExpired)
    assert log.broker.session_count == 2
    assert log.one(pub("t", client_id="a", seq=1)).reply["duplicate"]  # type: ignore[index]
    assert log.one(pub("t", client_id="b", seq=1)).reply["duplicate"]  # type: ignore[index]


def test_an_evicted_clients_retry_gets_session_expired_never_a_second_copy() -> None:
    log = Log(BrokerSettings(max_sessions=1))
    log.one(pub("t", b"first", client_id="old", seq=1))
    log.one(pub("t", client_id="new", seq=1))  # evicts "old"
    for op in (
        pub("t", b"first", client_id="old", seq=1),  # its retry, without ack_floor
        pub("t", b"first", client_id="old", seq=1, ack_floor=1),
        pub("t", b"fresh", client_id="old", seq=2),  # even a seq it never sent: the id is spent
    ):
        result = log.one(op)
        assert isinstance(result.error, SessionExpired) and result.records == ()
    assert log.datas("t") == [b"first", b"x"]


def test_an_unknown_client_may_start_its_session_above_seq_1() -> None:
    # Its first publishes were refused (BAD_REQUEST) or timed out before reaching the log: nothing of
    # it was ever stored, so starting at seq 7 with ack_floor 5 is legitimate and must be stored.
    log = Log()
    assert log.one(pub("t", client_id="c", seq=7, ack_floor=5)).error is None
    assert log.one(pub("t", client_id="d", seq=7, ack_floor=1)).error is None
    assert log.one(pub("t", client_id="e", seq=7)).error is None
    assert log.broker.end_offset("t") == 3
    assert isinstance(log.one(pub("t", client_id="c", seq=4)).error, SessionExpired)  # below its floor


def test_the_record_of_evicted_ids_keeps_the_last_max_sessions() -> None:
    log = Log(BrokerSettings(max_sessions=2))
    for cid in ("a", "b", "c", "d", "e"):  # evicts a, b, c; the record keeps b and c
        log.one(pub("t", client_id=cid, seq=1))
    assert log.one(pub("t", client_id="a", seq=1)).error is None  # forgotten: a fresh session
    assert isinstance(log.one(pub("t", client_id="c", seq=1)).error, SessionExpired)


# ----------------------------------------------------------------------------- retention


def test_retention_by_max_messages_keeps_exactly_the_newest() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_messages=3)))
    log.apply(*(pub("t", bytes([i])) for i in range(5)))
    log.one(batch("u", *(bytes([i]) for i in range(7))))
    assert log.offsets("t") == [2, 3, 4]
    assert log.offsets("u") == [4, 5, 6]
    history = log.broker.history("t")
    assert (history["first_offset"], history["end_offset"]) == (2, 5)
    assert log.broker.first_offset("t") == 2


def test_retention_by_max_bytes_keeps_exactly_what_fits() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_bytes=10)))
    log.apply(pub("t", b"aaaa"), pub("t", b"bbbb"), pub("t", b"cc"))
    assert log.datas("t") == [b"aaaa", b"bbbb", b"cc"]  # exactly 10
    log.one(pub("t", b"d"))
    assert log.datas("t") == [b"bbbb", b"cc", b"d"]
    log.one(pub("t", b"e" * 11))  # larger than the limit by itself: nothing is kept
    history = log.broker.history("t")
    assert history["messages"] == [] and history["first_offset"] == history["end_offset"] == 5
    log.one(pub("t", b""))
    assert log.offsets("t") == [5]


def test_retention_by_age_removes_exactly_what_is_older_than_the_limit_in_every_topic() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_age_s=10)))
    log.one(pub("old", b"0"), ts=T0)
    log.one(pub("t", b"1"), ts=T0 + 1)
    log.one(pub("t", b"5"), ts=T0 + 5)
    log.one(pub("t", b"11"), ts=T0 + 11)
    assert log.datas("old") == []  # T0 < T0 + 11 - 10, though the entry did not touch "old"
    assert log.datas("t") == [b"1", b"5", b"11"]  # T0 + 1 == the cutoff: kept
    log.one(pub("u"), ts=T0 + 15)
    assert log.datas("t") == [b"5", b"11"]  # T0 + 5 == the cutoff: kept
    log.one(pub("u"), ts=T0 + 15.5)
    assert log.datas("t") == [b"11"]
    assert log.broker.history("old")["first_offset"] == 1


def test_age_uses_the_never_decreasing_ts() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_age_s=10)))
    log.one(pub("t", b"a"), ts=T0)
    log.one(pub("t", b"b"), ts=T0 + 20)
    log.one(pub("t", b"c"), ts=T0 + 2)  # a leader behind: stored at T0 + 20
    assert log.datas("t") == [b"b", b"c"]


def test_a_no_op_trims_nothing_and_an_entry_without_messages_still_ages() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_age_s=1)))
    log.one(pub("t"), ts=T0)
    log.noop()
    assert log.datas("t") == [b"x"]
    assert log.apply(ts=T0 + 5) == []
    assert log.datas("t") == []


def test_per_topic_retention_overrides_the_default() -> None:
    settings = BrokerSettings(
        retention=RetentionConfig(max_messages=2),
        topic_retention={"audit": RetentionConfig(), "small": RetentionConfig(max_bytes=3)},
    )
    log = Log(settings)
    for topic in ("t", "audit", "small"):
        log.apply(*(pub(topic, b"ab") for _ in range(4)))
    assert log.offsets("t") == [2, 3]
    assert log.offsets("audit") == [0, 1, 2, 3]
    assert log.offsets("small") == [3]


def test_settings_from_the_cluster_configuration() -> None:
    cluster = ClusterConfig(
        session_window=7,
        max_sessions=9,
        retention=RetentionConfig(max_messages=5),
        topics={"a": RetentionConfig(max_age_s=60.0)},
    )
    settings = BrokerSettings.from_cluster(cluster)
    assert (settings.session_window, settings.max_sessions) == (7, 9)
    assert settings.retention_of("a") == RetentionConfig(max_age_s=60.0)
    assert settings.retention_of("b") == RetentionConfig(max_messages=5)
    assert BrokerSettings.from_cluster(ClusterConfig()) == BrokerSettings()
    with pytest.raises(ValueError, match="session_window"):
        BrokerSettings(session_window=0)


def test_trimming_keeps_memory_proportional_to_what_is_kept() -> None:
    log = Log(BrokerSettings(retention=RetentionConfig(max_messages=10)))
    for _ in range(30):
        log.apply(*(pub("t") for _ in range(1000)))
    store = log.broker.store  # the one white-box check: the dead prefix is compacted
    assert isinstance(store, MemoryRecordStore) and store.dead_prefix(0) < 10_000
    assert log.offsets("t") == list(range(29_990, 30_000))


# ----------------------------------------------------------------------------- history


def history_log() -> Log:
    """Returns: a log whose topic "t" kept offsets 3..9 (max_messages 7) of 10."""
    log = Log(BrokerSettings(retention=RetentionConfig(max_messages=7)))
    log.apply(*(pub("t", bytes([i])) for i in range(10)))
    return log


def test_history_from_an_offset_with_a_limit() -> None:
    history = history_log().broker.history("t", from_offset=4, limit=3)
    assert [m["offset"] for m in history["messages"]] == [4, 5, 6]
    assert history["messages"][0] == {
        "topic": "t",
        "offset": 4,
        "data": b"\x04",
        "lamport": 5,
        "ts": T0,
        "index": 1,
    }
    assert (history["next_offset"], history["first_offset"], history["end_offset"]) == (7, 3, 10)


def test_history_from_below_first_offset_starts_at_first_offset() -> None:
    for from_offset in (None, 0, 2):
        history = history_log().broker.history("t", from_offset=from_offset, limit=2)
        assert [m["offset"] for m in history["messages"]] == [3, 4]
        assert history["next_offset"] == 5


def test_history_at_or_past_the_end_is_empty_and_does_not_move_back() -> None:
    broker = history_log().broker
    at_end = broker.history("t", from_offset=10)
    assert at_end["messages"] == [] and at_end["next_offset"] == 10
    ahead = broker.history("t", from_offset=12)  # a reader ahead of a lagging node
    assert ahead["messages"] == [] and ahead["next_offset"] == 12
    assert broker.history("t", from_offset=8)["next_offset"] == 10


def test_history_last_gives_the_newest_capped_by_limit_and_by_what_is_kept() -> None:
    broker = history_log().broker
    assert [m["offset"] for m in broker.history("t", last=2)["messages"]] == [8, 9]
    assert [m["offset"] for m in broker.history("t", last=5, limit=3)["messages"]] == [7, 8, 9]
    everything = broker.history("t", last=100)
    assert [m["offset"] for m in everything["messages"]] == list(range(3, 10))
    assert everything["next_offset"] == 10


def test_history_of_an_unknown_topic_is_empty_with_offsets_zero() -> None:
    assert Broker(BrokerSettings()).history("nope") == {
        "topic": "nope",
        "messages": [],
        "next_offset": 0,
        "first_offset": 0,
        "end_offset": 0,
    }
    assert Broker(BrokerSettings()).history("nope", last=3)["next_offset"] == 0


def test_history_refuses_contradictory_arguments() -> None:
    broker = history_log().broker
    for kwargs in ({"from_offset": 1, "last": 1}, {"limit": 0}, {"last": 0}, {"from_offset": -1}):
        with pytest.raises(ValueError):
            broker.history("t", **kwargs)


# ----------------------------------------------------------------------------- applying


def test_malformed_entries_are_skipped_logged_and_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    log = Log()
    log.one(pub("t"))
    before = log.broker.snapshot()
    bad_entries = [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgpack.packb([ENTRY_FORMAT + 1, T0, []]),
        msgpack.packb([ENTRY_FORMAT, float("nan"), []]),
        msgpack.packb([ENTRY_FORMAT, T0, [["$hb", b"x", 0, 0]]]),
        msgpack.packb([ENTRY_FORMAT, T0, [["t", b"x", 0, -1]]]),
        msgpack.packb([ENTRY_FORMAT, T0, [["t", [], 0, 0]]]),
        msgpack.packb([ENTRY_FORMAT, T0, [["t", b"x", 0, 0, None, None, None]]]),
        encode_entry(T0, [pub("t")]) + b"\x00",
    ]
    with caplog.at_level(logging.ERROR, logger="wiber.broker"):
        for data in bad_entries:
            log.index += 1
            assert log.broker.apply(log.index, data) == []
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == len(bad_entries)
    assert log.broker.applied_index == log.index
    after = msgpack.unpackb(log.broker.snapshot())
    assert after[2:] == msgpack.unpackb(before)[2:]  # only applied_index moved
    assert log.one(pub("t")).reply["offset"] == 1  # type: ignore[index]


def test_apply_noop_moves_only_the_applied_index() -> None:
    log = Log()
    log.one(pub("t"))
    before = msgpack.unpackb(log.broker.snapshot())
    log.noop()
    after = msgpack.unpackb(log.broker.snapshot())
    assert after[1] == before[1] + 1 == log.broker.applied_index
    assert after[2:] == before[2:]


def test_indexes_must_increase() -> None:
    broker = Broker(BrokerSettings())
    broker.apply(5, encode_entry(T0, [pub("t")]))
    for index in (5, 4):
        with pytest.raises(InvariantError):
            broker.apply(index, encode_entry(T0, [pub("t")]))
        with pytest.raises(InvariantError):
            broker.apply_noop(index)
    broker.apply_noop(9)  # gaps are fine: other kinds of entries do not reach the broker
    assert broker.applied_index == 9


# ----------------------------------------------------------------------------- snapshots


def busy_settings() -> BrokerSettings:
    """Returns: settings small enough that a short script hits every limit."""
    return BrokerSettings(
        session_window=3,
        max_sessions=3,
        retention=RetentionConfig(max_messages=20, max_bytes=60, max_age_s=30),
        topic_retention={"keep": RetentionConfig()},
    )


def script(step: int) -> tuple[list[PubOp], float]:
    """Returns: the ops and ts of entry `step` of a deterministic workload that touches every rule."""
    ops = [
        pub("t", b"%d" % step, client_id=f"c{step % 5}", seq=step // 5 + 1, ack_floor=max(1, step // 5 - 1)),
        batch("keep", b"a" * (step % 7), b"b", lamport=step * 3),
        pub("t", b"r", client_id=f"c{(step - 5) % 5}", seq=max(1, (step - 5) // 5 + 1)),  # a retry
        pub("aged", b"z" * 9, late=step % 4 == 0),
    ]
    return ops, T0 + step * 2 - (7 if step % 6 == 0 else 0)


def test_snapshot_then_restore_gives_an_equal_state_that_evolves_equally() -> None:
    a = Log(busy_settings())
    for step in range(40):
        ops, ts = script(step)
        a.apply(*ops, ts=ts)
        if step % 9 == 0:
            a.noop()
    b = Log(broker=Broker.restore(a.broker.snapshot(), busy_settings()))
    assert b.broker.snapshot() == a.broker.snapshot()
    for step in range(40, 80):
        ops, ts = script(step)
        ra, rb = a.apply(*ops, ts=ts), b.apply(*ops, ts=ts)
        assert [(r.reply, type(r.error), r.records) for r in ra] == [
            (r.reply, type(r.error), r.records) for r in rb
        ]
    assert b.broker.snapshot() == a.broker.snapshot()
    for broker in (a.broker, b.broker):
        assert broker.late_count == a.broker.late_count > 0
        assert broker.session_count == 3
    for topic in ("t", "keep", "aged", "none"):
        for kwargs in ({}, {"last": 5}, {"from_offset": 100, "limit": 7}):
            assert a.broker.history(topic, **kwargs) == b.broker.history(topic, **kwargs)
    assert a.broker.topics() == b.broker.topics()


def test_snapshot_bytes_are_deterministic_whatever_the_session_arrival_order() -> None:
    one, two = Log(), Log()
    one.apply(pub("t", client_id="b", seq=2), pub("t", client_id="a", seq=1))
    two.apply(pub("t", client_id="b", seq=2), pub("t", client_id="a", seq=1))
    assert one.broker.snapshot() == two.broker.snapshot()
    assert Broker.restore(one.broker.snapshot(), BrokerSettings()).snapshot() == one.broker.snapshot()


def test_restore_refuses_garbage_with_snapshot_error() -> None:
    good = msgpack.unpackb(history_log().broker.snapshot())
    bad_snapshots = [
        b"",
        b"garbage",
        msgpack.packb([99, *good[1:]]),
        msgpack.packb(good[:-1]),
        msgpack.packb([*good[:5], [["t", 0, [[b"x", 1, T0, 1, "no"]]]], good[6], good[7]]),
        msgpack.packb([*good[:5], [["t", 0, []], ["t", 0, []]], good[6], good[7]]),
        msgpack.packb([*good[:6], [["c", 1, 1, [[0, "t", 0, 0, 1, 1, T0]]]], good[7]]),
        msgpack.packb([*good[:6], [["b", 1, 1, []], ["a", 1, 1, []]], good[7]]),
        msgpack.packb([*good[:6], [["a", 1, 1, []]], ["a"]]),
    ]
    for data in bad_snapshots:
        with pytest.raises(SnapshotError):
            Broker.restore(data, BrokerSettings())


# ----------------------------------------------------------------------------- the entry codec


def test_pub_op_from_validated_requests() -> None:
    limits = Limits()
    req = validate_request(
        {"op": "PUB", "topic": "t", "data": b"d", "client_id": "c", "seq": 3, "lamport": 9}, limits
    )
    assert pub_op_from_request(req) == PubOp("t", (b"d",), False, "c", 3, None, 9)
    req = validate_request({"op": "PUB_BATCH", "topic": "t", "messages": [b"1", b"2"], "ts": T0}, limits)
    assert pub_op_from_request(req) == PubOp("t", (b"1", b"2"), True)
    with pytest.raises(ValueError):
        pub_op_from_request({"op": "HISTORY", "topic": "t"})


def test_encode_decode_round_trip() -> None:
    ops = [
        pub("t"),
        batch("u", b"", b"\x00" * 5, client_id="c", seq=2, ack_floor=1, lamport=7, late=True),
        pub("t", b"z", client_id="ü", seq=2**63 - 1, lamport=2**63 - 1),
    ]
    ts, decoded = decode_entry(encode_entry(T0, ops))
    assert (ts, decoded) == (T0, ops)
    assert type(ts) is float and decode_entry(encode_entry(1, []))[0] == 1.0


def test_encode_refuses_ops_that_decode_would_refuse() -> None:
    bad = [
        PubOp("t", (b"a", b"b"), False),
        PubOp("t", (), True),
        PubOp("$sys", (b"a",), False),
        PubOp("t", ("text",), False),  # type: ignore[arg-type]
        PubOp("t", (b"a",), False, seq=1),
        PubOp("t", (b"a",), False, client_id="c"),
        PubOp("t", (b"a",), False, client_id="c", seq=2, ack_floor=3),
        PubOp("t", (b"a",), False, lamport=-1),
    ]
    for op in bad:
        with pytest.raises(ValueError):
            encode_entry(T0, [op])
    with pytest.raises(ValueError):
        encode_entry(float("inf"), [])


def test_decode_refuses_malformed_entries() -> None:
    with pytest.raises(MalformedEntry):
        decode_entry(msgpack.packb([ENTRY_FORMAT, T0, [["t", b"x", 2, 0]]]))  # unknown flag bit
    with pytest.raises(MalformedEntry):
        decode_entry(msgpack.packb([ENTRY_FORMAT, T0, [["t", b"x", 0, True]]]))  # bool is not an int
    with pytest.raises(MalformedEntry):
        decode_entry(msgpack.packb([ENTRY_FORMAT, T0, [[{"a": 1}, b"x", 0, 0]]]))  # unhashable topic


def test_fast_constructors_build_ordinary_instances() -> None:
    from wiber.broker import entry, records

    made = entry._make_pub_op("t", (b"x",), False, None, None, None, 0, False, False)
    assert made == pub("t") and type(made) is PubOp and repr(made) == repr(pub("t"))
    result = records.make_result(None, False, None, ())
    assert type(result) is PubResult and result == PubResult(None, False, None, ()) and result.reply is None


def test_stored_records_are_left_alone_by_the_cycle_collector() -> None:
    log = Log()
    (record,) = log.broker.apply(1, encode_entry(T0, [pub("t", b"d")]))[0].records
    kept = log.broker.kept("t")[0]
    assert kept is record and kept == Record("t", 0, b"d", 1, T0, 1, False)
    gc.collect()
    assert not gc.is_tracked(kept)  # a tracked record would cost every full collection a visit


def test_speed_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints encode/decode/apply times of 1,000 single-message ops of 100 bytes (never asserted)."""

    def best_ms(action: Any, rounds: int = 20) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            action()
            times.append(time.perf_counter() - start)
        return min(times) * 1000

    plain = [pub("t", b"x" * 100) for _ in range(1000)]
    entry = encode_entry(T0, plain)
    broker_plain, broker_sessions = Broker(BrokerSettings()), Broker(BrokerSettings())
    index_plain, index_sessions = itertools.count(1), itertools.count(1)
    seqs = itertools.count(1)

    def session_entry() -> bytes:
        return encode_entry(
            T0, [pub("t", b"x" * 100, client_id=f"c{i % 10}", seq=next(seqs)) for i in range(1000)]
        )

    session_entries = [session_entry() for _ in range(20)]
    figures = {
        "encode": best_ms(lambda: encode_entry(T0, plain)),
        "decode": best_ms(lambda: decode_entry(entry)),
        "apply (no client_id)": best_ms(lambda: broker_plain.apply(next(index_plain), entry)),
        "apply (10 client_ids)": best_ms(
            lambda: broker_sessions.apply(
                next(index_sessions), session_entries[broker_sessions.applied_index]
            )
        ),
    }
    with capsys.disabled():
        print("\nbroker, 1,000 ops of 100 bytes: " + ", ".join(f"{k} {v:.2f} ms" for k, v in figures.items()))


def test_apply_ops_is_apply_without_decoding() -> None:
    ops = [pub("t", b"a", client_id="c", seq=1, lamport=7), batch("u", b"b", b"c"),
           pub("t", b"a", client_id="c", seq=1)]
    decoded, direct = Broker(BrokerSettings()), Broker(BrokerSettings())
    via_log = decoded.apply(1, encode_entry(123.5, ops))
    kept = direct.apply_ops(1, 123.5, ops)
    assert via_log == kept
    assert decoded.snapshot() == direct.snapshot()
