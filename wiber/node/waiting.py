"""Clients waiting on the leader: writes until their entry is applied, reads until their ReadIndex is.

Pure bookkeeping (no sockets, no clock: times are passed in), so the node's loop stays short and
these rules are tested on their own.

Writes: the leader proposes one entry per loop turn carrying every PUB of that turn, and parks the
turn's clients under the entry's (index, term). When index `i` is applied, the clients parked under
`i` are answered from the broker's results only if the applied entry has the term they were
proposed in; otherwise another leader's entry took that index and their outcome is unknown
(UNAVAILABLE: a retry with the same client_id/seq is safe). Entries are proposed in index order
with deadlines that only grow, so expiry looks at the oldest first and stops at the first live one.

Reads (thesis section 6.4): linearizable HISTORY requests of one turn share one ReadIndex round;
when the core answers with `ReadState(index, ctx)` they may be served once `applied >= index`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from wiber.broker import PubOp

T = TypeVar("T")


@dataclass(slots=True)
class Waiter(Generic[T]):
    """One client request waiting for an answer: where to send it, and until when to wait."""

    envelope: list[bytes]
    req_id: Any
    deadline: float
    request: T
    op: str = ""  # the wire op, for wiber_requests_total{op,result}


class PendingWrites(Generic[T]):
    """Clients waiting for the entry that carries their writes, by log index, oldest first."""

    def __init__(self) -> None:
        # index -> (term, waiters, the earliest deadline among them)
        self._by_index: OrderedDict[int, tuple[int, list[Waiter[T]], float]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(waiters) for _, waiters, _ in self._by_index.values())

    def add(self, index: int, term: int, waiters: list[Waiter[T]]) -> None:
        """Park `waiters` under the entry proposed at (index, term)."""
        self._by_index[index] = (term, waiters, min(w.deadline for w in waiters))

    def take(self, index: int, term: int) -> tuple[list[Waiter[T]], bool]:
        """Returns: the waiters parked under `index` (removed) and whether the applied entry is theirs."""
        parked = self._by_index.pop(index, None)
        if parked is None:
            return [], False
        parked_term, waiters, _ = parked
        return waiters, parked_term == term

    def expire(self, now: float) -> list[Waiter[T]]:
        """Returns: the waiters whose deadline has passed (removed), oldest entries first.

        Called every loop turn: with nothing due it looks at one number, the oldest entry's earliest
        deadline (entries are parked in index order, a turn's deadlines only grow).
        """
        out: list[Waiter[T]] = []
        while self._by_index:
            index, (term, waiters, earliest) = next(iter(self._by_index.items()))
            if earliest > now:
                break
            out.extend(w for w in waiters if w.deadline <= now)
            live = [w for w in waiters if w.deadline > now]
            if live:
                self._by_index[index] = (term, live, min(w.deadline for w in live))
                break
            del self._by_index[index]
        return out

    def drain(self) -> list[Waiter[T]]:
        """Returns: every waiter (removed): leadership was lost, their outcome is unknown."""
        out = [w for _, waiters, _ in self._by_index.values() for w in waiters]
        self._by_index.clear()
        return out


class PendingReads(Generic[T]):
    """Linearizable reads: waiting for their ReadIndex round, then for that index to be applied."""

    def __init__(self) -> None:
        self._rounds: dict[bytes, list[Waiter[T]]] = {}
        self._ready: list[tuple[int, list[Waiter[T]]]] = []

    def __len__(self) -> int:
        return sum(len(w) for w in self._rounds.values()) + sum(len(w) for _, w in self._ready)

    def start(self, ctx: bytes, waiters: list[Waiter[T]]) -> None:
        """Park the reads of one ReadIndex round under its context."""
        self._rounds[ctx] = waiters

    def confirm(self, ctx: bytes, index: int) -> None:
        """The core confirmed round `ctx` at read index `index` (unknown contexts are ignored)."""
        waiters = self._rounds.pop(ctx, None)
        if waiters:
            self._ready.append((index, waiters))

    def releasable(self, applied_index: int) -> list[Waiter[T]]:
        """Returns: the reads whose read index is applied (removed): they may be served now."""
        out: list[Waiter[T]] = []
        keep: list[tuple[int, list[Waiter[T]]]] = []
        for index, waiters in self._ready:
            if index <= applied_index:
                out.extend(waiters)
            else:
                keep.append((index, waiters))
        self._ready = keep
        return out

    def expire(self, now: float) -> list[Waiter[T]]:
        """Returns: reads past their deadline (removed)."""
        out: list[Waiter[T]] = []
        for ctx in list(self._rounds):
            waiters = self._rounds[ctx]
            out.extend(w for w in waiters if w.deadline <= now)
            live = [w for w in waiters if w.deadline > now]
            if live:
                self._rounds[ctx] = live
            else:
                del self._rounds[ctx]
        keep: list[tuple[int, list[Waiter[T]]]] = []
        for index, waiters in self._ready:
            out.extend(w for w in waiters if w.deadline <= now)
            live = [w for w in waiters if w.deadline > now]
            if live:
                keep.append((index, live))
        self._ready = keep
        return out

    def drain(self) -> list[Waiter[T]]:
        """Returns: every read (removed): leadership was lost before they could be served."""
        out = [w for waiters in self._rounds.values() for w in waiters]
        out.extend(w for _, waiters in self._ready for w in waiters)
        self._rounds.clear()
        self._ready.clear()
        return out


#: What a consumer op costs in an entry besides its refs (names, numbers, headers), for `by_entry_size`.
_CONSUMER_OP_BYTES = 600


def by_entry_size(waiters: list[Waiter[Any]], max_bytes: int) -> list[list[Waiter[Any]]]:
    """Returns: `waiters` in order, cut into groups whose messages hold at most `max_bytes` (a
    group of one may hold more: a single request is bounded by the protocol's batch limit). A consumer
    op counts by its refs (an ACK of 1,000 refs of 255-byte topics holds about 260 KB)."""
    groups: list[list[Waiter[Any]]] = [[]]
    size = 0
    for waiter in waiters:
        op = waiter.request
        if type(op) is PubOp:
            messages = op.messages
            cost = len(messages[0]) if len(messages) == 1 else sum(map(len, messages))
        else:
            cost = _CONSUMER_OP_BYTES + sum(len(ref[0]) + 10 for ref in getattr(op, "refs", ()))
        if size + cost > max_bytes and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(waiter)
        size += cost
    return groups
