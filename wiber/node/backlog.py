"""HISTORY replies a node has handed to libzmq that have not yet left it, per client connection.

A HISTORY request of a few bytes can be answered with up to `max_reply_bytes` (4 MiB). A client
that sends many and reads none keeps every reply in the node's memory: libzmq's queue toward a
connection is bounded in messages (SNDHWM), not bytes. So replies are sent zero-copy with a
tracker, which libzmq marks done once the bytes have gone to the kernel (or the connection is gone),
and a new HISTORY is refused `UNAVAILABLE` while its connection, or all connections together, hold
too many bytes not yet sent. A client that reads its replies never comes near either limit.
(pyzmq lets go of a zero-copy frame on its own garbage-collector thread, started at the first such
send: it only drops a reference there; the node's loop stays the one thread that does the work.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

#: A connection may hold this many replies' worth (times `max_reply_bytes`) not yet sent.
REPLIES_PER_CONNECTION = 4
#: All connections together may hold this many bytes of replies not yet sent (at least
#: `REPLIES_PER_CONNECTION` replies' worth, so one connection can always reach its own limit).
TOTAL_BYTES = 256 << 20
#: Replies not yet sent, per connection and in all: small replies are bounded in number, so that
#: checking which have gone stays cheap (a whole check visits at most `TOTAL_REPLIES`).
CONNECTION_REPLIES = 1024
TOTAL_REPLIES = 16_384


class Tracker(Protocol):
    """What `zmq.MessageTracker` offers that the backlog needs."""

    @property
    def done(self) -> bool: ...


@dataclass(slots=True)
class _Connection:
    pending: deque[tuple[Tracker, int]] = field(default_factory=deque)
    nbytes: int = 0


class ReplyBacklog:
    """Bytes of tracked replies not yet sent, per connection (its ZMQ routing id) and in total."""

    def __init__(self, max_reply_bytes: int) -> None:
        self.per_connection = REPLIES_PER_CONNECTION * max_reply_bytes
        self.total_limit = max(TOTAL_BYTES, self.per_connection)
        self._connections: dict[bytes, _Connection] = {}
        self.total = 0  # bytes of the replies counted
        self.count = 0  # replies counted
        self.refused = 0  # HISTORY requests answered UNAVAILABLE for a backlog (STATUS)
        self._pruned_in: object = None  # the turn of the last whole prune

    def add(self, connection: bytes, tracker: Tracker, nbytes: int) -> None:
        """Count a reply just handed to libzmq for `connection`."""
        entry = self._connections.setdefault(connection, _Connection())
        entry.pending.append((tracker, nbytes))
        entry.nbytes += nbytes
        self.total += nbytes
        self.count += 1

    def _prune(self, connection: bytes) -> None:
        """Forget the replies of `connection` that libzmq has finished with. One connection's replies
        leave in the order they were sent, so only the front is looked at: the cost is one check
        per reply forgotten, plus one."""
        entry = self._connections.get(connection)
        if entry is None:
            return
        pending = entry.pending
        while pending and pending[0][0].done:
            _, nbytes = pending.popleft()
            entry.nbytes -= nbytes
            self.total -= nbytes
            self.count -= 1
        if not pending:
            del self._connections[connection]

    def prune(self) -> None:
        """Forget every reply libzmq has finished with (one check per connection, plus one per reply forgotten)."""
        for connection in list(self._connections):
            self._prune(connection)

    def refusal(self, connection: bytes, turn: object = None) -> str | None:
        """Returns: why a new HISTORY from `connection` must wait, or None when it may be answered.

        Only this connection's replies are checked, unless the totals are at their limits: then all
        connections are, once per `turn` (the caller's loop turn), before refusing: what others have
        read since must not count against this one, and a burst of requests must not each pay it."""
        if not self._connections:
            return None
        self._prune(connection)
        entry = self._connections.get(connection)
        if entry is not None and (entry.nbytes >= self.per_connection or len(entry.pending) >= CONNECTION_REPLIES):
            self.refused += 1
            return (f"this connection has {len(entry.pending)} HISTORY replies ({entry.nbytes / 2**20:.1f} MiB) "
                    f"it has not read yet (limit {CONNECTION_REPLIES} or {self.per_connection / 2**20:.0f} MiB): "
                    f"read them, then ask again")
        if self.total >= self.total_limit or self.count >= TOTAL_REPLIES:
            if turn is None or turn != self._pruned_in:
                self._pruned_in = turn
                self.prune()
            if self.total >= self.total_limit or self.count >= TOTAL_REPLIES:
                self.refused += 1
                return (f"the node holds {self.count} HISTORY replies ({self.total / 2**20:.1f} MiB) its clients "
                        f"have not read yet (limit {TOTAL_REPLIES} or {self.total_limit / 2**20:.0f} MiB); "
                        f"retry shortly")
        return None

    def status(self) -> dict[str, int]:
        """Returns: STATUS's view: bytes held and HISTORY requests refused for it."""
        self.prune()
        return {"unsent_reply_bytes": self.total, "history_refused": self.refused}
