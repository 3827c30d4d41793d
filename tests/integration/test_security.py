"""Security on real node processes (docs/design.md section 10), with real CURVE handshakes from raw
pyzmq sockets: who gets an answer on each port, what an admitted client may do, that no key but a
node's can move Raft and no node can speak for another, that sessions are per client, and that a
node without a security section refuses a non-loopback host unless told it is insecure.

Silence is asserted with a deadline (`nothing_arrives`) and always next to a positive control (the
same socket code with a key the node admits gets its answer), and each refusal is seen counted in
STATUS, so a test cannot pass because its socket was broken."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
import zmq

from tests.conftest import REPO, ClusterHarness, free_port, wait_for
from wiber.errors import Forbidden
from wiber.raft import encode_message
from wiber.raft.messages import AppendEntries, RequestVote, TimeoutNow

Sockets = Callable[[int], zmq.Socket]

#: How long a test waits to be sure that nothing arrives (handshakes take a few milliseconds here).
SILENCE_S = 1.0
APP = {"name": "app", "publish": ["orders.>"], "subscribe": ["orders.*", "audit"]}
READER = {"name": "reader", "subscribe": [">"]}


def _stranger() -> tuple[bytes, bytes]:
    """Returns: a fresh key pair that no config lists."""
    return zmq.curve_keypair()


def _pack(request: dict[str, Any]) -> bytes:
    return msgpack.packb(request, use_bin_type=True)


def _ask(sock: zmq.Socket, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request on a REQ socket. Returns: the reply (the test fails when none comes in time)."""
    sock.send(_pack(request))
    assert sock.poll(int(timeout * 1000)), f"no answer to {request['op']} within {timeout} s"
    reply = msgpack.unpackb(sock.recv(), raw=False)
    assert isinstance(reply, dict)
    return reply


