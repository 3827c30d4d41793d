"""`DurableStorage`: the Raft log on disk (segments, CRC, group commit, hard state, snapshots, recovery).

Promise 1 rests on this module: an entry acknowledged by a node is fsynced, and stays. The node
calls the writer API once per loop turn, in `Ready` order (`wiber.raft.ready`)::

    storage.apply_snapshot(...)   # when the leader sent one      (durable on return)
    storage.append(entries)       # write, no fsync               (a truncation is durable on return)
    storage.set_hard_state(hs)    # durable on return when term or vote changed
    storage.sync()                # ONE fsync for everything appended since the last sync
    ... only now send acknowledgements and votes ...

The read side is the `LogStorage` Protocol with exactly `MemoryStorage`'s semantics and
exceptions. Every entry's term since the snapshot is kept in memory (8 bytes each), and the entries
themselves from `cached_from` on: the node calls `release(index)` once entries are applied, and
`entries()` reads older ones back from the segments (a follower that lags, a restart's re-apply).
So the Raft log's memory is what is not applied yet, not all since the last snapshot. The file
formats are in `wiber.storage.format`.

Not thread-safe: one node loop owns one instance. One process at a time: `open` takes an exclusive
`flock` on ``LOCK`` in the directory.

Every file operation goes through a `wiber.storage.fs.FileSystem` (``fs=`` of `DurableStorage.open`,
the real `OS` by default), so that the test suite can run this module over a crash-consistent
in-memory file system and crash it at every single operation (``tests/crashfs.py``). Only the
``LOCK`` file's ``flock`` stays on `os` and `fcntl`, and only over `OsFileSystem`: it excludes other
*processes*, and an in-memory file system belongs to one process and one test, so there is nothing
to lock there (nor any lock API in `FileSystem` to lock with).

Crash-safety argument
---------------------
What a crash (``kill -9`` or power loss) may leave is, per file, any prefix-ish mixture of the writes
not yet fsynced; what was fsynced stays. The rules below make every such state recover to a log
that holds everything that was ever synced (hence everything acknowledged), possibly followed by a
prefix of what was not.

1. **Group commit.** `append` writes records with one ``pwrite`` per segment touched; `sync` fsyncs
   the current segment and, if a segment was created or removed since, the directory (a new file's
   name must be durable too, not only its bytes). The node acknowledges only after `sync` returns.
2. **Only the last segment can be torn.** Before rolling to a new segment, the full one is fsynced
   and closed; the new one is created after that. So after a crash, every segment but the last is
   complete, and a bad record in one of them is corruption, never a torn write.
3. **Torn tail versus corruption.** Recovery reads every segment in order, checking framing, crc and
   index continuity. In the last segment, the first invalid record is a torn write, cut off with
   ``ftruncate`` + fsync and one WARNING, *only if no valid record follows it anywhere in the file*
   (an fsynced record after it would prove the damaged bytes had been synced too). Anything else —
   a bad record with valid ones after it, a bad record in an earlier segment, a valid record with
   the wrong index, a gap between segments or between the snapshot and the log — raises `CorruptLog`
   and the node does not start. Nothing is dropped silently.
4. **Truncation (a conflicting suffix) is made durable before the new entries are written.** Later
   segments are unlinked newest first with a directory fsync after each (so a crash leaves a
   prefix of the segments, never a gap), then the segment holding the first conflicting index is
   ``ftruncate``'d to that record's offset and fsynced. A crash anywhere in between leaves a prefix
   of the old log, which is safe: Raft only truncates entries that are not committed.
5. **Atomic replace** for the hard state and snapshots: write ``<name>.tmp``, fsync it, ``rename``
   over the name, fsync the directory. A reader sees the old file or the new one, never a mix;
   leftover ``.tmp`` files are deleted at recovery. The hard state is rewritten only when the term
   or the vote changes (elections are rare), and the log is synced first, so the commit index it
   carries never points past the durable log. (Recovery still clamps commit into
   ``[snapshot index, last index]``: commit is not needed for safety.)
6. **Compaction** writes the snapshot durably first, then removes older snapshot files and the
   segments entirely at or below its index; recovery finishes an interrupted compaction by deleting
   segments that lie entirely below the snapshot and skipping entries at or below its index.
7. **A snapshot from the leader** replaces the whole log: it is made durable first, then every
   segment is unlinked newest first, with a directory fsync after each. If a crash interrupts that,
   recovery keeps what is left only if it continues the snapshot (the entry at the snapshot's index
   has the snapshot's term, Log Matching), read even from a segment lying wholly below the snapshot
   (when the snapshot's index is that segment's last); otherwise it finishes the removal (with a
   WARNING), newest first and before the segments below the snapshot go, so that the segment
   holding the evidence outlives the ones it condemns.
8. **A snapshot file with a bad checksum** is set aside (renamed ``.corrupt``) only when the log
   still holds every entry it covered, on top of an older valid snapshot or from index 1;
   otherwise recovery refuses with `CorruptLog`.
9. **Recovery makes what it read durable** (fsync of the last segment and of the directory), so a
   restarted node never acknowledges, from the page cache, entries that a power loss could still take.

Disk trouble
------------
Any `OSError` from a write path raises `StorageFailure` (a `StorageError`: wire code STORAGE) and
marks the storage failed: every later write raises at once, reads keep working from memory. There
is deliberately no retry: after a failed fsync, Linux may already have dropped the dirty pages and
a second fsync would report success for data that is not on disk (PostgreSQL's "fsyncgate", 2018).
Entries appended since the last successful `sync` must never be acknowledged.
"""

from wiber.storage.durable.errors import CorruptLog, DirectoryLocked, StorageFailure
from wiber.storage.durable.storage import DurableStorage, write_snapshot_file

__all__ = ["CorruptLog", "DirectoryLocked", "DurableStorage", "StorageFailure", "write_snapshot_file"]
