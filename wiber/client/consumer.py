"""`Consumer`: one member of a durable consumer group (docs/design.md section 11).

A group lives in the cluster's replicated state: its pattern, per topic how far it has delivered, and
the deliveries its members hold. A member pulls with `Consumer.fetch` and answers each message with
`ConsumedMessage.ack` (done for good) or `nak` (deliver it again, to any member); one neither acked nor
nak'ed within the group's ``ack_wait_ms`` is delivered again, with a higher ``delivery`` count. So a
group delivers every message at least once, even when members crash; see `ConsumedMessage.publish_key`
for consuming exactly once into another topic.

A FETCH whose reply is lost (a timeout, a leader change) is retried by the client, and what the lost
reply held is delivered again after ``ack_wait_ms``: deliveries are never lost, only delayed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wiber import protocol
from wiber.client.values import Message
from wiber.errors import UnknownGroup

if TYPE_CHECKING:
    from wiber.client.connection import Client

__all__ = ["ConsumedMessage", "Consumer", "Delivered", "default_member", "fetch_wait_ms", "group_publish_key",
           "ref_batches"]

#: Longest a FETCH waits on the node for messages, as a share of the client's per-try timeout: the
#: answer must come back within that timeout, or the client would take the node for dead.
WAIT_SHARE = 0.5
#: How long a FETCH answered NO_GROUP is asked again before the group is taken for deleted (a new
#: leader answers NO_GROUP for a group whose creation it has committed but not yet applied).
UNKNOWN_GROUP_GRACE_S = 1.0
#: Pause between those asks.
UNKNOWN_GROUP_PAUSE_S = 0.05
#: Messages one FETCH of an iteration asks for: few, so a slow loop does not hold many past ack_wait_ms.
ITERATION_BATCH = 10


def default_member() -> str:
    """Returns: a member name unique to this process and consumer: ``host-pid-random``."""
    host = socket.gethostname().replace("*", "_").replace(">", "_").replace(".", "_")[:64] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def group_publish_key(group: str, topic: str, offset: int) -> tuple[str, int]:
    """Returns: the ``(client_id, seq)`` that only the message at `offset` of `topic` has in `group`
    (`ConsumedMessage.publish_key`, sync and asyncio alike: members of one group publish under one key)."""
    digest = hashlib.sha256(f"{group}\0{topic}".encode()).hexdigest()[:40]
    return f"group-{digest}", offset + 1


def fetch_wait_ms(remaining_s: float, per_try_s: float) -> int:
    """Returns: how long a FETCH may wait on the node: what is left of the caller's timeout, at most
    `WAIT_SHARE` of the per-try timeout (the answer must come back within it)."""
    return int(max_zero(min(remaining_s, per_try_s * WAIT_SHARE)) * 1000)


def ref_batches(messages: Iterable[Delivered]) -> Iterator[list[list[Any]]]:
    """Yields: the ``[topic, offset]`` refs of `messages` for ACK or NAK, one list per request (at most
    `protocol.ACK_REFS_MAX` each)."""
    refs = [[message.topic, message.offset] for message in messages]
    for start in range(0, len(refs), protocol.ACK_REFS_MAX):
        yield refs[start:start + protocol.ACK_REFS_MAX]


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a group delivered: the stored message and its delivery count (the sync and asyncio
    `ConsumedMessage` add how to answer it)."""

    topic: str
    offset: int
    data: bytes
    lamport: int
    ts: float
    index: int
    delivery: int
    """1 on the first delivery, +1 on each redelivery (after ``ack_wait_ms`` or a nak)."""
    late: bool = False

    @property
    def message(self) -> Message:
        """Returns: the stored message, as HISTORY and subscriptions give it."""
        return Message(self.topic, self.offset, self.data, self.lamport, self.ts, self.index, self.late)


@dataclass(frozen=True, slots=True)
class ConsumedMessage(Delivered):
    """A message a group delivered to this member: the stored message, its delivery count, and how to
    answer it (`ack`, `nak`)."""

    consumer: Consumer | None = field(default=None, repr=False, compare=False)

    @property
    def publish_key(self) -> tuple[str, int]:
        """Returns: a ``(client_id, seq)`` that only this message of this group has, for
        ``Client.publish(..., dedup=msg.publish_key)``.

        Publishing what a message produced under this key and acking the message only after that
        publish returned makes the group's output exactly once: a redelivery (the consumer died
        between publish and ack) publishes again under the same key, and the cluster answers with the
        first copy's Ack (``duplicate=True``) instead of storing a second. The cluster remembers a key's
        answer while it is among the newest ``session_window`` (default 4,096) seqs published under
        that client_id; a redelivery older than that gets SessionExpired and stores nothing, so keep
        what a group delivers within one ``ack_wait_ms`` well below that window (docs/consumers.md).
        """
        return group_publish_key(self._consumer().group, self.topic, self.offset)

    def ack(self) -> bool:
        """Tell the group this message is done: it is never delivered again.

        Returns: True, or False when the group no longer held it pending (acked already, or this
        member's hold ran out and another member acked it).
        """
        return self._consumer().ack([self]) == 1

    def nak(self) -> bool:
        """Give this message back: the group delivers it again at the next FETCH of any member.

        Returns: True, or False when this member no longer held it.
        """
        return self._consumer().nak([self]) == 1

    def _consumer(self) -> Consumer:
        """Returns: the consumer that received this message. Raises: ValueError: it was built without one."""
        if self.consumer is None:
            raise ValueError("this message was not received by a Consumer: it cannot be acked, nak'ed or keyed")
        return self.consumer


