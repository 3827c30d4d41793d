"""A pipelined, auto-batching publisher: many requests in flight, messages gathered per topic.

The way Kafka's producer gets its speed (`linger.ms`, `batch.size`): messages handed to
`Publisher.publish` are gathered per topic for at most `linger_s` or `batch_size` messages, then
sent as one PUB_BATCH (or a PUB for a single message) over a DEALER socket, with at most `window`
requests in flight. Each message gets a `PublishFuture` that resolves to its `Ack` (its own offset).

Exactly once, in order: every request carries this publisher's `client_id` and its own `seq`, and
`ack_floor` = the lowest seq of that client_id still in flight. On NOT_LEADER, UNAVAILABLE,
OUT_OF_SEQUENCE, STORAGE or a timeout, every request still in flight is sent again, in seq order,
with the same seqs (to the leader named, or the next node): the node's session answers those
already stored with their first answer (`duplicate: True`), so each message is stored once. The
seqs, floors, window, tries, deadlines and where to go next are decided by the sans-I/O table and
retry policy the asyncio client shares (`wiber.client.inflight`, `wiber.client.retry`).

Order needs more than sending in order, because a request can be refused while later ones of the
same stream are not: a node answers NOT_LEADER to seqs 1..k of a stream, becomes leader and takes
k+1.. from the rest of it (seen on a loaded machine: the resent 1..k then landed after them), and a
connection that ends while requests are still queued for it leaves the later ones reaching the
leader after the earlier ones' resends. So every request is sent `ordered`: the cluster stores it
only as its session's next seq and refuses one past a gap with OUT_OF_SEQUENCE (docs/design.md
section 3), as Kafka's idempotent producer refuses an out-of-sequence batch; and no request goes
out on a connection after an earlier one that could not be sent on it. A topic's messages are
stored in the order they were handed in.

Threads. By default (``io_thread=True``) a background I/O thread owns the socket and does all the
I/O: `publish` (safe from any thread) checks the message and adds it to its topic's batch, and a
full batch (or a lingered one, or a plain PUB) is handed to the I/O thread through a queue, so a
message leaves within `linger_s` with no further call; `flush()` and `close()` send everything and
wait for every acknowledgement; `PublishFuture.result` waits for the I/O thread. No ZMQ socket is
used by two threads: the other threads wake the I/O thread through a pipe. `publish` waits while
`window` requests wait to be sent beside the `window` in flight. The messages of one thread keep the
order that thread handed them in.

Callbacks run on the I/O thread, one at a time, in the order their futures resolved, each after
that turn's I/O: a callback may call `publish` (it never waits there), and `result` or `flush`
(which then drive the I/O from inside the callback, as in the single-threaded mode), but should be
short, since the I/O waits for it. An exception from a callback is logged and does not stop the
publisher. `close()` must not be called from a callback.

With ``io_thread=False`` the publisher is single-threaded: it does I/O only inside its own calls
(`publish`, `poll`, `flush`, `PublishFuture.result`, `close`), a message waits at most `linger_s`
past the next such call, and callbacks run inside those calls once the I/O is done (at the end of
`poll`, which `publish`, `flush` and `result` call), in the order their futures resolved; an
exception from a callback comes out of that call. Either way a callback may publish (acknowledge,
then publish the next step): it never runs while the publisher is halfway through building or
sending a batch, which would lose or reorder messages.

The parts, one job each:

* `publisher.py` — `Publisher`, the public API, and the turn of I/O that ties the parts together;
* `future.py` — `PublishFuture`, one message's acknowledgement;
* `batching.py` — the batches gathered per topic and the queue of requests handed to the I/O;
* `iothread.py` — the background I/O thread, the pipe that wakes it, threads waiting on it;
* `wire.py` — the DEALER to the current node, the requests in flight (over `InFlight`), ordered
  resends and leader following.
"""

from __future__ import annotations

from wiber.client.publisher.future import Callback, PublishFuture
from wiber.client.publisher.publisher import Publisher

__all__ = ["Callback", "PublishFuture", "Publisher"]
