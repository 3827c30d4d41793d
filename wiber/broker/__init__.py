"""The replicated state machine, pure: topics, offsets, dedup sessions, retention, snapshots.

The parts, one module each:

* `entry`     the log entry a loop turn of PUBs becomes (`PubOp`, `encode_entry`, `decode_entry`)
* `consumers` durable consumer groups: their ops in an entry, their state and results
* `records`   stored messages, apply results, and the `RecordStore` that keeps the messages
* `sessions`  dedup sessions (Raft thesis section 6.3)
* `state`     `Broker`: apply, retention, HISTORY reads (its docstring has the theory and invariants)
* `snapshot`  the whole state as one msgpack value (tests, and migration of old data directories)
* `checkpoint` the incremental rows a node's checkpoint writes, and the broker rebuilt from them

Nothing here does I/O of its own: a node hands the broker an on-disk `RecordStore`.
"""

from wiber.broker.entry import ENTRY_FORMAT, MalformedEntry, PubOp, decode_entry, encode_entry, pub_op_from_request
from wiber.broker.records import MemoryRecordStore, PubResult, Record, RecordStore, StoredRecord, record_to_wire
from wiber.broker.snapshot import SNAPSHOT_FORMAT, SnapshotError
from wiber.broker.state import AppliedEntry, Broker, BrokerSettings, TopicState

__all__ = [
    "ENTRY_FORMAT",
    "SNAPSHOT_FORMAT",
    "AppliedEntry",
    "Broker",
    "BrokerSettings",
    "MalformedEntry",
    "MemoryRecordStore",
    "PubOp",
    "PubResult",
    "Record",
    "RecordStore",
    "SnapshotError",
    "StoredRecord",
    "TopicState",
    "decode_entry",
    "encode_entry",
    "pub_op_from_request",
    "record_to_wire",
]
