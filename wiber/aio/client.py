"""`wiber.aio.Client`: every operation of `wiber.client.Client` as a coroutine on zmq.asyncio.

One DEALER per node the client talks to (`_Link`), each with a task that reads its replies; every
request carries an `id` of its own, which the node echoes, so any number of coroutines share one
socket: ``await asyncio.gather(*(client.publish("t", b"x") for _ in range(1000)))`` has 1,000
requests in flight on it. The client is bound to the event loop of its first request and is not
thread-safe (no asyncio object is).

Requests go through one pipeline at the client's current node. Its bookkeeping is sans-I/O
(`wiber.client.inflight.InFlight`), and each request's retries follow `wiber.client.retry.RetryPlan`,
the policy of the sync `Client` too: NOT_LEADER moves the pipeline to the leader it names, or, in an
election, to the next node after a pause; STORAGE to the next node; UNAVAILABLE retries that request
at the same node after a pause; a try unanswered within `Timeouts.per_try_s` makes the node count as
dead (the zguide's Lazy Pirate: its socket is closed) and the pipeline moves to the next node; past
`Timeouts.total_s` a request fails with `ClientError` naming the operation. Whenever the pipeline
moves, every request in flight is sent again to the new node in the order it was first handed over,
publishes in seq order.

Exactly once: publishes under the client's session carry its `client_id`, their own `seq` (reused by
every retry) and ``ack_floor``, the lowest seq still awaiting its answer; the unanswered seqs never
span more than `window` (further publishes wait for room), so the cluster keeps every answer a
resend may need. A publish awaited before the next one starts is stored before it; publishes of
different tasks may interleave. SESSION_EXPIRED ends the session as in the sync client.

Requests pinned to one node (`request_to`, and a subscription's SUB, HISTORY and TOPICS at the node
whose PUB socket it listens to) use the same `RetryPlan` with that node alone, and never move.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import zmq

from wiber import protocol, topics, zmqcalls
from wiber.aio.consumer import Consumer
from wiber.aio.subscription import PatternSubscription, Subscription
from wiber.client.connection import op_name
from wiber.aio.sockets import AioSocket, open_socket
from wiber.client.curve import (
    CurveError,
    CurveKeys,
    KeySource,
    client_options,
    config_curve_keys,
    curve_keys,
)
from wiber.client.inflight import DEFAULT_WINDOW, InFlight, Slot
from wiber.client.retry import Next, RetryPlan
from wiber.client.seqfile import SeqFile
from wiber.client.values import Ack, History, Message, Timeouts, normalize_address
from wiber.clock import Clock, OffsetEstimator, SystemClock, skew_from_env
from wiber.config.model import MAX_MESSAGE_BYTES_LIMIT
from wiber.errors import ClientError, WireError

if TYPE_CHECKING:
    from wiber.config import Config

__all__ = ["Client"]

log = logging.getLogger(__name__)

#: Replies a link's reader takes from its socket in one go before it lets other tasks run.
DRAIN_MAX = 1000
#: What making a link may raise that a try treats as silence (so the next node is tried).
_LINK_ERRORS = (ClientError, CurveError)


@dataclass(eq=False, slots=True)
class _Call:
    """A request of the pipeline: its map (``id`` and ``ack_floor`` set on each try) and who awaits it."""

    msg: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    floor: bool = False
    """Whether each try carries the session's ``ack_floor``."""
    wall: float = field(default=0.0)
    """This client's wall clock when the try now out left (a clock sample with the reply's time)."""