def send_unblocked(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send on a socket whose handshake the node may already have refused: libzmq then has no
    connection left to queue on, and a blocking send would wait forever. Nothing sent is what the
    node must see in that case anyway."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        pass


def nothing_arrives(*socks: zmq.Socket, seconds: float = SILENCE_S) -> bool:
    """Returns: whether nothing at all arrives on any of `socks` for `seconds`."""
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    return not poller.poll(int(seconds * 1000))


def _status(cluster: ClusterHarness, node_id: str) -> dict[str, Any]:
    """Returns: node `node_id`'s STATUS, asked with the harness's admin key."""
    return cluster.client([node_id]).request_to(cluster.addr(node_id), "STATUS")


def _secured(n: int, cluster_factory: Callable[..., ClusterHarness], *clients: dict[str, Any],
             **settings: Any) -> ClusterHarness:
    """Returns: a running secured cluster of `n` nodes with `clients` (and the harness's admin) and the
    cluster `settings`, once it has a leader."""
    cluster = cluster_factory(n, security=list(clients), **settings)
    wait_for(lambda: any((cluster.ping(nid) or {}).get("role") == "leader" for nid in cluster.nodes),
             cluster.timing.failover_s * 3, "a leader")
    return cluster


def _rejected(cluster: ClusterHarness, node_id: str, port: str) -> int:
    return int(_status(cluster, node_id)["security"]["rejected"][port])


def _connect(cluster: ClusterHarness, zmq_socket: Sockets, node_id: str, key: str | tuple[bytes, bytes] | None,
             kind: int, port: str) -> zmq.Socket:
    """Returns: a socket of `kind` connected to `node_id`'s `port` ("client", "raft" or "pub"), a CURVE
    client with `key` (a harness key name or a pair; None: plain TCP). A SUB takes every topic."""
    sock = zmq_socket(kind)
    if key is not None:
        cluster.curve(sock, node_id, key)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")  # heartbeats included
    node = cluster.config.node(node_id)
    sock.connect({"client": node.client_addr, "raft": node.raft_addr, "pub": node.pub_addr}[port])
    return sock


def _req(cluster: ClusterHarness, zmq_socket: Sockets, node_id: str, key: str | tuple[bytes, bytes] | None
         ) -> zmq.Socket:
    """Returns: a REQ socket on `node_id`'s client port."""
    return _connect(cluster, zmq_socket, node_id, key, zmq.REQ, "client")


def _sub(cluster: ClusterHarness, zmq_socket: Sockets, node_id: str, key: str | tuple[bytes, bytes] | None
         ) -> zmq.Socket:
    """Returns: a SUB socket on `node_id`'s PUB port subscribed to everything."""
    return _connect(cluster, zmq_socket, node_id, key, zmq.SUB, "pub")


def _raft(cluster: ClusterHarness, zmq_socket: Sockets, node_id: str, key: str | tuple[bytes, bytes] | None
          ) -> zmq.Socket:
    """Returns: a DEALER on `node_id`'s raft port, as a peer's would be."""
    return _connect(cluster, zmq_socket, node_id, key, zmq.DEALER, "raft")


def _forgeries(term: int, frm: str, to: str) -> list[bytes]:
    """Returns: Raft messages that would each move `to` to a higher term if it took them."""
    return [encode_message(m) for m in (
        AppendEntries(term=term, frm=frm, to=to, prev_index=0, prev_term=0, entries=(), commit=0, ctx=0),
        RequestVote(term=term, frm=frm, to=to, last_log_index=10**6, last_log_term=term, pre_vote=False,
                    force=True),
        TimeoutNow(term=term, frm=frm, to=to),
    )]


# --------------------------------------------------------------------------------------------------
# Who gets an answer.


def test_no_key_or_an_unknown_key_gets_nothing_on_any_port_and_is_counted(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Sockets) -> None:
    cluster = _secured(1, cluster_factory, APP, READER)
    # Positive controls: the same sockets with admitted keys are answered.
    assert _ask(_req(cluster, zmq_socket, "n1", "app"), {"op": "PING"})["op"] == "PONG"
    admitted_sub = _sub(cluster, zmq_socket, "n1", "reader")
    assert admitted_sub.poll(5000), "an admitted subscriber heard no heartbeat"

    before = _status(cluster, "n1")["security"]["rejected"]
    stranger = _stranger()
    silent = [
        _req(cluster, zmq_socket, "n1", None),             # plain TCP on the client port
        _req(cluster, zmq_socket, "n1", stranger),         # a key no config lists
        _req(cluster, zmq_socket, "n1", cluster.keys["n1"]),  # a node's key: raft port only
    ]
    for sock in silent:
        send_unblocked(sock, [_pack({"op": "PING"})])
    subs = [_sub(cluster, zmq_socket, "n1", None), _sub(cluster, zmq_socket, "n1", stranger)]
    raft = _raft(cluster, zmq_socket, "n1", stranger)
    send_unblocked(raft, _forgeries(10**6, "n2", "n1"))
    assert nothing_arrives(*silent, *subs, raft)

    wait_for(lambda: all(_rejected(cluster, "n1", port) > before[port] for port in ("client", "pub", "raft")),
             10, "the refused handshakes to be counted on every port")
    assert _ask(_req(cluster, zmq_socket, "n1", "app"), {"op": "PING"})["ok"]  # the node is still fine


def test_an_admitted_client_works_within_its_patterns_and_is_forbidden_outside(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Sockets) -> None:
    cluster = _secured(1, cluster_factory, APP)
    app = _req(cluster, zmq_socket, "n1", "app")
    assert _ask(app, {"op": "PING"})["op"] == "PONG"
    assert _ask(app, {"op": "PUB", "topic": "orders.eu", "data": b"1"})["offset"] == 0
    assert _ask(app, {"op": "PUB_BATCH", "topic": "orders.eu.new", "messages": [b"2", b"3"]})["count"] == 2
    assert [m["data"] for m in _ask(app, {"op": "HISTORY", "topic": "orders.eu"})["messages"]] == [b"1"]
    assert _ask(app, {"op": "SUB", "topic": "audit"})["ok"]
    admin = cluster.client()
    admin.publish("audit", b"seen by admins and app")
    admin.publish("secret", b"admins only")

    refused = [
        {"op": "PUB", "topic": "audit", "data": b"x"},            # may read audit, not write it
        {"op": "PUB", "topic": "orders", "data": b"x"},           # orders.> needs a token after orders
        {"op": "PUB_BATCH", "topic": "secret", "messages": [b"x"]},
        {"op": "HISTORY", "topic": "orders.eu.new"},              # orders.* is one token only
        {"op": "HISTORY", "topic": "secret", "consistency": "linearizable"},
        {"op": "SUB", "topic": "secret"},
        {"op": "STATUS"},                                         # admin only
        {"op": "MEMBERS"},                                        # membership: admin only
        {"op": "MEMBER_ADD", "node": "n9"},
        {"op": "MEMBER_REMOVE", "node": "n1"},
    ]
    for request in refused:
        reply = _ask(app, {**request, "id": 7})
        assert (reply["ok"], reply["error"], reply["id"]) == (False, "FORBIDDEN", 7), (request, reply)
        assert "app" in reply["message"]
    assert _ask(app, {"op": "TOPICS"})["topics"] == {"orders.eu": 1, "orders.eu.new": 2, "audit": 1}
    assert set(admin.request("TOPICS")["topics"]) == {"orders.eu", "orders.eu.new", "audit", "secret"}
    assert _status(cluster, "n1")["security"]["forbidden"] == len(refused)
    assert [m.data for m in admin.history("secret").messages] == [b"admins only"]  # nothing stored

    from wiber.client import Client, Timeouts  # the client library raises the class of the code
    servers = {cluster.addr("n1"): cluster.keys["n1"][0]}
    with Client(cluster.addr("n1"), Timeouts(per_try_s=2, total_s=4), client_key=cluster.keys["app"],
                server_keys=servers) as client, pytest.raises(Forbidden, match="may not publish"):
        client.publish("secret", b"x")


def test_subscribers_without_every_topic_get_nothing_on_the_pub_port(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Sockets) -> None:
    cluster = _secured(1, cluster_factory, APP, READER)
    before = _rejected(cluster, "n1", "pub")
    reader = _sub(cluster, zmq_socket, "n1", "reader")
    app = _sub(cluster, zmq_socket, "n1", "app")  # may read orders.* and audit, not everything
    assert reader.poll(5000), "the reader (subscribe: ['>']) heard no heartbeat"
    cluster.client().publish("orders.eu", b"fan-out")
    heads: list[bytes] = []

    def reader_heard() -> bool:
        while reader.poll(100):
            heads.append(reader.recv_multipart()[0])
        return b"orders.eu\0" in heads

    wait_for(reader_heard, 5, "the reader to receive the message")
    assert nothing_arrives(app)
    wait_for(lambda: _rejected(cluster, "n1", "pub") > before, 5, "the refused subscriber to be counted")


# --------------------------------------------------------------------------------------------------
# Raft.


def test_a_key_that_is_not_a_node_cannot_move_any_node(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Sockets) -> None:
    cluster = _secured(3, cluster_factory, READER)
    terms = {nid: _status(cluster, nid)["term"] for nid in cluster.nodes}
    before = {nid: _rejected(cluster, nid, "raft") for nid in cluster.nodes}
    stranger = _stranger()
    for nid in cluster.nodes:
        for key in (stranger, "reader"):  # an unknown key, and a client's
            sock = _raft(cluster, zmq_socket, nid, key)
            other = next(o for o in cluster.nodes if o != nid)
            send_unblocked(sock, _forgeries(terms[nid] + 100, other, nid))
    wait_for(lambda: all(_rejected(cluster, nid, "raft") >= before[nid] + 2 for nid in cluster.nodes), 10,
             "both keys to be refused by every node")
    after = {nid: _status(cluster, nid) for nid in cluster.nodes}
    assert {nid: s["term"] for nid, s in after.items()} == terms
    assert all(s["term"] < min(terms.values()) + 100 for s in after.values())


def test_a_node_key_cannot_speak_for_another_node(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Sockets) -> None:
    """n2's key authenticates the connection as n2: a message claiming to be n3's is dropped and counted."""
    cluster = _secured(3, cluster_factory)
    term = _status(cluster, "n1")["term"]
    sock = _raft(cluster, zmq_socket, "n1", cluster.keys["n2"])
    sock.send_multipart(_forgeries(term + 100, "n3", "n1"))
    wait_for(lambda: _status(cluster, "n1")["security"]["forged_frm"] == 3, 10, "the 3 forged messages to count")
    assert _status(cluster, "n1")["term"] == term
    assert all(s["term"] < term + 100 for s in (_status(cluster, nid) for nid in cluster.nodes))


# --------------------------------------------------------------------------------------------------
# Sessions.


def test_two_clients_with_the_same_client_id_have_separate_sessions(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Sockets) -> None:
    other = {"name": "other", "publish": [">"]}
    cluster = _secured(1, cluster_factory, APP, other)
    app, rival = _req(cluster, zmq_socket, "n1", "app"), _req(cluster, zmq_socket, "n1", "other")
    pub = {"op": "PUB", "topic": "orders.eu", "client_id": "same", "seq": 1}
    first = _ask(app, {**pub, "data": b"app's"})
    second = _ask(rival, {**pub, "data": b"other's"})
    assert (first["duplicate"], second["duplicate"]) == (False, False)
    assert (first["offset"], second["offset"]) == (0, 1)
    again = _ask(app, {**pub, "data": b"app's"})  # app's own retry is still deduplicated
    assert (again["duplicate"], again["offset"]) == (True, 0)
    too_long = _ask(app, {**pub, "data": b"x", "client_id": "x" * 128})
    assert too_long["error"] == "BAD_REQUEST" and "at most 124" in too_long["message"]


# --------------------------------------------------------------------------------------------------
# Without a security section.


def _plain_config(tmp_path: Path, host: str, **cluster: Any) -> Path:
    path = tmp_path / "cluster.yaml"
    doc = {"cluster": {"data_dir": str(tmp_path / "data"), **cluster},
           "nodes": [{"id": "n1", "host": host, "port": free_port(), "raft_port": free_port(),
                      "pub_port": free_port()}]}
    path.write_text(yaml.safe_dump(doc))
    return path


def _node_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "wiber", "node", "--config", str(config), "--id", "n1", "--log-level", "info"]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "node1.example"])
def test_a_non_loopback_host_without_security_refuses_to_start(tmp_path: Path, host: str) -> None:
    done = subprocess.run(_node_command(_plain_config(tmp_path, host)), capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert host in lines[0] and "not a loopback address" in lines[0] and "cluster.insecure: true" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_insecure_true_starts_on_a_non_loopback_host_with_a_warning(tmp_path: Path) -> None:
    config = _plain_config(tmp_path, "0.0.0.0", insecure=True)
    log_path = tmp_path / "n1.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(_node_command(config), stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO))
    try:
        port = yaml.safe_load(config.read_text())["nodes"][0]["port"]
        ctx = zmq.Context()
        try:
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.connect(f"tcp://127.0.0.1:{port}")  # bound on every interface, loopback included
            reply = _ask(req, {"op": "PING"}, timeout=20)
            req.close()
        finally:
            ctx.term()
        assert reply["node"] == "n1"
        text = log_path.read_text()
        assert "level=WARNING" in text and "INSECURE" in text and "0.0.0.0" in text, text
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_missing_key_file_is_named_and_the_node_exits_2(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(2, start=False, security=[APP])
    missing = cluster.root / "keys" / "app.key"
    missing.unlink()
    done = subprocess.run(_node_command(cluster.config_path), capture_output=True, text=True, timeout=60,
                          cwd=str(REPO))
    assert done.returncode == 2, done.stderr
    assert str(missing) in done.stderr and "wiber keygen" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_secured_cluster_syncs_clocks_and_streams_snapshots_with_nothing_counted_forged(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """Every kind of peer frame names its sender: Raft messages, clock-sync probes and answers, and the
    snapshot transfer frames a wiped follower pulls, all pass the check when nobody forges them."""
    cluster = _secured(3, cluster_factory, snapshot_every=5)
    client = cluster.client()
    for k in range(40):
        client.publish("t", b"m%d" % k)
    leader = next(nid for nid in cluster.nodes if (cluster.ping(nid) or {}).get("role") == "leader")
    victim = next(nid for nid in cluster.nodes if nid != leader)
    cluster.kill(victim)
    shutil.rmtree(cluster.config.node_data_dir(victim))
    for k in range(40, 60):
        client.publish("t", b"m%d" % k)
    cluster.start(victim)
    target = int(_status(cluster, leader)["applied_index"])
    wait_for(lambda: int(_status(cluster, victim)["applied_index"]) >= target, 30, f"wiped {victim} to catch up")
    assert [m.data for m in cluster.client([victim]).history("t", limit=100).messages] == \
        [b"m%d" % k for k in range(60)]
    assert "streams the checkpoint" in cluster.nodes[leader].log_path.read_text()
    wait_for(lambda: _status(cluster, victim)["clock"]["samples"] > 0, 10, f"{victim} to sample the leader's clock")
    assert all(_status(cluster, nid)["security"]["forged_frm"] == 0 for nid in cluster.nodes)
