"""Membership change on real nodes (issue 19, docs/operations.md "Membership"): grow 3 -> 5 -> 3 voters
while a publisher runs, replace a node's disk under load, a removed node that comes back with its old
data cannot disturb the cluster, and a removed leader is replaced at once."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from tests.conftest import ClusterHarness, wait_for
from tests.integration.test_cli import ok
from tests.integration.test_election import agreed_leader
from wiber.client import Client
from wiber.errors import WiberError
from wiber.node import Node
from wiber.raft import AppendEntries, encode_message


class Load:
    """A publisher thread: numbered messages to one topic, each acknowledged before the next; records
    what was acknowledged and the longest time any publish took (an error counts until the next ok)."""

    def __init__(self, cluster: ClusterHarness, topic: str = "load") -> None:
        self.client = cluster.client(per_try_s=0.3, total_s=10.0)
        self.topic = topic
        self.acked: list[bytes] = []
        self.errors: list[str] = []
        self.longest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def _run(self) -> None:
        k = 0
        since = time.monotonic()
        while not self._stop.is_set() and k < 20_000:
            data = b"m%d" % k
            try:
                self.client.publish(self.topic, data)
            except WiberError as exc:
                self.errors.append(repr(exc))
                continue
            now = time.monotonic()
            self.longest_s = max(self.longest_s, now - since)
            since = now
            self.acked.append(data)
            k += 1
            self._stop.wait(0.005)

    def check(self, cluster: ClusterHarness, nodes: list[str], what: str) -> None:
        """Every node of `nodes` holds every acknowledged message, and no publish took 2 s or more."""
        holds_all(cluster, nodes, self.acked)
        print(f"{what}: {len(self.acked)} acknowledged, longest publish {self.longest_s:.3f} s")
        assert self.longest_s < 2.0, f"a publish waited {self.longest_s:.2f} s ({self.errors[-3:]})"

    def wait_for_more(self, count: int = 20) -> None:
        """Wait until `count` more messages are acknowledged (the load goes on)."""
        target = len(self.acked) + count
        wait_for(lambda: len(self.acked) >= target, 15, f"{count} more publishes ({self.errors[-3:]})")


def stored(client: Client, topic: str) -> list[bytes]:
    """Returns: every message of `topic` as the node `client` talks to has applied it (local reads)."""
    out: list[bytes] = []
    while True:
        page = client.history(topic, from_offset=len(out), limit=1000)
        out += [m.data for m in page.messages]
        if not page.messages:
            return out


def holds_all(cluster: ClusterHarness, nodes: list[str], acked: list[bytes]) -> None:
    """Every node of `nodes` holds every acknowledged message, once and in order."""
    for node in nodes:
        client = cluster.client([node])

        def check(c: Client = client) -> bool:
            got = stored(c, "load")
            return got[:len(acked)] == acked

        wait_for(check, 20, f"{node} to hold all {len(acked)} acknowledged messages")


def members(cluster: ClusterHarness, node: str) -> dict[str, Any]:
    return cluster.client([node]).request_to(cluster.addr(node), "MEMBERS")


def test_three_to_five_to_three_voters_under_load(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    with Load(cluster) as load:
        load.wait_for_more()
        for new in ("n4", "n5"):
            cluster.grow(new)
            cluster.start(new, join=True)
            lines, _ = ok(cluster, "cluster", "add", new, "--wait", "60")
            assert lines[-1].startswith(f"{new} is a voter"), lines
            load.wait_for_more()
        leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader of five")
        assert members(cluster, leader)["voters"] == ["n1", "n2", "n3", "n4", "n5"]
        lines, _ = ok(cluster, "cluster", "list")
        five = ("n1", "n2", "n3", "n4", "n5")
        assert [line.split()[:2] for line in lines[1:]] == [[n, "voter"] for n in five]
        assert json.loads(ok(cluster, "cluster", "list", "--json")[0][0])["leader"] == leader
        # Shrink back to three, the leader among the removed: it hands over first.
        gone = [leader, next(n for n in ("n1", "n2", "n3") if n != leader)]
        for node in gone:
            lines, _ = ok(cluster, "cluster", "remove", node, "--wait", "30")
            assert lines[-1].startswith(f"{node} was removed"), lines
            load.wait_for_more()
        for node in gone:
            cluster.stop(node)
        load.wait_for_more()
    rest = [n for n in cluster.nodes if n not in gone]
    final = members(cluster, rest[0])
    assert final["voters"] == sorted(rest) and not final["learners"]
    load.check(cluster, rest, "3 -> 5 -> 3")


def test_a_disk_replaced_under_load_loses_nothing(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    victim = next(n for n in cluster.nodes if n != leader)
    with Load(cluster) as load:
        load.wait_for_more()
        ok(cluster, "cluster", "remove", victim, "--wait", "30")
        cluster.kill(victim)
        shutil.rmtree(cluster.config.node_data_dir(victim))  # the new disk
        load.wait_for_more()
        cluster.start(victim, join=True)
        ok(cluster, "cluster", "add", victim, "--wait", "60")
        load.wait_for_more()
    assert members(cluster, leader)["voters"] == sorted(cluster.nodes)
    load.check(cluster, list(cluster.nodes), "disk replaced")


def test_a_removed_node_back_with_its_old_data_cannot_disturb(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    removed = next(n for n in cluster.nodes if n != leader)
    cluster.stop(removed)  # down while it is removed: it never learns of it
    ok(cluster, "cluster", "remove", removed, "--wait", "30")
    rest = [n for n in cluster.nodes if n != removed]
    leader, term = wait_for(lambda: agreed_leader(cluster, rest), 10, "the leader of two")
    cluster.start(removed)  # its old data says it is a voter: it campaigns, and nobody listens
    deadline = time.monotonic() + 10 * cluster.timing.election_timeout_s
    client = cluster.client(rest)
    k = 0
    while time.monotonic() < deadline:  # the two go on serving meanwhile, under one leader and term
        client.publish("t", b"%d" % k)
        k += 1
        assert agreed_leader(cluster, rest) == (leader, term)
    pong = cluster.ping(removed)
    assert pong is not None and pong["role"] != "leader"
    assert members(cluster, leader)["voters"] == sorted(rest)


def test_the_leader_removed_a_new_leader_within_a_second(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    rest = [n for n in cluster.nodes if n != leader]
    client = cluster.client([leader])
    client.publish("t", b"before")
    started = time.monotonic()
    client.request_to(cluster.addr(leader), "MEMBER_REMOVE", node=leader)
    new, _ = wait_for(lambda: agreed_leader(cluster, rest), 5, "a new leader", interval=0.01)
    took = time.monotonic() - started
    print(f"leader {leader} removed: {new} leads after {took:.3f} s")
    assert new != leader and took < 1.0, f"{new} leads {took:.2f} s after the removal"


def test_the_membership_survives_kill_9_of_every_node(cluster_factory: Callable[..., ClusterHarness]) -> None:
    """After 3 -> 4 voters and checkpoints past the change (its entry compacted away), every node killed
    and started again without --join knows the four from its checkpoint, and elects among them."""
    cluster = cluster_factory(3, snapshot_every=5)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    cluster.grow("n4")
    cluster.start("n4", join=True)
    ok(cluster, "cluster", "add", "n4", "--wait", "60")
    client = cluster.client()
    for k in range(40):  # several checkpoints after the change
        client.publish("t", b"%d" % k)
    for node in cluster.nodes:
        cluster.kill(node)
    cluster.start()
    leader, _ = wait_for(lambda: agreed_leader(cluster), 15, "a leader after the restart")
    for node in cluster.nodes:
        assert members(cluster, node)["voters"] == ["n1", "n2", "n3", "n4"], node
    assert stored(cluster.client([leader]), "t") == [b"%d" % k for k in range(40)]


def test_a_restart_reads_the_membership_from_its_data_not_from_a_grown_yaml(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """The YAML's nodes seed a brand-new cluster only: its first checkpoint keeps the seed, so a node
    restarted after an operator added n4 to the file (before `cluster add`) still counts three voters."""
    cluster = cluster_factory(3, snapshot_every=5)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    client = cluster.client()
    for k in range(20):  # past a checkpoint on every node
        client.publish("t", b"%d" % k)
    follower = next(n for n in cluster.nodes if n != leader)
    status = cluster.client([follower])
    wait_for(lambda: status.request_to(cluster.addr(follower), "STATUS")["checkpoint"]["index"] > 0, 10,
             f"{follower}'s first checkpoint")
    cluster.grow("n4")  # in the file, not a member
    cluster.kill(follower)
    cluster.start(follower)
    wait_for(lambda: members(cluster, follower)["commit_index"] >= 20, 10, f"{follower} back")
    assert members(cluster, follower)["voters"] == ["n1", "n2", "n3"]


def test_a_node_cut_off_while_a_member_was_added_takes_that_members_messages(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """n1 missed the change that added n4, and n4 leads by now: n1 finds n4 in its config file when n4's
    first append arrives, connects to it and follows it (it dropped n4's frames until restarted)."""
    cluster = cluster_factory(3, start=False)
    node = Node(cluster.config, "n1")
    ctx = zmq.Context()
    try:
        cluster.grow("n4")  # the operator's step 1; n1 is not told anything else
        sender = ctx.socket(zmq.DEALER)
        sender.setsockopt(zmq.LINGER, 0)
        sender.connect(node.me.raft_addr)
        append = AppendEntries(7, "n4", "n1", 0, 0, (), 0, 0)
        deadline = time.monotonic() + 10
        while node.raft.leader_id != "n4":
            assert time.monotonic() < deadline, "n1 never took n4's append"
            sender.send(encode_message(append))
            for _ in range(20):
                node.run_once()
        assert "n4" in node.transport.peers and node.raft.term == 7
    finally:
        node.close()
        ctx.destroy(linger=0)
