"""The errors of the durable Raft log: what refuses a start, and what refuses writes."""

from __future__ import annotations

import errno

from wiber.errors import NodeStartError, StorageError

__all__ = ["CorruptLog", "DirectoryLocked", "StorageFailure", "describe"]


class CorruptLog(NodeStartError):
    """The data directory holds damage that is not a torn last write; the node must not start.

    Attributes:
        path: the damaged file.
        position: the byte offset of the damage in it.
        problem: what is wrong there.
    """

    def __init__(self, path: str, position: int, problem: str, directory: str) -> None:
        self.path = path
        self.position = position
        self.problem = problem
        super().__init__(
            f"corrupt log: {path} at byte {position}: {problem}. Refusing to start, so that no "
            f"acknowledged data is silently lost. Move the data directory ({directory}) aside and keep "
            f"it. A node restarted empty catches up from the others, but it has forgotten its votes: "
            f"it rejoins safely only with every other node up and caught up, a stable leader, one node "
            f"at a time (docs/operations.md, \"Recovery\").")


class DirectoryLocked(NodeStartError):
    """Another DurableStorage (another process, or an unclosed one in this process) has the directory."""


class StorageFailure(StorageError):
    """The disk refused a write (disk full, I/O error); the storage now refuses every write.

    Attributes:
        errno: the errno of the first failure (None when refusing because of an earlier one).
    """

    def __init__(self, message: str, err: int | None = None) -> None:
        self.errno = err
        super().__init__(message)


def describe(exc: OSError) -> str:
    """Returns: e.g. ``No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text
