"""The fan-out of applied messages on the PUB socket, skipped for topics nobody subscribed to.

The XPUB socket tells the node each prefix's first subscription and last unsubscription, so the
set of subscribed prefixes is exact; whether a topic has a subscriber is cached per topic until
the set changes. Encoding a message for the PUB socket costs more than storing it, so a topic
without subscribers costs nothing here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from wiber import protocol
from wiber.broker import record_to_wire


class FanOut:
    """Publishes the records of applied PUBs to the subscribers that asked for their topic."""

    def __init__(self, publish: Callable[[Sequence[bytes]], None], pack: Callable[[Any], bytes]) -> None:
        """`publish` sends one `[topic frame, body]` (the transport's); `pack` is the loop's reused packer."""
        self._publish = publish
        self._pack = pack
        self._prefixes: set[bytes] = set()
        self._wanted: dict[str, bool] = {}

    def on_subscriptions(self, changes: list[tuple[bool, bytes]]) -> None:
        """Track which prefixes subscribers asked for (first subscribe / last unsubscribe)."""
        for subscribed, prefix in changes:
            if subscribed:
                self._prefixes.add(prefix)
            else:
                self._prefixes.discard(prefix)
        self._wanted.clear()

    def has_subscribers(self, topic: str) -> bool:
        """Whether any subscription prefix matches `topic`'s fan-out frame (cached per topic)."""
        wanted = self._wanted.get(topic)
        if wanted is None:
            key = topic.encode() + b"\0"
            wanted = any(key.startswith(prefix) for prefix in self._prefixes)
            self._wanted[topic] = wanted
        return wanted

    def publish(self, pub_results: Sequence[Any]) -> int:
        """Send the records of one entry's PUB results to their subscribers.

        Returns: how many messages the results stored (duplicates store none)."""
        stored = 0
        for result in pub_results:
            records = result.records
            stored += len(records)
            if records and self.has_subscribers(records[0][0]):
                for record in records:
                    small = len(record[2]) <= protocol.REUSED_PACKER_MAX_BYTES
                    packer = self._pack if small else protocol.pack
                    self._publish(protocol.fanout_frames(record[0], record_to_wire(record), packer))
        return stored
