"""`Publisher`: the public API of the pipelined, auto-batching publisher, and the turn of I/O that
ties its parts together.

`publish` checks a message, gathers it into its topic's batch (`batching`) and hands full batches
to the I/O; a turn (`_turn`, on the I/O thread of `iothread`, or inside the caller's own calls with
``io_thread=False``) sends what was handed over while the window has room, reads replies, resends
and expires (`wire`), runs the callbacks of the futures resolved meanwhile (`future`) and marks the
flushes that are done. The rules and the threading are in the package docstring (`wiber.client.publisher`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import zmq

from wiber import protocol
from wiber.client.curve import CurveKeys, KeySource, client_options, config_curve_keys, curve_keys
from wiber.client.inflight import MAX_WINDOW
from wiber.client.publisher.batching import Batches, Flush, Request
from wiber.client.publisher.future import Callback, PublishFuture
from wiber.client.publisher.iothread import IoThread
from wiber.client.publisher.wire import Wire
from wiber.client.values import Timeouts, normalize_address
from wiber.errors import ClientError

if TYPE_CHECKING:
    from wiber.config import Config

__all__ = ["DEFAULT_SESSION_WINDOW", "POLL_INTERVAL_S", "Publisher", "READY_BATCHES"]

log = logging.getLogger(__name__)

#: How often `publish` looks at the socket (replies, lingering batches) at most, without an I/O thread.
POLL_INTERVAL_S = 0.0005
#: The broker's default session_window: a publisher never has more requests than this in flight.
DEFAULT_SESSION_WINDOW = MAX_WINDOW
#: Full batches that may wait for the I/O thread before `publish` waits too. Few: a thread that gathers
#: without pause holds the GIL for the switch interval (5 ms) each time the I/O thread lets it go, at
#: every socket call; waiting while the I/O thread sends gives it the GIL. Measured (auto-batching,
#: window 100, one noisy run each): 1 196k msg/s, 2 223-233k, 4 175k, a window's worth (100) 199k.
READY_BATCHES = 2

_CLOSED_EARLY = "before this message was acknowledged; it may or may not be stored"


class Publisher:
    """Publish at high rate with exactly-once, in-order delivery per topic (see the package docstring).

    Args:
        addresses: client addresses of some or all nodes.
        window: requests in flight at most (each one PUB or PUB_BATCH).
        batch_size: messages per request at most; 1 sends plain PUBs.
        linger_s: how long a partial batch may wait for more messages.
        timeouts: per try (no answer: resend elsewhere) and in all (then the futures fail).
        client_key, server_keys: CURVE, as for `Client` (`Publisher.from_config` reads the nodes'
            keys from the config's keys_dir).
        io_thread: do the I/O on a background thread (the default), or only inside this
            publisher's own calls (see the package docstring).

    Raises:
        CurveError, KeyFileError: keys that do not fit, or a key file that cannot be used.
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        window: int = 1000,
        batch_size: int = 1000,
        linger_s: float = 0.002,
        max_message_bytes: int = 1048576,
        timeouts: Timeouts | None = None,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        client_key: KeySource | None = None,
        server_keys: Mapping[str, bytes] | None = None,
        io_thread: bool = True,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        self.addresses = [normalize_address(a) for a in addresses]
        if not self.addresses:
            raise ValueError("Publisher needs at least one node address")
        self.curve: CurveKeys | None = curve_keys(client_key, server_keys)
        if not 1 <= window <= DEFAULT_SESSION_WINDOW or not 1 <= batch_size <= protocol.MAX_BATCH_MESSAGES:
            # More requests in flight than the cluster's session_window could make a resend
            # SESSION_EXPIRED: the broker keeps only that many answers per client.
            raise ValueError(f"window must be 1..{DEFAULT_SESSION_WINDOW} (the cluster's session_window) "
                             f"and batch_size 1..{protocol.MAX_BATCH_MESSAGES}")
        self.window = window
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.limits = protocol.Limits(max_message_bytes=max_message_bytes)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._wire = Wire(self.addresses, timeouts or Timeouts(per_try_s=2.0, total_s=30.0), window, self.ctx,
                          self.curve)
        self._batches = Batches(self.limits.max_batch_bytes)
        self._valid_topics: set[str] = set()
        self._next_poll = 0.0
        self._callbacks_due: deque[PublishFuture] = deque()
        self._running_callbacks = False
        self._closed = False
        self._flushes: list[Flush] = []
        # Requests waiting for the I/O thread beside the window: a window of plain PUBs, or a few batches.
        self._ready_limit = window if batch_size == 1 else READY_BATCHES
        self._io: IoThread | None = None
        if io_thread:
            self._io = IoThread(f"wiber-publisher-{self.client_id[:8]}", self._turn, self._due, self._busy,
                                lambda: self._wire.sock, self._io_finished)
            self._io.start()

    @classmethod
    def from_config(cls, config: Config, client_key: KeySource | None = None, **options: Any) -> Publisher:
        """Returns: a Publisher on every node of `config`, refusing messages over its max_message_bytes,
        with CURVE when it has a security section (as `Client.from_config`); `options` as for __init__.

        Raises:
            CurveError: a security section and no client key, or a client key and no security section.
            KeyFileError: a key file is missing, unreadable or malformed.
        """
        options.setdefault("max_message_bytes", config.cluster.max_message_bytes)
        return cls([n.client_addr for n in config.nodes], **options,
                   **client_options(config_curve_keys(config, client_key)))

    # ---------------------------------------------------------------- state

    @property
    def timeouts(self) -> Timeouts:
        """Per try and in all; a new value applies to the requests made after it is set."""
        return self._wire.inflight.timeouts

    @timeouts.setter
    def timeouts(self, value: Timeouts) -> None:
        self._wire.inflight.timeouts = value

    @property
    def client_id(self) -> str:
        """The session new requests go out under (a new one after SESSION_EXPIRED)."""
        return self._wire.inflight.client_id

    @property
    def lamport(self) -> int:
        """The highest lamport of this publisher's acknowledged messages."""
        return self._wire.lamport

    @property
    def resends(self) -> int:
        """Requests sent again so far (after a refusal, a timeout or a failover)."""
        return self._wire.resends

    @property
    def failovers(self) -> int:
        """Times the connection was made again so far (to the leader named, the same or the next node)."""
        return self._wire.failovers

    @property
    def requests(self) -> int:
        """Requests (PUB or PUB_BATCH) made so far, each counted once however often it was sent."""
        return self._wire.inflight.last_seq

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered or given up on."""
        return len(self._wire.inflight)

    # ---------------------------------------------------------------- public

    def publish(self, topic: str, data: bytes | str, callback: Callback | None = None) -> PublishFuture:
        """Hand over one message. Returns: its future (resolved once a majority has it on disk).

        Raises:
            BadRequest, TooLarge: the topic or message is refused locally, before anything is sent.
            ClientError: the publisher is closed.
        """
        payload = data.encode() if isinstance(data, str) else data
        if type(topic) is not str or topic not in self._valid_topics or type(payload) is not bytes \
                or len(payload) > self.limits.max_message_bytes:
            # The full check, once per topic and for anything unusual; the common case is a set lookup.
            protocol.validate_request({"op": "PUB", "topic": topic, "data": payload}, self.limits)
            self._valid_topics.add(topic)
        future = PublishFuture(self, callback)
        io = self._io
        if io is not None:
            batches = self._batches
            ready = batches.ready
            if self.batch_size == 1:
                ready.append((topic, [payload], [future]))
                news = True
            else:
                # The message joins its topic's batch here (the I/O thread does nothing per message);
                # a full batch is handed over. Inline: this is the per-message path.
                with batches.lock:
                    batch = batches.gathering.get(topic)
                    if batch is None or batch.nbytes + len(payload) > batches.max_bytes:
                        batch = batches.start(topic, batch)
                        news = True
                    else:
                        news = False
                    batch.messages.append(payload)
                    batch.futures.append(future)
                    batch.nbytes += len(payload)
                    if len(batch.messages) >= self.batch_size:
                        del batches.gathering[topic]
                        ready.append((topic, batch.messages, batch.futures))
                        news = True
            if news:  # a request to send, or a batch whose linger the I/O thread must time
                if io.sleeping:
                    io.sleeping = False  # one wake-up is enough
                    io.wake()
                if len(ready) > self._ready_limit:
                    self._room()
            if self._closed:  # closing, or closed (then this message fails here and the call raises)
                self._closed_meanwhile()
            return future
        if self._closed:
            raise ClientError("the publisher is closed")
        if self.batch_size == 1:
            self._send_now((topic, [payload], [future]))  # plain PUBs: nothing to gather
        else:
            for request in self._batches.gather(topic, payload, future, self.batch_size):
                self._send_now(request)
        now = time.monotonic()
        if now >= self._next_poll:  # not per message: a socket poll costs more than a publish
            self._next_poll = now + POLL_INTERVAL_S
            self.poll(0)
        return future

    def poll(self, timeout_s: float = 0.0) -> None:
        """Do pending I/O: send batches whose linger is over, read replies, resend after timeouts;
        then run the callbacks of the futures resolved meanwhile. With an I/O thread that does all
        this, it returns at once (unless called from a callback, on the I/O thread itself)."""
        if self._drives_io():
            self._turn(timeout_s)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything handed in so far (no linger) and wait until it is all answered and its
        callbacks have run (with an I/O thread: what was handed in before this call).

        Raises:
            TimeoutError: `timeout` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        io = self._io
        if io is not None:
            if self._closed and not io.is_alive():
                return
            mark = Flush()
            self._batches.hand_over_all(mark)  # behind every batch gathered so far: no linger in a flush
            io.wake()
            try:
                self._wait(lambda: mark.done, deadline, "the flush did not finish in time")
            except TimeoutError:
                raise TimeoutError(f"{self.in_flight} requests still unanswered") from None
            return
        gathering = self._batches.gathering
        while True:
            for topic in [t for t, b in gathering.items() if b.messages]:
                self._send_now(self._batches.pop(topic))  # also what callbacks published meanwhile: no linger
            if not self.in_flight and (self._running_callbacks or not self._callbacks_due):
                return  # (a flush inside a callback cannot wait for the callbacks queued behind it)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self.in_flight} requests still unanswered")
            self.poll(0.01)

    def close(self) -> None:
        """Flush (within `timeouts.total_s`), then stop the I/O thread and close the socket (and the
        context if the publisher made it). A message not acknowledged by then fails with ClientError.

        Raises:
            TimeoutError: the flush did not finish in time (the publisher is closed all the same).
            RuntimeError: called from a callback (on the I/O thread, which cannot wait for itself).
        """
        io = self._io
        if io is None:
            try:
                if self._wire.sock is not None or self._batches.gathering:
                    self.flush(self.timeouts.total_s)
            finally:
                self._closed = True
                self._wire.close_socket()
                if self._own_ctx:
                    self.ctx.term()
            return
        if threading.get_ident() == io.ident:
            raise RuntimeError("Publisher.close() from a callback: call it from another thread")
        if io.stopping:
            return  # closed already
        try:
            if not self._closed:  # (closed already: the I/O thread failed)
                self.flush(self.timeouts.total_s)
        finally:
            self._closed = True
            io.stop()
            # A publish that raced with the close handed its message over after the last turn.
            self._abandon(ClientError(f"the publisher was closed {_CLOSED_EARLY}"))
            if self._own_ctx:
                self.ctx.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- the turn of I/O

    def _drives_io(self) -> bool:
        """Whether the calling thread does the I/O: there is no I/O thread, or this is it."""
        return self._io is None or threading.get_ident() == self._io.ident

    def _turn(self, timeout_s: float) -> None:
        """One round of I/O on the thread that does it: take what was handed over, send batches
        whose linger is over, read replies (waiting up to `timeout_s`), resend after timeouts, run
        the callbacks of the futures resolved meanwhile, mark the flushes that are done."""
        batches = self._batches
        if self._io is not None:
            if batches.gathering:
                batches.hand_over_lingered(self.linger_s)
            if batches.ready:
                self._take_ready()
        elif batches.gathering:
            for topic in batches.lingered(self.linger_s):
                self._send_now(batches.pop(topic))
        wire = self._wire
        wire.read_replies(timeout_s)
        wire.check_timeouts()
        self._run_callbacks()
        if self._flushes:
            self._settle_flushes()

    def _take_ready(self) -> None:
        """Send the requests handed over, in order, while the window has room; note the flushes."""
        ready, wire = self._batches.ready, self._wire
        inflight = wire.inflight
        free = inflight.free()  # each request sent takes one seq of it
        while ready and free > 0:
            item = ready.popleft()
            if isinstance(item, Flush):
                item.point = inflight.last_seq
                self._flushes.append(item)
                continue
            wire.send(item)
            free -= 1

    def _settle_flushes(self) -> None:
        """Mark done the flushes whose requests are all answered and whose callbacks have run (a flush
        inside a callback cannot wait for the callbacks queued behind it)."""
        if self._callbacks_due and not self._running_callbacks:
            return
        lowest = self._wire.inflight.floor()
        still = []
        for flush in self._flushes:
            if lowest is None or (flush.point is not None and lowest > flush.point):
                flush.done = True
            else:
                still.append(flush)
        self._flushes = still

    def _due(self) -> float | None:
        """Returns: seconds until a batch's linger, a per-try timeout or a deadline is due, or None."""
        when = self._wire.next_check()
        linger = self._batches.next_linger(self.linger_s)
        if linger is not None and (when is None or linger < when):
            when = linger
        return None if when is None else when - time.monotonic()

    def _busy(self) -> bool:
        """Returns: whether requests handed over may be sent now (the window has room)."""
        return bool(self._batches.ready) and self._wire.inflight.room()

    def _run_callbacks(self) -> None:
        """Run due callbacks in resolution order; one that publishes re-enters here and returns at once."""
        if self._running_callbacks:
            return
        self._running_callbacks = True
        due = self._callbacks_due
        caught = self._io is not None  # on the I/O thread, an exception must not stop the publisher
        try:
            while due:
                future = due.popleft()
                callback, future._callback = future._callback, None  # at most once per future
                if callback is None:
                    continue
                if not caught:
                    callback(future)
                    continue
                try:
                    callback(future)
                except Exception:
                    log.exception("publisher: a callback raised (the publisher goes on)")
        finally:
            self._running_callbacks = False

    def _wait(self, done: Callable[[], bool], deadline: float | None, what: str) -> None:
        """Wait until `done()`: drive the I/O on the thread that does it, else wait for the I/O thread.

        Raises:
            TimeoutError: `deadline` passed first (saying `what`); ClientError: the I/O thread is gone.
        """
        if self._drives_io():
            while not done():
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(what)
                self._turn(0.01)
            return
        assert self._io is not None
        self._io.wait(done, deadline, what)

    def _room(self) -> None:
        """Wait until the I/O thread has taken enough of what was handed over (never on the I/O
        thread itself: a callback that publishes must not wait for the thread it runs on)."""
        if self._drives_io():
            return
        ready, limit = self._batches.ready, self._ready_limit
        self._wait(lambda: len(ready) < limit or self._closed, None, "room to hand a message over")

    def _send_now(self, request: Request) -> None:
        """Without an I/O thread (or in a callback): send `request`, first waiting for room in the window."""
        self._wire.wait_room()
        self._wire.send(request)

    # ---------------------------------------------------------------- closing

    def _io_finished(self, failure: BaseException | None) -> None:
        """The I/O thread ends (closed, or `failure` stopped it): whatever is left fails, and the
        socket is closed here, on the thread that used it."""
        if failure is not None:
            self._closed = True
        try:
            why = "was closed" if failure is None else f"'s I/O thread failed ({failure!r})"
            self._abandon(ClientError(f"the publisher{why} {_CLOSED_EARLY}"))
        finally:
            self._wire.close_socket()

    def _abandon(self, error: ClientError) -> None:
        """Fail every message not yet acknowledged (on the thread that does the I/O, which then stops)."""
        self._wire.abandon(error)
        futures, marks = self._batches.take_all()
        for batch in futures:
            for future in batch:
                future._resolve(None, 0, error)
        for flush in marks + self._flushes:
            flush.done = True
        self._flushes = []
        self._run_callbacks()

    def _closed_meanwhile(self) -> None:
        """A publish that found the publisher closing or closed. While the I/O thread runs, `close`
        fails what it has not sent; once it is gone, fail what was handed over here and raise.

        Raises: ClientError: the I/O thread is gone (closed, or it failed)."""
        io = self._io
        assert io is not None
        if io.is_alive():
            return
        self._abandon(ClientError(f"the publisher was closed {_CLOSED_EARLY}"))
        raise ClientError("the publisher is closed" + (f" (its I/O thread failed: {io.failure!r})"
                                                       if io.failure is not None else ""))
