"""What the client library hands out and takes: timeouts, acknowledgements, stored messages, addresses."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the client waits: per try (one address) and in all (every retry included)."""

    per_try_s: float = 1.0
    total_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Ack:
    """A stored publish: where it is (topic, offset, log index) and its stamps.

    For a batch, `offset` and `lamport` are the first message's; the batch holds `count` messages.
    `duplicate` says the node answered a retry from its session (the message was stored once).
    """

    topic: str
    offset: int
    index: int
    lamport: int
    ts: float
    duplicate: bool
    count: int = 1

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Ack:
        """Returns: the Ack a PUB or PUB_BATCH `ok` reply stands for (docs/protocol.md)."""
        return cls(reply["topic"], reply["offset"], reply["index"], reply["lamport"], reply["ts"],
                   bool(reply["duplicate"]), int(reply.get("count", 1)))


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message, as HISTORY and subscriptions deliver it.

    `late` is True for a message that reached a leader with a reorder window after its slot had
    passed: stored at once, out of `ts` order (docs/design.md section 5).
    """

    topic: str
    offset: int
    data: bytes
    lamport: int
    ts: float
    index: int
    late: bool = False

    @classmethod
    def from_wire(cls, topic: str, item: dict[str, Any]) -> Message:
        """Returns: the Message of one item of a HISTORY page or a fan-out frame of `topic`."""
        return cls(topic, int(item["offset"]), bytes(item["data"]), int(item["lamport"]), float(item["ts"]),
                   int(item["index"]), item.get("late") is True)


@dataclass(frozen=True, slots=True)
class History:
    """A HISTORY answer: messages in offset order and where the topic stands."""

    topic: str
    messages: list[Message]
    next_offset: int
    first_offset: int
    end_offset: int
    commit_index: int


def normalize_address(address: str) -> str:
    """Returns: a zmq endpoint for `host:port` or `tcp://host:port`."""
    address = address.strip()
    if "://" in address:
        return address
    return f"tcp://{address}"



def pause(deadline: float, seconds: float) -> None:
    """Back off briefly before another try (bounded by the deadline): an election is under way."""
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))
