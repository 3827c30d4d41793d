"""Streaming a snapshot's files (`wiber.storage.transfer`): the codec, the two ends over a simulated
network (loss, duplication, reordering, corruption, restarts, a newer manifest), and the
directory switch with a crash at every step."""

from __future__ import annotations

import copy
import errno
import os
import random
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

from wiber.node import timesync
from wiber.storage.fs import OS
from wiber.storage.transfer import (
    CHUNK_BYTES,
    MARKER,
    MAX_CRC_FAILURES,
    MAX_FILES,
    MAX_META_BYTES,
    JOURNAL_SUFFIX,
    Abort,
    Data,
    Done,
    FileInfo,
    Manifest,
    ManifestFrame,
    Receiver,
    Request,
    Sender,
    TransferError,
    check_name,
    decode_frame,
    install_staged,
    is_transfer_frame,
    recover_install,
)

LEADER, FOLLOWER = "n1", "n2"
MAX_FRAME = CHUNK_BYTES + 1024


def blob(seed: int, size: int) -> bytes:
    """Returns: `size` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


FILES: dict[str, bytes] = {
    "log-0000000001.seg": blob(1, 5 * CHUNK_BYTES + 12345),  # several chunks, a ragged tail
    "empty.seg": b"",
    "one-chunk.seg": blob(2, CHUNK_BYTES),  # exactly one chunk
    "index.db": blob(3, 70_000),
    "tiny": b"x",
}


def make_source(root: Path, files: dict[str, bytes], index: int = 100, term: int = 3,
                meta: bytes = b"meta") -> tuple[str, Manifest]:
    """Write `files` into a fresh source dir. Returns: its path and the manifest describing it."""
    src = root / f"src-{index}-{term}"
    src.mkdir()
    infos = []
    for name, data in files.items():
        (src / name).write_bytes(data)
        infos.append(FileInfo(name, len(data), zlib.crc32(data)))
    return str(src), Manifest(index, term, meta, tuple(infos))


def staged(staging: str) -> dict[str, bytes]:
    """Returns: every file in `staging` and its content."""
    return {n: (Path(staging) / n).read_bytes() for n in os.listdir(staging)}


class Net:
    """Frames between one Sender and one Receiver, each direction a FIFO queue, with seeded loss,
    duplication, reordering and a hook to tamper with DATA frames. Every frame goes through
    `decode_frame`, and none may exceed `MAX_FRAME`."""

    def __init__(self, sender: Sender, receiver: Receiver, seed: int = 0, loss: float = 0.0,
                 dup: float = 0.0, reorder: float = 0.0,
                 tamper: Callable[[Data], Data | None] | None = None) -> None:
        self.sender, self.receiver = sender, receiver
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder, self.tamper = loss, dup, reorder, tamper
        self.to_sender: deque[bytes] = deque()
        self.to_receiver: deque[bytes] = deque()
        self.done: list[Done] = []
        self.aborts: list[Abort] = []
        self.data_frames = 0
        self.requested: list[tuple[str, int, int]] = []
        self.resends = 0

    def _send(self, queue: deque[bytes], frames: list[bytes]) -> None:
        for frame in frames:
            assert is_transfer_frame(frame) and len(frame) <= MAX_FRAME
            if self.rng.random() < self.loss:
                continue
            queue.append(frame)
            if self.rng.random() < self.dup:
                queue.append(frame)
        if self.reorder and len(queue) > 1 and self.rng.random() < self.reorder:
            items = list(queue)
            self.rng.shuffle(items)
            queue.clear()
            queue.extend(items)

    def start(self) -> None:
        """Deliver the sender's MANIFEST (never lost: the node re-sends it until answered)."""
        self._send(self.to_sender, self.receiver.on_frame(decode_frame(self.sender.manifest_frame())))

    def step(self) -> bool:
        """Move one frame each way. Returns: whether anything moved."""
        moved = False
        if self.to_sender:
            moved = True
            frame = decode_frame(self.to_sender.popleft())
            if isinstance(frame, Request):
                self.requested.append((frame.name, frame.offset, frame.length))
                answer = self.sender.on_request(frame)
                if answer is not None:
                    self._send(self.to_receiver, [answer])
            elif isinstance(frame, Done):
                self.done.append(frame)
            elif isinstance(frame, Abort):
                self.aborts.append(frame)
        if self.to_receiver:
            moved = True
            frame = decode_frame(self.to_receiver.popleft())
            if isinstance(frame, Data):
                self.data_frames += 1
                if self.tamper is not None:
                    tampered = self.tamper(frame)
                    if tampered is None:
                        return moved
                    frame = tampered
            self._send(self.to_sender, self.receiver.on_frame(frame))
        return moved

    def run(self, max_steps: int = 100_000, until: Callable[[], bool] | None = None) -> None:
        """Step until the receiver is complete (or `until`); on silence, the node's timer: resend."""
        stop = until or (lambda: self.receiver.complete and not self.to_sender)
        for _ in range(max_steps):
            if stop() or self.receiver.error is not None and not self.to_sender:
                return
            if not self.step():
                frames = self.receiver.resend()
                self.resends += 1
                assert frames or self.receiver.complete or self.receiver.error, "stalled"
                self._send(self.to_sender, frames)
        raise AssertionError("transfer did not finish")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


