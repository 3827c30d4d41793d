"""Prometheus metrics and /healthz on real nodes (issue 18, docs/operations.md "Metrics").

Every node serves its metrics over HTTP from its own poller; the text is read back with
prometheus_client's own parser, as a Prometheus server would, and checked against what the
test did: messages published, a consumer group's pending deliveries, the one leader.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Callable

import msgpack
import zmq
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, ClusterHarness, raw_request, wait_for

#: The families docs/design.md section 13 requires (docs/operations.md, "Metrics"): every node has each.
REQUIRED = {
    "wiber_raft_term", "wiber_raft_commit_index", "wiber_raft_leader", "wiber_messages_stored",
    "wiber_requests", "wiber_fsync_seconds", "wiber_loop_turn_seconds", "wiber_topic_end_offset",
    "wiber_consumer_pending", "wiber_clock_offset_seconds", "wiber_auth_rejected", "wiber_snapshot_seconds",
}


def scrape(cluster: ClusterHarness, node_id: str) -> dict[str, Any]:
    """Returns: {family name: family} as prometheus_client parses the node's /metrics."""
    port = cluster.config.node(node_id).metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    """Returns: the value of the sample `sample` (default: the family's own name) with `labels`."""
    family = families[name]
    wanted = sample or name
    for s in family.samples:
        if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {wanted}{labels} in {family.samples}")


def known_leader(cluster: ClusterHarness) -> str:
    """Returns: the leader's id, once a node names one."""
    client = cluster.client()
    wait_for(lambda: client.ping()["leader"] is not None, timeout=15, what="a leader")
    return str(client.ping()["leader"])


def healthz(cluster: ClusterHarness, node_id: str) -> tuple[int, str]:
    port = cluster.config.node(node_id).metrics_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_every_node_exposes_the_families_and_they_track_what_happened(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    cluster.wait_up()
    client = cluster.client()
    for i in range(200):
        client.publish("orders.eu", f"m{i}".encode())
    consumer = client.consumer("billing", "orders.*", ack_wait_ms=60_000, from_start=True)
    taken = consumer.fetch(50, timeout=2.0)
    assert len(taken) == 50
    leader = known_leader(cluster)

    def caught_up(node_id: str) -> bool:
        families = scrape(cluster, node_id)
        return (value(families, "wiber_messages_stored", "wiber_messages_stored_total") == 200
                and value(families, "wiber_consumer_pending", group="billing") == 50)

    for node_id in ("n1", "n2", "n3"):
        wait_for(functools.partial(caught_up, node_id), timeout=10, what=f"{node_id}'s metrics to catch up")
    scraped = {node_id: scrape(cluster, node_id) for node_id in ("n1", "n2", "n3")}
    for node_id, families in scraped.items():
        missing = REQUIRED - set(families)
        assert not missing, f"{node_id} lacks {sorted(missing)}"
        assert families["wiber_requests"].type == "counter"
        assert families["wiber_fsync_seconds"].type == "histogram"
        assert value(families, "wiber_topic_end_offset", topic="orders.eu") == 200
        assert value(families, "wiber_consumer_lag", group="billing") == 150
        assert value(families, "wiber_loop_turn_seconds", "wiber_loop_turn_seconds_count") > 0
        assert value(families, "wiber_raft_term") >= 1
        assert value(families, "wiber_raft_members", role="voter") == 3
        assert value(families, "wiber_raft_members", role="learner") == 0
        assert healthz(cluster, node_id)[0] == 200
    assert sum(value(f, "wiber_raft_leader") for f in scraped.values()) == 1
    assert value(scraped[leader], "wiber_raft_leader") == 1
    on_leader = scraped[leader]
    assert value(on_leader, "wiber_raft_member_lag_entries", member=leader, role="voter") == 0
    assert value(on_leader, "wiber_requests", "wiber_requests_total", op="PUB", result="ok") >= 200
    assert value(on_leader, "wiber_fsync_seconds", "wiber_fsync_seconds_count") > 0

    assert consumer.ack(taken) == 50
    wait_for(lambda: value(scrape(cluster, leader), "wiber_consumer_pending", group="billing") == 0,
             timeout=10, what="pending to drop to 0 after the ack")
    ctx = zmq.Context()
    try:  # raw: the Client refuses a pattern as a topic before sending it
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cluster.addr(leader))
        refused = raw_request(sock, msgpack.packb({"op": "PUB", "topic": "orders.*", "data": b"x"}))
        assert refused["error"] == "BAD_REQUEST", refused
        sock.close()
    finally:
        ctx.term()
    wait_for(lambda: value(scrape(cluster, leader), "wiber_requests", "wiber_requests_total", op="PUB",
                           result="BAD_REQUEST") >= 1, timeout=10, what="the refused PUB to be counted")


def test_healthz_says_503_when_the_node_knows_no_leader(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    cluster.wait_up()
    leader = known_leader(cluster)
    status, text = healthz(cluster, leader)
    assert status == 200 and "leader" in text
    survivor = next(n for n in ("n1", "n2", "n3") if n != leader)
    for node_id in ("n1", "n2", "n3"):
        if node_id != survivor:
            cluster.kill(node_id)
    wait_for(lambda: healthz(cluster, survivor)[0] == 503, timeout=15, what="/healthz to say 503 without quorum")
    assert "no leader" in healthz(cluster, survivor)[1]


def test_a_written_metrics_port_that_is_taken_stops_the_start_and_names_it(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1, start=False)
    port = cluster.config.node("n1").metrics_port
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = subprocess.run([sys.executable, "-m", "wiber", "node", "--config", str(cluster.config_path),
                               "--id", "n1"], capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and "metrics" in done.stderr, done.stderr
