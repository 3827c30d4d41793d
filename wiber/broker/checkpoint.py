"""The broker's part of a node's checkpoint: rows of what changed, and the broker rebuilt from rows.

A checkpoint must cost work in proportion to what changed since the last one, never to every topic
or session (docs/storage.md: 100,000 topics are a normal load). The broker marks the topics and
sessions it changes; `take_delta` hands their rows over and clears the marks; the node's topic store
writes them, with the counters, in one database transaction. `rebuild` makes a broker from all
the rows a store holds, at start.

Rows:

* topic:   ``(id, name, first, end, nbytes, age_key)``
* session: ``(client_id, msgpack [floor, last_index, [[seq, topic, offset, count, index, lamport, ts], ...]])``,
  or ``(client_id, None)`` for a session that is gone (evicted)
* group:   ``(name, msgpack [pattern, ack_wait_ms, from_start, created_at, [[topic, next_offset,
  [[offset, member, delivery_count, deadline], ...]], ...]])`` (`ConsumerGroups.row`), or ``(name, None)``
  for a group deleted
* counters: ``msgpack [applied_index, last_lamport, last_ts, late_count, [evicted client_id, ...],
  membership]`` (membership: the newest CONFIG entry's data, or nil; older checkpoints have 5 items)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from wiber.broker.entry import INT63_MAX, topic_problem, ts_problem
from wiber.broker.records import RecordStore
from wiber.broker.snapshot import SnapshotError, restore_groups, session_from_row
from wiber.broker.state import Broker, BrokerSettings

__all__ = ["BrokerDelta", "TopicRow", "rebuild", "take_delta"]

TopicRow = tuple[int, str, int, int, int, float]


@dataclass(frozen=True, slots=True)
class BrokerDelta:
    """What changed in a broker since the last checkpoint took its rows."""

    applied_index: int
    counters: bytes
    topics: list[TopicRow]
    sessions: list[tuple[str, bytes | None]]
    groups: list[tuple[str, bytes | None]] = field(default_factory=list)
    """Consumer group rows changed since the last checkpoint; None for a group deleted."""


def take_delta(broker: Broker) -> BrokerDelta:
    """Returns: the rows of the topics, sessions and consumer groups changed since the last call, and
    the counters; clears the broker's marks (O(changed + evicted ids))."""
    topic = broker.topic_by_id
    topics = [(t.id, t.name, t.first, t.end, t.nbytes, t.age_key) for t in map(topic, sorted(broker.dirty_topics))]
    broker.dirty_topics.clear()
    table = broker.sessions
    sessions: list[tuple[str, bytes | None]] = []
    for client_id in sorted(table.dirty):
        session = table.by_client.get(client_id)
        sessions.append((client_id, None if session is None else msgpack.packb(session.to_row(), use_bin_type=True)))
    table.dirty.clear()
    consumer_groups = broker.groups
    groups: list[tuple[str, bytes | None]] = [
        (name, msgpack.packb(consumer_groups.row(name), use_bin_type=True) if name in consumer_groups.groups else None)
        for name in sorted(consumer_groups.dirty)
    ]
    consumer_groups.dirty.clear()
    counters = msgpack.packb(
        [broker.applied_index, broker.last_lamport, broker.last_ts, broker.late_count, list(table.evicted),
         broker.membership],
        use_bin_type=True,
    )
    return BrokerDelta(broker.applied_index, counters, topics, sessions, groups)


def rebuild(
    settings: BrokerSettings,
    store: RecordStore,
    counters: bytes,
    topics: Iterable[TopicRow],
    sessions: Iterable[tuple[str, bytes]],
    groups: Iterable[tuple[str, bytes]] = (),
) -> Broker:
    """Returns: the broker whose checkpoint rows these are, reading its messages from `store`.

    Raises: SnapshotError naming the first bad row (the node refuses to start on it).
    """
    try:
        fields = _unpack_array(counters, (5, 6), "[applied_index, lamport, ts, late, evicted, membership]")
    except ValueError as exc:
        raise SnapshotError(f"bad checkpoint counters: {exc}") from None
    applied_index, last_lamport, last_ts, late_count, evicted = fields[:5]
    membership = fields[5] if len(fields) > 5 else None  # (checkpoints from before membership change)
    if membership is not None and type(membership) is not bytes:
        raise SnapshotError("bad checkpoint counters: the membership is not bytes")
    if not all(type(v) is int and 0 <= v <= INT63_MAX for v in (applied_index, last_lamport, late_count)):
        raise SnapshotError("bad checkpoint counters: negative or non-integer count")
    if type(last_ts) is not float or ts_problem(last_ts) is not None or type(evicted) is not tuple:
        raise SnapshotError("bad checkpoint counters: last_ts or evicted")
    broker = Broker(settings, store)
    broker._applied_index = applied_index
    broker._last_lamport = last_lamport
    broker._last_ts = last_ts
    broker._late_count = late_count
    broker.membership = membership
    for expected, (topic_id, name, first, end, nbytes, age_key) in enumerate(topics):
        if topic_id != expected or topic_problem(name) is not None or not 0 <= first <= end or nbytes < 0:
            raise SnapshotError(f"bad checkpoint topic row {topic_id}: {name!r:.60} {first}..{end}")
        topic = broker._new_topic(name, first)
        topic.end = end
        topic.nbytes = nbytes
        if end > first and topic.retention.max_age_s is not None:
            broker._start_aging(topic, topic.retention.max_age_s, age_key)
    table = broker.sessions
    for client_id, row in sessions:
        try:
            floor, last_index, answers = _unpack_session(row)
        except ValueError as exc:
            raise SnapshotError(f"bad checkpoint session {client_id!r:.60}: {exc}") from None
        table.by_client[client_id] = session_from_row(client_id, floor, last_index, answers)
    table.rebuild_activity()
    for client_id in evicted:
        if type(client_id) is not str:
            raise SnapshotError("bad checkpoint counters: an evicted client_id is not a str")
        table.evicted[client_id] = None
    restore_groups(broker, ((name, _unpack_group(name, row)) for name, row in groups))
    return broker


def _unpack_group(name: str, row: bytes) -> Any:
    """Returns: the msgpack value of a group row. Raises: SnapshotError: not msgpack."""
    try:
        return msgpack.unpackb(row, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises many types; each means the same here
        raise SnapshotError(f"bad checkpoint consumer group {name!r:.60}: not msgpack ({type(exc).__name__})") from None


def _unpack_session(row: bytes) -> tuple[Any, Any, Any]:
    """Returns: (floor, last_index, answers) of a packed session row. Raises: ValueError."""
    floor, last_index, answers = _unpack_array(row, 3, "[floor, last_index, answers]")
    return floor, last_index, answers


def _unpack_array(data: bytes, size: int | tuple[int, ...], shape: str) -> tuple[Any, ...]:
    """Returns: the msgpack array of `size` items (one of the sizes) `data` holds. Raises: ValueError
    naming `shape`."""
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises many types; each means the same here
        raise ValueError(f"not msgpack ({type(exc).__name__})") from None
    if type(fields) is not tuple or len(fields) not in (size if isinstance(size, tuple) else (size,)):
        raise ValueError(f"not {shape}")
    return fields
