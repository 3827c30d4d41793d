"""Async subscriptions: every message of one topic, or of every topic a pattern matches, once and in
offset order per topic, as `wiber.client.Subscription` and `PatternSubscription` deliver them (the
zguide's Clone pattern; patterns as in docs/design.md sections 3 and 11), read with ``async for``.

The rules are the sync ones, from one place (`wiber.client.subscribing`, no I/O): subscribe first
(SUB on a node's PUB socket), fill from HISTORY, drop what was delivered already, fetch any gap,
catch up when a heartbeat shows more committed than was seen, and move to another node when it sent
nothing for `HEARTBEAT_SILENCE_S` (judged by what arrived in the socket, not by how long the reader
was away). This module does their I/O on the event loop. Its SUB, HISTORY and TOPICS requests go to
the node it listens to (pinned requests of its `wiber.aio.Client`), so the heartbeats' commit index
and the pages it reads come from one node. A client whose key the PUB port refuses reads HISTORY
every `HISTORY_POLL_S` instead. An error the cluster answers (FORBIDDEN, BAD_REQUEST) is raised from
`get`: trying again cannot change it. Closing the subscription (or its client) ends an ``async for``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import zmq

from wiber import protocol
from wiber.aio.sockets import AioSocket
from wiber.client.subscribing import (
    HISTORY_POLL_S,
    MAX_BUFFERED,
    CatchUp,
    Following,
    PatternFollower,
    ReadTopics,
    Step,
    TopicFollower,
)
from wiber.client.values import Message
from wiber.errors import ClientError

if TYPE_CHECKING:
    from wiber.aio.client import Client

__all__ = ["PatternSubscription", "Subscription"]

log = logging.getLogger(__name__)

#: Pause before attaching again after a node failed to answer.
RETRY_PAUSE_S = 0.05
#: How long one ``async for`` step waits before looking again (it never returns None).
ITERATION_WAIT_S = 3600.0


class Subscription(Following):
    """Every message of one topic, once, in offset order (see the module docstring).

    Made by `wiber.aio.Client.subscribe`; it attaches on the first `get`. `failovers` counts the
    moves to another node, `gaps_filled` the gaps seen live and filled from HISTORY.

    Raises (from the constructor): BadRequest when `topic` is not a valid topic name.
    """

    def __init__(self, client: Client, topic: str, from_offset: int | None) -> None:
        self.client = client
        self.topic = topic
        self._state = self._follower(topic, from_offset)
        self._sock: AioSocket | None = None
        self._node = client._current  # the node asked (SUB, HISTORY, TOPICS) and listened to
        self._closed = False
        self._wakeup: asyncio.Future[None] | None = None  # a wait on the socket, ended early by close

    def _follower(self, topic: str, from_offset: int | None) -> TopicFollower:
        """Returns: the subscription's state (`wiber.client.subscribing`)."""
        return TopicFollower(topic, from_offset)

    @property
    def closed(self) -> bool:
        """Whether the subscription (or its client) was closed."""
        return self._ended()

    def _ended(self) -> bool:
        """Returns: whether the subscription (or its client) was closed (a call: it may change across an await)."""
        return self._closed or self.client.closed

    # ---------------------------------------------------------------- reading

    async def get(self, timeout: float | None = None) -> Message | None:
        """Returns: the next message, or None when none arrives within `timeout` seconds (default: the
        client's total timeout) or the subscription is closed.

        Raises: a WireError the cluster answered (FORBIDDEN, BAD_REQUEST): trying again cannot help.
        """
        deadline = time.monotonic() + (self.client.timeouts.total_s if timeout is None else timeout)
        while True:
            message = self._state.pop()
            if message is not None:
                self.client.observe_lamport(message.lamport)
                return message
            now = time.monotonic()
            if now >= deadline or self._ended():
                return None
            try:
                await self._step(now, deadline)
            except ClientError as exc:
                if self._ended():
                    return None
                log.info("subscription %s: %s; moving to another node", self.topic, exc)
                self._state.fail_over()
                self._detach()
                self._move()
                await asyncio.sleep(max(0.0, min(RETRY_PAUSE_S, deadline - time.monotonic())))

    async def _step(self, now: float, deadline: float) -> None:
        """Do the next thing that may bring a message: read HISTORY, attach, or wait on the socket."""
        state = self._state
        step = state.step(now, self._frames_waiting)
        if step is Step.POLL_HISTORY:
            if not (await self._run(state.catch_up(), deadline)).taken:
                await asyncio.sleep(max(0.0, min(HISTORY_POLL_S, deadline - time.monotonic())))
        elif step is Step.CATCH_UP:
            await self._run(state.catch_up(), deadline)
        elif step is Step.DRAIN:
            # Frames wait in the socket: the node spoke while this task was not running (a slow or
            # starved subscriber). Judge the node by what it sent, not by our wake-ups.
            await self._drain(deadline)
        elif step is Step.WAIT:
            if await self._wait(state.wait_until(deadline) - now):
                await self._drain(deadline)
        elif step is Step.ATTACH:
            await self._attach(deadline)
        elif not self._key_refused():  # Step.FAIL_OVER
            state.fail_over()
            log.info("subscription %s: %s went silent, moving to another node", self.topic, self._node)
            self._detach()
            self._move()
            await self._attach(deadline)

    # ---------------------------------------------------------------- requests at the node

    async def _ask(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request to the node this subscription listens to. Returns: the ok reply."""
        return await self.client._request_at(self._node, op, f"subscription to {self.topic!r}: {op}", **fields)

    async def _attach(self, deadline: float) -> None:
        """Subscribe at the current node and catch up from HISTORY."""
        self._detach()
        reply = await self._ask("SUB", topic=self.topic)
        # The PUB socket is the answering node's: its key, unless the address has one of its own.
        if self._ended():
            return
        sock = self.client._open(zmq.SUB, reply["pub_addr"], self._node, options={zmq.RCVHWM: 100_000})
        sock.view.setsockopt(zmq.SUBSCRIBE, self._state.prefix)
        sock.view.setsockopt(zmq.SUBSCRIBE, protocol.HEARTBEAT_PREFIX)
        self._sock = sock
        await self._run(self._state.on_attach(time.monotonic(), reply), deadline)

    def _detach(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._state.detach()

    def _move(self) -> None:
        """Listen to the next node of the client's addresses from now on."""
        addresses = self.client.addresses
        position = addresses.index(self._node) if self._node in addresses else -1
        self._node = addresses[(position + 1) % len(addresses)]

    async def _run(self, plan: CatchUp, deadline: float) -> CatchUp:
        """Make the requests `plan` asks for (TOPICS, HISTORY pages) at the node until it is over.

        Returns: `plan`."""
        while (want := plan.next(time.monotonic(), deadline)) is not None:
            if isinstance(want, ReadTopics):
                plan.on_topics((await self._ask("TOPICS", pattern=want.pattern))["topics"])
            else:
                reply = await self._ask("HISTORY", topic=want.topic, from_offset=want.from_offset, limit=want.limit)
                plan.on_page(want, self.client._history_from(reply))
        return plan

    # ---------------------------------------------------------------- the socket

    def _frames_waiting(self) -> bool:
        """Returns: whether frames wait in the socket now."""
        sock = self._sock
        try:
            return sock is not None and bool(cast(int, sock.view.get(zmq.EVENTS)) & zmq.POLLIN)
        except zmq.ZMQError:
            return False

    async def _wait(self, seconds: float) -> bool:
        """Wait until frames arrive, `seconds` pass or the subscription closes. Returns: whether frames wait."""
        assert self._sock is not None
        polled = cast("asyncio.Future[int]", self._sock.owner.poll(max(1, int(seconds * 1000))))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        polled.add_done_callback(lambda _: None if waiter.done() else waiter.set_result(None))
        self._wakeup = waiter
        try:
            await waiter
        finally:
            self._wakeup = None
            if not polled.done():
                polled.cancel()
        if self._ended() or polled.cancelled() or polled.exception() is not None:
            return False
        return bool(polled.result())

    def _key_refused(self) -> bool:
        """Returns: whether the PUB port refused this client's key; if so, go on by polling HISTORY."""
        watch = self._sock.watch if self._sock is not None else None
        if watch is None or watch.check() is None or not watch.key_refused:
            return False
        log.warning("subscription %s: %s; reading the topic from HISTORY every %g s instead",
                    self.topic, watch.failure, HISTORY_POLL_S)
        self._detach()
        self._state.poll_history_instead()
        return True

    async def _drain(self, deadline: float) -> None:
        """Take what waits in the socket (at most `MAX_BUFFERED` frames; the rest stays there)."""
        for _ in range(MAX_BUFFERED):
            sock = self._sock
            if sock is None:
                return  # detached or closed during a catch-up
            try:
                prefix, body = sock.view.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed under us
            except ValueError:
                continue  # not two frames: not ours
            plan = self._state.on_frame(prefix, body, time.monotonic())
            if plan is not None:
                await self._run(plan, deadline)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        """Returns: the next message, waiting as long as it takes. Raises: StopAsyncIteration once closed."""
        while True:
            message = await self.get(timeout=ITERATION_WAIT_S)
            if message is not None:
                return message
            if self._ended():
                raise StopAsyncIteration

    def close(self) -> None:
        """Stop listening; a `get` or ``async for`` waiting on it returns (None) or ends."""
        self._closed = True
        self.client._subscriptions.discard(self)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        self._detach()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class PatternSubscription(Subscription):
    """Every message of every topic a pattern matches (``orders.*``, ``orders.>``): each topic's messages
    once and in offset order, the topics interleaved as they come (docs/design.md section 11), as
    `wiber.client.PatternSubscription` delivers them: topics that match when it first attaches start at
    their end (or `from_offset`), matching topics first seen later at 0; a catch-up reads TOPICS and
    every topic whose end is past its next offset, so a message PUB dropped is found even on a quiet topic.

    Raises (from the constructor): BadRequest when `pattern` is not a valid pattern.
    """

    def __init__(self, client: Client, pattern: str, from_offset: int | None) -> None:
        super().__init__(client, pattern, from_offset)
        assert isinstance(self._state, PatternFollower)
        self.pattern = self._state.pattern

    def _follower(self, topic: str, from_offset: int | None) -> TopicFollower:
        return PatternFollower(topic, from_offset)
