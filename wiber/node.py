"""The node: one process, one thread, one `zmq.Poller` loop that wires every other module.

Each turn: poll (timeout = time to the next timer), drain every readable socket without blocking,
handle what arrived, fire due timers. The node is the only place in Wiber that does I/O.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any, Callable

import msgpack
import zmq

from wiber import protocol
from wiber.clock import Clock, SystemClock
from wiber.config import Config, NodeConfig
from wiber.errors import NotLeader, Unavailable, WireError
from wiber.transport import ClientRequest, Transport

log = logging.getLogger(__name__)

#: Fan-out heartbeat period (DESIGN section 3): subscribers tell a dead node from a quiet topic.
PUB_HEARTBEAT_S = 0.25
#: At most this many frames are drained from one socket per turn, so no socket starves the others.
DRAIN_LIMIT = 10_000

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class Node:
    """One Wiber node: binds its sockets at construction, serves until `request_stop()`."""

    def __init__(
        self,
        config: Config,
        node_id: str,
        clock: Clock | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.config = config
        self.me: NodeConfig = config.node(node_id)
        self.id = node_id
        self.clock: Clock = clock or SystemClock()
        self.limits = protocol.Limits(max_message_bytes=config.cluster.max_message_bytes)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.peer_ids = [p.id for p in config.peers(node_id)]
        self.transport = Transport(self.ctx, self.me, config.peers(node_id), self.limits.max_frame_bytes)
        self._stopping = False
        self._started = self.clock.monotonic()
        self._peer_contact: dict[str, float | None] = {p: None for p in self.peer_ids}
        self._heartbeat_s = config.cluster.heartbeat_ms / 1000.0
        self._next_peer_heartbeat = self._started
        self._next_pub_heartbeat = self._started
        self._handlers: dict[str, Handler] = {
            "PING": self._on_ping,
            "STATUS": self._on_status,
        }
        log.info("node %s listening client=%s raft=%s pub=%s", self.id, self.me.client_addr,
                 self.me.raft_addr, self.me.pub_addr)

    # ---------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Ask the loop to stop at the end of its current turn (safe from a signal handler)."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly (sockets closed, exit 0)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("node %s got signal %d, stopping", self.id, signum)
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        """Serve until asked to stop, then close every socket."""
        try:
            while not self._stopping:
                self.run_once()
        finally:
            self.close()

    def close(self) -> None:
        """Close the sockets (linger 0) and, if this node made it, the context."""
        self.transport.close()
        if self._own_ctx:
            self.ctx.term()

    # ---------------------------------------------------------------- the loop

    def _next_deadline(self) -> float:
        return min(self._next_peer_heartbeat, self._next_pub_heartbeat)

    def run_once(self) -> None:
        """One loop turn: poll until input or the next timer, drain inputs, fire due timers."""
        now = self.clock.monotonic()
        timeout_ms = int(max(0.0, self._next_deadline() - now) * 1000) + 1
        clients_ready, peers_ready = self.transport.poll(min(timeout_ms, 100))
        if peers_ready:
            for frame in self.transport.recv_peers(DRAIN_LIMIT):
                self._on_peer_frame(frame)
        if clients_ready:
            for request in self.transport.recv_clients(DRAIN_LIMIT):
                self._on_client_request(request)
        self._fire_timers(self.clock.monotonic())

    def _fire_timers(self, now: float) -> None:
        if now >= self._next_peer_heartbeat:
            body = msgpack.packb(["hb", self.id], use_bin_type=True)
            for peer in self.peer_ids:
                self.transport.send_peer(peer, body)
            self._next_peer_heartbeat = now + self._heartbeat_s
        if now >= self._next_pub_heartbeat:
            self.transport.publish(protocol.heartbeat_frames(self._pub_heartbeat()))
            self._next_pub_heartbeat = now + PUB_HEARTBEAT_S

    # ---------------------------------------------------------------- peers

    def _on_peer_frame(self, frame: bytes) -> None:
        """Record contact from a peer; anything malformed from the network is dropped."""
        try:
            msg = msgpack.unpackb(frame, raw=False)
        except Exception:  # untrusted input: never let it escape the loop
            log.debug("node %s dropped a malformed peer frame", self.id)
            return
        if isinstance(msg, list) and len(msg) == 2 and msg[0] == "hb" and msg[1] in self._peer_contact:
            self._peer_contact[msg[1]] = self.clock.monotonic()

    # ---------------------------------------------------------------- clients

    def _on_client_request(self, request: ClientRequest) -> None:
        """Validate, dispatch and answer one client request; every error becomes a wire error."""
        req_id: Any = None
        try:
            req_id, msg = protocol.parse_request(request.body, self.limits)
            handler = self._handlers.get(msg["op"], self._not_yet)
            reply = protocol.ok_reply(handler(msg), req_id)
        except WireError as err:
            req_id = getattr(err, "request_id", req_id)
            reply = protocol.error_reply(err, req_id)
        self.transport.reply(request.envelope, reply)

    def _not_yet(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Ops that need a leader and a replicated log: NOT_LEADER for writes, UNAVAILABLE for reads."""
        if msg["op"] in protocol.WRITE_OPS or msg.get("consistency") == "linearizable":
            raise NotLeader(f"node {self.id} is not the leader and no leader is known", None, None)
        raise Unavailable(f"node {self.id} has no replicated log yet; {msg['op']} is not served")

    def _on_ping(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {
            "op": "PONG",
            "node": self.id,
            "role": "follower",
            "term": 0,
            "leader": None,
            "time": self.clock.wall(),
        }

    def _on_status(self, msg: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.monotonic()
        peers: dict[str, dict[str, Any]] = {}
        for peer, seen in self._peer_contact.items():
            peers[peer] = {
                "match_index": 0,
                "last_contact_ms": None if seen is None else int((now - seen) * 1000),
            }
        return {
            "node": self.id,
            "role": "follower",
            "term": 0,
            "leader": None,
            "commit_index": 0,
            "applied_index": 0,
            "last_index": 0,
            "snapshot_index": 0,
            "peers": peers,
            "clock": {"offset_ms": 0.0, "error_ms": 0.0},
            "uptime_s": round(now - self._started, 3),
        }

    def _pub_heartbeat(self) -> dict[str, Any]:
        return {"node": self.id, "term": 0, "commit_index": 0, "time": self.clock.wall()}
