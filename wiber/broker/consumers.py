"""Durable consumer groups (docs/design.md section 11, issue 16): their ops in the log and their state.

A durable consumer group has a name and a topic pattern. Members pull: a FETCH delivers messages of
the matching topics, each to one member at a time; an ACK removes a delivery for good; one not acked
within the group's ``ack_wait_ms``, or NAK'ed, is delivered again (its delivery count grows). Like
the rest of the broker this is pure and deterministic: the only time is the entry's ``ts`` (the
leader's synced clock), so every node that applies the same entries reaches the same groups.

Ops, as items of a broker entry's op array (`wiber.broker.entry`; a PUB op starts with its topic, a
str, a consumer op with its kind, a small int)::

    CREATE [1, group, pattern, ack_wait_ms, from_start]
    FETCH  [2, group, member, max]                          max: 1 to 1,000
    ACK    [3, group, member, [[topic, offset], ...]]       1 to 1,000 refs
    NAK    [4, group, member, [[topic, offset], ...]]
    DELETE [5, group]

State, per group: its pattern, ``ack_wait_ms``, ``from_start`` and the log index that created it;
per matching topic (topic id order = creation order) a cursor, the next offset never delivered; and
the pending deliveries ``{(topic id, offset): (member, delivery count, deadline ts)}``.

Rules:

* CREATE: existing matching topics start at their end (their first kept offset with ``from_start``);
  a matching topic created later starts at 0. The same CREATE again changes nothing; one with other
  settings is `GroupConflict`.
* FETCH: first the pending deliveries that are due (deadline passed, or NAK'ed), in (topic id,
  offset) order, to the fetching member with count + 1 and a new deadline; then first deliveries,
  per topic in offset order from its cursor (skipping what retention removed), never past its end;
  at most ``max`` in all. A pending delivery whose message retention removed is dropped, not sent.
  With `MAX_GROUP_PENDING` pending in the group (or `MAX_TOTAL_PENDING` in all groups) only due
  redeliveries are made, and a FETCH that could deliver nothing at all is `PendingCapReached`.
* ACK: removes the deliveries, whoever holds them; refs not pending are counted as ``unknown``.
* NAK: makes the fetching member's deliveries due now; refs it does not hold are ``unknown``.
* DELETE: removes the group (``deleted`` False when there was none).

Cost: a FETCH is O(log pending) per message plus O(topics it delivers from), since each group keeps
the sorted ids of the matching topics with messages past their cursor; an ACK or NAK O(log pending)
per ref (a due one O(due) to leave the sorted due list); a PUB O(groups matching its topic); a new topic O(groups), a CREATE O(topics), a DELETE O(its topics).
A checkpoint row holds a whole group: O(its matching topics + pending) per changed group.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol

from wiber import protocol
from wiber.errors import ConsumerError, GroupConflict, PendingCapReached, TooManyGroups, UnknownGroup
from wiber.topics import SEPARATOR, TopicPattern, matches, name_problem, pattern_problem

__all__ = [
    "ACK",
    "CREATE",
    "DEFAULT_ACK_WAIT_MS",
    "DELETE",
    "FETCH",
    "MAX_ACK_REFS",
    "MAX_FETCH",
    "MAX_GROUPS",
    "MAX_GROUP_PENDING",
    "MAX_TOTAL_PENDING",
    "NAK",
    "AckOp",
    "AckResult",
    "ConsumerError",
    "ConsumerGroups",
    "ConsumerOp",
    "ConsumerResult",
    "CreateGroupOp",
    "CreateResult",
    "DeleteGroupOp",
    "DeleteResult",
    "Delivered",
    "FetchOp",
    "FetchResult",
    "Group",
    "GroupConflict",
    "NakOp",
    "NakResult",
    "PendingCapReached",
    "TooManyGroups",
    "UnknownGroup",
    "consumer_op_from_item",
    "consumer_op_problem",
    "consumer_op_to_item",
]

CREATE: Final = 1
"""Kind of a CREATE op (first item of its array)."""
FETCH: Final = 2
"""Kind of a FETCH op."""
ACK: Final = 3
"""Kind of an ACK op."""
NAK: Final = 4
"""Kind of a NAK op."""
DELETE: Final = 5
"""Kind of a DELETE op."""

DEFAULT_ACK_WAIT_MS: Final = protocol.ACK_WAIT_MS_DEFAULT
"""How long a member holds a delivery before it is delivered again, unless CREATE says otherwise."""
MAX_ACK_WAIT_MS: Final = protocol.ACK_WAIT_MS_MAX
"""Longest ack_wait_ms a group may have (one day)."""
MAX_FETCH: Final = protocol.FETCH_MAX
"""Most messages one FETCH asks for."""
MAX_ACK_REFS: Final = protocol.ACK_REFS_MAX
"""Most (topic, offset) refs one ACK or NAK carries."""
NAME_MAX_BYTES: Final = 255
"""Longest group or member name, in bytes of UTF-8."""
MAX_GROUP_PENDING: Final = 10_000
"""Most deliveries one group has pending (delivered, not acked)."""
MAX_TOTAL_PENDING: Final = 1_000_000
"""Most deliveries all groups together have pending: with `MAX_GROUPS`, what bounds the memory."""
MAX_GROUPS: Final = 1000
"""Most consumer groups a cluster keeps."""
INT63_MAX: Final = 2**63 - 1
"""Largest offset or count any codec of the cluster holds."""

_COMPACT_SLACK: Final = 1024
"""Stale timers a group may hold beyond twice its pending count before its heap is rebuilt."""


# ---------------------------------------------------------------------------------- errors


# ConsumerError and its subclasses live in wiber.errors: the client raises them from replies too.


# ---------------------------------------------------------------------------------- ops


class CreateGroupOp(NamedTuple):
    """CREATE: make group `group` over the topics matching `pattern` (idempotent with equal settings)."""

    group: str
    pattern: str
    ack_wait_ms: int = DEFAULT_ACK_WAIT_MS
    from_start: bool = False


class FetchOp(NamedTuple):
    """FETCH: deliver up to `max_messages` messages of `group` to `member`."""

    group: str
    member: str
    max_messages: int


class AckOp(NamedTuple):
    """ACK: `member` is done with these (topic, offset) deliveries of `group`."""

    group: str
    member: str
    refs: tuple[tuple[str, int], ...]


class NakOp(NamedTuple):
    """NAK: `member` gives these deliveries of `group` back, to be delivered again now."""

    group: str
    member: str
    refs: tuple[tuple[str, int], ...]


class DeleteGroupOp(NamedTuple):
    """DELETE: remove group `group` and all its state."""

    group: str


ConsumerOp = CreateGroupOp | FetchOp | AckOp | NakOp | DeleteGroupOp
"""Any consumer op, as it travels in a log entry."""

_KINDS: Final[dict[type, int]] = {CreateGroupOp: CREATE, FetchOp: FETCH, AckOp: ACK, NakOp: NAK, DeleteGroupOp: DELETE}


def _member_name_problem(name: Any, what: str) -> str | None:
    """Returns: why `name` is not a group or member name (a topic name's rules, no ``*`` or ``>``), or None."""
    if type(name) is not str:
        return f"{what} is a {type(name).__name__}, not a str"
    problem = name_problem(name, what)
    if problem is not None:
        return problem
    if "*" in name or ">" in name:
        return f"{what} must not contain '*' or '>'"
    return None


def _refs_problem(refs: Any) -> str | None:
    """Returns: why `refs` is not 1 to `MAX_ACK_REFS` [topic, offset] pairs, or None."""
    if type(refs) is not tuple or not 1 <= len(refs) <= MAX_ACK_REFS:
        return f"refs must be an array of 1 to {MAX_ACK_REFS} [topic, offset] pairs"
    for ref in refs:
        if type(ref) is not tuple or len(ref) != 2:
            return "a ref must be a [topic, offset] pair"
        topic, offset = ref
        if type(topic) is not str or name_problem(topic) is not None:
            return f"a ref's topic {topic!r:.60} is not a topic name"
        if type(offset) is not int or not 0 <= offset <= INT63_MAX:
            return f"a ref's offset must be an integer from 0 to 2**63-1, got {offset!r:.40}"
    return None


def consumer_op_problem(op: ConsumerOp) -> str | None:
    """Returns: why `op` is not a valid consumer op, or None; the one check of both encoding and decoding."""
    problem = _member_name_problem(op[0], "a group name")
    if problem is not None:
        return problem
    if isinstance(op, CreateGroupOp):
        pattern: Any = op.pattern  # decoded from an entry: any type until checked
        if type(pattern) is not str:
            return f"a pattern is a {type(pattern).__name__}, not a str"
        problem = pattern_problem(pattern)
        if problem is not None:
            return problem
        ack_wait_ms: Any = op.ack_wait_ms
        if type(ack_wait_ms) is not int or not 1 <= ack_wait_ms <= MAX_ACK_WAIT_MS:
            return f"ack_wait_ms must be an integer from 1 to {MAX_ACK_WAIT_MS}, got {ack_wait_ms!r:.40}"
        from_start: Any = op.from_start
        if type(from_start) is not bool:
            return f"from_start must be a bool, got {from_start!r:.40}"
        return None
    if isinstance(op, DeleteGroupOp):
        return None
    problem = _member_name_problem(op.member, "a member name")
    if problem is not None:
        return problem
    if isinstance(op, FetchOp):
        wanted: Any = op.max_messages
        if type(wanted) is not int or not 1 <= wanted <= MAX_FETCH:
            return f"a fetch's max must be an integer from 1 to {MAX_FETCH}, got {wanted!r:.40}"
        return None
    return _refs_problem(op.refs)


def consumer_op_to_item(op: ConsumerOp) -> tuple[Any, ...]:
    """Returns: `op` as the array an entry carries (layout in the module docstring).

    Raises: ValueError: `op` is not a valid consumer op (`consumer_op_problem`).
    """
    problem = consumer_op_problem(op)
    if problem is not None:
        raise ValueError(problem)
    return (_KINDS[type(op)], *op)


def consumer_op_from_item(item: tuple[Any, ...]) -> ConsumerOp:
    """Returns: the consumer op an entry's array holds, checked as strictly as `consumer_op_to_item`.

    Raises: ValueError saying what is wrong (the entry decoder makes it a MalformedEntry).
    """
    kind = item[0] if item else None
    size = len(item)
    op: ConsumerOp
    if kind == CREATE and size == 5:
        op = CreateGroupOp(item[1], item[2], item[3], item[4])
    elif kind == FETCH and size == 4:
        op = FetchOp(item[1], item[2], item[3])
    elif kind == ACK and size == 4:
        op = AckOp(item[1], item[2], item[3])
    elif kind == NAK and size == 4:
        op = NakOp(item[1], item[2], item[3])
    elif kind == DELETE and size == 2:
        op = DeleteGroupOp(item[1])
    else:
        raise ValueError(f"not a consumer op: kind {kind!r:.20} with {size} items")
    if type(kind) is not int:  # True == 1: a bool kind is no kind
        raise ValueError(f"a consumer op's kind must be an int, got {type(kind).__name__}")
    problem = consumer_op_problem(op)
    if problem is not None:
        raise ValueError(problem)
    return op


# ---------------------------------------------------------------------------------- results


class Delivered(NamedTuple):
    """One message a FETCH handed to its member; the node reads its data from the record store."""

    topic: str
    offset: int
    delivery_count: int


class CreateResult(NamedTuple):
    """Outcome of a CREATE: `created` is False when an equal group existed (or on error)."""

    group: str
    created: bool
    error: ConsumerError | None


class FetchResult(NamedTuple):
    """Outcome of a FETCH: the deliveries, redeliveries first, in the order to hand them out."""

    group: str
    member: str
    deliveries: tuple[Delivered, ...]
    error: ConsumerError | None


class AckResult(NamedTuple):
    """Outcome of an ACK: how many refs were removed, and how many were not pending."""

    group: str
    member: str
    acked: int
    unknown: int
    error: ConsumerError | None


class NakResult(NamedTuple):
    """Outcome of a NAK: how many refs are due again, and how many the member did not hold."""

    group: str
    member: str
    nakked: int
    unknown: int
    error: ConsumerError | None


class DeleteResult(NamedTuple):
    """Outcome of a DELETE: `deleted` is False when there was no such group."""

    group: str
    deleted: bool
    error: ConsumerError | None


ConsumerResult = CreateResult | FetchResult | AckResult | NakResult | DeleteResult
"""Any consumer op's outcome."""


# ---------------------------------------------------------------------------------- state


class TopicView(Protocol):
    """What the groups read of a topic (`wiber.broker.state.TopicState` is one)."""

    @property
    def id(self) -> int: ...  # noqa: D102 - the topic's id, its place in creation order
    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def first(self) -> int: ...  # noqa: D102 - oldest kept offset
    @property
    def end(self) -> int: ...  # noqa: D102 - offset of the next message


class Pending:
    """One delivery not acked yet: who holds it, how often it was delivered, until when."""

    __slots__ = ("count", "deadline", "due", "member")

    def __init__(self, member: str, count: int, deadline: float) -> None:
        self.member = member
        self.count = count
        self.deadline = deadline
        self.due = False
        """Whether it is in its group's due list (derived state: not in snapshots or rows)."""


class Group:
    """One consumer group's settings, cursors and pending deliveries (see the module docstring).

    ``timers`` is a min-heap of ``(deadline, topic id, offset, count)``, one per delivery not yet
    due (stale items, whose delivery was acked, NAK'ed or delivered again, are skipped as popped);
    ``due`` holds the ``(topic id, offset)`` of the due deliveries, sorted: the next redeliveries.
    ``backlog`` holds, sorted, the ids of the matching topics that may have messages past their cursor
    (every one that has, and some that no longer have), so a FETCH visits only those. These three are
    derived state: snapshots and rows leave them out, `ConsumerGroups.load_row` rebuilds them.
    """

    __slots__ = ("ack_wait_ms", "backlog", "created_at", "cursors", "due", "from_start", "name", "pattern",
                 "pending", "timers")

    def __init__(self, name: str, pattern: TopicPattern, ack_wait_ms: int, from_start: bool, created_at: int) -> None:
        self.name = name
        self.pattern = pattern
        self.ack_wait_ms = ack_wait_ms
        self.from_start = from_start
        self.created_at = created_at
        self.cursors: dict[int, int] = {}
        """Per matching topic id, in id order: the next offset never delivered."""
        self.pending: dict[tuple[int, int], Pending] = {}
        self.timers: list[tuple[float, int, int, int]] = []
        self.due: list[tuple[int, int]] = []
        self.backlog: list[int] = []

    def may_have_backlog(self, topic_id: int) -> None:
        """Topic `topic_id` (a matching one) got messages: FETCH looks at it again."""
        backlog = self.backlog
        if not backlog or backlog[-1] < topic_id:
            backlog.append(topic_id)
            return
        position = bisect.bisect_left(backlog, topic_id)
        if backlog[position] != topic_id:
            backlog.insert(position, topic_id)

    def settings(self) -> tuple[str, int, bool]:
        """Returns: what a CREATE sets: (pattern, ack_wait_ms, from_start)."""
        return self.pattern.text, self.ack_wait_ms, self.from_start

    def rebuild_timers(self) -> None:
        """Make `timers` hold exactly one item per pending delivery not due (drops the stale ones)."""
        self.timers = [
            (pending.deadline, topic_id, offset, pending.count)
            for (topic_id, offset), pending in self.pending.items()
            if not pending.due
        ]
        heapq.heapify(self.timers)


class ConsumerGroups:
    """Every consumer group of one broker, and the ops that change them.

    It reads the broker's topics (`topics` by name, `by_id` in creation order; both the broker's own,
    growing as it creates topics) and is told of each new topic (`topic_created`) and of each append
    (`topic_grew`).
    """

    def __init__(self, topics: Mapping[str, TopicView], by_id: Sequence[TopicView]) -> None:
        self._topics = topics
        self._by_id = by_id
        self.groups: dict[str, Group] = {}
        """Groups by name (nothing depends on their order: snapshots sort them, a checkpoint's come unordered)."""
        self.total_pending = 0
        """Pending deliveries over all groups."""
        self.dirty: set[str] = set()
        """Names of the groups changed (or deleted) since the last checkpoint took them."""
        self._by_topic: dict[int, list[Group]] = {}
        """Per topic id, the groups whose pattern matches it (derived: rebuilt on load)."""

    def __len__(self) -> int:
        """Returns: how many groups exist."""
        return len(self.groups)

    def apply(self, op: ConsumerOp, index: int, now: float) -> ConsumerResult:
        """Apply one valid consumer op of the entry at log `index`, whose time is `now`.

        Returns: the op's result (errors are results: every node applies them alike).
        """
        if type(op) is FetchOp:
            return self._fetch(op, now)
        if type(op) is AckOp:
            return self._ack(op)
        if type(op) is NakOp:
            return self._nak(op, now)
        if type(op) is CreateGroupOp:
            return self._create(op, index)
        if type(op) is DeleteGroupOp:
            return self._delete(op)
        raise TypeError(f"{type(op).__name__} is not a consumer op")

    def has_work(self, name: str, now: float) -> bool | None:
        """Returns: whether a FETCH of group `name` at time `now` may deliver something (None: no such
        group). The leader asks before proposing a FETCH, so an idle member costs no log entry; True
        may still deliver nothing (a stale timer or backlog item), never the reverse."""
        group = self.groups.get(name)
        if group is None:
            return None
        return bool(group.backlog or group.due or (group.timers and group.timers[0][0] <= now))

    def describe(self, name: str) -> dict[str, Any]:
        """Returns: group `name` as GROUPS lists it: its settings, ``topics`` (how many match),
        ``pending`` (delivered, not acked) and ``lag`` (kept messages never delivered), O(its topics).

        Raises: KeyError: no such group.
        """
        group = self.groups[name]
        by_id = self._by_id
        lag = 0
        for topic_id, cursor in group.cursors.items():
            topic = by_id[topic_id]
            lag += max(0, topic.end - max(cursor, topic.first))
        return {"pattern": group.pattern.text, "ack_wait_ms": group.ack_wait_ms, "from_start": group.from_start,
                "topics": len(group.cursors), "pending": len(group.pending), "lag": lag}

    def topic_created(self, topic: TopicView) -> None:
        """A new topic exists: every group whose pattern matches it will deliver it from offset 0."""
        tokens = topic.name.split(SEPARATOR)
        for group in self.groups.values():
            if matches(group.pattern.tokens, tokens):
                group.cursors[topic.id] = 0
                self._by_topic.setdefault(topic.id, []).append(group)
                self.dirty.add(group.name)

    def topic_grew(self, topic_id: int) -> None:
        """Topic `topic_id` gets messages in the entry being applied: the groups matching it look again."""
        for group in self._by_topic.get(topic_id, ()):
            group.may_have_backlog(topic_id)

    # ------------------------------------------------------------------------------ ops

    def _create(self, op: CreateGroupOp, index: int) -> CreateResult:
        """CREATE: a new group, its cursors at each matching topic's end (or first kept offset)."""
        name = op.group
        existing = self.groups.get(name)
        if existing is not None:
            if existing.settings() == (op.pattern, op.ack_wait_ms, op.from_start):
                return CreateResult(name, False, None)
            pattern, ack_wait_ms, from_start = existing.settings()
            return CreateResult(name, False, GroupConflict(
                f"consumer group {name!r} exists with pattern {pattern!r}, ack_wait_ms {ack_wait_ms} and "
                f"from_start {from_start}: create it with those settings, or delete it first"))
        if len(self.groups) >= MAX_GROUPS:
            return CreateResult(name, False, TooManyGroups(
                f"{MAX_GROUPS} consumer groups exist, the most a cluster keeps: delete one first"))
        group = Group(name, TopicPattern.parse(op.pattern), op.ack_wait_ms, op.from_start, index)
        tokens = group.pattern.tokens
        for topic in self._by_id:
            if matches(tokens, topic.name.split(SEPARATOR)):
                group.cursors[topic.id] = topic.first if op.from_start else topic.end
        self._add(group)
        return CreateResult(name, True, None)

    def _add(self, group: Group) -> None:
        """Keep `group` (its cursors and pending set) and the derived state that finds its work."""
        by_topic = self._by_topic
        by_id = self._by_id
        for topic_id, cursor in group.cursors.items():
            by_topic.setdefault(topic_id, []).append(group)
            if cursor < by_id[topic_id].end:
                group.backlog.append(topic_id)  # cursors are in id order: backlog stays sorted
        group.rebuild_timers()
        self.groups[group.name] = group
        self.total_pending += len(group.pending)
        self.dirty.add(group.name)

    def _delete(self, op: DeleteGroupOp) -> DeleteResult:
        """DELETE: the group and its pending deliveries go."""
        group = self.groups.pop(op.group, None)
        if group is None:
            return DeleteResult(op.group, False, None)
        self.total_pending -= len(group.pending)
        for topic_id in group.cursors:
            self._by_topic[topic_id].remove(group)
        self.dirty.add(op.group)
        return DeleteResult(op.group, True, None)

    def _fetch(self, op: FetchOp, now: float) -> FetchResult:
        """FETCH: due redeliveries first, then first deliveries, at most `op.max_messages`."""
        group = self.groups.get(op.group)
        if group is None:
            return FetchResult(op.group, op.member, (), _unknown(op.group))
        member = op.member
        wanted = op.max_messages
        deadline = now + group.ack_wait_ms / 1000
        by_id = self._by_id
        pending = group.pending
        timers = group.timers
        _move_due(group, now)
        delivered: list[Delivered] = []
        taken = 0
        dropped = 0
        for key in group.due:
            if len(delivered) >= wanted:
                break
            taken += 1
            topic_id, offset = key
            topic = by_id[topic_id]
            held = pending[key]
            if offset < topic.first:  # retention removed the message: nothing to deliver again
                del pending[key]
                dropped += 1
                continue
            held.member = member
            held.count += 1
            held.deadline = deadline
            held.due = False
            heapq.heappush(timers, (deadline, topic_id, offset, held.count))
            delivered.append(Delivered(topic.name, offset, held.count))
        if taken:
            del group.due[:taken]
            self.total_pending -= dropped
            self.dirty.add(group.name)
        room = min(MAX_GROUP_PENDING - len(pending), MAX_TOTAL_PENDING - self.total_pending)
        left = wanted - len(delivered)
        if left and room <= 0 and not delivered:
            return FetchResult(group.name, member, (), PendingCapReached(
                f"consumer group {group.name!r} holds {len(pending)} unacked deliveries "
                f"({self.total_pending} in all groups), the most it may: ack or nak the messages "
                f"its members hold (or wait {group.ack_wait_ms} ms for them to be redelivered)"))
        left = min(left, room)
        cursors = group.cursors
        caught_up = 0
        for topic_id in group.backlog:
            if left <= 0:
                break
            cursor = cursors[topic_id]
            topic = by_id[topic_id]
            start = cursor if cursor >= topic.first else topic.first
            stop = min(topic.end, start + left)
            if stop > start:
                name = topic.name
                for offset in range(start, stop):
                    pending[(topic_id, offset)] = Pending(member, 1, deadline)
                    heapq.heappush(timers, (deadline, topic_id, offset, 1))
                    delivered.append(Delivered(name, offset, 1))
                left -= stop - start
                self.total_pending += stop - start
            else:
                stop = start
            if stop != cursor:
                cursors[topic_id] = stop
                self.dirty.add(group.name)
            if stop == topic.end:
                caught_up += 1
            else:
                break  # `left` ran out inside this topic
        if caught_up:
            del group.backlog[:caught_up]
        return FetchResult(group.name, member, tuple(delivered), None)

    def _ack(self, op: AckOp) -> AckResult:
        """ACK: remove the deliveries for good, whoever holds them now."""
        group = self.groups.get(op.group)
        if group is None:
            return AckResult(op.group, op.member, 0, 0, _unknown(op.group))
        acked = 0
        for key in self._keys(op.refs):
            held = None if key is None else group.pending.pop(key, None)
            if held is None or key is None:
                continue
            acked += 1
            if held.due:
                del group.due[bisect.bisect_left(group.due, key)]
        if acked:
            self.total_pending -= acked
            self.dirty.add(group.name)
            if len(group.timers) > 2 * len(group.pending) + _COMPACT_SLACK:
                group.rebuild_timers()
        return AckResult(group.name, op.member, acked, len(op.refs) - acked, None)

    def _nak(self, op: NakOp, now: float) -> NakResult:
        """NAK: the member's deliveries are due now, for the next FETCH of any member."""
        group = self.groups.get(op.group)
        if group is None:
            return NakResult(op.group, op.member, 0, 0, _unknown(op.group))
        nakked = 0
        for key in self._keys(op.refs):
            held = None if key is None else group.pending.get(key)
            if held is None or key is None or held.member != op.member:
                continue
            nakked += 1
            if not held.due:
                held.deadline = now
                held.due = True
                bisect.insort(group.due, key)
        if nakked:
            self.dirty.add(group.name)
        return NakResult(group.name, op.member, nakked, len(op.refs) - nakked, None)

    def _keys(self, refs: Iterable[tuple[str, int]]) -> list[tuple[int, int] | None]:
        """Returns: the (topic id, offset) of each ref, None for a topic that does not exist."""
        topics = self._topics
        keys: list[tuple[int, int] | None] = []
        for topic_name, offset in refs:
            topic = topics.get(topic_name)
            keys.append(None if topic is None else (topic.id, offset))
        return keys

    # ------------------------------------------------------------------------------ rows

    def row(self, name: str) -> list[Any]:
        """Returns: group `name` as ``[pattern, ack_wait_ms, from_start, created_at, [[topic, cursor,
        [[offset, member, count, deadline], ...]], ...]]`` (topics in id order, offsets ascending),
        what snapshots and checkpoint rows keep (`load_row` reads it). Raises: KeyError: no such group.
        """
        group = self.groups[name]
        per_topic: dict[int, list[list[Any]]] = {}
        for (topic_id, offset), pending in sorted(group.pending.items()):
            per_topic.setdefault(topic_id, []).append([offset, pending.member, pending.count, pending.deadline])
        by_id = self._by_id
        topics = [[by_id[topic_id].name, cursor, per_topic.get(topic_id, [])] for topic_id, cursor in group.cursors.items()]
        return [group.pattern.text, group.ack_wait_ms, group.from_start, group.created_at, topics]

    def load_row(self, name: Any, row: Any) -> None:
        """Add group `name` as `row` gave it (its topics must exist already), checked whole.

        Raises: ValueError saying what is wrong (`restore_groups` makes it a SnapshotError).
        """
        _check(_member_name_problem(name, "a group name") is None, f"bad group name {name!r:.60}")
        _check(name not in self.groups, f"group {name!r} is listed twice")
        _check(type(row) is tuple and len(row) == 5,
               f"group {name!r}: not [pattern, ack_wait_ms, from_start, created_at, topics]")
        pattern, ack_wait_ms, from_start, created_at, topics = row
        problem = consumer_op_problem(CreateGroupOp(name, pattern, ack_wait_ms, from_start))
        _check(problem is None, f"group {name!r}: {problem}")
        _check(_is_count(created_at), f"group {name!r}: created_at must be an integer >= 0")
        _check(type(topics) is tuple, f"group {name!r}: topics must be an array")
        group = Group(name, TopicPattern.parse(pattern), ack_wait_ms, from_start, created_at)
        previous = -1
        for item in topics:
            _check(type(item) is tuple and len(item) == 3, f"group {name!r}: a topic is [name, cursor, pending]")
            topic_name, cursor, deliveries = item
            topic = self._topics.get(topic_name) if type(topic_name) is str else None
            _check(topic is not None, f"group {name!r}: no topic {topic_name!r:.60}")
            assert topic is not None  # for mypy: _check raised otherwise
            _check(topic.id > previous, f"group {name!r}: topics must be in creation order, once each")
            _check(group.pattern.matches(topic.name), f"group {name!r}: topic {topic.name!r} does not match")
            _check(_is_count(cursor) and cursor <= topic.end, f"group {name!r}: bad cursor {cursor!r:.40}")
            _check(type(deliveries) is tuple, f"group {name!r}: pending must be an array")
            previous = topic.id
            group.cursors[topic.id] = cursor
            last = -1
            for delivery in deliveries:
                _check(type(delivery) is tuple and len(delivery) == 4,
                       f"group {name!r}: a pending delivery is [offset, member, count, deadline]")
                offset, member, count, deadline = delivery
                _check(_is_count(offset) and last < offset < cursor,
                       f"group {name!r}: pending offsets must ascend below the cursor, got {offset!r:.40}")
                _check(_member_name_problem(member, "a member name") is None, f"group {name!r}: bad member")
                _check(type(count) is int and 1 <= count <= INT63_MAX, f"group {name!r}: bad delivery count")
                _check(type(deadline) is float and math.isfinite(deadline) and deadline >= 0,
                       f"group {name!r}: bad deadline {deadline!r:.40}")
                last = offset
                group.pending[(topic.id, offset)] = Pending(member, count, deadline)
        _check(len(group.pending) <= MAX_GROUP_PENDING, f"group {name!r}: more than {MAX_GROUP_PENDING} pending")
        _check(len(self.groups) < MAX_GROUPS, f"more than {MAX_GROUPS} groups")
        _check(self.total_pending + len(group.pending) <= MAX_TOTAL_PENDING,
               f"more than {MAX_TOTAL_PENDING} pending deliveries in all groups")
        self._add(group)


def _move_due(group: Group, now: float) -> None:
    """Move the deliveries whose deadline is at or before `now` from the timers to the sorted due list."""
    timers = group.timers
    pending = group.pending
    due = group.due
    while timers and timers[0][0] <= now:
        _, topic_id, offset, count = heapq.heappop(timers)
        key = (topic_id, offset)
        held = pending.get(key)
        if held is None or held.due or held.count != count:
            continue  # acked, nak'ed or delivered again since
        held.due = True
        bisect.insort(due, key)


def _unknown(group: str) -> UnknownGroup:
    """Returns: the error of an op on a group that does not exist."""
    return UnknownGroup(f"no consumer group {group!r}: create it first")


def _is_count(value: Any) -> bool:
    """Returns: whether `value` is an int (not a bool) in [0, 2**63 - 1]."""
    return type(value) is int and 0 <= value <= INT63_MAX


def _check(condition: bool, problem: str) -> None:
    """Raises: ValueError(`problem`) unless `condition`."""
    if not condition:
        raise ValueError(problem)
