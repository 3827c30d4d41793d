"""Requests in flight on one pipelined connection: seqs, ack_floor, tries on the wire, in-order resend.

Sans-I/O, as `wiber.client.retry` is: an `InFlight` table is told what happened (a request handed
over, a try sent, a reply, silence, the time) and answers with what to do; the caller owns the
socket, the clock and the waiting. `wiber.aio.Client` drives one over a DEALER with many requests in
flight, and `wiber.client.publisher.Publisher` over its DEALER with ordered pipelining (every
request in flight sent again, in order, after any refusal).

The rules (docs/design.md section 3, "Sessions"):

* every request has its own `RetryPlan` (the one retry policy of the sync and asyncio clients): a
  reply or silence is fed to it, and it says whether the request ended or where to try next;
* a publish under this client's session takes the next `seq` of its `client_id`; every try of it
  carries the same seq, so the cluster stores it once. `floor` (the request's ``ack_floor``) is the
  lowest seq still awaiting its answer, never above a seq of this client that is unanswered;
* seqs still unanswered never span more than `window` (the cluster keeps the answers of at most
  `session_window` seqs per client, 4,096 by default; a seq that fell out of that would be refused
  as SESSION_EXPIRED on a resend): `room` says whether a new one may be taken;
* a try gets a fresh wire `id` (`Slot.rid`): a late answer to an earlier try is not mistaken for
  the current one's;
* when the connection moves (silence, NOT_LEADER, STORAGE), `detach` takes every try off the wire
  (their answers will be dropped, so each such request's outcome is unknown: an earlier try may
  have stored it) and `unsent` lists every request, in the order they were handed over (publishes
  in seq order), to be sent again to the next node, which stores them in that order;
* SESSION_EXPIRED ends the session: new publishes go out under a new client_id (the ones in flight
  keep theirs, so their resends stay deduplicated), and the refused one fails with `SessionExpired`
  saying whether an earlier try may have stored it; it is never resent under the new session.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from wiber.client.retry import Next, RetryPlan
from wiber.client.values import Timeouts
from wiber.errors import SessionExpired

__all__ = ["DEFAULT_WINDOW", "InFlight", "MAX_WINDOW", "Slot"]

log = logging.getLogger(__name__)

#: The broker's default session_window: seqs still unanswered never span more than this.
MAX_WINDOW = 4096
#: Seqs unanswered at once unless the caller says otherwise (as `wiber.client.publisher.Publisher`'s window).
DEFAULT_WINDOW = 1000

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Slot(Generic[T]):
    """One request in flight: the caller's `request`, its retry plan, its session (client_id, seq) when
    it is a publish under the client's session, and its try on the wire (`rid` 0: none is)."""

    key: int
    request: T
    plan: RetryPlan
    client_id: str | None = None
    seq: int | None = None
    rid: int = 0
    """The wire id of the try now out, 0 when none is (waiting to be sent, or for a retry's pause)."""
    sent_at: float = 0.0
    address: str = ""
    """Where the try now out (or the last one) went."""
    attempts: int = 0


