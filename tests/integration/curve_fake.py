"""A raw pyzmq stand-in for a secured node, to test the client side of CURVE before and beside the real one.

`FakeCurveNode` binds a client ROUTER and a PUB socket on 127.0.0.1 as CURVE servers with its own
key pair; pyzmq's ThreadAuthenticator (a ZAP handler on its own thread, fine in a test) admits on
each port only the public keys the test allows. A thread answers PING, PUB, PUB_BATCH, SUB and
HISTORY the way docs/design.md section 3 says, keeps what was published, fans it out on the PUB
socket with a heartbeat every 250 ms, and records the CURVE key (`User-Id`) of every request.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

CLIENT_DOMAIN = "wiber.client"
PUB_DOMAIN = "wiber.pub"


def make_keys(keys_dir: Path, *names: str) -> dict[str, tuple[bytes, bytes]]:
    """Write a zcert key pair per name into `keys_dir`. Returns: name -> (public, secret)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for name in names:
        _, secret_file = zmq.auth.create_certificates(str(keys_dir), name)
        public, secret = zmq.auth.load_certificate(secret_file)
        assert secret is not None
        pairs[name] = (public, secret)
    return pairs


class _Allow:
    """The ZAP credentials provider: per domain, the z85 public keys let in."""

    def __init__(self) -> None:
        self.keys: dict[str, set[bytes]] = {CLIENT_DOMAIN: set(), PUB_DOMAIN: set()}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys.get(domain, set())


class FakeCurveNode:
    """One CURVE node stand-in (see the module docstring); `close()` stops the thread and the sockets."""

    def __init__(self, ctx: zmq.Context, node_id: str, server_key: tuple[bytes, bytes]) -> None:
        self.id = node_id
        self.public, secret = server_key
        self.allow = _Allow()
        self.users: list[str] = []  # the User-Id (client public key) of each request, in order
        self.log: dict[str, list[bytes]] = defaultdict(list)
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback(domain=CLIENT_DOMAIN, credentials_provider=self.allow)
        self._auth.configure_curve_callback(domain=PUB_DOMAIN, credentials_provider=self.allow)
        self.router = self._server_socket(ctx, zmq.ROUTER, secret, CLIENT_DOMAIN)
        self.pub = self._server_socket(ctx, zmq.PUB, secret, PUB_DOMAIN)
        self.client_addr = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.pub_addr = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.reported_pub_addr = self.pub_addr  # what SUB replies name (a test may make it unknown)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"fake-{node_id}", daemon=True)
        self._thread.start()

    def _server_socket(self, ctx: zmq.Context, kind: int, secret: bytes, domain: str) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = secret
        sock.zap_domain = domain.encode()
        return sock

    def allow_client(self, public: bytes, pub_port: bool = True) -> None:
        """Admit a client key on the client port and, unless `pub_port` is false, the PUB port."""
        self.allow.keys[CLIENT_DOMAIN].add(public)
        if pub_port:
            self.allow.keys[PUB_DOMAIN].add(public)

    # ------------------------------------------------------------ the node's thread

    def _serve(self) -> None:
        next_heartbeat = 0.0
        while not self._stop.is_set():
            if self.router.poll(20):
                frames = self.router.recv_multipart(copy=False)
                self.users.append(frames[-1].get("User-Id"))
                request = msgpack.unpackb(frames[-1].bytes, raw=False)
                reply = self._answer(request)
                if "id" in request:
                    reply["id"] = request["id"]
                self.router.send_multipart([frames[0].bytes, b"", msgpack.packb(reply, use_bin_type=True)])
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + 0.25
                commit = sum(len(v) for v in self.log.values())
                self.pub.send_multipart([b"$hb\0", msgpack.packb(
                    {"node": self.id, "term": 1, "commit_index": commit, "time": time.time()})])

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "PING":
            return {"ok": True, "op": "PONG", "node": self.id, "role": "leader", "term": 1, "leader": self.id,
                    "time": time.time()}
        if op in ("PUB", "PUB_BATCH"):
            topic = request["topic"]
            messages = [request["data"]] if op == "PUB" else list(request["messages"])
            first = len(self.log[topic])
            for k, data in enumerate(messages):
                self.log[topic].append(data)
                self.pub.send_multipart([topic.encode() + b"\0", msgpack.packb(
                    self._item(topic, first + k), use_bin_type=True)])
            return {"ok": True, "topic": topic, "offset": first, "count": len(messages), "index": first + 1,
                    "lamport": first + 1, "ts": time.time(), "duplicate": False}
        if op == "SUB":
            return {"ok": True, "topic": request["topic"], "pub_addr": self.reported_pub_addr,
                    "next_offset": len(self.log[request["topic"]])}
        if op == "HISTORY":
            topic = request["topic"]
            start = request.get("from_offset", 0)
            end = len(self.log[topic])
            stop = min(end, start + request.get("limit", 100))
            return {"ok": True, "topic": topic, "messages": [self._item(topic, k) for k in range(start, stop)],
                    "next_offset": stop, "first_offset": 0, "end_offset": end, "commit_index": end}
        return {"ok": False, "error": "UNKNOWN_OP", "message": f"fake node: no {op}"}

    def _item(self, topic: str, offset: int) -> dict[str, Any]:
        return {"topic": topic, "offset": offset, "data": self.log[topic][offset], "lamport": offset + 1,
                "ts": time.time(), "index": offset + 1}

    def close(self) -> None:
        """Stop answering; close the sockets and the authenticator."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.router.close(linger=0)
        self.pub.close(linger=0)
        self._auth.stop()
