"""Bounded reordering (docs/design.md section 5): the leader holds timestamped PUBs up to a window and
appends them in the order they were sent.

A PUB carrying the client's synced send time `ts` is held until ``min(ts, arrival) + window`` on the
leader's synced clock, then released in ``(ts, client_id, seq)`` order. So when every delay from
sender to leader stays within the window, the log follows the real order of sending. A PUB whose
`ts` is below one already released has missed its slot: it is released at once, marked late, and
counted — never dropped, never held. No PUB is held longer than the window past its arrival (a
client clock running ahead cannot park a message), so none waits past the window plus one loop
turn. Pure: times are passed in.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(order=True, slots=True)
class _Held(Generic[T]):
    key: tuple[float, str, int, int]
    release_at: float = field(compare=False)
    item: T = field(compare=False)


class ReorderBuffer(Generic[T]):
    """Holds items by send time and releases them in send order once their window has passed."""

    def __init__(self, window_s: float) -> None:
        if window_s < 0:
            raise ValueError("the reorder window cannot be negative")
        self.window_s = window_s
        self._by_send: list[_Held[T]] = []  # heap by (ts, client_id, seq, arrival)
        self._by_due: list[tuple[float, tuple[float, str, int, int]]] = []  # heap by release time
        self._released: set[tuple[float, str, int, int]] = set()
        self._last_released: tuple[float, str, int] = (float("-inf"), "", 0)
        """The largest (ts, client_id, seq) released: an item below it has missed its slot."""
        self._arrivals = itertools.count()
        self.late = 0

    def __len__(self) -> int:
        return len(self._by_send)

    def add(self, item: T, ts: float, client_id: str, seq: int, now: float) -> bool:
        """Hold `item` sent at `ts`. Returns: False when it missed its slot (release it now, as late)."""
        if (ts, client_id, seq) < self._last_released:  # the whole key: an equal ts may still be late
            self.late += 1
            return False
        key = (ts, client_id, seq, next(self._arrivals))
        release_at = min(ts, now) + self.window_s
        heapq.heappush(self._by_send, _Held(key, release_at, item))
        heapq.heappush(self._by_due, (release_at, key))
        return True

    def next_release(self) -> float | None:
        """Returns: the synced time at which something must be released, or None when nothing is held."""
        return self._by_due[0][0] if self._by_due else None

    def release(self, now: float) -> list[T]:
        """Returns: the items due by `now` and every item sent before them, in (ts, client_id, seq) order.

        An item never waits past its own release time; releasing it first releases everything sent
        earlier (which keeps send order and can only shorten their wait).
        """
        out: list[T] = []
        while self._by_due and self._by_due[0][0] <= now:
            _, due_key = heapq.heappop(self._by_due)
            if due_key in self._released:
                self._released.discard(due_key)
                continue
            while True:
                held = heapq.heappop(self._by_send)
                self._last_released = max(self._last_released, held.key[:3])
                out.append(held.item)
                if held.key == due_key:
                    break
                self._released.add(held.key)  # its own due entry is skipped when it comes up
        return out

    def drain(self) -> list[T]:
        """Returns: everything held, in send order (leadership lost or the node is stopping)."""
        out = [heapq.heappop(self._by_send).item for _ in range(len(self._by_send))]
        self._by_due.clear()
        self._released.clear()
        return out
