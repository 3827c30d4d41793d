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
