"""The topic segments' index and checkpoint record, in one SQLite database (``index.db``).

SQLite (the standard library's `sqlite3`) gives what the index needs and nothing Wiber would write
better by hand: atomic transactions that survive power loss (``synchronous=FULL``), readers that do
not block the writer (WAL), and sorted tables without row ids for the sparse index. One
transaction per checkpoint writes the blocks flushed since the last one, the rows of the topics
and sessions that changed, and the checkpoint record; work in proportion to what changed.

Tables::

    meta(key, value)                               checkpoint record (see `CheckpointRecord`)
    topics(id, name, first, end_, nbytes, age_key) one row per topic ever written (`wiber.broker.checkpoint`)
    blocks(topic_id, first, count, segment, position, length)   one row per block (sparse index)
    sessions(client_id, row)                       one row per dedup session
    consumer_groups(name, row)                     one row per durable consumer group (created at open
                                                   in a database older than consumer groups)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import msgpack

from wiber.storage.topics.blocks import BlockRef

__all__ = ["CheckpointRecord", "IndexDb", "INDEX_NAME", "INDEX_FORMAT"]

INDEX_NAME: Final = "index.db"
INDEX_FORMAT: Final = 2
"""Format of a data directory with topic segments (1 was every message inside the Raft snapshot)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, first INTEGER NOT NULL,
                                  end_ INTEGER NOT NULL, nbytes INTEGER NOT NULL, age_key REAL NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(topic_id INTEGER NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
                                  segment INTEGER NOT NULL, position INTEGER NOT NULL, length INTEGER NOT NULL,
                                  PRIMARY KEY(topic_id, first)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_segment ON blocks(segment);
CREATE TABLE IF NOT EXISTS sessions(client_id TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumer_groups(name TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """What a checkpoint says about the files: everything at or below `applied_index` is in them.

    Attributes:
        applied_index, applied_term: the last log entry the checkpoint covers, and its term.
        segments: the segment numbers holding live blocks, ascending; the last is the active one.
        active_length: the active segment's length at the checkpoint (recovery cuts it there).
        counters: the broker's counters row (`wiber.broker.checkpoint`).
    """

    applied_index: int
    applied_term: int
    segments: tuple[int, ...]
    active_length: int
    counters: bytes

    def pack(self) -> bytes:
        """Returns: the record as msgpack."""
        packed: bytes = msgpack.packb(
            [INDEX_FORMAT, self.applied_index, self.applied_term, list(self.segments), self.active_length,
             self.counters], use_bin_type=True)
        return packed

    @classmethod
    def unpack(cls, data: bytes) -> CheckpointRecord:
        """Returns: the record `pack` wrote. Raises: ValueError naming what is wrong."""
        try:
            fields = msgpack.unpackb(data, raw=False, use_list=False)
        except Exception as exc:  # msgpack raises many types; each means the same here
            raise ValueError(f"checkpoint record is not msgpack ({type(exc).__name__})") from None
        if type(fields) is not tuple or len(fields) != 6 or fields[0] != INDEX_FORMAT:
            raise ValueError(f"checkpoint record is not format {INDEX_FORMAT}")
        _, index, term, segments, length, counters = fields
        if not all(type(v) is int and v >= 0 for v in (index, term, length)) or type(counters) is not bytes:
            raise ValueError("checkpoint record has a bad field")
        if type(segments) is not tuple or not segments or not all(type(s) is int and s >= 1 for s in segments):
            raise ValueError("checkpoint record has a bad segment list")
        if list(segments) != sorted(set(segments)):
            raise ValueError("checkpoint record's segments are not ascending")
        return cls(index, term, tuple(segments), length, counters)


def create_private(path: str) -> None:
    """Create the database file `path` (if missing) readable by this user only: SQLite would make it
    0644, and its WAL and journal files take the database's mode."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class IndexDb:
    """One connection to ``index.db``: the loop's reader, or the checkpoint thread's writer."""

    def __init__(self, path: str, *, fsync: bool = True, thread_safe: bool = False) -> None:
        self.path = path
        create_private(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=not thread_safe)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
            self._db.executescript(_SCHEMA)
        except BaseException:  # e.g. not a database: the connection must not outlive the refusal
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # ------------------------------------------------------------------------ reading

    def record(self) -> CheckpointRecord | None:
        """Returns: the last committed checkpoint record, or None before the first. Raises: ValueError."""
        row = self._db.execute("SELECT value FROM meta WHERE key='checkpoint'").fetchone()
        return None if row is None else CheckpointRecord.unpack(row[0])

    def block_at(self, topic_id: int, offset: int) -> BlockRef | None:
        """Returns: the block of `topic_id` holding `offset` (the last one starting at or before it), or None."""
        row = self._db.execute(
            "SELECT first, count, segment, position, length FROM blocks WHERE topic_id=? AND first<=? "
            "ORDER BY first DESC LIMIT 1", (topic_id, offset)).fetchone()
        return None if row is None else BlockRef(topic_id, *row)

    def blocks_after(self, topic_id: int, first: int, below: int, limit: int) -> list[BlockRef]:
        """Returns: up to `limit` blocks of `topic_id` starting after `first` and below `below`, in order."""
        rows = self._db.execute(
            "SELECT first, count, segment, position, length FROM blocks WHERE topic_id=? AND first>? AND first<? "
            "ORDER BY first LIMIT ?", (topic_id, first, below, limit)).fetchall()
        return [BlockRef(topic_id, *row) for row in rows]

    def topics(self) -> Iterator[tuple[int, str, int, int, int, float]]:
        """Returns: every topic row, by id."""
        return iter(self._db.execute("SELECT id, name, first, end_, nbytes, age_key FROM topics ORDER BY id"))

    def sessions(self) -> Iterator[tuple[str, bytes]]:
        """Returns: every session row."""
        return iter(self._db.execute("SELECT client_id, row FROM sessions"))

    def groups(self) -> Iterator[tuple[str, bytes]]:
        """Returns: every consumer group row (`wiber.broker.checkpoint`)."""
        return iter(self._db.execute("SELECT name, row FROM consumer_groups"))

    def block_count(self) -> int:
        """Returns: how many blocks the index holds."""
        count: int = self._db.execute("SELECT count(*) FROM blocks").fetchone()[0]
        return count

    def segment_is_dead(self, segment: int) -> bool:
        """Returns: whether every block in `segment` lies below its topic's first offset (retention
        removed all of it), as of the last commit."""
        row = self._db.execute(
            "SELECT 1 FROM blocks b JOIN topics t ON t.id = b.topic_id "
            "WHERE b.segment=? AND b.first + b.count > t.first LIMIT 1", (segment,)).fetchone()
        return row is None

    # ------------------------------------------------------------------------ writing

    def commit(
        self,
        record: CheckpointRecord,
        blocks: Iterable[tuple[int, int, int, int, int, int]],
        topics: Iterable[tuple[int, str, int, int, int, float]],
        sessions: Iterable[tuple[str, bytes | None]],
        dropped_segments: Iterable[int] = (),
        replace: bool = False,
        groups: Iterable[tuple[str, bytes | None]] = (),
    ) -> None:
        """Write one checkpoint in one transaction: new blocks, changed topics, sessions and consumer
        groups (None: deleted), the record. With `replace`, every earlier row goes first, in the same
        transaction (a snapshot installed)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                for table in ("meta", "topics", "blocks", "sessions", "consumer_groups"):
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            for segment in dropped_segments:
                db.execute("DELETE FROM blocks WHERE segment=?", (segment,))
            db.executemany(
                "INSERT OR REPLACE INTO blocks(topic_id, first, count, segment, position, length) VALUES (?,?,?,?,?,?)",
                blocks)
            db.executemany("INSERT OR REPLACE INTO topics(id, name, first, end_, nbytes, age_key) VALUES (?,?,?,?,?,?)",
                           topics)
            kept = []
            gone = []
            for client_id, row in sessions:
                if row is None:
                    gone.append((client_id,))
                else:
                    kept.append((client_id, row))
            db.executemany("DELETE FROM sessions WHERE client_id=?", gone)
            db.executemany("INSERT OR REPLACE INTO sessions(client_id, row) VALUES (?,?)", kept)
            groups = list(groups)
            db.executemany("DELETE FROM consumer_groups WHERE name=?", [(name,) for name, row in groups if row is None])
            db.executemany("INSERT OR REPLACE INTO consumer_groups(name, row) VALUES (?,?)",
                           [(name, row) for name, row in groups if row is not None])
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('checkpoint', ?)", (record.pack(),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
