"""The asyncio client's pipeline: every request that may move between nodes, many in flight at the
client's current node at once, with failover.

Its bookkeeping is sans-I/O (`wiber.client.inflight.InFlight`), and each request's retries follow
`wiber.client.retry.RetryPlan`, the policy of the sync `Client` too: NOT_LEADER moves the pipeline to
the leader it names, or, in an election, to the next node after a pause; STORAGE to the next node;
UNAVAILABLE retries that request at the same node after a pause; a try unanswered within
`Timeouts.per_try_s` makes the node count as dead (the zguide's Lazy Pirate: its socket is closed)
and the pipeline moves to the next node; past `Timeouts.total_s` a request fails with `ClientError`
naming the operation. Whenever the pipeline moves, every request in flight is sent again to the new
node in the order it was first handed over, publishes in seq order.

Exactly once: publishes under the client's session carry its `client_id`, their own `seq` (reused by
every retry) and ``ack_floor``, the lowest seq still awaiting its answer; the unanswered seqs never
span more than `window` (further publishes wait for room), so the cluster keeps every answer a
resend may need. A publish awaited before the next one starts is stored before it; publishes of
different tasks may interleave. SESSION_EXPIRED ends the session as in the sync client.

This module holds the timers and futures around that table: one timer for the earliest per-try
timeout or deadline (`_arm`), a pause after an election answer (`_hold`), and the publishes waiting
for room in the window. The sockets are `wiber.aio.links`'.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from wiber import protocol
from wiber.aio.links import LINK_ERRORS, Links
from wiber.client.inflight import InFlight, Slot
from wiber.client.retry import Next
from wiber.client.values import Timeouts, normalize_address
from wiber.clock import Clock
from wiber.errors import ClientError

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Call:
    """A request of the pipeline: its map (``id`` and ``ack_floor`` set on each try) and who awaits it."""

    msg: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    floor: bool = False
    """Whether each try carries the session's ``ack_floor``."""
    wall: float = field(default=0.0)
    """This client's wall clock when the try now out left (a clock sample with the reply's time)."""


