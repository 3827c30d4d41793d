"""The broker's whole state as one msgpack value: `dump` and `load`.

This is the self-contained snapshot, messages included: what the unit and property tests compare
(equal states give equal bytes), and what a data directory of the first on-disk format holds
(`wiber.storage.topics` migrates it). A node's checkpoints do not use it: they keep the messages
in the topic segments and only the metadata in the checkpoint database.

Layout::

    [SNAPSHOT_FORMAT, applied_index, last_lamport, last_ts, late_count,
     topics:   [[name, first_offset, [[data, lamport, ts, index, late], ...]], ...]  creation order
     sessions: [[client_id, floor, last_index, answers], ...]  sorted by client_id
               answers: [[seq, topic, offset, count, index, lamport, ts], ...]  sorted by seq
     evicted:  [client_id, ...]  oldest first
     groups:   [[name, pattern, ack_wait_ms, from_start, created_at, cursors], ...]  sorted by name;
               only when a consumer group exists (`wiber.broker.consumers`, `ConsumerGroups.row`)
               cursors: [[topic, next_offset, [[offset, member, delivery_count, deadline], ...]], ...]]

A state without consumer groups dumps as 8 items, byte for byte as before groups existed, and
a snapshot of 8 items loads as a state without groups.

A record's topic and offset are implied by its place. The settings are not included: `load` takes
them, as the node has them from its configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import msgpack

from wiber.broker.entry import INT63_MAX, topic_problem, ts_problem
from wiber.broker.records import R_DATA, MemoryRecordStore, RecordStore, StoredRecord
from wiber.broker.sessions import Session
from wiber.errors import WiberError

if TYPE_CHECKING:
    from wiber.broker.state import Broker, BrokerSettings

__all__ = ["SNAPSHOT_FORMAT", "SnapshotError", "dump", "load", "restore_groups"]

SNAPSHOT_FORMAT: Final = 1
"""First item of every broker snapshot."""

_LOAD_BATCH: Final = 4096
"""Records handed to the store per append while loading (bounded memory, few calls)."""


class SnapshotError(WiberError):
    """A broker snapshot cannot be restored: not one `dump` wrote, or damaged."""


def dump(broker: Broker) -> bytes:
    """Returns: `broker`'s whole state as deterministic msgpack bytes (layout in the module docstring)."""
    store = broker.store
    topics = [
        [topic.name, topic.first, [record[R_DATA:] for record in store.read(topic.id, topic.first, topic.end)]]
        for topic in broker.topic_states().values()
    ]
    sessions = broker.sessions
    rows = [[client_id, *session.to_row()] for client_id, session in sorted(sessions.by_client.items())]
    state = [
        SNAPSHOT_FORMAT,
        broker.applied_index,
        broker.last_lamport,
        broker.last_ts,
        broker.late_count,
        topics,
        [[cid, floor, last_index, [list(a) for a in answers]] for cid, floor, last_index, answers in rows],
        list(sessions.evicted),
    ]
    groups = broker.groups.groups
    if groups:
        state.append([[name, *broker.groups.row(name)] for name in sorted(groups)])
    packed: bytes = msgpack.packb(state, use_bin_type=True)
    return packed


