"""The client library against real nodes: Lazy Pirate failover and deadlines."""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest

from tests.conftest import ClusterHarness, free_port, wait_for
from wiber.client import Client, Timeouts
from wiber.errors import BadRequest, ClientError


def test_ping_fails_over_from_a_dead_address(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(1)
    dead = f"tcp://127.0.0.1:{free_port()}"
    with Client([dead, cluster.addr("n1")], Timeouts(per_try_s=0.2, total_s=5)) as client:
        pong = client.ping()
        assert pong["node"] == "n1"
        # The socket that timed out was replaced: the next request works at once.
        assert client.status()["node"] == "n1"


def test_gives_up_at_the_deadline_when_nothing_answers() -> None:
    with Client([f"127.0.0.1:{free_port()}"], Timeouts(per_try_s=0.1, total_s=0.5)) as client:
        started = time.monotonic()
        with pytest.raises(ClientError, match="within 0.5 s"):
            client.ping()
        # The deadline plus one try in flight, and the time to notice: well within a second more.
        assert time.monotonic() - started < 0.5 + 0.1 + 1.0


def test_bad_request_is_refused_before_sending() -> None:
    with Client([f"127.0.0.1:{free_port()}"], Timeouts(per_try_s=0.1, total_s=0.2)) as client:
        with pytest.raises(BadRequest, match="topic"):
            client.request("HISTORY", topic="$reserved")


def test_leaving_a_client_with_a_subscription_still_open_returns(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """`with Client(...)` around a subscription never closed must not block in the context's term."""
    cluster = cluster_factory(1)
    done = threading.Event()
    received: list[bytes] = []

    def use() -> None:
        with Client(cluster.addrs()) as client:
            client.publish("open", b"first")
            sub = client.subscribe("open", from_offset=0)
            message = sub.get(timeout=5)
            received.append(message.data if message else b"")
        done.set()

    thread = threading.Thread(target=use, daemon=True)
    thread.start()
    wait_for(done.is_set, 10, "the with-block to end with its subscription still open")
    assert received == [b"first"]
