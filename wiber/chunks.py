"""Splitting large peer messages (InstallSnapshot) into chunks of at most 1 MiB, and joining them.

A snapshot can be far larger than what should travel as one ZeroMQ message: a 200 MB frame would
be held whole in both nodes' queues and block the loop while it is copied. The sender cuts the
encoded message into chunks, each its own ZeroMQ message; the receiver joins them and steps the
whole message once every chunk has arrived. A lost chunk is not resent here: the Raft core retries
the snapshot when its reply does not come.

Chunk frame: ``MARKER`` (0xc1, a byte msgpack never uses, so no Raft message starts with it,
then ``C``), then a header of transfer id (u64), chunk number (u32) and chunk count (u32), then the payload.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

MARKER = b"\xc1C"
CHUNK_BYTES = 1 << 20
_HEADER = struct.Struct(">QII")
#: Transfers being joined at once; an older one is dropped when a newer one starts.
MAX_TRANSFERS = 4


def is_chunk(frame: bytes) -> bool:
    """Returns: whether `frame` is a chunk (rather than a whole message)."""
    return frame[:2] == MARKER


def split(message: bytes, transfer_id: int, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """Returns: `message` as chunk frames of at most `chunk_bytes` payload each."""
    pieces = [message[i:i + chunk_bytes] for i in range(0, len(message), chunk_bytes)] or [b""]
    count = len(pieces)
    return [MARKER + _HEADER.pack(transfer_id, n, count) + piece for n, piece in enumerate(pieces)]


class Joiner:
    """Collects chunks per transfer and gives back each message once it is whole."""

    def __init__(self) -> None:
        self._transfers: OrderedDict[int, dict[int, bytes]] = OrderedDict()
        self._counts: dict[int, int] = {}

    def add(self, frame: bytes) -> bytes | None:
        """Take one chunk frame. Returns: the whole message once its last chunk is in, else None.

        Raises:
            ValueError: the frame is not a well-formed chunk (input from the network).
        """
        if len(frame) < 2 + _HEADER.size or not is_chunk(frame):
            raise ValueError("not a chunk frame")
        transfer_id, number, count = _HEADER.unpack_from(frame, 2)
        if count < 1 or number >= count or count > 1 << 16:
            raise ValueError(f"bad chunk header {number}/{count}")
        parts = self._transfers.get(transfer_id)
        if parts is None:
            parts = self._transfers[transfer_id] = {}
            self._counts[transfer_id] = count
            while len(self._transfers) > MAX_TRANSFERS:
                old, _ = self._transfers.popitem(last=False)
                del self._counts[old]
        elif self._counts[transfer_id] != count:
            raise ValueError("chunk count changed within a transfer")
        parts[number] = frame[2 + _HEADER.size:]
        if len(parts) < count:
            return None
        del self._transfers[transfer_id]
        del self._counts[transfer_id]
        return b"".join(parts[n] for n in range(count))
