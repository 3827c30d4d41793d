"""Stored messages, the results of applying ops, and where the broker keeps the messages (`RecordStore`).

The broker decides *what* is stored at which offset; a `RecordStore` keeps the messages themselves.
Tests and the simulation use `MemoryRecordStore`; a node uses the on-disk topic segments
(`wiber.storage.topics`), so that a node's memory holds topics and sessions, not messages
(docs/storage.md). The store is told everything that changes what is kept (appends, and the first
offset retention leaves), so every store keeps the same messages for the same applied entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple, Protocol

from wiber.broker.entry import tuple_constructor
from wiber.errors import WireError
from wiber.protocol import pub_reply

__all__ = [
    "MemoryRecordStore",
    "PubResult",
    "Record",
    "RecordStore",
    "StoredRecord",
    "record_to_wire",
]

Answer = tuple[str, int, int, int, int, float]
"""A kept answer of a session: (topic, offset, count (0 for a PUB), index, lamport, ts)."""

StoredRecord = tuple[str, int, bytes, int, float, int, bool]
"""A stored message as the broker keeps it: a plain tuple in `Record`'s field order.

A node keeps every retained message. Exact tuples of atomic values are the one kind of object
CPython's cycle collector stops tracking (after its first pass over them; a NamedTuple or a slotted
class stays tracked), and full collections over millions of tracked records took ~10% of a loaded
node's CPU and paused it for over 100 ms (measured). `Record` is the readable view of one.
"""

R_DATA: Final = 2
R_TS: Final = 4
"""Positions in a `StoredRecord` (literal constants, so indexing keeps each field's type)."""


class Record(NamedTuple):
    """One stored message, as HISTORY returns it and every node fans it out (`Record._make` of a
    `StoredRecord`, which equals it).

    Attributes:
        topic, offset: where it is; offsets are dense per topic from 0.
        data: the payload.
        lamport: assigned at apply time, strictly increasing in log order.
        ts: the entry's time (leader's synced clock, never going back), epoch seconds.
        index: the log index of the entry that stored it.
        late: the reorder buffer appended it after its slot (docs/design.md section 5).
    """

    topic: str
    offset: int
    data: bytes
    lamport: int
    ts: float
    index: int  # type: ignore[assignment]  # a field named like tuple.index, which nothing here calls
    late: bool

    def to_wire(self) -> dict[str, Any]:
        """Returns: `record_to_wire` of this record."""
        return record_to_wire(self)


def record_to_wire(record: StoredRecord) -> dict[str, Any]:
    """Returns: the fan-out map and HISTORY item, ``{topic, offset, data, lamport, ts, index}``.

    ``late: True`` is added only for a late message, so the usual map stays as docs/design.md section 3 has it.
    """
    topic, offset, data, lamport, ts, index, late = record
    wire = {"topic": topic, "offset": offset, "data": data, "lamport": lamport, "ts": ts, "index": index}
    if late:
        wire["late"] = True
    return wire


class PubResult(NamedTuple):
    """The outcome of one `PubOp`, in entry order.

    Attributes:
        answer: ``(topic, offset, count, index, lamport, ts)`` (count 0 for a PUB; offset and
            lamport are a batch's first), the same tuple the session keeps; None on error.
        duplicate: the answer is a retry's, kept from the first time.
        error: `SessionExpired` for a retry whose answer is gone; None otherwise.
        records: what was stored (`StoredRecord`s), to fan out; empty for a duplicate or an error.
    """

    answer: Answer | None
    duplicate: bool
    error: WireError | None
    records: tuple[StoredRecord, ...]

    @property
    def reply(self) -> dict[str, Any] | None:
        """The ok reply's fields: PUB ``{topic, offset, index, lamport, ts, duplicate}``, PUB_BATCH
        also ``count``; None on error. (The node packs `protocol.pub_reply` without this dict.)"""
        if self.answer is None:
            return None
        fields = pub_reply(self.answer, self.duplicate, None)
        del fields["ok"]
        return fields


make_result = tuple_constructor(PubResult)


class RecordStore(Protocol):
    """Where the broker keeps the messages of its topics, by topic id (ids are given in creation order).

    Every node's store must hold the same messages after the same applied entries: the broker calls
    `append` for every stored op and `trim` whenever retention moves a topic's first offset.
    """

    def add_topic(self, topic_id: int, name: str) -> None:
        """Topic `name` was created with id `topic_id` (the next id; before any of its records)."""
        ...

    def append(self, topic_id: int, records: Sequence[StoredRecord]) -> None:
        """Keep `records` (consecutive offsets, following the topic's last one) at the end of the topic."""
        ...

    def read(self, topic_id: int, start: int, stop: int, max_bytes: int | None = None) -> list[StoredRecord]:
        """Returns: the kept records with offsets ``start .. stop - 1`` in order; fewer when their
        data would pass `max_bytes` (never none when ``start < stop``)."""
        ...

    def scan(self, topic_id: int, start: int) -> Iterator[StoredRecord]:
        """Returns: the kept records from offset `start` on, in order (retention reads the oldest)."""
        ...

    def trim(self, topic_id: int, first: int) -> None:
        """Retention removed the messages of `topic_id` below offset `first`: they may be forgotten."""
        ...


_COMPACT_MIN: Final = 4096
"""A topic's dead prefix is deleted once it is at least this long and over half its record list."""


class _MemoryTopic:
    """One topic's kept records in memory: ``records[head:]`` hold offsets ``first ..``."""

    __slots__ = ("first", "head", "records")

    def __init__(self, first: int) -> None:
        self.records: list[StoredRecord] = []
        self.head = 0
        self.first = first


class MemoryRecordStore:
    """`RecordStore` in memory: for the unit tests, the simulation, and a broker restored from bytes.

    Trimming moves a start pointer and deletes the dead prefix once it is both large and over half
    the list, so retention is O(removed) amortized and reads O(count).
    """

    def __init__(self) -> None:
        self._topics: dict[int, _MemoryTopic] = {}

    def add_topic(self, topic_id: int, name: str) -> None:
        pass  # records carry their topic's name

    def append(self, topic_id: int, records: Sequence[StoredRecord]) -> None:
        topic = self._topics.get(topic_id)
        if topic is None:
            topic = self._topics[topic_id] = _MemoryTopic(records[0][1])
        if len(records) == 1:
            topic.records.append(records[0])
        else:
            topic.records.extend(records)

    def read(self, topic_id: int, start: int, stop: int, max_bytes: int | None = None) -> list[StoredRecord]:
        topic = self._topics.get(topic_id)
        if topic is None or stop <= start:
            return []
        position = topic.head + (start - topic.first)
        chosen = topic.records[position : position + (stop - start)]
        if max_bytes is not None:
            total = 0
            for count, record in enumerate(chosen):
                total += len(record[2])
                if total > max_bytes and count:
                    return chosen[:count]
        return chosen

    def scan(self, topic_id: int, start: int) -> Iterator[StoredRecord]:
        topic = self._topics.get(topic_id)
        if topic is None:
            return iter(())
        records = topic.records
        position = topic.head + (start - topic.first)
        return (records[i] for i in range(position, len(records)))

    def trim(self, topic_id: int, first: int) -> None:
        topic = self._topics.get(topic_id)
        if topic is None or first <= topic.first:
            return
        topic.head += first - topic.first
        topic.first = first
        head = topic.head
        if head >= _COMPACT_MIN and 2 * head >= len(topic.records):
            del topic.records[:head]
            topic.head = 0

    def kept(self, topic_id: int) -> list[StoredRecord]:
        """Returns: a topic's kept records (for tests that look inside)."""
        topic = self._topics.get(topic_id)
        return [] if topic is None else topic.records[topic.head :]

    def dead_prefix(self, topic_id: int) -> int:
        """Returns: how many trimmed records a topic's list still holds (for the compaction test)."""
        topic = self._topics.get(topic_id)
        return 0 if topic is None else topic.head
