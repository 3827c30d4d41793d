"""A node's checkpoints keep consumer groups: the broker `Checkpoints.load` rebuilds holds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import ClusterHarness
from wiber.broker import Broker, BrokerSettings, PubOp
from wiber.broker.checkpoint import take_delta
from wiber.broker.consumers import CreateGroupOp, FetchOp
from wiber.broker.snapshot import dump
from wiber.node.checkpoints import Checkpoints
from wiber.storage import DurableStorage
from wiber.storage.topics import TopicStore


def test_a_group_and_its_pending_deliveries_survive_a_checkpoint_and_load(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1, start=False)
    config = cluster.config
    settings = BrokerSettings()
    storage = DurableStorage.open(config.node_data_dir("n1"))
    checkpoints = Checkpoints(config, "n1", storage, settings)
    checkpoints.store.close()  # written below as the node's checkpoint thread would, then loaded
    store = TopicStore.open(checkpoints.topics_dir)
    try:
        broker = Broker(settings, store)
        broker.apply_entry_ops(1, 1.0, [PubOp("orders.eu", (b"a",), False),
                                        CreateGroupOp("g", "orders.*", 30_000, True)])
        fetched: Any = broker.apply_entry_ops(2, 2.0, [FetchOp("g", "m1", 10)]).consumer_results[0][1]
        assert [(d.topic, d.offset) for d in fetched.deliveries] == [("orders.eu", 0)]
        job = store.prepare_checkpoint(1, take_delta(broker))
        job.run()
        store.finish_checkpoint(job)
        expected = dump(broker)
    finally:
        store.close()
    checkpoints = Checkpoints(config, "n1", storage, settings)
    try:
        loaded = checkpoints.load()
        assert "g" in loaded.groups.groups and dump(loaded) == expected
    finally:
        checkpoints.store.close()
        storage.close()
