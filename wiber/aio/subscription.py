"""Async subscriptions: every message of one topic, or of every topic a pattern matches, once and in
offset order per topic, as `wiber.client.Subscription` and `PatternSubscription` deliver them (the
zguide's Clone pattern; patterns as in docs/design.md sections 3 and 11), read with ``async for``.

The same rules as the sync ones: subscribe first (SUB on a node's PUB socket), fill from HISTORY,
drop what was delivered already, fetch any gap, catch up when a heartbeat shows more committed than
was seen, and move to another node when it sent nothing for `HEARTBEAT_SILENCE_S` (judged by what
arrived in the socket, not by how long the reader was away). Its SUB, HISTORY and TOPICS requests go
to the node it listens to (pinned requests of its `wiber.aio.Client`), so the heartbeats' commit index
and the pages it reads come from one node. A client whose key the PUB port refuses reads HISTORY
every `HISTORY_POLL_S` instead. An error the cluster answers (FORBIDDEN, BAD_REQUEST) is raised from
`get`: trying again cannot change it. Closing the subscription (or its client) ends an ``async for``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import zmq

from wiber import protocol, topics
from wiber.aio.sockets import AioSocket
from wiber.client.subscription import HEARTBEAT_SILENCE_S, HISTORY_POLL_S, MAX_BUFFERED, msgpack_unpack
from wiber.client.values import History, Message
from wiber.errors import BadRequest, ClientError

if TYPE_CHECKING:
    from wiber.aio.client import Client

__all__ = ["PatternSubscription", "Subscription"]

log = logging.getLogger(__name__)

#: Pause before attaching again after a node failed to answer.
RETRY_PAUSE_S = 0.05
#: How long one ``async for`` step waits before looking again (it never returns None).
ITERATION_WAIT_S = 3600.0


class Subscription:
    """Every message of one topic, once, in offset order (see the module docstring).

    Made by `wiber.aio.Client.subscribe`; it attaches on the first `get`. `failovers` counts the
    moves to another node, `gaps_filled` the gaps seen live and filled from HISTORY.
    """

    def __init__(self, client: Client, topic: str, from_offset: int | None) -> None:
        self.client = client
        self.topic = topic
        self._prefix = self._sub_prefix(topic)
        self._next: int | None = from_offset
        self._sock: AioSocket | None = None
        self._polling = False  # the PUB port refused this client's key: read HISTORY only
        self._node = client._current  # the node asked (SUB, HISTORY, TOPICS) and listened to
        self._buffer: deque[Message] = deque()
        self._behind = False  # HISTORY holds more than the buffer took: read on before live messages
        self._last_heard = 0.0
        self._seen_commit = 0
        self._closed = False
        self._wakeup: asyncio.Future[None] | None = None  # a wait on the socket, ended early by close
        self.failovers = 0
        self.gaps_filled = 0

    def _sub_prefix(self, topic: str) -> bytes:
        """Returns: what the SUB socket subscribes to. Raises: BadRequest: not a valid topic name."""
        return protocol.topic_prefix(topic)

    @property
    def next_offset(self) -> int | None:
        """The offset of the next message this subscription will deliver."""
        return self._next

    @property
    def next_offsets(self) -> dict[str, int]:
        """Per topic followed, the offset of its next message to deliver (empty before the start is known)."""
        return {} if self._next is None else {self.topic: self._next}

    @property
    def closed(self) -> bool:
        """Whether the subscription (or its client) was closed."""
        return self._ended()

    def _ended(self) -> bool:
        """Returns: whether the subscription (or its client) was closed (a call: it may change across an await)."""
        return self._closed or self.client.closed

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
        sock.view.setsockopt(zmq.SUBSCRIBE, self._prefix)
        sock.view.setsockopt(zmq.SUBSCRIBE, protocol.HEARTBEAT_PREFIX)
        self._sock = sock
        self._last_heard = time.monotonic()
        await self._start(reply)
        await self._catch_up(deadline)

    async def _start(self, reply: dict[str, Any]) -> None:
        """Take the starting offset from the SUB reply when the subscription was made without one."""
        if self._next is None:
            self._next = int(reply["next_offset"])

    def _detach(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _move(self) -> None:
        """Listen to the next node of the client's addresses from now on."""
        addresses = self.client.addresses
        position = addresses.index(self._node) if self._node in addresses else -1
        self._node = addresses[(position + 1) % len(addresses)]

    async def _catch_up(self, deadline: float) -> None:
        """Read from HISTORY until nothing more is committed at the node, or until `MAX_BUFFERED`
        messages wait for the application (then `_behind` says to read on later)."""
        assert self._next is not None
        self._behind = True
        while time.monotonic() < deadline and len(self._buffer) < MAX_BUFFERED:
            self._next, history = await self._read_page(self.topic, self._next)
            self._seen_commit = max(self._seen_commit, history.commit_index)
            if history.next_offset >= history.end_offset:
                self._behind = False
                return

    async def _read_page(self, topic: str, start: int) -> tuple[int, History]:
        """Read one HISTORY page of `topic` from `start` into the buffer.

        Returns: the offset after the last message taken (`start` when none), and the page.
        """
        reply = await self._ask("HISTORY", topic=topic, from_offset=start, limit=protocol.HISTORY_MAX_LIMIT)
        history = self.client._history_from(reply)
        if history.first_offset > start:
            log.warning("subscription %s: offsets %d..%d of %s were removed by retention before delivery",
                        self.topic, start, history.first_offset - 1, topic)
        fresh = [m for m in history.messages if m.offset >= start]
        self._buffer.extend(fresh)
        return (fresh[-1].offset + 1 if fresh else start), history

    # ---------------------------------------------------------------- reading

    async def get(self, timeout: float | None = None) -> Message | None:
        """Returns: the next message, or None when none arrives within `timeout` seconds (default: the
        client's total timeout) or the subscription is closed.

        Raises: a WireError the cluster answered (FORBIDDEN, BAD_REQUEST): trying again cannot help.
        """
        deadline = time.monotonic() + (self.client.timeouts.total_s if timeout is None else timeout)
        while True:
            if self._buffer:
                message = self._buffer.popleft()
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
                self.failovers += 1
                self._detach()
                self._move()
                await asyncio.sleep(max(0.0, min(RETRY_PAUSE_S, deadline - time.monotonic())))

    async def _step(self, now: float, deadline: float) -> None:
        """Do the next thing that may bring a message: read HISTORY, attach, or wait on the socket."""
        if self._polling:
            await self._poll_history(deadline)
        elif self._behind and self._sock is not None:
            await self._catch_up(deadline)
        elif self._sock is not None and now - self._last_heard > HEARTBEAT_SILENCE_S and self._waiting():
            # Frames wait in the socket: the node spoke while this task was not running (a slow or
            # starved subscriber). Judge the node by what it sent, not by our wake-ups.
            await self._drain(deadline)
        elif self._sock is None or now - self._last_heard > HEARTBEAT_SILENCE_S:
            if self._sock is not None:
                if self._key_refused():
                    return
                self.failovers += 1
                log.info("subscription %s: %s went silent, moving to another node", self.topic, self._node)
                self._detach()
                self._move()
            await self._attach(deadline)
        elif await self._wait(min(deadline, self._last_heard + HEARTBEAT_SILENCE_S) - now):
            await self._drain(deadline)

    def _waiting(self) -> bool:
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
        self._polling = True
        return True

    async def _poll_history(self, deadline: float) -> None:
        """Read what HISTORY has beyond the last offset delivered; wait a little when nothing is new."""
        before = len(self._buffer)
        await self._catch_up(deadline)
        if len(self._buffer) == before:
            await asyncio.sleep(max(0.0, min(HISTORY_POLL_S, deadline - time.monotonic())))

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
            self._last_heard = time.monotonic()
            try:
                item = msgpack_unpack(body)
            except ValueError:
                continue
            if prefix == protocol.HEARTBEAT_PREFIX:
                commit = int(item.get("commit_index", 0))
                if commit > self._seen_commit:
                    await self._catch_up(deadline)  # the tail may have been dropped: ask HISTORY
                    self._seen_commit = max(self._seen_commit, commit)
            else:
                await self._on_frame(prefix, item, deadline)

    async def _on_frame(self, prefix: bytes, item: dict[str, Any], deadline: float) -> None:
        """Take one fan-out message (any frame but a heartbeat) if it is of this subscription's topic."""
        if prefix != self._prefix:
            return
        assert self._next is not None
        offset = int(item["offset"])
        self._seen_commit = max(self._seen_commit, int(item.get("index", 0)))
        if offset < self._next:
            return  # already delivered (from HISTORY, or a duplicate after failover)
        if offset > self._next:
            self.gaps_filled += 1
            await self._catch_up(deadline)  # a gap: PUB dropped something; HISTORY has it
            if offset != self._next:
                return  # delivered from HISTORY already, or still ahead of what the buffer took
        self._buffer.append(Message.from_wire(self.topic, item))
        self._next = offset + 1

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

    async def _start(self, reply: dict[str, Any]) -> None:
        """On the first attach, take each matching topic's start from TOPICS: its end, or `from_offset`."""
        if not self._started:
            for name, end in (await self._matching()).items():
                self._offsets[name] = end if self._from is None else self._from
            self._started = True

    async def _matching(self) -> dict[str, int]:
        """Returns: the topics TOPICS lists at the node that this pattern follows, with their end offsets."""
        ends = (await self._ask("TOPICS", pattern=self.pattern.text))["topics"]
        return {name: end for name, end in ends.items() if self.pattern.matches(name) and not topics.is_pattern(name)}

    async def _catch_up(self, deadline: float) -> None:
        """Read TOPICS, then from HISTORY every matching topic whose end is past its next offset, until each
        is read to its end or `MAX_BUFFERED` messages wait (then `_behind` says to read on later)."""
        self._behind = True
        if time.monotonic() >= deadline:
            return
        for name, end in (await self._matching()).items():
            if self._offsets.setdefault(name, 0) < end and not await self._fill(name, deadline):
                return
        self._behind = False

    async def _fill(self, topic: str, deadline: float) -> bool:
        """Read `topic` from HISTORY from its next offset to its end. Returns: whether the end was reached."""
        while time.monotonic() < deadline and len(self._buffer) < MAX_BUFFERED:
            self._offsets[topic], history = await self._read_page(topic, self._offsets[topic])
            self._seen_commit = max(self._seen_commit, history.commit_index)
            if history.next_offset >= history.end_offset:
                return True
        return False

    async def _on_frame(self, prefix: bytes, item: dict[str, Any], deadline: float) -> None:
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
            if not await self._fill(topic, deadline):
                self._behind = True
            if offset != self._offsets[topic]:
                return  # delivered from HISTORY already, or still ahead of what the buffer took
        self._buffer.append(Message.from_wire(topic, item))
        self._offsets[topic] = offset + 1