# ------------------------------------------------------------------------------- whole transfers


def test_full_transfer_copies_every_file_in_chunks(tmp_path: Path) -> None:
    fds_before = open_fds()
    src, manifest = make_source(tmp_path, FILES)
    staging = str(tmp_path / "snap.staging")
    sender = Sender(OS, LEADER, 7, manifest, src, max_open=2)
    receiver = Receiver(OS, FOLLOWER, staging, window=4)
    net = Net(sender, receiver)
    net.start()
    assert receiver.outstanding == 4  # a window of requests in flight from the start
    net.run()
    assert receiver.complete and receiver.error is None and receiver.dropped == 0
    assert staged(staging) == FILES
    assert os.stat(staging).st_mode & 0o777 == 0o700
    assert [(d.sender, d.transfer_id) for d in net.done] == [(FOLLOWER, 7)]
    expected_chunks = sum(-(-len(d) // CHUNK_BYTES) for d in FILES.values())
    assert net.data_frames == expected_chunks == sender.served  # each chunk once, none for "empty.seg"
    assert receiver.bytes_written == receiver.bytes_staged == manifest.total_bytes
    assert sender.open_files <= 2
    sender.close()
    receiver.close()
    assert sender.open_files == 0
    if fds_before:
        assert open_fds() == fds_before
    # The same MANIFEST again (the leader missed DONE) is answered with DONE, nothing refetched.
    again = receiver.on_manifest(ManifestFrame(LEADER, 7, manifest))
    assert [type(decode_frame(f)) for f in again] == [Done]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lost_duplicated_and_reordered_frames_are_recovered_by_resend(tmp_path: Path, seed: int) -> None:
    src, manifest = make_source(tmp_path, FILES)
    staging = str(tmp_path / "staging")
    receiver = Receiver(OS, FOLLOWER, staging, window=3)
    net = Net(Sender(OS, LEADER, 9, manifest, src), receiver, seed=seed, loss=0.25, dup=0.2, reorder=0.3)
    net.start()
    net.run()
    assert staged(staging) == FILES
    assert net.resends > 0 and receiver.dropped > 0  # losses were resent, duplicates dropped


def test_receiver_memory_is_bounded_by_the_window(tmp_path: Path) -> None:
    """Lose the first DATA frame: the rest of the window arrives and is held, and no more is asked
    for until resend fills the gap."""
    src, manifest = make_source(tmp_path, {"big": blob(5, 8 * CHUNK_BYTES)})
    receiver = Receiver(OS, FOLLOWER, str(tmp_path / "st"), window=4)
    sender = Sender(OS, LEADER, 1, manifest, src)
    requests = [decode_frame(f) for f in receiver.on_manifest(ManifestFrame(LEADER, 1, manifest))]
    assert [r.offset for r in requests if isinstance(r, Request)] == [i * CHUNK_BYTES for i in range(4)]
    answers = [sender.on_request(r) for r in requests if isinstance(r, Request)]
    for answer in answers[1:]:
        assert answer is not None
        assert receiver.on_frame(decode_frame(answer)) == []  # held ahead of the gap, window full
    assert not (tmp_path / "st" / "big").exists()  # only the contiguous prefix is written: none yet
    again = [decode_frame(f) for f in receiver.resend()]
    assert again == [requests[0]]
    assert answers[0] is not None
    more = [decode_frame(f) for f in receiver.on_frame(decode_frame(answers[0]))]
    assert [r.offset for r in more if isinstance(r, Request)] == [i * CHUNK_BYTES for i in range(4, 8)]
    assert os.path.getsize(tmp_path / "st" / "big") == 4 * CHUNK_BYTES


def test_resume_after_the_receiver_is_recreated(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, FILES)
    staging = str(tmp_path / "staging")
    first = Receiver(OS, FOLLOWER, staging)
    net = Net(Sender(OS, LEADER, 5, manifest, src), first)
    net.start()
    net.run(until=lambda: net.data_frames >= 3)  # part of the big file is staged
    first.close()  # the follower process dies here
    partial = os.path.getsize(os.path.join(staging, "log-0000000001.seg"))
    assert 0 < partial < len(FILES["log-0000000001.seg"])
    with open(os.path.join(staging, "leftover.tmp"), "wb") as f:  # not in the manifest: removed
        f.write(b"junk")
    os.mkdir(os.path.join(staging, "junk-dir"))
    with open(os.path.join(staging, "junk-dir", "f"), "wb") as f:
        f.write(b"junk")

    second = Receiver(OS, FOLLOWER, staging)
    net2 = Net(Sender(OS, LEADER, 5, manifest, src), second)
    net2.start()
    net2.run()
    assert staged(staging) == FILES
    big = [(o, n) for name, o, n in net2.requested if name == "log-0000000001.seg"]
    assert big[0][0] == partial  # continued from its staged length, not from 0
    assert second.bytes_written == manifest.total_bytes - partial


def test_resume_keeps_complete_files_and_refetches_a_bad_prefix(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, FILES)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "index.db").write_bytes(FILES["index.db"])  # complete and right: kept
    (staging / "tiny").write_bytes(b"y")  # complete size, wrong CRC: fetched again
    good = FILES["log-0000000001.seg"]
    (staging / "log-0000000001.seg").write_bytes(b"\0" * 100 + good[100:CHUNK_BYTES + 10])  # torn
    (staging / "one-chunk.seg").write_bytes(FILES["one-chunk.seg"] + b"extra")  # too long: emptied
    receiver = Receiver(OS, FOLLOWER, str(staging))
    net = Net(Sender(OS, LEADER, 5, manifest, src), receiver)
    net.start()
    net.run()
    assert staged(str(staging)) == FILES
    names = [name for name, _, _ in net.requested]
    assert "index.db" not in names and "tiny" in names
    assert receiver.refetched == 1  # the torn prefix failed its CRC at the end, fetched from 0
    offsets = [o for n, o, _ in net.requested if n == "log-0000000001.seg"]
    assert offsets[0] == CHUNK_BYTES + 10 and offsets.count(0) == 1  # resumed, then refetched whole


def test_corrupt_data_fails_the_crc_and_the_file_is_refetched(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, FILES)
    staging = str(tmp_path / "staging")
    receiver = Receiver(OS, FOLLOWER, staging)
    hits: list[Data] = []

    def flip_once(d: Data) -> Data:
        if d.name == "index.db" and not hits:
            hits.append(d)
            return Data(d.sender, d.transfer_id, d.name, d.offset, bytes([d.data[0] ^ 1]) + d.data[1:])
        return d

    net = Net(Sender(OS, LEADER, 5, manifest, src), receiver, tamper=flip_once)
    net.start()
    net.run()
    assert hits and receiver.refetched == 1 and staged(staging) == FILES


def test_a_source_that_stays_corrupt_aborts_after_max_failures(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, {"a": b"hello world"})
    Path(src, "a").write_bytes(b"HELLO WORLD")  # same size, different content than the manifest
    receiver = Receiver(OS, FOLLOWER, str(tmp_path / "st"))
    net = Net(Sender(OS, LEADER, 5, manifest, src), receiver)
    net.start()
    net.run()
    assert not receiver.complete and receiver.refetched == MAX_CRC_FAILURES
    assert receiver.error is not None and "CRC" in receiver.error
    assert [a.sender for a in net.aborts] == [FOLLOWER]
    assert receiver.resend() == []
    # A new announcement of the transfer starts it again (the node decides whether to).
    assert receiver.on_manifest(ManifestFrame(LEADER, 5, manifest)) != []


def test_a_source_shorter_than_its_manifest_aborts(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, {"a": blob(1, 3000)})
    Path(src, "a").write_bytes(b"short")
    sender = Sender(OS, LEADER, 5, manifest, src)
    receiver = Receiver(OS, FOLLOWER, str(tmp_path / "st"))
    net = Net(sender, receiver)
    net.start()
    net.run(until=lambda: receiver.error is not None)
    assert sender.failed is not None and "shorter" in sender.failed
    assert receiver.error is not None and receiver.error.startswith("sender aborted")
    assert sender.on_request(Request(FOLLOWER, 5, "a", 0, 10)) is not None  # the ABORT, again


def test_a_newer_manifest_replaces_the_transfer_and_keeps_identical_files(tmp_path: Path) -> None:
    old_files = {"seg-1": blob(1, 2 * CHUNK_BYTES), "seg-2": blob(2, 3 * CHUNK_BYTES),
                 "index.db": blob(3, 5000)}
    src1, m1 = make_source(tmp_path, old_files, index=100, term=3)
    new_files = {"seg-1": old_files["seg-1"], "seg-3": blob(4, CHUNK_BYTES + 1), "index.db": blob(5, 6000)}
    src2, m2 = make_source(tmp_path, new_files, index=200, term=4)
    staging = str(tmp_path / "staging")
    receiver = Receiver(OS, FOLLOWER, staging, window=2)
    net1 = Net(Sender(OS, LEADER, 1, m1, src1), receiver)
    net1.start()
    net1.run(until=lambda: net1.data_frames >= 3)  # seg-1 complete, seg-2 partial
    assert receiver.bytes_staged >= 2 * CHUNK_BYTES
    stale = list(net1.to_receiver)  # DATA of the old transfer still in flight

    net2 = Net(Sender(OS, "n3", 2, m2, src2), receiver)  # a new leader, a newer snapshot
    net2.start()
    for frame in stale:
        assert receiver.on_frame(decode_frame(frame)) == []  # dropped, never written
    net2.run()
    assert staged(staging) == new_files  # seg-2 removed, index.db replaced
    assert "seg-1" not in [n for n, _, _ in net2.requested]  # same name, size, CRC: kept
    assert receiver.dropped >= len(stale) and receiver.peer == "n3"


def test_same_manifest_again_resends_outstanding_requests(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, {"a": blob(1, 3 * CHUNK_BYTES)})
    receiver = Receiver(OS, FOLLOWER, str(tmp_path / "st"), window=2)
    first = receiver.on_manifest(ManifestFrame(LEADER, 1, manifest))
    assert receiver.on_manifest(ManifestFrame(LEADER, 1, manifest)) == first
    assert receiver.resend() == first


def test_stale_forged_and_unrequested_data_is_dropped_not_written(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, {"a": blob(1, 2 * CHUNK_BYTES), "b": blob(2, 10)})
    staging = tmp_path / "st"
    receiver = Receiver(OS, FOLLOWER, str(staging), window=1)
    assert receiver.on_data(Data(LEADER, 1, "a", 0, b"x")) == []  # before any manifest
    [req] = [decode_frame(f) for f in receiver.on_manifest(ManifestFrame(LEADER, 1, manifest))]
    assert isinstance(req, Request) and (req.name, req.offset, req.length) == ("a", 0, CHUNK_BYTES)
    good = blob(1, 2 * CHUNK_BYTES)[:CHUNK_BYTES]
    bad = [
        Data(LEADER, 2, "a", 0, good),  # another transfer
        Data("n3", 1, "a", 0, good),  # another sender
        Data(LEADER, 1, "a", CHUNK_BYTES, good),  # not requested (yet)
        Data(LEADER, 1, "a", 0, good[:-1]),  # not the length requested
        Data(LEADER, 1, "b", 0, blob(2, 10)),  # not requested
        Data(LEADER, 1, "nope", 0, b"x"),  # not in the manifest
    ]
    for d in bad:
        assert receiver.on_data(d) == []
    assert receiver.dropped == len(bad) + 1
    assert not (staging / "nope").exists()
    assert not (staging / "a").exists() or (staging / "a").stat().st_size == 0
    nxt = receiver.on_data(Data(LEADER, 1, "a", 0, good))
    asked = [decode_frame(f) for f in nxt]
    assert [(r.name, r.offset) for r in asked if isinstance(r, Request)] == [("a", CHUNK_BYTES)]
    assert receiver.on_data(Data(LEADER, 1, "a", 0, good)) == []  # a duplicate: stale
    assert (staging / "a").stat().st_size == CHUNK_BYTES
    assert receiver.on_frame(Request(LEADER, 1, "a", 0, 1)) == []  # not for the receiver
    receiver.on_abort(Abort("n3", 1, "not yours"))
    assert receiver.error is None and receiver.dropped == len(bad) + 4
    receiver.close()


def test_sender_refuses_what_the_manifest_does_not_cover(tmp_path: Path) -> None:
    files = {f"f{i}": blob(i, 100 + i) for i in range(10)}
    src, manifest = make_source(tmp_path, files)
    Path(src, "secret").write_bytes(b"not in the manifest")
    sender = Sender(OS, LEADER, 3, manifest, src, max_open=3)
    refused = [
        Request(FOLLOWER, 4, "f1", 0, 10),  # another transfer
        Request(FOLLOWER, 3, "secret", 0, 5),  # in the directory, not in the manifest
        Request(FOLLOWER, 3, "f1", 0, 102),  # past the end of the file
        Request(FOLLOWER, 3, "f1", 101, 1),
    ]
    for req in refused:
        assert sender.on_request(req) is None
    assert sender.refused == len(refused) and sender.open_files == 0
    for i in range(10):
        frame = sender.on_request(Request(FOLLOWER, 3, f"f{i}", 1, 50))
        assert frame is not None
        d = decode_frame(frame)
        assert isinstance(d, Data) and d.data == files[f"f{i}"][1:51] and (d.sender, d.offset) == (LEADER, 1)
        assert sender.open_files <= 3  # few descriptors, least recently used closed
    sender.close()
    assert sender.open_files == 0


def test_sender_bound_to_a_peer_refuses_other_nodes(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, {"a": b"abc"})
    sender = Sender(OS, LEADER, 3, manifest, src, peer=FOLLOWER)
    assert sender.on_request(Request("n3", 3, "a", 0, 3)) is None and sender.refused == 1
    assert sender.on_request(Request(FOLLOWER, 3, "a", 0, 3)) is not None
    sender.close()


def test_a_local_disk_failure_stops_the_transfer_and_a_manifest_resumes_it(tmp_path: Path) -> None:
    crashfs = pytest.importorskip("crashfs")
    files = {"a": blob(1, 3 * CHUNK_BYTES), "b": blob(2, 10)}
    src, manifest = make_source(tmp_path, files)
    fs = crashfs.CrashFS()
    receiver = Receiver(fs, FOLLOWER, "/st", window=2)
    net = Net(Sender(OS, LEADER, 1, manifest, src), receiver)
    net.start()
    fs.fail_after(1, errno.ENOSPC, op="pwrite")  # the disk fills after one chunk
    with pytest.raises(OSError):
        net.run()
    assert receiver.error is not None and "I/O" in receiver.error and not receiver.active
    assert fs.open_fds == 0 and receiver.resend() == []
    fs.fail_after(None)  # space freed
    net = Net(Sender(OS, LEADER, 1, manifest, src), receiver)
    net.start()
    net.run()
    assert {n: fs.read_file(f"/st/{n}") for n in fs.listdir("/st")} == files
    assert net.requested[0][:2] == ("a", CHUNK_BYTES)  # resumed after the chunk that was written


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\x00b", "x" * 256,
                                  "é" * 128, "\udc80"])
