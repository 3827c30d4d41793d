"""Checkpoints with the messages on disk (docs/storage.md), on real processes: a data directory of
the first format is migrated, checkpoints taken every few entries keep the leader and every message,
and the topic segments' files stay few whatever the number of topics."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Callable

import msgpack
import zmq

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_durability import local_log
from tests.integration.test_election import agreed_leader
from wiber.broker import Broker, BrokerSettings, PubOp, encode_entry
from wiber.raft.messages import Entry, EntryKind, HardState
from wiber.storage import DurableStorage


def test_a_first_format_data_directory_is_migrated_at_start(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """Before the topic segments, a node's Raft snapshot held every message; such a directory starts
    and serves every message, and the migration is said in the log."""
    cluster = cluster_factory(1, start=False)
    broker = Broker(BrokerSettings())
    entries = []
    for index in range(1, 31):
        ops = [PubOp("old", (b"m%d" % index,), False, None, None, None, 0, False)]
        data = encode_entry(1_700_000_000.0 + index, ops)
        broker.apply(index, data)
        entries.append(Entry(index, 1, EntryKind.NORMAL, data))
    directory = cluster.config.node_data_dir("n1")
    with DurableStorage.open(directory) as storage:
        storage.append(entries)
        storage.set_hard_state(HardState(1, "n1", 30))
        storage.sync()
        storage.compact(20, Broker.restore(_state_at(20, entries), BrokerSettings()).snapshot())
    cluster.start()
    cluster.wait_up()
    wait_for(lambda: agreed_leader(cluster), 10, "the node to lead")
    expected = [(n, b"m%d" % (n + 1)) for n in range(30)]
    wait_for(lambda: local_log(cluster, "n1", "old") == expected, 10, "the migrated messages and the log tail")
    assert "migrating the snapshot at index 20" in cluster.nodes["n1"].log_path.read_text()
    assert any(name.startswith("seg-") for name in os.listdir(Path(directory) / "topics"))


def _state_at(index: int, entries: list[Entry]) -> bytes:
    """Returns: the first-format snapshot bytes of a broker that applied `entries` up to `index`."""
    broker = Broker(BrokerSettings())
    for entry in entries[:index]:
        broker.apply(entry.index, entry.data)
    return broker.snapshot()


def test_checkpoints_every_few_entries_keep_the_leader_and_every_message(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, snapshot_every=3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    client = cluster.client()
    for i in range(300):
        client.publish("busy", b"%d" % i)
    after, term_after = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    assert (after, term_after) == (leader, term)  # a node's own checkpoint never costs the cluster its leader
    expected = [(n, b"%d" % n) for n in range(300)]
    for nid in cluster.nodes:
        wait_for(lambda nid=nid: local_log(cluster, nid, "busy") == expected, 10, f"{nid} to hold every message")
        status = cluster.client([nid]).status()
        assert status["snapshot_index"] > 250  # checkpoints were taken and the log compacted up to them
        assert status["checkpoint"]["taken"] >= 50 and status["checkpoint"]["index"] >= status["snapshot_index"]


def test_many_topics_live_in_a_few_files(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, snapshot_every=5)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    from wiber.publisher import Publisher

    with Publisher(cluster.addrs(), batch_size=100, linger_s=0.002, window=50) as publisher:
        futures = [publisher.publish(f"orders.{n}", b"order %d" % n) for n in range(3000)]
        publisher.flush()
    assert all(f.result().offset == 0 for f in futures)
    for nid in cluster.nodes:
        directory = Path(cluster.config.node_data_dir(nid))
        files = [p for p in directory.rglob("*") if p.is_file()]
        assert len(files) < 30, files
    page = cluster.client().history("orders.2999", from_offset=0, consistency="linearizable")
    assert [m.data for m in page.messages] == [b"order 2999"]


def _fill(cluster: ClusterHarness, topic: str, count: int, size: int) -> None:
    """Publish `count` messages of `size` bytes (message n starts with its number) with the Publisher."""
    from wiber.publisher import Publisher

    filler = b"." * size
    with Publisher(cluster.addrs(), batch_size=200, linger_s=0.002, window=8) as publisher:
        for n in range(count):
            publisher.publish(topic, (b"%08d" % n + filler)[:size])
        publisher.flush()


def _status(cluster: ClusterHarness, node_id: str) -> dict[str, object] | None:
    try:
        return cluster.client([node_id], per_try_s=0.5, total_s=0.5).status()
    except Exception:
        return None


def _caught_up(cluster: ClusterHarness, node_id: str, index: int) -> bool:
    status = _status(cluster, node_id)
    return status is not None and int(status["applied_index"]) >= index  # type: ignore[call-overload]


def _check_topic(cluster: ClusterHarness, node_id: str, topic: str, count: int) -> None:
    """Every message of `topic` is on `node_id`, in order (read in pages, the first bytes compared)."""
    held = local_log(cluster, node_id, topic)
    assert [offset for offset, _ in held] == list(range(count))
    assert all(data[:8] == b"%08d" % offset for offset, data in held)


def test_a_wiped_follower_streams_a_snapshot_over_64_mib(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """A Raft frame is refused over 64 MiB; the snapshot is streamed as files, 1 MiB at a time."""
    cluster = cluster_factory(3, snapshot_every=5, segment_bytes=16 << 20)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    count, size = 18_000, 4096  # 72 MiB of messages
    _fill(cluster, "big", count, size)
    victim = next(n for n in cluster.nodes if n != leader)
    cluster.kill(victim)
    shutil.rmtree(cluster.config.node_data_dir(victim))
    cluster.start(victim)
    target = int(_status(cluster, leader)["applied_index"])  # type: ignore[index, call-overload]
    wait_for(lambda: _caught_up(cluster, victim, target), 60, f"wiped {victim} to catch up")
    _check_topic(cluster, victim, "big", count)
    leader_log = cluster.nodes[leader].log_path.read_text()
    assert "streams the checkpoint" in leader_log and f"to {victim}" in leader_log
    segments = list((Path(cluster.config.node_data_dir(victim)) / "topics").glob("seg-*.dat"))
    assert sum(p.stat().st_size for p in segments) > 64 << 20
    # Started empty without --join into a cluster with history: it said so, and what to do.
    victim_log = cluster.nodes[victim].log_path.read_text()
    assert "started with an empty log, but the cluster has history" in victim_log
    assert f"wiber cluster remove {victim}" in victim_log and "caught up with leader" in victim_log


def test_a_transfer_cut_by_the_leaders_death_finishes_from_the_next_leader(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    # Five nodes: a wiped node votes only once it caught up (wiber/raft/reconfig.py), so with three
    # the leader's death would leave one voter, and electing it could lose what the wiped disk held.
    cluster = cluster_factory(5, snapshot_every=5, segment_bytes=8 << 20)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    count, size = 12_000, 4096  # 48 MiB
    _fill(cluster, "cut", count, size)
    victim, *others = (n for n in cluster.nodes if n != leader)
    cluster.kill(victim)
    shutil.rmtree(cluster.config.node_data_dir(victim))
    staging = Path(cluster.config.node_data_dir(victim)) / "topics.staging"
    cluster.start(victim)

    def started() -> bool:
        return staging.is_dir() and sum(p.stat().st_size for p in staging.iterdir()) > 0

    wait_for(started, 30, "the transfer to start", interval=0.001)
    cluster.signal(victim, signal.SIGSTOP)  # it pulls: stopped, it asks for nothing more
    try:
        staged = sum(p.stat().st_size for p in staging.iterdir())
        assert 0 < staged < count * size  # mid-stream
        cluster.kill(leader)
    finally:
        cluster.signal(victim, signal.SIGCONT)
    other, _ = wait_for(lambda: agreed_leader(cluster, [victim, *others]), 20, "a new leader")
    target = int(_status(cluster, other)["applied_index"])  # type: ignore[index, call-overload]
    wait_for(lambda: _caught_up(cluster, victim, target), 60, f"wiped {victim} to catch up from {other}")
    _check_topic(cluster, victim, "cut", count)
    assert "streams the checkpoint" in cluster.nodes[other].log_path.read_text()


def test_a_batch_over_64_mib_reaches_every_follower(cluster_factory: Callable[..., ClusterHarness],
                                                    zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """With max_message_bytes at 5 MiB a PUB_BATCH may hold 80 MiB: its entry must not make an append
    frame the followers refuse (the peer frame limit follows the configuration). Raw zmq: the client
    library checks sizes against the default limits. Election timeouts of 3 s: writing and fsyncing
    70 MiB in one turn takes most of a second on this machine's shared disk, on every node at once."""
    cluster = cluster_factory(3, max_message_bytes=5 << 20, election_timeout_ms=3000, heartbeat_ms=300)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    messages = [b"%08d" % n + b"." * ((5 << 20) - 8) for n in range(14)]  # 70 MiB in one request
    request = msgpack.packb({"op": "PUB_BATCH", "topic": "huge", "messages": messages, "client_id": "big",
                             "seq": 1}, use_bin_type=True)
    reply: dict[str, object] = {}
    for _ in range(5):  # a 70 MiB write can hold the leader's loop past an election: retry, exactly once
        leader, _ = wait_for(lambda: agreed_leader(cluster), 20, "a leader")
        req = zmq_socket(zmq.REQ)
        req.connect(cluster.addr(leader))
        req.send(request)
        assert req.poll(60_000), "no answer to the 70 MiB batch"
        reply = msgpack.unpackb(req.recv(), raw=False)
        if reply["ok"]:
            break
        assert reply["error"] in ("UNAVAILABLE", "NOT_LEADER"), reply
    assert reply["ok"] and reply["offset"] == 0 and reply["count"] == 14, reply
    for nid in cluster.nodes:
        wait_for(lambda nid=nid: [o for o, _ in local_log(cluster, nid, "huge")] == list(range(14)), 30,
                 f"{nid} to hold the 70 MiB batch, once")


