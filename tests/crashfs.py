"""`CrashFS`: an in-memory `wiber.storage.fs.FileSystem` that forgets, at a simulated power loss,
everything that was not made durable, by the strictest reading of POSIX.

The model
---------
* A file is an inode with two contents: the *current* one (what reads see) and the *durable* one
  (what survives a crash). ``fsync(fd)`` copies current to durable. Hard links share the inode.
* A directory is an inode with two name tables, current and durable. Every name change (creating
  a file or a directory, ``replace``, ``link``, ``unlink``, ``rmdir``) edits the current table only;
  ``fsync_dir`` of *that* directory copies it to the durable one. So a file created in a directory
  that was never fsynced vanishes at a crash even if its data was fsynced, and a ``replace`` not
  followed by ``fsync_dir`` reverts to the old name (with the old inode's durable content).
* `crash()` is the power loss: starting from the root, each directory keeps its durable names and
  each file its durable content; whatever is no longer reachable is gone, and every open descriptor
  becomes invalid (using one raises ``OSError(EBADF)``). The same object is then the rebooted
  machine's file system, ready for the storage to be reopened on it.

Two optional relaxations make a crash less tidy, as real disks are: ``crash(torn=rng)`` keeps, per
file, a random prefix of the bytes appended since its last fsync (a torn write); ``crash(names=rng)``
keeps, per directory, a random prefix of its name changes since its last fsync (in order, each
``replace`` whole, as a journaling file system commits them).

Crash and fault injection
-------------------------
`mutations` counts the mutating calls (``open`` with ``O_CREAT`` or ``O_TRUNC``, ``pwrite``,
``fsync``, ``ftruncate``, ``replace``, ``link``, ``unlink``, ``makedirs``, ``rmdir``, ``fsync_dir``).
``crash_after(n)`` lets n more of them run and makes the next one raise `SimulatedCrash` (without
effect); from then on every call raises `SimulatedCrash` until the test calls `crash()`. To try every
crash point: run the workload once to count its mutations, then rerun it with ``crash_after(k)`` for
each k. ``fail_after(n, err)`` makes a call fail with ``OSError(err)`` instead (a full disk).

Limits: regular files and directories only (no symlinks, no renaming of directories); open flags
beyond the access mode, ``O_CREAT``, ``O_EXCL``, ``O_TRUNC`` and ``O_CLOEXEC`` are refused; file modes
are ignored. Not thread-safe.
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
from dataclasses import dataclass

__all__ = ["CrashFS", "SimulatedCrash"]

_SUPPORTED_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


class SimulatedCrash(BaseException):
    """The power went out during this call. A BaseException, so that storage code, which turns an
    `OSError` into a failure it handles, lets it through; the test catches it and calls `crash()`."""


class _File:
    """A file's inode: what reads see now, and what a crash leaves."""

    __slots__ = ("data", "durable")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable = b""


class _Dir:
    """A directory's inode: its names now, the names a crash leaves, and the changes in between."""

    __slots__ = ("durable", "entries", "pending")

    def __init__(self) -> None:
        self.entries: dict[str, _Node] = {}
        self.durable: dict[str, _Node] = {}
        self.pending: list[dict[str, _Node | None]] = []   # each: name -> new inode, or None (removed)


_Node = _File | _Dir


@dataclass
class _Open:
    """An open file description: the inode (not the name: it survives a rename) and the access mode."""

    node: _File
    path: str
    readable: bool
    writable: bool


@dataclass
class _Fault:
    """An injected error: after `remaining` more successful `op` calls, the next one raises `err`."""

    op: str
    remaining: int
    err: int
    sticky: bool


def _error(code: int, path: str | None = None) -> OSError:
    """Returns: the OSError `os` would raise (``OSError(ENOENT, ...)`` is a FileNotFoundError)."""
    if path is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), path)


def _normalize(path: str) -> str:
    """Returns: `path` as an absolute, normalized path (relative paths are taken from ``/``)."""
    if not isinstance(path, str):
        raise TypeError(f"CrashFS paths are str, not {type(path).__name__}")
    norm = posixpath.normpath(posixpath.join("/", path))
    return "/" + norm.lstrip("/")