def test_path_traversal_and_bad_names_are_refused(name: str) -> None:
    with pytest.raises(TransferError):
        check_name(name)
    with pytest.raises(TransferError):
        FileInfo(name, 1, 0)
    with pytest.raises(TransferError):
        Request(FOLLOWER, 1, name, 0, 1)
    if "\udc80" not in name:  # (msgpack cannot even encode a lone surrogate)
        raw = MARKER + msgpack.packb([2, FOLLOWER, 1, name, 0, 1])
        with pytest.raises(TransferError):
            decode_frame(raw)
        wire = msgpack.packb([1, 1, 1, b"", [[name, 1, 0]]])
        with pytest.raises(TransferError):
            Manifest.decode(wire)


def test_receiver_refuses_bad_windows(tmp_path: Path) -> None:
    for window in (0, 65, 1.5):
        with pytest.raises(ValueError):
            Receiver(OS, FOLLOWER, str(tmp_path), window=window)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ codec


def test_manifest_round_trip_and_validation() -> None:
    m = Manifest(2**63 - 1, 7, b"\x00meta", (FileInfo("a", 2**63 - 1, 2**32 - 1), FileInfo("b", 0, 0)))
    assert Manifest.decode(m.encode()) == m and m.file("b") == FileInfo("b", 0, 0) and m.file("c") is None
    frame = ManifestFrame(LEADER, 2**64 - 1, m)
    assert decode_frame(frame.encode()) == frame
    bad: list[Callable[[], Any]] = [
        lambda: FileInfo("a", -1, 0),
        lambda: FileInfo("a", 2**63, 0),
        lambda: FileInfo("a", 1, 2**32),
        lambda: FileInfo("a", True, 0),
        lambda: FileInfo("a", 1.0, 0),  # type: ignore[arg-type]
        lambda: FileInfo("a", 0, 5),  # an empty file's CRC is 0
        lambda: Manifest(-1, 0, b"", ()),
        lambda: Manifest(0, 0, "meta", ()),  # type: ignore[arg-type]
        lambda: Manifest(0, 0, b"x" * (MAX_META_BYTES + 1), ()),
        lambda: Manifest(0, 0, b"", [FileInfo("a", 0, 0)]),  # type: ignore[arg-type]
        lambda: Manifest(0, 0, b"", (FileInfo("a", 0, 0), FileInfo("a", 1, 0))),
        lambda: Manifest(0, 0, b"", (("a", 0, 0),)),  # type: ignore[arg-type]
        lambda: Manifest(0, 0, b"", tuple(FileInfo(f"f{i}", 0, 0) for i in range(MAX_FILES + 1))),
        lambda: ManifestFrame("", 1, m),
        lambda: ManifestFrame(LEADER, 2**64, m),
        lambda: Request(FOLLOWER, 1, "a", 0, 0),
        lambda: Request(FOLLOWER, 1, "a", 0, CHUNK_BYTES + 1),
        lambda: Data(LEADER, 1, "a", 0, b"x" * (CHUNK_BYTES + 1)),
        lambda: Data(LEADER, 1, "a", 0, bytearray(b"x")),  # type: ignore[arg-type]
        lambda: Abort(LEADER, 1, "x" * 1025),
        lambda: Manifest.decode(b""),
        lambda: Manifest.decode(m.encode() + b"\x00"),
        lambda: Manifest.decode(msgpack.packb([2, 1, 1, b"", []])),  # unknown version
        lambda: Manifest.decode(msgpack.packb([1, 1, 1, b"", [["a", 1]]])),
        lambda: Manifest.decode(msgpack.packb([1, 1, 1, b"", [["a", 1, 0], ["a", 1, 0]]])),
        lambda: Manifest.decode(msgpack.packb([1, 1, 1, "str-meta", []])),
        lambda: Manifest.decode(msgpack.packb({"index": 1})),
        lambda: Manifest.decode(b"\x95\x01\x01\x01\xc4\x00\xdd\xff\xff\xff\xff"),  # 4 G files declared
    ]
    for make in bad:
        with pytest.raises(TransferError):
            make()


