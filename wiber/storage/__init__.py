"""The durable Raft log: segment files with CRC-framed records, group commit, hard state,
snapshots and crash recovery.

`DurableStorage` implements the core's read-only `wiber.raft.storage.LogStorage` with exactly
`MemoryStorage`'s semantics, plus the writer API the node calls once per loop turn. The on-disk
format is documented in `wiber.storage.format`, the crash-safety argument in
`wiber.storage.durable`; ``python -m wiber.storage.measure`` measures fsync cost and throughput.
"""

from __future__ import annotations

from wiber.storage.durable import CorruptLog, DirectoryLocked, DurableStorage, StorageFailure

__all__ = ["CorruptLog", "DirectoryLocked", "DurableStorage", "StorageFailure"]
