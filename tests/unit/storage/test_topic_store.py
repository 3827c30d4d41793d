"""The topic segments (`wiber.storage.topics`): the broker over them behaves exactly as over memory,
checkpoints survive a restart, recovery cuts what came after the checkpoint, damage is refused with
the file and byte, and retention removes whole segments."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiber.broker import Broker, BrokerSettings, PubOp, encode_entry
from wiber.broker.checkpoint import rebuild, take_delta
from wiber.broker.snapshot import dump
from wiber.config import RetentionConfig
from wiber.errors import StorageError
from wiber.storage import CorruptLog
from wiber.storage.topics import TopicStore
from wiber.storage.topics import store as store_module
from wiber.storage.topics.blocks import segment_name
from wiber.storage.topics.index import IndexDb

T0 = 1_700_000_000.0


@pytest.fixture(autouse=True)
def small_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flush every few kilobytes, so a small test crosses buffer, recent blocks and index."""
    monkeypatch.setattr(store_module, "FLUSH_BYTES", 3000)


def entries(seed: int, count: int, topics: int = 6) -> Iterator[bytes]:
    """Yields: `count` random broker entries (PUB and PUB_BATCH, some with sessions) over `topics` topics."""
    rng = random.Random(seed)
    seq = 0
    for n in range(count):
        ops = []
        for _ in range(rng.randrange(1, 5)):
            topic = f"t.{rng.randrange(topics)}"
            seq += 1
            if rng.random() < 0.3:
                messages = tuple(os.urandom(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 30)))
                ops.append(PubOp(topic, messages, True, f"c{rng.randrange(4)}", seq, None, 0, False))
            else:
                ops.append(PubOp(topic, (rng.randbytes(rng.randrange(1, 200)),), False, None, None, None, 0, False))
        yield encode_entry(T0 + n, ops)


SETTINGS = [
    BrokerSettings(),
    BrokerSettings(retention=RetentionConfig(max_messages=40)),
    BrokerSettings(retention=RetentionConfig(max_bytes=5000)),
    BrokerSettings(retention=RetentionConfig(max_age_s=30.0)),
]


def open_store(path: Path, retention: bool = True, segment_bytes: int = 16 << 10) -> TopicStore:
    return TopicStore.open(str(path), segment_bytes=segment_bytes, retention=retention)


def reopen(path: Path, settings: BrokerSettings, segment_bytes: int = 16 << 10) -> tuple[TopicStore, Broker]:
    store = open_store(path, segment_bytes=segment_bytes)
    assert store.record is not None
    broker = rebuild(settings, store, store.record.counters, store.index.topics(), store.index.sessions())
    return store, broker


def same_reads(a: Broker, b: Broker) -> None:
    """Every topic reads the same from both brokers, from several places and sizes."""
    assert a.topics() == b.topics()
    for topic in a.topics():
        for start in (0, a.first_offset(topic), max(0, a.end_offset(topic) - 7)):
            for limit in (1, 50, 1000):
                assert a.history(topic, start, limit=limit) == b.history(topic, start, limit=limit)
        assert a.history(topic, last=25) == b.history(topic, last=25)


@pytest.mark.parametrize("settings", SETTINGS, ids=["keep", "count", "bytes", "age"])
def test_the_broker_over_segments_is_the_broker_over_memory(tmp_path: Path, settings: BrokerSettings) -> None:
    store = open_store(tmp_path)
    on_disk, in_memory = Broker(settings, store), Broker(settings)
    rng = random.Random(7)
    for index, data in enumerate(entries(1, 300), start=1):
        assert on_disk.apply(index, data) == in_memory.apply(index, data)
        if rng.random() < 0.05:
            store.checkpoint_now(1, take_delta(on_disk))
        if index % 25 == 0:
            same_reads(on_disk, in_memory)
    assert dump(on_disk) == dump(in_memory)
    store.close()


@pytest.mark.parametrize("settings", SETTINGS, ids=["keep", "count", "bytes", "age"])
def test_a_restart_rebuilds_the_checkpoint_and_the_log_after_it_is_applied_again(
        tmp_path: Path, settings: BrokerSettings) -> None:
    log = list(entries(2, 200))
    store = open_store(tmp_path)
    broker = Broker(settings, store)
    for index, data in enumerate(log[:120], start=1):
        broker.apply(index, data)
    store.checkpoint_now(1, take_delta(broker))
    for index, data in enumerate(log[120:], start=121):  # applied and flushed, never checkpointed
        broker.apply(index, data)
    store.flush()
    store.close()

    store, restarted = reopen(tmp_path, settings)
    assert restarted.applied_index == 120
    for index, data in enumerate(log[120:], start=121):
        restarted.apply(index, data)
    reference = Broker(settings)
    for index, data in enumerate(log, start=1):
        reference.apply(index, data)
    assert dump(restarted) == dump(reference)
    same_reads(restarted, reference)
    store.close()