def valid_frames() -> list[bytes]:
    m = Manifest(10, 2, b"meta", (FileInfo("a", 3, zlib.crc32(b"abc")), FileInfo("b", 0, 0)))
    return [
        ManifestFrame(LEADER, 1, m).encode(),
        Request(FOLLOWER, 2**64 - 1, "a", 0, CHUNK_BYTES).encode(),
        Data(LEADER, 1, "a", 1, b"bc").encode(),
        Data(LEADER, 1, "a", 1, b"x" * 300).encode(),
        Data(LEADER, 1, "a", 1, b"x" * 70_000).encode(),
        Data(LEADER, 1, "a", 0, b"").encode(),
        Done(FOLLOWER, 1).encode(),
        Abort(LEADER, 1, "source gone").encode(),
    ]


def test_frames_round_trip_and_are_told_apart() -> None:
    for frame in valid_frames():
        assert is_transfer_frame(frame)
        assert decode_frame(frame).encode() == frame
    big = Data(LEADER, 1, "a", 5, blob(1, CHUNK_BYTES)).encode()
    assert len(big) <= MAX_FRAME and decode_frame(big) == Data(LEADER, 1, "a", 5, blob(1, CHUNK_BYTES))
    assert Data(LEADER, 1, "a", 1, b"x" * 300).encode() == MARKER + msgpack.packb(
        [3, LEADER, 1, "a", 1, b"x" * 300], use_bin_type=True)
    others = [timesync.probe("n1", 1.0), timesync.reply("n1", 1.0, 2.0, 3.0), msgpack.packb([1, 2]),
              b"\xc1C\x00", b"", b"\xc1"]
    for frame in others:
        assert not is_transfer_frame(frame)
        with pytest.raises(TransferError):
            decode_frame(frame)


