"""Real node processes on 127.0.0.1 spoken to with raw zmq and msgpack only (docs/design.md section 3)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any, Callable

import msgpack
import zmq

from tests.conftest import REPO, ClusterHarness, raw_request, wait_for
from wiber.node.loop import PUB_HEARTBEAT_S, TRANSFER_GRACE_S

ROLES = {"follower", "pre_candidate", "candidate", "leader"}


def _req(zmq_socket: Callable[[int], zmq.Socket], addr: str) -> zmq.Socket:
    sock = zmq_socket(zmq.REQ)
    sock.connect(addr)
    return sock


def test_three_nodes_answer_ping_over_raw_req(cluster_factory: Callable[..., ClusterHarness],
                                              zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(3)
    for node in cluster.config.nodes:
        sock = _req(zmq_socket, node.client_addr)
        before = time.time()
        reply = raw_request(sock, msgpack.packb({"op": "PING"}, use_bin_type=True))
        assert reply["ok"] is True
        assert reply["op"] == "PONG"
        assert reply["node"] == node.id
        assert reply["role"] in ROLES
        assert isinstance(reply["term"], int)
        assert reply["leader"] is None or reply["leader"] in cluster.nodes
        assert abs(reply["time"] - before) < 5.0


def test_bad_input_gets_the_contract_error_and_the_node_keeps_running(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(1)
    addr = cluster.addr("n1")
    cases: list[tuple[bytes, str]] = [
        (b"\xc1\xff garbage", "BAD_REQUEST"),
        (msgpack.packb(["PING"], use_bin_type=True), "BAD_REQUEST"),
        (msgpack.packb({"op": "PUB", "data": b"x"}, use_bin_type=True), "BAD_REQUEST"),
        (msgpack.packb({"op": "PUB", "topic": "$sys", "data": b"x"}, use_bin_type=True), "BAD_REQUEST"),
        (msgpack.packb({"op": "HISTORY", "topic": "t", "limit": 5000}, use_bin_type=True), "BAD_REQUEST"),
        (msgpack.packb({"op": "NOPE"}, use_bin_type=True), "UNKNOWN_OP"),
        (msgpack.packb({"nop": 1}, use_bin_type=True), "BAD_REQUEST"),
        (b"", "BAD_REQUEST"),
    ]
    for body, code in cases:
        sock = _req(zmq_socket, addr)
        reply = raw_request(sock, body)
        assert reply["ok"] is False, body
        assert reply["error"] == code, (body, reply)
        assert isinstance(reply["message"], str) and reply["message"]
    sock = _req(zmq_socket, addr)
    assert raw_request(sock, msgpack.packb({"op": "PING"}))["op"] == "PONG"
    assert cluster.nodes["n1"].running()


def test_too_large_message_is_refused(cluster_factory: Callable[..., ClusterHarness],
                                      zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(1, max_message_bytes=1024)
    sock = _req(zmq_socket, cluster.addr("n1"))
    reply = raw_request(sock, msgpack.packb({"op": "PUB", "topic": "t", "data": b"x" * 1025}, use_bin_type=True))
    assert reply["error"] == "TOO_LARGE"


def test_dealer_client_gets_its_request_id_echoed(cluster_factory: Callable[..., ClusterHarness],
                                                   zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(1)
    dealer = zmq_socket(zmq.DEALER)
    dealer.connect(cluster.addr("n1"))
    for i in range(5):
        dealer.send_multipart([b"", msgpack.packb({"op": "PING", "id": i})])
    seen = []
    for _ in range(5):
        assert dealer.poll(2000)
        empty, body = dealer.recv_multipart()
        assert empty == b""
        reply = msgpack.unpackb(body, raw=False)
        seen.append(reply["id"])
    assert sorted(seen) == [0, 1, 2, 3, 4]
    dealer.send_multipart([b"", msgpack.packb({"op": "WHAT", "id": "abc"})])
    assert dealer.poll(2000)
    reply = msgpack.unpackb(dealer.recv_multipart()[1], raw=False)
    assert reply["id"] == "abc" and reply["error"] == "UNKNOWN_OP"


def test_any_envelope_before_the_body_comes_back_with_the_reply(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """The node answers with every frame before the body, whatever their number (none, a
    delimiter, a proxy's extra routing frames), and a message never spills into the next one."""
    cluster = cluster_factory(1)
    dealer = zmq_socket(zmq.DEALER)
    dealer.connect(cluster.addr("n1"))
    envelopes: list[list[bytes]] = [[], [b""], [b"hop", b""], [b"a", b"b", b""], [b"", b""]]
    for i, envelope in enumerate(envelopes):
        dealer.send_multipart([*envelope, msgpack.packb({"op": "PING", "id": i})])
    for i, envelope in enumerate(envelopes):
        assert dealer.poll(2000)
        *got, body = dealer.recv_multipart()
        assert got == envelope
        reply = msgpack.unpackb(body, raw=False)
        assert reply["id"] == i and reply["op"] == "PONG"
    dealer.send_multipart([b""])  # only a delimiter: an empty body, refused, and nothing else disturbed
    dealer.send_multipart([b"", msgpack.packb({"op": "PING", "id": "after"})])
    assert dealer.poll(2000)
    assert msgpack.unpackb(dealer.recv_multipart()[-1], raw=False)["error"] == "BAD_REQUEST"
    assert dealer.poll(2000)
    assert msgpack.unpackb(dealer.recv_multipart()[-1], raw=False)["id"] == "after"


def test_status_reports_peer_contact(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)

    def leader_status() -> dict[str, Any] | None:
        # Followers talk only to the leader, so the leader is the node that hears from every peer.
        for nid in cluster.nodes:
            st = cluster.client([nid]).status()
            peers = st["peers"]
            if st["role"] == "leader" and all(p["last_contact_ms"] is not None for p in peers.values()):
                return st
        return None

    st = wait_for(leader_status, 10, "a leader that hears from both peers")
    assert set(st["peers"]) == {"n1", "n2", "n3"} - {st["node"]}
    for key in ("role", "term", "leader", "commit_index", "applied_index", "last_index", "snapshot_index",
                "clock", "uptime_s"):
        assert key in st
    assert all(p["last_contact_ms"] < 2000 for p in st["peers"].values())
    assert set(st["clock"]) >= {"offset_ms", "error_ms"}


def test_pub_socket_sends_heartbeats(cluster_factory: Callable[..., ClusterHarness],
                                     zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(1)
    sub = zmq_socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"$hb\0")
    sub.connect(cluster.config.node("n1").pub_addr)
    assert sub.poll(3000), "no heartbeat within 3 s"
    topic, body = sub.recv_multipart()
    assert topic == b"$hb\0"
    hb = msgpack.unpackb(body, raw=False)
    assert hb["node"] == "n1" and "term" in hb and "commit_index" in hb and "time" in hb
    first = time.monotonic()
    assert sub.poll(3000)
    sub.recv_multipart()
    assert time.monotonic() - first < 4 * PUB_HEARTBEAT_S  # every heartbeat period, not seconds apart


def test_sigterm_exits_cleanly_within_a_second(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1)
    started = time.monotonic()
    status = cluster.stop("n1", timeout=5)
    assert status == 0
    # A stopping node waits at most TRANSFER_GRACE_S for a leadership transfer; the rest is its exit.
    assert time.monotonic() - started < TRANSFER_GRACE_S + 0.4


def test_port_in_use_is_one_clear_line_and_exit_2(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1, start=False)
    node = cluster.config.node("n1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", node.port))
        blocker.listen(1)
        out = subprocess.run(
            [sys.executable, "-m", "wiber", "node", "--config", str(cluster.config_path), "--id", "n1"],
            capture_output=True, text=True, timeout=20, cwd=str(REPO),
        )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert str(node.port) in lines[0] and "in use" in lines[0]


