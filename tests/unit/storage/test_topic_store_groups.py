"""Consumer groups in the topic store's checkpoint database: their rows survive a restart, a deleted
group's row goes, and a database from before consumer groups opens (its table is created)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from wiber.broker import Broker, BrokerSettings, PubOp, encode_entry
from wiber.broker.checkpoint import rebuild, take_delta
from wiber.broker.consumers import AckOp, CreateGroupOp, DeleteGroupOp, FetchOp
from wiber.broker.entry import EntryOp
from wiber.broker.snapshot import dump
from wiber.storage.topics import TopicStore
from wiber.storage.topics.index import INDEX_NAME

T0 = 1_700_000_000.0


def entries() -> list[bytes]:
    """Returns: entries that publish, create two groups, fetch, ack and delete one."""
    turns: list[list[EntryOp]] = [
        [PubOp("t.a", (b"1",), False), CreateGroupOp("keep", "t.*", 1000, True), CreateGroupOp("drop", ">")],
        [PubOp("t.b", (b"2", b"3"), True), FetchOp("keep", "m", 2), FetchOp("drop", "m", 5)],
        [AckOp("keep", "m", (("t.a", 0),)), FetchOp("keep", "n", 5)],
        [DeleteGroupOp("drop"), PubOp("t.c", (b"4",), False)],
        [FetchOp("keep", "m", 1)],
    ]
    return [encode_entry(T0 + n, ops) for n, ops in enumerate(turns)]


def test_group_rows_survive_a_restart_and_a_deleted_group_leaves_none(tmp_path: Path) -> None:
    store = TopicStore.open(str(tmp_path))
    broker, in_memory = Broker(BrokerSettings(), store), Broker(BrokerSettings())
    for index, data in enumerate(entries(), start=1):
        broker.apply(index, data)
        in_memory.apply(index, data)
        store.checkpoint_now(1, take_delta(broker))
    assert [name for name, _ in store.index.groups()] == ["keep"]
    store.close()

    store = TopicStore.open(str(tmp_path))
    assert store.record is not None
    restarted = rebuild(BrokerSettings(), store, store.record.counters, store.index.topics(), store.index.sessions(),
                        store.index.groups())
    assert dump(restarted) == dump(in_memory)
    assert set(restarted.groups.groups) == {"keep"}
    store.close()


def test_a_database_from_before_consumer_groups_opens_with_the_table_created(tmp_path: Path) -> None:
    store = TopicStore.open(str(tmp_path))
    broker, in_memory = Broker(BrokerSettings(), store), Broker(BrokerSettings())
    data = encode_entry(T0, [PubOp("t", (b"x",), False)])
    broker.apply(1, data)
    in_memory.apply(1, data)
    store.checkpoint_now(1, take_delta(broker))
    store.close()
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        db.execute("DROP TABLE consumer_groups")

    store = TopicStore.open(str(tmp_path))
    assert store.record is not None
    assert list(store.index.groups()) == []
    restarted = rebuild(BrokerSettings(), store, store.record.counters, store.index.topics(), store.index.sessions(),
                        store.index.groups())
    assert dump(restarted) == dump(in_memory)
    store.close()
