"""Disk trouble: a refused write raises StorageFailure, then every write fails fast and reads still work."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from durable_helpers import ents, read_all

from wiber.errors import StorageError
from wiber.raft.messages import HardState, SnapshotMeta
from wiber.storage import DurableStorage, StorageFailure


def _every_write_fails_fast(st: DurableStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Assert that each writer call raises StorageFailure without touching the disk."""
    def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a failed storage must not touch the disk")

    with monkeypatch.context() as m:
        for name in ("pwrite", "write", "fsync", "open", "ftruncate", "unlink", "replace"):
            m.setattr(os, name, no_io)
        last = st.last_index()
        writes: list[Callable[[], None]] = [
            lambda: st.append(ents(last + 1, last + 2)),
            st.sync,
            lambda: st.set_hard_state(HardState(99, "n9", 0)),
            lambda: st.compact(last, b"x"),
            lambda: st.apply_snapshot(SnapshotMeta(last + 10, 99), b"x"),
        ]
        for write in writes:
            with pytest.raises(StorageFailure, match="refuses writes since an earlier failure"):
                write()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted for the test (root only), unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_storage_for_real(tiny_tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = str(tiny_tmpfs / "n1")
    st = DurableStorage.open(directory)
    st.set_hard_state(HardState(1, "n1", 0))
    acknowledged = 0
    with pytest.raises(StorageFailure) as info:
        for batch in range(1000):
            lo = st.last_index() + 1
            st.append(ents(lo, lo + 10, size=1000))
            st.sync()
            acknowledged = st.last_index()
    err = info.value
    assert isinstance(err, StorageError) and err.code == "STORAGE"
    assert err.errno == errno.ENOSPC and "No space left on device (ENOSPC)" in str(err)
    assert st.failed and acknowledged > 100
    # reads keep working from memory, and show exactly what was written before the failure
    assert st.last_index() == acknowledged
    assert st.entries(1, acknowledged + 1) == ents(1, acknowledged + 1, size=1000)
    _every_write_fails_fast(st, monkeypatch)
    assert st.last_index() == acknowledged
    st.close()                                            # no sync attempted: already failed
    # restarting on the still-full disk recovers every acknowledged entry (the torn tail is cut)
    with DurableStorage.open(directory) as again:
        assert again.last_index() >= acknowledged
        assert again.entries(1, acknowledged + 1) == ents(1, acknowledged + 1, size=1000)
        assert again.initial_state()[0].term == 1


def test_fsync_eio_fails_the_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 11))
    st.sync()
    expected = read_all(st)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    st.append(ents(11, 21))                               # written, never durable
    with pytest.raises(StorageFailure) as info:
        st.sync()
    assert info.value.errno == errno.EIO
    assert "syncing the log failed: Input/output error (EIO)" in str(info.value)
    assert str(tmp_path) in str(info.value)
    assert st.failed
    monkeypatch.undo()                                    # even a working fsync is not retried
    _every_write_fails_fast(st, monkeypatch)
    assert read_all(st)["entries"][:10] == expected["entries"]
    assert st.last_index() == 20
    st.close()


@pytest.mark.parametrize("operation", ["set_hard_state", "compact", "apply_snapshot", "truncate", "roll",
                                       "close"])
def test_an_fsync_failure_in_any_write_path_fails_the_storage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str) -> None:
    st = DurableStorage.open(str(tmp_path), segment_bytes=10 * 35)
    st.append(ents(1, 11))
    st.sync()
    if operation == "close":
        st.append(ents(11, 12))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    calls: dict[str, Callable[[], None]] = {
        "set_hard_state": lambda: st.set_hard_state(HardState(2, "n1", 3)),
        "compact": lambda: st.compact(5, b"state"),
        "apply_snapshot": lambda: st.apply_snapshot(SnapshotMeta(30, 2), b"state"),
        "truncate": lambda: st.append(ents(5, 7, term=2)),
        "roll": lambda: st.append(ents(11, 12)),
        "close": st.close,
    }
    with pytest.raises(StorageFailure, match="EIO"):
        calls[operation]()
    assert st.failed
    monkeypatch.undo()
    if operation != "close":
        _every_write_fails_fast(st, monkeypatch)
    assert st.last_index() >= 10 and st.term(10) == 1
    st.close()


def test_a_write_error_fails_the_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = DurableStorage.open(str(tmp_path))
    st.append(ents(1, 4))

    def enospc(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", enospc)
    with pytest.raises(StorageFailure, match="appending entries 4..5 failed: No space left on device"):
        st.append(ents(4, 6))
    assert st.last_index() == 3
    st.close()
