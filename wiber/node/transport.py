"""The node's ZeroMQ sockets: client ROUTER, raft ROUTER, one DEALER per peer, and the PUB fan-out.

Theory of operation: the node loop owns one `Transport` and one `zmq.Poller` (made once, here).
Everything is non-blocking: reads drain what is queued with `NOBLOCK`, and sends that would block
(a DEALER with no connected peer, a socket at its high-water mark) are dropped and counted. Raft
tolerates lost messages; clients retry; subscribers recover gaps by offset (docs/design.md section 8).

Framing:
* client ROUTER: `[identity, (b"" delimiter), body]` in; the reply reuses everything before the body.
* raft ROUTER: `[identity, message, message, ...]` in; the identity is ignored (each message names
  its sender).
* peer DEALER: `[message, message, ...]` out: everything for one peer in one loop turn.
* PUB (an XPUB): `[topic + b"\\0", body]` out; subscription changes in.
* ZAP (a ROUTER on `wiber.node.auth.ZAP_ENDPOINT`, with security only): libzmq's handshake
  questions in, the node's answers out.

With security (docs/design.md section 10) the three bound sockets are CURVE servers, each with its
ZAP domain, and the peer DEALERs CURVE clients; the first frame of every inbound message is then
read as a zmq.Frame for its "User-Id" (the name the ZAP handler gave the connection), once per
message: on the raft port a message holds a whole turn's frames for this node.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import zmq

from wiber import zmqcalls
from wiber.config import NodeConfig
from wiber.errors import NodeStartError
from wiber.node.auth import DOMAIN_CLIENT, DOMAIN_PUB, DOMAIN_RAFT, ZAP_ENDPOINT, NodeKeys
from wiber.node.backlog import ReplyBacklog
from wiber.node.connections import ClientConnections

log = logging.getLogger(__name__)

#: Headroom above the largest client frame for peer batches (AppendEntries of many requests).
PEER_MAX_FRAME = 256 * 1024 * 1024
#: How many messages a peer DEALER may queue before sends are dropped.
PEER_SNDHWM = 10_000
#: How many messages the raft ROUTER takes from one connection before libzmq stops reading it (TCP
#: pushes back on the sender). A peer sends one message per loop turn, a few more with snapshot
#: chunks and clock probes: 1,000 is far above that and bounds what one connection can park here.
PEER_RCVHWM = 1_000
#: The bytes of peer frames one loop turn takes (the rest waits in the socket for the next turn),
#: so a flood of large frames is worked through a bounded slice at a time.
PEER_TURN_BYTES = 64 * 1024 * 1024
#: libzmq's own liveness check on peer connections, so a silent partition is noticed (docs/design.md section 8).
ZMQ_HEARTBEAT_IVL_MS = 1_000
ZMQ_HEARTBEAT_TIMEOUT_MS = 3_000
#: The listen queue of the client and pub ports (libzmq's default is 100): 1,000 clients connecting
#: at once overflowed it, and each refused SYN was retried after a second (the p99 of a first publish
#: was 1.04 s; 0.24-0.38 s with this). The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


@dataclass(slots=True)
class ClientRequest:
    """One frame from a client with the envelope needed to answer it."""

    envelope: list[bytes]
    body: bytes
    user: str | None = None  # the authenticated client's name (security), else None


@dataclass(slots=True)
class TransportStats:
    """Counters of what the transport dropped, for STATUS and debugging."""

    peer_send_dropped: int = 0
    client_reply_dropped: int = 0
    pub_dropped: int = 0
    peer_frames_failed: int = 0  # peer frames whose handling raised and that were dropped
    extra: dict[str, int] = field(default_factory=dict)

    def status(self) -> dict[str, int]:
        """Returns: STATUS's `transport` map."""
        return {"peer_send_dropped": self.peer_send_dropped, "client_reply_dropped": self.client_reply_dropped,
                "pub_dropped": self.pub_dropped, "peer_frames_failed": self.peer_frames_failed}


def _bind(sock: zmq.Socket[bytes], host: str, port: int, what: str, node_id: str) -> None:
    """Bind or raise NodeStartError with a line an operator can act on."""
    try:
        sock.bind(f"tcp://{host}:{port}")
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise NodeStartError(
                f"node {node_id}: {what} port {host}:{port} is already in use by another process; "
                f"stop it or change the port in the config"
            ) from None
        raise NodeStartError(f"node {node_id}: cannot bind {what} port {host}:{port}: {exc}") from None


