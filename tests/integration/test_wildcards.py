"""Wildcard subscriptions on three real nodes (docs/design.md sections 3 and 11): `Client.subscribe(pattern)`
and `wiber sub PATTERN` get every message of each matching topic once and in that topic's offset order,
and nothing of the others; PUB, PUB_BATCH and HISTORY refuse a pattern (BAD_REQUEST), PUB an empty token.

`orders.*` gets `orders.eu` and `orders.us` but not `orders.eu.x`; `orders.>` gets all three; neither
gets `orders` or `ordersx.eu`.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from tests.conftest import REPO, ClusterHarness, free_port, wait_for
from tests.integration.test_cli import LineReader, wiber, wiber_command
from tests.integration.test_election import agreed_leader
from tests.integration.test_messaging import follower_first, raw
from wiber.client import HEARTBEAT_SILENCE_S, Client, PatternSubscription, Subscription, Timeouts
from wiber.client.curve import KEY_ENV
from wiber.errors import BadRequest

#: Every topic the tests publish to: three that `orders.>` matches, and three that no pattern here matches.
TOPICS = ("orders.eu", "orders.us", "orders.eu.x", "orders", "ordersx.eu", "payments.us")
PATTERN_REFUSED = "patterns are for subscriptions"

Delivered = dict[str, list[tuple[int, bytes]]]


def receive(sub: Subscription, count: int) -> Delivered:
    """Returns: `count` messages from `sub`, per topic in the order they came (each within 10 s)."""
    got: Delivered = defaultdict(list)
    for k in range(count):
        message = sub.get(timeout=10)
        assert message is not None, f"stalled after {k} of {count} messages: {dict(got)}"
        got[message.topic].append((message.offset, message.data))
    return dict(got)


def publish_rounds(client: Client, rounds: range) -> None:
    """Publish one message `<topic>-<round>` to every topic of TOPICS, round by round (topics interleaved)."""
    for i in rounds:
        for topic in TOPICS:
            client.publish(topic, f"{topic}-{i}".encode())


def applied_everywhere(cluster: ClusterHarness, topic: str, end: int) -> None:
    """Wait until every node lists `topic` at `end` in TOPICS: a subscription from the end starts at the
    end its node knows, and a follower may not have applied the last acknowledged message yet."""
    for node in cluster.nodes:
        client = cluster.client([node])
        wait_for(lambda c=client: c.topics().get(topic) == end, 10, f"{node} to apply {topic} up to {end}")


def stored(topic: str, offsets: range, rounds: range) -> list[tuple[int, bytes]]:
    """Returns: what `publish_rounds` stored in `topic` for `rounds`, at `offsets`."""
    return [(offset, f"{topic}-{i}".encode()) for offset, i in zip(offsets, rounds, strict=True)]


@pytest.mark.timeout(90)
def test_client_subscribe_a_pattern_gets_each_matching_topic_once_in_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    client.publish("orders.eu", b"before")  # a topic that exists when the subscriptions start
    applied_everywhere(cluster, "orders.eu", 1)

    with cluster.client(total_s=20.0) as reader:
        star, rest = reader.subscribe("orders.*"), reader.subscribe("orders.>")
        from_zero = reader.subscribe("orders.*", from_offset=0)
        assert isinstance(star, PatternSubscription) and type(reader.subscribe("orders")) is Subscription
        for sub in (star, rest):
            assert sub.get(timeout=0.5) is None  # attached, from the end: nothing new yet
        publish_rounds(client, range(5))

        # orders.eu existed: from its end (offset 1); orders.us and orders.eu.x are new: from offset 0.
        eu, us, x = stored("orders.eu", range(1, 6), range(5)), stored("orders.us", range(5), range(5)), \
            stored("orders.eu.x", range(5), range(5))
        assert receive(star, 10) == {"orders.eu": eu, "orders.us": us}
        assert receive(rest, 15) == {"orders.eu": eu, "orders.us": us, "orders.eu.x": x}
        assert receive(from_zero, 11) == {"orders.eu": [(0, b"before"), *eu], "orders.us": us}
        for sub in (star, rest, from_zero):
            assert sub.get(timeout=1.0) is None  # nothing else matches: no orders.eu.x in star, no orders
        assert star.next_offsets == {"orders.eu": 6, "orders.us": 5} and star.next_offset is None

        with pytest.raises(BadRequest, match="'>' may only be the last token"):
            reader.subscribe("orders.>.x")
        with pytest.raises(BadRequest, match=PATTERN_REFUSED):
            reader.history("orders.*")
        with pytest.raises(BadRequest, match=PATTERN_REFUSED):
            client.publish("orders.*", b"no")


@pytest.mark.timeout(90)
def test_wiber_sub_a_pattern_prints_each_matching_topic_once_in_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    client.publish("orders.eu", b"orders.eu-0")  # before `wiber sub` starts; --from 0 reads it too
    procs = {pattern: subprocess.Popen(wiber_command(cluster, "sub", pattern, "--from", "0", "--count", str(count)),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))
             for pattern, count in (("orders.*", 7), ("orders.>", 10))}
    try:
        publish_rounds(client, range(1, 4))
        lines = {}
        for pattern, proc in procs.items():
            assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
            lines[pattern] = LineReader(proc.stdout).lines(7 if pattern == "orders.*" else 10, timeout=5)
            assert proc.stdout is not None and proc.stdout.read() == b""  # exactly --count lines
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def per_topic(printed: list[str]) -> dict[str, list[str]]:
        topics: dict[str, list[str]] = defaultdict(list)
        for line in printed:
            topic, offset, data = line.split("\t")
            topics[topic].append(f"{offset}\t{data}")
        return dict(topics)

    eu = [f"{i}\torders.eu-{i}" for i in range(4)]
    us = [f"{i}\torders.us-{i + 1}" for i in range(3)]
    x = [f"{i}\torders.eu.x-{i + 1}" for i in range(3)]
    assert per_topic(lines["orders.*"]) == {"orders.eu": eu, "orders.us": us}
    assert per_topic(lines["orders.>"]) == {"orders.eu": eu, "orders.us": us, "orders.eu.x": x}


@pytest.mark.timeout(60)
def test_the_nodes_refuse_a_pattern_outside_sub_and_an_empty_token_in_a_publish(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    addr = cluster.addr(leader)
    for request in ({"op": "PUB", "data": b"x"}, {"op": "PUB_BATCH", "messages": [b"x"]}, {"op": "HISTORY"}):
        for pattern in ("orders.*", "orders.>"):
            refused = raw(zmq_socket, addr, topic=pattern, **request)
            assert refused["error"] == "BAD_REQUEST" and PATTERN_REFUSED in refused["message"], refused
    for name in ("a..b", ".a", "a."):
        refused = raw(zmq_socket, addr, op="PUB", topic=name, data=b"x")
        assert refused["error"] == "BAD_REQUEST" and "empty token" in refused["message"], refused
    sub = raw(zmq_socket, addr, op="SUB", topic="orders.*")
    assert sub["ok"] and sub["pub_addr"] == cluster.config.node(leader).pub_addr
    assert raw(zmq_socket, addr, op="TOPICS")["topics"] == {}  # nothing was stored

    dead = f"127.0.0.1:{free_port()}"  # the CLI refuses before sending: exit 2, no cluster needed
    for args, says in ((["pub", "orders.*", "m"], PATTERN_REFUSED), (["history", "orders.>"], PATTERN_REFUSED),
                       (["pub", "orders..eu", "m"], "empty token"), (["sub", "orders.>.x"], "not a valid pattern")):
        done = wiber(None, *args, "--addr", dead)
        assert done.returncode == 2 and says in done.stderr.decode(), (args, done.stderr)


@pytest.mark.timeout(60)
def test_a_pattern_starting_with_a_wildcard_takes_heartbeats_as_heartbeats(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    with cluster.client(total_s=20.0) as reader:
        sub = reader.subscribe("*.eu", from_offset=0)  # subscribed to every frame, `$hb` ones included
        assert sub.get(timeout=3 * HEARTBEAT_SILENCE_S) is None  # heartbeats came, none was delivered
        assert sub.failovers == 0  # and they kept the node alive in the subscription's eyes
        for topic in ("orders.eu", "orders.us", "eu", "payments.eu", "a.b.eu"):
            client.publish(topic, topic.encode())
        assert receive(sub, 2) == {"orders.eu": [(0, b"orders.eu")], "payments.eu": [(0, b"payments.eu")]}
        assert sub.get(timeout=1.0) is None and sub.failovers == 0


@pytest.mark.timeout(120)
def test_a_pattern_subscriber_on_a_killed_node_gets_every_topic_once_in_order(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    follower, others, reader = follower_first(cluster)
    with reader:
        sub = reader.subscribe("orders.>", from_offset=0)
        client = cluster.client(others, total_s=20.0)
        publish_rounds(client, range(20))
        first = receive(sub, 30)
        cluster.kill(follower)
        publish_rounds(client, range(20, 60))
        got = receive(sub, 3 * 60 - 30)
        for topic, messages in first.items():
            got[topic] = messages + got.get(topic, [])
        assert got == {topic: stored(topic, range(60), range(60)) for topic in TOPICS[:3]}
        # A catch-up may have read the rest from a live node's HISTORY before the dead node's PUB socket
        # counted as silent: the move is then made, and counted, while waiting for more.
        assert sub.get(timeout=2 * HEARTBEAT_SILENCE_S + 0.5) is None
        assert sub.failovers >= 1


@pytest.mark.timeout(120)
def test_a_pattern_subscription_the_pub_port_refuses_reads_history_instead(
        cluster_factory: Callable[..., ClusterHarness], monkeypatch: pytest.MonkeyPatch) -> None:
    # `app` may read orders.> only, so the PUB port (which admits only readers of `>`) refuses its key.
    cluster = cluster_factory(3, security=[{"name": "app", "publish": ["orders.>"], "subscribe": ["orders.>"]}])
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = str(Path(cluster.root) / "keys" / "app.key_secret")
    with Client.from_config(cluster.config, client_key=key, timeouts=Timeouts(1.0, 20.0)) as app:
        app.publish("orders.eu", b"before")
        applied_everywhere(cluster, "orders.eu", 1)
        sub = app.subscribe("orders.*")
        assert sub.get(timeout=3 * HEARTBEAT_SILENCE_S) is None and sub._polling  # reading HISTORY now
        for i in range(3):
            for topic in ("orders.eu", "orders.us", "orders.eu.x"):
                app.publish(topic, f"{topic}-{i}".encode())
        assert receive(sub, 6) == {"orders.eu": stored("orders.eu", range(1, 4), range(3)),
                                   "orders.us": stored("orders.us", range(3), range(3))}
        assert sub.get(timeout=1.0) is None and sub.failovers == 0


def test_topics_with_a_pattern_lists_only_the_topics_it_matches(
        cluster_factory: Callable[..., ClusterHarness], zmq_socket: Callable[[int], zmq.Socket]) -> None:
    """What a pattern subscription asks on every catch-up: the node filters, so the reply does not
    carry every topic of the cluster."""
    cluster = cluster_factory(1)
    client = cluster.client()
    for topic in ("orders.eu", "orders.us", "orders.eu.x", "other"):
        client.publish(topic, b"m")
    assert client.topics("orders.*") == {"orders.eu": 1, "orders.us": 1}
    assert set(client.topics("orders.>")) == {"orders.eu", "orders.us", "orders.eu.x"}
    assert client.topics("other") == {"other": 1} and client.topics("none") == {}
    addr = cluster.addr("n1")
    assert raw(zmq_socket, addr, op="TOPICS", pattern="a..b")["topics"] == {}  # an old-style name: no crash
    refused = raw(zmq_socket, addr, op="TOPICS", pattern="orders.>.x")
    assert refused["error"] == "BAD_REQUEST" and "not a valid pattern" in refused["message"], refused
    assert len(client.topics()) == 4
