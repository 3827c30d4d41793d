"""The leader's end of a transfer: answers REQUESTs with DATA read from the snapshot's files."""

from __future__ import annotations

import os
from collections import OrderedDict

from wiber.storage.fs import FileSystem
from wiber.storage.transfer.frames import (
    CHUNK_BYTES,
    MAX_U64,
    Data,
    Manifest,
    ManifestFrame,
    Request,
    _abort,
    _check_int,
    _check_sender,
)


class Sender:
    """The leader's end of one transfer to one follower: answers REQUESTs with DATA from the files.

    Stateless about progress: each REQUEST is answered on its own (the Receiver keeps track), so
    answering the same one twice is harmless. Source files are opened on first use and at most
    `max_open` stay open (least recently used closed first); `close` closes them. The node routes
    REQUEST frames to the Sender of their transfer id and drops the Sender on DONE or ABORT. With
    `peer` set, REQUESTs from any other node are refused.

    Attributes:
        served: REQUESTs answered with DATA.
        refused: REQUESTs refused (another transfer id or peer, a name not in the manifest, a
            range outside the file): stale or forged; answered with nothing.
        failed: why the transfer cannot go on (a source file unreadable or shorter than the
            manifest says), or None.
    """

    def __init__(self, fs: FileSystem, node_id: str, transfer_id: int, manifest: Manifest,
                 source_dir: str, max_open: int = 4, peer: str | None = None) -> None:
        _check_sender(node_id)
        _check_int("transfer id", transfer_id, MAX_U64)
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.fs = fs
        self.node_id = node_id
        self.transfer_id = transfer_id
        self.manifest = manifest
        self.source_dir = source_dir
        self.max_open = max_open
        self.peer = peer
        self.served = 0
        self.refused = 0
        self.failed: str | None = None
        self._fds: OrderedDict[str, int] = OrderedDict()

    def manifest_frame(self) -> bytes:
        """Returns: the MANIFEST frame that starts (or, sent again, resumes) the transfer."""
        return ManifestFrame(self.node_id, self.transfer_id, self.manifest).encode()

    def on_request(self, req: Request) -> bytes | None:
        """Returns: the DATA frame answering `req`; an ABORT frame if the source cannot be read
        (see `failed`; every later REQUEST of the transfer gets it too); None if `req` is refused
        (see `refused`).

        Raises:
            OSError: only from closing a file descriptor; reading errors become an ABORT.
        """
        mine = req.transfer_id == self.transfer_id and self.peer in (None, req.sender)
        if mine and self.failed is not None:
            return _abort(self.node_id, self.transfer_id, self.failed).encode()  # (it may be lost)
        info = self.manifest.file(req.name)
        if (not mine or info is None
                or not 0 < req.length <= CHUNK_BYTES or req.offset + req.length > info.size):
            self.refused += 1
            return None
        try:
            data = self.fs.pread(self._fd(info.name), req.length, req.offset)
        except OSError as exc:
            return self._fail(f"cannot read {info.name!r}: {exc}")
        if len(data) != req.length:
            return self._fail(f"{info.name!r} is shorter than the manifest's {info.size} bytes")
        self.served += 1
        return Data(self.node_id, self.transfer_id, info.name, req.offset, data).encode()

    def _fd(self, name: str) -> int:
        """Returns: an open descriptor of source file `name`, opening it (and closing the least
        recently used one past `max_open`) if needed."""
        fd = self._fds.get(name)
        if fd is not None:
            self._fds.move_to_end(name)
            return fd
        fd = self.fs.open(os.path.join(self.source_dir, name), os.O_RDONLY)
        self._fds[name] = fd
        while len(self._fds) > self.max_open:
            _, old = self._fds.popitem(last=False)
            self.fs.close(old)
        return fd

    def _fail(self, reason: str) -> bytes:
        self.failed = reason
        self.close()
        return _abort(self.node_id, self.transfer_id, reason).encode()

    @property
    def open_files(self) -> int:
        """Returns: how many source files are open."""
        return len(self._fds)

    def close(self) -> None:
        """Close every open source file (the Sender may still answer; it reopens them)."""
        while self._fds:
            _, fd = self._fds.popitem()
            self.fs.close(fd)
