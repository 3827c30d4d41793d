"""CrashFS itself: it loses exactly what a strict POSIX power loss may lose, and errs like `os`."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crashfs import CrashFS, SimulatedCrash

from wiber.storage.fs import OS, FileSystem

RW_NEW = os.O_RDWR | os.O_CREAT


def _write_file(fs: FileSystem, path: str, data: bytes, *, sync: bool = True) -> None:
    """Create (or truncate) `path` with `data`, fsynced when `sync`."""
    fd = fs.open(path, RW_NEW | os.O_TRUNC)
    try:
        fs.pwrite(fd, data, 0)
        if sync:
            fs.fsync(fd)
    finally:
        fs.close(fd)


@pytest.fixture
def fs() -> CrashFS:
    """A CrashFS holding a durable, empty directory /d."""
    fs = CrashFS()
    fs.makedirs("/d")
    fs.fsync_dir("/")
    return fs


def test_unsynced_writes_are_lost_and_synced_ones_kept(fs: CrashFS) -> None:
    fd = fs.open("/d/f", RW_NEW)
    fs.fsync_dir("/d")
    fs.pwrite(fd, b"synced", 0)
    fs.fsync(fd)
    fs.pwrite(fd, b"+lost", 6)
    fs.ftruncate(fd, 100)
    assert fs.read_file("/d/f") == b"synced+lost".ljust(100, b"\0")
    assert fs.files(durable=True) == {"/d/f": b"synced"}
    fs.crash()
    assert fs.read_file("/d/f") == b"synced"


def test_a_new_name_needs_fsync_dir_even_with_its_data_fsynced(fs: CrashFS) -> None:
    _write_file(fs, "/d/new", b"data")
    fs.makedirs("/d/sub/deeper")
    fs.fsync_dir("/d/sub")
    assert fs.exists("/d/new") and fs.exists("/d/sub/deeper")
    fs.crash()
    assert fs.listdir("/d") == []
    assert not fs.exists("/d/new") and not fs.exists("/d/sub")
    _write_file(fs, "/d/new", b"data")
    fs.fsync_dir("/d")
    fs.crash()
    assert fs.read_file("/d/new") == b"data"


def test_an_unlink_without_fsync_dir_comes_back_with_its_durable_content(fs: CrashFS) -> None:
    _write_file(fs, "/d/f", b"old")
    fs.fsync_dir("/d")
    fd = fs.open("/d/f", os.O_RDWR)
    fs.pwrite(fd, b"new", 0)                       # not fsynced
    fs.unlink("/d/f")
    assert not fs.exists("/d/f")
    fs.crash()
    assert fs.read_file("/d/f") == b"old"
    fs.unlink("/d/f")
    fs.fsync_dir("/d")
    fs.crash()
    assert not fs.exists("/d/f")


@pytest.mark.parametrize("dir_synced", [False, True])
def test_replace_is_atomic_and_durable_only_after_fsync_dir(fs: CrashFS, dir_synced: bool) -> None:
    _write_file(fs, "/d/state", b"A")
    fs.fsync_dir("/d")
    _write_file(fs, "/d/state.tmp", b"B")
    fs.replace("/d/state.tmp", "/d/state")
    assert fs.read_file("/d/state") == b"B" and sorted(fs.listdir("/d")) == ["state"]
    if dir_synced:
        fs.fsync_dir("/d")
    fs.crash()
    assert sorted(fs.listdir("/d")) == ["state"]   # never both names, never neither
    assert fs.read_file("/d/state") == (b"B" if dir_synced else b"A")


def test_replace_with_names_mode_keeps_the_old_or_the_new_mapping_whole(fs: CrashFS) -> None:
    outcomes = set()
    for seed in range(30):
        f = CrashFS()
        f.makedirs("/d")
        f.fsync_dir("/")
        _write_file(f, "/d/state", b"A")
        f.fsync_dir("/d")
        _write_file(f, "/d/state.tmp", b"B")
        f.replace("/d/state.tmp", "/d/state")
        f.crash(names=random.Random(seed))
        outcomes.add((tuple(sorted(f.listdir("/d"))), f.read_file("/d/state")))
    # the tmp's creation and the replace are two changes: a prefix of them survives, each one whole
    assert outcomes == {(("state",), b"A"), (("state", "state.tmp"), b"A"), (("state",), b"B")}


def test_hard_links_share_one_inode_before_and_after_a_crash(fs: CrashFS) -> None:
    _write_file(fs, "/d/a", b"one")
    fs.link("/d/a", "/d/b")
    fs.fsync_dir("/d")
    fd = fs.open("/d/b", os.O_RDWR)
    fs.pwrite(fd, b"two", 3)
    assert fs.read_file("/d/a") == b"onetwo"
    fs.fsync(fd)
    fs.crash()
    assert fs.read_file("/d/a") == fs.read_file("/d/b") == b"onetwo"
    fd = fs.open("/d/a", os.O_RDWR)
    fs.pwrite(fd, b"3", 6)
    assert fs.read_file("/d/b") == b"onetwo3"      # still one inode after the crash
    fs.unlink("/d/a")
    assert fs.read_file("/d/b") == b"onetwo3"
    fs.crash()
    assert sorted(fs.listdir("/d")) == ["a", "b"]  # the unlink was not fsynced
    assert fs.read_file("/d/a") == b"onetwo"


def test_an_open_descriptor_outlives_its_name_but_not_a_crash(fs: CrashFS) -> None:
    fd = fs.open("/d/f", RW_NEW)
    fs.fsync_dir("/d")
    fs.pwrite(fd, b"x", 0)
    fs.replace("/d/f", "/d/g")
    fs.pwrite(fd, b"y", 1)
    assert fs.read_file("/d/g") == b"xy" and fs.open_fds == 1
    fs.crash()
    assert fs.open_fds == 0
    for use in (lambda: fs.pwrite(fd, b"z", 0), lambda: fs.pread(fd, 1, 0), lambda: fs.fsync(fd),
                lambda: fs.file_size(fd), lambda: fs.close(fd)):
        with pytest.raises(OSError, match="before a simulated crash") as info:
            use()
        assert info.value.errno == errno.EBADF
    assert fs.read_file("/d/f") == b""


def test_torn_mode_keeps_a_prefix_of_the_unsynced_appended_bytes() -> None:
    kept = set()
    for seed in range(60):
        fs = CrashFS()
        fd = fs.open("/f", RW_NEW)
        fs.fsync_dir("/")
        fs.pwrite(fd, b"durable|", 0)
        fs.fsync(fd)
        fs.pwrite(fd, b"0123456789", 8)
        fs.crash(random.Random(seed))
        data = fs.read_file("/f")
        assert data == b"durable|0123456789"[:len(data)] and len(data) >= 8
        kept.add(len(data) - 8)
    assert 0 in kept and 10 in kept and len(kept) > 5


def test_torn_mode_does_not_invent_an_overwrite_nor_a_lost_name() -> None:
    for seed in range(20):
        fs = CrashFS()
        fd = fs.open("/f", RW_NEW)
        fs.fsync_dir("/")
        fs.pwrite(fd, b"abcdef", 0)
        fs.fsync(fd)
        fs.pwrite(fd, b"XY", 2)                    # an overwrite, not an append: no torn prefix
        fs.pwrite(fd, b"gh", 6)
        new = fs.open("/new", RW_NEW)              # its name was never fsynced
        fs.pwrite(new, b"data", 0)
        fs.crash(random.Random(seed))
        assert fs.read_file("/f") == b"abcdef" and not fs.exists("/new")


def test_names_mode_keeps_an_ordered_prefix_of_the_name_changes() -> None:
    seen = set()
    for seed in range(40):
        fs = CrashFS()
        for name in "abc":
            fs.close(fs.open("/" + name, RW_NEW))
        fs.crash(names=random.Random(seed))
        seen.add("".join(sorted(fs.listdir("/"))))
    assert seen == {"", "a", "ab", "abc"}


def test_crash_after_fires_at_exactly_the_requested_mutating_call() -> None:
    fs = CrashFS()
    fd = fs.open("/f", RW_NEW)                     # mutation 1
    fs.fsync_dir("/")                              # 2
    assert fs.mutations == 2
    fs.crash_after(2)
    fs.pwrite(fd, b"a", 0)                         # 3
    fs.pread(fd, 1, 0)                             # reads are not mutations
    fs.fsync(fd)                                   # 4
    with pytest.raises(SimulatedCrash, match="#5 [(]pwrite[)]") as info:
        fs.pwrite(fd, b"b", 1)
    assert not isinstance(info.value, Exception)   # storage code's `except OSError` / `Exception` miss it
    assert fs.mutations == 4
    for call in (lambda: fs.read_file("/f"), lambda: fs.listdir("/"), lambda: fs.close(fd)):
        with pytest.raises(SimulatedCrash, match="machine is down"):
            call()
    assert fs.crash() is fs and fs.crashes == 1
    assert fs.read_file("/f") == b"a"
    fs.pwrite(fs.open("/f", os.O_RDWR), b"b", 1)   # no crash pending any more
    assert fs.mutations == 5


def test_every_crash_point_of_a_sequence_can_be_enumerated() -> None:
    def workload(fs: CrashFS) -> None:
        fs.makedirs("/d")
        fs.fsync_dir("/")
        _write_file(fs, "/d/f", b"v1")
        fs.fsync_dir("/d")
        _write_file(fs, "/d/f.tmp", b"v2")
        fs.replace("/d/f.tmp", "/d/f")
        fs.fsync_dir("/d")

    probe = CrashFS()
    workload(probe)
    total = probe.mutations
    assert total == 11
    outcomes = []
    for k in range(total):
        fs = CrashFS()
        fs.crash_after(k)
        with pytest.raises(SimulatedCrash):
            workload(fs)
        fs.crash()
        outcomes.append(fs.files())
    # nothing until /d/f's name is fsynced (its data was before: never an empty f), then v1 only,
    # since v2's replace never got its fsync_dir before the last crash point
    assert outcomes == [{}] * 6 + [{"/d/f": b"v1"}] * 5


def test_fail_after_injects_a_full_disk_sticky_or_once() -> None:
    fs = CrashFS()
    fd = fs.open("/f", RW_NEW)
    fs.fail_after(1)
    fs.pwrite(fd, b"ok", 0)
    for _ in range(2):
        with pytest.raises(OSError) as info:
            fs.pwrite(fd, b"full", 2)
        assert info.value.errno == errno.ENOSPC
    assert fs.read_file("/f") == b"ok"
    fs.fail_after(0, errno.EIO, op="fsync", sticky=False)
    fs.pwrite(fd, b"!", 2)                         # the pwrite fault was replaced
    with pytest.raises(OSError, match="Input/output error"):
        fs.fsync(fd)
    fs.fsync(fd)
    fs.fail_after(None)


def _run(call: Callable[[], Any]) -> Any:
    """Returns: what `call` returned, or ("error", class name, errno) for an OSError it raised."""
    try:
        return call()
    except OSError as exc:
        return ("error", type(exc).__name__, exc.errno)


def _script(fs: FileSystem, root: str) -> list[Any]:
    """Run every FileSystem call, including the failing ones, under `root`. Returns: each outcome."""
    def p(name: str) -> str:
        return os.path.join(root, name)

    out: list[Any] = []
    fd = fs.open(p("f"), os.O_RDWR | os.O_CREAT | os.O_EXCL)
    out.append(_run(lambda: fs.open(p("f"), os.O_RDWR | os.O_CREAT | os.O_EXCL)))
    out.append(_run(lambda: fs.open(p("missing"), os.O_RDONLY)))
    out.append(_run(lambda: fs.open(p("nodir/f"), RW_NEW)))
    out.append(fs.pwrite(fd, b"hello", 0))
    out.append(fs.pwrite(fd, b"gap", 8))           # zero-filled hole
    out.append((fs.file_size(fd), fs.pread(fd, 100, 0), fs.pread(fd, 4, 9), fs.pread(fd, 4, 50)))
    fs.ftruncate(fd, 3)
    out.append(fs.read_file(p("f")))
    fs.ftruncate(fd, 6)
    out.append(fs.read_file(p("f")))
    fs.fsync(fd)
    fs.close(fd)
    ro = fs.open(p("f"), os.O_RDONLY)
    out.append(_run(lambda: fs.pwrite(ro, b"x", 0)))
    out.append(_run(lambda: fs.ftruncate(ro, 0)))
    fs.close(ro)
    wo = fs.open(p("f"), os.O_WRONLY | os.O_TRUNC)
    out.append(_run(lambda: fs.pread(wo, 1, 0)))
    out.append(fs.read_file(p("f")))
    fs.close(wo)
    fs.makedirs(p("a/b"))
    fs.makedirs(p("a/b"))                          # exists: no error
    out.append(_run(lambda: fs.makedirs(p("f"))))
    out.append(_run(lambda: fs.makedirs(p("f/sub"))))
    out.append(sorted(fs.listdir(root)))
    out.append(_run(lambda: fs.listdir(p("f"))))
    out.append(_run(lambda: fs.listdir(p("nope"))))
    out.append(_run(lambda: fs.read_file(p("a"))))
    out.append(_run(lambda: fs.read_file(p("nope"))))
    out.append((fs.exists(p("a/b")), fs.exists(p("f")), fs.exists(p("nope")), fs.exists(p("f/x"))))
    out.append(_run(lambda: fs.rmdir(p("a"))))
    out.append(_run(lambda: fs.rmdir(p("f"))))
    out.append(_run(lambda: fs.unlink(p("a"))))
    out.append(_run(lambda: fs.unlink(p("nope"))))
    fs.rmdir(p("a/b"))
    fs.rmdir(p("a"))
    _write_file(fs, p("g"), b"G")
    fs.link(p("g"), p("h"))
    out.append(_run(lambda: fs.link(p("g"), p("f"))))
    out.append(_run(lambda: fs.link(p("nope"), p("x"))))
    fs.replace(p("g"), p("h"))                     # one inode: nothing happens
    out.append(sorted(fs.listdir(root)))
    fs.replace(p("g"), p("f"))
    out.append((sorted(fs.listdir(root)), fs.read_file(p("f")), fs.read_file(p("h"))))
    out.append(_run(lambda: fs.replace(p("nope"), p("f"))))
    fs.makedirs(p("dir"))
    out.append(_run(lambda: fs.replace(p("f"), p("dir"))))
    fs.unlink(p("h"))
    fs.fsync_dir(root)
    out.append(_run(lambda: fs.fsync_dir(p("f"))))
    out.append(_run(lambda: fs.fsync_dir(p("nope"))))
    out.append(sorted(fs.listdir(root)))
    return out


def test_crashfs_answers_like_the_real_file_system(tmp_path: Path) -> None:
    mem = CrashFS()
    mem.makedirs("/root")
    assert _script(mem, "/root") == _script(OS, str(tmp_path))
    assert mem.open_fds == 0


def test_unsupported_open_flags_are_refused_rather_than_misread() -> None:
    fs = CrashFS()
    with pytest.raises(ValueError, match="does not model"):
        fs.open("/f", os.O_RDWR | os.O_CREAT | os.O_APPEND)
