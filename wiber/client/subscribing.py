"""What a subscription knows and decides, without I/O: one implementation for the sync
`wiber.client.Subscription` and the asyncio `wiber.aio.Subscription` (h11's way: no sockets, threads
or clock here; the caller passes the time in, makes the requests asked for and hands the answers back).

Theory of operation (the zguide's Clone pattern; patterns as in docs/design.md sections 3 and 11):
a subscription subscribes first (SUB on a node's PUB socket), then reads HISTORY from its next offset
(`CatchUp`), so nothing committed between the two is missed. Live frames then come from the socket
(`TopicFollower.on_frame`): a message below its topic's next offset was delivered already (from
HISTORY, or again after a failover) and is dropped; one above it shows a gap (PUB drops under
pressure and before a subscription has settled), which HISTORY fills before the frame is taken; a
heartbeat whose commit index is past what the subscription has seen means the tail may have been
dropped, so HISTORY is read again. `TopicFollower.step` says what the caller does next: a node that
sent nothing for `HEARTBEAT_SILENCE_S` (three 250 ms heartbeats) is left for another, judged by what
arrived in the socket (the caller's `frames_waiting`: libzmq receives while the reader is away), never
by how long the reader itself was away. A client whose key the PUB port refuses reads by polling
HISTORY instead (`poll_history_instead`).

The caller's loop, in outline (``await`` each request in the asyncio one)::

    while (message := state.pop()) is None:
        step = state.step(now, frames_waiting)
        ATTACH:    SUB at a node, open the socket, then run state.on_attach(now, reply)
        CATCH_UP:  run state.catch_up();  POLL_HISTORY: the same, then pause when it took nothing
        DRAIN / WAIT (until state.wait_until(deadline)): for each frame, run state.on_frame(...) if a plan
        FAIL_OVER: unless the PUB port refused the key, state.fail_over() and attach at another node

    run(plan): while (want := plan.next(now, deadline)) is not None: make the request `want` names
               (ReadTopics -> TOPICS, ReadPage -> HISTORY) and give its answer to plan.on_topics / on_page

Invariants:
- Per topic, messages enter the buffer in offset order, each once: a message is taken only at its
  topic's next offset, which then moves past it; next offsets never go back.
- At most `MAX_BUFFERED` messages wait in the buffer, plus one HISTORY page: a catch-up asks for no
  page once the buffer holds that many (`behind` then says to read on after the reader took some).
- A catch-up that ends early (deadline, full buffer) leaves `behind` set; one abandoned midway (its
  request failed) changes nothing more than the pages it took.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from wiber import protocol, topics
from wiber.client.values import History, Message
from wiber.errors import BadRequest

__all__ = [
    "HEARTBEAT_SILENCE_S",
    "HISTORY_POLL_S",
    "MAX_BUFFERED",
    "CatchUp",
    "Following",
    "PatternFollower",
    "ReadPage",
    "ReadTopics",
    "Step",
    "TopicFollower",
    "msgpack_unpack",
]

log = logging.getLogger(__name__)

#: A node whose PUB heartbeats stop for this long is taken for dead (three 250 ms heartbeats).
HEARTBEAT_SILENCE_S = 0.75
#: At most this many messages wait in a Subscription's own buffer; the rest stay in the socket or
#: in HISTORY, so a subscriber far behind does not hold the whole backlog in memory.
MAX_BUFFERED = 10_000
#: How often a subscription that may not use the PUB port (its key is refused there) reads HISTORY.
HISTORY_POLL_S = 0.1


class Step(enum.Enum):
    """What the caller of `TopicFollower.step` does next."""

    ATTACH = "attach"
    """No socket: SUB at the current node, open the SUB socket, then run `TopicFollower.on_attach`."""
    CATCH_UP = "catch up"
    """HISTORY holds more than the buffer took: run `TopicFollower.catch_up`."""
    POLL_HISTORY = "poll history"
    """The PUB port refused the key: run `catch_up`; pause `HISTORY_POLL_S` when it took nothing."""
    DRAIN = "drain"
    """The node was silent past `HEARTBEAT_SILENCE_S` by the clock, but frames wait: read them."""
    WAIT = "wait"
    """Wait on the socket until `TopicFollower.wait_until`, then read what came."""
    FAIL_OVER = "fail over"
    """The node sent nothing for `HEARTBEAT_SILENCE_S`: unless its PUB port refused the key (then
    `poll_history_instead`), `fail_over` and attach at another node."""


@dataclass(frozen=True, slots=True)
class ReadTopics:
    """A request the caller makes for a `CatchUp`: TOPICS with `pattern`; the answer's ``topics`` map
    goes to `CatchUp.on_topics`."""

    pattern: str


@dataclass(frozen=True, slots=True)
class ReadPage:
    """A request the caller makes for a `CatchUp`: HISTORY of `topic` from `from_offset`, at most
    `limit` messages; the page goes to `CatchUp.on_page` with this request."""

    topic: str
    from_offset: int
    limit: int = protocol.HISTORY_MAX_LIMIT


class TopicFollower:
    """The state of a subscription to one topic: its next offset, the messages waiting for the
    reader, and what it knows of the node it listens to (see the module docstring).

    Raises (from the constructor): BadRequest when `topic` is not a valid topic name.
    """

    def __init__(self, topic: str, from_offset: int | None) -> None:
        self.topic = topic
        self.prefix = self._sub_prefix(topic)
        """What the SUB socket subscribes to (besides `protocol.HEARTBEAT_PREFIX`)."""
        self._offsets: dict[str, int] = {} if from_offset is None else {topic: from_offset}
        self._buffer: deque[Message] = deque()
        self.behind = False
        """HISTORY holds more than the buffer took: read on before live messages."""
        self.attached = False
        """Whether the caller listens to a node's PUB socket (from `on_attach` to `detach`)."""
        self.polling = False
        """The PUB port refused this client's key: HISTORY is read every `HISTORY_POLL_S` instead."""
        self.last_heard = 0.0
        """When the caller last read a frame from the node (its monotonic clock)."""
        self.seen_commit = 0
        """The highest commit index the node has shown (pages, live frames, heartbeats)."""
        self.failovers = 0
        """How often the subscription left a silent node for another."""
        self.gaps_filled = 0
        """Gaps seen in live frames and filled from HISTORY."""

    def _sub_prefix(self, topic: str) -> bytes:
        """Returns: exactly `topic`'s fan-out frames' prefix. Raises: BadRequest: not a valid topic name."""
        return protocol.topic_prefix(topic)

    # ---------------------------------------------------------------- what the reader sees

    @property
    def next_offset(self) -> int | None:
        """The offset of the next message this subscription will deliver (None before the start is known)."""
        return self._offsets.get(self.topic)

    @property
    def next_offsets(self) -> dict[str, int]:
        """Per topic followed, the offset of its next message to deliver (empty before the start is known)."""
        return dict(self._offsets)

    @property
    def buffered(self) -> int:
        """How many messages wait for the reader."""
        return len(self._buffer)

    def pop(self) -> Message | None:
        """Returns: the next message for the reader, or None when none waits."""
        return self._buffer.popleft() if self._buffer else None

    # ---------------------------------------------------------------- deciding

    def silent(self, now: float) -> bool:
        """Returns: whether the node sent nothing for longer than `HEARTBEAT_SILENCE_S` by `now`."""
        return now - self.last_heard > HEARTBEAT_SILENCE_S

    def step(self, now: float, frames_waiting: Callable[[], bool]) -> Step:
        """Returns: what to do next, with the buffer empty. `frames_waiting` says whether frames wait in
        the socket now; it is asked only when the clock says the node is silent, so that a reader that
        was away (busy, starved) judges the node by what it sent meanwhile, not by its own wake-ups."""
        if self.polling:
            return Step.POLL_HISTORY
        if not self.attached:
            return Step.ATTACH
        if self.behind:
            return Step.CATCH_UP
        if not self.silent(now):
            return Step.WAIT
        return Step.DRAIN if frames_waiting() else Step.FAIL_OVER

    def wait_until(self, deadline: float) -> float:
        """Returns: how long a `Step.WAIT` waits on the socket: until the node would count as silent, or
        the reader's `deadline` if sooner."""
        return min(deadline, self.last_heard + HEARTBEAT_SILENCE_S)

    # ---------------------------------------------------------------- what the caller did

    def on_attach(self, now: float, reply: dict[str, Any]) -> CatchUp:
        """The caller subscribed at a node (`reply` is its SUB answer) and its socket is connected.

        Returns: the catch-up to run now. The start comes from the reply when none was given."""
        self.attached = True
        self.last_heard = now
        if self.topic not in self._offsets:
            self._offsets[self.topic] = int(reply["next_offset"])
        return self.catch_up()

    def detach(self) -> None:
        """The caller closed the socket (a failed request, a close, before attaching again)."""
        self.attached = False

    def fail_over(self) -> None:
        """The caller leaves the node for another (it went silent, or stopped answering)."""
        self.failovers += 1
        self.attached = False

    def poll_history_instead(self) -> None:
        """The PUB port refused this client's key: from now on, HISTORY is polled (`Step.POLL_HISTORY`)."""
        self.polling = True
        self.attached = False

    def catch_up(self) -> CatchUp:
        """Returns: a read of HISTORY until nothing more is committed at the node, or until
        `MAX_BUFFERED` messages wait (then `behind` stays set: read on later)."""
        return CatchUp(self, [self.topic], full=True)

    def on_frame(self, prefix: bytes, body: bytes, now: float) -> CatchUp | None:
        """One frame from the SUB socket, read at `now`: the node is alive. Take it if it is the next
        message of its topic, drop it if it was delivered already or is not ours.

        Returns: a catch-up to run before the next frame, when the frame shows a gap or a heartbeat
        shows more committed than seen (the frame is taken, if still next, when the catch-up ends).
        """
        self.last_heard = now
        try:
            item = msgpack_unpack(body)
        except ValueError:
            return None
        if prefix == protocol.HEARTBEAT_PREFIX:
            commit = int(item.get("commit_index", 0))
            if commit > self.seen_commit:
                return self._full_catch_up(commit)  # the tail may have been dropped: ask HISTORY
            return None
        return self._on_message(prefix, item)

    def _full_catch_up(self, commit: int) -> CatchUp:
        """Returns: `catch_up`, after which the node's commit index `commit` counts as seen."""
        plan = self.catch_up()
        plan.commit = commit
        return plan

    def _on_message(self, prefix: bytes, item: dict[str, Any]) -> CatchUp | None:
        """Take one fan-out message (any frame but a heartbeat) if it is of this subscription's topic."""
        if prefix != self.prefix:
            return None
        self.seen_commit = max(self.seen_commit, int(item.get("index", 0)))
        return self._live(self.topic, item, full=True)

    def _live(self, topic: str, item: dict[str, Any], *, full: bool) -> CatchUp | None:
        """A live message of `topic`. Returns: the catch-up that fills a gap before it (`full`: all of
        HISTORY, else `topic` alone), or None (taken, or delivered already)."""
        offset = int(item["offset"])
        start = self._offsets.setdefault(topic, 0)  # (a pattern's topic first seen now: new since the start)
        if offset < start:
            return None  # already delivered (from HISTORY, or a duplicate after failover)
        if offset > start:
            self.gaps_filled += 1  # a gap: PUB dropped something; HISTORY has it
            plan = self.catch_up() if full else CatchUp(self, [topic], full=False)
            plan.pending = (topic, item)
            return plan
        self._take(topic, item)
        return None

    # ---------------------------------------------------------------- for CatchUp

    def _take(self, topic: str, item: dict[str, Any]) -> None:
        """Buffer a live message that is its topic's next."""
        self._buffer.append(Message.from_wire(topic, item))
        self._offsets[topic] = int(item["offset"]) + 1

    def _take_page(self, topic: str, start: int, history: History) -> int:
        """Buffer what a HISTORY page of `topic` read from `start` holds at or past `start`.

        Returns: how many messages it took."""
        if history.first_offset > start:
            log.warning("subscription %s: offsets %d..%d of %s were removed by retention before delivery",
                        self.topic, start, history.first_offset - 1, topic)
        fresh = [m for m in history.messages if m.offset >= start]
        self._buffer.extend(fresh)
        self._offsets[topic] = fresh[-1].offset + 1 if fresh else start
        return len(fresh)

    def _page_read(self, history: History) -> None:
        """A page was read at the node: one topic's page says all it had committed was seen."""
        self.seen_commit = max(self.seen_commit, history.commit_index)

    def _list_pattern(self) -> str | None:
        """Returns: the pattern a catch-up reads TOPICS with, or None: one topic only."""
        return None

    def _matching(self, ends: dict[str, int]) -> dict[str, int]:
        """Returns: the topics of a TOPICS answer this subscription follows, with their end offsets."""
        return {name: end for name, end in ends.items() if name == self.topic}

    def _start(self, ends: dict[str, int]) -> None:
        """Take each followed topic's start from a TOPICS answer (a pattern's first attach)."""