class Pipeline:
    """The requests in flight at the current node (see the module docstring).

    `learn_time(sent_at, reply)` is told of every ok reply with the wall clock its try left at. The
    session (`client_id`, `first_seq`, `reserve`, `window`) is as for `InFlight`; `ack_floor`: whether
    publishes carry it (not when seqs come from a seq file: seqs reserved for the caller may still be
    outstanding).
    """

    def __init__(self, addresses: Sequence[str], timeouts: Timeouts, links: Links, clock: Clock,
                 learn_time: Callable[[float, dict[str, Any]], None], *, client_id: str | None, first_seq: int,
                 reserve: Callable[[int], None] | None, window: int, ack_floor: bool) -> None:
        self.addresses = list(addresses)
        self._timeouts = timeouts
        self._links = links
        self._clock = clock
        self._learn_time = learn_time
        self.inflight: InFlight[_Call] = InFlight(self.addresses, timeouts, client_id=client_id,
                                                  first_seq=first_seq, reserve=reserve, window=window)
        """The requests in flight, their seqs and retries (sans-I/O)."""
        self._ack_floor = ack_floor
        self._rotation = itertools.cycle(self.addresses)
        self.current = next(self._rotation)
        """The node requests go to now."""
        self._link_error: str | None = None  # why the last link could not be made, said on silence
        self._waiters: deque[asyncio.Future[None]] = deque()  # publishes waiting for room in the window
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._hold: asyncio.TimerHandle | None = None  # the pipeline pauses (an election) until it fires
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
        self._closed = False
        self.failovers = 0
        """How often the pipeline moved to another node."""

    async def submit(self, loop: asyncio.AbstractEventLoop, what: str, msg: dict[str, Any], *,
                     session: bool = False) -> dict[str, Any]:
        """Send `msg` until its plan ends it; with `session`, as a publish under the client's session.

        Returns: the ok reply. Raises: what the plan ends with (`what` names the request in errors)."""
        self._loop = loop
        if session:
            await self._wait_room(loop)
        call = _Call(msg, loop.create_future(), floor=session and self._ack_floor)
        slot = self.inflight.add(what, call, loop.time(), session=session)
        try:
            if session:
                msg["client_id"], msg["seq"] = slot.client_id, slot.seq
            self._send(slot)
            self._arm()
        except BaseException:
            self.inflight.finish(slot)  # nobody would await its answer
            raise
        try:
            return await call.future
        except asyncio.CancelledError:
            self.inflight.finish(slot)  # withdrawn: a resend would store what nobody awaits
            self._wake_waiters()
            raise

    def _send(self, slot: Slot[_Call]) -> None:
        """Send a try of `slot` to the current node (unless the pipeline pauses: it goes at the resume)."""
        if self._hold is not None or self._closed:
            return
        address = self.current
        assert self._loop is not None
        call = slot.request
        msg = call.msg
        msg["id"] = self.inflight.sent(slot, self._loop.time(), address)
        if call.floor:
            msg["ack_floor"] = self.inflight.floor()
        call.wall = self._clock.wall()
        # The reused Packer keeps its largest buffer for good: only requests of ordinary size use it.
        small = msg["op"] != "PUB_BATCH" and len(msg.get("data", b"")) <= protocol.REUSED_PACKER_MAX_BYTES
        body = self._pack(msg) if small else protocol.pack(msg)
        try:
            link = self._links.get(address)
        except LINK_ERRORS as exc:
            # The try stays "out": with no answer, silence moves the pipeline on, as for a dead node.
            self._link_error = str(exc)
            return
        if not link.send(body):
            log.debug("wiber.aio: %s did not take %s now; it goes again after the per-try timeout",
                      address, slot.plan.what)

    def on_reply(self, reply: dict[str, Any]) -> None:
        """A reply for the pipeline (parsed, not a pinned request's): to the try it answers, by `id`."""
        slot = self.inflight.answered(reply.get("id"))
        if slot is None:
            return  # an earlier try's answer, or a request that ended
        try:
            self._on_answer(slot, reply)
        except Exception:  # a bug here must not stop the reader: the request fails at its deadline
            log.exception("wiber.aio: handling the answer to %s failed", slot.plan.what)

    def _on_answer(self, slot: Slot[_Call], reply: dict[str, Any]) -> None:
        """A try of the pipeline was answered: end the request, or retry as its plan says."""
        call = slot.request
        if call.future.done():  # withdrawn (its caller was cancelled)
            self.inflight.finish(slot)
            return
        step = self.inflight.on_reply(slot, reply)
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
        if not self._closed and self.inflight.contains(slot) and not slot.rid:
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
            if address != self.current:
                return address
        return self.current

    def _move(self, address: str, pause_s: float, *, close_old: bool) -> None:
        """Make `address` the pipeline's node and send everything in flight there again, in order
        (after `pause_s`, when given). `close_old`: the old node went silent: close its socket."""
        old, self.current = self.current, address
        self.failovers += 1
        self.inflight.detach()
        if close_old:
            self._links.drop(old)
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
        for slot in self.inflight.unsent():
            self._send(slot)
        self._arm()

    def _arm(self) -> None:
        """Have `_check` run when the oldest try's per-try timeout or the first deadline comes."""
        when = self.inflight.next_check()
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
        expired = self.inflight.expire(now)
        for slot, error in expired:
            if not slot.request.future.done():
                slot.request.future.set_exception(error)
        if self.inflight.silent(now):
            refused = self._links.refused(self.current) if self._links.has(self.current) else self._link_error
            self.inflight.on_silence(refused)
            log.info("wiber.aio: no answer from %s within %g s, trying another node", self.current,
                     self._timeouts.per_try_s)
            self._move(self._next_address(), 0.0, close_old=True)
        if expired:
            self._wake_waiters()
        self._arm()

    async def _wait_room(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until a new publish may take a seq (the window), in turn with the publishes waiting already."""
        if not self._waiters and self.inflight.room():
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            while True:
                await waiter
                if self.inflight.room():
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
        free = self.inflight.free()
        while waiters and free > 0:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def close(self) -> None:
        """Stop the timers and fail every request in flight and every publish waiting for room with
        ClientError. Never waits."""
        self._closed = True
        for handle in (self._timer, self._hold):
            if handle is not None:
                handle.cancel()
        self._timer = self._hold = None
        for slot in self.inflight.drain():
            if not slot.request.future.done():
                slot.request.future.set_exception(ClientError(f"{slot.plan.what}: the client was closed first"))
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ClientError("publish: the client was closed first"))
        self._waiters.clear()
