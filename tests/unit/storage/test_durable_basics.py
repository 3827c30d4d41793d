"""DurableStorage's writer API and reopen: round trip, truncation, segments, hard state, snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from durable_helpers import ents, read_all, record_size, segment_files, snapshot_files

from wiber.errors import InvariantError, NodeStartError
from wiber.raft.messages import Entry, EntryKind, HardState, SnapshotMeta
from wiber.raft.storage import Compacted, EntryUnavailable, MemoryStorage
from wiber.storage import DirectoryLocked, DurableStorage
from wiber.storage.format import (
    FormatError,
    decode_hard_state,
    decode_snapshot,
    encode_hard_state,
    encode_snapshot_header,
    segment_name,
    snapshot_name,
)


def reopen(st: DurableStorage, **kw: object) -> DurableStorage:
    st.close()
    return DurableStorage.open(st.directory, **kw)  # type: ignore[arg-type]


def test_round_trip_append_sync_reopen(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path / "n1"))
    assert st.initial_state() == (HardState(0, None, 0), SnapshotMeta(0, 0))
    assert (st.first_index(), st.last_index(), st.term(0)) == (1, 0, 0)
    st.append(ents(1, 40, term=1))
    st.append(ents(40, 101, term=2, size=300) + [Entry(101, 3, EntryKind.NOOP, b"")])
    st.sync()
    before = read_all(st)
    st = reopen(st)
    assert read_all(st) == before
    assert st.term(39) == 1 and st.term(40) == 2 and st.term(101) == 3
    assert st.entries(101, 102) == [Entry(101, 3, EntryKind.NOOP, b"")]
    assert st.entries(7, 8)[0].kind is EntryKind.NOOP
    assert segment_files(tmp_path / "n1") == [segment_name(1)]
    st.close()


def test_reads_raise_exactly_as_memory_storage(tmp_path: Path) -> None:
    mem = MemoryStorage()
    st = DurableStorage.open(str(tmp_path), fsync=False)
    for s in (mem, st):
        s.append(ents(1, 21))
        s.compact(5, b"snap")
    calls = [("term", (4,)), ("term", (22,)), ("term", (5,)), ("term", (20,)),
             ("entries", (5, 7)), ("entries", (6, 22)), ("entries", (9, 8)), ("entries", (6, 6)),
             ("entries", (6, 21, 1)), ("entries", (6, 21, 100)), ("entries", (6, 21, 0))]
    for name, args in calls:
        outcomes = []
        for s in (mem, st):
            try:
                outcomes.append(("ok", getattr(s, name)(*args)))
            except Exception as exc:  # noqa: BLE001 - comparing which exception each raises
                outcomes.append(("raise", type(exc)))
        assert outcomes[0] == outcomes[1], (name, args)
    for s in (mem, st):
        with pytest.raises(Compacted):
            s.compact(5, b"")
        with pytest.raises(EntryUnavailable):
            s.compact(21, b"")
        with pytest.raises(InvariantError):
            s.append(ents(22, 23))
        with pytest.raises(InvariantError):
            s.apply_snapshot(SnapshotMeta(4, 1), b"")
    st.close()


def test_group_commit_is_one_fsync_for_a_thousand_entries(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 2))
    st.sync()                                     # the segment exists and its name is durable
    count, written = st.sync_count, st.bytes_written
    st.append(ents(2, 1002, size=100))
    assert st.sync_count == count                 # append alone never fsyncs
    st.sync()
    assert st.sync_count == count + 1
    assert st.bytes_written - written == 1000 * record_size(100)
    st.sync()                                     # nothing new: no fsync at all
    assert st.sync_count == count + 1
    st.close()


def test_sync_fsyncs_the_directory_after_creating_a_segment(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    count = st.sync_count
    st.append(ents(1, 3))
    st.sync()
    assert st.sync_count == count + 2             # the segment file, then the directory
    st.close()


def test_truncating_a_suffix_then_reopen(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 21, term=1))
    st.sync()
    st.append(ents(15, 18, term=2))               # a new leader's entries replace 15..20
    assert st.last_index() == 17
    assert [st.term(i) for i in (14, 15, 17)] == [1, 2, 2]
    st.sync()
    expected = read_all(st)
    st = reopen(st)
    assert read_all(st) == expected
    assert os.path.getsize(tmp_path / segment_name(1)) == 17 * record_size()
    st.close()


def test_truncation_is_durable_before_append_returns(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 11))
    st.sync()
    count = st.sync_count
    st.append(ents(5, 6, term=2))
    assert st.sync_count == count + 1             # ftruncate + fsync, before the new record is written
    st.close()


@pytest.mark.parametrize("cut", [8, 9, 10, 13, 2])
def test_truncation_across_segment_boundaries(tmp_path: Path, cut: int) -> None:
    seg_bytes = 3 * record_size()                 # three records per segment: 1-3, 4-6, 7-9, ...
    st = DurableStorage.open(str(tmp_path), segment_bytes=seg_bytes)
    st.append(ents(1, 17, term=1))
    st.sync()
    assert segment_files(tmp_path) == [segment_name(i) for i in (1, 4, 7, 10, 13, 16)]
    st.append(ents(cut, cut + 5, term=2))
    st.sync()
    assert st.last_index() == cut + 4
    assert [st.term(i) for i in range(1, cut + 5)] == [1] * (cut - 1) + [2] * 5
    expected = read_all(st)
    st = reopen(st, segment_bytes=seg_bytes)
    assert read_all(st) == expected
    firsts = [int(n[4:24]) for n in segment_files(tmp_path)]
    assert firsts == sorted(firsts) and all(f <= cut + 4 for f in firsts)
    st.close()


def test_segments_roll_at_segment_bytes(tmp_path: Path) -> None:
    seg_bytes = 100                               # 35-byte records: two per segment
    st = DurableStorage.open(str(tmp_path), segment_bytes=seg_bytes)
    for lo in range(1, 31, 4):
        st.append(ents(lo, lo + 4))
    st.sync()
    names = segment_files(tmp_path)
    assert names == [segment_name(i) for i in range(1, 33, 2)]
    assert all(os.path.getsize(tmp_path / n) <= seg_bytes for n in names)
    expected = read_all(st)
    st = reopen(st, segment_bytes=seg_bytes)
    assert read_all(st) == expected
    st.append(ents(33, 36))                       # appends continue in the reopened last segment
    st.sync()
    assert segment_files(tmp_path)[-1] == segment_name(35)
    st.close()


def test_a_record_larger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path), segment_bytes=1)
    st.append(ents(1, 5, size=50))
    st.sync()
    assert segment_files(tmp_path) == [segment_name(i) for i in range(1, 5)]
    st = reopen(st, segment_bytes=1)
    assert st.last_index() == 4
    st.close()


def test_hard_state_atomic_replace_and_reopen(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 11))
    st.set_hard_state(HardState(1, "n1", 0))
    assert (tmp_path / "hardstate").exists() and not (tmp_path / "hardstate.tmp").exists()
    count, written = st.sync_count, st.bytes_written
    st.set_hard_state(HardState(1, "n1", 7))      # only commit changed: memory only
    assert (st.sync_count, st.bytes_written) == (count, written)
    assert st.initial_state()[0] == HardState(1, "n1", 7)
    assert decode_hard_state((tmp_path / "hardstate").read_bytes()) == HardState(1, "n1", 0)
    st.set_hard_state(HardState(2, None, 8))      # term changed: written along with commit
    assert decode_hard_state((tmp_path / "hardstate").read_bytes()) == HardState(2, None, 8)
    st.set_hard_state(HardState(2, "n3", 9))      # vote changed
    st = reopen(st)
    assert st.initial_state()[0] == HardState(2, "n3", 9)
    st.close()


def test_hard_state_write_syncs_pending_log_first(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 2))
    st.sync()
    st.append(ents(2, 10))
    count = st.sync_count
    st.set_hard_state(HardState(3, "n2", 9))      # log fsync, temp file fsync, directory fsync
    assert st.sync_count == count + 3
    st.sync()                                     # nothing left to do
    assert st.sync_count == count + 3
    st.close()


def test_commit_is_clamped_into_the_log_on_reopen(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path), fsync=False)
    st.append(ents(1, 11))
    st.set_hard_state(HardState(1, None, 10))
    st.append(ents(6, 8, term=2))                 # (the core never does this below commit)
    st = reopen(st, fsync=False)
    assert st.initial_state()[0] == HardState(1, None, 7)
    st.apply_snapshot(SnapshotMeta(50, 2), b"s")
    st = reopen(st, fsync=False)
    assert st.initial_state()[0] == HardState(1, None, 50)
    st.close()


def test_compact_then_restart_from_snapshot_and_tail(tmp_path: Path) -> None:
    seg_bytes = 4 * record_size()
    st = DurableStorage.open(str(tmp_path), segment_bytes=seg_bytes)
    st.append(ents(1, 21, term=1) + ents(21, 51, term=2))
    st.sync()
    st.compact(30, b"state at 30")
    assert snapshot_files(tmp_path) == [snapshot_name(SnapshotMeta(30, 2))]
    assert segment_files(tmp_path)[0] == segment_name(29)   # 29..32 holds 31 and 32: kept
    assert (st.first_index(), st.last_index(), st.term(30), st.last_snapshot_index) == (31, 50, 2, 30)
    expected = read_all(st)
    st = reopen(st, segment_bytes=seg_bytes)
    assert read_all(st) == expected
    assert st.snapshot() == (SnapshotMeta(30, 2), b"state at 30")
    assert st.initial_state()[1] == SnapshotMeta(30, 2)
    with pytest.raises(Compacted):
        st.term(29)
    with pytest.raises(Compacted):
        st.entries(30, 31)
    st.compact(45, b"state at 45")                # the older snapshot file goes
    assert snapshot_files(tmp_path) == [snapshot_name(SnapshotMeta(45, 2))]
    st.append(ents(51, 53, term=3))
    st.sync()
    expected = read_all(st)
    st = reopen(st, segment_bytes=seg_bytes)
    assert read_all(st) == expected
    st.close()


def test_compacting_everything_removes_every_segment(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 11))
    st.compact(10, b"all")
    assert segment_files(tmp_path) == []
    assert (st.first_index(), st.last_index()) == (11, 10)
    st.append(ents(11, 13, term=2))
    st.sync()
    assert segment_files(tmp_path) == [segment_name(11)]
    expected = read_all(st)
    st = reopen(st)
    assert read_all(st) == expected
    st.close()


def test_apply_snapshot_then_append_then_reopen(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path), segment_bytes=3 * record_size())
    st.append(ents(1, 21, term=1))
    st.sync()
    st.apply_snapshot(SnapshotMeta(100, 5), b"leader state")
    assert segment_files(tmp_path) == []
    assert (st.first_index(), st.last_index(), st.term(100)) == (101, 100, 5)
    st.append(ents(95, 111, term=5))              # entries the snapshot covers are skipped
    st.sync()
    assert segment_files(tmp_path)[0] == segment_name(101)
    expected = read_all(st)
    st = reopen(st)
    assert read_all(st) == expected
    assert st.snapshot() == (SnapshotMeta(100, 5), b"leader state")
    with pytest.raises(InvariantError):
        st.apply_snapshot(SnapshotMeta(99, 5), b"")
    st.apply_snapshot(SnapshotMeta(100, 5), b"same index again")
    assert snapshot_files(tmp_path) == [snapshot_name(SnapshotMeta(100, 5))]
    st = reopen(st)
    assert st.snapshot() == (SnapshotMeta(100, 5), b"same index again")
    assert st.last_index() == 100
    st.close()


def test_append_refuses_gaps_and_non_contiguous_batches(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path), fsync=False)
    st.append(ents(1, 4))
    with pytest.raises(InvariantError):
        st.append(ents(5, 6))
    with pytest.raises(InvariantError):
        st.append([Entry(4, 1, EntryKind.NORMAL, b""), Entry(6, 1, EntryKind.NORMAL, b"")])
    with pytest.raises(InvariantError):
        st.append([Entry(4, 1, EntryKind.NORMAL, b""), Entry(4, 1, EntryKind.NORMAL, b""),
                   Entry(6, 1, EntryKind.NORMAL, b"")])
    assert not st.failed
    st.append([])
    assert st.last_index() == 3
    st.close()


def test_one_open_storage_per_directory(tmp_path: Path) -> None:
    st = DurableStorage.open(str(tmp_path))
    with pytest.raises(DirectoryLocked):
        DurableStorage.open(str(tmp_path))
    st.close()
    st.close()                                    # idempotent
    with pytest.raises(InvariantError):
        st.append(ents(1, 2))
    with DurableStorage.open(str(tmp_path)) as again:
        assert again.last_index() == 0


def test_open_creates_nested_directories(tmp_path: Path) -> None:
    with DurableStorage.open(str(tmp_path / "data" / "n1")) as st:
        st.append(ents(1, 2))
    assert (tmp_path / "data" / "n1" / segment_name(1)).exists()


def test_format_round_trips_and_refusals() -> None:
    for hs in (HardState(0, None, 0), HardState(7, "n1", 12), HardState(2**63 - 1, "", 5), HardState(1, "ü", 0)):
        assert decode_hard_state(encode_hard_state(hs)) == hs
    raw = bytearray(encode_hard_state(HardState(3, "n2", 4)))
    raw[8] ^= 1
    with pytest.raises(FormatError, match="checksum"):
        decode_hard_state(bytes(raw))
    with pytest.raises(FormatError):
        decode_hard_state(b"WBHS")
    meta = SnapshotMeta(9, 2)
    blob = encode_snapshot_header(meta, b"data") + b"data"
    assert decode_snapshot(blob, meta) == b"data"
    with pytest.raises(FormatError, match="file name"):
        decode_snapshot(blob, SnapshotMeta(9, 3))
    with pytest.raises(FormatError, match="bytes"):
        decode_snapshot(blob + b"x", meta)
    with pytest.raises(FormatError, match="checksum"):
        decode_snapshot(blob[:-1] + b"A", meta)


def test_an_unusable_directory_is_a_node_start_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    with pytest.raises(NodeStartError, match="cannot open the data directory"):
        DurableStorage.open(str(tmp_path / "file"))