class PatternFollower(TopicFollower):
    """The state of a subscription to every topic a pattern matches (``orders.*``, ``orders.>``): a next
    offset per topic, the topics interleaved as they come (docs/design.md section 11).

    The SUB socket subscribes to the pattern's literal prefix (``orders.`` for ``orders.*``; every frame
    for a pattern that starts with a wildcard) and frames the pattern does not match are dropped. On
    the first attach, TOPICS says where each matching topic starts: its end (or `from_offset`, when
    given); a matching topic first seen later is new since the subscription started, so it starts at 0.
    A catch-up (on attaching, on a heartbeat that shows more committed, each poll when the PUB port
    refuses this client's key) reads TOPICS and fetches from HISTORY every topic whose end is past its
    next offset, so a message PUB dropped is found even on a topic that says nothing more; a gap seen
    live is filled from HISTORY of its topic at once. Topics stored before patterns were refused in
    names (``orders.*`` itself) are skipped: HISTORY cannot read them.

    Raises (from the constructor): BadRequest when `pattern` is not a valid pattern.
    """

    def __init__(self, pattern: str, from_offset: int | None) -> None:
        try:
            self.pattern = topics.TopicPattern.parse(pattern)
        except ValueError as exc:
            raise BadRequest(f"{pattern!r} is not a topic pattern: {exc}") from None
        super().__init__(pattern, None)
        self._from = from_offset
        self.started = False
        """Whether the first TOPICS has said where each topic starts."""

    def _sub_prefix(self, topic: str) -> bytes:
        """Returns: the pattern's literal prefix: every matching topic's fan-out frame starts with it."""
        return self.pattern.literal_prefix.encode("utf-8")

    @property
    def next_offset(self) -> int | None:
        """None: a pattern follows many topics, each with its own next offset (`next_offsets`)."""
        return None

    def on_attach(self, now: float, reply: dict[str, Any]) -> CatchUp:
        """The caller subscribed at a node and its socket is connected. Returns: the catch-up to run now,
        which on the first attach begins with the TOPICS that says where each matching topic starts."""
        self.attached = True
        self.last_heard = now
        plan = self.catch_up()
        plan.start = not self.started
        return plan

    def catch_up(self) -> CatchUp:
        """Returns: a read of TOPICS, then from HISTORY of every matching topic whose end is past its next
        offset, until each is read to its end or `MAX_BUFFERED` messages wait (then `behind` stays set)."""
        return CatchUp(self, None, full=True)

    def _on_message(self, prefix: bytes, item: dict[str, Any]) -> CatchUp | None:
        """Take one fan-out message of a matching topic in its topic's order; a gap is filled from its topic."""
        if not self.started or not prefix.endswith(b"\0") or prefix.startswith(b"$"):
            return None  # before the start is known, a catch-up reads it; `$` frames are the node's own
        try:
            topic = prefix[:-1].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not self.pattern.matches(topic) or topics.is_pattern(topic):
            return None
        return self._live(topic, item, full=False)

    def _page_read(self, history: History) -> None:
        """A page of one topic says nothing of the others' commits: a heartbeat past what was seen must
        still read TOPICS, or a message PUB dropped on another topic would wait for the next commit."""

    def _list_pattern(self) -> str | None:
        return self.pattern.text

    def _matching(self, ends: dict[str, int]) -> dict[str, int]:
        return {name: end for name, end in ends.items()
                if self.pattern.matches(name) and not topics.is_pattern(name)}

    def _start(self, ends: dict[str, int]) -> None:
        for name, end in self._matching(ends).items():
            self._offsets[name] = end if self._from is None else self._from
        self.started = True


