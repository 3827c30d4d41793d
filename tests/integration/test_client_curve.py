"""The client side of CURVE (docs/design.md section 10) against a raw pyzmq CURVE server with a ZAP handler.

Every handshake here is real: the stand-in node (tests/integration/curve_fake.py) serves its client
ROUTER and PUB socket as CURVE servers and admits only the keys a test allows, and records the key
each request came with, so a test knows the request travelled under CURVE with the client's key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.conftest import wait_for
from tests.integration.curve_fake import FakeCurveNode, make_keys
from wiber.client import Client, Timeouts
from wiber.client.curve import KEY_ENV, CurveError
from wiber.config import ClusterConfig, Config, NodeConfig, SecurityConfig
from wiber.errors import ClientError
from wiber.publisher import Publisher

QUICK = Timeouts(per_try_s=0.3, total_s=0.6)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[bytes, bytes]]:
    """Key pairs n1 (the node), app and other (clients), written as zcert files into tmp_path/keys."""
    return make_keys(tmp_path / "keys", "n1", "app", "other")


@pytest.fixture
def node(zmq_ctx: zmq.Context, keys: dict[str, tuple[bytes, bytes]]) -> Iterator[FakeCurveNode]:
    """A CURVE node stand-in admitting `app` on both ports."""
    fake = FakeCurveNode(zmq_ctx, "n1", keys["n1"])
    fake.allow_client(keys["app"][0])
    yield fake
    fake.close()


def test_a_client_with_its_key_completes_the_handshake_and_gets_answers(
        node: FakeCurveNode, keys: dict[str, tuple[bytes, bytes]], tmp_path: Path) -> None:
    secret_file = tmp_path / "keys" / "app.key_secret"
    with Client(node.client_addr, QUICK, client_key=str(secret_file),
                server_keys={node.client_addr: node.public}) as client:
        assert client.ping()["node"] == "n1"
        assert client.publish("orders", b"one").offset == 0
        assert [m.data for m in client.history("orders").messages] == [b"one"]
    # The node saw each request under the client's own public key: CURVE, not plain TCP.
    assert node.users == [keys["app"][0].decode()] * len(node.users) and len(node.users) >= 3


def test_without_the_node_key_or_with_a_wrong_one_there_is_no_answer(
        node: FakeCurveNode, keys: dict[str, tuple[bytes, bytes]]) -> None:
    with Client(node.client_addr, QUICK) as plain, pytest.raises(ClientError, match="no answer"):
        plain.request_to(node.client_addr, "PING")
    wrong = {node.client_addr: keys["other"][0]}  # a public key that is not the node's
    with Client(node.client_addr, QUICK, client_key=keys["app"], server_keys=wrong) as client, \
            pytest.raises(ClientError, match="does not match its secret key"):
        client.request_to(node.client_addr, "PING")
    assert node.users == []


def test_a_key_the_node_does_not_admit_is_told_so(node: FakeCurveNode,
                                                   keys: dict[str, tuple[bytes, bytes]]) -> None:
    servers = {node.client_addr: node.public}
    with Client(node.client_addr, QUICK, client_key=keys["other"], server_keys=servers) as client:
        with pytest.raises(ClientError, match="refused this client's key .*security.clients"):
            client.request_to(node.client_addr, "PING")
        with pytest.raises(ClientError, match=r"PING: no answer .*refused this client's key"):
            client.ping()
    assert node.users == []


def test_wiber_key_names_the_key_when_none_is_passed(node: FakeCurveNode, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    servers = {node.client_addr: node.public}
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(CurveError, match=KEY_ENV):
        Client(node.client_addr, QUICK, server_keys=servers)
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "keys" / "app.key_secret"))
    with Client(node.client_addr, QUICK, server_keys=servers) as client:
        assert client.ping()["node"] == "n1"
    # Without node keys the cluster is taken to be plain: WIBER_KEY is not used.
    with Client(node.client_addr, QUICK) as plain:
        assert plain.curve is None


def test_a_publisher_with_its_key_publishes_over_curve(node: FakeCurveNode,
                                                       keys: dict[str, tuple[bytes, bytes]]) -> None:
    with Publisher(node.client_addr, batch_size=10, client_key=keys["app"],
                   server_keys={node.client_addr: node.public}, timeouts=Timeouts(1.0, 5.0)) as publisher:
        futures = [publisher.publish("events", b"e%d" % i) for i in range(25)]
        publisher.flush(timeout=10)
    assert [f.result().offset for f in futures] == list(range(25))
    assert node.log["events"] == [b"e%d" % i for i in range(25)]
    assert set(node.users) == {keys["app"][0].decode()}


def test_a_refused_publisher_fails_saying_why(node: FakeCurveNode, keys: dict[str, tuple[bytes, bytes]]) -> None:
    with Publisher(node.client_addr, client_key=keys["other"], server_keys={node.client_addr: node.public},
                   timeouts=Timeouts(per_try_s=0.2, total_s=0.5)) as publisher:
        future = publisher.publish("events", b"never")
        with pytest.raises(ClientError, match="refused this client's key"):
            future.result(timeout=10)
    assert node.log["events"] == []


def test_a_socket_refused_before_its_first_send_fails_in_time_instead_of_blocking(
        node: FakeCurveNode, keys: dict[str, tuple[bytes, bytes]]) -> None:
    """A refused handshake ends the connection for good, so a blocking send on that socket would
    wait forever (seen once under load, where the refusal came between connect and send)."""
    servers = {node.client_addr: node.public}
    with Client(node.client_addr, QUICK, client_key=keys["other"], server_keys=servers) as client:
        sock = client._socket()
        wait_for(lambda: not sock.poll(0, zmq.POLLOUT), 10, "the refusal to leave no connection to send on")
        started = time.monotonic()
        with pytest.raises(ClientError, match="refused this client's key"):
            client.ping()
        assert time.monotonic() - started < 10 * QUICK.total_s
    with Publisher(node.client_addr, client_key=keys["other"], server_keys=servers,
                   timeouts=Timeouts(per_try_s=0.2, total_s=0.5)) as publisher:
        dealer = publisher._wire.socket()
        wait_for(lambda: not dealer.poll(0, zmq.POLLOUT), 10, "the refusal to leave no connection to send on")
        with pytest.raises(ClientError, match="no answer from"):
            publisher.publish("events", b"never").result(timeout=10)
    assert node.users == []


def test_a_subscription_connects_to_the_pub_port_with_the_key_of_the_node_that_named_it(
        node: FakeCurveNode, keys: dict[str, tuple[bytes, bytes]]) -> None:
    # Only the client address has a key: the PUB endpoint a SUB reply names gets the same node's key.
    with Client(node.client_addr, Timeouts(0.5, 5.0), client_key=keys["app"],
                server_keys={node.client_addr: node.public}) as client:
        sub = client.subscribe("feed")
        assert sub.get(timeout=0.3) is None  # attached; nothing published yet

        def delivered() -> bool:
            client.publish("feed", b"live")
            return sub.get(timeout=0.2) is not None

        wait_for(delivered, 10, "a live message over the CURVE PUB socket")
        assert sub.failovers == 0 and not sub._polling  # heard live, on the PUB port


def test_a_subscription_the_pub_port_refuses_reads_history_instead(
        zmq_ctx: zmq.Context, keys: dict[str, tuple[bytes, bytes]]) -> None:
    node = FakeCurveNode(zmq_ctx, "n1", keys["n1"])
    node.allow_client(keys["app"][0], pub_port=False)  # may read, may not use the PUB port
    try:
        servers = {node.client_addr: node.public, node.pub_addr: node.public}
        with Client(node.client_addr, Timeouts(0.5, 5.0), client_key=keys["app"], server_keys=servers) as client:
            sub = client.subscribe("feed", from_offset=0)
            client.publish("feed", b"first")
            first = sub.get(timeout=5)  # from HISTORY, as every subscription catches up
            assert first is not None and first.data == b"first"
            client.publish("feed", b"second")  # no live copy can come: the PUB port refused the key
            second = sub.get(timeout=5)
            assert second is not None and second.data == b"second"
            assert sub._polling and sub.failovers == 0  # it noticed the refusal, not a dead node
    finally:
        node.close()


def test_an_address_without_a_key_is_refused_before_any_socket(node: FakeCurveNode,
                                                                keys: dict[str, tuple[bytes, bytes]]) -> None:
    with Client(node.client_addr, QUICK, client_key=keys["app"], server_keys={"tcp://10.9.9.9:1": node.public}) \
            as client, pytest.raises(CurveError, match=f"no public key known for the node at {node.client_addr}"):
        client.ping()
    with pytest.raises(CurveError, match="needs the nodes' public keys"):
        Client(node.client_addr, QUICK, client_key=keys["app"])


def test_from_config_reads_the_nodes_keys_from_keys_dir(node: FakeCurveNode, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    port = int(node.client_addr.rsplit(":", 1)[1])
    pub_port = int(node.pub_addr.rsplit(":", 1)[1])
    config = Config(str(tmp_path / "cluster.yaml"), ClusterConfig(max_message_bytes=100),
                    (NodeConfig("n1", "127.0.0.1", port, 1, pub_port),), SecurityConfig(str(tmp_path / "keys")))
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "keys" / "app.key_secret"))
    with Client.from_config(config, timeouts=QUICK) as client:
        assert client.ping()["node"] == "n1"
    with Publisher.from_config(config, timeouts=Timeouts(1.0, 5.0)) as publisher:
        assert publisher.limits.max_message_bytes == 100  # the cluster's own limit
        assert publisher.publish("cfg", b"x").result(timeout=10).offset == 0
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CurveError, match="no client key"):
        Client.from_config(config)
