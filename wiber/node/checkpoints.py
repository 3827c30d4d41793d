"""A node's checkpoints: the broker loaded at start, checkpoints taken off the loop, the Raft log
compacted behind them, and the state replaced by a leader's snapshot (docs/storage.md).

A checkpoint is due every `snapshot_every` applied entries or `snapshot_bytes` of them. Its fast
half runs on the loop (`TopicStore.prepare_checkpoint`: flush the write buffer, take the broker's
changed rows), its slow half on a thread (fsync the segments, commit the index); the loop notices
the thread is done on a later turn, takes the checkpoint in and only then compacts the Raft log up
to it, so the log always holds every entry after the topic store's checkpoint. At most one
checkpoint is written at a time. The Raft snapshot of a checkpoint is a small descriptor
(`descriptor`): the state itself is in the topic store's files.

When a follower needs a snapshot, the next checkpoint is also laid out for it (`export_dir`): hard
links to its segments and a copy of its index, streamed by `wiber.node.shipping`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Final

import msgpack

from wiber.broker import Broker, BrokerSettings
from wiber.broker.checkpoint import rebuild, take_delta
from wiber.broker.snapshot import SNAPSHOT_FORMAT as FULL_SNAPSHOT_FORMAT
from wiber.broker.snapshot import SnapshotError
from wiber.config import Config
from wiber.raft.messages import SnapshotMeta
from wiber.storage import CorruptLog, DurableStorage, StorageFailure
from wiber.storage.durable import write_snapshot_file
from wiber.storage.fs import OS
from wiber.storage.transfer import recover_install
from wiber.storage.topics import CheckpointJob, TopicStore
from wiber.storage.topics.blocks import scan_blocks, segment_name
from wiber.storage.topics.index import INDEX_NAME

__all__ = ["CHECKPOINT_FORMAT", "Checkpoints", "descriptor", "is_full_snapshot"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT: Final = 2
"""First item of the Raft snapshot data a checkpoint writes: the data itself lives in the topic store."""
TOPICS_DIR: Final = "topics"
EXPORT_DIR: Final = "export"
CHECK_DB: Final = "topics.check.db"
"""A copy of a staged snapshot's index, opened to check the snapshot (the staged file stays as it came)."""


