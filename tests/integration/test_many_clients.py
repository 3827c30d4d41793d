"""3,000 clients on one node started with a soft limit of 1,024 open files (issue 18).

Every client holds one connection, so one descriptor, on the node it talks to. The node raises its
soft limit to the hard one at start; before it did, ~1,000 clients were its ceiling. Each client
here is a raw DEALER (one TCP connection each, as 3,000 processes' clients would be) that sends a
PING and must get its PONG; the node's STATUS then counts 3,000 open connections and none refused.
"""

from __future__ import annotations

import resource
import time
from typing import Callable

import msgpack
import zmq

from tests.conftest import ClusterHarness

CLIENTS = 3_000
NODE_SOFT_LIMIT = 1_024


def test_a_node_started_with_a_soft_limit_of_1024_serves_3000_clients(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * CLIENTS + 500  # the node's 3,000 connections, or this process's sockets and their mailboxes
    assert hard == resource.RLIM_INFINITY or hard >= needed, (
        f"this test needs a hard open-files limit of {needed}, the machine allows {hard}")
    cluster = cluster_factory(1, start=False)
    resource.setrlimit(resource.RLIMIT_NOFILE, (NODE_SOFT_LIMIT, hard))  # the node inherits it
    try:
        cluster.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, CLIENTS + 100)
    sockets: list[zmq.Socket[bytes]] = []
    try:
        cluster.wait_up()
        poller = zmq.Poller()
        for i in range(CLIENTS):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(cluster.addr("n1"))
            sock.send_multipart([b"", msgpack.packb({"op": "PING", "id": i})])
            poller.register(sock, zmq.POLLIN)
            sockets.append(sock)
        answered: set[int] = set()
        deadline = time.monotonic() + 60
        while len(answered) < CLIENTS and time.monotonic() < deadline:
            for sock, _ in poller.poll(1000):
                reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
                assert reply["ok"], reply
                answered.add(reply["id"])
        assert len(answered) == CLIENTS, f"{CLIENTS - len(answered)} clients got no PONG\n{cluster.log_tails()}"
        status = cluster.client(["n1"]).status()
        connections = status["connections"]
        assert connections["refused"] == 0, connections
        assert connections["open"] >= CLIENTS, connections
        log = cluster.nodes["n1"].log_path.read_text()
        assert f"raised its open-files limit from {NODE_SOFT_LIMIT}" in log, log[-2000:]
        assert "cannot accept" not in log and "ERROR" not in log, log[-2000:]
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
