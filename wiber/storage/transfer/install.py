"""Switching a complete staging directory in as the target's files, journaled so a crash leaves old or new."""

from __future__ import annotations

import os

import msgpack

from wiber.storage.fs import FileSystem
from wiber.storage.transfer.frames import (
    JOURNAL_SUFFIX,
    JOURNAL_VERSION,
    MAX_FILES,
    TransferError,
    _Reader,
    check_name,
)


def _parent(path: str) -> str:
    return os.path.dirname(os.path.normpath(path)) or "."


def _remove_tree(fs: FileSystem, path: str) -> None:
    """Remove file or directory `path` with everything under it (gone already is fine).

    Not atomic: a crash midway leaves part of it, which only ever happens to garbage (a leftover
    of staging, an old file) that the next call removes.
    """
    try:
        names = fs.listdir(path)
    except NotADirectoryError:
        fs.unlink(path)
        return
    except FileNotFoundError:
        return
    for name in names:
        _remove_tree(fs, os.path.join(path, name))
    fs.rmdir(path)


def _link_name(names: set[str]) -> str:
    """Returns: the name in the target directory through which each staged file is linked into
    place: one that no new file has (so it is removed with the old files), the same every time
    for the same names (so recovery finds it)."""
    n = 0
    while f".install-link-{n}" in names:
        n += 1
    return f".install-link-{n}"


def _encode_journal(staging_dir: str, names: list[str]) -> bytes:
    packed: bytes = msgpack.packb([JOURNAL_VERSION, staging_dir, names], use_bin_type=True)
    return packed


def _decode_journal(data: bytes) -> tuple[str, list[str]]:
    """Returns: (staging dir, new file names) of an install journal.

    Raises:
        TransferError: not a journal `_encode_journal` wrote (it is written whole, then renamed
            into place, so this means the disk corrupted it).
    """
    try:
        reader = _Reader(data, 0, 4096, 0)
        reader.array("install journal", 3, 3)
        version, staging = reader.value(), reader.value()
        count = reader.array("install journal names", 0, MAX_FILES)
        names = [check_name(reader.value()) for _ in range(count)]
        reader.end()
    except TransferError:
        raise
    except Exception as exc:  # msgpack raises many types; every one of them means bad input
        raise TransferError(f"malformed install journal: {type(exc).__name__}: {exc}") from None
    if version != JOURNAL_VERSION or type(staging) is not str or not staging:
        raise TransferError("malformed install journal")
    return staging, names


def recover_install(fs: FileSystem, target_dir: str) -> str:
    """Finish an interrupted `install_staged` of `target_dir`, so that it holds the complete old
    set of files (the switch had not committed) or the complete new one (it had). Call it at
    start, before reading `target_dir`; `install_staged` calls it too. Idempotent, and a crash
    during it is recovered by calling it again (see the module docstring).

    Returns: what it did: ``"clean"`` (nothing to do), ``"rolled forward"`` (a committed switch
    completed), ``"discarded"`` (a journal that was never committed removed).

    Raises:
        TransferError: the journal is unreadable (a corrupted disk).
    """
    target = os.path.normpath(target_dir)
    journal, parent = target + JOURNAL_SUFFIX, _parent(target)
    if not fs.exists(journal):
        if fs.exists(journal + ".tmp"):
            fs.unlink(journal + ".tmp")
            fs.fsync_dir(parent)
            return "discarded"
        return "clean"
    staging, names = _decode_journal(fs.read_file(journal))
    keep = set(names)
    link = os.path.join(target, _link_name(keep))
    for name in names:  # 1. every staged file linked into place (replacing an old one)
        src = os.path.join(staging, name)
        if not fs.exists(src):
            continue  # moved before a crash (staging is removed only once the target is durable)
        if fs.exists(link):
            fs.unlink(link)
        fs.link(src, link)
        fs.replace(link, os.path.join(target, name))
    for name in fs.listdir(target):  # 2. the old files (and the link name, if left) removed
        if name not in keep:
            _remove_tree(fs, os.path.join(target, name))
    fs.fsync_dir(target)  # every new name durable in T, before staging loses one
    _remove_tree(fs, staging)  # 3. the staging names, now second links of the new files
    fs.fsync_dir(_parent(staging))
    fs.unlink(journal)  # 4. done
    fs.fsync_dir(parent)
    return "rolled forward"


def install_staged(fs: FileSystem, staging_dir: str, target_dir: str) -> None:
    """Make the files of the complete, durable `staging_dir` (a `Receiver`'s, once `complete`)
    the files of `target_dir`, replacing those it held, so that a crash at any point leaves, once
    `recover_install` ran, the complete old set or the complete new one; `staging_dir` is removed.

    `staging_dir` must be on the same file system as `target_dir` (its files are hard-linked,
    never copied), hold only regular files, and be neither inside `target_dir` nor contain it.
    Paths are kept in the journal as given: give the same ones after a restart.

    Raises:
        TransferError: `staging_dir` and `target_dir` overlap, or staging holds a directory.
        FileNotFoundError: `staging_dir` does not exist.
    """
    staging, target = os.path.normpath(staging_dir), os.path.normpath(target_dir)
    journal = target + JOURNAL_SUFFIX
    a, b = os.path.abspath(staging), os.path.abspath(target)
    if os.path.commonpath([a, b]) in (a, b) or staging in (journal, journal + ".tmp"):
        raise TransferError(f"staging dir {staging_dir!r} overlaps target dir {target_dir!r}")
    recover_install(fs, target)
    names = fs.listdir(staging)
    for name in names:
        check_name(name)
        try:
            fs.listdir(os.path.join(staging, name))
        except NotADirectoryError:
            continue
        raise TransferError(f"staging dir {staging_dir!r} holds a directory {name!r}")
    parent = _parent(target)
    if not fs.exists(target):
        fs.makedirs(target, 0o700)
        fs.fsync_dir(parent)
    fd = fs.open(journal + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fs.pwrite(fd, _encode_journal(staging_dir, sorted(names)), 0)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    fs.replace(journal + ".tmp", journal)
    fs.fsync_dir(parent)  # the commit point
    recover_install(fs, target)