def test_fuzz_truncated_and_mutated_frames_raise_only_transfer_error() -> None:
    rng = random.Random(42)
    decoded = 0
    for frame in valid_frames():
        for cut in range(len(frame) if len(frame) < 400 else 400):
            with pytest.raises(TransferError):
                decode_frame(frame[:cut])
        for _ in range(1500):
            mutated = bytearray(frame)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                pos = rng.randrange(len(mutated))
                if op < 0.6:
                    mutated[pos] = rng.randrange(256)
                elif op < 0.8:
                    mutated.insert(pos, rng.randrange(256))
                elif len(mutated) > 1:
                    del mutated[pos]
            try:
                decode_frame(bytes(mutated))
                decoded += 1  # some mutations are still valid frames (another byte of data)
            except TransferError:
                pass
    assert decoded > 0


def test_hostile_frames_are_refused_before_allocating() -> None:
    def frame(*items: Any) -> bytes:
        return MARKER + bytes(msgpack.packb(list(items), use_bin_type=True))

    hostile = [
        MARKER + b"\x96\x03" + msgpack.packb(LEADER) + b"\x01\xa1a\x00\xc6\xff\xff\xff\xff",  # 4 GiB bin
        MARKER + b"\x94\x01" + msgpack.packb(LEADER) + b"\x01\x95\x01\x01\x01\xc4\x00\xdd\xff\xff\xff\xff",
        MARKER + b"\x96\x02" + msgpack.packb(FOLLOWER) + b"\x01" + b"\xdd\x00\x01\x00\x00" * 200,  # nesting
        MARKER + b"\xdc\x00\x06\x02" + msgpack.packb([FOLLOWER, 1, "a", 0, 1])[1:],  # array16 layout
        MARKER + b"\x86\x02",  # a map
        MARKER + b"\x96\x09",  # unknown kind
        frame(2, FOLLOWER, 1, "a", 0, 1) + b"\x00",  # trailing byte
        frame(2, FOLLOWER, 1, "a" * 200, 0, 1) + b"\x00" * 5000,  # over the REQUEST size limit
        frame(2, FOLLOWER, 1, "a", True, 1),
        frame(2, FOLLOWER, 1, "a", 0.0, 1),
        frame(2, FOLLOWER, 1, "a", -1, 1),
        frame(2, FOLLOWER, 1, "a", 0, 0),
        frame(2, FOLLOWER, 1, "a", 2**63 - 1, 1),
        frame(2, FOLLOWER, 1, b"a", 0, 1),
        frame(2, FOLLOWER, -1, "a", 0, 1),
        frame(2, "", 1, "a", 0, 1),
        frame(2, "x" * 256, 1, "a", 0, 1),
        frame(2, None, 1, "a", 0, 1),
        frame(3, LEADER, 1, "a", 0, "not bytes"),
        frame(3, LEADER, 1, "a", 0, [1, 2]),
        frame(4, FOLLOWER, 1, {"x": 1}),
        frame(5, LEADER, 1, b"reason"),
        MARKER + b"\x93\x04\xa2\xff\xfe\x01",  # invalid UTF-8 sender
        MARKER + b"\x93\x04\xd4\x01\x00\x01",  # an ext type
    ]
    for raw in hostile:
        with pytest.raises(TransferError):
            decode_frame(raw)


