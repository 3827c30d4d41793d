"""A real checkpoint's files, made once with the product's own code, and mutations of them.

Random bytes named ``index.db`` stop at "file is not a database"; to reach the checks a follower
runs on a staged snapshot (`wiber.node.checkpoints.Checkpoints.check_staged`: the index, every
segment's blocks, the broker state rebuilt from the rows), a forged snapshot must carry a real
SQLite index whose rows are wrong. So: `template` builds a checkpoint at (`INDEX`, `TERM`) of a
broker with two topics and a session (`TopicStore`, `Broker`, `take_delta`), and `mutated` sets one
of its rows' columns to a boundary value of any SQLite type, mutates a msgpack blob inside a row
(the checkpoint record, its counters, a session), deletes or repeats rows, or flips segment bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Final

import msgpack

from tests.fuzz import mutate, values
from wiber.broker.checkpoint import take_delta
from wiber.broker.entry import PubOp, encode_entry
from wiber.broker.state import Broker, BrokerSettings
from wiber.storage.topics.index import INDEX_NAME, CheckpointRecord
from wiber.storage.topics.store import TopicStore

INDEX: Final = 1
"""The template's applied index: at or below every follower's commit index once the cluster has
committed its first entry, so a staged copy that passes the checks is discarded, never installed."""
TERM: Final = 1

COLUMNS: Final = {
    "topics": ("id", "name", "first", "end_", "nbytes", "age_key"),
    "blocks": ("topic_id", "first", "count", "segment", "position", "length"),
    "sessions": ("client_id", "row"),
    "meta": ("value",),
}
"""Every column of the index's tables (wiber/storage/topics/index.py)."""

_SCRATCH: Final = "/dev/shm" if os.path.isdir("/dev/shm") else None


@functools.cache
def template() -> tuple[tuple[str, bytes], ...]:
    """Returns: the files of a true checkpoint at (`INDEX`, `TERM`): (name, content) pairs, sorted."""
    with tempfile.TemporaryDirectory(prefix="wiber-fuzz-checkpoint-", dir=_SCRATCH) as directory:
        store = TopicStore.open(directory, fsync=False, segment_bytes=1024)  # a few segments, sealed ones too
        try:
            broker = Broker(BrokerSettings(), store)
            ops = [PubOp("fuzz.a", (bytes(200),), False, client_id="fuzz-1", seq=seq, lamport=3)
                   for seq in (1, 2)]
            ops += [PubOp("fuzz.b", (b"x", bytes(300)), True, client_id="fuzz-2", seq=7, ack_floor=7),
                    PubOp("fuzz.a", (bytes(500),), False)]
            broker.apply(INDEX, encode_entry(1.7e9, ops))
            store.checkpoint_now(TERM, take_delta(broker))
        finally:
            store.close()
        names = sorted(n for n in os.listdir(directory) if not n.endswith(("-wal", "-shm", "-journal")))
        return tuple((name, Path(directory, name).read_bytes()) for name in names)


def _sql_value(rng: random.Random, current: Any) -> Any:
    """Returns: a value SQLite can bind: a boundary of `current`'s type, or of another type."""
    pick = rng.random()
    if pick < 0.4 and isinstance(current, bytes):
        return mutate.mutate_packed(rng, current) if rng.random() < 0.7 else values.random_bytes(rng, 64)
    if pick < 0.7:
        value = values.boundary_int(rng)
        return value if -2**63 <= value < 2**63 else 2**63 - 1
    if pick < 0.8:
        return values.boundary_float(rng)
    if pick < 0.9:
        return values.random_str(rng)
    return rng.choice((b"", b"\xc1", values.random_bytes(rng, 32)))


def _mutate_rows(rng: random.Random, db: sqlite3.Connection) -> None:
    """Change the rows of one table: delete them all, copy the topics, or set one column everywhere."""
    table = rng.choice(list(COLUMNS))
    change = rng.random()
    if change < 0.1:
        db.execute(f"DELETE FROM {table}")
        return
    if change < 0.2 and table == "topics":
        db.execute("INSERT INTO topics SELECT id + 1000, name || '.copy', first, end_, nbytes, age_key "
                   "FROM topics")
        return
    column = rng.choice(COLUMNS[table])
    current = db.execute(f"SELECT {column} FROM {table} LIMIT 1").fetchone()
    value = _sql_value(rng, current[0] if current else None)
    if table == "meta" and isinstance(current[0] if current else None, bytes) and rng.random() < 0.5:
        value = _mutate_counters(rng, current[0])
    db.execute(f"UPDATE {table} SET {column} = ?", (value,))


def _mutate_counters(rng: random.Random, record: bytes) -> bytes:
    """Returns: the checkpoint record with its counters blob (msgpack inside msgpack) mutated."""
    try:
        fields = msgpack.unpackb(record, raw=False)
    except Exception:  # msgpack raises many types: an earlier change broke it; change it again
        return mutate.mutate_bytes(rng, record)
    if not isinstance(fields, list) or not fields or not isinstance(fields[-1], bytes):
        return mutate.mutate_packed(rng, record)
    fields[-1] = mutate.mutate_packed(rng, fields[-1])
    return values.pack(fields)


def _move_to(db: sqlite3.Connection, index: int, term: int) -> None:
    """Make the checkpoint say it is at (`index`, `term`): its record and its broker counters."""
    (packed,) = db.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
    record = CheckpointRecord.unpack(packed)
    counters = msgpack.unpackb(record.counters, raw=False)
    counters[0] = index
    moved = dataclasses.replace(record, applied_index=index, applied_term=term,
                                counters=values.pack(counters))
    db.execute("UPDATE meta SET value = ? WHERE key = 'checkpoint'", (moved.pack(),))


def _mutate_index(rng: random.Random, content: bytes, at: tuple[int, int] | None, changes: int) -> bytes:
    """Returns: the index database `content` moved to `at` (index, term) when given, with `changes`
    changes to its rows (see the module docstring)."""
    fd, path = tempfile.mkstemp(prefix="wiber-fuzz-index-", suffix=".db", dir=_SCRATCH)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        db = sqlite3.connect(path, isolation_level=None)
        try:
            if at is not None:
                _move_to(db, *at)
            for _ in range(changes):
                try:
                    _mutate_rows(rng, db)
                except (sqlite3.Error, OverflowError):
                    pass  # a constraint refused this change: the others still apply
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
        return Path(path).read_bytes()
    finally:
        for leftover in (path, path + "-wal", path + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def mutated(rng: random.Random, at: tuple[int, int] | None = None) -> list[tuple[str, bytes]]:
    """Returns: the template's files (moved to `at`, (index, term), when given), now and then as they
    are, else with one kind of damage: to the index's rows, or to any file's bytes."""
    pick = rng.random()
    changes = rng.choice((1, 1, 2, 3)) if pick >= 0.3 else 0
    files = list(template())
    if changes or at is not None:
        files = [(name, _mutate_index(rng, content, at, changes) if name == INDEX_NAME else content)
                 for name, content in files]
    if 0.1 <= pick < 0.3:
        k = rng.randrange(len(files))
        files[k] = (files[k][0], mutate.mutate_bytes(rng, files[k][1]))
    return files
