"""Commit notices held back for a millisecond, so they usually ride on the next append instead.

Sent the moment a write commits, the leader's empty appends (commit notices, and the probes for a
lost tail) woke both followers (and their answers the leader) just as the publisher's answer went
out, on two shared cores; held, they usually ride on the next append to the peer instead (which
drops them), or go out a millisecond later, in order. Heartbeats carry a round (ctx) and are never
held. Delaying or dropping them is safe: Raft tolerates lost messages, and any later append to the
peer carries the commit index and is answered as a probe would be.
"""

from __future__ import annotations

from wiber.raft.messages import AppendEntries, Message

#: How long a commit notice may wait for an append to ride on.
COMMIT_NOTICE_DELAY_S = 0.001


class CommitNotices:
    """The empty appends held per peer, and when they must go at the latest (`due`)."""

    def __init__(self) -> None:
        self.held: dict[str, list[Message]] = {}
        self.due: float | None = None

    def hold(self, messages: list[Message], now: float) -> list[Message]:
        """Hold back the empty appends without a heartbeat round among `messages`.

        Returns: the messages to send now."""
        send: list[Message] = []
        for msg in messages:
            if isinstance(msg, AppendEntries) and not msg.entries and not msg.ctx:
                self.held.setdefault(msg.to, []).append(msg)
            else:
                send.append(msg)
        if self.held and self.due is None:
            self.due = now + COMMIT_NOTICE_DELAY_S
        return send

    def drop_for(self, messages: list[Message]) -> None:
        """An append with entries about to go to a peer carries the commit index and is refused if
        a tail was lost, as a probe would be: that peer's held empty appends are moot. (A heartbeat
        is anchored at the peer's match index, never refused, so it does not replace a probe.)"""
        for msg in messages:
            if isinstance(msg, AppendEntries) and msg.entries:
                self.held.pop(msg.to, None)

    def take(self) -> list[Message]:
        """Returns: every held message, in order per peer; none is held afterwards."""
        out = [msg for held in self.held.values() for msg in held]
        self.clear()
        return out

    def clear(self) -> None:
        """Forget what is held (a deposed leader's notices are stale)."""
        self.held.clear()
        self.due = None