# ---------------------------------------------------------------------------------------- install


class Crash(Exception):
    """The simulated process death of `CrashingFS`."""


class CrashingFS:
    """`OS`, but the process 'dies' (raises `Crash`) instead of doing its `budget`-th change."""

    CHANGES = {"replace", "unlink", "rmdir", "link", "makedirs", "fsync_dir", "fsync", "pwrite", "ftruncate"}

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.done = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(OS, name)
        if name not in self.CHANGES and name != "open":
            return real

        def change(*args: Any) -> Any:
            if name == "open" and not args[1] & os.O_CREAT:
                return real(*args)
            if self.done >= self.budget:
                raise Crash(name)
            self.done += 1
            return real(*args)

        return change


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    """Returns: each entry of `root` and its content (a directory's is ``b"<dir>"``)."""
    return {p.name: b"<dir>" if p.is_dir() else p.read_bytes() for p in root.iterdir()}


OLD = {"seg-1": b"old one", "index.db": b"old index", "meta": b"old"}
NEW = {"seg-1": b"new one", "seg-2": b"new two", "index.db": b"new index"}


@pytest.mark.parametrize("had_target", [True, False])
def test_install_with_a_crash_at_every_step_leaves_old_or_new(tmp_path: Path, had_target: bool) -> None:
    """The process dies before each change of `install_staged` in turn, then before each change of
    `recover_install` in turn until one completes: the target ends with the old files (and
    staging intact) or the new ones (and staging gone), never a mix, and no journal is left."""
    outcomes = set()
    budget = 0
    while True:
        case = tmp_path / f"case-{budget}"
        case.mkdir()
        target, staging = case / "snapshot", case / "snapshot.staging"
        if had_target:
            write_tree(target, OLD)
            write_tree(target / "old-subdir", {"x": b"x"})  # whatever T held goes
        write_tree(staging, NEW)
        try:
            install_staged(CrashingFS(budget), str(staging), str(target))
            finished = True
        except Crash:
            finished = False
        for recovery_budget in range(100):
            try:
                recover_install(CrashingFS(recovery_budget), str(target))
                break
            except Crash:
                continue
        assert recover_install(OS, str(target)) == "clean"  # idempotent once done
        assert set(os.listdir(case)) <= {"snapshot", "snapshot.staging"}
        if staging.exists():  # died before the commit point: the old files, staging intact
            assert read_tree(staging) == NEW
            if had_target:
                assert read_tree(target) == {**OLD, "old-subdir": b"<dir>"}
                assert read_tree(target / "old-subdir") == {"x": b"x"}
            else:
                assert not target.exists() or not os.listdir(target)
            outcomes.add("old")
        else:
            assert read_tree(target) == NEW
            outcomes.add("new")
        if finished:
            break
        budget += 1
    assert outcomes == {"old", "new"} and budget > 10


