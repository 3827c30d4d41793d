"""The client side against a secured 3-node cluster (docs/design.md section 10): the `wiber` commands with
`--key`/WIBER_KEY, and Client, Publisher and subscriptions with a client key, get through with a key the
config admits, get FORBIDDEN outside its patterns, and are told when the nodes refuse their key.

`app` may publish and read `orders.>` only, so the PUB port refuses its key and its subscriptions read
HISTORY instead; `reader` may read every topic (`>`), so its subscriptions listen on the PUB port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, ClusterHarness
from wiber.cli.keygen import write_key_pair
from wiber.client import Client, KeyFileError, Timeouts
from wiber.client.curve import KEY_ENV
from wiber.errors import ClientError, Forbidden
from wiber.publisher import Publisher

APP = {"name": "app", "publish": ["orders.>"], "subscribe": ["orders.>"]}
READER = {"name": "reader", "subscribe": [">"]}


def secured(cluster_factory: Callable[..., ClusterHarness]) -> ClusterHarness:
    return cluster_factory(3, security=[APP, READER])


def key(cluster: ClusterHarness, name: str) -> str:
    return str(cluster.root / "keys" / f"{name}.key_secret")


def wiber(cluster: ClusterHarness, *args: str, key_name: str | None = None, env_key: str | None = None,
          stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run `wiber ARGS --config CLUSTER [--key KEY]` (WIBER_KEY from `env_key` only). Returns: the process."""
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if env_key is not None:
        env[KEY_ENV] = key(cluster, env_key)
    argv = [sys.executable, "-m", "wiber", *args, "--config", str(cluster.config_path)]
    if key_name is not None:
        argv += ["--key", key(cluster, key_name)]
    return subprocess.run(argv, input=stdin.decode(), capture_output=True, text=True, cwd=str(REPO), env=env,
                          timeout=60, check=False)


