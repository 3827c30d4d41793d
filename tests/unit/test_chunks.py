"""Chunking of large peer messages (InstallSnapshot) into frames of at most 1 MiB."""

from __future__ import annotations

import os

import pytest

from wiber import chunks


def test_split_and_join_round_trip_in_any_order() -> None:
    message = os.urandom(3 * 1024 + 17)
    frames = chunks.split(message, transfer_id=7, chunk_bytes=1024)
    assert len(frames) == 4 and all(chunks.is_chunk(f) for f in frames)
    assert all(len(f) <= 1024 + 18 for f in frames)
    joiner = chunks.Joiner()
    order = [2, 0, 3]
    assert [joiner.add(frames[i]) for i in order] == [None, None, None]
    assert joiner.add(frames[1]) == message


def test_default_chunks_are_at_most_one_mebibyte() -> None:
    frames = chunks.split(b"x" * (5 * chunks.CHUNK_BYTES + 1), transfer_id=1)
    assert len(frames) == 6
    assert max(len(f) for f in frames) <= chunks.CHUNK_BYTES + 32


def test_interleaved_transfers_and_a_bounded_number_in_progress() -> None:
    joiner = chunks.Joiner()
    a = chunks.split(b"a" * 10, transfer_id=1, chunk_bytes=4)
    b = chunks.split(b"b" * 10, transfer_id=2, chunk_bytes=4)
    for fa, fb in zip(a[:-1], b[:-1]):
        assert joiner.add(fa) is None and joiner.add(fb) is None
    assert joiner.add(b[-1]) == b"b" * 10
    assert joiner.add(a[-1]) == b"a" * 10
    for tid in range(10, 10 + chunks.MAX_TRANSFERS + 2):  # abandoned transfers are dropped, oldest first
        joiner.add(chunks.split(b"zz", tid, chunk_bytes=1)[0])
    assert len(joiner._transfers) == chunks.MAX_TRANSFERS


@pytest.mark.parametrize("frame", [b"", b"\xc1C", b"\xc1C" + b"\x00" * 15, b"\x93abc",
                                   b"\xc1C" + (1).to_bytes(8, "big") + (5).to_bytes(4, "big") + (2).to_bytes(4, "big")])
def test_malformed_chunks_raise_value_error(frame: bytes) -> None:
    with pytest.raises(ValueError):
        chunks.Joiner().add(frame)