def load(cls: type[Broker], data: bytes, settings: BrokerSettings, store: RecordStore | None) -> Broker:
    """Rebuild a broker from `dump` bytes; applying the same further entries then gives the same
    states as on the broker that wrote them. Limits that `settings` lowered since apply from the
    next entry on.

    Returns: the broker, its messages in `store` (a new `MemoryRecordStore` by default).
    Raises: SnapshotError naming what is wrong; the whole snapshot is checked before `store` is touched.
    """
    try:
        state = msgpack.unpackb(data, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises many types; each means the same here
        raise SnapshotError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    _need(type(state) is tuple and len(state) in (8, 9), "a snapshot is an array of 8 or 9 items")
    version, applied_index, last_lamport, last_ts, late_count, topics, sessions, evicted = state[:8]
    groups = state[8] if len(state) == 9 else ()
    _need(type(groups) is tuple and (len(state) == 8 or len(groups) > 0), "groups must be a nonempty array")
    _need(type(version) is int and version == SNAPSHOT_FORMAT, f"unknown snapshot format {version!r}")
    _need(_is_count(applied_index), "applied_index must be an integer >= 0")
    _need(_is_count(last_lamport), "last_lamport must be an integer >= 0")
    _need(ts_problem(last_ts) is None and type(last_ts) is float, "last_ts must be a finite float >= 0")
    _need(_is_count(late_count), "late_count must be an integer >= 0")
    broker = cls(settings, store if store is not None else MemoryRecordStore())
    broker._applied_index = applied_index
    broker._last_lamport = last_lamport
    broker._last_ts = last_ts
    broker._late_count = late_count
    kept = _check_topics(topics)
    _restore_sessions(broker, sessions)
    _need(type(evicted) is tuple, "evicted must be an array")
    for client_id in evicted:
        _need(type(client_id) is str, "an evicted client_id must be a str")
        _need(client_id not in broker._sessions.by_client, f"evicted client {client_id!r} also has a session")
        _need(client_id not in broker._sessions.evicted, f"evicted client {client_id!r} is listed twice")
        broker._sessions.evicted[client_id] = None
    _restore_topics(broker, kept)
    broker._sessions.dirty.update(broker._sessions.by_client)
    restore_groups(broker, ((row[0], row[1:]) if type(row) is tuple and row else (None, row) for row in groups))
    return broker


def restore_groups(broker: Broker, rows: Iterable[tuple[Any, Any]]) -> None:
    """Add the consumer groups of `(name, ConsumerGroups.row)` rows to `broker`, whose topics exist already.

    Raises: SnapshotError naming the first bad row.
    """
    for name, row in rows:
        try:
            broker.groups.load_row(name, row)
        except ValueError as exc:
            raise SnapshotError(f"bad snapshot: consumer group: {exc}") from None


def _check_topics(topics: Any) -> list[tuple[str, int, Any]]:
    """Check the snapshot's topic list whole. Returns: ``(name, first, records)`` per topic. Raises: SnapshotError."""
    _need(type(topics) is tuple, "topics must be an array")
    seen: set[str] = set()
    checked: list[tuple[str, int, Any]] = []
    for item in topics:
        _need(type(item) is tuple and len(item) == 3, "a topic is an array [name, first_offset, records]")
        name, first, records = item
        _need(topic_problem(name) is None, f"bad topic name {name!r}")
        _need(name not in seen, f"topic {name!r} is listed twice")
        seen.add(name)
        _need(_is_count(first), f"topic {name!r}: first_offset must be an integer >= 0")
        _need(type(records) is tuple, f"topic {name!r}: records must be an array")
        for offset, fields_ in enumerate(records, start=first):
            _need(
                type(fields_) is tuple
                and len(fields_) == 5
                and type(fields_[0]) is bytes
                and _is_count(fields_[1])
                and type(fields_[2]) is float
                and ts_problem(fields_[2]) is None
                and _is_count(fields_[3])
                and type(fields_[4]) is bool,
                f"topic {name!r}: record at offset {offset} must be [data, lamport, ts, index, late]",
            )
        checked.append((name, first, records))
    return checked


def _restore_topics(broker: Broker, topics: list[tuple[str, int, Any]]) -> None:
    """Create the checked topics in order, their records in the broker's store, and their age heaps."""
    for name, first, records in topics:
        topic = broker._new_topic(name, first)
        batch: list[StoredRecord] = []
        nbytes = 0
        for offset, (data, lamport, ts, index, late) in enumerate(records, start=first):
            batch.append((name, offset, data, lamport, ts, index, late))
            nbytes += len(data)
            if len(batch) >= _LOAD_BATCH:
                broker.store.append(topic.id, batch)
                batch = []
        if batch:
            broker.store.append(topic.id, batch)
        topic.end = first + len(records)
        topic.nbytes = nbytes
        broker.dirty_topics.add(topic.id)
        if records and topic.retention.max_age_s is not None:
            broker._start_aging(topic, topic.retention.max_age_s, records[0][2])  # [data, lamport, ts, ...]


def _restore_sessions(broker: Broker, sessions: Any) -> None:
    """Rebuild the sessions and their activity heap from the snapshot. Raises: SnapshotError."""
    _need(type(sessions) is tuple, "sessions must be an array")
    previous: str | None = None
    table = broker._sessions
    for item in sessions:
        _need(
            type(item) is tuple and len(item) == 4,
            "a session is an array [client_id, floor, last_index, answers]",
        )
        client_id, floor, last_index, answers = item
        _need(type(client_id) is str, "a client_id must be a str")
        _need(previous is None or client_id > previous, "sessions must be sorted by client_id, once each")
        previous = client_id
        table.by_client[client_id] = session_from_row(client_id, floor, last_index, answers)
    table.rebuild_activity()


def session_from_row(client_id: str, floor: Any, last_index: Any, answers: Any) -> Session:
    """Returns: the `Session` of a stored row (`Session.to_row`), checked whole. Raises: SnapshotError."""
    _need(type(floor) is int and floor >= 1, f"session {client_id!r}: floor must be an integer >= 1")
    _need(_is_count(last_index), f"session {client_id!r}: last_index must be an integer >= 0")
    _need(type(answers) is tuple, f"session {client_id!r}: answers must be an array")
    session = Session(floor, last_index)
    for answer in answers:
        _need(
            type(answer) is tuple
            and len(answer) == 7
            and type(answer[0]) is int
            and answer[0] >= floor
            and answer[0] not in session.answers
            and topic_problem(answer[1]) is None
            and all(_is_count(value) for value in answer[2:6])
            and type(answer[6]) is float
            and ts_problem(answer[6]) is None,
            f"session {client_id!r}: bad answer {answer!r:.80}",
        )
        seq, topic, offset, count, index, lamport, ts = answer
        session.answers[seq] = (topic, offset, count, index, lamport, ts)
    session.seqs.extend(sorted(session.answers))
    session.recount()
    return session


def _is_count(value: Any) -> bool:
    """Returns: whether `value` is an int (not a bool) in [0, 2**63 - 1] (what every codec of the cluster holds)."""
    return type(value) is int and 0 <= value <= INT63_MAX


def _need(condition: bool, problem: str) -> None:
    """Raises: SnapshotError(`problem`) unless `condition`."""
    if not condition:
        raise SnapshotError(f"bad snapshot: {problem}")
