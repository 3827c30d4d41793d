"""Subscriptions: every message of one topic, or of every topic a pattern matches, once and in offset order
per topic (the zguide's Clone pattern; patterns as in docs/design.md sections 3 and 11).

The rules (what to drop, when a gap or a heartbeat sends it to HISTORY, when a node counts as dead)
are `wiber.client.subscribing`'s, shared with the asyncio subscription; this module does their I/O
with the calling thread: the SUB socket, and SUB, HISTORY and TOPICS through the `Client`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterator

import zmq

from wiber import protocol
from wiber.client.curve import HandshakeWatch, client_socket, close_client_socket
from wiber.client.subscribing import (
    HEARTBEAT_SILENCE_S,
    HISTORY_POLL_S,
    MAX_BUFFERED,
    CatchUp,
    Following,
    PatternFollower,
    ReadTopics,
    Step,
    TopicFollower,
    msgpack_unpack,
)
from wiber.client.values import Message, pause
from wiber.errors import ClientError

if TYPE_CHECKING:
    from wiber.client.connection import Client

# The constants and msgpack_unpack are `wiber.client`'s names, as they were when they lived here.
__all__ = ["HEARTBEAT_SILENCE_S", "MAX_BUFFERED", "PatternSubscription", "Subscription", "msgpack_unpack"]

log = logging.getLogger(__name__)

#: Pause before asking again after the cluster did not answer.
RETRY_PAUSE_S = 0.05


class Subscription(Following):
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

    Raises (from the constructor): BadRequest when `topic` is not a valid topic name.
    """

    def __init__(self, client: Client, topic: str, from_offset: int | None) -> None:
        self.client = client
        self.topic = topic
        self._state = self._follower(topic, from_offset)
        self._sock: zmq.Socket[bytes] | None = None
        self._watch: HandshakeWatch | None = None
        self._node: str | None = None

    def _follower(self, topic: str, from_offset: int | None) -> TopicFollower:
        """Returns: the subscription's state (`wiber.client.subscribing`)."""
        return TopicFollower(topic, from_offset)

    def get(self, timeout: float | None = None) -> Message | None:
        """Returns: the next message, or None when none arrives within `timeout` seconds."""
        deadline = time.monotonic() + (self.client.timeouts.total_s if timeout is None else timeout)
        state = self._state
        while True:
            message = state.pop()
            if message is not None:
                self.client.observe_lamport(message.lamport)
                return message
            now = time.monotonic()
            if now >= deadline:
                return None
            try:
                step = state.step(now, self._frames_waiting)
                if step is Step.POLL_HISTORY:
                    if not self._run(state.catch_up(), deadline).taken:
                        pause(deadline, HISTORY_POLL_S)
                elif step is Step.CATCH_UP:
                    self._run(state.catch_up(), deadline)
                elif step is Step.WAIT or step is Step.DRAIN:
                    # DRAIN: frames wait though the clock says silent: the node spoke while this thread
                    # was not running (a slow or starved subscriber), so it is judged by what it sent.
                    self._receive(state.wait_until(deadline) if step is Step.WAIT else now, deadline)
                elif step is Step.ATTACH:
                    self._attach(deadline)
                elif not self._key_refused():  # Step.FAIL_OVER
                    state.fail_over()
                    log.info("subscription %s: %s went silent, moving to another node", self.topic, self._node)
                    self.client._reset()  # next address
                    self._attach(deadline)
            except ClientError as exc:
                log.info("subscription %s: %s; retrying", self.topic, exc)
                self._detach()
                self.client._reset()
                pause(deadline, RETRY_PAUSE_S)

    def _attach(self, deadline: float) -> None:
        """Subscribe at the client's current node and catch up from HISTORY."""
        self._detach()
        reply = self.client.request("SUB", topic=self.topic)
        # The PUB socket is the answering node's: its key, unless the address has one of its own.
        sock, self._watch = client_socket(self.client.ctx, zmq.SUB, reply["pub_addr"], self.client.curve,
                                          self.client._current)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self._state.prefix)
        sock.setsockopt(zmq.SUBSCRIBE, protocol.HEARTBEAT_PREFIX)
        sock.connect(reply["pub_addr"])
        self._sock = sock
        self._node = self.client._current
        self._run(self._state.on_attach(time.monotonic(), reply), deadline)

    def _detach(self) -> None:
        close_client_socket(self._sock, self._watch)
        self._sock, self._watch = None, None
        self._state.detach()

    def _run(self, plan: CatchUp, deadline: float) -> CatchUp:
        """Make the requests `plan` asks for (TOPICS, HISTORY pages) until it is over. Returns: `plan`."""
        while (want := plan.next(time.monotonic(), deadline)) is not None:
            if isinstance(want, ReadTopics):
                plan.on_topics(self.client.topics(want.pattern))
            else:
                plan.on_page(want, self.client.history(want.topic, from_offset=want.from_offset, limit=want.limit))
        return plan

    def _frames_waiting(self) -> bool:
        """Returns: whether frames wait in the socket now."""
        return self._sock is not None and bool(self._sock.poll(0))

    def _key_refused(self) -> bool:
        """Returns: whether the PUB port refused this client's key; if so, go on by polling HISTORY."""
        watch = self._watch
        if watch is None or watch.check() is None or not watch.key_refused:
            return False
        log.warning("subscription %s: %s; reading the topic from HISTORY every %g s instead",
                    self.topic, watch.failure, HISTORY_POLL_S)
        self._detach()
        self._state.poll_history_instead()
        return True

    def _receive(self, until: float, deadline: float) -> None:
        """Wait on the socket until `until` (at least a millisecond), then take what waits there: at most
        `MAX_BUFFERED` frames (the rest stays in the socket, which its RCVHWM bounds)."""
        sock = self._sock
        assert sock is not None
        if not sock.poll(max(1, int((until - time.monotonic()) * 1000))):
            return
        for _ in range(MAX_BUFFERED):
            try:
                prefix, body = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # not two frames: not ours
            plan = self._state.on_frame(prefix, body, time.monotonic())
            if plan is not None:
                self._run(plan, deadline)

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

    It keeps a next offset per topic (`next_offsets`) and starts from TOPICS: a topic that matches then
    starts at its end (or at `from_offset`, when given), and a matching topic first seen later is new
    since the subscription started, so it starts at offset 0; the rules are
    `wiber.client.subscribing.PatternFollower`'s.

    Raises (from the constructor): BadRequest when `pattern` is not a valid pattern.
    """

    def __init__(self, client: Client, pattern: str, from_offset: int | None) -> None:
        super().__init__(client, pattern, from_offset)
        assert isinstance(self._state, PatternFollower)
        self.pattern = self._state.pattern

    def _follower(self, topic: str, from_offset: int | None) -> TopicFollower:
        return PatternFollower(topic, from_offset)
