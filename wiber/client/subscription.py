"""Subscriptions: every message of one topic, or of every topic a pattern matches, once and in offset order
per topic (the zguide's Clone pattern; patterns as in docs/design.md sections 3 and 11)."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Iterator

import msgpack
import zmq

from wiber import protocol, topics
from wiber.client.curve import HandshakeWatch, client_socket, close_client_socket
from wiber.client.values import History, Message, pause
from wiber.errors import BadRequest, ClientError

if TYPE_CHECKING:
    from wiber.client.connection import Client

log = logging.getLogger(__name__)

#: A node whose PUB heartbeats stop for this long is taken for dead (three 250 ms heartbeats).
HEARTBEAT_SILENCE_S = 0.75
#: At most this many messages wait in a Subscription's own buffer; the rest stay in the socket or
#: in HISTORY, so a subscriber far behind does not hold the whole backlog in memory.
MAX_BUFFERED = 10_000
#: How often a subscription that may not use the PUB port (its key is refused there) reads HISTORY.
HISTORY_POLL_S = 0.1


class Subscription:
    """Every message of one topic, once, in offset order: the zguide's Clone pattern.

    It subscribes first (SUB on the node's PUB socket), then fills from HISTORY, drops what it
    already has, fetches any gap it sees (PUB drops under pressure and before a subscription has
    settled), catches up when a heartbeat shows the node committed more than it has seen, and moves
    to another node when three heartbeats in a row are missed: when the node sent nothing for
    HEARTBEAT_SILENCE_S, judged by what arrived in the socket (libzmq receives while this thread is
    not scheduled), never by how long the subscriber itself was away. A client whose key the PUB port
    refuses (it may not subscribe to every topic: docs/design.md section 10) reads by polling
    HISTORY every HISTORY_POLL_S instead. An error the cluster answers (FORBIDDEN, BAD_REQUEST)
    is raised from `get`: trying again cannot change it.
    """

    def __init__(self, client: Client, topic: str, from_offset: int | None) -> None:
        self.client = client
        self.topic = topic
        self._prefix = self._sub_prefix(topic)
        self._next: int | None = from_offset
        self._sock: zmq.Socket[bytes] | None = None
        self._watch: HandshakeWatch | None = None
        self._polling = False  # the PUB port refused this client's key: read HISTORY only
        self._node: str | None = None
        self._buffer: deque[Message] = deque()
        self._behind = False  # HISTORY holds more than the buffer took: read on before live messages
        self._last_heard = 0.0
        self._seen_commit = 0
        self.failovers = 0
        self.gaps_filled = 0

    def _sub_prefix(self, topic: str) -> bytes:
        """Returns: what the SUB socket subscribes to: exactly `topic`'s fan-out frames.

        Raises: BadRequest when `topic` is not a valid topic name."""
        return protocol.topic_prefix(topic)

    @property
    def next_offset(self) -> int | None:
        """The offset of the next message this subscription will deliver."""
        return self._next

    @property
    def next_offsets(self) -> dict[str, int]:
        """Per topic followed, the offset of its next message to deliver (empty before the start is known)."""
        return {} if self._next is None else {self.topic: self._next}

    def _attach(self, deadline: float) -> None:
        """Subscribe at some node (rotating on failure) and catch up from HISTORY."""
        self._detach()
        reply = self.client.request("SUB", topic=self.topic)
        # The PUB socket is the answering node's: its key, unless the address has one of its own.
        sock, self._watch = client_socket(self.client.ctx, zmq.SUB, reply["pub_addr"], self.client.curve,
                                          self.client._current)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self._prefix)
        sock.setsockopt(zmq.SUBSCRIBE, protocol.HEARTBEAT_PREFIX)
        sock.connect(reply["pub_addr"])
        self._sock = sock
        self._node = self.client._current
        self._last_heard = time.monotonic()
        self._start(reply)
        self._catch_up(deadline)

    def _start(self, reply: dict[str, Any]) -> None:
        """Take the starting offset from the SUB reply when the subscription was made without one."""
        if self._next is None:
            self._next = int(reply["next_offset"])

    def _detach(self) -> None:
        close_client_socket(self._sock, self._watch)
        self._sock, self._watch = None, None

    def _catch_up(self, deadline: float) -> None:
        """Read from HISTORY (at the attached node) until nothing more is committed there, or until
        `MAX_BUFFERED` messages wait for the application (then `_behind` says to read on later)."""
        assert self._next is not None
        self._behind = True
        while time.monotonic() < deadline and len(self._buffer) < MAX_BUFFERED:
            self._next, history = self._read_page(self.topic, self._next)
            self._seen_commit = max(self._seen_commit, history.commit_index)
            if history.next_offset >= history.end_offset:
                self._behind = False
                return

    def _read_page(self, topic: str, start: int) -> tuple[int, History]:
        """Read one HISTORY page of `topic` from `start` into the buffer.

        Returns: the offset after the last message taken (`start` when none), and the page.
        """
        history = self.client.history(topic, from_offset=start, limit=1000)
        if history.first_offset > start:
            log.warning("subscription %s: offsets %d..%d of %s were removed by retention before delivery",
                        self.topic, start, history.first_offset - 1, topic)
        fresh = [m for m in history.messages if m.offset >= start]
        self._buffer.extend(fresh)
        return (fresh[-1].offset + 1 if fresh else start), history

    def _on_live(self, item: dict[str, Any], deadline: float) -> None:
        assert self._next is not None
        offset = int(item["offset"])
        if offset < self._next:
            return  # already delivered (from HISTORY, or a duplicate after failover)
        if offset > self._next:
            self.gaps_filled += 1
            self._catch_up(deadline)  # a gap: PUB dropped something; HISTORY has it
            if offset != self._next:
                return  # delivered from HISTORY already, or still ahead of what the buffer took
        message = Message.from_wire(self.topic, item)
        self._buffer.append(message)
        self._next = offset + 1

    def get(self, timeout: float | None = None) -> Message | None:
        """Returns: the next message, or None when none arrives within `timeout` seconds."""
        deadline = time.monotonic() + (self.client.timeouts.total_s if timeout is None else timeout)
        while True:
            if self._buffer:
                message = self._buffer.popleft()
                self.client.observe_lamport(message.lamport)
                return message
            now = time.monotonic()
            if now >= deadline:
                return None
            try:
                if self._polling:
                    self._poll_history(deadline)
                    continue
                if self._behind and self._sock is not None:
                    self._catch_up(deadline)
                    continue
                if self._sock is not None and now - self._last_heard > HEARTBEAT_SILENCE_S and self._sock.poll(0):
                    # Frames wait in the socket: the node spoke while this thread was not running (a
                    # slow or starved subscriber). Judge the node by what it sent, not by our wake-ups.
                    self._poll_once(now, deadline)
                    continue
                if self._sock is None or now - self._last_heard > HEARTBEAT_SILENCE_S:
                    if self._sock is not None:
                        if self._key_refused():
                            continue
                        self.failovers += 1
                        log.info("subscription %s: %s went silent, moving to another node", self.topic, self._node)
                        self.client._reset()  # next address
                    self._attach(deadline)
                    continue
                self._poll_once(min(deadline, self._last_heard + HEARTBEAT_SILENCE_S), deadline)
            except ClientError as exc:
                log.info("subscription %s: %s; retrying", self.topic, exc)
                self._detach()
                self.client._reset()
                pause(deadline, 0.05)

    def _key_refused(self) -> bool:
        """Returns: whether the PUB port refused this client's key; if so, go on by polling HISTORY."""
        watch = self._watch
        if watch is None or watch.check() is None or not watch.key_refused:
            return False
        log.warning("subscription %s: %s; reading the topic from HISTORY every %g s instead",
                    self.topic, watch.failure, HISTORY_POLL_S)
        self._detach()
        self._polling = True
        return True

    def _poll_history(self, deadline: float) -> None:
        """Read what HISTORY has beyond the last offset delivered; wait a little when nothing is new."""
        before = len(self._buffer)
        self._catch_up(deadline)
        if len(self._buffer) == before:
            pause(deadline, HISTORY_POLL_S)

    def _poll_once(self, until: float, deadline: float) -> None:
        sock = self._sock
        assert sock is not None
        if not sock.poll(max(1, int((until - time.monotonic()) * 1000))):
            return
        for _ in range(MAX_BUFFERED):  # what waits beyond this stays in the socket (its RCVHWM bounds it)
            try:
                prefix, body = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # not two frames: not ours
            self._last_heard = time.monotonic()
            try:
                item = msgpack_unpack(body)
            except ValueError:
                continue
            if prefix == protocol.HEARTBEAT_PREFIX:
                commit = int(item.get("commit_index", 0))
                if commit > self._seen_commit:
                    self._catch_up(deadline)  # the tail may have been dropped: ask HISTORY
                    self._seen_commit = max(self._seen_commit, commit)
            else:
                self._on_frame(prefix, item, deadline)

    def _on_frame(self, prefix: bytes, item: dict[str, Any], deadline: float) -> None:
        """Take one fan-out message (any frame but a heartbeat) if it is of this subscription's topic."""
        if prefix == self._prefix:
            self._on_live(item, deadline)
            self._seen_commit = max(self._seen_commit, int(item.get("index", 0)))

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.get(timeout=3600.0)
            if message is not None:
                yield message

    def close(self) -> None:
        """Stop listening."""
        self._detach()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PatternSubscription(Subscription):
    """Every message of every topic a pattern matches (``orders.*``, ``orders.>``): each topic's messages
    once and in offset order, the topics interleaved as they come (docs/design.md section 11).

    The SUB socket subscribes to the pattern's literal prefix (``orders.`` for ``orders.*``; every
    frame for a pattern that starts with a wildcard) and drops what the pattern does not match; it
    keeps a next offset per topic. It starts from TOPICS: a topic that matches then starts at its end
    (or at `from_offset`, when given), and a matching topic first seen later is new since the
    subscription started, so it starts at offset 0. A catch-up (on attaching, on a heartbeat that
    shows more committed, and each poll when the PUB port refuses this client's key) reads TOPICS
    and fetches from HISTORY every topic whose end is past its next offset, so a message PUB dropped
    is found even on a topic that says nothing more. A gap seen live is filled from HISTORY at once.
    Topics stored before patterns were refused in names (``orders.*`` itself) are skipped: HISTORY
    cannot read them.
    """

    def __init__(self, client: Client, pattern: str, from_offset: int | None) -> None:
        try:
            self.pattern = topics.TopicPattern.parse(pattern)
        except ValueError as exc:
            raise BadRequest(f"{pattern!r} is not a topic pattern: {exc}") from None
        super().__init__(client, pattern, from_offset)
        self._from = from_offset
        self._offsets: dict[str, int] = {}
        self._started = False  # whether the first TOPICS has said where each topic starts

    def _sub_prefix(self, topic: str) -> bytes:
        """Returns: the pattern's literal prefix: every matching topic's fan-out frame starts with it."""
        return self.pattern.literal_prefix.encode("utf-8")

    @property
    def next_offset(self) -> int | None:
        """None: a pattern follows many topics, each with its own next offset (`next_offsets`)."""
        return None

    @property
    def next_offsets(self) -> dict[str, int]:
        """Per matching topic seen so far, the offset of its next message to deliver."""
        return dict(self._offsets)

    def _start(self, reply: dict[str, Any]) -> None:
        """On the first attach (the SUB socket already connected), take each matching topic's start from
        TOPICS: its end, or `from_offset` when given. A topic missing here is new: it starts at 0."""
        if not self._started:
            for name, end in self._matching(self.client.topics(self.pattern.text)).items():
                self._offsets[name] = end if self._from is None else self._from
            self._started = True

    def _matching(self, ends: dict[str, int]) -> dict[str, int]:
        """Returns: the topics of a TOPICS answer this pattern follows, with their end offsets."""
        return {name: end for name, end in ends.items()
                if self.pattern.matches(name) and not topics.is_pattern(name)}

    def _catch_up(self, deadline: float) -> None:
        """Read TOPICS, then from HISTORY every matching topic whose end is past its next offset, until
        each is read to its end or `MAX_BUFFERED` messages wait (then `_behind` says to read on later)."""
        self._behind = True
        if time.monotonic() >= deadline:
            return
        for name, end in self._matching(self.client.topics(self.pattern.text)).items():
            if self._offsets.setdefault(name, 0) < end and not self._fill(name, deadline):
                return
        self._behind = False

    def _fill(self, topic: str, deadline: float) -> bool:
        """Read `topic` from HISTORY from its next offset to its end. Returns: whether the end was reached
        (False: the deadline passed or the buffer is full)."""
        while time.monotonic() < deadline and len(self._buffer) < MAX_BUFFERED:
            self._offsets[topic], history = self._read_page(topic, self._offsets[topic])
            if history.next_offset >= history.end_offset:
                return True
        return False

    def _on_frame(self, prefix: bytes, item: dict[str, Any], deadline: float) -> None:
        """Take one fan-out message of a matching topic in its topic's order; fill a gap from HISTORY."""
        if not self._started or not prefix.endswith(b"\0") or prefix.startswith(b"$"):
            return  # before the start is known, a catch-up reads it; `$` frames are the node's own
        try:
            topic = prefix[:-1].decode("utf-8")
        except UnicodeDecodeError:
            return
        if not self.pattern.matches(topic) or topics.is_pattern(topic):
            return
        offset = int(item["offset"])
        start = self._offsets.setdefault(topic, 0)  # first seen now: new since the subscription started
        if offset < start:
            return  # already delivered
        if offset > start:
            self.gaps_filled += 1
            if not self._fill(topic, deadline):
                self._behind = True
            if offset != self._offsets[topic]:
                return  # delivered from HISTORY already, or still ahead of what the buffer took
        self._buffer.append(Message.from_wire(topic, item))
        self._offsets[topic] = offset + 1


def msgpack_unpack(body: bytes) -> dict[str, Any]:
    """Decode a fan-out body. Raises: ValueError when it is not a msgpack map."""
    try:
        item = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # bytes from the network: anything can fail
        raise ValueError(str(exc)) from None
    if not isinstance(item, dict):
        raise ValueError("not a map")
    return item
