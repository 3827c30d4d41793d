"""`wiber.aio.Client`: every operation of `wiber.client.Client` as a coroutine on zmq.asyncio.

Any number of coroutines share one DEALER per node: ``await asyncio.gather(*(client.publish("t",
b"x") for _ in range(1000)))`` has 1,000 requests in flight on it. The client is bound to the event
loop of its first request and is not thread-safe (no asyncio object is).

The parts, one file each:
- this module: the operations (publish, history, subscribe, ...), the clock learnt from replies,
  pinned requests, and the lifecycle;
- `wiber.aio.pipeline`: requests that move between nodes, many in flight, with failover and
  exactly-once publishing (retries by `wiber.client.retry.RetryPlan`, bookkeeping by
  `wiber.client.inflight.InFlight`, both sans-I/O and shared with the sync client);
- `wiber.aio.links`: the DEALERs and the tasks that read their replies, matched to requests by `id`;
- `wiber.aio.subscription` and `wiber.aio.consumer`: what `subscribe` and `consumer` hand out.

Requests pinned to one node (`request_to`, and a subscription's SUB, HISTORY and TOPICS at the node
whose PUB socket it listens to) use the same `RetryPlan` with that node alone, and never move.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from wiber import protocol, topics
from wiber.aio.consumer import Consumer
from wiber.aio.links import Links
from wiber.aio.pipeline import Pipeline
from wiber.aio.sockets import AioSocket
from wiber.aio.subscription import PatternSubscription, Subscription
from wiber.client.connection import op_name
from wiber.client.curve import (
    CurveKeys,
    KeySource,
    client_options,
    config_curve_keys,
    curve_keys,
)
from wiber.client.inflight import DEFAULT_WINDOW
from wiber.client.retry import RetryPlan
from wiber.client.seqfile import SeqFile
from wiber.client.values import Ack, History, Message, Timeouts, normalize_address
from wiber.clock import Clock, OffsetEstimator, SystemClock, skew_from_env
from wiber.config.model import MAX_MESSAGE_BYTES_LIMIT
from wiber.errors import ClientError, WireError

if TYPE_CHECKING:
    from wiber.config import Config

__all__ = ["Client"]


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
        seqs = SeqFile(seq_file) if seq_file is not None else None
        self._links = Links(self._ctx, self.curve, self._on_reply)
        self._pipeline = Pipeline(
            self.addresses, self.timeouts, self._links, self.clock, self._learn_time, client_id=client_id,
            first_seq=seqs.first if seqs is not None else 1, reserve=seqs.reserve if seqs is not None else None,
            window=window, ack_floor=seqs is None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriptions: set[Subscription] = set()  # open ones: `close` closes them (they leave when closed)
        self._closed = False

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
        return self._pipeline.inflight.client_id

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Requests of the pipeline awaiting their answer."""
        return len(self._pipeline.inflight)

    @property
    def failovers(self) -> int:
        """How often the pipeline moved to another node."""
        return self._pipeline.failovers

    # ---------------------------------------------------------------- sockets and the pipeline

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
        return self._links.open(kind, address, node_address, options)

    @property
    def _current(self) -> str:
        """The node the pipeline's requests go to now (a new subscription listens there first)."""
        return self._pipeline.current

    def _on_reply(self, reply: dict[str, Any]) -> None:
        """A reply that is no pinned request's: the pipeline's."""
        self._pipeline.on_reply(reply)

    async def _submit(self, what: str, msg: dict[str, Any], *, session: bool = False) -> dict[str, Any]:
        """Send `msg` through the pipeline until its plan ends it; with `session`, as a publish under the
        client's session. Returns: the ok reply. Raises: what the plan ends with."""
        return await self._pipeline.submit(self._check_open(what), what, msg, session=session)

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
            reply, refused = await self._links.ask(loop, address, msg, min(self.timeouts.per_try_s, plan.deadline - now))
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
        return self._pipeline.inflight.take_seq()

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
        self._pipeline.close()
        await self._links.close()
        if self._own_ctx:
            self._ctx.destroy(linger=0)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