class Transport:
    """The four kinds of socket of one node, bound and connected, and one poller over the inbound ones."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        me: NodeConfig,
        peers: Sequence[NodeConfig],
        max_client_frame: int,
        max_peer_frame: int = 0,
        keys: NodeKeys | None = None,
    ) -> None:
        self.me = me
        self.stats = TransportStats()
        self._sockets: list[zmq.Socket[bytes]] = []
        self._keys = keys
        self.zap: zmq.Socket[bytes] | None = None
        try:
            if keys is not None:  # bound first: no handshake may happen before the handler is there
                self.zap = self._socket(ctx, zmq.ROUTER)
                try:
                    self.zap.bind(ZAP_ENDPOINT)
                except zmq.ZMQError as exc:
                    raise NodeStartError(f"node {me.id}: cannot bind the ZAP handler at {ZAP_ENDPOINT} ({exc}): "
                                         f"a secured node needs a zmq context of its own") from None
            self.client = self._socket(ctx, zmq.ROUTER)
            self._curve_server(self.client, DOMAIN_CLIENT)
            self.client.setsockopt(zmq.MAXMSGSIZE, max_client_frame)
            self.client.setsockopt(zmq.SNDHWM, 100_000)
            self.client.setsockopt(zmq.RCVHWM, 100_000)
            self.client.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
            _bind(self.client, me.host, me.port, "client", me.id)

            self.raft_in = self._socket(ctx, zmq.ROUTER)
            self._curve_server(self.raft_in, DOMAIN_RAFT)
            # A larger frame than the node would decode is refused by libzmq before it is buffered.
            self.raft_in.setsockopt(zmq.MAXMSGSIZE, max_peer_frame or PEER_MAX_FRAME)
            self.raft_in.setsockopt(zmq.RCVHWM, PEER_RCVHWM)
            self.raft_in.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_IVL_MS)
            self.raft_in.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
            _bind(self.raft_in, me.host, me.raft_port, "raft", me.id)

            # XPUB rather than PUB: subscribers connect the same way, and the node also learns which
            # prefixes are subscribed, so it skips encoding messages of topics nobody listens to.
            self.pub = self._socket(ctx, zmq.XPUB)
            self._curve_server(self.pub, DOMAIN_PUB)
            self.pub.setsockopt(zmq.SNDHWM, 100_000)
            self.pub.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
            _bind(self.pub, me.host, me.pub_port, "pub", me.id)

            self.peers: dict[str, zmq.Socket[bytes]] = {}
            self._ctx = ctx
            for peer in peers:
                self.add_peer(peer)
        except BaseException:
            self.close()
            raise
        self.connections = ClientConnections(self.client, me.id, time.monotonic)
        #: The last poll's events, by socket (ZeroMQ) or fd (plain sockets: the metrics server's).
        self.events: dict[Any, int] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.connections.monitor, zmq.POLLIN)
        self.poller.register(self.client, zmq.POLLIN)
        self.poller.register(self.raft_in, zmq.POLLIN)
        self.poller.register(self.pub, zmq.POLLIN)
        if self.zap is not None:
            self.poller.register(self.zap, zmq.POLLIN)

    def _curve_server(self, sock: zmq.Socket[bytes], domain: str) -> None:
        """Make `sock` a CURVE server with the node's key whose handshakes ask the ZAP handler in
        `domain` (security only; set before bind)."""
        if self._keys is None:
            return
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self._keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._keys.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())

    def _socket(self, ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self._sockets.append(sock)
        return sock

    def poll(self, timeout_ms: int) -> tuple[bool, bool, bool, bool]:
        """Wait up to `timeout_ms` for input.

        Returns: (clients readable, peers readable, subscription changes readable, ZAP requests readable).
        """
        events = dict(self.poller.poll(max(0, timeout_ms)))
        self.events = events  # the metrics server reads its own sockets' events here
        if self.connections.monitor in events:
            self.connections.drain()
        return self.client in events, self.raft_in in events, self.pub in events, self.zap in events

    def recv_zap(self) -> list[list[bytes]]:
        """Returns: the ZAP requests queued, each with its envelope (handshakes wait for the answers)."""
        out: list[list[bytes]] = []
        while self.zap is not None:
            try:
                out.append(self.zap.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return out

    def send_zap(self, frames: list[bytes]) -> None:
        """Answer one ZAP request (an inproc pipe: never blocks in practice; a full one drops the answer,
        and libzmq fails that handshake)."""
        if self.zap is None:
            return
        try:
            self.zap.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("node %s dropped a ZAP answer: the handler's queue is full", self.me.id)

    def recv_subscriptions(self) -> list[tuple[bool, bytes]]:
        """Returns: the subscription changes queued on the XPUB socket: (subscribed?, prefix).

        XPUB passes on only a prefix's first subscription and its last unsubscription, so the
        changes keep a set of subscribed prefixes exact.
        """
        out: list[tuple[bool, bytes]] = []
        while True:
            try:
                frame = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if frame and frame[0] in (0, 1):
                out.append((frame[0] == 1, frame[1:]))

    def recv_clients(self, limit: int) -> list[ClientRequest]:
        """Returns: up to `limit` queued client requests, without blocking."""
        out: list[ClientRequest] = []
        sock = self.client
        recv, get = zmqcalls.recv, zmqcalls.get
        secured = self._keys is not None
        user: str | None = None
        for _ in range(limit):
            try:
                if secured:  # the routing id carries the connection's properties, as every part does
                    first = recv(sock, zmqcalls.NOBLOCK, False)
                    user = first.get("User-Id")
                    frames = [first.bytes]
                else:
                    frames = [recv(sock, zmqcalls.NOBLOCK)]
            except zmq.Again:
                break
            # The routing id ROUTER puts first always has a part after it, so the first RCVMORE
            # asked is the second part's; the parts of one message arrive together.
            part = recv(sock, zmqcalls.NOBLOCK)
            while get(sock, zmqcalls.RCVMORE):
                frames.append(part)
                part = recv(sock, zmqcalls.NOBLOCK)
            out.append(ClientRequest(envelope=frames, body=part, user=user))
        return out

    def recv_peers(self, limit: int, max_bytes: int = PEER_TURN_BYTES) -> list[tuple[str | None, list[bytes]]]:
        """Returns: up to `limit` queued peer messages, without blocking, stopping after the message
        that brings their frames to `max_bytes`: (the node that authenticated the connection, or None
        without security; the message's body frames)."""
        out: list[tuple[str | None, list[bytes]]] = []
        sock, recv, get = self.raft_in, zmqcalls.recv, zmqcalls.get
        secured = self._keys is not None
        user: str | None = None
        taken = 0
        for _ in range(limit):
            if taken >= max_bytes:
                break
            try:
                # The sending DEALER's routing id; with security its User-Id is the sending node.
                if secured:
                    user = recv(sock, zmqcalls.NOBLOCK, False).get("User-Id")
                else:
                    recv(sock, zmqcalls.NOBLOCK)
            except zmq.Again:
                break
            frames = []
            while get(sock, zmqcalls.RCVMORE):
                frame = recv(sock, zmqcalls.NOBLOCK)
                taken += len(frame)
                frames.append(frame)
            if frames:
                out.append((user, frames))
        return out

    def reply(self, envelope: list[bytes], body: bytes, backlog: ReplyBacklog | None = None) -> None:
        """Answer one client; a gone client or a full queue drops the reply (the client retries).

        With `backlog` the reply is sent zero-copy with a tracker and counted there until libzmq
        has sent it (`wiber.node.backlog`)."""
        sock, send = self.client, zmqcalls.send
        try:
            for frame in envelope:
                send(sock, frame, zmqcalls.MORE_NOBLOCK)
            if backlog is None:
                send(sock, body, zmqcalls.NOBLOCK)
            else:
                tracked = zmq.Frame(body, copy=False, track=True)
                sock.send(tracked, zmqcalls.NOBLOCK, copy=False)
                assert tracked.tracker is not None  # made with track=True
                backlog.add(envelope[0], tracked.tracker, len(body))
        except zmq.Again:
            self.stats.client_reply_dropped += 1
        except zmq.ZMQError as exc:  # e.g. EHOSTUNREACH with ROUTER_MANDATORY (not set) or a closed peer
            log.debug("reply dropped: %s", exc)
            self.stats.client_reply_dropped += 1

    def send_peer_frames(self, peer_id: str, frames: list[bytes]) -> bool:
        """Send frames to a peer as one multipart message (one send per peer per loop turn).

        Returns: False when it was dropped (peer down or queue full); Raft retries what matters.
        """
        sock = self.peers.get(peer_id)
        if sock is None or not frames:
            return False
        send = zmqcalls.send
        try:
            for frame in frames[:-1]:  # the parts of a message are queued all or none
                send(sock, frame, zmqcalls.MORE_NOBLOCK)
            send(sock, frames[-1], zmqcalls.NOBLOCK)
            return True
        except zmq.Again:
            self.stats.peer_send_dropped += 1
            return False

    def publish(self, frames: Sequence[bytes]) -> None:
        """Publish `[topic frame, body]` on the PUB socket (dropped, not blocked, at the high-water mark)."""
        head, body = frames
        try:
            zmqcalls.send(self.pub, head, zmqcalls.MORE_NOBLOCK)
            zmqcalls.send(self.pub, body, zmqcalls.NOBLOCK)
        except zmq.Again:
            self.stats.pub_dropped += 1

    def add_peer(self, peer: NodeConfig) -> None:
        """Connect a DEALER to `peer`'s raft port (at start, and for a member added later).

        Raises: KeyError: with security, no public key of `peer` was loaded."""
        keys = self._keys
        dealer = self._socket(self._ctx, zmq.DEALER)
        # IMMEDIATE: queue nothing for a peer that is down, so it is not flooded on reconnect.
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
        dealer.setsockopt(zmq.RECONNECT_IVL, 50)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        dealer.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_IVL_MS)
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        if keys is not None:
            dealer.setsockopt(zmq.CURVE_SERVERKEY, keys.nodes[peer.id])
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            dealer.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        dealer.connect(peer.raft_addr)
        self.peers[peer.id] = dealer

    def close(self) -> None:
        """Close every socket with linger 0 (nothing pending may hold up context termination)."""
        if hasattr(self, "connections"):
            self.connections.close()
        for sock in self._sockets:
            if not sock.closed:
                sock.close(linger=0)
        self._sockets.clear()
