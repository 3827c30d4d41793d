"""SESSION_EXPIRED as the Client and the Publisher meet it on a real cluster (docs/design.md section 3).

The cluster keeps at most `max_sessions` dedup sessions (2 here), so two other clients publishing
evict an idle one. What the client library must then do: tell the caller whether the refused
publish can have been stored (it was refused on its only try: no; an earlier try's answer was
lost: maybe), never store it behind the caller's back, and go on under a new session so that the
next publish works. A lost answer is injected at the client's socket layer: the request and its
reply really travel, the client just never sees the reply (what a dropped connection does).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.conftest import ClusterHarness, wait_for
from wiber.client import Timeouts
from wiber.errors import SessionExpired
from wiber.publisher import Publisher


def _evict_sessions(cluster: ClusterHarness) -> None:
    """Two fresh clients publish once each: with max_sessions 2, every older session is evicted."""
    for k in range(2):
        cluster.client().publish("evictors", b"e%d" % k)


def _stored(cluster: ClusterHarness, topic: str) -> list[bytes]:
    """Returns: every message of `topic`, read linearizably."""
    return [m.data for m in cluster.client().history(topic, from_offset=0, limit=100,
                                                        consistency="linearizable").messages]


def test_client_refused_on_its_only_try_says_nothing_was_stored_and_goes_on(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """An evicted client's next publish raises SessionExpired (not stored), the one after works."""
    cluster = cluster_factory(3, max_sessions=2)
    client = cluster.client()
    client.publish("s", b"kept")
    old_id = client.client_id
    _evict_sessions(cluster)
    with pytest.raises(SessionExpired, match="stored nothing; publish it again"):
        client.publish("s", b"refused")
    assert client.client_id != old_id
    assert client.publish("s", b"after").offset == 1
    assert _stored(cluster, "s") == [b"kept", b"after"]


def test_client_retry_after_a_lost_answer_and_an_eviction_is_reported_as_unknown(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """The answer of a stored publish is lost; by the retry the session is gone: the caller learns
    that the outcome is unknown, and the message is stored once, not again."""
    cluster = cluster_factory(3, max_sessions=2)
    client = cluster.client()
    client.publish("u", b"before")
    original = client._try_once
    lost: list[dict[str, Any]] = []

    def lose_the_first_answer(body: bytes, timeout_s: float) -> dict[str, Any] | None:
        reply = original(body, timeout_s)
        if not lost and reply is not None and reply["ok"]:
            lost.append(reply)  # stored, but the client never sees it
            _evict_sessions(cluster)
            client._reset()  # as after a real timeout: the next try goes out on a fresh socket
            return None
        return reply

    client._try_once = lose_the_first_answer  # type: ignore[method-assign]
    with pytest.raises(SessionExpired, match="may or may not have been stored"):
        client.publish("u", b"unknown")
    client._try_once = original  # type: ignore[method-assign]
    assert lost and lost[0]["offset"] == 1
    client.publish("u", b"after")
    assert _stored(cluster, "u") == [b"before", b"unknown", b"after"]


def test_publisher_refused_on_its_only_send_says_nothing_was_stored_and_goes_on(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """The Publisher's futures get the same answers as the Client's calls, and it keeps publishing."""
    cluster = cluster_factory(3, max_sessions=2)
    with Publisher(cluster.addrs(), window=10, batch_size=1) as publisher:
        publisher.publish("p", b"kept").result(timeout=20)
        old_id = publisher.client_id
        _evict_sessions(cluster)
        refused = publisher.publish("p", b"refused")
        publisher.flush(timeout=20)
        assert isinstance(refused.exception(), SessionExpired)
        assert "stored nothing; publish it again" in str(refused.exception())
        assert publisher.client_id != old_id
        assert publisher.publish("p", b"after").result(timeout=20).offset == 1
    assert _stored(cluster, "p") == [b"kept", b"after"]


def test_publisher_resend_after_a_lost_answer_and_an_eviction_is_reported_as_unknown(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    """A stored publish whose answer is lost is resent after the per-try timeout; the session is
    gone by then: its future says the outcome is unknown, and nothing is stored twice."""
    cluster = cluster_factory(3, max_sessions=2)
    with Publisher(cluster.addrs(), window=10, batch_size=1) as publisher:
        publisher.timeouts = Timeouts(per_try_s=0.5, total_s=20.0)
        publisher.publish("q", b"before").result(timeout=20)
        original = publisher._wire.on_reply
        lost: list[int] = []

        def lose_the_first_answer(reply: dict[str, Any]) -> bool:
            if not lost and reply["ok"]:
                lost.append(int(reply["offset"]))  # stored; the answer is dropped, the request stays in flight
                _evict_sessions(cluster)
                return False
            return original(reply)

        publisher._wire.on_reply = lose_the_first_answer  # type: ignore[method-assign]
        unknown = publisher.publish("q", b"unknown")
        wait_for(lambda: (publisher.poll(0.05), unknown.done())[1], 20, "the resend's answer")
        publisher._wire.on_reply = original  # type: ignore[method-assign]
        error = unknown.exception()
        assert isinstance(error, SessionExpired) and "may or may not have been stored" in str(error), error
        assert lost == [1] and publisher.resends >= 1
        publisher.publish("q", b"after").result(timeout=20)
    assert _stored(cluster, "q") == [b"before", b"unknown", b"after"]