def test_bad_config_refuses_to_start_with_exit_2(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - {id: n1, host: 127.0.0.1, port: 70000}\n")
    out = subprocess.run([sys.executable, "-m", "wiber", "node", "--config", str(bad), "--id", "n1"],
                         capture_output=True, text=True, timeout=20, cwd=str(REPO))
    assert out.returncode == 2
    assert str(bad) in out.stderr and "port" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_status_prints_one_row_per_node(cluster_factory: Callable[..., ClusterHarness]) -> None:
    from tests.integration.test_election import agreed_leader

    cluster = cluster_factory(3)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")  # exit 0 needs one; without it, 3
    out = subprocess.run([sys.executable, "-m", "wiber", "status", "--config", str(cluster.config_path)],
                         capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[0] == "NODE"
    assert sorted(line.split()[0] for line in lines[1:]) == ["n1", "n2", "n3"]


def test_cli_ping_reports_a_down_node(cluster_factory: Callable[..., ClusterHarness]) -> None:
    from tests.integration.test_election import agreed_leader

    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    cluster.kill(next(nid for nid in cluster.nodes if nid != leader))  # the leader's loss would be exit 3
    out = subprocess.run([sys.executable, "-m", "wiber", "ping", "--config", str(cluster.config_path),
                          "--timeout", "0.3"], capture_output=True, text=True, timeout=30, cwd=str(REPO))
    assert out.returncode == 1  # some nodes down, a quorum with its leader left
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    assert sum("DOWN" in line for line in lines) == 1


def test_cli_up_starts_every_node_and_ctrl_c_stops_them(cluster_factory: Callable[..., ClusterHarness]) -> None:
    import signal

    cluster = cluster_factory(3, start=False)
    out_path = cluster.root / "up.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wiber", "up", "--config", str(cluster.config_path)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    try:
        wait_for(lambda: out_path.read_text().count(" is up") == 3, 20, "all three nodes up in `wiber up`")
        for node in cluster.config.nodes:
            assert wait_for(lambda node=node: cluster.ping(node.id), 5, f"{node.id} PING")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out_path.read_text()
    for node in cluster.config.nodes:
        assert node.client_addr in text
        assert f"{node.id} stopped (status 0)" in text


def test_garbage_on_the_raft_port_is_dropped_and_the_cluster_stays_healthy(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    import os as _os

    from tests.integration.test_election import agreed_leader

    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    bad_frames = [
        b"", b"\x00", _os.urandom(64), msgpack.packb(["AE", 1, 2, 3]), msgpack.packb({"term": 2 ** 64 - 1}),
        b"\xc1C" + _os.urandom(40),          # a broken snapshot chunk
        b"\xc1T\x01" + _os.urandom(3),        # a broken clock probe
        b"\xc1T\x02" + b"\x00" * 24 + b"n2",  # a clock reply from a peer that is not the leader
        msgpack.packb([1, 999, "n9", "n1"]),  # a well-framed message from an unknown sender
    ]
    from wiber.raft import InstallSnapshot, encode_message
    from wiber.raft.messages import SnapshotMeta
    from wiber.storage.transfer import FileInfo, Manifest, ManifestFrame

    for node in cluster.config.nodes:
        other = next(n.id for n in cluster.config.nodes if n.id != node.id)
        forged = [
            # a whole snapshot as one message, at the current term: snapshots only arrive as files
            encode_message(InstallSnapshot(term, other, node.id, SnapshotMeta(10**6, term), b"not a snapshot")),
            b"\xc1F" + _os.urandom(40),  # a broken snapshot transfer frame
            ManifestFrame(other, 7, Manifest(10**6, term, b"", (FileInfo("index.db", 10, 0),))).encode(),
        ]
        dealer = zmq_socket(zmq.DEALER)
        dealer.connect(node.raft_addr)
        for frame in bad_frames + forged:
            dealer.send_multipart([frame, frame])
    client = cluster.client()
    assert client.publish("after-garbage", b"ok").offset == 0
    new_leader, new_term = wait_for(lambda: agreed_leader(cluster), 10, "the same healthy cluster")
    assert (new_leader, new_term) == (leader, term)  # garbage did not trigger an election
    assert all(n.running() for n in cluster.nodes.values())


def test_the_loop_sleeps_until_its_next_timer_instead_of_spinning(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """With a timer less than a millisecond away, poll must still wait (a 0 ms timeout would turn
    the last part of every tick into a busy loop: ~9% of a core on an idle node, measured)."""
    from wiber.clock import FakeClock
    from wiber.node import TICK_MS, Node

    cluster = cluster_factory(1, start=False)
    clock = FakeClock()
    node = Node(cluster.config, "n1", clock=clock)
    timeouts: list[int] = []
    real_poll = node.transport.poll

    def recording_poll(timeout_ms: int) -> tuple[bool, bool, bool]:
        timeouts.append(timeout_ms)
        return real_poll(0)  # the test's clock does not move while polling

    node.transport.poll = recording_poll  # type: ignore[method-assign]
    try:
        node.run_once()  # fires the due timers: the next tick is TICK_MS ahead
        clock.advance(TICK_MS / 1000 - 0.0004)  # 0.4 ms before the next tick
        node.run_once()
    finally:
        node.close()
    assert timeouts[-1] == 1, timeouts


def test_commit_notices_wait_a_millisecond_for_an_append_to_ride_on(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """Empty appends (commit notices, heartbeats) are held; a read round's heartbeat and appends
    with entries go at once; an append to the same peer supersedes its held notice."""
    from wiber.clock import FakeClock
    from wiber.node import COMMIT_NOTICE_DELAY_S, Node
    from wiber.raft.messages import AppendEntries, Entry, EntryKind

    cluster = cluster_factory(3, start=False)
    clock = FakeClock()
    node = Node(cluster.config, "n1", clock=clock)
    try:
        def append(to: str, entries: tuple[Entry, ...] = (), ctx: int = 0) -> AppendEntries:
            return AppendEntries(1, "n1", to, 4, 1, entries, 4, ctx)

        notice2, notice3, read_round = append("n2"), append("n3"), append("n3", ctx=7)
        with_entry = append("n3", (Entry(5, 1, EntryKind.NORMAL, b"x"),))
        assert node.notices.hold([notice2, read_round, notice3, with_entry], clock.monotonic()) == [read_round, with_entry]
        assert node.notices.held == {"n2": [notice2], "n3": [notice3]}
        assert node.notices.due == clock.monotonic() + COMMIT_NOTICE_DELAY_S
        later = append("n2")  # e.g. a probe for a lost tail after a commit notice: both must go
        assert node.notices.hold([later], clock.monotonic()) == [] and node.notices.held["n2"] == [notice2, later]
        node.notices.drop_for([with_entry, append("n2", ctx=8)])  # a heartbeat does not replace a probe
        assert node.notices.held == {"n2": [notice2, later]}
        node.notices.hold([notice3], clock.monotonic())
        sent: list[tuple[str, list[bytes]]] = []
        node.transport.send_peer_frames = lambda peer, frames: sent.append((peer, frames)) or True  # type: ignore[method-assign]
        node._send_commit_notices()
        assert sorted((peer, len(frames)) for peer, frames in sent) == [("n2", 2), ("n3", 1)]
        assert node.notices.held == {} and node.notices.due is None
    finally:
        node.close()


class _SteppedNode:
    """A single-node leader on a FakeClock, whose disk can be made to stall, counting Raft ticks."""

    def __init__(self, cluster: ClusterHarness) -> None:
        from wiber.clock import FakeClock
        from wiber.node import TICK_MS, Node
        from wiber.raft import Role

        self.clock = FakeClock()
        self.node = node = Node(cluster.config, "n1", clock=self.clock)
        self.tick_s = TICK_MS / 1000
        self.ticks = 0
        self.stall_s = 0.0
        self.cpu_waited_s = 0.0  # what the scheduler says the loop thread waited for a CPU so far
        from wiber.node.cpuwait import CpuWaits
        node.raft_clock.cpu_waits = CpuWaits(lambda: self.cpu_waited_s)
        real_poll, real_tick = node.transport.poll, node.raft.tick
        node.transport.poll = lambda timeout_ms: real_poll(0)  # type: ignore[method-assign]  # fake time

        def counting_tick() -> None:
            self.ticks += 1
            real_tick()

        node.raft.tick = counting_tick  # type: ignore[method-assign]
        for _ in range(200):  # a single node elects itself after its election timeout
            self.idle(self.tick_s)
            if node.raft.role is Role.LEADER:
                break
        assert node.raft.role is Role.LEADER

    def stalling(self, real: Callable[..., None]) -> Callable[..., None]:
        """Returns: `real`, made to take `stall_s` of the node's clock."""
        def call(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            self.clock.advance(self.stall_s)
        return call

    def idle(self, seconds: float) -> int:
        """Returns: the ticks fired by a turn `seconds` after the last one, with nothing to do."""
        before = self.ticks
        self.clock.advance(seconds)
        self.node.run_once()
        return self.ticks - before

    def publish(self, stall_s: float) -> int:
        """Returns: the ticks fired while one PUB is written (its disk taking `stall_s`) and applied."""
        from wiber.node.transport import ClientRequest

        before, applied = self.ticks, self.node.applied_index
        self.stall_s = stall_s
        body = msgpack.packb({"op": "PUB", "topic": "t", "data": b"x"}, use_bin_type=True)
        self.node.clients.on_client_request(ClientRequest(envelope=[b"gone-client", b""], body=body))
        self.node.run_once()  # proposes, persists (the stall), commits, applies
        self.stall_s = 0.0
        self.node.run_once()
        assert self.node.applied_index > applied
        return self.ticks - before


def test_a_long_wait_on_the_disk_is_taken_off_raft_clock_but_a_slow_turn_is_not(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """While blocked in its own fsync a node hears nobody (on a shared disk its peers stall too),
    so that time must not count as their silence: 0.1-0.9 s stalls of one disk deposed healthy
    leaders through CheckQuorum. The time taken off is bounded by the Raft time ticked since, so a
    disk slow at every write cannot stop the clock. Time spent anywhere else in a turn still
    counts, one election timeout of ticks at most per turn."""
    from wiber.node import DISK_WAIT_CREDIT_MAX_S, ms_to_ticks

    cluster = cluster_factory(1, start=False)
    stepped = _SteppedNode(cluster)
    node, tick_s = stepped.node, stepped.tick_s
    node.storage.sync = stepped.stalling(node.storage.sync)  # type: ignore[method-assign]
    election_ticks = ms_to_ticks(cluster.config.cluster.election_timeout_ms)
    try:
        for _ in range(5):  # earn the full credit: a second of Raft time
            stepped.idle(0.25)
        assert node.raft_clock.credit == DISK_WAIT_CREDIT_MAX_S
        assert stepped.publish(0.5) == 0  # 50 ticks' worth of fsync: none of it counts
        assert stepped.idle(1.5 * tick_s) == 1  # the clock runs again afterwards
        assert stepped.publish(0.49) == 0  # the rest of the credit
        assert 15 <= stepped.publish(0.2) <= 20  # the credit is spent: the stall counts (but 0.02 s)
        assert stepped.idle(1.5 * tick_s) == 1  # one tick earns one tick of credit, so a disk slow
        assert stepped.publish(0.5) == election_ticks  # at every write still moves the clock on
        assert 19 <= stepped.idle(0.2 + tick_s / 2) <= 21  # a slow turn elsewhere: every tick counts
        assert stepped.idle(2.0) == election_ticks  # after a long stop: one election timeout at most
    finally:
        node.close()


def test_a_wait_for_a_cpu_is_taken_off_raft_clock_but_work_is_not(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """A loop thread standing in the run queue hears nobody and its starved peers send nothing: that
    time must not count as their silence (200 subscriber threads on two cores made 8 of 10 runs
    change leader with every node up). Only what the scheduler reports as a wait is taken off, from
    the same credit as disk waits."""
    from wiber.node import DISK_WAIT_CREDIT_MAX_S, ms_to_ticks

    cluster = cluster_factory(1, start=False)
    stepped = _SteppedNode(cluster)
    node, tick_s = stepped.node, stepped.tick_s
    election_ticks = ms_to_ticks(cluster.config.cluster.election_timeout_ms)
    try:
        for _ in range(5):
            stepped.idle(0.25)
        assert node.raft_clock.credit == DISK_WAIT_CREDIT_MAX_S
        stepped.cpu_waited_s += 0.4
        assert stepped.idle(0.4) <= 1  # 0.39 s late, all of it in the run queue: only the tick due counts
        assert stepped.idle(1.5 * tick_s) == 1  # the clock runs again afterwards
        stepped.cpu_waited_s += 0.1
        assert 19 <= stepped.idle(0.3) <= 21  # 0.3 s late, 0.1 s of it waiting: the 0.2 s of work counts
        stepped.cpu_waited_s += 0.05  # short waits in turns on time add up: a clock probe takes them off
        assert 24 <= sum(stepped.idle(tick_s) for _ in range(30)) <= 26
        assert sum(stepped.idle(tick_s) for _ in range(30)) == 30  # no wait: every tick counts
        stepped.cpu_waited_s += 5.0
        assert stepped.idle(5.0) == election_ticks  # the credit (1 s) is spent: at most one timeout counts
    finally:
        node.close()


def test_a_long_snapshot_write_is_taken_off_raft_clock(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """The checkpoint's slow half runs on its own thread; the log compaction that follows it is on the
    loop, and a long wait there is taken off Raft's clock like an fsync's."""
    cluster = cluster_factory(1, start=False, snapshot_every=1)
    stepped = _SteppedNode(cluster)
    node = stepped.node
    node.storage.compact = stepped.stalling(node.storage.compact)  # type: ignore[method-assign]
    try:
        for _ in range(5):
            stepped.idle(0.25)
        snapshots = node.storage.last_snapshot_index
        assert stepped.publish(0.0) == 0  # applied; its checkpoint is being written on the thread
        assert node.checkpoints.running
        node.checkpoints.join(timeout=30)
        stepped.stall_s = 0.5
        assert stepped.idle(0.0) == 0  # takes the checkpoint in, compacts (the stall): nothing counts
        stepped.stall_s = 0.0
        assert node.storage.last_snapshot_index > snapshots
        assert stepped.idle(1.5 * stepped.tick_s) == 1  # the 0.5 s in compaction was taken off
    finally:
        node.close()


def test_client_and_pub_ports_listen_with_a_deep_backlog(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """libzmq listens with a queue of 100: 1,000 clients connecting at once overflowed it and waited a
    second for each retried SYN. The kernel's own view of the listening sockets (ss's Send-Q) is checked."""
    import shutil

    from wiber.node import Node
    from wiber.node.transport import LISTEN_BACKLOG

    if shutil.which("ss") is None:
        raise AssertionError("this test needs ss (iproute2): run tools/install-system-deps.sh")
    cluster = cluster_factory(1, start=False)
    node = Node(cluster.config, "n1")
    try:
        me = cluster.config.node("n1")
        expected = min(LISTEN_BACKLOG, int(open("/proc/sys/net/core/somaxconn").read()))
        for port in (me.port, me.pub_port):
            out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                                 check=True).stdout.split()
            assert int(out[2]) == expected, (port, out)
    finally:
        node.close()
