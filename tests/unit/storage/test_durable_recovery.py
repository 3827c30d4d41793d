"""Recovery: a torn last write is cut off (and logged); anything else that is damaged is refused."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from durable_helpers import dir_bytes, ents, read_all, record_size, segment_files, snapshot_files

from wiber.errors import NodeStartError, WiberError
from wiber.raft.messages import Entry, EntryKind, HardState, SnapshotMeta
from wiber.storage import CorruptLog, DurableStorage
from wiber.storage.format import encode_record, segment_name, snapshot_name

SEG = 4 * record_size()          # four records per segment: 1-4, 5-8, 9-12


def build(directory: Path, last: int = 10, **kw: object) -> dict[str, object]:
    """Write entries 1..last (segments of four records), sync, close. Returns: what reads showed."""
    kw.setdefault("segment_bytes", SEG)
    with DurableStorage.open(str(directory), fsync=False, **kw) as st:  # type: ignore[arg-type]
        st.append(ents(1, last + 1))
        return read_all(st)


def flip(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x40
    path.write_bytes(bytes(raw))


def refused(directory: Path) -> CorruptLog:
    """Open `directory`, expecting CorruptLog; check the refusal changed nothing on disk."""
    before = dir_bytes(directory)
    with pytest.raises(CorruptLog) as info:
        DurableStorage.open(str(directory), fsync=False, segment_bytes=SEG)
    after = dir_bytes(directory)
    after.pop("LOCK", None)
    before.pop("LOCK", None)
    assert after == before, "a refused open must leave the directory as it found it"
    err = info.value
    assert isinstance(err, NodeStartError) and isinstance(err, WiberError)
    assert "Move the data directory" in str(err) and "docs/operations.md" in str(err)
    return err


# -- torn writes -----------------------------------------------------------------------------


def test_a_torn_write_at_every_byte_of_the_last_record_recovers_the_prefix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = tmp_path / "base"
    build(base, last=9)                               # the last segment, log-9, holds one record
    with DurableStorage.open(str(base), fsync=False, segment_bytes=SEG) as st:
        expected = read_all(st)
        expected_prefix = {**expected, "last": 8, "terms": expected["terms"][:-1],
                           "entries": expected["entries"][:-1]}
    name = segment_name(9)
    size = os.path.getsize(base / name)
    assert size == record_size()
    for cut in range(size + 1):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(base, work)
        os.truncate(work / name, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="wiber.storage"):
            st = DurableStorage.open(str(work), fsync=False, segment_bytes=SEG)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if cut == size:
            assert read_all(st) == expected and warnings == []
        else:
            assert read_all(st) == expected_prefix, cut
            if cut == 0:
                assert warnings == []                 # an empty file is not a torn record
            else:
                assert len(warnings) == 1, warnings
                assert f"cutting {cut} bytes" in warnings[0]
                assert str(work / name) in warnings[0] and "at byte 0" in warnings[0]
            # the cut is durable and appending continues from the prefix
            st.append(ents(9, 11, term=2))
            assert st.last_index() == 10
        st.close()
        shutil.rmtree(work)


def test_a_torn_batch_in_the_middle_of_the_last_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build(tmp_path, last=7)                           # log-5 holds 5, 6, 7
    path = tmp_path / segment_name(5)
    os.truncate(path, 2 * record_size() - 3)          # 6 is torn, 7 is gone
    with caplog.at_level(logging.WARNING, logger="wiber.storage"):
        st = DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG)
    assert st.last_index() == 5
    assert f"cutting {record_size() - 3} bytes" in caplog.text and f"at byte {record_size()}" in caplog.text
    assert os.path.getsize(path) == record_size()
    st.close()


def test_a_complete_last_record_with_a_bad_checksum_is_cut(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    build(tmp_path, last=7)
    path = tmp_path / segment_name(5)
    flip(path, os.path.getsize(path) - 2)             # in the data of record 7, nothing after it
    with caplog.at_level(logging.WARNING, logger="wiber.storage"):
        st = DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG)
    assert st.last_index() == 6
    assert "checksum" in caplog.text and f"cutting {record_size()} bytes" in caplog.text
    st.close()


@pytest.mark.parametrize("tail", [b"\0" * 4096, b"\0" * 3, b"\xff" * 100, os.urandom(5000)],
                         ids=["zero-pages", "zero-bytes", "ff", "random"])
def test_garbage_after_the_last_record_is_a_torn_write(tmp_path: Path, tail: bytes) -> None:
    expected = build(tmp_path, last=7)
    path = tmp_path / segment_name(5)
    with open(path, "ab") as f:
        f.write(tail)
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        assert read_all(st) == expected
    assert os.path.getsize(path) == 3 * record_size()


def test_an_empty_last_segment_is_removed(tmp_path: Path) -> None:
    expected = build(tmp_path, last=8)
    (tmp_path / segment_name(9)).write_bytes(b"")     # a crash just after creating the next segment
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        assert read_all(st) == expected
    assert segment_files(tmp_path) == [segment_name(1), segment_name(5)]


# -- refusals --------------------------------------------------------------------------------


def test_a_flipped_byte_in_the_middle_of_the_log_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    build(base, last=7)
    name = segment_name(5)
    start = record_size()                             # record 6, followed by record 7
    for pos in range(start, start + record_size()):
        work = tmp_path / f"flip{pos}"
        shutil.copytree(base, work)
        flip(work / name, pos)
        err = refused(work)
        assert err.path == str(work / name) and err.position == start, (pos, str(err))
        assert f"{work / name} at byte {start}" in str(err)
        shutil.rmtree(work)


def test_a_bad_record_in_a_segment_that_is_not_the_last_is_refused(tmp_path: Path) -> None:
    build(tmp_path, last=10)
    path = tmp_path / segment_name(1)
    os.truncate(path, os.path.getsize(path) - 1)      # record 4 torn, but log-5 follows
    err = refused(tmp_path)
    assert err.path == str(path) and err.position == 3 * record_size()
    assert "not the last" in str(err)


def test_a_missing_segment_is_an_index_gap(tmp_path: Path) -> None:
    build(tmp_path, last=10)
    os.unlink(tmp_path / segment_name(5))
    err = refused(tmp_path)
    assert err.path == str(tmp_path / segment_name(9)) and "index gap" in str(err)
    assert "previous one ends at 4" in str(err)


def test_a_record_with_the_wrong_index_is_refused(tmp_path: Path) -> None:
    build(tmp_path, last=6)
    with open(tmp_path / segment_name(5), "ab") as f:  # a valid record, but 8 where 7 belongs
        f.write(encode_record(Entry(8, 1, EntryKind.NORMAL, b"x")))
    err = refused(tmp_path)
    assert err.position == 2 * record_size() and "index 8 where 7 was expected" in str(err)


def test_a_log_that_does_not_start_at_one_is_refused(tmp_path: Path) -> None:
    build(tmp_path, last=10)
    os.unlink(tmp_path / segment_name(1))
    err = refused(tmp_path)
    assert err.path == str(tmp_path / segment_name(5)) and "should start at 1" in str(err)


def test_a_segment_whose_first_record_disagrees_with_its_name_is_refused(tmp_path: Path) -> None:
    build(tmp_path, last=8)
    os.rename(tmp_path / segment_name(1), tmp_path / segment_name(0))
    err = refused(tmp_path)
    assert err.path == str(tmp_path / segment_name(0)) and err.position == 0
    assert "index 1 where 0 was expected" in str(err)


def test_an_empty_last_segment_after_a_gap_is_refused(tmp_path: Path) -> None:
    build(tmp_path, last=8)
    (tmp_path / segment_name(12)).write_bytes(b"")
    assert "index gap" in str(refused(tmp_path))


def test_a_corrupt_hard_state_is_refused(tmp_path: Path) -> None:
    with DurableStorage.open(str(tmp_path), fsync=False) as st:
        st.set_hard_state(HardState(4, "n2", 0))
    flip(tmp_path / "hardstate", 6)
    err = refused(tmp_path)
    assert err.path == str(tmp_path / "hardstate")


# -- snapshots and interrupted operations ------------------------------------------------------


def test_a_corrupt_snapshot_whose_log_prefix_is_gone_is_refused(tmp_path: Path) -> None:
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        st.append(ents(1, 21))
        st.compact(12, b"state at 12")
    assert segment_files(tmp_path)[0] == segment_name(13)
    snap = tmp_path / snapshot_name(SnapshotMeta(12, 1))
    flip(snap, os.path.getsize(snap) - 1)
    err = refused(tmp_path)
    assert err.path == str(snap) and "checksum" in str(err) and "log starts at index 13" in str(err)


def test_a_corrupt_snapshot_after_the_log_was_replaced_is_refused(tmp_path: Path) -> None:
    with DurableStorage.open(str(tmp_path), fsync=False) as st:
        st.append(ents(1, 5))
        st.apply_snapshot(SnapshotMeta(50, 3), b"from the leader")
    snap = tmp_path / snapshot_name(SnapshotMeta(50, 3))
    flip(snap, 40)
    err = refused(tmp_path)                           # an empty log would silently forget 1..50
    assert err.path == str(snap) and "up to index 50" in str(err)


def test_a_corrupt_snapshot_still_covered_by_the_log_is_set_aside(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with DurableStorage.open(str(tmp_path), fsync=False) as st:   # one big segment: nothing is removed
        st.append(ents(1, 31))
        st.compact(10, b"at 10")
        older = (tmp_path / snapshot_name(SnapshotMeta(10, 1))).read_bytes()
        st.compact(20, b"at 20")
    (tmp_path / snapshot_name(SnapshotMeta(10, 1))).write_bytes(older)
    newer = tmp_path / snapshot_name(SnapshotMeta(20, 1))
    flip(newer, 35)
    with caplog.at_level(logging.WARNING, logger="wiber.storage"):
        st = DurableStorage.open(str(tmp_path), fsync=False)
    assert st.snapshot() == (SnapshotMeta(10, 1), b"at 10")
    assert (st.first_index(), st.last_index()) == (11, 30)
    assert "corrupt" in caplog.text and str(newer) in caplog.text
    assert snapshot_files(tmp_path) == [snapshot_name(SnapshotMeta(10, 1))]
    assert (tmp_path / (snapshot_name(SnapshotMeta(20, 1)) + ".corrupt")).exists()
    st.close()


def test_leftover_temp_files_are_ignored(tmp_path: Path) -> None:
    with DurableStorage.open(str(tmp_path), fsync=False) as st:
        st.append(ents(1, 11))
        st.compact(5, b"five")
        st.set_hard_state(HardState(2, "n1", 5))
        expected = read_all(st)
    (tmp_path / "hardstate.tmp").write_bytes(b"half a hard st")
    (tmp_path / (snapshot_name(SnapshotMeta(9, 1)) + ".tmp")).write_bytes(b"WBSN\x01 torn")
    with DurableStorage.open(str(tmp_path), fsync=False) as st:
        assert read_all(st) == expected
        assert st.initial_state()[0] == HardState(2, "n1", 5)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_an_interrupted_compaction_is_finished(tmp_path: Path) -> None:
    build(tmp_path, last=20)
    saved = {n: (tmp_path / n).read_bytes() for n in segment_files(tmp_path)}
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        st.compact(14, b"fourteen")
        expected = read_all(st)
    for name, raw in saved.items():                   # the segment removals did not survive the crash
        (tmp_path / name).write_bytes(raw)
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        assert read_all(st) == expected
    assert segment_files(tmp_path) == [segment_name(i) for i in (13, 17)]


def test_an_interrupted_snapshot_install_drops_a_log_that_does_not_continue_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build(tmp_path, last=20)
    saved = {n: (tmp_path / n).read_bytes() for n in segment_files(tmp_path)}
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        st.apply_snapshot(SnapshotMeta(10, 4), b"leader")   # term 4 at 10: the old log (term 1) conflicts
    for name, raw in saved.items():
        (tmp_path / name).write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="wiber.storage"):
        st = DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG)
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 4)
    assert "interrupted snapshot install" in caplog.text
    assert segment_files(tmp_path) == []
    st.close()


def test_an_interrupted_snapshot_install_keeps_a_log_that_continues_it(tmp_path: Path) -> None:
    expected = build(tmp_path, last=20)
    saved = {n: (tmp_path / n).read_bytes() for n in segment_files(tmp_path)}
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        st.apply_snapshot(SnapshotMeta(10, 1), b"leader")   # same term at 10: Log Matching holds
    for name, raw in saved.items():
        (tmp_path / name).write_bytes(raw)
    with DurableStorage.open(str(tmp_path), fsync=False, segment_bytes=SEG) as st:
        assert (st.first_index(), st.last_index()) == (11, 20)
        assert st.entries(11, 21) == expected["entries"][10:]  # type: ignore[index]