class Consumer:
    """One member of consumer group `group`, creating the group (pattern `pattern`) when it is new.

    The same group with other settings raises `GroupConflict`. Iterating yields messages as they
    come, forever; `fetch` pulls a batch. Not thread-safe (nor is its Client).

    Raises:
        GroupConflict, TooManyGroups: the group cannot be created as asked.
        BadRequest: a bad name, pattern or ack_wait_ms.
    """

    def __init__(self, client: Client, group: str, pattern: str, *, ack_wait_ms: int = protocol.ACK_WAIT_MS_DEFAULT,
                 from_start: bool = False, member: str | None = None) -> None:
        self.client = client
        self.group = group
        self.pattern = pattern
        self.ack_wait_ms = ack_wait_ms
        self.from_start = from_start
        self.member = member or default_member()
        self.created = self._create()

    def _create(self) -> bool:
        """Create the group (GROUP_CREATE is idempotent). Returns: whether this call created it."""
        reply = self.client.request("GROUP_CREATE", group=self.group, pattern=self.pattern,
                                    ack_wait_ms=self.ack_wait_ms, from_start=self.from_start)
        return bool(reply["created"])

    def fetch(self, max: int = 100, timeout: float = 1.0) -> list[ConsumedMessage]:
        """Pull up to `max` (1 to 1,000) messages, waiting up to `timeout` seconds for the first.

        Redeliveries that fell due come first, then first deliveries, each topic in offset order.

        Returns: the messages (empty when none came within `timeout`).

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
                reply = self.client.request("FETCH", f"fetch from group {self.group!r}", group=self.group,
                                            member=self.member, max=max, wait_ms=wait_ms)
            except UnknownGroup:
                # A new leader may not have applied the group's creation yet: ask again for a while. A
                # group that stays unknown was deleted: never recreated here, since a new group would
                # start at the end and skip what was published since the delete.
                now = time.monotonic()
                unknown_since = now if unknown_since is None else unknown_since
                if now - unknown_since >= UNKNOWN_GROUP_GRACE_S:
                    raise
                time.sleep(UNKNOWN_GROUP_PAUSE_S)
                continue
            messages = self._messages(reply["messages"])
            if messages or time.monotonic() >= deadline:
                return messages

    def _messages(self, items: list[dict[str, Any]]) -> list[ConsumedMessage]:
        """Returns: the reply's items as messages, in the reply's order; those sent without data (the
        reply was full) are read with a linearizable HISTORY (one that retention removed meanwhile is
        left out: the group drops it when it falls due)."""
        slots: list[ConsumedMessage | None] = []
        missing: dict[tuple[str, int], int] = {}
        for item in items:
            if "data" in item:
                slots.append(self._from_item(item))
            else:
                slots.append(None)
                missing[(item["topic"], int(item["offset"]))] = int(item["delivery"])
        if missing:
            found = self._read_missing(missing)
            slots = [found.get((item["topic"], int(item["offset"]))) if slot is None else slot
                     for item, slot in zip(items, slots)]
        out = [message for message in slots if message is not None]
        if out:
            self.client.observe_lamport(max(message.lamport for message in out))
        return out

    def _from_item(self, item: dict[str, Any]) -> ConsumedMessage:
        return ConsumedMessage(item["topic"], int(item["offset"]), bytes(item["data"]), int(item["lamport"]),
                               float(item["ts"]), int(item["index"]), int(item["delivery"]), item.get("late") is True,
                               self)

    def _read_missing(self, missing: dict[tuple[str, int], int]) -> dict[tuple[str, int], ConsumedMessage]:
        """Returns: the delivered messages whose data the FETCH reply had no room for, read by HISTORY."""
        found: dict[tuple[str, int], ConsumedMessage] = {}
        for (topic, offset), delivery in sorted(missing.items()):
            history = self.client.history(topic, from_offset=offset, limit=1, consistency="linearizable")
            for message in history.messages:
                if message.offset == offset:
                    found[(topic, offset)] = ConsumedMessage(topic, offset, message.data, message.lamport, message.ts,
                                                             message.index, delivery, message.late, self)
        return found

    def ack(self, messages: Iterable[ConsumedMessage]) -> int:
        """Ack several messages, in one request per 1,000. Returns: how many the group still held."""
        return self._answer("ACK", "acked", messages)

    def nak(self, messages: Iterable[ConsumedMessage]) -> int:
        """Nak several messages (they are delivered again). Returns: how many this member still held."""
        return self._answer("NAK", "nakked", messages)

    def _answer(self, op: str, counted: str, messages: Iterable[ConsumedMessage]) -> int:
        done = 0
        for refs in ref_batches(messages):
            reply = self.client.request(op, f"{op.lower()} to group {self.group!r}", group=self.group,
                                        member=self.member, refs=refs)
            done += int(reply[counted])
        return done

    def delete(self) -> bool:
        """Delete the whole group (for every member). Returns: whether it existed."""
        return bool(self.client.request("GROUP_DELETE", group=self.group)["deleted"])

    def info(self) -> dict[str, Any]:
        """Returns: the group as GROUPS lists it (pattern, ack_wait_ms, from_start, topics, pending, lag).

        Raises: UnknownGroup: the group does not exist (on the node that answered).
        """
        groups = self.client.groups()
        if self.group not in groups:
            raise UnknownGroup(f"no consumer group {self.group!r}")
        return groups[self.group]

    def __iter__(self) -> Iterator[ConsumedMessage]:
        """Yield messages as they come, forever (ack or nak each; unanswered ones come back after
        ``ack_wait_ms``)."""
        while True:
            yield from self.fetch(ITERATION_BATCH, 1.0)


def max_zero(seconds: float) -> float:
    """Returns: `seconds`, or 0 when negative."""
    return seconds if seconds > 0 else 0.0
