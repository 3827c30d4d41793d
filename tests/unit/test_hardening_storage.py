"""Hardening of the data directory (issue 15): no absurd term reaches the disk or crash-loops a node
at start, and what a node keeps is readable by its own user only (directories 0700, files 0600)."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from wiber.broker import Broker, BrokerSettings
from wiber.broker.checkpoint import take_delta
from wiber.broker.entry import PubOp
from wiber.raft.messages import MAX_NUMBER, Entry, EntryKind, HardState
from wiber.storage import CorruptLog, DurableStorage, StorageFailure
from wiber.storage.format import HARD_STATE_NAME
from wiber.storage.fs import OS
from wiber.storage.topics import TopicStore
from wiber.storage.topics.checkpoint import export


def test_a_term_over_2_63_is_never_written(tmp_path: Path) -> None:
    """The core never asks for it (it does not campaign past 2**63 - 1); if it did, the storage refuses
    (a storage failure: the node stops taking part) rather than write a term the codec refuses."""
    with DurableStorage.open(str(tmp_path / "n1")) as st:
        st.set_hard_state(HardState(MAX_NUMBER, "n2", 0))
        with pytest.raises(StorageFailure, match="2\\*\\*63"):
            st.set_hard_state(HardState(MAX_NUMBER + 1, None, 0))
    with DurableStorage.open(str(tmp_path / "n1")) as st:
        assert st.initial_state()[0].term == MAX_NUMBER


def test_an_absurd_persisted_term_is_a_clear_error_at_start(tmp_path: Path) -> None:
    """A hard state file holding term 2**64 - 1 (as an earlier version could write after a forged
    heartbeat) refuses the start with CorruptLog naming the file, not a crash at the first campaign."""
    directory = tmp_path / "n1"
    with DurableStorage.open(str(directory)):
        pass
    body = struct.pack("<4sBQQBH", b"WBHS", 1, 2**64 - 1, 0, 0, 0)
    (directory / HARD_STATE_NAME).write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(CorruptLog, match="over 2\\*\\*63") as info:
        DurableStorage.open(str(directory))
    assert HARD_STATE_NAME in str(info.value)


def _modes(root: Path) -> dict[str, int]:
    """Returns: permission bits of every directory and file under `root` (and of `root`)."""
    out = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path)] = stat.S_IMODE(path.lstat().st_mode)
    return out


def test_data_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    """The Raft log, its snapshot and hard state, the topic store and its index, and an export for a
    follower, made under a 022 umask: no other user may read them (nor list a directory)."""
    old = os.umask(0o022)
    try:
        root = tmp_path / "data"
        node_dir = root / "n1"
        with DurableStorage.open(str(node_dir)) as st:
            st.append([Entry(1, 1, EntryKind.NORMAL, b"x"), Entry(2, 1, EntryKind.NORMAL, b"y")])
            st.set_hard_state(HardState(1, "n1", 2))
            st.sync()
            st.compact(1, b"descriptor")
            store = TopicStore.open(str(node_dir / "topics"))
            try:
                broker = Broker(BrokerSettings(), store)
                broker.apply_ops(1, 1.0, [PubOp("t", (b"m",), False)])
                job = store.prepare_checkpoint(1, take_delta(broker))
                job.run()
                store.finish_checkpoint(job)
                assert job.record is not None
                export(OS, store.directory, os.path.join(store.directory, "index.db"), job.record,
                       str(node_dir / "export" / "1"))
            finally:
                store.close()
    finally:
        os.umask(old)
    modes = _modes(root)
    assert any(p.endswith("index.db") for p in modes) and any("export" in p for p in modes)
    wrong = {p: oct(m) for p, m in modes.items()
             if m != (0o700 if os.path.isdir(p) else 0o600)}
    assert not wrong, wrong


def test_an_older_node_directory_is_closed_at_open(tmp_path: Path) -> None:
    """A node directory an older version made 0755 is 0700 once the storage opens it."""
    directory = tmp_path / "n1"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    with DurableStorage.open(str(directory)):
        pass
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
