"""`Client`: requests to a Wiber cluster with failover, exactly-once publishing and a Lamport clock.

`Client` sends one request at a time over a REQ socket. A request that gets no answer within the
per-try timeout closes and reopens the socket and tries the next address (the zguide's Lazy
Pirate), until the overall deadline; a NOT_LEADER answer is followed to the leader it names, and
UNAVAILABLE or STORAGE answers are retried (elsewhere, for STORAGE).

Exactly-once publishing: a Client has a random `client_id` and numbers its publishes `seq` 1, 2,
3, ...; every retry of one publish carries the same seq, so the broker stores it at most once and
answers a retry with the first answer (`duplicate: True`). One `publish()` call that returns has
stored exactly one message. When the cluster has evicted the session (SESSION_EXPIRED), the call
raises `SessionExpired` and the client continues under a new `client_id`.

Lamport clock: the client keeps one, advanced by every stamp it sees (PUB replies, HISTORY and
subscribed messages), and sends it with each PUB, so "B saw A's message, then published" gives B
the larger stamp (docs/design.md section 5).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import zmq

from wiber import protocol, topics, zmqcalls
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
from wiber.client.consumer import Consumer
from wiber.client.retry import RetryPlan
from wiber.client.seqfile import SeqFile
from wiber.config.model import MAX_MESSAGE_BYTES_LIMIT
from wiber.client.subscription import PatternSubscription, Subscription
from wiber.client.values import Ack, History, Message, Timeouts, normalize_address, pause
from wiber.clock import Clock, OffsetEstimator, SystemClock, skew_from_env
from wiber.errors import (
    ClientError,
    SessionExpired,
    WireError,
    error_from_reply,
)

if TYPE_CHECKING:
    from wiber.config import Config

log = logging.getLogger(__name__)


class Client:
    """A connection to a cluster, given the client addresses of some or all of its nodes.

    With `client_key` (the path of a `.key_secret` file, or a (public, secret) pair) and
    `server_keys` (each node's public key by its client address; PUB addresses too, or a node's
    PUB socket is taken to have the key of the node that named it), every socket is a CURVE
    client; with `server_keys` alone, `WIBER_KEY` names the key file. `Client.from_config` reads
    the nodes' keys from the config's keys_dir. Without keys: plain TCP.

    Safe to share between threads: requests take turns on its one socket (for many requests in
    flight at once, use `wiber.publisher.Publisher`). `client_id` with `seq_file` gives the client a
    fixed session that survives a restart (`reserve_seq`); `max_message_bytes` is the cluster's
    limit when known in advance (else learned from a PONG; the node checks either way).

    Raises:
        CurveError: keys that do not fit (a client key without node keys, or the reverse).
        KeyFileError: the client's key file is missing, unreadable or malformed.
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeouts: Timeouts | None = None,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        clock: Clock | None = None,
        *,
        client_key: KeySource | None = None,
        server_keys: Mapping[str, bytes] | None = None,
        client_id: str | None = None,
        seq_file: str | os.PathLike[str] | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        self.addresses = [normalize_address(a) for a in addresses]
        if not self.addresses:
            raise ValueError("Client needs at least one node address")
        self.curve: CurveKeys | None = curve_keys(client_key, server_keys)
        self._watch: HandshakeWatch | None = None
        self._silence: str | None = None  # why the last try got no answer, when a handshake failed
        self.clock: Clock = clock or SystemClock(skew_from_env())
        self.clock_offset = OffsetEstimator()
        self._synced_at: float | None = None
        self.timeouts = timeouts or Timeouts()
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._rotation = itertools.cycle(range(len(self.addresses)))
        self._current = self.addresses[next(self._rotation)]
        self._sock: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        if client_id is not None and seq_file is None:
            raise ValueError("a fixed client_id needs seq_file: a restarted client that numbered its publishes "
                             "from 1 again would have new messages taken for retries of old ones (and dropped)")
        self.client_id = client_id if client_id is not None else uuid.uuid4().hex
        self._seqs = SeqFile(seq_file) if seq_file is not None else None
        self._seq = self._seqs.first - 1 if self._seqs is not None else 0
        self.limits = protocol.Limits(max_message_bytes=max_message_bytes or MAX_MESSAGE_BYTES_LIMIT)
        """The size limits requests are checked against before they leave: `max_message_bytes` when
        given, else the cluster's as a PONG says it (until then, the largest a cluster may have)."""
        self._lock = threading.RLock()  # one request at a time on the REQ socket, whichever thread asks
        self.lamport = 0
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._outcome_unknown = False  # whether a try of the last request may have been stored

    @classmethod
    def from_config(cls, config: Config, client_key: KeySource | None = None, timeouts: Timeouts | None = None,
                    ctx: zmq.Context[zmq.Socket[bytes]] | None = None, clock: Clock | None = None) -> Client:
        """Returns: a Client on every node of `config`, with CURVE when it has a security section
        (the nodes' public keys from keys_dir; `client_key`, else `WIBER_KEY`, as this client's).

        Raises:
            CurveError: a security section and no client key, or a client key and no security section.
            KeyFileError: a key file is missing, unreadable or malformed.
        """
        return cls([n.client_addr for n in config.nodes], timeouts, ctx, clock,
                   **client_options(config_curve_keys(config, client_key)))

    # ---------------------------------------------------------------- plumbing

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            sock, self._watch = client_socket(self.ctx, zmq.REQ, self._current, self.curve)
            sock.connect(self._current)
            self._sock = sock
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
        return self._sock

    def _reset(self, address: str | None = None) -> None:
        """Close the REQ socket (it is stuck in lockstep after a timeout) and pick an address."""
        close_client_socket(self._sock, self._watch)
        self._sock, self._watch = None, None
        if address is not None:
            self._current = normalize_address(address)
        else:
            self._current = self.addresses[next(self._rotation)]

    def _try_once(self, body: bytes, timeout_s: float) -> dict[str, Any] | None:
        """Send to the current address. Returns: the reply map, or None on timeout."""
        sock = self._socket()
        deadline = time.monotonic() + timeout_s
        # Never a blocking send: a REQ with no connection (a node that refused this client's key
        # ends it for good) would block forever. Wait for room within the try's time instead.
        if self._send_within(sock, body, timeout_s) and self._poller.poll(
                max(1, int((deadline - time.monotonic()) * 1000))):  # one poller per socket: Socket.poll makes one a call
            return protocol.parse_reply(zmqcalls.recv(sock, 0))
        self._silence = self._watch.check() if self._watch is not None else None
        self._reset()
        return None

    @staticmethod
    def _send_within(sock: zmq.Socket[bytes], body: bytes, timeout_s: float) -> bool:
        """Returns: whether `body` was queued on `sock` within `timeout_s`."""
        try:
            zmqcalls.send(sock, body, zmqcalls.NOBLOCK)
            return True
        except zmq.Again:
            pass
        if not sock.poll(max(1, int(timeout_s * 1000)), zmq.POLLOUT):
            return False
        try:
            zmqcalls.send(sock, body, zmqcalls.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def request_to(self, address: str, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request to exactly one node (no failover). Returns: the ok reply.

        Raises:
            WireError subclass: the node answered an error.
            ClientError: no answer within the per-try timeout.
        """
        msg = self._build(op, fields)
        with self._lock:
            saved = self._current
            self._reset(address)
            try:
                reply = self._try_once(protocol.pack(msg), self.timeouts.per_try_s)
            finally:
                self._reset(saved)
        if reply is None:
            raise ClientError(f"no answer from {address} within {self.timeouts.per_try_s:g} s"
                              + (f": {self._silence}" if self._silence else ""))
        if not reply["ok"]:
            raise error_from_reply(reply)
        return reply

    def _build(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        msg = {"op": op, **{k: v for k, v in fields.items() if v is not None}}
        # Validate locally with the node's own rules: a bad request fails here, not after a round trip.
        # The size limit is the cluster's, once a reply said it (until then, the largest any may have).
        protocol.validate_request(msg, self.limits)
        return msg

    def request(self, op: str, _what: str | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request with failover until the total deadline (`wiber.client.retry`). Returns: the ok reply.

        `_what` names the request in errors, as the caller knows it (default: the op).

        Raises:
            WireError subclass: the cluster answered an error that a retry cannot fix.
            ClientError: no usable answer before the deadline.
        """
        body = protocol.pack(self._build(op, fields))
        with self._lock:
            plan = RetryPlan(_what or op, self.addresses, time.monotonic() + self.timeouts.total_s,
                             self.timeouts.total_s)
            try:
                return self._follow(plan, body)
            finally:
                self._outcome_unknown = plan.outcome_unknown

    def _follow(self, plan: RetryPlan, body: bytes) -> dict[str, Any]:
        """Try `body` until `plan` ends it. Returns: the ok reply. Raises: what the plan ends with."""
        while True:
            now = time.monotonic()
            expired = plan.expired(now)
            if expired is not None:
                assert expired.error is not None
                raise expired.error
            address = self._current
            sent_at = self.clock.wall()
            reply = self._try_once(body, min(self.timeouts.per_try_s, plan.deadline - now))
            step = plan.on_silence(address, self._silence) if reply is None else plan.on_reply(reply)
            if step.reply is not None:
                self._learn_time(sent_at, step.reply)
                return step.reply
            if step.error is not None:
                raise step.error
            if reply is not None:  # answered: a silent try already moved on to the next node
                self._reset(self._current if step.same else step.address)
            if step.pause_s:
                pause(plan.deadline, step.pause_s)

    def _learn_time(self, sent_at: float, reply: dict[str, Any]) -> None:
        """Take the cluster time a reply carries (a PONG's ``time``, a PUB's ``ts``) as a clock sample:
        the node read it between `sent_at` and now, so no PING round is needed before a first publish."""
        stamp = reply.get("time", reply.get("ts"))
        if isinstance(stamp, float):
            if self.clock_offset.add(sent_at, stamp, stamp, self.clock.wall()) and self._synced_at is None:
                self._synced_at = time.monotonic()
        limit = reply.get("max_message_bytes")
        if type(limit) is int and limit > 0 and limit != self.limits.max_message_bytes:
            self.limits = protocol.Limits(max_message_bytes=limit)

    # ---------------------------------------------------------------- ops

    def ping(self) -> dict[str, Any]:
        """Returns: the PONG of whichever node answered (node, role, term, leader, time)."""
        return self.request("PING")

    def status(self) -> dict[str, Any]:
        """Returns: STATUS of whichever node answered."""
        return self.request("STATUS")

    def sync_clock(self, samples: int = 5) -> float:
        """Estimate this client's offset to the cluster's clock from PINGs (NTP-style, min delay).

        Returns: the offset in seconds (cluster minus local).
        """
        for _ in range(samples):
            self.request("PING", "clock sync (PING)")  # each PONG's time is a sample (_learn_time)
        self._synced_at = time.monotonic()
        return self.clock_offset.offset

    def now(self) -> float:
        """Returns: the cluster's time as this client sees it (synced on first use, then every 30 s)."""
        if self._synced_at is None or time.monotonic() - self._synced_at > 30.0:
            self.sync_clock()
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

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            if self._seqs is not None:
                self._seqs.reserve(self._seq)
            return self._seq

    def reserve_seq(self) -> int:
        """Returns: a seq of this client's session that no publish of this client has used or will use.

        For exactly once across a restart of the producer: store the seq with the message before
        publishing it with ``publish(..., dedup=(client.client_id, seq))``; after a crash, publish the
        messages whose Ack you had not recorded again with their stored seqs (docs/design.md section 12).
        """
        return self._next_seq()

    def _new_session(self) -> None:
        """Continue under a new client_id: the cluster refuses every request of an evicted one."""
        old, self.client_id = self.client_id, uuid.uuid4().hex
        log.info("client %s: session expired; continuing as %s", old, self.client_id)

    def _publish_once(self, op: str, topic: str, **fields: Any) -> dict[str, Any]:
        """Send a PUB or PUB_BATCH under this client's session. Returns: the ok reply.

        A SESSION_EXPIRED answer ends the session (the cluster would refuse every later request of
        this client_id): the client continues under a new one, and the caller gets `SessionExpired`
        saying whether this request can have been stored by an earlier try. It is never resent
        under the new session here: whether the same message was stored before under the old one
        (by a try of this call, or by a process that used the same client_id) only HISTORY can tell.
        """
        with self._lock:  # seqs leave in the order they are taken: a later one's ack_floor passes earlier ones
            return self._publish_locked(op, topic, **fields)

    def _publish_locked(self, op: str, topic: str, **fields: Any) -> dict[str, Any]:
        """`_publish_once` holding the lock. A fixed client_id sends no ack_floor: seqs it reserved
        for the caller (`reserve_seq`) may still be outstanding, also from before a restart."""
        seq = self._next_seq()
        try:
            return self.request(op, f"{op_name(op)} to {topic!r}", topic=topic, client_id=self.client_id, seq=seq,
                                ack_floor=seq if self._seqs is None else None, **fields)
        except SessionExpired as exc:
            expired_id = self.client_id
            self._new_session()
            if self._outcome_unknown:
                raise
            raise SessionExpired(f"{op} to {topic!r} refused: the session of client {expired_id!r} had "
                                 f"expired when it arrived, so this try stored nothing; publish it again "
                                 f"(the client now uses a new session)") from exc

    def publish(self, topic: str, data: bytes | str, ts: float | None = None, *,
                dedup: tuple[str, int] | None = None) -> Ack:
        """Store one message and wait until a majority has it on disk. Returns: its Ack.

        Retries (NOT_LEADER, UNAVAILABLE, timeouts) reuse the same seq, so the message is stored
        exactly once. With `dedup`, a ``(client_id, seq)`` of the caller's (`ConsumedMessage.publish_key`)
        stands for this client's own: any publish under the same pair, from any process, stores
        nothing more and gets the first one's Ack (``duplicate=True``). A `str` is sent as its UTF-8
        bytes. The request carries the client's synced send time (`ts`), which a cluster with a
        reorder window orders by: by default the cluster's time as this client knows it from earlier
        replies; the first publish of a client that has not synced (`sync_clock`) carries none and is
        stored as it arrives, so it waits on no clock sync.

        Raises:
            SessionExpired: a retry came too late for the cluster to know whether it was stored (the
                client continues under a new session; check HISTORY for this message). With `dedup`:
                that key is older than its client_id's window, and nothing was stored by this call.
            ClientError: no answer before the total deadline (the message may or may not be stored).
            BadRequest, TooLarge: the request itself is wrong.
        """
        payload = data.encode() if isinstance(data, str) else data
        sent_at = self._send_time() if ts is None else ts
        if dedup is not None:  # the caller's key, not this client's session (ConsumedMessage.publish_key)
            client_id, seq = dedup
            reply = self.request("PUB", f"publish to {topic!r}", topic=topic, data=payload, client_id=client_id,
                                 seq=seq, lamport=self.lamport or None, ts=sent_at)
        else:
            reply = self._publish_once("PUB", topic, data=payload, lamport=self.lamport or None, ts=sent_at)
        ack = Ack.from_reply(reply)
        self.observe_lamport(ack.lamport + ack.count - 1)
        return ack

    def publish_batch(self, topic: str, messages: Sequence[bytes]) -> Ack:
        """Store a batch at consecutive offsets, all or none, exactly once. Returns: its Ack."""
        reply = self._publish_once("PUB_BATCH", topic, messages=list(messages), lamport=self.lamport or None)
        ack = Ack.from_reply(reply)
        self.observe_lamport(ack.lamport + ack.count - 1)
        return ack

    def history(self, topic: str, from_offset: int | None = None, last: int | None = None, limit: int = 100,
                consistency: str = "local") -> History:
        """Read stored messages of a topic in offset order (docs/design.md section 3 HISTORY)."""
        reply = self.request("HISTORY", f"history of {topic!r}", topic=topic, from_offset=from_offset, last=last,
                             limit=limit, consistency=consistency)
        return self._history_from(reply)

    def _history_from(self, reply: dict[str, Any]) -> History:
        topic = reply["topic"]
        messages = [Message.from_wire(topic, item) for item in reply["messages"]]
        if messages:
            self.observe_lamport(max(m.lamport for m in messages))
        return History(topic, messages, reply["next_offset"], reply["first_offset"], reply["end_offset"],
                       reply["commit_index"])

    def topics(self, pattern: str | None = None) -> dict[str, int]:
        """Returns: every topic with its end offset (the offset its next message will get), or only
        the topics `pattern` matches (``*`` one token, a last ``>`` one or more)."""
        return dict(self.request("TOPICS", pattern=pattern)["topics"])

    def subscribe(self, topic: str, from_offset: int | None = None) -> Subscription:
        """Returns: a Subscription delivering every message of `topic` once, in offset order.

        From `from_offset` (past messages first, from HISTORY), or only new ones when None. `topic`
        may be a pattern (``orders.*``, ``orders.>``; docs/design.md section 3): then every matching
        topic's messages come, each topic once and in offset order; `from_offset` applies to the
        topics that exist now, and a matching topic created later is delivered from offset 0.

        Raises: BadRequest when `topic` is neither a topic name nor a valid pattern.
        """
        if topics.is_pattern(topic):
            subscription: Subscription = PatternSubscription(self, topic, from_offset)
        else:
            subscription = Subscription(self, topic, from_offset)
        self._subscriptions.add(subscription)
        return subscription

    def consumer(self, group: str, pattern: str, *, ack_wait_ms: int = protocol.ACK_WAIT_MS_DEFAULT,
                 from_start: bool = False, member: str | None = None) -> Consumer:
        """Returns: a member of durable consumer group `group`, created (on `pattern`) if new.

        A new group starts at the end of each matching topic, or at its first kept message with
        `from_start`; a message neither acked nor nak'ed within `ack_wait_ms` is delivered again.
        `member` names this member (default: host, pid and a random part).

        Raises: GroupConflict: the group exists with other settings; BadRequest: a bad argument.
        """
        return Consumer(self, group, pattern, ack_wait_ms=ack_wait_ms, from_start=from_start, member=member)

    def groups(self) -> dict[str, dict[str, Any]]:
        """Returns: per consumer group, its pattern, ack_wait_ms, from_start, topics (how many match),
        pending (delivered, not acked) and lag (never delivered), as the answering node has applied them."""
        return dict(self.request("GROUPS")["groups"])

    def status_all(self) -> dict[str, dict[str, Any] | BaseException]:
        """Returns: per address, its STATUS reply or the error that stood in the way."""
        out: dict[str, dict[str, Any] | BaseException] = {}
        for address in self.addresses:
            try:
                out[address] = self.request_to(address, "STATUS")
            except (WireError, ClientError) as exc:
                out[address] = exc
        return out

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close this client's subscriptions and socket, and the context if this client made it.

        Subscriptions still open are closed here: a context cannot terminate while a socket of it
        is open, so leaving ``with Client(...)`` with a subscription open would otherwise block.
        """
        for subscription in list(self._subscriptions):
            subscription.close()
        self._reset(self._current)
        if self._own_ctx:
            self.ctx.destroy(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def op_name(op: str) -> str:
    """Returns: the user-facing name of a wire op in error messages (PUB_BATCH -> publish_batch)."""
    return {"PUB": "publish", "PUB_BATCH": "publish_batch"}.get(op, op)
