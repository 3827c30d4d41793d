"""What the sync and asyncio consumer-group members share, without a cluster (wiber.client.consumer):
the messages they hand out, the publish key of each, how ACK/NAK refs are split, how long a FETCH waits."""

from __future__ import annotations

from wiber import protocol
from wiber.aio.consumer import ConsumedMessage as AioConsumedMessage
from wiber.aio.consumer import Consumer as AioConsumer
from wiber.client.consumer import ConsumedMessage, Consumer, fetch_wait_ms, ref_batches
from wiber.client.values import Message


def test_sync_and_async_members_of_one_group_publish_under_the_same_key() -> None:
    sync_member = Consumer.__new__(Consumer)
    sync_member.group = "billing"
    async_member = AioConsumer.__new__(AioConsumer)
    async_member.group = "billing"
    mine = ConsumedMessage("orders", 7, b"x", 3, 1.0, 9, 1, consumer=sync_member)
    theirs = AioConsumedMessage("orders", 7, b"y", 4, 2.0, 10, 2, consumer=async_member)
    assert mine.publish_key == theirs.publish_key
    assert mine.publish_key[1] == 8 and mine.publish_key[0].startswith("group-")
    other = ConsumedMessage("orders", 7, b"x", 3, 1.0, 9, 1, consumer=Consumer.__new__(Consumer))
    other.consumer.group = "audit"  # type: ignore[union-attr]
    assert other.publish_key != mine.publish_key  # another group: another key
    assert mine.message == Message("orders", 7, b"x", 3, 1.0, 9, False)
    assert mine == ConsumedMessage("orders", 7, b"x", 3, 1.0, 9, 1)  # the consumer is not compared


def test_refs_go_in_requests_of_at_most_the_protocols_limit() -> None:
    messages = [ConsumedMessage("t", offset, b"", 0, 0.0, 0, 1) for offset in range(protocol.ACK_REFS_MAX + 1)]
    batches = list(ref_batches(messages))
    assert [len(b) for b in batches] == [protocol.ACK_REFS_MAX, 1]
    assert batches[1] == [["t", protocol.ACK_REFS_MAX]]
    assert list(ref_batches([])) == []


def test_a_fetch_waits_at_most_half_the_per_try_timeout_and_never_below_zero() -> None:
    assert fetch_wait_ms(10.0, per_try_s=1.0) == 500
    assert fetch_wait_ms(0.2, per_try_s=1.0) == 200
    assert fetch_wait_ms(-1.0, per_try_s=1.0) == 0
