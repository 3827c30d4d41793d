"""A checkpoint's Raft snapshot file written off the loop (`write_snapshot_file`), then taken in by
`compact(..., written=True)`: the same log as compacting in one step, and crash-safe at every point
in between (the file appearing before its compaction is the state rule 6 already recovers)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from crashfs import CrashFS, SimulatedCrash
from durable_helpers import ents

from wiber.errors import InvariantError
from wiber.raft.messages import HardState, SnapshotMeta
from wiber.storage import DurableStorage
from wiber.storage.durable import write_snapshot_file
from wiber.storage.fs import OS

QUIET = logging.getLogger("test.quiet")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False
DIRECTORY = "/data/n1"


def test_a_snapshot_file_written_first_is_taken_in_by_compact(tmp_path: Path) -> None:
    directory = str(tmp_path / "n1")
    with DurableStorage.open(directory, logger=QUIET) as storage:
        storage.append(ents(1, 11))
        storage.sync()
        write_snapshot_file(OS, directory, SnapshotMeta(6, 1), b"state at 6", True)
        storage.append(ents(11, 13))  # the loop goes on meanwhile
        storage.sync()
        storage.compact(6, b"state at 6", written=True)
        storage.sync()
        assert storage.snapshot() == (SnapshotMeta(6, 1), b"state at 6")
    with DurableStorage.open(directory, logger=QUIET) as storage:
        assert storage.snapshot() == (SnapshotMeta(6, 1), b"state at 6")
        assert storage.first_index() == 7 and storage.last_index() == 12
        assert [e.index for e in storage.entries(7, 13)] == list(range(7, 13))


def test_compact_refuses_a_file_that_was_not_written(tmp_path: Path) -> None:
    with DurableStorage.open(str(tmp_path / "n1"), logger=QUIET) as storage:
        storage.append(ents(1, 5))
        storage.sync()
        with pytest.raises(InvariantError, match="was to be written"):
            storage.compact(3, b"x", written=True)


def _workload(fs: CrashFS, acked: list[int], file_fsync: bool = True) -> None:
    """Append and sync, write the snapshot file, go on appending, compact, append again."""
    storage = DurableStorage.open(DIRECTORY, segment_bytes=200, logger=QUIET, fs=fs)
    try:
        storage.set_hard_state(HardState(1, "n1", 0))
        storage.append(ents(1, 11))
        storage.sync()
        acked.extend(range(1, 11))
        write_snapshot_file(fs, DIRECTORY, SnapshotMeta(6, 1), b"state at 6", file_fsync)
        storage.append(ents(11, 14))
        storage.sync()
        acked.extend(range(11, 14))
        storage.compact(6, b"state at 6", written=True)
        storage.append(ents(14, 16))
        storage.sync()
        acked.extend(range(14, 16))
    finally:
        storage.close()


def violations(mode: str, file_fsync: bool = True) -> list[str]:
    """Returns: what is wrong after a crash at each point of the workload (nothing, if all is well)."""
    fs = CrashFS()
    _workload(fs, [], file_fsync)
    total = fs.mutations
    found: list[str] = []
    expected = {e.index: e for e in ents(1, 16)}
    for point in range(total + 1):
        fs = CrashFS()
        acked: list[int] = []
        fs.crash_after(point)
        try:
            _workload(fs, acked, file_fsync)
        except SimulatedCrash:
            pass
        fs.crash(torn=random.Random(point) if mode == "torn" else None)
        try:
            storage = DurableStorage.open(DIRECTORY, segment_bytes=200, logger=QUIET, fs=fs)
        except Exception as exc:  # noqa: BLE001 - a refusal to start is a violation like any other
            found.append(f"point {point}: reopen refused: {exc}")
            continue
        with storage:
            meta, data = storage.snapshot()
            if meta not in (SnapshotMeta(0, 0), SnapshotMeta(6, 1)) or (meta.index and data != b"state at 6"):
                found.append(f"point {point}: snapshot {meta}")
                continue
            first, last = storage.first_index(), storage.last_index()
            held = {e.index: e for e in storage.entries(first, last + 1)} if last >= first else {}
            lost = [i for i in acked if i > meta.index and held.get(i) != expected[i]]
            if lost:
                found.append(f"point {point}: acknowledged entries {lost} lost (snapshot at {meta.index})")
    return found


@pytest.mark.parametrize("mode", ["strict", "torn"])
def test_every_crash_point_recovers_every_acknowledged_entry(mode: str) -> None:
    assert violations(mode) == []


def test_the_check_fails_when_the_snapshot_file_is_not_fsynced() -> None:
    """Teeth: compaction unlinks segments the snapshot file covers; a file not yet durable then
    leaves a gap a crash exposes."""
    assert violations("torn", file_fsync=False)


def test_segments_left_for_later_are_removed_by_recovery_if_a_crash_comes_first(tmp_path: Path) -> None:
    directory = tmp_path / "n1"
    with DurableStorage.open(str(directory), segment_bytes=200, logger=QUIET) as storage:
        storage.append(ents(1, 30))
        storage.sync()
        write_snapshot_file(OS, str(directory), SnapshotMeta(20, 1), b"state at 20", True)
        later: list[str] = []
        storage.compact(20, b"state at 20", written=True, unlink_later=later)
        assert later and all(Path(p).exists() for p in later)  # still there: the caller unlinks them
        assert storage.first_index() == 21
    # the caller never got to it (a crash, a stop): recovery removes what the snapshot covers
    with DurableStorage.open(str(directory), segment_bytes=200, logger=QUIET) as storage:
        assert not any(Path(p).exists() for p in later)
        assert storage.first_index() == 21 and storage.last_index() == 29
        assert [e.index for e in storage.entries(21, 30)] == list(range(21, 30))