class CrashFS:
    """A strict crash-consistent in-memory `FileSystem` (see the module docstring)."""

    def __init__(self) -> None:
        self._root = _Dir()
        self._fds: dict[int, _Open] = {}
        self._stale: set[int] = set()        # descriptors a crash invalidated
        self._next_fd = 3                    # never reused, so a stale descriptor stays recognizable
        self._mutations = 0
        self._crash_in: int | None = None    # mutating calls still allowed before the simulated crash
        self._down = False                   # the crash fired; only crash() brings the machine back
        self._fault: _Fault | None = None
        self._crashes = 0

    # -- crash and fault injection ------------------------------------------------------------------

    @property
    def mutations(self) -> int:
        """How many mutating calls have run (since creation, across crashes)."""
        return self._mutations

    @property
    def crashes(self) -> int:
        """How many times `crash()` was called."""
        return self._crashes

    @property
    def open_fds(self) -> int:
        """How many descriptors are open (to check that storage code closes what it opens)."""
        return len(self._fds)

    def crash_after(self, n: int | None) -> None:
        """Let `n` more mutating calls run, then make the next one raise `SimulatedCrash` (None: never)."""
        if n is not None and n < 0:
            raise ValueError(f"crash_after needs n >= 0, not {n}")
        self._crash_in = n

    def fail_after(self, n: int | None, err: int = errno.ENOSPC, *, op: str = "pwrite",
                   sticky: bool = True) -> None:
        """Let `n` more `op` calls succeed, then make the next raise ``OSError(err)`` without effect.

        Args:
            n: successful calls to let through first; None removes the fault.
            err: the errno (ENOSPC: a full disk; EIO: a failing one).
            op: the method name whose calls fail ("pwrite", "fsync", "fsync_dir", "open", ...).
            sticky: every later `op` call fails too (a full disk stays full); False: only one fails.
        """
        if n is not None and n < 0:
            raise ValueError(f"fail_after needs n >= 0, not {n}")
        self._fault = None if n is None else _Fault(op, n, err, sticky)

    def crash(self, torn: random.Random | None = None, *, names: random.Random | None = None) -> CrashFS:
        """Lose power: keep only what is durable, invalidate every descriptor, and come back up.

        Args:
            torn: if given, each file also keeps a random prefix (chosen with `torn`) of the bytes
                appended since its last fsync, as a torn write may leave.
            names: if given, each directory also keeps a random prefix (chosen with `names`) of
                its name changes since its last ``fsync_dir``, in order.

        Returns:
            This file system, ready for the storage to be reopened on it. Pending `crash_after`
            and `fail_after` injections are cleared.
        """
        self._stale.update(self._fds)
        self._fds.clear()
        self._down = False
        self._crash_in = None
        self._fault = None
        self._crashes += 1
        self._restore_dir(self._root, torn, names, set())
        return self

    def _restore_dir(self, d: _Dir, torn: random.Random | None, names: random.Random | None,
                     seen: set[int]) -> None:
        """Reset `d` and, recursively, everything reachable from it, to what survives the crash."""
        entries = dict(d.durable)
        if names is not None and d.pending:
            for change in d.pending[:names.randint(0, len(d.pending))]:
                _apply(entries, change)
        d.entries, d.durable, d.pending = entries, dict(entries), []
        for node in entries.values():
            if id(node) in seen:
                continue   # a second hard link to a file already restored
            seen.add(id(node))
            if isinstance(node, _Dir):
                self._restore_dir(node, torn, names, seen)
            else:
                _restore_file(node, torn)

    def _mutate(self, op: str) -> None:
        """Count a mutating call, or fire the injected crash or fault instead of letting it run."""
        self._check_up()
        if self._crash_in is not None:
            if self._crash_in == 0:
                self._crash_in = None
                self._down = True
                raise SimulatedCrash(f"simulated power loss at mutating call #{self._mutations + 1} ({op})")
            self._crash_in -= 1
        self._mutations += 1
        fault = self._fault
        if fault is not None and fault.op == op:
            if fault.remaining > 0:
                fault.remaining -= 1
            else:
                if not fault.sticky:
                    self._fault = None
                raise _error(fault.err)

    def _check_up(self) -> None:
        if self._down:
            raise SimulatedCrash("the machine is down (a simulated crash fired): call crash() first")

    # -- inspection (for tests) ---------------------------------------------------------------------

    def files(self, *, durable: bool = False) -> dict[str, bytes]:
        """Returns: every regular file's content by path: as reads see it now or, with `durable`,
        as a strict `crash()` would leave it."""
        self._check_up()
        out: dict[str, bytes] = {}
        stack: list[tuple[str, _Dir]] = [("/", self._root)]
        while stack:
            prefix, d = stack.pop()
            for name, node in (d.durable if durable else d.entries).items():
                path = posixpath.join(prefix, name)
                if isinstance(node, _Dir):
                    stack.append((path, node))
                else:
                    out[path] = node.durable if durable else bytes(node.data)
        return out

    # -- the FileSystem interface -------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """Open (or, with O_CREAT, create) the file `path`; mode is ignored. Returns: a descriptor."""
        if flags & ~_SUPPORTED_FLAGS:
            raise ValueError(f"CrashFS does not model open flags {flags & ~_SUPPORTED_FLAGS:#o}")
        if flags & (os.O_CREAT | os.O_TRUNC):
            self._mutate("open")
        else:
            self._check_up()
        access = flags & os.O_ACCMODE
        readable = access in (os.O_RDONLY, os.O_RDWR)
        writable = access in (os.O_WRONLY, os.O_RDWR)
        path = _normalize(path)
        if path == "/":
            raise _error(errno.EISDIR, path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            if not flags & os.O_CREAT:
                raise _error(errno.ENOENT, path)
            node = _File()
            self._change(parent, {name: node})
        elif flags & os.O_CREAT and flags & os.O_EXCL:
            raise _error(errno.EEXIST, path)
        elif isinstance(node, _Dir):
            raise _error(errno.EISDIR, path)
        elif flags & os.O_TRUNC and writable:
            del node.data[:]
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = _Open(node, path, readable, writable)
        return fd

    def close(self, fd: int) -> None:
        """Close `fd` (closing changes nothing durable)."""
        self._check_up()
        self._open(fd)
        del self._fds[fd]

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """Write `data` at `offset`, zero-filling any gap past the end. Returns: len(data)."""
        self._mutate("pwrite")
        f = self._open(fd, write=True)
        if offset < 0:
            raise _error(errno.EINVAL, f.path)
        buf = f.node.data
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
        return len(data)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Returns: up to `size` bytes at `offset`."""
        self._check_up()
        f = self._open(fd, read=True)
        if offset < 0 or size < 0:
            raise _error(errno.EINVAL, f.path)
        return bytes(f.node.data[offset:offset + size])

    def fsync(self, fd: int) -> None:
        """Make the file's current content durable (its name is `fsync_dir`'s business)."""
        self._mutate("fsync")
        node = self._open(fd).node
        node.durable = bytes(node.data)

    def ftruncate(self, fd: int, size: int) -> None:
        """Cut the file to, or extend it with zeros to, `size` bytes."""
        self._mutate("ftruncate")
        f = self._open(fd)
        if size < 0 or not f.writable:   # Linux: EINVAL (not EBADF) on a read-only descriptor
            raise _error(errno.EINVAL, f.path)
        buf = f.node.data
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    def file_size(self, fd: int) -> int:
        """Returns: the current size of the file open on `fd`."""
        self._check_up()
        return len(self._open(fd).node.data)

    def read_file(self, path: str) -> bytes:
        """Returns: the current content of the file `path`."""
        self._check_up()
        path = _normalize(path)
        node = self._lookup(path)
        if node is None:
            raise _error(errno.ENOENT, path)
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, path)
        return bytes(node.data)

    def replace(self, src: str, dst: str) -> None:
        """Rename the file `src` over `dst`, atomically (one name change when in one directory)."""
        self._mutate("replace")
        src, dst = _normalize(src), _normalize(dst)
        sparent, sname = self._parent(src)
        node = sparent.entries.get(sname)
        if node is None:
            raise _error(errno.ENOENT, src)
        dparent, dname = self._parent(dst)
        old = dparent.entries.get(dname)
        if old is node:
            return   # POSIX: renaming a file onto a hard link of itself does nothing
        if isinstance(old, _Dir):
            raise _error(errno.EISDIR, dst)
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, src)   # CrashFS renames files only (module docstring)
        if sparent is dparent:
            self._change(sparent, {dname: node, sname: None})
        else:   # two directories, each durable at its own fsync_dir (POSIX promises nothing more)
            self._change(dparent, {dname: node})
            self._change(sparent, {sname: None})

    def link(self, src: str, dst: str) -> None:
        """Make `dst` a second name of the file `src` (one inode, one content)."""
        self._mutate("link")
        src, dst = _normalize(src), _normalize(dst)
        node = self._lookup(src)
        if node is None:
            raise _error(errno.ENOENT, src)
        if isinstance(node, _Dir):
            raise _error(errno.EPERM, src)
        dparent, dname = self._parent(dst)
        if dname in dparent.entries:
            raise _error(errno.EEXIST, dst)
        self._change(dparent, {dname: node})

    def unlink(self, path: str) -> None:
        """Remove the name `path` (the inode lives on while a descriptor or another link holds it)."""
        self._mutate("unlink")
        path = _normalize(path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _error(errno.ENOENT, path)
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, path)
        self._change(parent, {name: None})

    def listdir(self, path: str) -> list[str]:
        """Returns: the names in directory `path`."""
        self._check_up()
        path = _normalize(path)
        node = self._lookup(path)
        if node is None:
            raise _error(errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        return list(node.entries)

    def exists(self, path: str) -> bool:
        """Returns: whether `path` names a file or a directory."""
        self._check_up()
        try:
            return self._lookup(_normalize(path)) is not None
        except NotADirectoryError:
            return False

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create directory `path` and its missing parents; each new name needs its parent's fsync_dir."""
        self._mutate("makedirs")
        path = _normalize(path)
        d = self._root
        walked = ""
        for name in path.split("/")[1:] if path != "/" else []:
            walked += "/" + name
            node = d.entries.get(name)
            if node is None:
                node = _Dir()
                self._change(d, {name: node})
            elif not isinstance(node, _Dir):
                raise _error(errno.EEXIST if walked == path else errno.ENOTDIR, walked)
            d = node

    def rmdir(self, path: str) -> None:
        """Remove the empty directory `path`."""
        self._mutate("rmdir")
        path = _normalize(path)
        if path == "/":
            raise _error(errno.EBUSY, path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _error(errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        if node.entries:
            raise _error(errno.ENOTEMPTY, path)
        self._change(parent, {name: None})

    def fsync_dir(self, path: str) -> None:
        """Make the current names of directory `path` durable (not its own name in its parent)."""
        self._mutate("fsync_dir")
        path = _normalize(path)
        node = self._lookup(path)
        if node is None:
            raise _error(errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        node.durable = dict(node.entries)
        node.pending.clear()

    # -- internals ----------------------------------------------------------------------------------

    def _open(self, fd: int, *, read: bool = False, write: bool = False) -> _Open:
        """Returns: the open file of `fd`, checked for the access wanted (EBADF as in POSIX)."""
        f = self._fds.get(fd)
        if f is None:
            if fd in self._stale:
                raise OSError(errno.EBADF, "Bad file descriptor (opened before a simulated crash)")
            raise _error(errno.EBADF)
        if (read and not f.readable) or (write and not f.writable):
            raise _error(errno.EBADF, f.path)
        return f

    def _lookup(self, path: str) -> _Node | None:
        """Returns: the inode at the normalized `path`, or None. Raises: NotADirectoryError."""
        node: _Node = self._root
        walked = ""
        for name in path.split("/")[1:] if path != "/" else []:
            if not isinstance(node, _Dir):
                raise _error(errno.ENOTDIR, walked)
            walked += "/" + name
            child = node.entries.get(name)
            if child is None:
                return None
            node = child
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        """Returns: the directory holding the normalized `path`, and its last component."""
        head, name = posixpath.split(path)
        if not name:
            raise _error(errno.EINVAL, path)
        parent = self._lookup(head)
        if parent is None:
            raise _error(errno.ENOENT, path)
        if not isinstance(parent, _Dir):
            raise _error(errno.ENOTDIR, path)
        return parent, name

    @staticmethod
    def _change(d: _Dir, change: dict[str, _Node | None]) -> None:
        """Apply one atomic name change to `d`'s current names and remember it until `fsync_dir`."""
        _apply(d.entries, change)
        d.pending.append(change)


def _apply(entries: dict[str, _Node], change: dict[str, _Node | None]) -> None:
    """Apply a name change (name -> inode, or None for a removal) to a name table."""
    for name, node in change.items():
        if node is None:
            entries.pop(name, None)
        else:
            entries[name] = node


def _restore_file(f: _File, torn: random.Random | None) -> None:
    """Reset `f` to its durable content, plus, with `torn`, a random prefix of what was appended."""
    survivor = f.durable
    base = len(survivor)
    if torn is not None and len(f.data) > base and f.data.startswith(survivor):
        survivor = bytes(f.data[:base + torn.randint(0, len(f.data) - base)])
    f.data = bytearray(survivor)
    f.durable = survivor
