"""The file operations Wiber's storage uses, behind one small interface.

Every byte Wiber keeps on disk goes through a `FileSystem`: the Raft log (`wiber.storage.durable`),
the topic segments and their checkpoints (`wiber.storage.topics`). In a node it is `OsFileSystem`,
a thin layer over `os`; the test suite swaps in a crash-consistent in-memory one that forgets, at a
simulated power loss, every write and every directory entry that was not fsynced (in the spirit of
Pebble's strict VFS and LazyFS). That is how the suite proves the fsyncs are where they must be.

The calls mirror POSIX, with the durability rules POSIX gives and the storage code relies on:

* `pwrite` puts bytes in the page cache; only `fsync` of that file makes them durable.
* A file's *name* (its creation, `replace`, `link` or `unlink`) is durable only after
  `fsync_dir` of its directory.
* `replace` is atomic: a reader sees the old file or the new one.

Paths are plain strings; errors are `OSError` with an errno, as from `os`.
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["FileSystem", "OsFileSystem", "OS", "makedirs_durably"]


class FileSystem(Protocol):
    """The file operations of Wiber's storage (POSIX semantics; see the module docstring)."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """Open (or, with ``os.O_CREAT``, create) `path`. Returns: a file descriptor."""
        ...

    def close(self, fd: int) -> None:
        """Close `fd`."""
        ...

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """Write `data` at `offset` (not durable until `fsync`). Returns: the bytes written."""
        ...

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Returns: up to `size` bytes at `offset` (fewer at the end of the file)."""
        ...

    def fsync(self, fd: int) -> None:
        """Make everything written to `fd` durable (its name needs `fsync_dir`)."""
        ...

    def ftruncate(self, fd: int, size: int) -> None:
        """Cut (or extend with zeros) the file to `size` bytes (not durable until `fsync`)."""
        ...

    def file_size(self, fd: int) -> int:
        """Returns: the current size of the open file `fd`."""
        ...

    def read_file(self, path: str) -> bytes:
        """Returns: the whole content of `path`."""
        ...

    def replace(self, src: str, dst: str) -> None:
        """Rename `src` over `dst` atomically (durable after `fsync_dir`)."""
        ...

    def link(self, src: str, dst: str) -> None:
        """Make `dst` a hard link to `src` (durable after `fsync_dir`)."""
        ...

    def unlink(self, path: str) -> None:
        """Remove the name `path` (durable after `fsync_dir`)."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Returns: the names in directory `path`, in no particular order."""
        ...

    def exists(self, path: str) -> bool:
        """Returns: whether `path` names a file or directory."""
        ...

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create directory `path` and its missing parents (no error if it exists)."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove the empty directory `path`."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make the names in directory `path` (creations, renames, removals) durable."""
        ...


class OsFileSystem:
    """`FileSystem` over the operating system's files: what every node uses."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):  # a pwrite may write less than asked (signals, huge buffers)
            done += os.pwrite(fd, view[done:], offset + done)
        return done

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def file_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        # Level by level: os.makedirs gives missing parents the default mode, not `mode`.
        if os.path.isdir(path):
            return
        parent = os.path.dirname(os.path.abspath(path))
        if parent != os.path.abspath(path) and not os.path.exists(parent):
            self.makedirs(parent, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def makedirs_durably(fs: FileSystem, path: str, mode: int, fsync: bool) -> int:
    """Create directory `path` and its missing parents, then fsync each new directory's parent, since
    a new directory's name is durable only then (skipped when `fsync` is False).

    Returns: how many directories were created (each one parent fsync, done or skipped).
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not fs.exists(current) and current not in missing:
        missing.append(current)
        current = os.path.dirname(current)
    if missing:
        fs.makedirs(path, mode)
        for created in reversed(missing):
            if fsync:
                fs.fsync_dir(os.path.dirname(created))
    return len(missing)


OS: FileSystem = OsFileSystem()
"""The one `OsFileSystem` every node uses (it holds no state)."""