class CatchUp:
    """One read of what HISTORY holds past a subscription's next offsets, as requests for the caller.

    The caller loops ``while (want := plan.next(now, deadline)) is not None``: it makes the request
    (`ReadTopics`: TOPICS; `ReadPage`: HISTORY) and hands the answer to `on_topics` or `on_page`. When
    `next` returns None the plan is over and has applied its outcome: `behind` cleared (a full
    catch-up that reached every end) or set (one that stopped at the deadline or a full buffer), the
    frame that showed a gap taken if it is still its topic's next, a heartbeat's commit index seen.
    A plan abandoned midway (its request failed) applies none of that.
    """

    def __init__(self, state: TopicFollower, topic_list: list[str] | None, *, full: bool) -> None:
        self._state = state
        self._full = full
        self._listing = topic_list is None  # a TOPICS says which topics to read (a pattern)
        # Topics to read, each with its end as TOPICS gave it (None: read until a page reaches the end).
        self._todo: deque[tuple[str, int | None]] = deque((name, None) for name in topic_list or ())
        self._done = False
        self.start = False
        """Whether a TOPICS that says where each matching topic starts comes first (a pattern's first attach)."""
        self.pending: tuple[str, dict[str, Any]] | None = None
        """The live frame (topic, item) that showed a gap: taken at the end if still its topic's next."""
        self.commit: int | None = None
        """A heartbeat's commit index, seen once the plan ends."""
        self.taken = 0
        """How many messages the plan took from HISTORY."""
        if full:
            state.behind = True

    def next(self, now: float, deadline: float) -> ReadTopics | ReadPage | None:
        """Returns: the request to make next, or None when the plan is over (its outcome applied)."""
        state = self._state
        if self._done:
            return None
        pattern = state._list_pattern()
        if self.start and pattern is not None:
            return ReadTopics(pattern)
        if self._listing and pattern is not None:
            if now >= deadline:
                self._finish(False)
                return None
            return ReadTopics(pattern)
        while self._todo:
            topic, end = self._todo[0]
            start = state._offsets.setdefault(topic, 0)
            if end is not None:
                if start >= end:
                    self._todo.popleft()
                    continue
                self._todo[0] = (topic, None)  # read on to the end a page shows, as for one topic
            if now >= deadline or state.buffered >= MAX_BUFFERED:
                self._finish(False)
                return None
            return ReadPage(topic, start)
        self._finish(True)
        return None

    def on_topics(self, ends: dict[str, int]) -> None:
        """The answer to a `ReadTopics`: each topic with its end offset."""
        if self.start:
            self._state._start(ends)
            self.start = False
        elif self._listing:
            self._listing = False
            self._todo.extend(self._state._matching(ends).items())

    def on_page(self, want: ReadPage, history: History) -> None:
        """The answer to `want`: one HISTORY page."""
        state = self._state
        self.taken += state._take_page(want.topic, want.from_offset, history)
        state._page_read(history)
        if history.next_offset >= history.end_offset and self._todo and self._todo[0][0] == want.topic:
            self._todo.popleft()

    def _finish(self, reached_end: bool) -> None:
        """End the plan and apply its outcome."""
        self._done = True
        state = self._state
        if not reached_end:
            state.behind = True
        elif self._full:
            state.behind = False
        if self.pending is not None:
            topic, item = self.pending
            if int(item["offset"]) == state._offsets.get(topic):
                state._take(topic, item)
        if self.commit is not None:
            state.seen_commit = max(state.seen_commit, self.commit)
        return None


