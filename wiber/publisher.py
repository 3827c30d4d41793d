"""A pipelined, auto-batching publisher: many requests in flight, messages gathered per topic.

The way Kafka's producer gets its speed (`linger.ms`, `batch.size`): messages handed to
`Publisher.publish` are gathered per topic for at most `linger_s` or `batch_size` messages, then
sent as one PUB_BATCH (or a PUB for a single message) over a DEALER socket, with at most `window`
requests in flight. Each message gets a `PublishFuture` that resolves to its `Ack` (its own offset).

Exactly once, in order: every request carries this publisher's `client_id` and its own `seq`, and
`ack_floor` = the lowest seq of that client_id still in flight. On NOT_LEADER, UNAVAILABLE,
OUT_OF_SEQUENCE, STORAGE or a timeout, every request still in flight is sent again, in seq order,
with the same seqs (to the leader named, or the next node): the node's session answers those
already stored with their first answer (`duplicate: True`), so each message is stored once.

Order needs more than sending in order, because a request can be refused while later ones of the
same stream are not: a node answers NOT_LEADER to seqs 1..k of a stream, becomes leader and takes
k+1.. from the rest of it (seen on a loaded machine: the resent 1..k then landed after them), and a
connection that ends while requests are still queued for it leaves the later ones reaching the
leader after the earlier ones' resends. So every request is sent `ordered`: the cluster stores it
only as its session's next seq and refuses one past a gap with OUT_OF_SEQUENCE (docs/design.md
section 3), as Kafka's idempotent producer refuses an out-of-sequence batch; and no request goes
out on a connection after an earlier one that could not be sent on it. A topic's messages are
stored in the order they were handed in.

Threads. By default (``io_thread=True``) a background I/O thread owns the socket and does all the
I/O: `publish` (safe from any thread) checks the message and adds it to its topic's batch, and a
full batch (or a lingered one, or a plain PUB) is handed to the I/O thread through a queue, so a
message leaves within `linger_s` with no further call; `flush()` and `close()` send everything and
wait for every acknowledgement; `PublishFuture.result` waits for the I/O thread. No ZMQ socket is
used by two threads: the other threads wake the I/O thread through a pipe. `publish` waits while
`window` requests wait to be sent beside the `window` in flight. The messages of one thread keep the
order that thread handed them in.

Callbacks run on the I/O thread, one at a time, in the order their futures resolved, each after
that turn's I/O: a callback may call `publish` (it never waits there), and `result` or `flush`
(which then drive the I/O from inside the callback, as in the single-threaded mode), but should be
short, since the I/O waits for it. An exception from a callback is logged and does not stop the
publisher. `close()` must not be called from a callback.

With ``io_thread=False`` the publisher is single-threaded: it does I/O only inside its own calls
(`publish`, `poll`, `flush`, `PublishFuture.result`, `close`), a message waits at most `linger_s`
past the next such call, and callbacks run inside those calls once the I/O is done (at the end of
`poll`, which `publish`, `flush` and `result` call), in the order their futures resolved; an
exception from a callback comes out of that call. Either way a callback may publish (acknowledge,
then publish the next step): it never runs while the publisher is halfway through building or
sending a batch, which would lose or reorder messages.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import msgpack
import zmq

from wiber import protocol, zmqcalls
from wiber.client import Ack, Timeouts, normalize_address
from wiber.client.curve import (
    CurveKeys,
    HandshakeWatch,
    KeySource,
    client_options,
    client_socket,
    close_client_socket,
    config_curve_keys,
    curve_keys,
)
from wiber.errors import (
    ClientError,
    NotLeader,
    OutOfSequence,
    SessionExpired,
    StorageError,
    Unavailable,
    WireError,
    error_from_reply,
)

if TYPE_CHECKING:
    from wiber.config import Config

log = logging.getLogger(__name__)

Callback = Callable[["PublishFuture"], None]

#: How often `publish` looks at the socket (replies, lingering batches) at most.
POLL_INTERVAL_S = 0.0005


#: Frames at least this large are sent without copying.
ZERO_COPY_BYTES = 1 << 18

#: The broker's default session_window: a publisher never has more requests than this in flight.
DEFAULT_SESSION_WINDOW = 4096

#: Full batches that may wait for the I/O thread before `publish` waits too. Few: a thread that gathers
#: without pause holds the GIL for the switch interval (5 ms) each time the I/O thread lets it go, at
#: every socket call; waiting while the I/O thread sends gives it the GIL. Measured (auto-batching,
#: window 100, one noisy run each): 1 196k msg/s, 2 223-233k, 4 175k, a window's worth (100) 199k.
READY_BATCHES = 2
#: Longest the I/O thread sleeps with nothing due (it is woken for anything new).
IO_IDLE_S = 1.0
#: Longest a thread waiting on the I/O thread goes without looking again (a safety net: it is notified).
WAIT_SLICE_S = 1.0


class PublishFuture:
    """The acknowledgement of one message, once its request is answered.

    The Ack is built only when asked for: a request's futures share its reply and each knows its
    position in the batch (100,000 futures resolve without 100,000 Ack objects).
    """

    __slots__ = ("_publisher", "_first", "_position", "_error", "_callback")

    def __init__(self, publisher: Publisher, callback: Callback | None) -> None:
        self._publisher = publisher
        self._first: dict[str, Any] | None = None  # the request's ok reply
        self._position = 0
        self._error: BaseException | None = None
        self._callback = callback

    def done(self) -> bool:
        return self._first is not None or self._error is not None

    def _resolve(self, first: dict[str, Any] | None, position: int, error: BaseException | None) -> None:
        if self._first is not None or self._error is not None:
            return
        # `done()` is read from other threads: the field it tests is set last.
        self._position = position
        if error is not None:
            self._error = error
        else:
            self._first = first
        if self._callback is not None:
            self._publisher._callbacks_due.append(self)  # run once the I/O is done: see the module docstring

    def result(self, timeout: float | None = None) -> Ack:
        """Wait for the acknowledgement (driving the publisher's I/O when there is no I/O thread, or
        from inside a callback). Returns: this message's Ack.

        Raises:
            the WireError the cluster answered, or ClientError when it did not answer in time (or
            the publisher was closed first); TimeoutError: `timeout` passed first.
        """
        if not self.done():
            self._publisher._wait(self.done, None if timeout is None else time.monotonic() + timeout,
                                  "the acknowledgement did not arrive in time")
        if self._error is not None:
            raise self._error
        first = self._first
        assert first is not None
        k = self._position
        return Ack(first["topic"], first["offset"] + k, first["index"], first["lamport"] + k, first["ts"],
                   bool(first["duplicate"]), 1)

    def exception(self) -> BaseException | None:
        return self._error


@dataclass(slots=True)
class _Request:
    """One PUB or PUB_BATCH in flight."""

    seq: int
    client_id: str  # the session it belongs to: kept by every resend, whatever sessions came after
    topic: str
    messages: list[bytes]
    futures: list[PublishFuture]
    deadline: float  # the total deadline: after it, give up with ClientError
    sent_at: float = 0.0
    attempts: int = 0


class _Flush:
    """A `flush` in the I/O thread's queue: done once every request up to `point` is answered."""

    __slots__ = ("done", "point")

    def __init__(self) -> None:
        self.point: int | None = None  # the last seq sent when the queue reached it
        self.done = False


