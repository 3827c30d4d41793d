"""The replicated state machine: topics, offsets, dedup sessions, retention, snapshots (DESIGN sections 3-5).

Theory of operation
-------------------
Raft (Ongaro and Ousterhout, section 2) makes every node apply the same committed entries in the
same order; this module is what they are applied to. It is pure and deterministic: no I/O, no
clock, no randomness, no iteration over anything whose order could differ between processes
(sets, ids, hashes of str). Everything that varies from one apply to the next (time, lamport) comes
from the entry itself or from the state, so every node that applies the same entries from the same
start (empty, or one snapshot) ends in the same state, byte for byte (`Broker.snapshot` equal).

The leader gathers every PUB and PUB_BATCH of one loop turn into one log entry: `pub_op_from_request`
turns each validated request into a `PubOp`, the reorder buffer (DESIGN section 5) may mark one
``late``, and `encode_entry` packs them with the leader's synced clock. On commit, each node calls
`Broker.apply`, which decodes the entry and, op by op:

1. **Dedup** (Raft thesis section 6.3). A request with ``client_id`` belongs to a session that keeps
   the answers of that client's seqs at or above its ``floor``: a retry whose answer is kept gets it
   back with ``duplicate: True`` and stores nothing; a seq below the floor gets `SessionExpired`
   (it may or may not have been stored: the answer is gone) and stores nothing. The floor is the
   highest ``ack_floor`` the client sent, raised past any answer dropped to keep the session within
   ``session_window``. At most ``max_sessions`` sessions are kept; a new one evicts the least recently
   active (lowest log index of its last request, then lowest client_id). A request from a client
   without a session is SessionExpired when its id is among the last ``max_sessions`` evicted; no
   session is created then, so retrying it again can never store it. (An ``ack_floor > 1`` from an
   unknown client is not taken as proof of an evicted session: a client whose first publishes were
   refused or timed out before reaching the log legitimately starts its session above seq 1.)
2. **Store**. The op's messages go to the end of the topic at consecutive offsets, with the entry's
   log ``index``, a ``lamport`` above both the previous message's and the publisher's, and a ``ts``
   that never goes back in log order.
3. **Retention**. After the ops, each topic touched is trimmed to its count and byte limits, and
   every topic with an age limit drops the messages older than the entry's ``ts`` minus that limit.

`Broker.apply` returns one `PubResult` per op, in entry order: the reply fields for the client
(only the leader has a client to answer) and the records to fan out (every node publishes them).

Entry format (msgpack, ``use_bin_type``; arrays, not maps, so 1,000 small ops pack in about 0.1 ms)::

    [ENTRY_FORMAT, ts, [op, op, ...]]
    op = [topic, payload, flags, lamport]                                  no client_id
       | [topic, payload, flags, lamport, client_id, seq, ack_floor|nil]    with a session
    payload = bin (PUB: one message) | array of 1-10,000 bin (PUB_BATCH)
    flags   = bit 0: late

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

Cost
----
Apply is O(messages + records removed) per entry, plus O(log sessions) per client per entry and
O(log topics) per topic whose oldest message ages out. Retention moves a start pointer over each
topic's record list, compacted when the dead prefix is both large and over half the list, so
trimming is O(removed) amortized and HISTORY reads O(limit). Measured on one core of the
development machine (Python 3.11), an entry of 1,000 single-message ops of 100 bytes:
encode about 0.4 ms, decode about 0.9 ms, apply (decode included) about 2.4 ms without
client_id and about 3.3 ms with one (`tests/unit/test_broker.py::test_speed_report` prints the figures).

Memory is the kept messages plus, per session, one small tuple per kept answer: a client that sends
``ack_floor`` keeps only its requests in flight, while one that never does keeps ``session_window``
answers (about 100 bytes each) until evicted.

The settings are not part of the state (a snapshot does not carry them): every node must run with
the same ones, which the shared configuration file ensures.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar

import msgpack

from wiber.config import ClusterConfig, RetentionConfig
from wiber.errors import InvariantError, SessionExpired, WiberError, WireError
from wiber.protocol import CLIENT_ID_MAX_CHARS, MAX_BATCH_MESSAGES, TOPIC_MAX_BYTES, pub_reply

__all__ = [
    "ENTRY_FORMAT",
    "SNAPSHOT_FORMAT",
    "Broker",
    "BrokerSettings",
    "MalformedEntry",
    "PubOp",
    "PubResult",
    "Record",
    "StoredRecord",
    "record_to_wire",
    "SnapshotError",
    "decode_entry",
    "encode_entry",
    "pub_op_from_request",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

ENTRY_FORMAT: Final = 1
"""First item of every broker entry: lets a later version change the layout and still read this one."""

SNAPSHOT_FORMAT: Final = 1
"""First item of every broker snapshot."""

_INT63_MAX: Final = 2**63 - 1
"""Largest lamport, seq or ack_floor a client may send (protocol's bound)."""

_LATE: Final = 1
"""Bit of an op's ``flags``: the reorder buffer appended it after its slot had passed."""

_COMPACT_MIN: Final = 4096
"""A topic's dead prefix is deleted once it is at least this long and over half its record list."""

_Answer = tuple[str, int, int, int, int, float]
"""A kept answer of a session: (topic, offset, count (0 for a PUB), index, lamport, ts)."""


class MalformedEntry(WiberError):
    """A log entry's data is not a broker command this version can read (a bug or a corruption)."""


class SnapshotError(WiberError):
    """A broker snapshot cannot be restored: not one `Broker.snapshot` wrote, or damaged."""


# --------------------------------------------------------------------------------------------------
# Values


class PubOp(NamedTuple):
    """One client request (PUB or PUB_BATCH) inside a log entry (a NamedTuple: built per message
    on every node, it costs less than half a frozen dataclass; see `_tuple_constructor`).

    Attributes:
        topic: the topic to append to.
        messages: PUB: exactly one message; PUB_BATCH: 1 to 10,000, stored all or none.
        batch: True for PUB_BATCH; it decides the reply's shape (``count``).
        client_id, seq, ack_floor: the dedup session fields (DESIGN section 3); seq is set iff
            client_id is, and ack_floor (optional) is at most seq.
        lamport: the publisher's Lamport clock (0 = none sent); stored lamports exceed it.
        late: set by the leader's reorder buffer when the op arrived after its slot (section 5).
    """

    topic: str
    messages: tuple[bytes, ...]
    batch: bool
    client_id: str | None = None
    seq: int | None = None
    ack_floor: int | None = None
    lamport: int = 0
    late: bool = False


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The limits the broker enforces; every node must use the same ones, or their states diverge.

    Attributes:
        session_window: answers kept per client_id (seqs at or above its floor).
        max_sessions: client_ids remembered; the least recently active is evicted first.
        retention: the default retention of every topic.
        topic_retention: per-topic overrides; a topic's effective retention is
            ``topic_retention.get(topic, retention)``.

    Raises:
        ValueError: session_window or max_sessions is not a positive integer.
    """

    session_window: int = 4096
    max_sessions: int = 10_000
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    topic_retention: Mapping[str, RetentionConfig] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in ("session_window", "max_sessions"):
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


StoredRecord = tuple[str, int, bytes, int, float, int, bool]
"""A stored message as the broker keeps it: a plain tuple in `Record`'s field order.

A node keeps every retained message. Exact tuples of atomic values are the one kind of object
CPython's cycle collector stops tracking (after its first pass over them; a NamedTuple or a slotted
class stays tracked), and full collections over millions of tracked records took ~10% of a loaded
node's CPU and paused it for over 100 ms (measured). `Record` is the readable view of one.
"""

_R_DATA: Final = 2
_R_TS: Final = 4
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
        late: the reorder buffer appended it after its slot (DESIGN section 5).
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

    ``late: True`` is added only for a late message, so the usual map stays as DESIGN section 3 has it.
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

    answer: _Answer | None
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


_new_tuple = tuple.__new__


def _tuple_constructor(cls: type[_T]) -> Callable[..., _T]:
    """Returns: a constructor of the NamedTuple `cls` taking every field positionally.

    It skips the Python-level ``__new__`` that NamedTuple generates (defaults and keywords), the
    hot path of `Broker.apply` building a PubOp and a PubResult per op: 0.19 us each instead of
    0.28 (and 0.50 for the slotted frozen dataclasses they were). The result equals ``cls(...)``.
    """
    def make(*fields: Any) -> _T:
        return _new_tuple(cls, fields)  # type: ignore[type-var]

    return make


_make_pub_op = _tuple_constructor(PubOp)
_make_result = _tuple_constructor(PubResult)


# --------------------------------------------------------------------------------------------------
# The entry codec


def pub_op_from_request(req: Mapping[str, Any]) -> PubOp:
    """Returns: the `PubOp` of a request that `protocol.validate_request` accepted (op PUB or PUB_BATCH).

    Raises:
        ValueError: the request's op is neither PUB nor PUB_BATCH.
    """
    op = req.get("op")
    get = req.get
    if op == "PUB":
        return _make_pub_op(req["topic"], (req["data"],), False, get("client_id"), get("seq"), get("ack_floor"),
                            get("lamport", 0), False)
    if op == "PUB_BATCH":
        return _make_pub_op(req["topic"], tuple(req["messages"]), True, get("client_id"), get("seq"),
                            get("ack_floor"), get("lamport", 0), False)
    raise ValueError(f"a PubOp is made from a PUB or PUB_BATCH request, got op {op!r}")


def _topic_problem(topic: Any) -> str | None:
    """Returns: why `topic` is not a valid topic name (DESIGN section 3), or None."""
    if type(topic) is not str:
        return f"topic is a {type(topic).__name__}, not a str"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "topic is not valid UTF-8"
    if not 1 <= size <= TOPIC_MAX_BYTES:
        return f"topic is {size} bytes, not 1 to {TOPIC_MAX_BYTES}"
    if "\0" in topic or topic.startswith("$"):
        return f"topic {topic[:40]!r} holds NUL or starts with '$'"
    return None


def _op_problem(
    topic: Any,
    payload: Any,
    flags: Any,
    lamport: Any,
    client_id: Any,
    seq: Any,
    ack_floor: Any,
    good_topics: set[str],
) -> str | None:
    """Returns: why these fields of one op are not a valid command, or None.

    One function checks both directions, so `encode_entry` never writes an entry that
    `decode_entry` refuses (a committed entry that no node can apply would be lost silently).
    `good_topics` caches the names already found valid during one entry.
    """
    if type(topic) is not str or topic not in good_topics:
        problem = _topic_problem(topic)
        if problem is not None:
            return problem
        good_topics.add(topic)
    if type(payload) is tuple:
        if not 1 <= len(payload) <= MAX_BATCH_MESSAGES:
            return f"a batch holds {len(payload)} messages, not 1 to {MAX_BATCH_MESSAGES}"
        for message in payload:
            if type(message) is not bytes:
                return f"a batch message is a {type(message).__name__}, not bytes"
    elif type(payload) is not bytes:
        return f"payload is a {type(payload).__name__}, not bytes or an array of bytes"
    if type(flags) is not int or flags & ~_LATE or flags < 0:
        return f"flags must be 0 or {_LATE}, got {flags!r}"
    if type(lamport) is not int or not 0 <= lamport <= _INT63_MAX:
        return f"lamport must be an integer from 0 to 2**63-1, got {lamport!r}"
    if client_id is None:
        if seq is not None or ack_floor is not None:
            return "seq and ack_floor need a client_id"
        return None
    if type(client_id) is not str or not 1 <= len(client_id) <= CLIENT_ID_MAX_CHARS:
        return f"client_id must be a str of 1 to {CLIENT_ID_MAX_CHARS} characters"
    if type(seq) is not int or not 1 <= seq <= _INT63_MAX:
        return f"seq must be an integer from 1 to 2**63-1, got {seq!r}"
    if ack_floor is not None and (type(ack_floor) is not int or not 1 <= ack_floor <= seq):
        return f"ack_floor must be an integer from 1 to seq ({seq}), got {ack_floor!r}"
    return None


def _ts_problem(ts: Any) -> str | None:
    """Returns: why `ts` is not an entry time (a finite number of epoch seconds, not negative), or None."""
    if type(ts) not in (float, int) or not math.isfinite(ts) or ts < 0:
        return f"ts must be a finite number >= 0, got {ts!r}"
    return None


def encode_entry(ts: float, ops: Sequence[PubOp]) -> bytes:
    """Pack the ops of one loop turn into one log entry (format in the module docstring).

    `ts` is the leader's synced clock when it proposes. Each op is checked as `decode_entry` will
    check it, so a committed entry can always be applied.

    Returns: the entry's data. Raises: ValueError naming the first bad op (a programmer error:
    ops from `pub_op_from_request` are always valid).
    """
    problem = _ts_problem(ts)
    if problem is not None:
        raise ValueError(problem)
    good_topics: set[str] = set()
    items: list[tuple[Any, ...]] = []
    append = items.append
    for position, op in enumerate(ops):
        messages = op.messages
        if op.batch:
            payload: Any = messages if type(messages) is tuple else tuple(messages)
        elif len(messages) == 1:
            payload = messages[0]
        else:
            raise ValueError(f"op {position}: a PUB carries exactly one message, got {len(messages)}")
        flags = _LATE if op.late else 0
        client_id = op.client_id
        problem = _op_problem(
            op.topic, payload, flags, op.lamport, client_id, op.seq, op.ack_floor, good_topics
        )
        if problem is not None:
            raise ValueError(f"op {position}: {problem}")
        if client_id is None:
            append((op.topic, payload, flags, op.lamport))
        else:
            append((op.topic, payload, flags, op.lamport, client_id, op.seq, op.ack_floor))
    packed: bytes = msgpack.packb((ENTRY_FORMAT, float(ts), items), use_bin_type=True)
    return packed


def decode_entry(data: bytes) -> tuple[float, list[PubOp]]:
    """Unpack and check one broker entry.

    Returns: ``(ts, ops)`` as `encode_entry` was given them (ts as a float).

    Raises:
        MalformedEntry: anything wrong: not msgpack, trailing bytes, another format, a missing or
            mistyped field, an op that no valid request could have produced.
    """
    try:
        entry = msgpack.unpackb(data, raw=False, use_list=False)
    except Exception as exc:  # msgpack raises many types; each means the same here
        raise MalformedEntry(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if type(entry) is not tuple or len(entry) != 3:
        raise MalformedEntry("an entry is an array of 3 items [format, ts, ops]")
    version, ts, items = entry
    if type(version) is not int or version != ENTRY_FORMAT:
        raise MalformedEntry(f"unknown entry format {version!r}, this version reads {ENTRY_FORMAT}")
    problem = _ts_problem(ts)
    if problem is not None:
        raise MalformedEntry(problem)
    if type(items) is not tuple:
        raise MalformedEntry(f"ops must be an array, got {type(items).__name__}")
    good_topics: set[str] = set()
    ops: list[PubOp] = []
    append = ops.append
    for position, item in enumerate(items):
        if type(item) is not tuple:
            raise MalformedEntry(f"op {position} must be an array, got {type(item).__name__}")
        if len(item) == 4:
            topic, payload, flags, lamport = item
            client_id = seq = ack_floor = None
        elif len(item) == 7:
            topic, payload, flags, lamport, client_id, seq, ack_floor = item
            if client_id is None:
                raise MalformedEntry(f"op {position}: the long form needs a client_id")
        else:
            raise MalformedEntry(f"op {position} must have 4 or 7 items, got {len(item)}")
        problem = _op_problem(topic, payload, flags, lamport, client_id, seq, ack_floor, good_topics)
        if problem is not None:
            raise MalformedEntry(f"op {position}: {problem}")
        if type(payload) is bytes:
            append(_make_pub_op(topic, (payload,), False, client_id, seq, ack_floor, lamport, flags == _LATE))
        else:
            append(_make_pub_op(topic, payload, True, client_id, seq, ack_floor, lamport, flags == _LATE))
    return float(ts), ops


# --------------------------------------------------------------------------------------------------
# State


class _Topic:
    """One topic's kept messages: ``records[head:]`` hold offsets ``first .. end - 1``.

    Retention advances ``head`` (O(1) per removed record); `compact` deletes the dead prefix once it
    is large, so memory stays proportional to what is kept.
    """

    __slots__ = ("aging", "end", "head", "name", "nbytes", "records", "retention")

    def __init__(self, name: str, retention: RetentionConfig, first: int = 0) -> None:
        self.name = name
        self.records: list[StoredRecord] = []
        self.head = 0
        self.end = first
        self.nbytes = 0
        self.retention = retention
        self.aging = False
        """Whether the topic has an entry in its age heap (only topics with max_age_s do)."""

    @property
    def first(self) -> int:
        """Returns: the offset of the oldest kept message (== end when none is kept)."""
        return self.end - (len(self.records) - self.head)

    def drop_oldest(self, count: int) -> None:
        """Remove the `count` oldest kept messages (count <= what is kept)."""
        records = self.records
        removed = 0
        for position in range(self.head, self.head + count):
            removed += len(records[position][_R_DATA])
        self.head += count
        self.nbytes -= removed
        self.compact()

    def compact(self) -> None:
        """Delete the dead prefix when it is at least `_COMPACT_MIN` long and over half the list."""
        head = self.head
        if head >= _COMPACT_MIN and 2 * head >= len(self.records):
            del self.records[:head]
            self.head = 0


class _Session:
    """One client's dedup state: the answers of its seqs at or above `floor`.

    ``answers`` maps a seq to its `_Answer`; ``seqs`` holds the same seqs in ascending order.
    Clients number their requests upwards, so a new seq almost always goes at the end and the
    lowest leaves from the front, both O(1) (a min-heap took 0.39 us per op, this 0.16); the rare
    seq that arrives out of order is inserted in its place.
    """

    __slots__ = ("answers", "floor", "last_index", "seqs")

    def __init__(self, floor: int, last_index: int) -> None:
        self.floor = floor
        self.last_index = last_index
        self.answers: dict[int, _Answer] = {}
        self.seqs: deque[int] = deque()

    def raise_floor(self, floor: int) -> None:
        """Move the floor up to `floor` (never down) and drop the answers below it."""
        if floor <= self.floor:
            return
        self.floor = floor
        seqs = self.seqs
        answers = self.answers
        while seqs and seqs[0] < floor:
            del answers[seqs.popleft()]

    def keep(self, seq: int, answer: _Answer, window: int) -> None:
        """Keep `answer` for `seq` (not kept yet); past `window` answers, drop the lowest and raise
        the floor past it."""
        self.answers[seq] = answer
        seqs = self.seqs
        if not seqs or seq > seqs[-1]:
            seqs.append(seq)
        else:
            bisect.insort(seqs, seq)
        while len(seqs) > window:
            lowest = seqs.popleft()
            del self.answers[lowest]
            self.floor = lowest + 1


class Broker:
    """The replicated state machine of one node; see the module docstring for the rules it keeps.

    Only `apply` and `apply_noop` change it, each with a log index above the last one applied.
    """

    def __init__(self, settings: BrokerSettings) -> None:
        self._settings = settings
        self._session_window = settings.session_window  # read per stored op
        self._topics: dict[str, _Topic] = {}
        """Topics in creation order (deterministic: log order), never removed (offsets are never reused)."""
        self._sessions: dict[str, _Session] = {}
        self._activity: list[tuple[int, str]] = []
        """Min-heap of (last_index, client_id); an item is stale unless it matches its session."""
        self._evicted: OrderedDict[str, None] = OrderedDict()
        """The last max_sessions evicted client_ids, oldest first."""
        self._age_heaps: dict[float, list[tuple[float, str]]] = {}
        """Per max_age_s value: min-heap of (ts, topic), ts at or below the topic's oldest kept ts."""
        self._applied_index = 0
        self._last_lamport = 0
        self._last_ts = 0.0
        self._late_count = 0

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

    def history(
        self,
        topic: str,
        from_offset: int | None = None,
        last: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Read kept messages of `topic` in offset order, O(limit).

        With `last`, the newest ``min(last, limit)`` messages; otherwise up to `limit` messages from
        `from_offset` (default 0), or from ``first_offset`` when retention removed those before it.
        An unknown topic reads as an empty one whose offsets are 0.

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
            position = state.head + (start - first)
            messages = [record_to_wire(record) for record in state.records[position : position + count]]
        return {
            "topic": topic,
            "messages": messages,
            "next_offset": start + count,
            "first_offset": first,
            "end_offset": end,
        }

    # ------------------------------------------------------------------------------ applying

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
        self._check_index(index)
        try:
            entry_ts, ops = decode_entry(data)
        except MalformedEntry as err:
            log.error("broker entry at index %d skipped: %s", index, err)
            self._applied_index = index
            return []
        return self.apply_ops(index, entry_ts, ops)

    def apply_ops(self, index: int, entry_ts: float, ops: Sequence[PubOp]) -> list[PubResult]:
        """Apply an entry already decoded: `apply` without the decoding.

        The leader keeps the ops it proposed and applies them as they are, since
        ``decode_entry(encode_entry(ts, ops)) == (ts, ops)``; followers decode.

        Raises: InvariantError: `index` is not above `applied_index`.
        """
        self._check_index(index)
        self._applied_index = index
        ts = max(self._last_ts, entry_ts)
        self._last_ts = ts

        results: list[PubResult] = []
        touched: dict[str, _Topic] = {}
        for op in ops:
            client_id = op[3]  # op.client_id, op.seq, op.ack_floor by position: the per-op hot path
            if client_id is None:
                results.append(self._store(op, index, ts, touched, None))
                continue
            session = self._sessions.get(client_id)
            seq: int = op[4]  # type: ignore[assignment]  # set whenever client_id is
            ack_floor = op[5]
            if session is None:
                if client_id in self._evicted:
                    results.append(_make_result(None, False, _expired(client_id, seq, None), ()))
                    continue
                session = self._new_session(client_id, ack_floor or 1, index)
            elif session.last_index != index:
                session.last_index = index
                heapq.heappush(self._activity, (index, client_id))
            if ack_floor is not None and ack_floor > session.floor:
                session.raise_floor(ack_floor)
            answer = session.answers.get(seq)
            if answer is not None:
                results.append(_make_result(answer, True, None, ()))
            elif seq < session.floor:
                results.append(_make_result(None, False, _expired(client_id, seq, session.floor), ()))
            else:
                results.append(self._store(op, index, ts, touched, session))

        for topic in touched.values():
            self._trim_size(topic)
        self._trim_age(ts)
        if len(self._activity) > 2 * len(self._sessions) + 64:
            self._rebuild_activity()
        return results

    def _check_index(self, index: int) -> None:
        """Raises: InvariantError unless `index` is above `applied_index`."""
        if index <= self._applied_index:
            raise InvariantError(
                f"broker applies index {index} after {self._applied_index}: indexes must increase"
            )

    def _store(
        self, op: PubOp, index: int, ts: float, touched: dict[str, _Topic], session: _Session | None
    ) -> PubResult:
        """Store `op`'s messages at the end of its topic, keep the answer in `session`.

        Returns: the op's PubResult.
        """
        op_topic, messages, batch, _, seq, _, op_lamport, late = op  # one unpack, not eight lookups
        topic = touched.get(op_topic)
        if topic is None:
            topic = self._topics.get(op_topic)
            if topic is None:
                topic = _Topic(op_topic, self._settings.retention_of(op_topic))
                self._topics[op_topic] = topic
            touched[op_topic] = topic
        name = topic.name  # one str object per topic, not one per decoded op, in every Record and answer
        if late:
            self._late_count += 1
        lamport = self._last_lamport + 1
        if op_lamport >= lamport:
            lamport = op_lamport + 1
        offset = topic.end
        records_list = topic.records
        if len(messages) == 1:
            data = messages[0]
            record: StoredRecord = (name, offset, data, lamport, ts, index, late)
            records_list.append(record)
            topic.nbytes += len(data)
            records: tuple[StoredRecord, ...] = (record,)
        else:
            records = tuple(
                [
                    (name, offset + position, data, lamport + position, ts, index, late)
                    for position, data in enumerate(messages)
                ]
            )
            records_list.extend(records)
            topic.nbytes += sum(map(len, messages))
        count = len(records)
        topic.end = offset + count
        self._last_lamport = lamport + count - 1
        if not topic.aging and topic.retention.max_age_s is not None:
            self._start_aging(topic, topic.retention.max_age_s, ts)
        answer = (name, offset, count if batch else 0, index, lamport, ts)
        if session is not None:
            session.keep(
                seq,  # type: ignore[arg-type]  # set whenever client_id is
                answer,
                self._session_window,
            )
        return _new_tuple(PubResult, (answer, False, None, records))

    def _new_session(self, client_id: str, floor: int, index: int) -> _Session:
        """Create `client_id`'s session, first evicting the least recently active while at the limit.

        Returns: the new session.
        """
        sessions = self._sessions
        activity = self._activity
        while len(sessions) >= self._settings.max_sessions:
            last_index, victim = heapq.heappop(activity)
            session = sessions.get(victim)
            if session is None or session.last_index != last_index:
                continue  # stale: the client was active again later
            del sessions[victim]
            self._evicted[victim] = None
            if len(self._evicted) > self._settings.max_sessions:
                self._evicted.popitem(last=False)
        session = _Session(floor, index)
        sessions[client_id] = session
        heapq.heappush(activity, (index, client_id))
        return session

    def _rebuild_activity(self) -> None:
        """Rebuild the activity heap without its stale items (it gains one per client per entry).

        Eviction pops (last_index, client_id) pairs, unique among live sessions, so the heap's
        internal layout never changes which session is evicted.
        """
        self._activity = [(session.last_index, cid) for cid, session in self._sessions.items()]
        heapq.heapify(self._activity)

    def _trim_size(self, topic: _Topic) -> None:
        """Drop `topic`'s oldest messages until its count and byte limits hold."""
        retention = topic.retention
        kept = len(topic.records) - topic.head
        max_messages = retention.max_messages
        if max_messages is not None and kept > max_messages:
            topic.drop_oldest(kept - max_messages)
        max_bytes = retention.max_bytes
        if max_bytes is not None and topic.nbytes > max_bytes:
            records = topic.records
            head = topic.head
            nbytes = topic.nbytes
            while nbytes > max_bytes:
                nbytes -= len(records[head][_R_DATA])
                head += 1
            topic.head = head
            topic.nbytes = nbytes
            topic.compact()

    def _start_aging(self, topic: _Topic, max_age: float, oldest_ts: float) -> None:
        """Enter `topic` (age limit `max_age`, oldest kept message at `oldest_ts`) in its age heap."""
        heapq.heappush(self._age_heaps.setdefault(max_age, []), (oldest_ts, topic.name))
        topic.aging = True

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
                records = topic.records
                head = topic.head
                stop = len(records)
                nbytes = topic.nbytes
                while head < stop and records[head][_R_TS] < cutoff:
                    nbytes -= len(records[head][_R_DATA])
                    head += 1
                topic.head = head
                topic.nbytes = nbytes
                topic.compact()
                if topic.head < len(topic.records):
                    # The new oldest is at or above the cutoff, so it is not popped again this turn.
                    heapq.heappush(heap, (topic.records[topic.head][_R_TS], name))
                else:
                    topic.aging = False

    # ------------------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """Returns: the whole state as deterministic msgpack bytes (equal states give equal bytes).

        Layout::

            [SNAPSHOT_FORMAT, applied_index, last_lamport, last_ts, late_count,
             topics:   [[name, first_offset, [[data, lamport, ts, index, late], ...]], ...]  creation order
             sessions: [[client_id, floor, last_index, answers], ...]  sorted by client_id
                       answers: [[seq, topic, offset, count, index, lamport, ts], ...]  sorted by seq
             evicted:  [client_id, ...]  oldest first]

        A record's topic and offset are implied by its place. The settings are not included:
        `restore` takes them, as the node has them from its configuration.
        """
        topics = [
            [
                topic.name,
                topic.first,
                [
                    record[_R_DATA:]  # (data, lamport, ts, index, late)
                    for record in topic.records[topic.head :]
                ],
            ]
            for topic in self._topics.values()
        ]
        sessions = [
            [
                client_id,
                session.floor,
                session.last_index,
                [(seq, *session.answers[seq]) for seq in sorted(session.answers)],
            ]
            for client_id, session in sorted(self._sessions.items())
        ]
        state = [
            SNAPSHOT_FORMAT,
            self._applied_index,
            self._last_lamport,
            self._last_ts,
            self._late_count,
            topics,
            sessions,
            list(self._evicted),
        ]
        packed: bytes = msgpack.packb(state, use_bin_type=True)
        return packed

    @classmethod
    def restore(cls, data: bytes, settings: BrokerSettings) -> Broker:
        """Rebuild a broker from `snapshot` bytes; applying the same further entries then gives the
        same states as on the broker that wrote them.

        Limits that `settings` lowered since the snapshot apply from the next entry on.

        Returns: the broker. Raises: SnapshotError naming what is wrong (the whole of it is checked).
        """
        try:
            state = msgpack.unpackb(data, raw=False, use_list=False)
        except Exception as exc:  # msgpack raises many types; each means the same here
            raise SnapshotError(f"not msgpack: {type(exc).__name__}: {exc}") from None
        _need(type(state) is tuple and len(state) == 8, "a snapshot is an array of 8 items")
        version, applied_index, last_lamport, last_ts, late_count, topics, sessions, evicted = state
        _need(type(version) is int and version == SNAPSHOT_FORMAT, f"unknown snapshot format {version!r}")
        _need(_is_count(applied_index), "applied_index must be an integer >= 0")
        _need(_is_count(last_lamport), "last_lamport must be an integer >= 0")
        _need(_ts_problem(last_ts) is None and type(last_ts) is float, "last_ts must be a finite float >= 0")
        _need(_is_count(late_count), "late_count must be an integer >= 0")
        broker = cls(settings)
        broker._applied_index = applied_index
        broker._last_lamport = last_lamport
        broker._last_ts = last_ts
        broker._late_count = late_count
        broker._restore_topics(topics)
        broker._restore_sessions(sessions)
        _need(type(evicted) is tuple, "evicted must be an array")
        for client_id in evicted:
            _need(type(client_id) is str, "an evicted client_id must be a str")
            _need(client_id not in broker._sessions, f"evicted client {client_id!r} also has a session")
            _need(client_id not in broker._evicted, f"evicted client {client_id!r} is listed twice")
            broker._evicted[client_id] = None
        return broker

    def _restore_topics(self, topics: Any) -> None:
        """Rebuild the topics and their age heaps from the snapshot's topic list. Raises: SnapshotError."""
        _need(type(topics) is tuple, "topics must be an array")
        for item in topics:
            _need(type(item) is tuple and len(item) == 3, "a topic is an array [name, first_offset, records]")
            name, first, records = item
            _need(_topic_problem(name) is None, f"bad topic name {name!r}")
            _need(name not in self._topics, f"topic {name!r} is listed twice")
            _need(_is_count(first), f"topic {name!r}: first_offset must be an integer >= 0")
            _need(type(records) is tuple, f"topic {name!r}: records must be an array")
            topic = _Topic(name, self._settings.retention_of(name), first)
            kept = topic.records
            nbytes = 0
            for offset, fields_ in enumerate(records, start=first):
                _need(
                    type(fields_) is tuple
                    and len(fields_) == 5
                    and type(fields_[0]) is bytes
                    and _is_count(fields_[1])
                    and type(fields_[2]) is float
                    and _ts_problem(fields_[2]) is None
                    and _is_count(fields_[3])
                    and type(fields_[4]) is bool,
                    f"topic {name!r}: record at offset {offset} must be [data, lamport, ts, index, late]",
                )
                data, lamport, ts, index, late = fields_
                kept.append((name, offset, data, lamport, ts, index, late))
                nbytes += len(data)
            topic.end = first + len(kept)
            topic.nbytes = nbytes
            self._topics[name] = topic
            if kept and topic.retention.max_age_s is not None:
                self._start_aging(topic, topic.retention.max_age_s, kept[0][_R_TS])

    def _restore_sessions(self, sessions: Any) -> None:
        """Rebuild the sessions and their activity heap from the snapshot. Raises: SnapshotError."""
        _need(type(sessions) is tuple, "sessions must be an array")
        previous: str | None = None
        for item in sessions:
            _need(
                type(item) is tuple and len(item) == 4,
                "a session is an array [client_id, floor, last_index, answers]",
            )
            client_id, floor, last_index, answers = item
            _need(type(client_id) is str, "a client_id must be a str")
            _need(previous is None or client_id > previous, "sessions must be sorted by client_id, once each")
            previous = client_id
            _need(type(floor) is int and floor >= 1, f"session {client_id!r}: floor must be an integer >= 1")
            _need(_is_count(last_index), f"session {client_id!r}: last_index must be an integer >= 0")
            _need(type(answers) is tuple, f"session {client_id!r}: answers must be an array")
            session = _Session(floor, last_index)
            for answer in answers:
                _need(
                    type(answer) is tuple
                    and len(answer) == 7
                    and type(answer[0]) is int
                    and answer[0] >= floor
                    and answer[0] not in session.answers
                    and _topic_problem(answer[1]) is None
                    and all(_is_count(value) for value in answer[2:6])
                    and type(answer[6]) is float
                    and _ts_problem(answer[6]) is None,
                    f"session {client_id!r}: bad answer {answer!r:.80}",
                )
                seq, topic, offset, count, index, lamport, ts = answer
                known = self._topics.get(topic)
                if known is not None:
                    topic = known.name  # share the topic's str, as apply does
                session.answers[seq] = (topic, offset, count, index, lamport, ts)
            session.seqs.extend(sorted(session.answers))
            self._sessions[client_id] = session
        self._rebuild_activity()


def _expired(client_id: str, seq: int, floor: int | None) -> SessionExpired:
    """Returns: the SessionExpired for a retry whose answer is gone (`floor` None: no session at all)."""
    if floor is None:
        why = f"client {client_id!r} has no session any more (evicted) for its seq {seq}"
    else:
        why = f"seq {seq} of client {client_id!r} is below its session's floor {floor}"
    return SessionExpired(
        f"{why}: it may or may not have been stored, and is not stored again; check HISTORY"
    )


def _is_count(value: Any) -> bool:
    """Returns: whether `value` is an int (not a bool) >= 0."""
    return type(value) is int and value >= 0


def _need(condition: bool, problem: str) -> None:
    """Raises: SnapshotError(`problem`) unless `condition`."""
    if not condition:
        raise SnapshotError(f"bad snapshot: {problem}")