def test_recover_install_handles_each_leftover(tmp_path: Path) -> None:
    target = tmp_path / "snap"
    journal = Path(str(target) + JOURNAL_SUFFIX)
    assert recover_install(OS, str(target)) == "clean"
    Path(str(journal) + ".tmp").write_bytes(b"half a journal")  # never committed
    assert recover_install(OS, str(target)) == "discarded" and not Path(str(journal) + ".tmp").exists()
    write_tree(target, NEW)  # committed, staging already removed, journal left
    journal.write_bytes(msgpack.packb([1, str(tmp_path / "gone"), sorted(NEW)]))
    assert recover_install(OS, str(target)) == "rolled forward" and read_tree(target) == NEW
    assert not journal.exists()
    for bad in (b"", b"junk", msgpack.packb([1, "", []]), msgpack.packb([2, "s", []]),
                msgpack.packb([1, "s", ["../escape"]])):
        journal.write_bytes(bad)
        with pytest.raises(TransferError):
            recover_install(OS, str(target))
    journal.unlink()


def test_install_refuses_overlapping_or_odd_staging(tmp_path: Path) -> None:
    target = str(tmp_path / "snap")
    for staging in (target, target + "/", target + "/staging", str(tmp_path), target + JOURNAL_SUFFIX):
        with pytest.raises(TransferError):
            install_staged(OS, staging, target)
    with pytest.raises(FileNotFoundError):
        install_staged(OS, str(tmp_path / "missing"), target)
    write_tree(tmp_path / "staging", {"a": b"a"})
    (tmp_path / "staging" / "sub").mkdir()
    with pytest.raises(TransferError):
        install_staged(OS, str(tmp_path / "staging"), target)
    assert not Path(target + JOURNAL_SUFFIX).exists()


