"""Hardening that holds with or without security (issue 15), attack by attack, against real nodes.

Each test reproduces an attack a reviewer ran on a 3-node loopback cluster, with raw pyzmq and the
wire codecs (a peer's raft port accepts any connection when the cluster has no `security`
section), and shows it does no harm: every node keeps running within bounded memory, the next PUB
is acknowledged, and what the attack forged never reaches the disk.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_election import agreed_leader
from wiber.storage.transfer import CHUNK_BYTES, Data, FileInfo, Manifest, ManifestFrame

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")

_APPEND_ENTRIES, _TIMEOUT_NOW = 3, 5


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Returns: a process's resident memory (or its peak, `VmHWM`), MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def raft_dealer(cluster: ClusterHarness, zmq_socket: Callable[[int], zmq.Socket], node_id: str) -> zmq.Socket:
    """Returns: a DEALER connected to a node's raft port, as a forging peer's would be."""
    dealer = zmq_socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.connect(cluster.config.node(node_id).raft_addr)
    return dealer


def healthy(cluster: ClusterHarness, topic: str) -> None:
    """Every node runs and answers PING, and a PUB is acknowledged with a finite ts."""
    cluster.wait_up()
    ack = cluster.client(total_s=20.0).publish(topic, b"after the attack")
    assert math.isfinite(ack.ts) and 0 < ack.ts < 1e11
    assert all(n.running() for n in cluster.nodes.values()), cluster.log_tails()


def test_heartbeats_with_terms_at_or_above_2_63_are_dropped_and_restarts_are_clean(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """Heartbeats with term 2**64 - 1 once killed every node (encoding term + 1 overflowed), and the
    persisted term killed them again at each restart: now the codec refuses them."""
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    for node in cluster.config.nodes:
        dealer = raft_dealer(cluster, zmq_socket, node.id)
        for bad_term in (2**64 - 1, 2**63, 2**63 + 1):
            heartbeat = [_APPEND_ENTRIES, bad_term, leader, node.id, 0, 0, [], 2**64 - 1, 1]
            dealer.send_multipart([msgpack.packb(heartbeat)] * 3)
        # a reply whose match index is past what any leader sent, and a vote request at 2**63
        dealer.send(msgpack.packb([4, term, node.id, leader, True, 2**63, 0, 0, 0]))
        dealer.send(msgpack.packb([1, 2**63, node.id, node.id, 2**63, 2**63, False, True]))
    healthy(cluster, "terms")
    assert wait_for(lambda: agreed_leader(cluster), 10, "a leader")[1] < 2**63
    for node_id in cluster.nodes:
        assert cluster.stop(node_id) == 0
    cluster.start()
    healthy(cluster, "terms-after-restart")


def test_nan_clock_replies_and_a_forged_timeout_now_leave_every_ts_finite(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """Clock-sync replies with NaN (and absurd times) forged as the leader's, then a forged TimeoutNow,
    once made a leader whose first PUB crashed it (NaN ts): now such samples are refused."""
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    follower = next(nid for nid in cluster.nodes if nid != leader)
    dealer = raft_dealer(cluster, zmq_socket, follower)
    now = cluster.ping(follower)["time"]  # type: ignore[index]
    for t2, t3 in ((math.nan, math.nan), (math.inf, math.inf), (now + 1e9, now + 1e9), (-1e9, now)):
        for _ in range(10):
            dealer.send(b"\xc1T" + struct.pack(">Bddd", 2, now, t2, t3) + leader.encode())
    dealer.send(msgpack.packb([_TIMEOUT_NOW, term, leader, follower]))
    new_leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader after the forged TimeoutNow")
    healthy(cluster, "clock")
    client = cluster.client(total_s=20.0)
    acks = [client.publish("clock", f"m{k}".encode()) for k in range(5)]
    assert all(abs(ack.ts - now) < 3600 for ack in acks), (new_leader, acks)
    status = client.request_to(cluster.addr(follower), "STATUS")
    assert math.isfinite(status["clock"]["offset_ms"]) and abs(status["clock"]["offset_ms"]) < 3_600_000


def _garbage_snapshot(sender: str, term: int, index: int) -> tuple[Manifest, dict[str, bytes]]:
    """Returns: a manifest of files that are not a checkpoint (with their true CRCs) and the files."""
    files = {"index.db": b"SQLite format 3\x00" + os.urandom(4000), "00000000000000000001.seg": os.urandom(5000)}
    infos = tuple(FileInfo(name, len(data), zlib.crc32(data)) for name, data in files.items())
    return Manifest(index, term, msgpack.packb(term), infos), files


def test_a_garbage_snapshot_from_the_leaders_name_is_checked_whole_and_never_installed(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """A manifest forged in the leader's name at the current term, and DATA frames answering the
    follower's requests: the files arrive with good CRCs, but they are no checkpoint. Installed,
    they once left a node that could not start until its directory was wiped; now the staged
    snapshot is checked whole before anything of it replaces the state, and discarded."""
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    client = cluster.client()
    for k in range(20):
        client.publish("kept", f"m{k}".encode())
    follower = next(nid for nid in cluster.nodes if nid != leader)
    manifest, files = _garbage_snapshot(leader, term, 10**6)
    dealer = raft_dealer(cluster, zmq_socket, follower)
    dealer.send(ManifestFrame(leader, 77, manifest).encode())
    for name, data in files.items():
        dealer.send(Data(leader, 77, name, 0, data).encode())
    log = cluster.nodes[follower].log_path
    wait_for(lambda: "discarded the snapshot at index 1000000" in log.read_text(), 10, "the garbage refused")
    healthy(cluster, "snapshot")
    staging = Path(cluster.config.node_data_dir(follower)) / "topics.staging"
    assert not staging.exists()
    cluster.kill(follower)  # what is on its disk must start: nothing of the garbage was installed
    cluster.start(follower)
    cluster.wait_up()
    reader = cluster.client([follower])

    def kept() -> list[bytes]:
        history = reader.request_to(cluster.addr(follower), "HISTORY", topic="kept", limit=100)
        return [m["data"] for m in history["messages"]]

    wait_for(lambda: len(kept()) == 20, 10, "the follower to apply what it holds")
    assert kept() == [f"m{k}".encode() for k in range(20)]


def test_transfer_frames_not_from_the_current_leader_at_its_term_are_refused(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """Manifests from a follower, from a node that is no peer, and from the leader's name at another
    term (a forged higher term would make the core take it) stage nothing."""
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    follower, other = [nid for nid in cluster.nodes if nid != leader]
    dealer = raft_dealer(cluster, zmq_socket, follower)
    for sender, manifest_term in ((other, term), ("intruder", term), (leader, term + 1), (leader, term - 1),
                                  (leader, 2**63 - 1)):
        manifest, files = _garbage_snapshot(sender, manifest_term, 10**6)
        dealer.send(ManifestFrame(sender, 5, manifest).encode())
        for name, data in files.items():
            dealer.send(Data(sender, 5, name, 0, data).encode())
    healthy(cluster, "refused")
    assert not (Path(cluster.config.node_data_dir(follower)) / "topics.staging").exists()
    assert wait_for(lambda: agreed_leader(cluster), 10, "the same leader") == (leader, term)


def test_a_flood_of_unsolicited_snapshot_chunks_leaves_memory_bounded(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """1024 DATA frames of 1 MiB nobody asked for (in the leader's name and in a stranger's) once
    took a node to 2.5 GB, kept after the sender left: now none is kept or written, the node takes
    them 64 MiB a turn, and what each flood took goes back to the system (wiber.node.heap) once the
    node has worked through it: its resident memory returns to within 128 MiB of where it began."""
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    follower = next(nid for nid in cluster.nodes if nid != leader)
    pid = cluster.nodes[follower].pid
    chunk = os.urandom(CHUNK_BYTES)
    figures = [rss_mib(pid)]
    for flood in range(2):
        dealer = raft_dealer(cluster, zmq_socket, follower)
        for k in range(1024):
            sender = leader if k % 2 else "intruder"
            dealer.send(Data(sender, k, "index.db", k * CHUNK_BYTES, chunk).encode(), copy=False)
        dealer.close(linger=5000)  # the sender leaves once its frames are out
        healthy(cluster, f"flood-{flood}")
        figures.append(rss_mib(pid))
        wait_for(lambda: rss_mib(pid) < figures[0] + 128, 30, f"the memory of flood {flood} to go back")
    peak = rss_mib(pid, "VmHWM")
    print(f"unsolicited 2 x 1024 x 1 MiB: follower RSS before {figures[0]:.0f} MiB, right after the first flood "
          f"{figures[1]:.0f} MiB, after the second {figures[2]:.0f} MiB, then {rss_mib(pid):.0f} MiB; "
          f"peak {peak:.0f} MiB")
    assert not (Path(cluster.config.node_data_dir(follower)) / "topics.staging").exists()


def test_ten_thousand_fresh_client_ids_take_bounded_memory(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """10,000 client_ids in a burst, pipelined on one DEALER: sessions are capped in number and bytes,
    so memory grows by a bounded amount. (Without authentication they evict another client's session,
    whose retry then gets SESSION_EXPIRED, never a second copy: docs, `wiber.broker.sessions`.)"""
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    pid = cluster.nodes[leader].pid
    before = rss_mib(pid)
    dealer = zmq_socket(zmq.DEALER)
    dealer.connect(cluster.addr(leader))
    total = 10_000
    for k in range(total):
        request = {"op": "PUB", "topic": "sessions", "data": b"x", "client_id": f"flood-{k}", "seq": 1, "id": k}
        dealer.send_multipart([b"", msgpack.packb(request)])
    answered = 0
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    deadline_polls = 600
    while answered < total and deadline_polls:
        if not poller.poll(100):
            deadline_polls -= 1
            continue
        while True:
            try:
                _, body = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            assert msgpack.unpackb(body)["ok"]
            answered += 1
    assert answered == total
    healthy(cluster, "sessions")
    after = rss_mib(pid)
    print(f"10,000 fresh client_ids: leader RSS before {before:.0f} MiB, after {after:.0f} MiB")
    assert after - before < 128, (before, after)


@pytest.mark.parametrize("consistency", ["local", "linearizable"])
def test_history_requests_whose_replies_nobody_reads_take_bounded_memory(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket],
        consistency: str) -> None:
    """A 29-byte HISTORY once got a 100 MiB reply, and 20 such requests left unread took a node from
    281 MB to 1.9 GB. Now a reply stops at max_reply_bytes (4 MiB) and a connection may leave only
    4 replies' worth unread: 200 requests from a client that reads nothing cost the node what 4
    do, the rest are answered UNAVAILABLE, and other clients read as before. Linearizable reads,
    parked all in one turn before any is answered, are checked again when answered."""
    cluster = cluster_factory(1)
    client = cluster.client(total_s=30.0)
    for k in range(24):
        client.publish("big", bytes([k]) * (1 << 20))
    pid = cluster.nodes["n1"].pid
    before = rss_mib(pid)
    attacker = zmq_socket(zmq.DEALER)
    attacker.setsockopt(zmq.RCVHWM, 1)  # reads nothing: libzmq takes one reply, the kernel a few MiB
    attacker.setsockopt(zmq.RCVBUF, 64 * 1024)
    attacker.connect(cluster.addr("n1"))
    requests = 200
    for k in range(requests):
        attacker.send_multipart([b"", msgpack.packb({"op": "HISTORY", "topic": "big", "limit": 1000, "id": k,
                                                     "consistency": consistency})])

    def refused() -> int:
        return int(client.request("STATUS")["transport"]["history_refused"])

    wait_for(lambda: refused() >= requests - 10, 30, "the unread connection's later HISTORY requests to be refused")
    after = rss_mib(pid)
    page = client.history("big", limit=1000)  # another connection reads as before
    offsets = [m.offset for m in page.messages]
    assert 1 <= len(offsets) <= 4 and offsets == list(range(len(offsets))) and page.next_offset == len(offsets)
    healthy(cluster, "after")
    print(f"{requests} unread HISTORY replies: node RSS before {before:.0f} MiB, after {after:.0f} MiB")
    assert after - before < 128, (before, after)  # 200 x 4 MiB would be 800 MiB
    attacker.close(linger=0)
    wait_for(lambda: client.request("STATUS")["transport"]["unsent_reply_bytes"] == 0, 30,
             "the replies of the closed connection to be let go")


def test_a_running_nodes_data_directory_is_0700_and_its_files_0600(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """Messages, sessions and the log are readable by the node's own user only."""
    cluster = cluster_factory(3, snapshot_every=5)
    client = cluster.client()
    for k in range(30):
        client.publish("private", f"m{k}".encode())
    root = Path(cluster.config.cluster.data_dir)
    wait_for(lambda: any(p.name.endswith(".snap") or "snapshot" in p.name for p in root.rglob("*")), 10,
             "a checkpoint on disk")
    wrong = {}
    for path in [root, *root.rglob("*")]:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            continue  # removed while walking (a compaction)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[str(path)] = oct(mode)
    assert not wrong, wrong
