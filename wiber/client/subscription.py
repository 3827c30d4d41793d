"""A Subscription: every message of one topic, once, in offset order (the zguide's Clone pattern)."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Iterator

import msgpack
import zmq

from wiber import protocol
from wiber.client.curve import HandshakeWatch, client_socket, close_client_socket
from wiber.client.values import Message, pause
from wiber.errors import ClientError

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
    to another node when three heartbeats in a row are missed. A client whose key the PUB port
    refuses (it may not subscribe to every topic: docs/design.md section 10) reads by polling
    HISTORY every HISTORY_POLL_S instead. An error the cluster answers (FORBIDDEN, BAD_REQUEST)
    is raised from `get`: trying again cannot change it.
    """

    def __init__(self, client: Client, topic: str, from_offset: int | None) -> None:
        self.client = client
        self.topic = topic
        self._prefix = protocol.topic_prefix(topic)
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

    @property
    def next_offset(self) -> int | None:
        """The offset of the next message this subscription will deliver."""
        return self._next

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
        if self._next is None:
            self._next = int(reply["next_offset"])
        self._catch_up(deadline)

    def _detach(self) -> None:
        close_client_socket(self._sock, self._watch)
        self._sock, self._watch = None, None

    def _catch_up(self, deadline: float) -> None:
        """Read from HISTORY (at the attached node) until nothing more is committed there, or until
        `MAX_BUFFERED` messages wait for the application (then `_behind` says to read on later)."""
        assert self._next is not None
        self._behind = True
        while time.monotonic() < deadline and len(self._buffer) < MAX_BUFFERED:
            history = self.client.history(self.topic, from_offset=self._next, limit=1000)
            self._seen_commit = max(self._seen_commit, history.commit_index)
            if history.first_offset > self._next:
                log.warning("subscription %s: offsets %d..%d were removed by retention before delivery",
                            self.topic, self._next, history.first_offset - 1)
            fresh = [m for m in history.messages if m.offset >= self._next]
            self._buffer.extend(fresh)
            if fresh:
                self._next = fresh[-1].offset + 1
            if history.next_offset >= history.end_offset:
                self._behind = False
                return

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
            elif prefix == self._prefix:
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


def msgpack_unpack(body: bytes) -> dict[str, Any]:
    """Decode a fan-out body. Raises: ValueError when it is not a msgpack map."""
    try:
        item = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # bytes from the network: anything can fail
        raise ValueError(str(exc)) from None
    if not isinstance(item, dict):
        raise ValueError("not a map")
    return item