class InFlight(Generic[T]):
    """The requests of one client in flight (see the module docstring).

    `addresses` and `timeouts` are the client's (each request's `RetryPlan` is made from them, its
    deadline `timeouts.total_s` after it is handed over); `client_id` is the session's (a random one
    when None), its first seq `first_seq`; `reserve` is called with each seq before it is used (a
    seq file's reservation); `window` bounds the span of unanswered seqs (at most `MAX_WINDOW`).

    Raises:
        ValueError: `window` is not 1 to `MAX_WINDOW`.
    """

    def __init__(self, addresses: list[str], timeouts: Timeouts, *, client_id: str | None = None,
                 first_seq: int = 1, reserve: Callable[[int], None] | None = None,
                 window: int = DEFAULT_WINDOW) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW} (the cluster's default session_window), got {window}")
        self.addresses = addresses
        self.timeouts = timeouts
        self.client_id = client_id if client_id is not None else uuid.uuid4().hex
        self.window = window
        self._seq = first_seq - 1
        self._reserve = reserve
        self._keys = itertools.count(1)
        self._ids = itertools.count(1)
        self._slots: OrderedDict[int, Slot[T]] = OrderedDict()  # by key: the order handed over
        self._sessions: OrderedDict[int, Slot[T]] = OrderedDict()  # by seq, ascending
        self._wire: OrderedDict[int, Slot[T]] = OrderedDict()  # by rid: the order the tries left

    def __len__(self) -> int:
        return len(self._slots)

    # ------------------------------------------------------------------ seqs

    def take_seq(self) -> int:
        """Returns: the next seq of this client's session (reserved first, when a `reserve` was given)."""
        seq = self._seq + 1
        if self._reserve is not None:
            self._reserve(seq)
        self._seq = seq
        return seq

    @property
    def last_seq(self) -> int:
        """The highest seq taken so far (first_seq - 1 before any)."""
        return self._seq

    def floor(self, client_id: str | None = None) -> int | None:
        """Returns: the lowest seq still awaiting its answer (a request's ``ack_floor``), or None when
        no publish of the session is in flight. With `client_id`, the lowest under that client_id: after
        SESSION_EXPIRED the old session's requests may still be ahead of the new one's, and a node starts
        an ``ordered`` session at its ack_floor, so each session's requests carry their own."""
        for seq, slot in self._sessions.items():
            if client_id is None or slot.client_id == client_id:
                return seq
        return None

    def free(self) -> int:
        """Returns: how many new publishes may take a seq now: the unanswered ones then span at most `window`."""
        for floor in self._sessions:  # the lowest (as `floor()`, without the call: once per request)
            return self.window - (self._seq + 1 - floor)
        return self.window

    def room(self) -> bool:
        """Returns: whether a new publish may take a seq now (`free` is positive)."""
        for floor in self._sessions:
            return self._seq + 1 - floor < self.window
        return True

    # ------------------------------------------------------------------ requests

    def add(self, what: str, request: T, now: float, *, session: bool = False) -> Slot[T]:
        """Hand over a request named `what` (in errors) at `now`; with `session`, a publish under this
        client's session: it takes the next seq (read `Slot.client_id`, `Slot.seq`).

        Returns: its slot (not on the wire yet: `sent` it)."""
        total = self.timeouts.total_s
        slot = Slot(next(self._keys), request, RetryPlan(what, self.addresses, now + total, total))
        if session:
            slot.client_id = self.client_id
            if self._reserve is None:  # `take_seq` without the call: once per request
                self._seq = seq = self._seq + 1
            else:
                seq = self.take_seq()
            slot.seq = seq
            self._sessions[seq] = slot
        self._slots[slot.key] = slot
        return slot

    def sent(self, slot: Slot[T], now: float, address: str) -> int:
        """Record a try of `slot` leaving for `address` at `now`. Returns: the try's wire id."""
        if slot.rid:
            del self._wire[slot.rid]
        slot.rid = next(self._ids)
        slot.sent_at = now
        slot.address = address
        slot.attempts += 1
        self._wire[slot.rid] = slot
        return slot.rid

    def answered(self, rid: Any) -> Slot[T] | None:
        """Returns: the slot whose try now out has wire id `rid` (taken off the wire), or None: an
        answer to an earlier try, to a request that ended, or to none of ours."""
        slot = self._wire.pop(rid, None) if type(rid) is int else None
        if slot is not None:
            slot.rid = 0
        return slot

    def on_reply(self, slot: Slot[T], reply: dict[str, Any]) -> Next:
        """`slot`'s try (see `answered`) got `reply`. Returns: its plan's next step; when the step ends
        the request, the slot has left the table. SESSION_EXPIRED of a session publish ends the session
        (see the module docstring) and the step's error says whether an earlier try may have stored it."""
        step = slot.plan.on_reply(reply)
        if step.done:
            self.finish(slot)
            if isinstance(step.error, SessionExpired) and slot.seq is not None and slot.client_id is not None:
                return Next(error=self._session_expired(slot, step.error))
        return step

    def _session_expired(self, slot: Slot[T], err: SessionExpired) -> SessionExpired:
        """Returns: the error a publish refused as SESSION_EXPIRED fails with; starts a new session."""
        expired_id = slot.client_id
        if expired_id == self.client_id:
            self.client_id = uuid.uuid4().hex
            log.info("client %s: session expired; continuing as %s", expired_id, self.client_id)
        what = slot.plan.what
        if slot.plan.outcome_unknown:
            return SessionExpired(f"{what}: the session of client {expired_id!r} had expired when a retry arrived, "
                                  f"and an earlier try may or may not have stored it: check HISTORY (the client "
                                  f"now uses a new session) [{err}]")
        return SessionExpired(f"{what} refused: the session of client {expired_id!r} had expired when it "
                              f"arrived, so this try stored nothing; publish it again (the client now uses a new "
                              f"session)")

    def on_silence(self, refused: str | None = None) -> list[Slot[T]]:
        """The oldest try on the wire went unanswered for the per-try timeout: the node is taken for
        dead, and every try on the wire with it (`refused`: why a CURVE handshake failed, if one did).
        Returns: those slots, now off the wire (resend them, with the rest, after moving: `unsent`)."""
        silent = list(self._wire.values())
        for slot in silent:
            slot.plan.on_silence(slot.address, refused)
        self.detach()
        return silent

    def detach(self) -> None:
        """Take every try off the wire (the connection moves): their answers, if any come, are dropped,
        so each of those requests' outcome is unknown (a SESSION_EXPIRED on its resend says so)."""
        for slot in self._wire.values():
            slot.rid = 0
            slot.plan.outcome_unknown = True
        self._wire.clear()

    def unsent(self) -> list[Slot[T]]:
        """Returns: every request without a try on the wire, in the order they were handed over."""
        return [slot for slot in self._slots.values() if not slot.rid]

    def finish(self, slot: Slot[T]) -> None:
        """Take `slot` out of the table, however it ended."""
        if self._slots.pop(slot.key, None) is None:
            return
        if slot.rid:
            self._wire.pop(slot.rid, None)
            slot.rid = 0
        if slot.seq is not None:
            self._sessions.pop(slot.seq, None)

    def contains(self, slot: Slot[T]) -> bool:
        """Returns: whether `slot` is still in flight."""
        return slot.key in self._slots

    # ------------------------------------------------------------------ time

    def expire(self, now: float) -> list[tuple[Slot[T], BaseException]]:
        """Returns: the requests whose total deadline passed by `now`, each with the `ClientError` its
        plan gives up with; they have left the table. (Deadlines follow the order requests are handed
        over in: each is `timeouts.total_s` after it, so only the front is looked at.)"""
        out: list[tuple[Slot[T], BaseException]] = []
        while self._slots:
            slot = next(iter(self._slots.values()))
            step = slot.plan.expired(now)
            if step is None:
                break
            assert step.error is not None
            self.finish(slot)
            out.append((slot, step.error))
        return out

    def silent(self, now: float) -> bool:
        """Returns: whether the oldest try on the wire has gone unanswered for the per-try timeout."""
        oldest = next(iter(self._wire.values()), None)
        return oldest is not None and now - oldest.sent_at >= self.timeouts.per_try_s

    def next_check(self) -> float | None:
        """Returns: when `expire` or `silent` may next have something to say, or None with nothing in flight."""
        first = next(iter(self._slots.values()), None)
        if first is None:
            return None
        when = first.plan.deadline
        oldest = next(iter(self._wire.values()), None)
        if oldest is not None:
            when = min(when, oldest.sent_at + self.timeouts.per_try_s)
        return when

    def drain(self) -> list[Slot[T]]:
        """Returns: every request in flight, in order, all taken out of the table (the client closes)."""
        slots = list(self._slots.values())
        self._slots.clear()
        self._sessions.clear()
        self.detach()
        return slots