def test_transfer_then_install_end_to_end(tmp_path: Path) -> None:
    src, manifest = make_source(tmp_path, FILES)
    target = tmp_path / "snapshot"
    write_tree(target, OLD)
    staging = str(tmp_path / "snapshot.staging")
    receiver = Receiver(OS, FOLLOWER, staging)
    net = Net(Sender(OS, LEADER, 1, manifest, src), receiver)
    net.start()
    net.run()
    install_staged(OS, staging, str(target))
    assert read_tree(target) == FILES and not os.path.exists(staging)
    assert sorted(os.listdir(tmp_path)) == sorted(["snapshot", os.path.basename(src)])


# --------------------------------------------------------------------------- power loss (CrashFS)


def test_power_loss_during_transfer_and_install_over_crashfs(tmp_path: Path) -> None:
    """On the strict crash-consistent file system: a power loss in the middle of the transfer (a
    torn, partly named staging), a new Receiver resumes and completes it; then a power loss at
    every mutating call of `install_staged` (and one in the recovery after it), strict and with
    random prefixes of each directory's name changes: recovery leaves the old files or the new."""
    crashfs = pytest.importorskip("crashfs")
    files = {"seg-1": blob(11, 2 * CHUNK_BYTES + 77), "seg-2": blob(12, 5000), "empty": b"",
             "index.db": blob(13, 900)}
    src, manifest = make_source(tmp_path, files)
    old = {"seg-1": b"old", "stale.seg": b"stale"}
    fs = crashfs.CrashFS()
    fs.makedirs("/node/snapshot")
    for name, data in old.items():
        fd = fs.open(f"/node/snapshot/{name}", os.O_RDWR | os.O_CREAT)
        fs.pwrite(fd, data, 0)
        fs.fsync(fd)
        fs.close(fd)
    for d in ("/node/snapshot", "/node", "/"):
        fs.fsync_dir(d)
    staging, target = "/node/snapshot.staging", "/node/snapshot"
    rng = random.Random(5)

    def tree(root: str) -> dict[str, bytes]:
        return {n: fs.read_file(f"{root}/{n}") for n in fs.listdir(root)}

    receiver = Receiver(fs, FOLLOWER, staging, window=2)
    net = Net(Sender(OS, LEADER, 1, manifest, src), receiver)
    net.start()
    net.run(until=lambda: net.data_frames >= 2)
    fs.fsync_dir(staging)  # (so that the crash below leaves some staging to resume)
    fs.fsync_dir("/node")
    fs.crash_after(1)
    with pytest.raises(crashfs.SimulatedCrash):
        net.run()
    fs.crash(torn=rng, names=rng)
    assert fs.open_fds == 0
    resumed = Receiver(fs, FOLLOWER, staging, window=2)
    net = Net(Sender(OS, LEADER, 1, manifest, src), resumed)
    net.start()
    net.run()
    assert tree(staging) == files and fs.files(durable=True)[f"{staging}/seg-1"] == files["seg-1"]
    assert fs.open_fds == 0

    before = fs.mutations
    probe = copy.deepcopy(fs)
    install_staged(probe, staging, target)
    assert {n: probe.read_file(f"{target}/{n}") for n in probe.listdir(target)} == files
    steps = probe.mutations - before
    assert steps > 15  # (create the journal, link and replace each file, remove, fsync...)
    outcomes = set()
    for k in range(steps + 1):
        for names in (None, random.Random(k)):
            run = copy.deepcopy(fs)
            run.crash_after(k)
            try:
                install_staged(run, staging, target)
            except crashfs.SimulatedCrash:
                run.crash(names=names)
                run.crash_after(rng.randrange(12))  # and maybe once more, during recovery
                try:
                    recover_install(run, target)
                except crashfs.SimulatedCrash:
                    run.crash(names=names)
                recover_install(run, target)
            got = {n: run.read_file(f"{target}/{n}") for n in run.listdir(target)}
            assert recover_install(run, target) == "clean"
            if got == files:
                outcomes.add("new")
                assert not run.exists(staging)
            else:
                assert got == old, f"crash at step {k}: a mix {sorted(got)}"
                assert {n: run.read_file(f"{staging}/{n}") for n in run.listdir(staging)} == files
                outcomes.add("old")
            assert run.open_fds == 0
    assert outcomes == {"old", "new"}
