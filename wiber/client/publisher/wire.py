"""The Publisher's side of the wire: one DEALER to the current node, the requests in flight on it,
and leader following.

What to do is decided sans-I/O, by the table and policy the asyncio client shares
(`wiber.client.inflight.InFlight`, each request's `wiber.client.retry.RetryPlan`): seqs of the
publisher's session, each request's ``ack_floor``, the window (unanswered seqs span at most
`window`, so a resend never meets SESSION_EXPIRED), a fresh wire ``id`` per try, expiry past
`Timeouts.total_s`, silence past `Timeouts.per_try_s`, where a refused request goes next, and what
SESSION_EXPIRED means. `Wire` does the I/O those answers ask for.

Ordered pipelining (docs/design.md section 3, the ``ordered`` field): every request goes out
``ordered``, carrying its client_id's lowest seq in flight as ``ack_floor``, so a node stores it only
as its session's next seq. Whenever one request is refused (NOT_LEADER, UNAVAILABLE, STORAGE,
OUT_OF_SEQUENCE) or the oldest try goes unanswered, the socket is closed and every request in flight
is sent again, in seq order, with the same seqs (to the leader named, the same node, or the next
one, as the plan says): the node's session answers those already stored with their first answer
(``duplicate: True``), so each message is stored once and in the order handed in. And nothing goes
out on a connection after an earlier request that could not be sent on it (`_stalled`): a later seq
must never reach a node before an earlier one.

`Wire` is used only by the thread that does the publisher's I/O (its I/O thread, or the caller's in
the single-threaded mode); it resolves the requests' futures there.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable

import msgpack
import zmq

from wiber import protocol, zmqcalls
from wiber.client.curve import CurveKeys, HandshakeWatch, client_socket, close_client_socket
from wiber.client.inflight import InFlight, Slot
from wiber.client.publisher.batching import Request
from wiber.client.values import Timeouts, normalize_address
from wiber.errors import WireError

__all__ = ["Wire", "ZERO_COPY_BYTES"]

log = logging.getLogger(__name__)

#: Frames at least this large are sent without copying.
ZERO_COPY_BYTES = 1 << 18


class Wire:
    """The DEALER to the current node and the requests in flight on it (see the module docstring).

    `addresses` are the nodes' (normalized), tried in rotation from the first; `window` bounds the
    span of unanswered seqs; `ctx` makes the sockets, with CURVE when `curve` is given.
    """

    def __init__(self, addresses: list[str], timeouts: Timeouts, window: int,
                 ctx: zmq.Context[zmq.Socket[bytes]], curve: CurveKeys | None) -> None:
        self.inflight: InFlight[Request] = InFlight(addresses, timeouts, window=window)
        self._what: dict[str, str] = {}  # topic -> how its requests are named in errors (made once)
        self.ctx = ctx
        self.curve = curve
        self._rotation = itertools.cycle(addresses)
        self.address = next(self._rotation)
        self.sock: zmq.Socket[bytes] | None = None
        self._watch: HandshakeWatch | None = None
        # One poller per socket: Socket.poll builds and registers a new Poller on every call, and a
        # loaded publisher polls a few thousand times a second (measured: 0.2-1.0 us less CPU per
        # message in three pairs).
        self._poller = zmq.Poller()
        # One Packer for good: packb makes one per call.
        self._pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
        self._stalled = False  # a request could not be sent on this socket: none after it may go out on it
        self.lamport = 0
        """The highest lamport of this publisher's acknowledged messages (sent with each request)."""
        self.resends = 0
        self.failovers = 0

    # ---------------------------------------------------------------- sending

    def socket(self) -> zmq.Socket[bytes]:
        """Returns: the DEALER to the current node, made and connected when there is none."""
        if self.sock is None:
            sock, self._watch = client_socket(self.ctx, zmq.DEALER, self.address, self.curve)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.connect(self.address)
            self.sock = sock
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
        return self.sock

    def wait_room(self) -> None:
        """Wait until the window has room for one more request, reading replies meanwhile (the
        single-threaded mode, or a callback on the I/O thread, may find it full)."""
        while not self.inflight.room():
            self.read_replies(0.01)
            self.check_timeouts()

    def send(self, request: Request) -> None:
        """Send one PUB or PUB_BATCH under the next seq (the window has room: see `wait_room`)."""
        what = self._what.get(request[0])
        if what is None:
            what = self._what[request[0]] = f"publish to {request[0]!r}"
        self._transmit(self.inflight.add(what, request, time.monotonic(), session=True))

    def _transmit(self, slot: Slot[Request]) -> None:
        """Send one try of `slot` on the socket (made if need be), unless an earlier request could not
        be sent on it: a later seq must never reach a node before an earlier one of this publisher."""
        # The per-try clock runs from here, sent or not: an unsent try goes again after the per-try
        # timeout, as an unanswered one does.
        inflight = self.inflight
        rid = inflight.sent(slot, time.monotonic(), self.address)
        if self._stalled:
            return
        topic, messages, _ = slot.request
        msg: dict[str, Any] = {"topic": topic, "client_id": slot.client_id, "seq": slot.seq,
                               "ack_floor": inflight.floor(slot.client_id), "ordered": True, "id": rid}
        if self.lamport:
            msg["lamport"] = self.lamport
        if len(messages) == 1:
            msg["op"] = "PUB"
            msg["data"] = messages[0]
            size = len(messages[0])
        else:
            msg["op"] = "PUB_BATCH"
            msg["messages"] = messages
            size = sum(map(len, messages))
        # The reused Packer keeps its largest buffer for good: only requests of ordinary size use it.
        body = self._pack(msg) if size <= protocol.REUSED_PACKER_MAX_BYTES else protocol.pack(msg)
        sock = self.sock or self.socket()
        # Never blocking: a DEALER with no connection (a node that refused this client's key ends
        # it for good) would block a send forever. Unsent, the request stays in flight and goes
        # to the next node after the per-try timeout, as an unanswered one does.
        try:
            zmqcalls.send(sock, b"", zmqcalls.MORE_NOBLOCK)
        except zmq.Again:
            log.debug("publisher: no connection to %s to send seq %s on", self.address, slot.seq)
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
            log.debug("publisher: the connection to %s ended while sending seq %s", self.address, slot.seq)
            self._stalled = True

    def resend_all(self, address: str | None) -> None:
        """Reconnect (to `address`, or the next node) and send every request in flight again, in the
        order handed over (seq order); those past their total deadline fail instead."""
        self.close_socket()
        self._stalled = False
        self.address = normalize_address(address) if address else next(self._rotation)
        self.failovers += 1
        inflight = self.inflight
        inflight.detach()
        self._expire(time.monotonic())
        for slot in inflight.unsent():
            self.resends += 1
            self._transmit(slot)

    def close_socket(self) -> None:
        """Close the socket (its handshake watch first), if one is open."""
        close_client_socket(self.sock, self._watch)
        self.sock, self._watch = None, None

    # ---------------------------------------------------------------- receiving

    def read_replies(self, timeout_s: float) -> None:
        """Read the replies that arrived (waiting up to `timeout_s` for the first): resolve the futures
        of those answered, and follow the first refusal (everything in flight goes again, in order)."""
        sock = self.sock
        inflight = self.inflight
        if sock is None or not len(inflight):
            return
        if not self._poller.poll(int(timeout_s * 1000)):
            return
        while True:
            try:
                first = zmqcalls.recv(sock, zmqcalls.NOBLOCK)  # [b"", reply] per the contract
                body = zmqcalls.recv(sock, zmqcalls.NOBLOCK) if first == b"" else first
            except zmq.Again:
                return
            try:
                reply = protocol.parse_reply(body)
            except WireError:
                continue
            if self.on_reply(reply):
                return  # the socket was replaced: the rest of this one's replies are for tries taken back

    def on_reply(self, reply: dict[str, Any]) -> bool:
        """Handle one parsed reply.

        Returns: whether every request in flight was sent again (on a new socket)."""
        inflight = self.inflight
        slot = inflight.answered(reply.get("id"))
        if slot is None:
            return False  # an answer to an earlier try, or to a request that ended
        if reply["ok"]:  # the common case, without the plan: an ok reply always ends a request
            inflight.finish(slot)
            futures = slot.request[2]
            last_lamport = reply["lamport"] + len(futures) - 1
            if last_lamport > self.lamport:
                self.lamport = last_lamport
            for i, future in enumerate(futures):
                future._resolve(reply, i, None)
            return False
        step = inflight.on_reply(slot, reply)
        if step.done:  # SESSION_EXPIRED (a new session follows), BAD_REQUEST, TOO_LARGE: final
            self.fail(slot.request, step.error)
            return False
        # NOT_LEADER, UNAVAILABLE, STORAGE, OUT_OF_SEQUENCE: later seqs cannot be stored before this
        # one, so everything in flight goes again, in order, where the plan says.
        time.sleep(step.pause_s)  # 0 yields; an election or a node's trouble gets a short pause
        self.resend_all(step.address if step.address is not None else self.address if step.same else None)
        return True

    def check_timeouts(self) -> None:
        """Fail the requests past their total deadline; when the oldest try has gone unanswered for the
        per-try timeout, take the node for dead and send everything in flight to the next one."""
        inflight = self.inflight
        if not len(inflight):
            return
        now = time.monotonic()
        self._expire(now)
        if inflight.silent(now):
            log.info("publisher: no answer from %s within %.1f s, trying another node",
                     self.address, inflight.timeouts.per_try_s)
            refused = self._watch.check() if self._watch is not None else None
            inflight.on_silence(refused)
            self.resend_all(None)

    def next_check(self) -> float | None:
        """Returns: when `check_timeouts` may next have something to do, or None with nothing in flight."""
        return self.inflight.next_check()

    def _expire(self, now: float) -> None:
        for slot, error in self.inflight.expire(now):
            self.fail(slot.request, error)

    # ---------------------------------------------------------------- outcomes

    @staticmethod
    def fail(request: Request, error: BaseException | None) -> None:
        """Fail every message of `request` with `error`."""
        for future in request[2]:
            future._resolve(None, 0, error)

    def abandon(self, error: BaseException) -> None:
        """Fail every request in flight with `error` (the publisher closes)."""
        for slot in self.inflight.drain():
            self.fail(slot.request, error)
