"""Helpers shared by the storage tests: entries, file listings, reading a store's whole state."""

from __future__ import annotations

import os
from typing import Any

from wiber.raft.messages import Entry, EntryKind
from wiber.storage.format import RECORD_OVERHEAD


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    """Returns: entries ``lo..hi-1`` of `term`, each with `size` bytes of data naming its index."""
    out = []
    for i in range(lo, hi):
        kind = EntryKind.NOOP if i % 7 == 0 else EntryKind.NORMAL
        out.append(Entry(i, term, kind, f"{i}:{term}:".encode().ljust(size, b".")[:size]))
    return out


def record_size(size: int = 10) -> int:
    """Returns: bytes one record of an `ents(..., size=size)` entry takes on disk."""
    return RECORD_OVERHEAD + size


def segment_files(directory: Any) -> list[str]:
    """Returns: the segment file names in `directory`, in index order."""
    return sorted(n for n in os.listdir(directory) if n.startswith("log-") and n.endswith(".seg"))


def snapshot_files(directory: Any) -> list[str]:
    """Returns: the snapshot file names in `directory` (temp files excluded)."""
    return sorted(n for n in os.listdir(directory) if n.startswith("snapshot-") and n.endswith(".snap"))


def read_all(storage: Any) -> dict[str, Any]:
    """Returns: everything the read side of `storage` shows, for comparing two storages."""
    first, last = storage.first_index(), storage.last_index()
    return {
        "first": first,
        "last": last,
        "snapshot": storage.snapshot(),
        "terms": [storage.term(i) for i in range(first - 1, last + 1)],
        "entries": storage.entries(first, last + 1),
    }


def dir_bytes(directory: Any) -> dict[str, bytes]:
    """Returns: every file's content in `directory` by name (to prove a refusal changed nothing)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out