@dataclass(slots=True)
class _Gathering:
    """Messages of one topic waiting to be sent."""

    messages: list[bytes] = field(default_factory=list)
    futures: list[PublishFuture] = field(default_factory=list)
    nbytes: int = 0
    since: float = 0.0


class Publisher:
    """Publish at high rate with exactly-once, in-order delivery per topic (see the module docstring).

    Args:
        addresses: client addresses of some or all nodes.
        window: requests in flight at most (each one PUB or PUB_BATCH).
        batch_size: messages per request at most; 1 sends plain PUBs.
        linger_s: how long a partial batch may wait for more messages.
        timeouts: per try (no answer: resend elsewhere) and in all (then the futures fail).
        client_key, server_keys: CURVE, as for `Client` (`Publisher.from_config` reads the nodes'
            keys from the config's keys_dir).
        io_thread: do the I/O on a background thread (the default), or only inside this
            publisher's own calls (see the module docstring).

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
        self._watch: HandshakeWatch | None = None
        self._refused: str | None = None  # why the last socket got no answer, when a handshake failed
        if not 1 <= window <= DEFAULT_SESSION_WINDOW or not 1 <= batch_size <= protocol.MAX_BATCH_MESSAGES:
            # More requests in flight than the cluster's session_window could make a resend
            # SESSION_EXPIRED: the broker keeps only that many answers per client.
            raise ValueError(f"window must be 1..{DEFAULT_SESSION_WINDOW} (the cluster's session_window) "
                             f"and batch_size 1..{protocol.MAX_BATCH_MESSAGES}")
        self.window = window
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.limits = protocol.Limits(max_message_bytes=max_message_bytes)
        self._max_batch_bytes = self.limits.max_batch_bytes
        self.timeouts = timeouts or Timeouts(per_try_s=2.0, total_s=30.0)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.client_id = uuid.uuid4().hex
        self._seq = 0
        self.lamport = 0
        self._rotation = itertools.cycle(self.addresses)
        self._address = next(self._rotation)
        self._sock: zmq.Socket[bytes] | None = None
        # One poller per socket: Socket.poll builds and registers a new Poller on every call, and a
        # loaded publisher polls a few thousand times a second (measured: 0.2-1.0 us less CPU per
        # message in three pairs).
        self._poller = zmq.Poller()
        self._gathering: dict[str, _Gathering] = {}
        self._valid_topics: set[str] = set()
        self._next_poll = 0.0
        self._in_flight: OrderedDict[int, _Request] = OrderedDict()
        self._callbacks_due: deque[PublishFuture] = deque()
        self._pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack  # packb makes one per call
        self._running_callbacks = False
        self._stalled = False  # a request could not be sent on this socket: none after it may go out on it
        self._closed = False
        self.resends = 0
        self.failovers = 0
        # The I/O thread and what other threads share with it (nothing else is touched by two threads).
        self._io: threading.Thread | None = None
        # Requests (topic, messages, futures) and flushes handed to the I/O thread, in order. A batch is
        # gathered by the thread that publishes, under `_gather_lock` (the I/O thread takes the ones
        # whose linger is over), and handed over whole: the I/O thread does no work per message.
        self._ready: deque[tuple[str, list[bytes], list[PublishFuture]] | _Flush] = deque()
        self._ready_limit = window if batch_size == 1 else READY_BATCHES
        self._gather_lock = threading.Lock()
        self._changed = threading.Condition()  # notified after each I/O turn while a thread waits
        self._waiting = 0  # threads waiting on the I/O thread (changed under `_changed`)
        self._sleeping = False  # the I/O thread is (about to be) waiting with nothing to do: wake it
        self._stopping = False
        self._failure: BaseException | None = None
        self._flushes: list[_Flush] = []
        if io_thread:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._io_poller = zmq.Poller()
            self._io_poller.register(self._wake_r, zmq.POLLIN)
            self._io_polled: zmq.Socket[bytes] | None = None  # the socket `_io_poller` holds
            self._io = threading.Thread(target=self._io_main, name=f"wiber-publisher-{self.client_id[:8]}",
                                        daemon=True)
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

    # ---------------------------------------------------------------- public

    def publish(self, topic: str, data: bytes | str, callback: Callback | None = None) -> PublishFuture:
        """Hand over one message. Returns: its future (resolved once a majority has it on disk).

        Raises:
            BadRequest, TooLarge: the topic or message is refused locally, before anything is sent.
        """
        payload = data.encode() if isinstance(data, str) else data
        if type(topic) is not str or topic not in self._valid_topics or type(payload) is not bytes \
                or len(payload) > self.limits.max_message_bytes:
            # The full check, once per topic and for anything unusual; the common case is a set lookup.
            protocol.validate_request({"op": "PUB", "topic": topic, "data": payload}, self.limits)
            self._valid_topics.add(topic)
        future = PublishFuture(self, callback)
        if self._io is not None:
            ready = self._ready
            if self.batch_size == 1:
                ready.append((topic, [payload], [future]))
                news = True
            else:
                # The message joins its topic's batch here (the I/O thread does nothing per message);
                # a full batch is handed over. Inline: this is the per-message path.
                with self._gather_lock:
                    batch = self._gathering.get(topic)
                    news = batch is None or batch.nbytes + len(payload) > self._max_batch_bytes
                    if news:
                        batch = self._start_batch(topic, batch)
                    batch.messages.append(payload)  # type: ignore[union-attr]
                    batch.futures.append(future)  # type: ignore[union-attr]
                    batch.nbytes += len(payload)  # type: ignore[union-attr]
                    if len(batch.messages) >= self.batch_size:  # type: ignore[union-attr]
                        del self._gathering[topic]
                        ready.append((topic, batch.messages, batch.futures))  # type: ignore[union-attr]
                        news = True
            if news:  # a request to send, or a batch whose linger the I/O thread must time
                if self._sleeping:
                    self._sleeping = False  # one wake-up is enough
                    self._wake()
                if len(ready) > self._ready_limit:
                    self._room()
            if self._closed:  # closing, or closed (then this message fails here and the call raises)
                self._closed_meanwhile()
            return future
        if self._closed:
            raise ClientError("the publisher is closed")
        if self.batch_size == 1:
            self._send_request(topic, [payload], [future])  # plain PUBs: nothing to gather
        else:
            self._gather(topic, payload, future)
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

    def _drives_io(self) -> bool:
        """Whether the calling thread does the I/O: there is no I/O thread, or this is it."""
        return self._io is None or threading.get_ident() == self._io.ident

    def _turn(self, timeout_s: float) -> None:
        """One round of I/O on the thread that does it: take what was handed over, send batches
        whose linger is over, read replies (waiting up to `timeout_s`), resend after timeouts, run
        the callbacks of the futures resolved meanwhile, mark the flushes that are done."""
        if self._io is not None:
            if self._gathering:
                self._hand_over_lingered()
            if self._ready:
                self._take_ready()
        elif self._gathering:
            now = time.monotonic()
            linger = self.linger_s
            for topic in [t for t, b in self._gathering.items() if b.messages and now - b.since >= linger]:
                self._send_batch(topic)
        self._read_replies(timeout_s)
        self._check_timeouts()
        self._run_callbacks()
        if self._flushes:
            self._settle_flushes()

    def _start_batch(self, topic: str, full: _Gathering | None) -> _Gathering:
        """Start `topic`'s next batch (under `_gather_lock`), handing over `full`, the one its next
        message would take past the bytes a batch may hold. Returns: the new batch."""
        if full is not None:
            self._ready.append((topic, full.messages, full.futures))
        batch = self._gathering[topic] = _Gathering(since=time.monotonic())
        return batch

    def _hand_over_lingered(self) -> None:
        """Move the batches whose linger is over behind the requests handed over."""
        now = time.monotonic()
        linger = self.linger_s
        with self._gather_lock:
            gathering = self._gathering
            for topic in [t for t, b in gathering.items() if now - b.since >= linger]:
                batch = gathering.pop(topic)
                self._ready.append((topic, batch.messages, batch.futures))

    def _take_ready(self) -> None:
        """Send the requests handed over, in order, while the window has room; note the flushes."""
        ready, in_flight, window = self._ready, self._in_flight, self.window
        while ready and len(in_flight) < window:
            item = ready.popleft()
            if type(item) is _Flush:
                item.point = self._seq
                self._flushes.append(item)
                continue
            topic, messages, futures = item  # type: ignore[misc]
            self._send_request(topic, messages, futures)

    def _settle_flushes(self) -> None:
        """Mark done the flushes whose requests are all answered and whose callbacks have run (a flush
        inside a callback cannot wait for the callbacks queued behind it)."""
        if self._callbacks_due and not self._running_callbacks:
            return
        lowest = next(iter(self._in_flight), None)
        still = []
        for flush in self._flushes:
            if lowest is None or (flush.point is not None and lowest > flush.point):
                flush.done = True
            else:
                still.append(flush)
        self._flushes = still

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
        io = self._io
        assert io is not None
        with self._changed:
            self._waiting += 1
            try:
                while not done():
                    if not io.is_alive():
                        raise ClientError(f"the publisher was closed first: {what}")
                    if deadline is None:
                        self._changed.wait(WAIT_SLICE_S)
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(what)
                    self._changed.wait(min(remaining, WAIT_SLICE_S))
            finally:
                self._waiting -= 1

    def _room(self) -> None:
        """Wait until the I/O thread has taken enough of what was handed over (never on the I/O
        thread itself: a callback that publishes must not wait for the thread it runs on)."""
        if self._drives_io():
            return
        ready, limit = self._ready, self._ready_limit
        self._wait(lambda: len(ready) < limit or self._closed, None, "room to hand a message over")

    def _wake(self) -> None:
        """Wake the I/O thread from its poll (a byte on its pipe; a full pipe wakes it too)."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # full (it will wake), or closed (it is gone)
            pass

    def _io_main(self) -> None:
        """The I/O thread: turns until `close`; then whatever is left fails, and the socket is closed here."""
        try:
            while not self._stopping:
                self._turn(0.0)
                if self._waiting:
                    with self._changed:
                        self._changed.notify_all()
                self._sleep()
        except BaseException as exc:  # a bug, or a socket error: nothing may wait on this thread forever
            log.exception("publisher: the I/O thread failed")
            self._failure = exc
            self._closed = True
        finally:
            try:
                why = "was closed" if self._failure is None else f"'s I/O thread failed ({self._failure!r})"
                self._abandon(ClientError(f"the publisher{why} before this message was acknowledged; "
                                          f"it may or may not be stored"))
            finally:
                self._close_socket()
                with self._changed:
                    self._changed.notify_all()

    def _sleep(self) -> None:
        """Wait for a reply, something handed over, or the next deadline (a linger, a per-try timeout)."""
        # Announced before looking: whatever is handed over after the look wakes the poll.
        self._sleeping = True
        if self._ready and len(self._in_flight) < self.window:
            self._sleeping = False
            return  # more to send now
        now = time.monotonic()
        timeout = IO_IDLE_S
        if self._gathering:
            with self._gather_lock:
                for batch in self._gathering.values():
                    timeout = min(timeout, batch.since + self.linger_s - now)
        if self._in_flight:
            oldest = next(iter(self._in_flight.values()))
            timeout = min(timeout, oldest.sent_at + self.timeouts.per_try_s - now)
        sock = self._sock
        if sock is not self._io_polled:
            self._io_poller = zmq.Poller()
            self._io_poller.register(self._wake_r, zmq.POLLIN)
            if sock is not None:
                self._io_poller.register(sock, zmq.POLLIN)
            self._io_polled = sock
        if self._stopping:
            timeout = 0.0
        try:
            events = self._io_poller.poll(math.ceil(max(0.0, timeout) * 1000))
        finally:
            self._sleeping = False
        for fd, _ in events:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass

    def _abandon(self, error: ClientError) -> None:
        """Fail every message not yet acknowledged (on the thread that does the I/O, which then stops)."""
        for request in list(self._in_flight.values()):
            self._finish(request, None, error)
        with self._gather_lock:
            batches = list(self._gathering.values())
            self._gathering.clear()
        for batch in batches:
            for future in batch.futures:
                future._resolve(None, 0, error)
        while self._ready:
            item = self._ready.popleft()
            if type(item) is _Flush:
                item.done = True
            else:
                for future in item[2]:  # type: ignore[index]
                    future._resolve(None, 0, error)
        for flush in self._flushes:
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
        self._abandon(ClientError("the publisher was closed before this message was acknowledged; "
                                  "it may or may not be stored"))
        raise ClientError("the publisher is closed" + (f" (its I/O thread failed: {self._failure!r})"
                                                       if self._failure is not None else ""))

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

    def flush(self, timeout: float | None = None) -> None:
        """Send everything handed in so far (no linger) and wait until it is all answered and its
        callbacks have run (with an I/O thread: what was handed in before this call).

        Raises:
            TimeoutError: `timeout` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._io is not None:
            if self._closed and not self._io.is_alive():
                return
            mark = _Flush()
            with self._gather_lock:  # behind every batch gathered so far: no linger in a flush
                gathering = self._gathering
                for topic in list(gathering):
                    batch = gathering.pop(topic)
                    self._ready.append((topic, batch.messages, batch.futures))
                self._ready.append(mark)
            self._wake()
            try:
                self._wait(lambda: mark.done, deadline, "the flush did not finish in time")
            except TimeoutError:
                raise TimeoutError(f"{len(self._in_flight)} requests still unanswered") from None
            return
        while True:
            for topic in [t for t, b in self._gathering.items() if b.messages]:
                self._send_batch(topic)  # also what callbacks published meanwhile: no linger in a flush
            if not self._in_flight and (self._running_callbacks or not self._callbacks_due):
                return  # (a flush inside a callback cannot wait for the callbacks queued behind it)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(self._in_flight)} requests still unanswered")
            self.poll(0.01)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

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
                if self._sock is not None or self._gathering:
                    self.flush(self.timeouts.total_s)
            finally:
                self._closed = True
                self._close_socket()
                if self._own_ctx:
                    self.ctx.term()
            return
        if threading.get_ident() == io.ident:
            raise RuntimeError("Publisher.close() from a callback: call it from another thread")
        if self._stopping:
            return  # closed already
        try:
            if not self._closed:  # (closed already: the I/O thread failed)
                self.flush(self.timeouts.total_s)
        finally:
            self._closed = True
            self._stopping = True
            self._wake()
            io.join()
            # A publish that raced with the close handed its message over after the last turn.
            self._abandon(ClientError("the publisher was closed before this message was acknowledged; "
                                      "it may or may not be stored"))
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self._own_ctx:
                self.ctx.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- sending

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            sock, self._watch = client_socket(self.ctx, zmq.DEALER, self._address, self.curve)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.connect(self._address)
            self._sock = sock
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
        return self._sock

    def _gather(self, topic: str, payload: bytes, future: PublishFuture) -> None:
        """Add a message to its topic's batch; send the batch once it is full (by count or bytes)."""
        batch = self._gathering.get(topic)
        if batch is None:
            batch = self._gathering[topic] = _Gathering(since=time.monotonic())
        if batch.messages and batch.nbytes + len(payload) > self.limits.max_batch_bytes:
            self._send_batch(topic)
            batch = self._gathering[topic] = _Gathering(since=time.monotonic())
        batch.messages.append(payload)
        batch.futures.append(future)
        batch.nbytes += len(payload)
        if len(batch.messages) >= self.batch_size:
            self._send_batch(topic)

    def _send_batch(self, topic: str) -> None:
        batch = self._gathering.pop(topic)
        self._send_request(topic, batch.messages, batch.futures)

    def _send_request(self, topic: str, messages: list[bytes], futures: list[PublishFuture]) -> None:
        """Send one PUB or PUB_BATCH, first waiting for room in the window."""
        while len(self._in_flight) >= self.window:
            self._read_replies(0.01)
            self._check_timeouts()
        self._seq += 1
        request = _Request(self._seq, self.client_id, topic, messages, futures,
                           deadline=time.monotonic() + self.timeouts.total_s)
        self._in_flight[request.seq] = request
        self._transmit(request)

    def _transmit(self, request: _Request) -> None:
        """Send one request on the socket (made if need be), unless an earlier one could not be sent on
        it: a later seq must never reach a node before an earlier one of this publisher."""
        request.sent_at = time.monotonic()  # the per-try clock runs from here, sent or not
        if self._stalled:
            return
        oldest = next(iter(self._in_flight.values()))
        floor = oldest.seq if oldest.client_id == request.client_id else self._floor_of(request.client_id)
        msg: dict[str, Any] = {"topic": request.topic, "client_id": request.client_id, "seq": request.seq,
                               "ack_floor": floor, "ordered": True, "id": request.seq}
        if self.lamport:
            msg["lamport"] = self.lamport
        if len(request.messages) == 1:
            msg["op"] = "PUB"
            msg["data"] = request.messages[0]
        else:
            msg["op"] = "PUB_BATCH"
            msg["messages"] = request.messages
        size = len(request.messages[0]) if len(request.messages) == 1 else sum(map(len, request.messages))
        # The reused Packer keeps its largest buffer for good: only requests of ordinary size use it.
        body = self._pack(msg) if size <= protocol.REUSED_PACKER_MAX_BYTES else protocol.pack(msg)
        sock = self._socket()
        # Never blocking: a DEALER with no connection (a node that refused this client's key ends
        # it for good) would block a send forever. Unsent, the request stays in flight and goes
        # to the next node after the per-try timeout, as an unanswered one does.
        try:
            zmqcalls.send(sock, b"", zmqcalls.MORE_NOBLOCK)
        except zmq.Again:
            log.debug("publisher: no connection to %s to send request %d on", self._address, request.seq)
            self._stalled = True
            return
        # Zero-copy only pays for big frames: small ones would cost a trip through zmq's GC thread.
        # The connection may end between the two frames: libzmq then rolls the first back and
        # refuses this one, and the request stays in flight as above.
        try:
            if len(body) < ZERO_COPY_BYTES:
                zmqcalls.send(sock, body, zmqcalls.NOBLOCK)
            else:
                sock.send(body, zmqcalls.NOBLOCK, copy=False)
        except zmq.Again:
            log.debug("publisher: the connection to %s ended while sending request %d", self._address, request.seq)
            self._stalled = True
            return
        request.attempts += 1

    def _floor_of(self, client_id: str) -> int:
        """Returns: the lowest seq in flight under `client_id` (after a SessionExpired, requests of the
        old session may still be ahead of it), which an ordered request's session starts from."""
        return next(seq for seq, request in self._in_flight.items() if request.client_id == client_id)

    def _resend_all(self, address: str | None) -> None:
        """Reconnect (to `address`, or the next node) and send every request in flight again, in order."""
        self._refused = self._watch.check() if self._watch is not None else None
        self._close_socket()
        self._stalled = False
        self._address = normalize_address(address) if address else next(self._rotation)
        self.failovers += 1
        now = time.monotonic()
        for seq in list(self._in_flight):
            request = self._in_flight[seq]
            if now >= request.deadline:
                self._finish(request, None, ClientError(
                    f"publish to {request.topic!r} not acknowledged within {self.timeouts.total_s:g} s; "
                    f"it may or may not be stored" + (f" ({self._refused})" if self._refused else "")))
                continue
            self.resends += 1
            self._transmit(request)

    def _close_socket(self) -> None:
        """Close the socket (its handshake watch first), if one is open."""
        close_client_socket(self._sock, self._watch)
        self._sock, self._watch = None, None

    # ---------------------------------------------------------------- receiving

    def _read_replies(self, timeout_s: float) -> None:
        sock = self._sock
        if sock is None or not self._in_flight:
            return
        if not self._poller.poll(int(timeout_s * 1000)):
            return
        while True:
            try:
                first = zmqcalls.recv(sock, zmqcalls.NOBLOCK)
                body = zmqcalls.recv(sock, zmqcalls.NOBLOCK) if first == b"" else first  # [b"", reply] per the contract
            except zmq.Again:
                return
            try:
                reply = protocol.parse_reply(body)
            except WireError:
                continue
            request = self._in_flight.get(reply.get("id"))  # type: ignore[arg-type]
            if request is None:
                continue  # an answer to a request already answered (a resend's twin)
            if reply["ok"]:
                self._finish(request, reply, None)
                continue
            err = error_from_reply(reply)
            if isinstance(err, NotLeader):
                time.sleep(0.0 if err.leader_addr else 0.05)  # no leader yet: an election is under way
                self._resend_all(err.leader_addr)
                return
            if isinstance(err, OutOfSequence):  # an earlier seq was refused on its way: send them all again
                self._resend_all(self._address)
                return
            if isinstance(err, (Unavailable, StorageError)):
                time.sleep(0.02)
                self._resend_all(None if isinstance(err, StorageError) else self._address)
                return
            if isinstance(err, SessionExpired):
                err = self._session_expired(request, err)
            self._finish(request, None, err)  # SESSION_EXPIRED, BAD_REQUEST, TOO_LARGE: final

    def _session_expired(self, request: _Request, err: SessionExpired) -> SessionExpired:
        """A request refused as SESSION_EXPIRED. Returns: the error its futures get.

        The cluster refuses every later request of an evicted client_id, so new requests go out
        under a new one. Requests already in flight keep theirs: their resends must stay
        deduplicated. A request sent once was refused without being stored; one sent again after
        a timeout or a failover may have been stored by an earlier try.
        """
        if request.client_id == self.client_id:
            self.client_id = uuid.uuid4().hex
            log.info("publisher: session %s expired; continuing as %s", request.client_id, self.client_id)
        if request.attempts == 1:
            return SessionExpired(f"publish to {request.topic!r} refused: the session of client "
                                  f"{request.client_id!r} had expired when it arrived, so it is not stored; "
                                  f"publish it again")
        return err

    def _check_timeouts(self) -> None:
        if not self._in_flight:
            return
        oldest = next(iter(self._in_flight.values()))
        if time.monotonic() - oldest.sent_at > self.timeouts.per_try_s:
            log.info("publisher: no answer from %s within %.1f s, trying another node",
                     self._address, self.timeouts.per_try_s)
            self._resend_all(None)

    def _finish(self, request: _Request, reply: dict[str, Any] | None, error: BaseException | None) -> None:
        self._in_flight.pop(request.seq, None)
        if reply is None:
            for future in request.futures:
                future._resolve(None, 0, error)
            return
        last_lamport = reply["lamport"] + len(request.futures) - 1
        if last_lamport > self.lamport:
            self.lamport = last_lamport
        for i, future in enumerate(request.futures):
            future._resolve(reply, i, None)
