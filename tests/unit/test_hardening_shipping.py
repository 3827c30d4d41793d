"""Hardening of snapshot transfers at the follower (issue 15): a manifest is taken only from the
leader at the current term and only when the disk has room for it, and staged files nobody sends
any more are removed."""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import msgpack

from wiber.node.shipping import ABANDON_S, STAGING_RESERVE_BYTES, Shipping
from wiber.storage.transfer import Abort, FileInfo, Manifest, ManifestFrame, decode_frame


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _shipping(tmp_path: Path, clock: Clock, free: int | None = None) -> Shipping:
    checkpoints = SimpleNamespace(data_dir=str(tmp_path))  # the follower side reads only its data_dir
    return Shipping("n2", ["n1", "n3"], checkpoints, clock, free_bytes=lambda path: free)  # type: ignore[arg-type]


def _manifest_frame(term: int, size: int = 10) -> bytes:
    data = b"x" * size
    files = (FileInfo("index.db", size, zlib.crc32(data)), FileInfo("empty", 0, 0))
    return ManifestFrame("n1", 9, Manifest(50, term, msgpack.packb(term), files)).encode()


def test_a_manifest_is_taken_from_the_leader_at_the_current_term_only(tmp_path: Path) -> None:
    shipping = _shipping(tmp_path, Clock())
    for frame, leader, term in ((_manifest_frame(3), "n3", 3), (_manifest_frame(4), "n1", 3),
                                (_manifest_frame(2), "n1", 3), (_manifest_frame(2**63 - 1), "n1", 3)):
        assert shipping.on_frame(frame, leader, term) == []
    assert shipping.refused == 4 and shipping.receiver.manifest is None
    assert shipping.on_frame(_manifest_frame(3), "n1", 3)  # the leader at its term: REQUESTs go out
    assert shipping.receiver.manifest is not None


def test_a_manifest_the_disk_cannot_take_is_refused_with_an_abort(tmp_path: Path) -> None:
    shipping = _shipping(tmp_path, Clock(), free=STAGING_RESERVE_BYTES + 5)
    [(peer, frame)] = shipping.on_frame(_manifest_frame(3, size=10), "n1", 3)
    assert peer == "n1" and isinstance(decode_frame(frame), Abort)
    assert shipping.receiver.manifest is None and not (tmp_path / "topics.staging").exists()


def test_staged_files_nobody_sends_any_more_are_removed(tmp_path: Path) -> None:
    clock = Clock()
    shipping = _shipping(tmp_path, clock)
    shipping.on_frame(_manifest_frame(3), "n1", 3)
    staging = tmp_path / "topics.staging"
    assert (staging / "empty").exists()
    clock.now += ABANDON_S - 1
    shipping.nudge()
    assert staging.exists()  # a quiet transfer is asked again, not dropped
    clock.now += 1
    shipping.nudge()
    assert not staging.exists() and shipping.receiver.manifest is None


def test_leftover_staged_files_from_before_a_restart_are_removed_when_nothing_comes(tmp_path: Path) -> None:
    (tmp_path / "topics.staging").mkdir()
    (tmp_path / "topics.staging" / "index.db").write_bytes(b"half a file")
    clock = Clock()
    shipping = _shipping(tmp_path, clock)
    clock.now += ABANDON_S
    shipping.nudge()
    assert not (tmp_path / "topics.staging").exists()


def _exported_checkpoint(tmp_path: Path, staging: Path) -> tuple[int, int]:
    """Lay a real checkpoint out in `staging` as a leader's export would be. Returns: (index, term)."""
    from wiber.broker import Broker, BrokerSettings, PubOp
    from wiber.broker.checkpoint import take_delta
    from wiber.storage.fs import OS
    from wiber.storage.topics import TopicStore
    from wiber.storage.topics.checkpoint import export

    store = TopicStore.open(str(tmp_path / "leader" / "topics"), segment_bytes=4096)
    try:
        broker = Broker(BrokerSettings(), store)
        for index in range(1, 40):
            broker.apply_ops(index, 1.0, [PubOp("t", (bytes(200),), False, "c", index)])
        job = store.prepare_checkpoint(2, take_delta(broker))
        job.run()
        store.finish_checkpoint(job)
        export(OS, store.directory, str(Path(store.directory) / "index.db"), job.record, str(staging))
    finally:
        store.close()
    return 39, 2


def test_a_staged_snapshot_is_checked_whole(cluster_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`Checkpoints.check_staged` passes a true checkpoint and names the problem, never raising, in a
    wrong one: another index, a row of the wrong type (SQLite takes any), a damaged sealed segment."""
    import sqlite3

    from wiber.broker import BrokerSettings
    from wiber.node.checkpoints import Checkpoints
    from wiber.raft.messages import SnapshotMeta
    from wiber.storage import DurableStorage

    config = cluster_factory(1, start=False).config
    staging = tmp_path / "staging"
    index, term = _exported_checkpoint(tmp_path, staging)
    storage = DurableStorage.open(config.node_data_dir("n1"))
    checkpoints = Checkpoints(config, "n1", storage, BrokerSettings())
    try:
        assert checkpoints.check_staged(str(staging), SnapshotMeta(index, term)) is None
        assert "not (40, 2)" in str(checkpoints.check_staged(str(staging), SnapshotMeta(40, 2)))
        segments = sorted(p for p in staging.iterdir() if p.name != "index.db")
        assert len(segments) > 1
        sealed = bytearray(segments[0].read_bytes())
        sealed[len(sealed) // 2] ^= 0xFF
        segments[0].write_bytes(bytes(sealed))
        assert checkpoints.check_staged(str(staging), SnapshotMeta(index, term)) is not None
        segments[0].write_bytes(bytes(sealed[: len(sealed) // 2]))
        assert checkpoints.check_staged(str(staging), SnapshotMeta(index, term)) is not None
        staging = tmp_path / "staging2"
        _exported_checkpoint(tmp_path / "again", staging)
        db = sqlite3.connect(staging / "index.db")
        db.execute("UPDATE topics SET first = 'not a number'")
        db.commit()
        db.close()
        problem = checkpoints.check_staged(str(staging), SnapshotMeta(index, term))
        assert problem is not None and problem.startswith("TypeError")  # once raised out of the loop
        assert not (Path(checkpoints.data_dir) / "topics.check.db").exists()
    finally:
        checkpoints.close()
        storage.close()
