"""The asyncio client: `wiber.aio.Client`, every operation of `wiber.client.Client` as a coroutine on
zmq.asyncio, safe to share between the tasks of one event loop (many requests in flight on one socket),
with exactly-once publishing; `Client.subscribe` and `Client.consumer` give async iterators.

```python
import asyncio
from wiber.aio import Client

async def main() -> None:
    async with Client(["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]) as client:
        acks = await asyncio.gather(*(client.publish("orders", b"%d" % i) for i in range(1000)))
        async for message in client.subscribe("orders", from_offset=0):
            print(message.offset, message.data)

asyncio.run(main())
```

Retries, leader following and the exactly-once bookkeeping are the sync client's, sans-I/O:
`wiber.client.retry.RetryPlan` decides every retry, `wiber.client.inflight.InFlight` keeps the
requests in flight, their seqs and ``ack_floor``. What it hands out (Ack, Message, History) and takes
(Timeouts) are `wiber.client`'s.
"""

from __future__ import annotations

from wiber.aio.client import Client
from wiber.aio.consumer import ConsumedMessage, Consumer
from wiber.aio.subscription import PatternSubscription, Subscription
from wiber.client.values import Ack, History, Message, Timeouts

__all__ = [
    "Ack",
    "Client",
    "ConsumedMessage",
    "Consumer",
    "History",
    "Message",
    "PatternSubscription",
    "Subscription",
    "Timeouts",
]