class _Link:
    """One DEALER to one node, and the task that reads its replies into `Client._on_body`.

    Requests leave and replies are read with the plain backend calls of `wiber.zmqcalls` on the
    socket's view (pyzmq's asyncio send builds a future and does flag arithmetic per call: half of
    the client's time per publish, measured). The reader awaits the asyncio socket only when nothing
    is queued. libzmq signals readiness by edges, and a send may take the edge of a reply that has
    just arrived; so after sends a drain runs once, at the loop's next turn (`_kick`).

    Raises (from the constructor):
        CurveError: no CURVE key is known for the node.
        ClientError: the socket cannot be made or connected (a malformed address).
    """

    def __init__(self, client: Client, address: str) -> None:
        self.address = address
        # No high-water mark: the window bounds what waits here.
        self.sock = client._open(zmq.DEALER, address, options={zmq.SNDHWM: 0, zmq.RCVHWM: 0})
        self._deliver = client._on_body
        self._loop = asyncio.get_running_loop()
        self._kick_due = False
        self._closed = False
        self.task = self._loop.create_task(self._read(), name=f"wiber.aio reader {address}")

    def send(self, body: bytes) -> bool:
        """Queue one request (never blocking). Returns: whether the socket took it."""
        view = self.sock.view
        try:
            zmqcalls.send(view, b"", zmqcalls.MORE_NOBLOCK)
            zmqcalls.send(view, body, zmqcalls.NOBLOCK)
        except zmq.ZMQError:  # Again (no connection), or closed: the request stays in flight
            return False
        finally:
            if not self._kick_due:
                self._kick_due = True
                self._loop.call_soon(self._kick)
        return True

    def _kick(self) -> None:
        """After sends: read what waits (a send may have taken its readiness edge)."""
        self._kick_due = False
        if not self._closed and self.drain():
            self._kick_due = True
            self._loop.call_soon(self._kick)  # more than one go's worth: on at the next turn

    def drain(self) -> bool:
        """Deliver the replies waiting in the socket, at most `DRAIN_MAX`. Returns: whether more may wait."""
        view, deliver = self.sock.view, self._deliver
        try:
            for _ in range(DRAIN_MAX):
                first = zmqcalls.recv(view, zmqcalls.NOBLOCK)
                # [b"", reply] per the contract; the second frame of a message is there with the first.
                deliver(self, zmqcalls.recv(view, zmqcalls.NOBLOCK) if first == b"" else first)
        except zmq.Again:
            return False
        except zmq.ZMQError:
            return False  # closed
        return True

    async def _read(self) -> None:
        owner = self.sock.owner
        while True:
            try:
                frames = await owner.recv_multipart()
            except zmq.ZMQError:
                return  # closed
            self._deliver(self, frames[-1])
            while self.drain():
                await asyncio.sleep(0)  # a long burst: let the tasks it woke run

    def refused(self) -> str | None:
        """Returns: why the last CURVE handshake with the node failed, if one did."""
        return self.sock.refused()

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._closed = True
        self.task.cancel()
        self.sock.close()