def test_recovery_cuts_what_was_written_after_the_checkpoint(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_bytes=1 << 30)
    broker = Broker(BrokerSettings(), store)
    log = list(entries(3, 100))
    for index, data in enumerate(log[:50], start=1):
        broker.apply(index, data)
    store.checkpoint_now(1, take_delta(broker))
    assert store.record is not None
    length = store.record.active_length
    for index, data in enumerate(log[50:], start=51):
        broker.apply(index, data)
    store.flush()
    active = tmp_path / segment_name(store.segments[-1])
    assert active.stat().st_size > length
    store.close()
    (tmp_path / segment_name(store.segments[-1] + 1)).write_bytes(b"a segment newer than the checkpoint")

    store = open_store(tmp_path, segment_bytes=1 << 30)
    assert active.stat().st_size == length
    assert sorted(os.listdir(tmp_path)) == sorted(n for n in os.listdir(tmp_path) if not n.startswith("seg-")) + [
        active.name]
    store.close()


def checkpointed(tmp_path: Path, count: int = 200) -> TopicStore:
    store = open_store(tmp_path, segment_bytes=8 << 10)
    broker = Broker(BrokerSettings(), store)
    for index, data in enumerate(entries(4, count), start=1):
        broker.apply(index, data)
    store.checkpoint_now(1, take_delta(broker))
    store.close()
    return store


def test_a_damaged_block_before_the_checkpoints_end_is_refused_with_file_and_byte(tmp_path: Path) -> None:
    store = checkpointed(tmp_path)
    assert store.record is not None
    active = tmp_path / segment_name(store.segments[-1])
    data = bytearray(active.read_bytes())
    data[min(20, len(data) - 1)] ^= 0xFF
    active.write_bytes(bytes(data))
    with pytest.raises(CorruptLog) as caught:
        open_store(tmp_path)
    assert active.name in str(caught.value) and "byte 0" in str(caught.value)


def test_a_missing_or_short_sealed_segment_is_refused(tmp_path: Path) -> None:
    store = checkpointed(tmp_path)
    assert len(store.segments) > 2
    sealed = tmp_path / segment_name(store.segments[0])
    sealed.write_bytes(sealed.read_bytes()[:-10])
    with pytest.raises(CorruptLog, match="its blocks reach"):
        open_store(tmp_path)
    sealed.unlink()
    with pytest.raises(CorruptLog, match="missing"):
        open_store(tmp_path)


def test_a_damaged_sealed_block_fails_its_read_not_the_node(tmp_path: Path) -> None:
    store = checkpointed(tmp_path)
    sealed = tmp_path / segment_name(store.segments[0])
    data = bytearray(sealed.read_bytes())
    data[100] ^= 0xFF
    sealed.write_bytes(bytes(data))
    store, broker = reopen(tmp_path, BrokerSettings(), segment_bytes=8 << 10)
    with pytest.raises(StorageError, match=sealed.name):
        for topic in broker.topics():
            broker.history(topic, 0, limit=1000)
    store.close()


def test_retention_removes_whole_segments_it_emptied(tmp_path: Path) -> None:
    settings = BrokerSettings(retention=RetentionConfig(max_messages=5))
    store = open_store(tmp_path, segment_bytes=4 << 10)
    broker = Broker(settings, store)
    reference = Broker(settings)
    highest = 0
    for index, data in enumerate(entries(5, 600, topics=3), start=1):
        broker.apply(index, data)
        reference.apply(index, data)
        if index % 20 == 0:
            store.checkpoint_now(1, take_delta(broker))
            highest = max(highest, store.segments[-1])
    segments = [n for n in os.listdir(tmp_path) if n.startswith("seg-")]
    assert highest > 100 and len(segments) <= 12  # a hundred and more written, all but the last few removed
    same_reads(broker, reference)
    store.close()
    store, restarted = reopen(tmp_path, settings, segment_bytes=4 << 10)
    same_reads(restarted, reference)
    store.close()


def test_many_topics_cost_no_file_each(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_bytes=1 << 30)
    broker = Broker(BrokerSettings(), store)
    ops = [PubOp(f"orders.{n}", (b"m%d" % n,), False, None, None, None, 0, False) for n in range(5000)]
    broker.apply(1, encode_entry(T0, ops))
    store.checkpoint_now(1, take_delta(broker))
    assert len(os.listdir(tmp_path)) <= 5  # one segment and the index database's files
    assert broker.history("orders.4321", 0)["messages"][0]["data"] == b"m4321"
    store.close()


def test_an_index_that_is_not_a_database_is_refused_and_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """A follower checks a leader's staged index with IndexDb: a damaged one (the fuzzer sends them)
    once left its SQLite connection open, one descriptor per refusal until the node ran out."""
    bogus = tmp_path / "index.db"
    bogus.write_bytes(b"not a database at all, " * 100)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(sqlite3.DatabaseError):
            IndexDb(str(bogus))
    assert len(os.listdir("/proc/self/fd")) <= before
