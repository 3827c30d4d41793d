"""Promise 1 on real processes: acknowledged messages survive kill -9 of every node, catch-up by snapshot,
refusal of a damaged log, and disk-full handling."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import REPO, ClusterHarness, wait_for
from tests.integration.test_election import agreed_leader
from wiber.errors import StorageError


def local_log(cluster: ClusterHarness, node_id: str, topic: str) -> list[tuple[int, bytes]]:
    """Returns: every (offset, data) node `node_id` has applied for `topic`, paging through HISTORY."""
    client = cluster.client([node_id], per_try_s=1.0, total_s=5.0)
    out: list[tuple[int, bytes]] = []
    offset = 0
    while True:
        page = client.request_to(cluster.addr(node_id), "HISTORY", topic=topic, from_offset=offset, limit=1000)
        out.extend((m["offset"], m["data"]) for m in page["messages"])
        if page["next_offset"] >= page["end_offset"]:
            return out
        offset = page["next_offset"]


def test_acknowledged_publishes_survive_kill_9_of_every_node(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, snapshot_every=100)
    client = cluster.client()
    acked = {}
    for i in range(500):
        ack = client.publish("durable", b"v%d" % i)
        acked[ack.offset] = b"v%d" % i
    assert sorted(acked) == list(range(500))
    for nid in cluster.nodes:
        cluster.kill(nid)  # all three at once: only what was fsynced survives
    cluster.start()
    cluster.wait_up()
    wait_for(lambda: agreed_leader(cluster), 15, "a leader after the restart")
    expected = sorted(acked.items())
    for nid in cluster.nodes:
        wait_for(lambda nid=nid: local_log(cluster, nid, "durable") == expected, 15,
                 f"{nid} to serve all 500 acknowledged messages at their offsets")
    status = cluster.client([next(iter(cluster.nodes))]).status()
    assert status["snapshot_index"] > 0  # restarted from a snapshot plus the log tail


def test_a_node_down_during_20000_publishes_catches_up_by_snapshot(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, snapshot_every=20)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    down = next(n for n in cluster.nodes if n != leader)
    cluster.kill(down)
    client = cluster.client([n for n in cluster.nodes if n != down])
    # 180-byte messages: the snapshot (about 4 MB) travels in several 1 MiB chunks.
    for start in range(0, 20_000, 200):
        client.publish_batch("bulk", [b"%06d" % i * 30 for i in range(start, start + 200)])
    cluster.start(down)
    expected = [(i, b"%06d" % i * 30) for i in range(20_000)]
    wait_for(lambda: local_log(cluster, down, "bulk") == expected, 30, f"{down} to catch up")
    assert "installed the leader's snapshot" in cluster.nodes[down].log_path.read_text()
    for nid in cluster.nodes:
        assert local_log(cluster, nid, "bulk") == expected


def test_a_wiped_node_rejoins_from_the_others(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, snapshot_every=10)
    client = cluster.client()
    for i in range(60):
        client.publish("wipe", b"%d" % i)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    victim = next(n for n in cluster.nodes if n != leader)
    cluster.kill(victim)
    shutil.rmtree(cluster.config.node_data_dir(victim))  # what the README tells an operator to do
    cluster.start(victim)
    expected = [(i, b"%d" % i) for i in range(60)]
    wait_for(lambda: local_log(cluster, victim, "wipe") == expected, 20, f"wiped {victim} to catch up")


def test_a_damaged_log_refuses_to_start_naming_the_file(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1)
    client = cluster.client()
    for i in range(50):
        client.publish("t", b"x" * 100)
    cluster.kill("n1")
    segments = sorted(Path(cluster.config.node_data_dir("n1")).glob("*.seg"))
    assert segments
    seg = segments[-1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the middle: not a torn tail
    seg.write_bytes(bytes(data))
    out = subprocess.run([sys.executable, "-m", "wiber", "node", "--config", str(cluster.config_path),
                          "--id", "n1"], capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert out.returncode == 2
    assert seg.name in out.stderr and "move the data directory" in out.stderr.lower()


def _can_mount_tmpfs() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    probe = tempfile.mkdtemp()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True)
        if res.returncode != 0:
            return f"mount -t tmpfs refused: {res.stderr.decode().strip()}"
        subprocess.run(["umount", probe], check=True)
        return None
    finally:
        os.rmdir(probe)


@pytest.mark.skipif(_can_mount_tmpfs() is not None, reason=str(_can_mount_tmpfs()))
def test_disk_full_stops_a_node_acknowledging_and_the_cluster_moves_on(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, start=False)
    # n1's data dir is a 2 MiB tmpfs: big messages fill it whether n1 leads or follows.
    small = cluster.config.node_data_dir("n1")
    os.makedirs(small, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small], check=True)
    try:
        cluster.start()
        cluster.wait_up()
        wait_for(lambda: agreed_leader(cluster), 10, "a leader")
        client = cluster.client(per_try_s=1.0, total_s=20.0)
        n1 = cluster.client(["n1"], per_try_s=1.0, total_s=2.0)

        def n1_failed() -> dict[str, Any] | None:
            client.publish("fill", os.urandom(50_000))
            st = n1.request_to(cluster.addr("n1"), "STATUS")
            return st if not st["storage"]["ok"] else None

        st = wait_for(n1_failed, 60, "n1's disk to fill up")
        assert "No space" in st["storage"]["error"] or "ENOSPC" in st["storage"]["error"]
        # The other two go on acknowledging; n1 answers writes with STORAGE and still serves reads.
        ack = client.publish("after", b"still-working")
        assert ack.offset == 0
        with pytest.raises(StorageError):
            n1.request_to(cluster.addr("n1"), "PUB", topic="x", data=b"y")
        assert n1.request_to(cluster.addr("n1"), "HISTORY", topic="fill", limit=1)["ok"]
        assert "cannot write its log" in cluster.nodes["n1"].log_path.read_text()
    finally:
        cluster.close()
        subprocess.run(["umount", small], check=False)