def test_a_second_export_at_the_same_index_keeps_its_files(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """The core repeats InstallSnapshot while an export is written, and a second follower may need one
    too: an export at an index already exported must not remove its own files (review finding)."""
    from wiber.node.checkpoints import Checkpoints
    from wiber.raft.messages import Entry, EntryKind
    from wiber.storage import DurableStorage

    cluster = cluster_factory(1, start=False)
    settings = BrokerSettings()
    with DurableStorage.open(cluster.config.node_data_dir("n1")) as storage:
        checkpoints = Checkpoints(cluster.config, "n1", storage, settings)
        try:
            broker = checkpoints.load()
            for index in range(1, 6):
                data = encode_entry(1_700_000_000.0, [PubOp("t", (b"m%d" % index,), False, None, None, None, 0, False)])
                storage.append([Entry(index, 1, EntryKind.NORMAL, data)])
                broker.apply(index, data)
            storage.sync()
            exports = []
            for _ in range(2):  # the same applied index both times
                checkpoints.want_export()
                assert checkpoints.due(broker.applied_index)
                checkpoints.start(broker)
                checkpoints.want_export()  # a repeat while it is written: not a second request
                checkpoints.wait()
                assert checkpoints.export is not None and checkpoints.export.export_dir is not None
                exports.append(checkpoints.export.export_dir)
            assert exports[0] != exports[1] and not Path(exports[0]).exists()
            held = sorted(p.name for p in Path(exports[1]).iterdir())
            assert held == sorted(name for name, _, _ in checkpoints.export.exported)
            assert not checkpoints.due(broker.applied_index)  # the repeat asked for nothing more
        finally:
            checkpoints.close()
