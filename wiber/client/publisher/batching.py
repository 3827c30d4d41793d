"""The Publisher's batches: messages gathered per topic, and the requests handed to the I/O.

Kafka's producer gets its speed this way (``linger.ms``, ``batch.size``): messages of one topic are
gathered for at most `linger_s` or `batch_size` messages (or the bytes a PUB_BATCH may hold), then
go out as one request. `Batches` holds the batches being gathered (`gathering`, one per topic) and,
with an I/O thread, the queue of what was handed to it (`ready`): whole requests, in the order they
were made, with the `Flush` marks of `Publisher.flush` between them.

Threads. The publishing threads add to `gathering` under `lock` (`Publisher.publish` does that
inline: it is the per-message path) and append full batches to `ready`; the I/O thread takes the
batches whose linger is over, also under `lock`, and pops `ready`. A batch is handed over whole, so
the I/O thread does no work per message. Without an I/O thread, only the caller's thread touches
either (the lock is then not needed).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from wiber.client.publisher.future import PublishFuture

__all__ = ["Batches", "Flush", "Gathering", "ReadyItem", "Request"]


class Flush:
    """A `flush` in the I/O thread's queue: done once every request up to `point` is answered."""

    __slots__ = ("done", "point")

    def __init__(self) -> None:
        self.point: int | None = None  # the last seq taken when the queue reached it
        self.done = False


@dataclass(slots=True)
class Gathering:
    """Messages of one topic waiting to be sent."""

    messages: list[bytes] = field(default_factory=list)
    futures: list[PublishFuture] = field(default_factory=list)
    nbytes: int = 0
    since: float = 0.0


#: One PUB (one message) or PUB_BATCH: its topic, its messages and the futures they resolve. A plain
#: tuple: a pipelined publisher makes one per message, and it is the request `Wire` keeps in flight.
Request = tuple[str, list[bytes], list["PublishFuture"]]
#: What the I/O thread is handed: a request or a flush mark.
ReadyItem = Union[Request, Flush]


class Batches:
    """The batches being gathered per topic and the requests handed to the I/O (see the module docstring).

    `max_bytes` is the most message bytes one PUB_BATCH may hold.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.gathering: dict[str, Gathering] = {}
        self.ready: deque[ReadyItem] = deque()
        self.lock = threading.Lock()

    def start(self, topic: str, full: Gathering | None) -> Gathering:
        """Start `topic`'s next batch (under `lock`), handing over `full`, the one its next message
        would take past the bytes a batch may hold. Returns: the new batch."""
        if full is not None:
            self.ready.append((topic, full.messages, full.futures))
        batch = self.gathering[topic] = Gathering(since=time.monotonic())
        return batch

    def hand_over_lingered(self, linger_s: float) -> None:
        """Move the batches whose linger is over behind the requests handed over."""
        now = time.monotonic()
        with self.lock:
            gathering = self.gathering
            for topic in [t for t, b in gathering.items() if now - b.since >= linger_s]:
                batch = gathering.pop(topic)
                self.ready.append((topic, batch.messages, batch.futures))

    def hand_over_all(self, mark: Flush) -> None:
        """Move every batch behind the requests handed over (no linger in a flush), then `mark`."""
        with self.lock:
            gathering = self.gathering
            for topic in list(gathering):
                batch = gathering.pop(topic)
                self.ready.append((topic, batch.messages, batch.futures))
            self.ready.append(mark)

    def gather(self, topic: str, payload: bytes, future: PublishFuture, batch_size: int) -> list[Request]:
        """Without an I/O thread: add a message to its topic's batch. Returns: the requests to send now,
        in order (the batch it would take past the bytes a batch may hold, and the batch once full)."""
        out: list[Request] = []
        gathering = self.gathering
        batch = gathering.get(topic)
        if batch is not None and batch.messages and batch.nbytes + len(payload) > self.max_bytes:
            out.append(self.pop(topic))
            batch = None
        if batch is None:
            batch = gathering[topic] = Gathering(since=time.monotonic())
        batch.messages.append(payload)
        batch.futures.append(future)
        batch.nbytes += len(payload)
        if len(batch.messages) >= batch_size:
            out.append(self.pop(topic))
        return out

    def pop(self, topic: str) -> Request:
        """Returns: `topic`'s batch as a request, no longer gathering (without an I/O thread)."""
        batch = self.gathering.pop(topic)
        return topic, batch.messages, batch.futures

    def lingered(self, linger_s: float) -> list[str]:
        """Returns: the topics whose batch has waited `linger_s` (the single-threaded mode sends them)."""
        now = time.monotonic()
        return [t for t, b in self.gathering.items() if b.messages and now - b.since >= linger_s]

    def next_linger(self, linger_s: float) -> float | None:
        """Returns: when the first batch's linger is over (monotonic), or None with none gathering."""
        if not self.gathering:
            return None
        with self.lock:
            return min((b.since for b in self.gathering.values()), default=time.monotonic()) + linger_s

    def take_all(self) -> tuple[list[list[PublishFuture]], list[Flush]]:
        """Empty both: Returns: the futures of every message gathered or handed over, and the flush marks."""
        with self.lock:
            batches = list(self.gathering.values())
            self.gathering.clear()
        futures = [batch.futures for batch in batches]
        marks: list[Flush] = []
        while self.ready:
            item = self.ready.popleft()
            if isinstance(item, Flush):
                marks.append(item)
            else:
                futures.append(item[2])
        return futures, marks
