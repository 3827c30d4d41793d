"""The follower's end of a transfer: pulls the manifest's files into a staging directory, resumably."""

from __future__ import annotations

import os
import zlib
from collections import deque
from dataclasses import dataclass, field

from wiber.storage.fs import FileSystem
from wiber.storage.transfer.frames import (
    CHUNK_BYTES,
    MAX_CRC_FAILURES,
    MAX_WINDOW,
    Abort,
    Data,
    Done,
    FileInfo,
    Frame,
    Manifest,
    ManifestFrame,
    Request,
    _abort,
    _check_sender,
)
from wiber.storage.transfer.install import _parent, _remove_tree


@dataclass(slots=True, eq=False)
class _Staged:
    """The Receiver's state of one file of the manifest."""

    info: FileInfo
    written: int = 0  # bytes [0, written) are in the staged file and folded into `crc`
    crc: int = 0
    next_offset: int = 0  # first byte not yet requested
    held: dict[int, bytes] = field(default_factory=dict)  # arrived ahead of a gap: offset -> bytes
    fd: int | None = None
    done: bool = False  # complete, CRC checked, fsynced
    failures: int = 0  # CRC mismatches so far


class Receiver:
    """The follower's end: fetches a manifest's files into `staging_dir`, resumably.

    Feed it the frames of the transfer (`on_manifest`, `on_data`, `on_abort`, or `on_frame` for
    any) and send the frames each call returns to the transfer's sender; call `resend` when
    nothing arrived for a while. Once `complete`, every file is in `staging_dir` with the
    manifest's size and CRC, durable, and `install_staged` may switch it into place.

    Attributes:
        manifest, peer, transfer_id: the transfer under way (None before the first MANIFEST).
        complete: every file is staged, checked and durable.
        error: why the transfer stopped (an ABORT from the sender, a file failing its CRC
            `MAX_CRC_FAILURES` times), or None. A MANIFEST starts it again.
        dropped: frames refused: stale (another transfer, already received), forged or not
            asked for. Never written.
        refetched: files fetched again from 0 after their CRC did not match.
        bytes_written: payload bytes written to staged files.

    Raises (from `on_manifest`, `on_data`): OSError from the file system (disk full, I/O error):
    the node's storage failure, not the peer's fault. The transfer stops first (`error` says
    why); a MANIFEST restarts it, resuming from what is staged.
    """

    def __init__(self, fs: FileSystem, node_id: str, staging_dir: str, window: int = 4) -> None:
        _check_sender(node_id)
        if type(window) is not int or not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1 to {MAX_WINDOW}, got {window!r}")
        self.fs = fs
        self.node_id = node_id
        self.staging_dir = staging_dir
        self.window = window
        self.manifest: Manifest | None = None
        self.peer: str | None = None
        self.transfer_id: int | None = None
        self.complete = False
        self.error: str | None = None
        self.dropped = 0
        self.refetched = 0
        self.bytes_written = 0
        self._files: dict[str, _Staged] = {}
        self._queue: deque[str] = deque()  # files with bytes not yet requested, in fetch order
        self._outstanding: dict[tuple[str, int], int] = {}  # (name, offset) -> length asked for
        self._held = 0  # chunks held ahead of a gap, in all files
        self._remaining = 0  # files not done

    # ---------------------------------------------------------------- frames in

    @property
    def active(self) -> bool:
        """Returns: whether a transfer is under way (started, not complete, not stopped)."""
        return self.manifest is not None and not self.complete and self.error is None

    def on_frame(self, frame: Frame) -> list[bytes]:
        """Dispatch any decoded frame addressed to the follower. Returns: frames for the sender."""
        if isinstance(frame, ManifestFrame):
            return self.on_manifest(frame)
        if isinstance(frame, Data):
            return self.on_data(frame)
        if isinstance(frame, Abort):
            self.on_abort(frame)
            return []
        self.dropped += 1  # REQUEST and DONE are for the Sender
        return []

    def on_manifest(self, m: ManifestFrame) -> list[bytes]:
        """Start the transfer `m` announces, resume it, or replace the current one with it.

        The same transfer announced again (same sender, transfer id and manifest) is answered with
        its outstanding REQUESTs, or DONE if complete. Anything else (re)starts from what the
        staging directory holds (see the module docstring: kept, resumed, emptied, removed).

        Returns: the first REQUEST frames (up to `window`), plus DONE if nothing is missing.
        """
        same = (self.manifest is not None and m.sender == self.peer
                and m.transfer_id == self.transfer_id and m.manifest == self.manifest)
        if same and self.complete:
            return [self._done_frame()]
        if same and self.error is None:
            return self.resend()
        prior, self._files = self._files, {}
        self._outstanding.clear()
        self._queue.clear()
        self._held = 0
        self._remaining = 0
        self.manifest, self.peer, self.transfer_id = m.manifest, m.sender, m.transfer_id
        self.complete = False
        self.error = None
        try:
            self.fs.makedirs(self.staging_dir, 0o700)
            on_disk = set(self.fs.listdir(self.staging_dir))
            for name in on_disk:
                if m.manifest.file(name) is None:
                    _remove_tree(self.fs, os.path.join(self.staging_dir, name))
            for info in m.manifest.files:
                st = self._adopt(info, prior.pop(info.name, None), info.name in on_disk)
                self._files[info.name] = st
                if not st.done:
                    self._remaining += 1
                    if st.next_offset < info.size:
                        self._queue.append(info.name)
            return self._next_frames()
        except OSError as exc:
            self._stop(f"local I/O error: {exc}")
            raise
        finally:
            for old in prior.values():
                self._close(old)

    def on_data(self, d: Data) -> list[bytes]:
        """Write `d` if it answers an outstanding REQUEST of the current transfer exactly (its
        sender, transfer id, file, offset and length); else drop it and count it in `dropped`.

        Returns: the next REQUEST frames; DONE once every file is complete; an ABORT if a file
        failed its CRC `MAX_CRC_FAILURES` times.
        """
        key = (d.name, d.offset)
        if (not self.active or d.sender != self.peer or d.transfer_id != self.transfer_id
                or self._outstanding.get(key) != len(d.data)):
            self.dropped += 1
            return []
        del self._outstanding[key]
        st = self._files[d.name]
        if d.offset != st.written:
            st.held[d.offset] = d.data
            self._held += 1
            return self._fill()
        try:
            self._write(st, d.data)
            while st.written in st.held:
                self._held -= 1
                self._write(st, st.held.pop(st.written))
            if st.written == st.info.size:
                abort = self._file_complete(st)
                if abort is not None:
                    return [abort]
            return self._next_frames()
        except OSError as exc:
            self._stop(f"local I/O error: {exc}")
            raise

    def _next_frames(self) -> list[bytes]:
        """Returns: new REQUESTs while the window has room, and DONE once nothing is missing."""
        frames = self._fill()
        if self._remaining == 0:
            frames.append(self._finish())
        return frames

    def on_abort(self, a: Abort) -> None:
        """Stop the current transfer if `a` is its sender's ABORT (staged files stay, for a
        resume); else count `a` as dropped."""
        if not self.active or a.sender != self.peer or a.transfer_id != self.transfer_id:
            self.dropped += 1
            return
        self._stop(f"sender aborted: {a.reason}")

    def resend(self) -> list[bytes]:
        """Returns: every outstanding REQUEST again, plus new ones if the window has room (for
        the node to call when nothing arrived for a while: a lost frame, a reconnect)."""
        if not self.active:
            return []
        assert self.transfer_id is not None
        frames = [Request(self.node_id, self.transfer_id, name, offset, length).encode()
                  for (name, offset), length in self._outstanding.items()]
        return frames + self._fill()

    @property
    def outstanding(self) -> int:
        """Returns: REQUESTs sent and not answered yet."""
        return len(self._outstanding)

    @property
    def bytes_staged(self) -> int:
        """Returns: bytes of the manifest's files already staged (in order), for progress."""
        return sum(st.info.size if st.done else st.written for st in self._files.values())

    def close(self) -> None:
        """Close every staged file still open (a closed Receiver may be replaced by a new one on
        the same staging directory: it resumes)."""
        for st in self._files.values():
            self._close(st)

    # ---------------------------------------------------------------- inside

    def _path(self, name: str) -> str:
        return os.path.join(self.staging_dir, name)

    def _adopt(self, info: FileInfo, old: _Staged | None, on_disk: bool) -> _Staged:
        """Returns: the state of file `info` at the start of a transfer, from what this Receiver
        knew of it (`old`, for a file of the same name in the previous manifest) and what the
        staging directory holds."""
        if old is not None and on_disk and old.info == info:
            # Same file in both manifests: keep what is staged, without reading it back. What was
            # held ahead of a gap is dropped (its requests are gone with the old transfer).
            old.held.clear()
            old.next_offset = old.written
            return old
        st = _Staged(info)
        try:
            if old is not None:
                self._close(old)
                if on_disk:  # the previous manifest's file of that name: other content
                    st.fd = self._open(info.name)
                    self.fs.ftruncate(st.fd, 0)
            elif on_disk:
                self._resume(st)
            if info.size == 0:  # nothing to fetch: create it (the CRC of no bytes is 0, as checked)
                if st.fd is None:
                    st.fd = self._open(info.name)
                self._seal(st)
            elif not st.done:
                self._close(st)  # opened again on its first write: few descriptors stay open
        except OSError:
            if st.fd is not None:  # not in `_files` yet: `_stop` would not close it
                fd, st.fd = st.fd, None
                try:
                    self.fs.close(fd)
                except OSError:
                    pass
            raise
        return st

    def _resume(self, st: _Staged) -> None:
        """Take what the staging directory already holds of file `st` (from an earlier Receiver):
        read it back for its CRC; all of it with the right CRC -> done; a prefix -> fetch the
        rest (its CRC is checked at the end); anything else -> empty it."""
        try:
            st.fd = fd = self._open(st.info.name)
        except IsADirectoryError:
            _remove_tree(self.fs, self._path(st.info.name))
            st.fd = self._open(st.info.name)
            return
        length = self.fs.file_size(fd)
        if length > st.info.size:
            self.fs.ftruncate(fd, 0)
            return
        crc = done = 0
        while done < length:
            piece = self.fs.pread(fd, min(CHUNK_BYTES, length - done), done)
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            done += len(piece)
        if done == st.info.size and crc != st.info.crc32:
            crc = done = 0
        if done != length:
            self.fs.ftruncate(fd, done)
        st.written = st.next_offset = done
        st.crc = crc
        if done == st.info.size and done > 0:
            self._seal(st)

    def _open(self, name: str) -> int:
        return self.fs.open(self._path(name), os.O_RDWR | os.O_CREAT, 0o600)

    def _close(self, st: _Staged) -> None:
        if st.fd is not None:
            fd, st.fd = st.fd, None
            self.fs.close(fd)

    def _write(self, st: _Staged, data: bytes) -> None:
        """Write `data` at the end of `st`'s staged prefix and fold it into its CRC."""
        if st.fd is None:
            st.fd = self._open(st.info.name)
        self.fs.pwrite(st.fd, data, st.written)
        st.crc = zlib.crc32(data, st.crc)
        st.written += len(data)
        self.bytes_written += len(data)

    def _seal(self, st: _Staged) -> None:
        """File `st` is staged whole with the right CRC: make it durable and close it."""
        assert st.fd is not None
        self.fs.fsync(st.fd)
        self._close(st)
        st.done = True

    def _file_complete(self, st: _Staged) -> bytes | None:
        """The last byte of `st` is written: seal it if its CRC matches, else empty it and fetch
        it again. Returns: an ABORT frame if it failed `MAX_CRC_FAILURES` times, else None."""
        if st.crc == st.info.crc32:
            self._seal(st)
            self._remaining -= 1
            return None
        st.failures += 1
        self.refetched += 1
        assert st.fd is not None
        self.fs.ftruncate(st.fd, 0)
        st.written = st.next_offset = st.crc = 0
        if st.failures >= MAX_CRC_FAILURES:
            reason = f"{st.info.name!r} failed its CRC {st.failures} times"
            self._stop(reason)
            assert self.transfer_id is not None
            return _abort(self.node_id, self.transfer_id, reason).encode()
        self._queue.appendleft(st.info.name)
        return None

    def _fill(self) -> list[bytes]:
        """Returns: new REQUEST frames, while fewer than `window` chunks are unsettled."""
        frames: list[bytes] = []
        if not self.active:
            return frames
        assert self.transfer_id is not None
        while self._queue and len(self._outstanding) + self._held < self.window:
            st = self._files[self._queue[0]]
            if st.next_offset >= st.info.size:
                self._queue.popleft()
                continue
            length = min(CHUNK_BYTES, st.info.size - st.next_offset)
            self._outstanding[(st.info.name, st.next_offset)] = length
            frames.append(Request(self.node_id, self.transfer_id, st.info.name, st.next_offset,
                                  length).encode())
            st.next_offset += length
        return frames

    def _finish(self) -> bytes:
        """Every file is done: make the staged names durable. Returns: the DONE frame."""
        self.fs.fsync_dir(self.staging_dir)
        self.fs.fsync_dir(_parent(self.staging_dir))
        self.complete = True
        return self._done_frame()

    def _done_frame(self) -> bytes:
        assert self.transfer_id is not None
        return Done(self.node_id, self.transfer_id).encode()

    def _stop(self, reason: str) -> None:
        """Stop the transfer: nothing outstanding or held, every file closed (errors closing
        ignored: this also runs on the way out of a failing call)."""
        self.error = reason
        self._outstanding.clear()
        self._queue.clear()
        self._held = 0
        for st in self._files.values():
            st.held.clear()
            try:
                self._close(st)
            except OSError:
                pass
