"""Async `Consumer`: one member of a durable consumer group (docs/design.md section 11), the coroutine
twin of `wiber.client.Consumer`.

``async for message in consumer`` yields messages as they come; ``await message.ack()`` (done for
good) or ``await message.nak()`` (deliver it again, to any member) answers each. One neither acked nor
nak'ed within the group's ``ack_wait_ms`` is delivered again, with a higher ``delivery``: a group
delivers every message at least once, even when members crash. A FETCH whose reply is lost is retried
by the client, and what the lost reply held is delivered again after ``ack_wait_ms``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wiber import protocol
from wiber.client.consumer import (
    ITERATION_BATCH,
    UNKNOWN_GROUP_GRACE_S,
    UNKNOWN_GROUP_PAUSE_S,
    Delivered,
    default_member,
    fetch_wait_ms,
    group_publish_key,
    max_zero,
    ref_batches,
)
from wiber.errors import ClientError, UnknownGroup

if TYPE_CHECKING:
    from wiber.aio.client import Client

__all__ = ["ConsumedMessage", "Consumer"]


@dataclass(frozen=True, slots=True)
class ConsumedMessage(Delivered):
    """A message a group delivered to this member: the stored message, its delivery count, and how to
    answer it (``await ack()``, ``await nak()``)."""

    consumer: Consumer | None = field(default=None, repr=False, compare=False)

    @property
    def publish_key(self) -> tuple[str, int]:
        """Returns: the ``(client_id, seq)`` that only this message of this group has, for
        ``Client.publish(..., dedup=msg.publish_key)``: the key `wiber.client.ConsumedMessage.publish_key`
        gives, so sync and async members of one group publish under the same keys (see there).

        Raises: ValueError: the message was built without a consumer.
        """
        return group_publish_key(self._consumer().group, self.topic, self.offset)

    async def ack(self) -> bool:
        """Tell the group this message is done: it is never delivered again.

        Returns: True, or False when the group no longer held it pending.
        """
        return await self._consumer().ack([self]) == 1

    async def nak(self) -> bool:
        """Give this message back: the group delivers it again at the next FETCH of any member.

        Returns: True, or False when this member no longer held it.
        """
        return await self._consumer().nak([self]) == 1

    def _consumer(self) -> Consumer:
        """Returns: the consumer that received this message. Raises: ValueError: it was built without one."""
        if self.consumer is None:
            raise ValueError("this message was not received by a Consumer: it cannot be acked, nak'ed or keyed")
        return self.consumer


class Consumer:
    """One member of consumer group `group` (pattern `pattern`), made by `wiber.aio.Client.consumer`,
    which creates the group when it is new. Iterating with ``async for`` yields messages as they come
    until the client closes; `fetch` pulls a batch.
    """

    def __init__(self, client: Client, group: str, pattern: str, *, ack_wait_ms: int = protocol.ACK_WAIT_MS_DEFAULT,
                 from_start: bool = False, member: str | None = None) -> None:
        self.client = client
        self.group = group
        self.pattern = pattern
        self.ack_wait_ms = ack_wait_ms
        self.from_start = from_start
        self.member = member or default_member()
        self.created = False
        """Whether `create` made the group (False: it existed)."""
        self._fetched: deque[ConsumedMessage] = deque()

    async def create(self) -> bool:
        """Create the group (GROUP_CREATE is idempotent). Returns: whether this call created it.

        Raises: GroupConflict: the group exists with other settings; TooManyGroups; BadRequest.
        """
        reply = await self.client.request("GROUP_CREATE", group=self.group, pattern=self.pattern,
                                          ack_wait_ms=self.ack_wait_ms, from_start=self.from_start)
        self.created = bool(reply["created"])
        return self.created

    async def fetch(self, max: int = 100, timeout: float = 1.0) -> list[ConsumedMessage]:
        """Pull up to `max` (1 to 1,000) messages, waiting up to `timeout` seconds for the first.

        Returns: the messages (empty when none came within `timeout`), due redeliveries first.

        Raises:
            PendingCapReached: the group holds as many unacked deliveries as it may: ack some first.
            UnknownGroup: the group was deleted (it is not created again: `Client.consumer` does that).
            ClientError: the cluster did not answer in time.
        """
        deadline = time.monotonic() + max_zero(timeout)
        unknown_since: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            wait_ms = fetch_wait_ms(remaining, self.client.timeouts.per_try_s)
            try:
                reply = await self.client.request("FETCH", group=self.group, member=self.member, max=max,
                                                  wait_ms=wait_ms)
            except UnknownGroup:
                # As the sync member: a new leader may not have applied the creation yet, so ask again
                # for a while; a group that stays unknown was deleted and is never recreated here (a
                # new group would start at the end and skip what was published since the delete).
                now = time.monotonic()
                unknown_since = now if unknown_since is None else unknown_since
                if now - unknown_since >= UNKNOWN_GROUP_GRACE_S:
                    raise
                await asyncio.sleep(UNKNOWN_GROUP_PAUSE_S)
                continue
            messages = await self._messages(reply["messages"])
            if messages or time.monotonic() >= deadline:
                return messages

    async def _messages(self, items: list[dict[str, Any]]) -> list[ConsumedMessage]:
        """Returns: the reply's items as messages, in the reply's order; those sent without data (the
        reply was full) are read with a linearizable HISTORY (one retention removed meanwhile is left out)."""
        out: list[ConsumedMessage] = []
        for item in items:
            topic, offset, delivery = item["topic"], int(item["offset"]), int(item["delivery"])
            if "data" in item:
                out.append(ConsumedMessage(topic, offset, bytes(item["data"]), int(item["lamport"]), float(item["ts"]),
                                           int(item["index"]), delivery, item.get("late") is True, self))
                continue
            history = await self.client.history(topic, from_offset=offset, limit=1, consistency="linearizable")
            out.extend(ConsumedMessage(topic, offset, m.data, m.lamport, m.ts, m.index, delivery, m.late, self)
                       for m in history.messages if m.offset == offset)
        if out:
            self.client.observe_lamport(max(message.lamport for message in out))
        return out

    async def ack(self, messages: Iterable[ConsumedMessage]) -> int:
        """Ack several messages, in one request per 1,000. Returns: how many the group still held."""
        return await self._answer("ACK", "acked", messages)

    async def nak(self, messages: Iterable[ConsumedMessage]) -> int:
        """Nak several messages (they are delivered again). Returns: how many this member still held."""
        return await self._answer("NAK", "nakked", messages)

    async def _answer(self, op: str, counted: str, messages: Iterable[ConsumedMessage]) -> int:
        done = 0
        for refs in ref_batches(messages):
            reply = await self.client.request(op, group=self.group, member=self.member, refs=refs)
            done += int(reply[counted])
        return done

    async def delete(self) -> bool:
        """Delete the whole group (for every member). Returns: whether it existed."""
        return bool((await self.client.request("GROUP_DELETE", group=self.group))["deleted"])

    async def info(self) -> dict[str, Any]:
        """Returns: the group as GROUPS lists it (pattern, ack_wait_ms, from_start, topics, pending, lag).

        Raises: UnknownGroup: the group does not exist (on the node that answered).
        """
        groups = await self.client.groups()
        if self.group not in groups:
            raise UnknownGroup(f"no consumer group {self.group!r}")
        return groups[self.group]

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> ConsumedMessage:
        """Returns: the next message, waiting as long as it takes (ack or nak each; unanswered ones come
        back after ``ack_wait_ms``). Raises: StopAsyncIteration once the client is closed."""
        while not self._fetched:
            if self.client.closed:
                raise StopAsyncIteration
            try:
                self._fetched.extend(await self.fetch(ITERATION_BATCH, 1.0))
            except ClientError:
                if self.client.closed:
                    raise StopAsyncIteration from None
                raise
        return self._fetched.popleft()