class Following:
    """What a subscription shows of its state (`_state`, a `TopicFollower`): the same properties on the
    sync and the asyncio subscription."""

    _state: TopicFollower

    @property
    def next_offset(self) -> int | None:
        """The offset of the next message this subscription will deliver (None for a pattern: `next_offsets`)."""
        return self._state.next_offset

    @property
    def next_offsets(self) -> dict[str, int]:
        """Per topic followed, the offset of its next message to deliver (empty before the start is known)."""
        return self._state.next_offsets

    @property
    def failovers(self) -> int:
        """How often the subscription moved to another node (silent, or not answering)."""
        return self._state.failovers

    @property
    def gaps_filled(self) -> int:
        """Gaps seen in live messages and filled from HISTORY."""
        return self._state.gaps_filled

    @property
    def buffered(self) -> int:
        """How many messages wait in the subscription for the reader (at most `MAX_BUFFERED` and a page)."""
        return self._state.buffered

    @property
    def _polling(self) -> bool:
        """Whether the PUB port refused this client's key, so HISTORY is polled instead (tests look)."""
        return self._state.polling


def msgpack_unpack(body: bytes) -> dict[str, Any]:
    """Decode a fan-out body. Raises: ValueError when it is not a msgpack map."""
    try:
        item = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # bytes from the network: anything can fail
        raise ValueError(str(exc)) from None
    if not isinstance(item, dict):
        raise ValueError("not a map")
    return item
