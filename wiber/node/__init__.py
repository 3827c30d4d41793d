"""The node side: the one loop that does I/O, and what it wires together.

* `loop`        `Node`: the poller loop, Raft's Ready processing, applying, waiters
* `clients`     the answers to client requests (docs/design.md section 3)
* `checkpoints` loading the state at start, checkpoints off the loop, replacing the state
* `shipping`    a checkpoint's files streamed to a follower that needs a snapshot
* `transport`   the node's sockets, non-blocking, drop-and-count on back-pressure
* `auth`        keys, the ZAP handler, client rights, plain TCP only on loopback (section 10)
* `timesync`    the clock-sync frames exchanged beside Raft messages
* `reorder`     the bounded reordering window (docs/design.md section 5)
* `waiting`     clients parked until their entry commits or their read is confirmed
* `answers`     the replies to parked clients: from applied entries, or the error that ended the wait
* `notices`     the leader's commit notices, held a millisecond to ride on the next append
* `fanout`      applied messages to the PUB socket, skipped for topics nobody subscribed to
* `connections` the client port's connections (socket monitor) and the open-files limit
* `metrics`     Prometheus /metrics and /healthz from the loop's own poller
* `raftclock`   Raft's clock: ticks as time passes, less the node's waits on its disk or for a CPU
* `cpuwait`     how long the loop thread waited for a CPU (the scheduler's count)

Nothing here is imported by the client side (`wiber.client`, `wiber.publisher`).
"""

from wiber.node.loop import Node
from wiber.node.notices import COMMIT_NOTICE_DELAY_S
from wiber.node.raftclock import DISK_WAIT_CREDIT_MAX_S, TICK_MS, ms_to_ticks

__all__ = ["COMMIT_NOTICE_DELAY_S", "DISK_WAIT_CREDIT_MAX_S", "TICK_MS", "Node", "ms_to_ticks"]
