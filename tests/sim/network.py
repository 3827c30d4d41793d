"""A seeded simulated network for Raft cores (etcd `rafttest` network, raft-rs `harness/network.rs`).

Theory of operation
-------------------
Time is counted in ticks, the cores' unit. `send(msg)` decides, with the network's own seeded
`random.Random`, whether the message is dropped, how long it is delayed (``[min_delay, max_delay]``
ticks: messages on one link overtake each other whenever delays differ, which is how reordering
happens) and whether a second copy is delivered later. Messages wait in a heap ordered by
(due time, send order); `deliver_one()` pops the next due one.

Partitions are a set of blocked directed links. A link is checked when a message is sent and again
when it is delivered: cutting a link also loses what was in flight on it. Helpers build the
classic shapes: `isolate` one node (e.g. the leader from the rest), `partition` into groups,
`bridge` (two sides that one node still joins), `ring` (each node reaches only its two
neighbours: with 5 nodes every node still sees a majority, but no two majorities agree), and
`one_way` links. `heal()` removes every cut and every loss.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable

from wiber.raft import Message, decode_message, encode_message

__all__ = ["SimNetwork"]


class SimNetwork:
    """Seeded, lossy, delaying, duplicating, partitionable message delivery between node ids."""

    def __init__(self, ids: Iterable[str], rng: random.Random, *, wire: bool = False) -> None:
        """`wire=True` round-trips every message through the msgpack codec (slower, more honest)."""
        self.ids = tuple(ids)
        self.rng = rng
        self.now = 0
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.min_delay = 0
        self.max_delay = 2
        self.wire = wire
        self._blocked: set[tuple[str, str]] = set()
        self._queue: list[tuple[int, int, Message | bytes]] = []
        self._seq = 0
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0
        self.delivered = 0
        #: Messages sent, by message class name.
        self.kinds: Counter[str] = Counter()
        #: Called with (message, dropped) for every send, for transcripts.
        self.on_send: Callable[[Message, bool], None] | None = None

    # -- traffic --------------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Put `msg` on the wire (or lose it)."""
        self.sent += 1
        self.kinds[type(msg).__name__] += 1
        rng = self.rng
        lost = (msg.frm, msg.to) in self._blocked or (self.drop_rate and rng.random() < self.drop_rate)
        if self.on_send is not None:
            self.on_send(msg, bool(lost))
        if lost:
            self.dropped += 1
            return
        payload: Message | bytes = encode_message(msg) if self.wire else msg
        lo, hi = self.min_delay, self.max_delay
        self._seq += 1
        due = self.now + (lo if lo == hi else rng.randint(lo, hi))
        heapq.heappush(self._queue, (due, self._seq, payload))
        if self.dup_rate and rng.random() < self.dup_rate:
            self.duplicated += 1
            self._seq += 1
            heapq.heappush(self._queue, (self.now + rng.randint(lo, hi + 2), self._seq, payload))

    def has_due(self) -> bool:
        """Returns: whether a message is due at the current time."""
        q = self._queue
        return bool(q) and q[0][0] <= self.now

    def next_due(self) -> int | None:
        """Returns: the due time of the next message, or None when nothing is in flight."""
        return self._queue[0][0] if self._queue else None

    def deliver_one(self, *, ignore_time: bool = False) -> Message | None:
        """Returns: the next due message (or the next at all with `ignore_time`), None if none.

        Messages whose link was cut while they were in flight are lost here.
        """
        q = self._queue
        while q and (ignore_time or q[0][0] <= self.now):
            _, _, payload = heapq.heappop(q)
            msg = decode_message(payload) if isinstance(payload, bytes) else payload
            if (msg.frm, msg.to) in self._blocked:
                self.dropped += 1
                continue
            self.delivered += 1
            return msg
        return None

    def stabilize(self, deliver: Callable[[Message], None], limit: int = 100_000) -> int:
        """Hand every message in flight to `deliver`, due or not, until none is left (the
        receivers' answers included): the network's way of saying "let everything settle".

        Returns:
            how many were delivered.
        Raises:
            AssertionError: more than `limit` messages: the cluster never goes quiet.
        """
        for count in range(limit):
            msg = self.deliver_one(ignore_time=True)
            if msg is None:
                return count
            deliver(msg)
        raise AssertionError(f"stabilize: still messages in flight after {limit}")

    def in_flight(self) -> int:
        """Returns: how many messages wait for delivery."""
        return len(self._queue)

    def clear(self) -> None:
        """Lose everything in flight."""
        self.dropped += len(self._queue)
        self._queue.clear()

    # -- faults ---------------------------------------------------------------------------------

    def heal(self) -> None:
        """Remove every cut link and every loss or duplication (delays stay)."""
        self._blocked.clear()
        self.drop_rate = 0.0
        self.dup_rate = 0.0

    def clear_cuts(self) -> None:
        """Remove every cut link (losses stay)."""
        self._blocked.clear()

    def set_loss(self, drop_rate: float, dup_rate: float = 0.0) -> None:
        """Drop each message with `drop_rate`, deliver a second copy with `dup_rate`."""
        self.drop_rate = drop_rate
        self.dup_rate = dup_rate

    def set_delay(self, min_delay: int, max_delay: int) -> None:
        """Delay each message by a uniform ``[min_delay, max_delay]`` ticks."""
        self.min_delay = min_delay
        self.max_delay = max_delay

    def cut(self, frm: str, to: str) -> None:
        """Block the directed link `frm` -> `to`."""
        self._blocked.add((frm, to))

    def one_way(self, frm: str, to: str) -> None:
        """Block `frm` -> `to` only: `to` still reaches `frm`."""
        self.cut(frm, to)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between different groups (nodes in no group are cut from everyone)."""
        group_of: dict[str, int] = {}
        for k, group in enumerate(groups):
            for node in group:
                group_of[node] = k
        for a in self.ids:
            for b in self.ids:
                if a != b and (a not in group_of or b not in group_of or group_of[a] != group_of[b]):
                    self._blocked.add((a, b))

    def isolate(self, node: str) -> None:
        """Cut `node` from every other node, both ways (e.g. the leader from the rest)."""
        for other in self.ids:
            if other != node:
                self._blocked.add((node, other))
                self._blocked.add((other, node))

    def bridge(self, left: Iterable[str], right: Iterable[str], middle: str) -> None:
        """Cut `left` from `right`; `middle` still talks to both sides."""
        left, right = list(left), list(right)
        for a in left:
            for b in right:
                self._blocked.add((a, b))
                self._blocked.add((b, a))

    def ring(self) -> None:
        """Each node reaches only its two neighbours in id order (5 nodes: 'majorities ring')."""
        n = len(self.ids)
        for i, a in enumerate(self.ids):
            for j, b in enumerate(self.ids):
                if i != j and (i - j) % n not in (1, n - 1):
                    self._blocked.add((a, b))

    def blocked(self, frm: str, to: str) -> bool:
        """Returns: whether the link `frm` -> `to` is cut."""
        return (frm, to) in self._blocked

    def describe_faults(self) -> str:
        """Returns: a short description of the cut links and loss rates, for transcripts."""
        cuts = " ".join(f"{a}-x>{b}" for a, b in sorted(self._blocked)) or "none"
        return (f"cuts={cuts} drop={self.drop_rate:.2f} dup={self.dup_rate:.2f} "
                f"delay={self.min_delay}..{self.max_delay}")
