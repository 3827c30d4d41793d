"""The client library: talk to a Wiber cluster over docs/design.md section 3.

`Client` (connection.py) sends one request at a time with failover and exactly-once publishing;
`Subscription` (subscription.py) delivers a topic's messages once, in offset order, and
`PatternSubscription` those of every topic a pattern matches; `Consumer` (consumer.py) is a member
of a durable consumer group (fetch, ack, nak); values.py
holds what they hand out (Ack, Message, History) and take (Timeouts); curve.py the CURVE keys
they use against a cluster with a security section. The pipelined, batching
publisher is the package `wiber.client.publisher` (imported as `wiber.publisher.Publisher`);
inflight.py and retry.py hold the sans-I/O request table and retry policy it shares with `wiber.aio`.
"""

from __future__ import annotations

from wiber.client.connection import Client
from wiber.client.consumer import ConsumedMessage, Consumer
from wiber.client.curve import KEY_ENV, CurveError, KeyFileError
from wiber.client.subscription import (
    HEARTBEAT_SILENCE_S,
    MAX_BUFFERED,
    PatternSubscription,
    Subscription,
    msgpack_unpack,
)
from wiber.client.values import Ack, History, Message, Timeouts, normalize_address

__all__ = [
    "HEARTBEAT_SILENCE_S",
    "KEY_ENV",
    "MAX_BUFFERED",
    "Ack",
    "Client",
    "ConsumedMessage",
    "Consumer",
    "CurveError",
    "History",
    "KeyFileError",
    "Message",
    "PatternSubscription",
    "Subscription",
    "Timeouts",
    "msgpack_unpack",
    "normalize_address",
]