@pytest.mark.timeout(120)
def test_cli_pub_sub_history_with_a_key_and_forbidden_outside_its_patterns(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = secured(cluster_factory)

    done = wiber(cluster, "pub", "orders.new", "order 1", key_name="app")
    assert done.returncode == 0 and re.fullmatch(r"topic=orders\.new offset=0 index=\d+ lamport=\d+\n", done.stdout), \
        done.stderr
    done = wiber(cluster, "pub", "orders.new", env_key="app", stdin=b"order 2\norder 3\n")  # the Publisher
    assert done.returncode == 0 and done.stdout.startswith("published 2 messages to orders.new (offsets 1..2)"), \
        done.stderr
    done = wiber(cluster, "history", "orders.new", "--linearizable", key_name="app")
    assert done.returncode == 0 and done.stdout == "0\torder 1\n1\torder 2\n2\torder 3\n", done.stderr
    for name in ("reader", "app"):  # on the PUB port; by HISTORY, the PUB port refusing app's key
        done = wiber(cluster, "sub", "orders.new", "--from", "0", "--count", "3", key_name=name)
        assert done.returncode == 0 and done.stdout == "0\torder 1\n1\torder 2\n2\torder 3\n", (name, done.stderr)

    for args in (["pub", "payments", "m"], ["history", "payments"], ["sub", "payments"]):
        done = wiber(cluster, *args, "--timeout", "2", key_name="app")
        assert done.returncode == 1 and done.stdout == "", (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "client app may not" in done.stderr and "payments" in done.stderr
    done = wiber(cluster, "pub", "orders.x", "m", key_name="reader")
    assert done.returncode == 1 and "client reader may not publish to topic 'orders.x'" in done.stderr
    done = wiber(cluster, "status", key_name="app")  # STATUS needs admin: every node answers FORBIDDEN
    assert done.returncode == 1 and done.stdout.count(" error ") == 3 and "down" not in done.stdout, done.stdout
    done = wiber(cluster, "status", key_name="harness")
    assert done.returncode == 0 and "leader" in done.stdout, done.stdout + done.stderr

    # A key the config does not list: every handshake is refused, and the command says so.
    write_key_pair(str(cluster.root / "keys"), "stranger")
    done = wiber(cluster, "ping", "--timeout", "0.5", key_name="stranger")
    assert done.returncode == 1 and done.stdout.count("refused this client's key") == 3, done.stdout
    done = wiber(cluster, "history", "orders.new", "--timeout", "0.5", key_name="stranger")
    assert done.returncode == 1 and "refused this client's key" in done.stderr, done.stderr
    done = wiber(cluster, "topics")  # no key at all
    assert done.returncode == 2 and "--key PATH" in done.stderr and KEY_ENV in done.stderr

    client = cluster.client(total_s=20.0)
    assert [m.data for m in client.history("orders.new", consistency="linearizable").messages] == \
        [b"order 1", b"order 2", b"order 3"]
    assert "payments" not in client.topics()


@pytest.mark.timeout(120)
def test_client_and_publisher_with_a_key_and_forbidden_outside_its_patterns(
        cluster_factory: Callable[..., ClusterHarness], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = secured(cluster_factory)
    timeouts = Timeouts(per_try_s=1.0, total_s=20.0)
    monkeypatch.delenv(KEY_ENV, raising=False)

    with Client.from_config(cluster.config, client_key=key(cluster, "app"), timeouts=timeouts) as app:
        assert app.publish("orders.a", b"a0").offset == 0
        with pytest.raises(Forbidden, match="client app may not publish to topic 'payments'") as refused:
            app.publish("payments", b"p")
        assert refused.value.code == "FORBIDDEN"
        with pytest.raises(Forbidden, match="may not read topic 'payments'"):
            app.history("payments")
        with pytest.raises(Forbidden, match="may not send STATUS: it needs admin"):
            app.status()

        sub = app.subscribe("orders.a", from_offset=0)  # the PUB port refuses app: read through HISTORY
        first = sub.get(timeout=10)
        assert first is not None and first.data == b"a0"
        with Publisher.from_config(cluster.config, client_key=key(cluster, "app"), batch_size=50,
                                   timeouts=timeouts) as publisher:
            futures = [publisher.publish("orders.a", b"a%d" % i) for i in range(1, 201)]
            refused_future = publisher.publish("payments", b"p")
            publisher.flush(timeout=30)
        assert [f.result().offset for f in futures] == list(range(1, 201))
        with pytest.raises(Forbidden, match="may not publish to topic 'payments'"):
            refused_future.result()
        got = [sub.get(timeout=10) for _ in range(200)]
        assert [m.offset for m in got if m is not None] == list(range(1, 201))
        assert sub._polling and sub.failovers == 0
        sub.close()
        with pytest.raises(Forbidden, match="may not read topic 'payments'"):
            app.subscribe("payments").get(timeout=10)

    monkeypatch.setenv(KEY_ENV, key(cluster, "reader"))  # the key from the environment
    with Client.from_config(cluster.config, timeouts=timeouts) as reader:
        live = reader.subscribe("orders.a")
        assert live.get(timeout=1.0) is None  # attached on a PUB port; nothing new yet
        with Client.from_config(cluster.config, client_key=key(cluster, "app"), timeouts=timeouts) as app:
            app.publish("orders.a", b"live")
        message = live.get(timeout=10)
        assert message is not None and (message.offset, message.data) == (201, b"live")
        assert not live._polling and live.failovers == 0
        with pytest.raises(Forbidden, match="client reader may not publish"):
            reader.publish("orders.a", b"no")

    stranger = write_key_pair(str(cluster.root / "keys"), "stranger")[1]
    with Client.from_config(cluster.config, client_key=stranger, timeouts=Timeouts(0.5, 1.5)) as nobody, \
            pytest.raises(ClientError, match="refused this client's key"):
        nobody.ping()
    with pytest.raises(KeyFileError, match="nobody.key_secret: no such file"):
        Client.from_config(cluster.config, client_key=str(Path(cluster.root) / "keys" / "nobody.key_secret"))


def test_consumer_groups_need_the_read_right_on_their_pattern(
        cluster_factory: Callable[..., ClusterHarness], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = secured(cluster_factory)
    timeouts = Timeouts(per_try_s=1.0, total_s=20.0)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with Client.from_config(cluster.config, client_key=key(cluster, "reader"), timeouts=timeouts) as reader, \
            Client.from_config(cluster.config, client_key=key(cluster, "app"), timeouts=timeouts) as app:
        everything = reader.consumer("audit", ">", from_start=True)  # reader may read every topic
        orders = app.consumer("orders-workers", "orders.*", from_start=True)
        with pytest.raises(Forbidden, match="client app may not read every topic of pattern 'payments.>'"):
            app.consumer("payments-workers", "payments.>")
        with pytest.raises(Forbidden, match="of pattern 'orders'"):  # orders.> does not match orders itself
            app.consumer("bare-orders", "orders")
        assert app.consumer("deep-orders", "orders.*.>").created  # within orders.>
        with pytest.raises(Forbidden, match="of pattern '>'"):  # another client's group
            app.request("FETCH", group="audit", member="intruder")
        app.publish("orders.eu", b"o1")
        (delivered,) = orders.fetch(1, timeout=10)
        assert (delivered.topic, delivered.data) == ("orders.eu", b"o1") and delivered.ack()
        assert [m.data for m in everything.fetch(5, timeout=10)] == [b"o1"]
        assert set(app.groups()) == {"orders-workers", "deep-orders"}, "GROUPS lists only the groups app may read"
        assert set(reader.groups()) == {"audit", "orders-workers", "deep-orders"}
