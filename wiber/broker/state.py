"""`Broker`: the replicated state machine of one node (docs/design.md sections 3-5).

Theory of operation
-------------------
Raft (Ongaro and Ousterhout, section 2) makes every node apply the same committed entries in the
same order; this is what they are applied to. It is deterministic: no clock, no randomness, no
iteration over anything whose order could differ between processes (sets, ids, hashes of str).
Everything that varies from one apply to the next (time, lamport) comes from the entry itself or
from the state, so every node that applies the same entries from the same start (empty, or one
snapshot) ends in the same state (`Broker.snapshot` equal). The messages themselves live in a
`RecordStore` (memory in tests, the topic segments on disk in a node); the broker keeps per topic
only its offsets, size and retention, so its memory is O(topics + sessions).

On commit, each node calls `Broker.apply`, which decodes the entry and, op by op:

1. **Dedup** (`wiber.broker.sessions`).
2. **Store**. The op's messages go to the end of the topic at consecutive offsets, with the entry's
   log ``index``, a ``lamport`` above both the previous message's and the publisher's, and a ``ts``
   that never goes back in log order.
3. **Retention**. After the ops, each topic touched is trimmed to its count and byte limits, and
   every topic with an age limit drops the messages older than the entry's ``ts`` minus that limit.

`Broker.apply` returns one `PubResult` per op, in entry order: the reply fields for the client
(only the leader has a client to answer) and the records to fan out (every node publishes them).

An entry may also carry consumer ops (durable consumer groups, `wiber.broker.consumers`), applied in
their place among the PUB ops with the entry's ``ts`` as the time; `Broker.apply_entry` returns
their results too (`AppliedEntry`), `Broker.apply` only the `PubResult`s.

Invariants (checked by the tests after every apply)
---------------------------------------------------
* Per topic, the kept messages have the consecutive offsets ``first_offset .. end_offset - 1``;
  ``end_offset`` only grows (offsets are never reused) and ``first_offset`` only grows (retention).
* ``lamport`` strictly increases over all stored messages in log order, and each exceeds the
  ``lamport`` its publisher sent; ``ts`` never decreases in log order.
* Every stored message of one entry has that entry's log ``index`` and the same ``ts``.
* A topic keeps at most ``max_messages`` messages and ``max_bytes`` bytes of data once its entry
  is applied, and no message with ``ts < entry ts - max_age_s``.
* A session keeps at most ``session_window`` answers, all for seqs at or above its floor; there are at
  most ``max_sessions`` sessions; a client evicted in the last ``max_sessions`` evictions has none.
* A (client_id, seq) is stored at most once while its session lives; once its answer is gone it is
  never stored again (SessionExpired), except after its evicted id left the bounded record (that
  takes ``max_sessions`` further evictions).
* The ``ordered`` requests of one client_id are stored in seq order: each only as its session's
  next seq (`Session.next_seq`), otherwise refused OUT_OF_SEQUENCE without storing anything.

Cost
----
Apply is O(messages + records removed) per entry, plus O(log sessions) per client per entry and
O(log topics) per topic whose oldest message ages out. Count retention is arithmetic; byte and age
retention read the oldest records' sizes and times from the store, once per record removed.
Measured on one core of the development machine (Python 3.11), an entry of 1,000 single-message
ops of 100 bytes: encode about 0.4 ms, decode about 0.9 ms, apply (decode included) about 2.4 ms
without client_id and about 3.3 ms with one (`tests/unit/test_broker.py::test_speed_report`).

The settings are not part of the state (a snapshot does not carry them): every node must run with
the same ones, which the shared configuration file ensures.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from wiber.broker.consumers import ConsumerGroups, ConsumerResult
from wiber.broker.entry import INT63_MAX, EntryOp, MalformedEntry, PubOp, decode_entry, ts_problem
from wiber.broker.records import (
    R_DATA,
    R_TS,
    MemoryRecordStore,
    PubResult,
    RecordStore,
    StoredRecord,
    make_result,
    record_to_wire,
)
from wiber.broker.sessions import MAX_SESSIONS_BYTES, Session, Sessions, expired, out_of_sequence
from wiber.config import ClusterConfig, RetentionConfig
from wiber.errors import BadRequest, InvariantError

__all__ = ["AppliedEntry", "Broker", "BrokerSettings", "TopicState"]

log = logging.getLogger(__name__)

_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The limits the broker enforces; every node must use the same ones, or their states diverge.

    Attributes:
        session_window: answers kept per client_id (seqs at or above its floor).
        max_sessions: client_ids remembered; the least recently active is evicted first.
        max_sessions_bytes: bytes all sessions may take (`wiber.broker.sessions`); not a configuration
            key yet, so every node of a cluster has the same one.
        retention: the default retention of every topic.
        topic_retention: per-topic overrides; a topic's effective retention is
            ``topic_retention.get(topic, retention)``.

    Raises:
        ValueError: session_window, max_sessions or max_sessions_bytes is not a positive integer.
    """

    session_window: int = 4096
    max_sessions: int = 10_000
    max_sessions_bytes: int = MAX_SESSIONS_BYTES
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    topic_retention: Mapping[str, RetentionConfig] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in ("session_window", "max_sessions", "max_sessions_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_cluster(cls, cluster: ClusterConfig) -> BrokerSettings:
        """Returns: the broker settings of a loaded cluster configuration."""
        return cls(
            session_window=cluster.session_window,
            max_sessions=cluster.max_sessions,
            retention=cluster.retention,
            topic_retention=cluster.topics,
        )

    def retention_of(self, topic: str) -> RetentionConfig:
        """Returns: the effective retention of `topic`."""
        return self.topic_retention.get(topic, self.retention)


#: How far a client's lamport may be ahead of the cluster's Lamport clock. A client only repeats
#: lamports it saw (so it is never ahead); the slack is generous, and 2**63 / 2**20 publishes are
#: needed to spend the clock's room, where one PUB at 2**63 - 1 once stopped every later one.
LAMPORT_MAX_AHEAD = 1 << 20


@dataclass(frozen=True, slots=True)
class AppliedEntry:
    """What applying one entry gave: the PUB ops' results and the consumer ops' results.

    Attributes:
        pub_results: one `PubResult` per PUB op, in entry order (what `Broker.apply` returns).
        consumer_results: ``(position, result)`` per consumer op, its position counted over all ops.
    """

    pub_results: list[PubResult]
    consumer_results: list[tuple[int, ConsumerResult]]

    @property
    def results(self) -> list[PubResult | ConsumerResult]:
        """Returns: every op's result in entry order (PUB and consumer ops interleaved as they came)."""
        merged: list[PubResult | ConsumerResult] = list(self.pub_results)
        for position, result in self.consumer_results:
            merged.insert(position, result)
        return merged


class TopicState:
    """One topic's offsets and size; its messages (offsets ``first .. end - 1``) are in the store."""

    __slots__ = ("age_key", "aging", "end", "first", "id", "name", "nbytes", "retention")

    def __init__(self, topic_id: int, name: str, retention: RetentionConfig, first: int = 0) -> None:
        self.id = topic_id
        self.name = name
        self.first = first
        self.end = first
        self.nbytes = 0
        self.retention = retention
        self.aging = False
        """Whether the topic has an entry in its age heap (only topics with max_age_s do)."""
        self.age_key = 0.0
        """The ts of its age heap entry: at or below its oldest kept message's (kept in checkpoints,
        so a restart need not read every topic's oldest message)."""


class Broker:
    """The replicated state machine of one node; see the module docstring for the rules it keeps.

    Only `apply` and `apply_noop` change it, each with a log index above the last one applied.
    """

    def __init__(self, settings: BrokerSettings, store: RecordStore | None = None) -> None:
        self._settings = settings
        self._session_window = settings.session_window  # read per stored op
        self.store: RecordStore = store if store is not None else MemoryRecordStore()
        self._topics: dict[str, TopicState] = {}
        """Topics in creation order (deterministic: log order), never removed (offsets are never reused).
        A topic's id is its position in this order."""
        self._by_id: list[TopicState] = []
        self._sessions = Sessions(settings.max_sessions, settings.max_sessions_bytes)
        self._age_heaps: dict[float, list[tuple[float, str]]] = {}
        """Per max_age_s value: min-heap of (ts, topic), ts at or below the topic's oldest kept ts."""
        self._applied_index = 0
        self.membership: bytes | None = None
        """The newest membership applied (a CONFIG entry's data), None before any."""
        self._last_lamport = 0
        self._last_ts = 0.0
        self._late_count = 0
        self.dirty_topics: set[int] = set()
        """Ids of the topics changed since the last checkpoint took them (`wiber.broker.checkpoint`)."""
        self._groups = ConsumerGroups(self._topics, self._by_id)

    # ------------------------------------------------------------------------------ reading

    @property
    def settings(self) -> BrokerSettings:
        """Returns: the limits this broker enforces."""
        return self._settings

    @property
    def applied_index(self) -> int:
        """Returns: the log index of the last entry applied (0 before any)."""
        return self._applied_index

    @property
    def last_lamport(self) -> int:
        """Returns: the lamport of the last stored message (0 before any)."""
        return self._last_lamport

    @property
    def last_ts(self) -> float:
        """Returns: the ts of the last applied entry (0.0 before any); never decreases."""
        return self._last_ts

    @property
    def late_count(self) -> int:
        """Returns: how many stored ops the reorder buffer marked late."""
        return self._late_count

    @property
    def session_count(self) -> int:
        """Returns: how many client sessions are kept."""
        return len(self._sessions)

    @property
    def sessions(self) -> Sessions:
        """Returns: the dedup sessions (read them; only `apply` changes them)."""
        return self._sessions

    @property
    def groups(self) -> ConsumerGroups:
        """Returns: the durable consumer groups (read them; only applying entries changes them)."""
        return self._groups

    def topic_states(self) -> Mapping[str, TopicState]:
        """Returns: every topic's state by name, in creation order (read them; only `apply` changes them)."""
        return MappingProxyType(self._topics)

    def topic_by_id(self, topic_id: int) -> TopicState:
        """Returns: the topic with id `topic_id`. Raises: IndexError: no such topic."""
        return self._by_id[topic_id]

    def topics(self) -> dict[str, int]:
        """Returns: a new map of every topic ever written to its end offset, in creation order."""
        return {name: topic.end for name, topic in self._topics.items()}

    def end_offset(self, topic: str) -> int:
        """Returns: the offset the next message of `topic` will get (0 for an unknown topic)."""
        state = self._topics.get(topic)
        return 0 if state is None else state.end

    def first_offset(self, topic: str) -> int:
        """Returns: the offset of the oldest kept message of `topic` (its end offset when none is kept)."""
        state = self._topics.get(topic)
        return 0 if state is None else state.first

    def kept(self, topic: str) -> list[StoredRecord]:
        """Returns: every kept record of `topic`, oldest first (for tests and tools; O(kept))."""
        state = self._topics.get(topic)
        if state is None:
            return []
        return self.store.read(state.id, state.first, state.end)

    def history(
        self,
        topic: str,
        from_offset: int | None = None,
        last: int | None = None,
        limit: int = 100,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Read kept messages of `topic` in offset order, O(limit).

        With `last`, the newest ``min(last, limit)`` messages; otherwise up to `limit` messages from
        `from_offset` (default 0), or from ``first_offset`` when retention removed those before it.
        An unknown topic reads as an empty one whose offsets are 0. With `max_bytes`, fewer messages
        when their data would pass it (at least one).

        Returns: ``{topic, messages, next_offset, first_offset, end_offset}``: ``messages`` are
        `record_to_wire` maps; ``next_offset`` is the offset to read from next (the one after the
        last returned, or where reading started when nothing was returned, so a reader ahead of
        this node does not move back).

        Raises: ValueError: both `from_offset` and `last`, a negative `from_offset`, or a
        `last` or `limit` below 1.
        """
        if from_offset is not None and last is not None:
            raise ValueError("history takes from_offset or last, not both")
        if limit < 1 or (last is not None and last < 1) or (from_offset is not None and from_offset < 0):
            raise ValueError(f"bad history range: from_offset={from_offset} last={last} limit={limit}")
        state = self._topics.get(topic)
        if state is None:
            first = end = 0
        else:
            first, end = state.first, state.end
        if last is not None:
            count = min(last, limit, end - first)
            start = end - count
        else:
            start = max(from_offset or 0, first)
            count = max(0, min(limit, end - start))
        messages: list[dict[str, Any]] = []
        if state is not None and count:
            records = self.store.read(state.id, start, start + count, max_bytes)
            count = len(records)
            messages = [record_to_wire(record) for record in records]
        return {
            "topic": topic,
            "messages": messages,
            "next_offset": start + count,
            "first_offset": first,
            "end_offset": end,
        }

    # ------------------------------------------------------------------------------ applying

    def apply_config(self, index: int, membership: bytes) -> None:
        """Apply a Raft membership change (a CONFIG entry): kept, as the entry's data, for the
        checkpoint, so that a restart knows the membership as of it (`wiber.raft.membership`).

        Raises: InvariantError: `index` is not above `applied_index`.
        """
        self.apply_noop(index)  # nothing else of the broker moves
        self.membership = membership

    def apply_noop(self, index: int) -> None:
        """Apply a Raft no-op entry (a new leader's first entry): only `applied_index` moves.

        Raises: InvariantError: `index` is not above `applied_index`.
        """
        self._check_index(index)
        self._applied_index = index

    def apply(self, index: int, data: bytes) -> list[PubResult]:
        """Apply the committed broker entry at log `index`.

        A malformed entry is skipped (logged at ERROR; `applied_index` still moves): every node
        skips it alike, and the node must not stop applying because of one bad entry.

        Returns: one `PubResult` per op, in entry order ([] for a malformed entry).

        Raises: InvariantError: `index` is not above `applied_index` (a bug in the caller).
        """
        return self.apply_entry(index, data).pub_results

    def apply_entry(self, index: int, data: bytes) -> AppliedEntry:
        """`apply`, returning the consumer ops' results too (a malformed entry gives none of either).

        Raises: InvariantError: `index` is not above `applied_index`.
        """
        self._check_index(index)
        try:
            entry_ts, ops = decode_entry(data)
        except MalformedEntry as err:
            log.error("broker entry at index %d skipped: %s", index, err)
            self._applied_index = index
            return AppliedEntry([], [])
        return self.apply_entry_ops(index, entry_ts, ops)

    def apply_ops(self, index: int, entry_ts: float, ops: Sequence[EntryOp]) -> list[PubResult]:
        """Apply an entry already decoded: `apply` without the decoding.

        The leader keeps the ops it proposed and applies them as they are, since
        ``decode_entry(encode_entry(ts, ops)) == (ts, ops)``; followers decode.

        Raises: InvariantError: `index` is not above `applied_index`.
        """
        return self.apply_entry_ops(index, entry_ts, ops).pub_results

    def apply_entry_ops(self, index: int, entry_ts: float, ops: Sequence[EntryOp]) -> AppliedEntry:
        """`apply_entry` of an entry already decoded (what `apply_ops` is to `apply`).

        Raises: InvariantError: `index` is not above `applied_index`.
        """
        self._check_index(index)
        self._applied_index = index
        if ts_problem(entry_ts) is not None:  # never from this version's leader: keep the last ts rather than NaN
            log.error("broker entry at index %d has ts %r: the previous ts is used", index, entry_ts)
            entry_ts = self._last_ts
        ts = max(self._last_ts, entry_ts)
        self._last_ts = ts

        results: list[PubResult] = []
        consumer_results: list[tuple[int, ConsumerResult]] = []
        touched: dict[str, TopicState] = {}
        sessions = self._sessions
        by_client = sessions.by_client
        dirty_sessions = sessions.dirty
        for op in ops:
            if type(op) is not PubOp:
                position = len(results) + len(consumer_results)
                consumer_results.append((position, self._groups.apply(op, index, ts)))  # type: ignore[arg-type]
                continue
            client_id = op[3]  # op.client_id, op.seq, op.ack_floor by position: the per-op hot path
            if client_id is None:
                results.append(self._store(op, index, ts, touched, None))
                continue
            session = by_client.get(client_id)
            seq: int = op[4]  # type: ignore[assignment]  # set whenever client_id is
            ack_floor = op[5]
            if session is None:
                if client_id in sessions.evicted:
                    results.append(make_result(None, False, expired(client_id, seq, None), ()))
                    continue
                session = sessions.new(client_id, ack_floor or 1, index)
            elif session.last_index != index:
                session.last_index = index
                heapq.heappush(sessions.activity, (index, client_id))
            dirty_sessions.add(client_id)
            if ack_floor is not None and ack_floor > session.floor:
                before = session.nbytes
                session.raise_floor(ack_floor)
                sessions.nbytes += session.nbytes - before
            answer = session.answers.get(seq)
            if answer is not None:
                results.append(make_result(answer, True, None, ()))
            elif seq < session.floor:
                results.append(make_result(None, False, expired(client_id, seq, session.floor), ()))
            elif op[8] and seq != session.next_seq():  # op.ordered: only the session's next seq
                refusal = out_of_sequence(client_id, seq, session.next_seq())
                results.append(make_result(None, False, refusal, ()))
            else:
                results.append(self._store(op, index, ts, touched, session))

        dirty_topics = self.dirty_topics
        for topic in touched.values():
            dirty_topics.add(topic.id)
            self._trim_size(topic)
        self._trim_age(ts)
        sessions.prune_activity()
        return AppliedEntry(results, consumer_results)

    def _check_index(self, index: int) -> None:
        """Raises: InvariantError unless `index` is above `applied_index`."""
        if index <= self._applied_index:
            raise InvariantError(
                f"broker applies index {index} after {self._applied_index}: indexes must increase"
            )

    def _store(
        self, op: PubOp, index: int, ts: float, touched: dict[str, TopicState], session: Session | None
    ) -> PubResult:
        """Store `op`'s messages at the end of its topic, keep the answer in `session`.

        Returns: the op's PubResult.
        """
        op_topic, messages, batch, _, seq, _, op_lamport, late, _ = op  # one unpack, not nine lookups
        lamport = self._last_lamport + 1
        if op_lamport >= lamport:
            if op_lamport - self._last_lamport > LAMPORT_MAX_AHEAD:
                # A client's lamport is the largest it saw in this cluster's messages, never ahead of the
                # clock that stamped them: a far jump would only spend the 63 bits every later PUB needs.
                return make_result(None, False, BadRequest(
                    f"lamport {op_lamport} is more than {LAMPORT_MAX_AHEAD} ahead of the cluster's Lamport "
                    f"clock ({self._last_lamport}); send the largest lamport your client has seen"), ())
            lamport = op_lamport + 1
        if lamport + len(messages) - 1 > INT63_MAX:  # never stored: clients and the wire hold 63 bits
            return make_result(None, False, BadRequest(
                f"lamport {op_lamport} leaves no room below 2**63 for this publish's messages"), ())
        topic = touched.get(op_topic)
        if topic is None:
            topic = self._topics.get(op_topic)
            if topic is None:
                topic = self._new_topic(op_topic, 0)
            touched[op_topic] = topic
        if self._groups.groups:  # every op: a FETCH earlier in this entry may have caught up with it
            self._groups.topic_grew(topic.id)
        name = topic.name  # one str object per topic, not one per decoded op, in every Record and answer
        if late:
            self._late_count += 1
        offset = topic.end
        if len(messages) == 1:
            data = messages[0]
            records: tuple[StoredRecord, ...] = ((name, offset, data, lamport, ts, index, late),)
            topic.nbytes += len(data)
        else:
            records = tuple(
                [
                    (name, offset + position, data, lamport + position, ts, index, late)
                    for position, data in enumerate(messages)
                ]
            )
            topic.nbytes += sum(map(len, messages))
        self.store.append(topic.id, records)
        count = len(records)
        topic.end = offset + count
        self._last_lamport = lamport + count - 1
        if not topic.aging and topic.retention.max_age_s is not None:
            self._start_aging(topic, topic.retention.max_age_s, ts)
        answer = (name, offset, count if batch else 0, index, lamport, ts)
        if session is not None:
            sessions = self._sessions
            before = session.nbytes
            session.keep(
                seq,  # type: ignore[arg-type]  # set whenever client_id is
                answer,
                self._session_window,
            )
            sessions.nbytes += session.nbytes - before
            if sessions.nbytes > sessions.max_bytes:
                sessions.shrink(op[3])  # type: ignore[arg-type]  # set whenever session is
        return _new_tuple(PubResult, (answer, False, None, records))

    def _new_topic(self, name: str, first: int) -> TopicState:
        """Create topic `name` (its id: the next in creation order) starting at offset `first`."""
        topic = TopicState(len(self._topics), name, self._settings.retention_of(name), first)
        self._topics[name] = topic
        self._by_id.append(topic)
        self.store.add_topic(topic.id, name)
        if self._groups.groups:
            self._groups.topic_created(topic)
        return topic

    # ------------------------------------------------------------------------------ retention

    def _drop_to(self, topic: TopicState, first: int, nbytes: int) -> None:
        """Retention moved `topic`'s first offset to `first`, leaving `nbytes` of data."""
        topic.first = first
        topic.nbytes = nbytes
        self.dirty_topics.add(topic.id)
        self.store.trim(topic.id, first)

    def _trim_size(self, topic: TopicState) -> None:
        """Drop `topic`'s oldest messages until its count and byte limits hold."""
        retention = topic.retention
        max_messages = retention.max_messages
        first = topic.first
        nbytes = topic.nbytes
        if max_messages is not None and topic.end - first > max_messages:
            new_first = topic.end - max_messages
            for record in self.store.read(topic.id, first, new_first):
                nbytes -= len(record[R_DATA])
            first = new_first
        max_bytes = retention.max_bytes
        if max_bytes is not None and nbytes > max_bytes:
            for record in self.store.scan(topic.id, first):
                if nbytes <= max_bytes:
                    break
                nbytes -= len(record[R_DATA])
                first += 1
        if first != topic.first:
            self._drop_to(topic, first, nbytes)

    def _start_aging(self, topic: TopicState, max_age: float, oldest_ts: float) -> None:
        """Enter `topic` (age limit `max_age`, oldest kept message at `oldest_ts`) in its age heap."""
        heapq.heappush(self._age_heaps.setdefault(max_age, []), (oldest_ts, topic.name))
        topic.aging = True
        topic.age_key = oldest_ts

    def _trim_age(self, now: float) -> None:
        """Drop, in every topic with an age limit, the messages with ``ts < now - max_age_s``.

        Each age heap holds, per nonempty topic, a ts at or below its oldest kept message's
        (count and byte trims only raise the real one), so popping the items below the cutoff
        finds every topic with something to drop, and only those (plus a few stale ones).
        """
        for max_age, heap in self._age_heaps.items():
            cutoff = now - max_age
            while heap and heap[0][0] < cutoff:
                _, name = heapq.heappop(heap)
                topic = self._topics[name]
                first = topic.first
                nbytes = topic.nbytes
                oldest_kept: float | None = None
                for record in self.store.scan(topic.id, first):
                    if record[R_TS] >= cutoff:
                        oldest_kept = record[R_TS]
                        break
                    nbytes -= len(record[R_DATA])
                    first += 1
                if first != topic.first:
                    self._drop_to(topic, first, nbytes)
                if oldest_kept is not None:
                    # The new oldest is at or above the cutoff, so it is not popped again this turn.
                    heapq.heappush(heap, (oldest_kept, name))
                    topic.age_key = oldest_kept
                else:
                    topic.aging = False
                self.dirty_topics.add(topic.id)

    # ------------------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """Returns: the whole state, messages included, as deterministic msgpack bytes
        (`wiber.broker.snapshot`; equal states give equal bytes)."""
        from wiber.broker.snapshot import dump

        return dump(self)

    @classmethod
    def restore(cls, data: bytes, settings: BrokerSettings, store: RecordStore | None = None) -> Broker:
        """Rebuild a broker from `snapshot` bytes into `store` (a new `MemoryRecordStore` by default).

        Returns: the broker. Raises: SnapshotError naming what is wrong (the whole of it is checked
        before anything is written to `store`).
        """
        from wiber.broker.snapshot import load

        return load(cls, data, settings, store)
