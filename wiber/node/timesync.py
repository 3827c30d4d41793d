"""The clock-sync exchange between a follower and its leader, carried beside Raft messages.

A follower sends `probe(t1)` with its wall clock; the leader answers `reply(t1, t2, t3)` with its
synced clock at receipt and at sending; the follower feeds (t1, t2, t3, t4) to its
`OffsetEstimator` (docs/design.md section 5). These frames travel in the same multipart message as the Raft
messages of the turn (piggybacked), and start with ``b"\\xc1T"``: 0xc1 is a byte msgpack never
uses, so they cannot be mistaken for a Raft message.
"""

from __future__ import annotations

import math
import struct

MARKER = b"\xc1T"
_PROBE = struct.Struct(">Bd")
_REPLY = struct.Struct(">Bddd")
_KIND_PROBE = 1
_KIND_REPLY = 2
MAX_EPOCH_S = 1e11
"""Times past this (the year 5138) are refused, as are negative and non-finite ones."""


def is_timesync(frame: bytes) -> bool:
    """Returns: whether `frame` is a clock-sync frame."""
    return frame[:2] == MARKER


def probe(sender: str, t1: float) -> bytes:
    """Returns: the frame asking the leader for its time, sent at `t1` (sender's wall clock)."""
    return MARKER + _PROBE.pack(_KIND_PROBE, t1) + sender.encode()


def reply(sender: str, t1: float, t2: float, t3: float) -> bytes:
    """Returns: the leader's answer: the probe's t1, its synced time at receipt (t2) and at sending (t3)."""
    return MARKER + _REPLY.pack(_KIND_REPLY, t1, t2, t3) + sender.encode()


def parse(frame: bytes) -> tuple[str, float, float | None, float | None]:
    """Returns: (sender, t1, t2, t3), with t2 and t3 None for a probe.

    Raises:
        ValueError: not a well-formed clock-sync frame (input from the network), or a time that is not
            a finite number of epoch seconds within `MAX_EPOCH_S`.
    """
    sender, t1, t2, t3 = _parse(frame)
    for t in (t1, t2, t3):
        if t is not None and not (math.isfinite(t) and 0.0 <= t <= MAX_EPOCH_S):
            raise ValueError(f"bad clock-sync frame: time {t!r} is not epoch seconds")
    return sender, t1, t2, t3


def _parse(frame: bytes) -> tuple[str, float, float | None, float | None]:
    """Returns: (sender, t1, t2, t3) as the frame holds them. Raises: ValueError."""
    if not is_timesync(frame) or len(frame) < 3:
        raise ValueError("not a clock-sync frame")
    kind = frame[2]
    try:
        if kind == _KIND_PROBE:
            _, t1 = _PROBE.unpack_from(frame, 2)
            return frame[2 + _PROBE.size:].decode(), t1, None, None
        if kind == _KIND_REPLY:
            _, t1, t2, t3 = _REPLY.unpack_from(frame, 2)
            return frame[2 + _REPLY.size:].decode(), t1, t2, t3
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"bad clock-sync frame: {exc}") from None
    raise ValueError(f"unknown clock-sync kind {kind}")
