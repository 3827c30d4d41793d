"""`SeqFile`: the seqs a client with a fixed `client_id` has handed out, kept on disk across restarts.

A session deduplicates by (client_id, seq): a restarted producer that numbered its publishes from 1
again would have its new messages answered as retries of old ones (``duplicate: true``) and never
stored. So the file holds the highest seq the client may have used; a client starts above it. Seqs
are reserved in blocks of `BLOCK` (one fsync per block, not per publish); a restart skips what was
reserved and not used, which a session does not mind (seqs need not be dense).

The file is replaced atomically (write, fsync, rename, fsync the directory): a crash leaves the old
number or the new one, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["BLOCK", "SeqFile", "SeqFileError"]

BLOCK: Final = 1024
"""Seqs reserved per write of the file."""
SEQ_MAX: Final = 2**63 - 1
"""Largest seq the wire takes."""


class SeqFileError(ValueError):
    """The seq file cannot be read as one number or cannot be written: the message says which file and why."""


class SeqFile:
    """The seqs of one fixed client_id: `first` is where this process starts, `reserve` keeps each
    seq it hands out covered by the file before the seq leaves."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        used = 0
        if self.path.exists():
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
            if not text.isdigit() or int(text) >= SEQ_MAX:
                raise SeqFileError(f"{self.path}: expected the highest seq used (an integer), found {text[:40]!r}; "
                                   f"delete the file only if no message was published under this client_id")
            used = int(text)
        self.first = used + 1
        """The first seq this process may use."""
        self.reserved = used
        """The highest seq the file covers."""

    def reserve(self, seq: int) -> None:
        """Make sure the file covers `seq` (writing the next block when it does not) before it is used.

        Raises: SeqFileError: the file could not be written (the seq must not be used then).
        """
        if seq <= self.reserved:
            return
        reserved = min(seq + BLOCK - 1, SEQ_MAX - 1)
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(temporary, "w", encoding="ascii") as out:
                out.write(f"{reserved}\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise SeqFileError(f"{self.path}: cannot record the seqs in use: {exc}") from exc
        self.reserved = reserved
