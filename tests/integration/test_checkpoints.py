"""Checkpoints with the messages on disk (DESIGN section 9), on real processes: a data directory of
the first format is migrated, checkpoints taken every few entries keep the leader and every message,
and the topic segments' files stay few whatever the number of topics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

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
    page = cluster.client().history("orders.2999", from_offset=0)
    assert [m.data for m in page.messages] == [b"order 2999"]