class Client:
    """A connection to a cluster, given the client addresses of some or all of its nodes: the
    coroutine twin of `wiber.client.Client`, safe to share between the tasks of one event loop.

    Keys as for the sync client: `client_key` (a `.key_secret` path or a (public, secret) pair) with
    `server_keys` (each node's public key by address), or `server_keys` alone with `WIBER_KEY`;
    `Client.from_config` reads the nodes' keys from the config's keys_dir. `client_id` with
    `seq_file` gives the client a fixed session that survives a restart (as the sync client's).
    `window`: how far the seqs of unanswered publishes may span (1 to 4,096, the cluster's default
    session_window); further publishes wait. `ctx` may be a `zmq.Context` or a `zmq.asyncio.Context`.
    Use it as ``async with Client(...) as client:``, or call `close`.

    Raises:
        CurveError: keys that do not fit (a client key without node keys, or the reverse).
        KeyFileError: the client's key file is missing, unreadable or malformed.
        ValueError: no address, a bad window, or a fixed client_id without a seq_file.
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeouts: Timeouts | None = None,
        ctx: zmq.Context[Any] | None = None,
        clock: Clock | None = None,
        *,
        client_key: KeySource | None = None,
        server_keys: Mapping[str, bytes] | None = None,
        client_id: str | None = None,
        seq_file: str | os.PathLike[str] | None = None,
        max_message_bytes: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        self.addresses = [normalize_address(a) for a in addresses]
        if not self.addresses:
            raise ValueError("Client needs at least one node address")
        if client_id is not None and seq_file is None:
            raise ValueError("a fixed client_id needs seq_file: a restarted client that numbered its publishes "
                             "from 1 again would have new messages taken for retries of old ones (and dropped)")
        self.curve: CurveKeys | None = curve_keys(client_key, server_keys)
        self.timeouts = timeouts or Timeouts()
        self.clock: Clock = clock or SystemClock(skew_from_env())
        self.clock_offset = OffsetEstimator()
        self._synced_at: float | None = None
        self.limits = protocol.Limits(max_message_bytes=max_message_bytes or MAX_MESSAGE_BYTES_LIMIT)
        """The size limits requests are checked against before they leave (as the sync client's)."""
        self.lamport = 0
        self._own_ctx = ctx is None
        # Sockets are made through a plain context (their CURVE handshake watch reads a monitor socket
        # without awaiting; wiber.aio.sockets): a zmq.asyncio.Context is used through a shadow.
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context() if ctx is None else zmq.Context.shadow(ctx.underlying)
        self._rotation = itertools.cycle(self.addresses)
        self._current = next(self._rotation)
        self._seqs = SeqFile(seq_file) if seq_file is not None else None
        self._inflight: InFlight[_Call] = InFlight(
            self.addresses, self.timeouts, client_id=client_id,
            first_seq=self._seqs.first if self._seqs is not None else 1,
            reserve=self._seqs.reserve if self._seqs is not None else None, window=window)
        self._links: dict[str, _Link] = {}
        self._sockets: weakref.WeakSet[AioSocket] = weakref.WeakSet()  # every one open: `close` closes them
        self._link_error: str | None = None  # why the last link could not be made, said on silence
        self._direct: dict[int, tuple[_Link, asyncio.Future[dict[str, Any] | None]]] = {}
        self._direct_ids = itertools.count(1)  # pinned requests' ids are negative: the pipeline's are not
        self._waiters: deque[asyncio.Future[None]] = deque()  # publishes waiting for room in the window
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._hold: asyncio.TimerHandle | None = None  # the pipeline pauses (an election) until it fires
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriptions: set[Subscription] = set()  # open ones: `close` closes them (they leave when closed)
        self._pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
        self._closed = False
        self.failovers = 0
        """How often the pipeline moved to another node."""

    @classmethod
    def from_config(cls, config: Config, client_key: KeySource | None = None, timeouts: Timeouts | None = None,
                    ctx: zmq.Context[Any] | None = None, clock: Clock | None = None, **options: Any) -> Client:
        """Returns: a Client on every node of `config`, with CURVE when it has a security section
        (as `wiber.client.Client.from_config`); `options` as for __init__.

        Raises:
            CurveError: a security section and no client key, or a client key and no security section.
            KeyFileError: a key file is missing, unreadable or malformed.
        """
        options.setdefault("max_message_bytes", config.cluster.max_message_bytes)
        return cls([n.client_addr for n in config.nodes], timeouts, ctx, clock, **options,
                   **client_options(config_curve_keys(config, client_key)))

    @property
    def client_id(self) -> str:
        """The session's client_id (a new one after SESSION_EXPIRED)."""
        return self._inflight.client_id

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Requests of the pipeline awaiting their answer."""
        return len(self._inflight)

    # ---------------------------------------------------------------- links

    def _check_open(self, what: str) -> asyncio.AbstractEventLoop:
        """Returns: the running loop. Raises: ClientError: the client is closed, or bound to another loop."""
        if self._closed:
            raise ClientError(f"{what}: the client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise ClientError(f"{what}: this client belongs to another event loop")
        return loop

    def _open(self, kind: int, address: str, node_address: str | None = None,
              options: dict[int, int | bytes] | None = None) -> AioSocket:
        """Returns: a new socket of this client (`wiber.aio.sockets.open_socket`), closed by `close`.

        Raises: ClientError: the client is closed (its context may be gone), or libzmq refused it; CurveError.
        """
        if self._closed:
            raise ClientError(f"cannot open a socket for {address}: the client is closed")
        sock = open_socket(self._ctx, kind, address, self.curve, node_address, options)
        self._sockets.add(sock)
        return sock

    def _link(self, address: str) -> _Link:
        """Returns: the DEALER to `address`, made when there is none. Raises: CurveError, ClientError."""
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(self, address)
        return link

    def _drop_link(self, address: str) -> None:
        """Close the DEALER to `address` (the node went silent); pinned requests on it count as silent."""
        link = self._links.pop(address, None)
        if link is None:
            return
        link.close()
        for rid, (on, future) in list(self._direct.items()):
            if on is link and not future.done():
                future.set_result(None)

    def _on_body(self, link: _Link, body: bytes) -> None:
        """One reply from `link`: to the pinned request or the pipeline's try it answers (by `id`)."""
        try:
            reply = protocol.parse_reply(body)
        except WireError:
            return
        rid = reply.get("id")
        if type(rid) is int and rid < 0:
            pinned = self._direct.pop(rid, None)
            if pinned is not None and not pinned[1].done():
                pinned[1].set_result(reply)
            return
        slot = self._inflight.answered(rid)
        if slot is None:
            return  # an earlier try's answer, or a request that ended
        try:
            self._on_answer(slot, reply)
        except Exception:  # a bug here must not stop the reader: the request fails at its deadline
            log.exception("wiber.aio: handling the answer to %s failed", slot.plan.what)

    # ---------------------------------------------------------------- the pipeline

    async def _submit(self, what: str, msg: dict[str, Any], *, session: bool = False) -> dict[str, Any]:
        """Send `msg` through the pipeline until its plan ends it; with `session`, as a publish under the
        client's session. Returns: the ok reply. Raises: what the plan ends with."""
        loop = self._check_open(what)
        if session:
            await self._wait_room(loop, what)
        call = _Call(msg, loop.create_future(), floor=session and self._seqs is None)
        slot = self._inflight.add(what, call, loop.time(), session=session)
        try:
            if session:
                msg["client_id"], msg["seq"] = slot.client_id, slot.seq
            self._send(slot)
            self._arm()
        except BaseException:
            self._inflight.finish(slot)  # nobody would await its answer
            raise
        try:
            return await call.future
        except asyncio.CancelledError:
            self._inflight.finish(slot)  # withdrawn: a resend would store what nobody awaits
            self._wake_waiters()
            raise

    def _send(self, slot: Slot[_Call]) -> None:
        """Send a try of `slot` to the current node (unless the pipeline pauses: it goes at the resume)."""
        if self._hold is not None or self._closed:
            return
        address = self._current
        assert self._loop is not None
        call = slot.request
        msg = call.msg
        msg["id"] = self._inflight.sent(slot, self._loop.time(), address)
        if call.floor:
            msg["ack_floor"] = self._inflight.floor()
        call.wall = self.clock.wall()
        # The reused Packer keeps its largest buffer for good: only requests of ordinary size use it.
        small = msg["op"] != "PUB_BATCH" and len(msg.get("data", b"")) <= protocol.REUSED_PACKER_MAX_BYTES
        body = self._pack(msg) if small else protocol.pack(msg)
        try:
            link = self._link(address)
        except _LINK_ERRORS as exc:
            # The try stays "out": with no answer, silence moves the pipeline on, as for a dead node.
            self._link_error = str(exc)
            return
        if not link.send(body):
            log.debug("wiber.aio: %s did not take %s now; it goes again after the per-try timeout",
                      address, slot.plan.what)

    def _on_answer(self, slot: Slot[_Call], reply: dict[str, Any]) -> None:
        """A try of the pipeline was answered: end the request, or retry as its plan says."""
        call = slot.request
        if call.future.done():  # withdrawn (its caller was cancelled)
            self._inflight.finish(slot)
            return
        step = self._inflight.on_reply(slot, reply)
        if step.reply is not None:
            self._learn_time(call.wall, step.reply)
            call.future.set_result(step.reply)
        elif step.error is not None:
            call.future.set_exception(step.error)
        elif step.same:  # UNAVAILABLE: this request again at this node, after a pause
            assert self._loop is not None
            self._loop.call_later(step.pause_s, self._retry, slot)
            return
        else:
            self._follow(step)
            return
        self._wake_waiters()

    def _retry(self, slot: Slot[_Call]) -> None:
        """The pause after UNAVAILABLE is over: send `slot` again, unless it ended or went out meanwhile."""
        if not self._closed and self._inflight.contains(slot) and not slot.rid:
            self._send(slot)
            self._arm()

    def _follow(self, step: Next) -> None:
        """Move the pipeline as a NOT_LEADER or STORAGE answer's step says: to the leader it names, or
        to the next node (after the step's pause: an election)."""
        address = normalize_address(step.address) if step.address is not None else self._next_address()
        self._move(address, step.pause_s, close_old=False)

    def _next_address(self) -> str:
        """Returns: the next address in rotation other than the current one (when there is another)."""
        for _ in self.addresses:
            address = next(self._rotation)
            if address != self._current:
                return address
        return self._current

    def _move(self, address: str, pause_s: float, *, close_old: bool) -> None:
        """Make `address` the pipeline's node and send everything in flight there again, in order
        (after `pause_s`, when given). `close_old`: the old node went silent: close its socket."""
        old, self._current = self._current, address
        self.failovers += 1
        self._inflight.detach()
        if close_old:
            self._drop_link(old)
        log.info("wiber.aio: requests move from %s to %s%s", old, address,
                 f" in {pause_s * 1000:.0f} ms" if pause_s else "")
        if pause_s > 0:
            assert self._loop is not None
            if self._hold is not None:
                self._hold.cancel()
            self._hold = self._loop.call_later(pause_s, self._resume)
        else:
            self._resume()

    def _resume(self) -> None:
        """Send every request in flight that has no try out, in the order they were handed over."""
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        for slot in self._inflight.unsent():
            self._send(slot)
        self._arm()

    def _arm(self) -> None:
        """Have `_check` run when the oldest try's per-try timeout or the first deadline comes."""
        when = self._inflight.next_check()
        if when is None or self._loop is None or self._closed:
            return
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        """Fail the requests past their deadline; on silence, move the pipeline to the next node."""
        self._timer = None
        if self._closed or self._loop is None:
            return
        now = self._loop.time()
        expired = self._inflight.expire(now)
        for slot, error in expired:
            if not slot.request.future.done():
                slot.request.future.set_exception(error)
        if self._inflight.silent(now):
            link = self._links.get(self._current)
            refused = link.refused() if link is not None else self._link_error
            self._inflight.on_silence(refused)
            log.info("wiber.aio: no answer from %s within %g s, trying another node", self._current,
                     self.timeouts.per_try_s)
            self._move(self._next_address(), 0.0, close_old=True)
        if expired:
            self._wake_waiters()
        self._arm()

    async def _wait_room(self, loop: asyncio.AbstractEventLoop, what: str) -> None:
        """Wait until a new publish may take a seq (the window), in turn with the publishes waiting already."""
        if not self._waiters and self._inflight.room():
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            while True:
                await waiter
                if self._inflight.room():
                    return
                waiter = loop.create_future()
                self._waiters.appendleft(waiter)  # its turn again first
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            else:
                self._wake_waiters()  # it was woken: pass the turn on
            raise

    def _wake_waiters(self) -> None:
        """Wake as many waiting publishes as the window has room for."""
        waiters = self._waiters
        if not waiters:
            return
        free = self._inflight.free()
        while waiters and free > 0:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    # ---------------------------------------------------------------- pinned requests

    async def _request_at(self, address: str, op: str, what: str | None = None, total_s: float | None = None,
                          **fields: Any) -> dict[str, Any]:
        """Send one request to the node at `address` alone (retries as its `RetryPlan` says, never
        elsewhere), for up to `total_s` (default: the per-try timeout). Returns: the ok reply.

        Raises:
            WireError subclass: the node answered an error a retry there cannot fix (NotLeader naming
                another node among them).
            ClientError: no usable answer in time.
        """
        what = what or op
        loop = self._check_open(what)
        msg = self._build(op, fields)
        address = normalize_address(address)
        total = self.timeouts.per_try_s if total_s is None else total_s
        plan = RetryPlan(what, [address], loop.time() + total, total)
        while True:
            self._check_open(what)
            now = loop.time()
            expired = plan.expired(now)
            if expired is not None:
                assert expired.error is not None
                raise expired.error
            wall = self.clock.wall()
            reply, refused = await self._try_at(loop, address, msg, min(self.timeouts.per_try_s, plan.deadline - now))
            step = plan.on_silence(address, refused) if reply is None else plan.on_reply(reply)
            if step.reply is not None:
                self._learn_time(wall, step.reply)
                return step.reply
            if step.error is not None:
                raise step.error
            if step.address is not None and normalize_address(step.address) != address:
                assert plan.last_error is not None
                raise plan.last_error  # NOT_LEADER naming another node: this request is for this one
            if step.pause_s:
                await asyncio.sleep(max(0.0, min(step.pause_s, plan.deadline - loop.time())))

    async def _try_at(self, loop: asyncio.AbstractEventLoop, address: str, msg: dict[str, Any],
                      timeout: float) -> tuple[dict[str, Any] | None, str | None]:
        """One try at `address`. Returns: (the reply or None when none came within `timeout`, why a
        CURVE handshake failed, when one did)."""
        try:
            link = self._link(address)
        except _LINK_ERRORS as exc:
            await asyncio.sleep(max(0.0, timeout))
            return None, str(exc)
        rid = -next(self._direct_ids)
        future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._direct[rid] = (link, future)
        try:
            link.send(protocol.pack({**msg, "id": rid}))
            return await asyncio.wait_for(future, max(0.001, timeout)), None
        except asyncio.TimeoutError:
            return None, link.refused()
        finally:
            self._direct.pop(rid, None)

    # ---------------------------------------------------------------- requests

    def _build(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        msg = {"op": op, **{k: v for k, v in fields.items() if v is not None}}
        # Validate locally with the node's own rules: a bad request fails here, not after a round trip.
        protocol.validate_request(msg, self.limits)
        return msg

    async def request(self, op: str, _what: str | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request through the pipeline, with failover until the total deadline. Returns: the ok reply.

        `_what` names the request in errors, as the caller knows it (default: the op).

        Raises:
            WireError subclass: the cluster answered an error that a retry cannot fix.
            ClientError: no usable answer before the deadline, or the client is closed.
        """
        return await self._submit(_what or op, self._build(op, fields))

    async def request_to(self, address: str, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request to exactly one node (no failover). Returns: the ok reply.

        Raises:
            WireError subclass: the node answered an error.
            ClientError: no answer within the per-try timeout.
        """
        return await self._request_at(address, op, **fields)

    def _learn_time(self, sent_at: float, reply: dict[str, Any]) -> None:
        """Take the cluster time a reply carries as a clock sample, and the cluster's size limit."""
        stamp = reply.get("time", reply.get("ts"))
        if isinstance(stamp, float):
            if self.clock_offset.add(sent_at, stamp, stamp, self.clock.wall()) and self._synced_at is None:
                self._synced_at = time.monotonic()
        limit = reply.get("max_message_bytes")
        if type(limit) is int and limit > 0 and limit != self.limits.max_message_bytes:
            self.limits = protocol.Limits(max_message_bytes=limit)

    # ---------------------------------------------------------------- ops

    async def ping(self) -> dict[str, Any]:
        """Returns: the PONG of whichever node answered (node, role, term, leader, time)."""
        return await self.request("PING")

    async def status(self) -> dict[str, Any]:
        """Returns: STATUS of whichever node answered."""
        return await self.request("STATUS")

    async def status_all(self) -> dict[str, dict[str, Any] | BaseException]:
        """Returns: per address, its STATUS reply or the error that stood in the way (asked at once)."""
        answers = await asyncio.gather(*(self.request_to(a, "STATUS") for a in self.addresses), return_exceptions=True)
        out: dict[str, dict[str, Any] | BaseException] = {}
        for address, answer in zip(self.addresses, answers):
            if isinstance(answer, BaseException) and not isinstance(answer, (WireError, ClientError)):
                raise answer
            out[address] = answer
        return out

    async def sync_clock(self, samples: int = 5) -> float:
        """Estimate this client's offset to the cluster's clock from PINGs (NTP-style, min delay).

        Returns: the offset in seconds (cluster minus local).
        """
        for _ in range(samples):
            await self.request("PING", "clock sync (PING)")  # each PONG's time is a sample (_learn_time)
        self._synced_at = time.monotonic()
        return self.clock_offset.offset

    async def now(self) -> float:
        """Returns: the cluster's time as this client sees it (synced on first use, then every 30 s)."""
        if self._synced_at is None or time.monotonic() - self._synced_at > 30.0:
            await self.sync_clock()
        return self.clock.wall() + self.clock_offset.offset

    def _send_time(self) -> float | None:
        """Returns: the cluster's time now as far as replies have shown it, or None before any did."""
        if self._synced_at is None:
            return None
        return self.clock.wall() + self.clock_offset.offset

    def observe_lamport(self, lamport: int) -> None:
        """Advance this client's Lamport clock past a stamp it has seen."""
        if lamport > self.lamport:
            self.lamport = lamport

    def reserve_seq(self) -> int:
        """Returns: a seq of this client's session that no publish of this client has used or will use
        (for ``publish(..., dedup=(client.client_id, seq))`` across a restart; as the sync client's)."""
        return self._inflight.take_seq()

    async def publish(self, topic: str, data: bytes | str, ts: float | None = None, *,
                      dedup: tuple[str, int] | None = None) -> Ack:
        """Store one message and wait until a majority has it on disk. Returns: its Ack.

        As `wiber.client.Client.publish`: every retry reuses the seq, so the message is stored exactly
        once; `dedup` is a ``(client_id, seq)`` of the caller's instead of the session's; a `str` is sent
        as UTF-8; `ts` defaults to the cluster's time as replies have shown it (none before the first).

        Raises:
            SessionExpired: the session had expired (the client continues under a new one); the message
                says whether an earlier try may have stored it (check HISTORY) or nothing was stored.
            ClientError: no answer before the total deadline (the message may or may not be stored).
            BadRequest, TooLarge: the request itself is wrong.
        """
        payload = data.encode() if isinstance(data, str) else data
        fields: dict[str, Any] = {"topic": topic, "data": payload, "lamport": self.lamport or None,
                                  "ts": self._send_time() if ts is None else ts}
        what = f"publish to {topic!r}"
        if dedup is not None:
            fields["client_id"], fields["seq"] = dedup
            reply = await self._submit(what, self._build("PUB", fields))
        else:
            reply = await self._submit(what, self._build("PUB", fields), session=True)
        return self._acked(reply)

    async def publish_batch(self, topic: str, messages: Sequence[bytes]) -> Ack:
        """Store a batch at consecutive offsets, all or none, exactly once. Returns: its Ack."""
        msg = self._build("PUB_BATCH", {"topic": topic, "messages": list(messages), "lamport": self.lamport or None})
        return self._acked(await self._submit(f"{op_name('PUB_BATCH')} to {topic!r}", msg, session=True))

    def _acked(self, reply: dict[str, Any]) -> Ack:
        ack = Ack.from_reply(reply)
        self.observe_lamport(ack.lamport + ack.count - 1)
        return ack

    async def history(self, topic: str, from_offset: int | None = None, last: int | None = None, limit: int = 100,
                      consistency: str = "local") -> History:
        """Read stored messages of a topic in offset order (docs/design.md section 3 HISTORY)."""
        reply = await self.request("HISTORY", f"history of {topic!r}", topic=topic, from_offset=from_offset,
                                   last=last, limit=limit, consistency=consistency)
        return self._history_from(reply)

    def _history_from(self, reply: dict[str, Any]) -> History:
        topic = reply["topic"]
        messages = [Message.from_wire(topic, item) for item in reply["messages"]]
        if messages:
            self.observe_lamport(max(m.lamport for m in messages))
        return History(topic, messages, reply["next_offset"], reply["first_offset"], reply["end_offset"],
                       reply["commit_index"])

    async def topics(self, pattern: str | None = None) -> dict[str, int]:
        """Returns: every topic with its end offset, or only those `pattern` matches (``*``, a last ``>``)."""
        return dict((await self.request("TOPICS", pattern=pattern))["topics"])

    def subscribe(self, topic: str, from_offset: int | None = None) -> Subscription:
        """Returns: a Subscription delivering every message of `topic` once, in offset order: iterate it
        with ``async for`` (or ``await sub.get(timeout)``); it attaches on the first read.

        From `from_offset` (past messages first, from HISTORY), or only new ones when None. `topic` may
        be a pattern (``orders.*``, ``orders.>``): then every matching topic's messages come, each topic
        once and in offset order, as `wiber.client.PatternSubscription` delivers them. It stays subscribed
        until it is closed (``async with`` it, or `Subscription.close`) or the client closes.

        Raises: BadRequest when `topic` is neither a topic name nor a valid pattern.
        """
        if topics.is_pattern(topic):
            subscription: Subscription = PatternSubscription(self, topic, from_offset)
        else:
            subscription = Subscription(self, topic, from_offset)
        self._subscriptions.add(subscription)
        return subscription

    async def consumer(self, group: str, pattern: str, *, ack_wait_ms: int = protocol.ACK_WAIT_MS_DEFAULT,
                       from_start: bool = False, member: str | None = None) -> Consumer:
        """Returns: a member of durable consumer group `group`, created (on `pattern`) if new (as
        `wiber.client.Client.consumer`); iterate it with ``async for`` or `Consumer.fetch`.

        Raises: GroupConflict: the group exists with other settings; BadRequest: a bad argument.
        """
        consumer = Consumer(self, group, pattern, ack_wait_ms=ack_wait_ms, from_start=from_start, member=member)
        await consumer.create()
        return consumer

    async def groups(self) -> dict[str, dict[str, Any]]:
        """Returns: per consumer group, its pattern, ack_wait_ms, from_start, topics, pending and lag."""
        return dict((await self.request("GROUPS"))["groups"])

    # ---------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Close this client's subscriptions and sockets (and the context if the client made it).

        Requests still awaiting an answer fail with ClientError; subscriptions end (their ``async for``
        stops). Never waits on the network.
        """
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.close()
        for handle in (self._timer, self._hold):
            if handle is not None:
                handle.cancel()
        self._timer = self._hold = None
        for slot in self._inflight.drain():
            if not slot.request.future.done():
                slot.request.future.set_exception(ClientError(f"{slot.plan.what}: the client was closed first"))
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ClientError("publish: the client was closed first"))
        self._waiters.clear()
        tasks = [link.task for link in self._links.values()]
        for address in list(self._links):
            self._drop_link(address)
        for sock in list(self._sockets):
            sock.close()  # whatever is left (a subscription's socket opened while closing): a context
        if tasks:         # cannot terminate while a socket of it is open
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_ctx:
            self._ctx.destroy(linger=0)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