class Checkpoints:
    """The topic store of one node and the checkpoints written from it (see the module docstring)."""

    def __init__(self, config: Config, node_id: str, storage: DurableStorage, settings: BrokerSettings) -> None:
        self._id = node_id
        self._storage = storage
        self._settings = settings
        self._every = config.cluster.snapshot_every
        self._bytes = config.cluster.snapshot_bytes
        self.data_dir = config.node_data_dir(node_id)
        self.topics_dir = os.path.join(self.data_dir, TOPICS_DIR)
        self._store_options = (config.cluster.fsync, config.cluster.segment_bytes, _has_retention(config))
        how = recover_install(OS, self.topics_dir)  # a snapshot switch cut short is finished or undone
        if how != "clean":
            log.warning("node %s: an interrupted snapshot install was %s", node_id, how)
        self.store = self._open_store()
        self.index = 0
        """The applied index of the last checkpoint taken in (or of the loaded state)."""
        self.applied_bytes = 0
        """Bytes of log entries applied since the last checkpoint was prepared."""
        self._running: tuple[CheckpointJob, threading.Thread] | None = None
        self._error: BaseException | None = None
        self.export: CheckpointJob | None = None
        """The last checkpoint laid out for followers (its `exported` files in `export_path`)."""
        self._export_wanted = False
        self._exports = 0
        self.seconds_last = 0.0
        """How long the last checkpoint took, from prepare to taken in (for STATUS and metrics)."""
        self._started_at = 0.0
        self.prepare_ms_last = 0.0
        """How long the loop was held by the last checkpoint's fast half (flush and changed rows)."""
        self.prepare_ms_max = 0.0
        self.compact_ms_last = 0.0
        """How long the loop was held by the last Raft log compaction (a small file written and fsynced)."""
        self.compact_ms_max = 0.0
        self._compact_on_take_in = False
        self.hold_compaction: Callable[[], bool] = lambda: False
        """Whether the Raft log must not be compacted now (a snapshot is being streamed from it)."""
        self._unlink_later: list[str] = []
        """Raft log segments compacted away, unlinked by the next checkpoint's thread."""
        self.taken = 0
        _remove_tree(os.path.join(self.data_dir, EXPORT_DIR))  # a restart makes new exports

    # ------------------------------------------------------------------------ start

    def load(self) -> Broker:
        """Returns: the broker as the data directory left it: the topic store's last checkpoint, or
        an empty one, or (a data directory of the first format) the full snapshot the Raft log holds,
        migrated into the topic store. The node then re-applies the Raft log after it.

        Raises: CorruptLog: the Raft log was compacted past the topic store's checkpoint.
        """
        meta, data = self._storage.snapshot()
        store = self.store
        record = store.record
        if record is not None and record.applied_index >= meta.index:
            broker = rebuild(self._settings, store, record.counters, store.index.topics(), store.index.sessions(),
                              store.index.groups())
        elif record is None and meta.index == 0:
            broker = Broker(self._settings, store)
        elif is_full_snapshot(data):
            log.warning("node %s: migrating the snapshot at index %d (every message inside it, the first "
                        "data format) into topic segments", self._id, meta.index)
            broker = self._migrate(meta, data)
        else:
            covered = "no checkpoint" if record is None else f"a checkpoint at index {record.applied_index}"
            raise CorruptLog(store.directory, 0, f"the topic segments hold {covered}, but the Raft log was "
                             f"compacted to index {meta.index}: the messages in between are lost", store.directory)
        self.index = broker.applied_index
        return broker

    # ------------------------------------------------------------------------ taking checkpoints

    @property
    def running(self) -> bool:
        """Returns: whether a checkpoint is being written."""
        return self._running is not None

    def want_export(self) -> None:
        """A follower needs a snapshot: lay the next checkpoint out for it, and take one soon (unless
        the checkpoint being written is already laid out: the core repeats its request meanwhile)."""
        if self._running is not None and self._running[0].export_dir is not None:
            return
        self._export_wanted = True

    def stop_exporting(self) -> None:
        """No longer leader: forget a pending request for an export."""
        self._export_wanted = False

    def due(self, applied_index: int) -> bool:
        """Returns: whether a checkpoint should start now."""
        if self._running is not None:
            return False
        if self._export_wanted:
            return applied_index > 0  # even at the last checkpoint's index: the export is what is missing
        if applied_index <= self.index:
            return False
        return applied_index - self.index >= self._every or self.applied_bytes >= self._bytes

    def start(self, broker: Broker) -> None:
        """Prepare a checkpoint of `broker` (loop thread) and write it on a thread.

        Raises: StorageFailure: the flush failed.
        """
        self._started_at = time.monotonic()
        term = self._storage.term(broker.applied_index)
        export_dir = None
        if self._export_wanted:
            self._exports += 1  # a name of its own, even at the same index: the previous one is removed
            export_dir = os.path.join(self.data_dir, EXPORT_DIR, f"{broker.applied_index:020d}-{self._exports}")
            self._export_wanted = False
        job = self.store.prepare_checkpoint(term, take_delta(broker), export_dir=export_dir)
        # The Raft snapshot file (a descriptor) is written and fsynced on the thread too, after the
        # commit: on the loop its fsyncs held it 15-50 ms under load. The loop then only unlinks.
        meta = SnapshotMeta(broker.applied_index, term)
        data_dir, fsync = self.data_dir, self._store_options[0]
        # Only this loop changes the snapshot index between now and `_take_in` (an install waits for
        # the checkpoint first), so `_take_in` compacts exactly when this writes the file; not while
        # a snapshot is streamed from the log (`hold_compaction`).
        write_file = meta.index > self._storage.last_snapshot_index and not self.hold_compaction()
        self._compact_on_take_in = write_file
        unlink, self._unlink_later = self._unlink_later, []

        def after_commit() -> None:
            for path in unlink:  # Raft log segments the last compaction dropped (DurableStorage.compact)
                try:
                    OS.unlink(path)
                except FileNotFoundError:
                    pass
            if write_file:
                write_snapshot_file(OS, data_dir, meta, descriptor(meta.index), fsync)  # fsyncs the directory
            elif unlink and fsync:
                OS.fsync_dir(data_dir)

        job.after_commit = after_commit
        self.prepare_ms_last = (time.monotonic() - self._started_at) * 1000
        self.prepare_ms_max = max(self.prepare_ms_max, self.prepare_ms_last)
        self.applied_bytes = 0
        thread = threading.Thread(target=self._run, args=(job,), name=f"checkpoint-{self._id}", daemon=True)
        self._running = (job, thread)
        thread.start()

    def _open_store(self) -> TopicStore:
        fsync, segment_bytes, retention = self._store_options
        return TopicStore.open(self.topics_dir, fsync=fsync, segment_bytes=segment_bytes, retention=retention)

    def _run(self, job: CheckpointJob) -> None:
        """The checkpoint thread: fsync and commit (both release the GIL); errors go to the loop."""
        try:
            job.run()
        except BaseException as exc:  # handed to the loop, which stops writing (a storage failure)
            self._error = exc

    def poll(self) -> CheckpointJob | None:
        """Take a written checkpoint in and compact the Raft log up to it (loop thread).

        Returns: the checkpoint taken in, or None (none done yet). Raises: StorageFailure.
        """
        if self._running is None or self._running[1].is_alive():
            return None
        return self._take_in()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the checkpoint thread to end, without taking its checkpoint in (tests, shutdown)."""
        if self._running is not None:
            self._running[1].join(timeout)

    def wait(self) -> None:
        """Wait for a checkpoint being written and take it in. Raises: StorageFailure."""
        if self._running is not None:
            self._running[1].join()
            self._take_in()

    def _take_in(self) -> CheckpointJob:
        assert self._running is not None
        job, _ = self._running
        self._running = None
        error, self._error = self._error, None
        if error is not None:
            self.store.abandon_checkpoint(job)
            raise StorageFailure(f"checkpoint at index {job.record.applied_index} failed: {error}")
        self.store.finish_checkpoint(job)
        index = job.record.applied_index
        self.index = index
        if job.export_dir is not None:
            previous, self.export = self.export, job
            if previous is not None and previous.export_dir not in (None, job.export_dir):
                _remove_tree(previous.export_dir)
        if self._compact_on_take_in and index > self._storage.last_snapshot_index:
            started = time.monotonic()
            self._storage.compact(index, descriptor(index), written=True, unlink_later=self._unlink_later)
            self.compact_ms_last = (time.monotonic() - started) * 1000
            self.compact_ms_max = max(self.compact_ms_max, self.compact_ms_last)
        self.seconds_last = time.monotonic() - self._started_at
        self.taken += 1
        log.info("node %s took a checkpoint at index %d", self._id, index)
        return job

    def status(self) -> dict[str, object]:
        """Returns: the checkpoint figures STATUS shows (index, counts, how long the loop was held)."""
        return {
            "index": self.index,
            "taken": self.taken,
            "running": self.running,
            "seconds_last": round(self.seconds_last, 4),
            "loop_ms_last": round(self.prepare_ms_last, 3),
            "loop_ms_max": round(self.prepare_ms_max, 3),
            "compact_ms_last": round(self.compact_ms_last, 3),
            "compact_ms_max": round(self.compact_ms_max, 3),
            "segments": len(self.store.segments),
        }

    def drop_export(self) -> None:
        """No follower needs the export any more: free its hard links and index copy."""
        if self.export is not None and self.export.export_dir is not None:
            _remove_tree(self.export.export_dir)
        self.export = None

    # ------------------------------------------------------------------------ replacing the state

    def _migrate(self, meta: SnapshotMeta, data: bytes) -> Broker:
        """Move a first-format snapshot (`Broker.snapshot` bytes: every message inside) into the topic
        store, with a checkpoint at its index; the Raft log keeps its snapshot file as it is.

        Returns: the broker. Raises: SnapshotError, StorageFailure.
        """
        store = self.store
        store.reset()
        broker = Broker.restore(data, self._settings, store)
        store.checkpoint_now(meta.term, take_delta(broker), replace=True)
        self.applied_bytes = 0
        return broker

    def check_staged(self, staging_dir: str, meta: SnapshotMeta) -> str | None:
        """Check that the staged files of a leader's snapshot hold the checkpoint at `meta`, before
        any of it replaces this node's state: the index is readable and holds that checkpoint, every
        segment it lists is there with whole, valid blocks, and the broker state loads from it.

        Returns: None when they do, else what is wrong (the caller discards the staged files).
        """
        copy = os.path.join(self.data_dir, CHECK_DB)
        _remove_db(copy)
        store: TopicStore | None = None
        try:
            shutil.copyfile(os.path.join(staging_dir, INDEX_NAME), copy)
            os.chmod(copy, 0o600)
            _, segment_bytes, retention = self._store_options
            store = TopicStore.open(staging_dir, fsync=False, segment_bytes=segment_bytes, db_path=copy,
                                    retention=retention)
            record = store.record
            if record is None or (record.applied_index, record.applied_term) != (meta.index, meta.term):
                held = None if record is None else (record.applied_index, record.applied_term)
                return f"its index holds the checkpoint (index, term) {held}, not {(meta.index, meta.term)}"
            for number in record.segments[:-1]:  # the active one was scanned by TopicStore.open
                scan = scan_blocks(OS.read_file(os.path.join(staging_dir, segment_name(number))), number)
                if scan.problem is not None:
                    return f"segment {segment_name(number)}: {scan.problem}"
            broker = rebuild(self._settings, store, record.counters, store.index.topics(), store.index.sessions(),
                              store.index.groups())
            if broker.applied_index != meta.index:
                return f"its broker state is at index {broker.applied_index}, not {meta.index}"
            return None
        except Exception as exc:  # noqa: BLE001 - files from the network: SQLite rows of any type, any damage
            return f"{type(exc).__name__}: {exc}"
        finally:
            if store is not None:
                store.close()
            _remove_db(copy)

    def install_staged(self, meta: SnapshotMeta, install: Callable[[str], None]) -> Broker:
        """Replace the whole state by a leader's checkpoint whose files are staged: close the topic
        store, switch the files in (`install` does it atomically), reopen, then the Raft log.

        Returns: the new broker. Raises: CorruptLog (the files do not hold the checkpoint), StorageFailure.
        """
        self.wait()
        directory = self.store.directory
        self.store.close()
        install(directory)
        self.store = self._open_store()
        record = self.store.record
        if record is None or record.applied_index != meta.index:
            raise CorruptLog(directory, 0, f"the installed snapshot holds a checkpoint at "
                             f"{None if record is None else record.applied_index}, not {meta.index}", directory)
        store = self.store
        try:
            broker = rebuild(self._settings, store, record.counters, store.index.topics(), store.index.sessions(),
                              store.index.groups())
        except (SnapshotError, sqlite3.Error) as exc:  # `check_staged` passed it: never expected
            raise CorruptLog(directory, 0, f"the installed snapshot does not load: {exc}", directory) from exc
        self._storage.apply_snapshot(meta, descriptor(meta.index))
        self.index = meta.index
        self.applied_bytes = 0
        return broker

    def close(self) -> None:
        """Wait for a checkpoint being written (not taking it in) and close the topic store."""
        if self._running is not None:
            self._running[1].join()
            self._running = None
        self.store.close()


def descriptor(index: int) -> bytes:
    """Returns: the Raft snapshot data of a checkpoint at `index` (its state is in the topic store)."""
    packed: bytes = msgpack.packb([CHECKPOINT_FORMAT, index], use_bin_type=True)
    return packed


def is_full_snapshot(data: bytes) -> bool:
    """Returns: whether Raft snapshot `data` is a broker's whole state (`Broker.snapshot`), as the
    first data format kept it, rather than a checkpoint's descriptor."""
    try:
        head = msgpack.Unpacker(use_list=False, raw=False, max_buffer_size=len(data) + 1)
        head.feed(data)
        size = head.read_array_header()
        first = head.unpack()
    except Exception:  # msgpack raises many types; none of them is a full snapshot
        return False
    return bool(size == 8 and first == FULL_SNAPSHOT_FORMAT)


def _has_retention(config: Config) -> bool:
    """Returns: whether any retention limit is configured (only then can segments empty)."""
    limits = [config.cluster.retention, *config.cluster.topics.values()]
    return any(r.max_messages is not None or r.max_bytes is not None or r.max_age_s is not None for r in limits)


def _remove_db(path: str) -> None:
    """Remove an SQLite database of this node's own making and the files SQLite keeps beside it."""
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def _remove_tree(path: str) -> None:
    """Remove a directory tree of this node's own making, if it is there."""
    shutil.rmtree(path, ignore_errors=True)
