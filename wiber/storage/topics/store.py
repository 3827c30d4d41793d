"""`TopicStore`: every topic's messages in one shared sequence of segment files, indexed in SQLite.

Theory of operation (docs/storage.md)
--------------------------------------
The broker hands every stored message to `append`. Messages gather in a write buffer (which also
serves the newest reads) until `FLUSH_BYTES` of them are waiting; a flush writes them, sorted by
(topic, offset) and cut into CRC-framed blocks (`wiber.storage.topics.blocks`), with one ``pwrite``
at the end of the active segment, and notes each block in the in-memory index of recent blocks.
Nothing is fsynced then: the Raft log, fsynced per batch, is what makes an entry durable; the
segments are a cache of applied state that a *checkpoint* makes durable.

A checkpoint has two halves. `prepare_checkpoint` (on the loop thread, a few milliseconds) flushes
the buffer and freezes what the checkpoint covers: the blocks flushed since the last one, the
broker's changed rows, and the active segment's length. `CheckpointJob.run` (on any thread: fsync
and SQLite release the GIL) fsyncs every segment written since the last checkpoint (and the
directory when a segment was created), then commits the blocks, the rows and the checkpoint record
in one SQLite transaction. `finish_checkpoint` (loop thread) forgets the recent blocks that are now
in the database and removes segments that retention emptied. Only after that may the node drop the
Raft log up to the checkpoint's index.

Crash safety
------------
1. The checkpoint record is committed only after every byte it points to is fsynced (segments
   before the transaction), so a committed record never points past durable data.
2. The record holds the index it covers and is written in the same transaction as the rows for
   that index, never ahead of them (etcd once skipped entries after a restart by storing the
   applied index ahead of its data).
3. Recovery (`open`) cuts the active segment back to the recorded length and removes every segment
   the record does not list (newer ones, and ones retention emptied); the node then re-applies the
   Raft log after the recorded index, which the Raft log still holds because it is compacted only
   after a checkpoint is committed.
4. A segment the record lists must exist and be at least as long as what it covers, and the active
   segment's blocks up to the recorded length must all be valid; otherwise `CorruptLog` names the
   file and byte and the node does not start. Every block is checked against its CRC when read.
5. A first-format snapshot being migrated (`reset`) is written into new segment numbers and
   committed with ``replace`` (every earlier row deleted in the same transaction); the old segments
   are removed afterwards, so a crash leaves either the old state or the new one. (A leader's
   snapshot arrives as files instead, switched in whole: `wiber.storage.transfer.install_staged`.)

Memory: the write buffer (at most about `FLUSH_BYTES`), the blocks flushed since the last
checkpoint, a small cache of decoded blocks, one name per topic, one descriptor per segment.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Final

from wiber.broker.checkpoint import BrokerDelta
from wiber.broker.records import StoredRecord
from wiber.errors import StorageError
from wiber.storage.durable import CorruptLog, StorageFailure
from wiber.storage.fs import OS, FileSystem, makedirs_durably
from wiber.storage.topics.blocks import (
    BlockError,
    BlockRef,
    decode_block,
    encode_blocks,
    parse_segment_name,
    scan_blocks,
    segment_name,
)
from wiber.storage.topics.checkpoint import CheckpointJob, Flushed
from wiber.storage.topics.index import INDEX_NAME, CheckpointRecord, IndexDb

__all__ = ["CheckpointJob", "TopicStore"]

log = logging.getLogger(__name__)

FLUSH_BYTES: Final = 1 << 20
"""The write buffer is flushed once this much message data waits in it."""
CACHE_BLOCKS: Final = 32
"""Decoded blocks kept for the next read (paging through a topic reads each block once)."""
_INDEX_BATCH: Final = 64
"""Blocks fetched from the index per query while reading forward."""


class TopicStore:
    """The broker's `RecordStore` on disk (see the module docstring). One loop thread owns it."""

    def __init__(self, directory: str, *, fs: FileSystem, fsync: bool, segment_bytes: int,
                 db_path: str | None, retention: bool) -> None:
        self.directory = directory
        self._fs = fs
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._db_path = db_path or os.path.join(directory, INDEX_NAME)
        self._retention = retention
        self._db: IndexDb | None = None
        self.record: CheckpointRecord | None = None
        """The last committed checkpoint record (None before the first)."""
        self.names: list[str] = []
        """Topic names by id, as the broker created them."""
        self._segments: list[int] = []
        """Live segment numbers, ascending; the last is the active one."""
        self._fds: dict[int, int] = {}
        self._active_size = 0
        self._unsynced: set[int] = set()
        self._dir_dirty = False
        self._buffer: dict[int, list[StoredRecord]] = {}
        self._buffer_bytes = 0
        self._new: list[Flushed] = []
        """Blocks flushed since the last prepared checkpoint, flush by flush."""
        self._committing: list[Flushed] = []
        """Blocks of the checkpoint being committed (still served from memory until it is)."""
        self._dead: list[int] = []
        self._obsolete: list[int] = []
        """Segments of a replaced state, removed once the replacing checkpoint is committed."""
        self._cache: OrderedDict[tuple[int, int], list[StoredRecord]] = OrderedDict()

    # ------------------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: str, *, fs: FileSystem = OS, fsync: bool = True, segment_bytes: int = 64 << 20,
             db_path: str | None = None, retention: bool = True) -> TopicStore:
        """Open (creating if needed) the store in `directory` and recover it to its last checkpoint.

        Raises: CorruptLog: a listed segment is missing, short or damaged before the checkpoint's end.
        """
        store = cls(directory, fs=fs, fsync=fsync, segment_bytes=segment_bytes, db_path=db_path, retention=retention)
        makedirs_durably(fs, directory, 0o700, fsync)
        try:
            store._db = IndexDb(store._db_path, fsync=fsync)
            store._recover()
        except BaseException:
            store.close()
            raise
        return store

    def _recover(self) -> None:
        fs = self._fs
        assert self._db is not None
        try:
            self.record = self._db.record()
        except ValueError as exc:
            raise CorruptLog(self._db_path, 0, str(exc), self.directory) from None
        on_disk = sorted(n for n in (parse_segment_name(name) for name in fs.listdir(self.directory)) if n is not None)
        listed = list(self.record.segments) if self.record is not None else []
        removed = [n for n in on_disk if n not in listed]
        for number in removed:
            fs.unlink(self._path(number))
        for number in listed:
            if number not in on_disk:
                raise CorruptLog(self._path(number), 0, "segment listed by the checkpoint is missing", self.directory)
        if self.record is None:
            self._segments = [max(on_disk, default=0) + 1]
            self._open_active(create=True)
        else:
            self._segments = listed
            self._check_sealed()
            self._open_active(create=False)
            self._recover_active(self.record.active_length)
        if removed:
            log.info("topic store %s: removed %d segment(s) past its checkpoint", self.directory, len(removed))
            self._sync_dir()

    def _check_sealed(self) -> None:
        """Every sealed segment must be at least as long as the blocks the index says it holds."""
        assert self._db is not None
        for number in self._segments[:-1]:
            fd = self._fd(number)
            size = self._fs.file_size(fd)
            row = self._db._db.execute(
                "SELECT max(position + length) FROM blocks WHERE segment=?", (number,)).fetchone()
            needed = row[0] or 0
            if size < needed:
                raise CorruptLog(self._path(number), size, f"segment is {size} bytes, its blocks reach {needed}",
                                 self.directory)

    def _recover_active(self, length: int) -> None:
        """Cut the active segment back to the checkpoint's length, after checking the blocks before it."""
        number = self._segments[-1]
        fd = self._fds[number]
        size = self._fs.file_size(fd)
        if size < length:
            raise CorruptLog(self._path(number), size, f"segment is {size} bytes, its checkpoint covers {length}",
                             self.directory)
        scan = scan_blocks(self._fs.pread(fd, length, 0), number)
        if scan.problem is not None:
            raise CorruptLog(self._path(number), scan.end, scan.problem, self.directory)
        if size > length:
            self._fs.ftruncate(fd, length)
            if self._fsync:
                self._fs.fsync(fd)
            log.info("topic store %s: cut %d bytes written after the checkpoint from %s (the Raft log re-applies them)",
                     self.directory, size - length, segment_name(number))
        self._active_size = length

    def _open_active(self, create: bool) -> None:
        number = self._segments[-1]
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self._fds[number] = self._fs.open(self._path(number), flags, 0o600)
        self._active_size = 0
        if create:
            self._dir_dirty = True
            self._unsynced.add(number)

    # ------------------------------------------------------------------------ RecordStore

    def add_topic(self, topic_id: int, name: str) -> None:
        """Note topic `name`'s id (blocks carry ids; reads give names back)."""
        if topic_id != len(self.names):
            raise ValueError(f"topic {name!r} created with id {topic_id}, expected {len(self.names)}")
        self.names.append(name)

    def append(self, topic_id: int, records: Sequence[StoredRecord]) -> None:
        """Keep `records` (consecutive offsets of one topic) in the write buffer; flush when it is full."""
        buffer = self._buffer.get(topic_id)
        if buffer is None:
            buffer = self._buffer[topic_id] = []
        if len(records) == 1:
            buffer.append(records[0])
            self._buffer_bytes += len(records[0][2])
        else:
            buffer.extend(records)
            self._buffer_bytes += sum([len(record[2]) for record in records])
        if self._buffer_bytes >= FLUSH_BYTES:
            self.flush()

    def trim(self, topic_id: int, first: int) -> None:
        """Forget buffered records below `first` (they need never reach the disk)."""
        buffer = self._buffer.get(topic_id)
        if buffer and buffer[0][1] < first:
            del buffer[: first - buffer[0][1]]

    def read(self, topic_id: int, start: int, stop: int, max_bytes: int | None = None) -> list[StoredRecord]:
        """Returns: the records ``start .. stop - 1`` of `topic_id` (fewer past `max_bytes`, at least one).

        Raises: StorageError: a block is damaged or cannot be read.
        """
        out: list[StoredRecord] = []
        if stop <= start:
            return out
        budget = max_bytes
        for records in self._runs(topic_id, start, stop):
            for record in records:
                offset = record[1]
                if offset < start:
                    continue
                if offset >= stop:
                    return out
                if budget is not None:
                    budget -= len(record[2])
                    if budget < 0 and out:
                        return out
                out.append(record)
        return out

    def scan(self, topic_id: int, start: int) -> Iterator[StoredRecord]:
        """Returns: the records of `topic_id` from `start` on, in order."""
        for records in self._runs(topic_id, start, None):
            for record in records:
                if record[1] >= start:
                    yield record

    def _runs(self, topic_id: int, start: int, stop: int | None) -> Iterator[list[StoredRecord]]:
        """Yield lists of consecutive records of `topic_id` covering offsets from `start` (to `stop`),
        oldest first: from the indexed blocks, the recent blocks, then the write buffer."""
        memory = [ref for flushed in (*self._committing, *self._new) for ref in flushed.blocks_of(topic_id)]
        buffer = self._buffer.get(topic_id)
        if memory:
            lowest = memory[0].first
        elif buffer:
            lowest = buffer[0][1]
        else:
            lowest = None
        offset = start
        if (lowest is None or offset < lowest) and self._db is not None:
            ref = self._db.block_at(topic_id, offset)
            below = lowest if lowest is not None else 2**63 - 1
            while ref is not None:
                yield self._load(ref)
                offset = ref.end
                if stop is not None and offset >= stop:
                    return
                following = self._db.blocks_after(topic_id, ref.first, below, _INDEX_BATCH)
                for ref in following[:-1]:
                    yield self._load(ref)
                    offset = ref.end
                    if stop is not None and offset >= stop:
                        return
                ref = following[-1] if following else None
        if memory:
            position = max(0, bisect.bisect_right([b.first for b in memory], offset) - 1)
            for ref in memory[position:]:
                if ref.end <= offset:
                    continue
                yield self._load(ref)
                offset = ref.end
                if stop is not None and offset >= stop:
                    return
        if buffer:
            yield buffer

    def _load(self, ref: BlockRef) -> list[StoredRecord]:
        """Returns: the decoded records of block `ref` (cached). Raises: StorageError."""
        key = (ref.segment, ref.position)
        records = self._cache.get(key)
        if records is not None:
            self._cache.move_to_end(key)
            return records
        try:
            buf = self._fs.pread(self._fd(ref.segment), ref.length, ref.position)
            records = decode_block(buf, self.names[ref.topic_id], ref.position)
        except (OSError, BlockError, IndexError) as exc:
            raise StorageError(f"cannot read {segment_name(ref.segment)} at byte {ref.position}: {exc}") from None
        if records[0][1] != ref.first or len(records) != ref.count:
            raise StorageError(f"{segment_name(ref.segment)} at byte {ref.position}: block is not the indexed one")
        self._cache[key] = records
        if len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return records

    # ------------------------------------------------------------------------ writing

    def flush(self) -> None:
        """Write the buffered records as blocks at the end of the active segment (no fsync).

        Raises: StorageFailure: the write failed (the node stops taking part in Raft).
        """
        if not self._buffer:
            return
        parts: list[bytes] = []
        number = self._segments[-1]
        flushed = Flushed(number)
        position = self._active_size
        for topic_id in sorted(self._buffer):
            records = self._buffer[topic_id]
            if not records:
                continue
            for first, count, frame in encode_blocks(topic_id, records):
                flushed.add(topic_id, first, count, position, len(frame))
                parts.append(frame)
                position += len(frame)
        if parts:
            try:
                self._fs.pwrite(self._fds[number], b"".join(parts), self._active_size)
            except OSError as exc:  # the buffer stays: reads keep serving what the disk refused
                raise StorageFailure(f"cannot write {self._path(number)}: {exc}", exc.errno) from None
            self._active_size = position
            self._unsynced.add(number)
            self._new.append(flushed)
        self._buffer.clear()
        self._buffer_bytes = 0
        if self._active_size >= self._segment_bytes:
            self._roll()

    def _roll(self) -> None:
        """Start a new active segment; the full one stays open for reads and its checkpoint's fsync."""
        number = self._segments[-1] + 1
        self._segments.append(number)
        try:
            self._open_active(create=True)
        except OSError as exc:
            raise StorageFailure(f"cannot create {self._path(number)}: {exc}", exc.errno) from None

    def prepare_checkpoint(self, applied_term: int, delta: BrokerDelta, replace: bool = False,
                           export_dir: str | None = None) -> CheckpointJob:
        """Flush and freeze what a checkpoint at ``delta.applied_index`` covers (loop thread, fast).

        Raises: StorageFailure: the flush failed.
        """
        if self._committing:
            raise RuntimeError("a checkpoint is already being committed")
        self.flush()
        dropped = [s for s in self._dead if s in self._segments[:-1]]
        segments = tuple(s for s in self._segments if s not in dropped)
        record = CheckpointRecord(delta.applied_index, applied_term, segments, self._active_size, delta.counters)
        sync_fds = [self._fds[n] for n in sorted(self._unsynced) if n in self._fds]
        job = CheckpointJob(record, self._new, delta, sync_fds, self._dir_dirty, dropped, replace,
                            self._retention, self._db_path, self._fsync, self._fs, self.directory, export_dir)
        job.unsynced = set(self._unsynced)
        self._committing, self._new = self._new, []
        self._unsynced = set()
        self._dir_dirty = False
        return job

    def finish_checkpoint(self, job: CheckpointJob) -> None:
        """Take a committed checkpoint in (loop thread): forget its blocks from memory, remove the
        segments it dropped and those a replaced state left."""
        self._committing = []
        self.reopen_index()
        self.record = job.record
        gone = list(job.dropped) + self._obsolete
        self._obsolete = []
        self._dead = job.dead
        for number in gone:
            if number in self._segments:
                self._segments.remove(number)
            self._close_fd(number)
            for key in [k for k in self._cache if k[0] == number]:
                del self._cache[key]
            try:
                self._fs.unlink(self._path(number))
            except FileNotFoundError:
                pass
        if gone:
            self._sync_dir()
            log.info("topic store %s: removed %d segment(s) emptied by retention or replaced", self.directory,
                     len(gone))

    def abandon_checkpoint(self, job: CheckpointJob) -> None:
        """The job failed: its blocks stay in memory, and what it was to fsync is still to be fsynced
        (the node stops writing on a storage failure; this keeps a later checkpoint honest anyway)."""
        self._new = self._committing + self._new
        self._committing = []
        self._unsynced |= job.unsynced
        self._dir_dirty = self._dir_dirty or job.sync_dir

    def checkpoint_now(self, applied_term: int, delta: BrokerDelta, replace: bool = False) -> None:
        """A whole checkpoint on this thread (start-up migration, an installed snapshot).

        Raises: StorageFailure: the disk refused it.
        """
        job = self.prepare_checkpoint(applied_term, delta, replace)
        try:
            job.run()
        except (OSError, Exception) as exc:
            self.abandon_checkpoint(job)
            raise StorageFailure(f"checkpoint failed: {exc}") from None
        self.finish_checkpoint(job)

    def reset(self) -> None:
        """Start over empty (a leader's snapshot replaces everything): new data goes to new segment
        numbers, and the old segments are removed once the replacing checkpoint is committed."""
        self._obsolete = [n for n in self._segments]
        self._segments = [self._segments[-1] + 1]
        self._buffer.clear()
        self._buffer_bytes = 0
        self._new = []
        self._committing = []
        self._dead = []
        self.names = []
        self._cache.clear()
        self._open_active(create=True)
        if self._db is not None:  # the reader must not find the old blocks: they belong to other topic ids
            self._db.close()
            self._db = None

    def reopen_index(self) -> None:
        """Reopen the index reader after `reset` once the replacing checkpoint is committed."""
        if self._db is None:
            self._db = IndexDb(self._db_path, fsync=self._fsync)

    # ------------------------------------------------------------------------ files

    @property
    def segments(self) -> list[int]:
        """Returns: the live segment numbers, ascending; the last is the active one."""
        return list(self._segments)

    @property
    def index(self) -> IndexDb:
        """Returns: the loop thread's index reader."""
        assert self._db is not None
        return self._db

    @property
    def buffered_bytes(self) -> int:
        """Returns: the message data waiting in the write buffer."""
        return self._buffer_bytes

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, segment_name(number))

    def _fd(self, number: int) -> int:
        fd = self._fds.get(number)
        if fd is None:
            fd = self._fds[number] = self._fs.open(self._path(number), os.O_RDONLY)
        return fd

    def _close_fd(self, number: int) -> None:
        fd = self._fds.pop(number, None)
        if fd is not None:
            self._fs.close(fd)

    def _sync_dir(self) -> None:
        if self._fsync:
            self._fs.fsync_dir(self.directory)

    def close(self) -> None:
        """Close every file and the index (nothing is flushed: recovery re-applies from the Raft log)."""
        for number in list(self._fds):
            self._close_fd(number)
        if self._db is not None:
            self._db.close()
            self._db = None
