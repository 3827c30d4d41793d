"""The peer wire codec: round trips and untrusted input (its speed: `python -m bench.codec`)."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiber.raft.messages import (
    MAX_ENTRIES_PER_MESSAGE,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
    SnapshotMeta,
    TimeoutNow,
)
from wiber.raft import wire
from wiber.raft.membership import Membership
from wiber.raft.wire import MAX_FRAME_BYTES, MalformedMessage, decode_message, encode_message

ids = st.text(min_size=1, max_size=12)
nat = st.integers(0, 2**63 - 1)
small = st.integers(0, 10_000)


memberships = st.builds(Membership.of, st.sets(ids, min_size=1, max_size=5), st.sets(ids, max_size=3)).filter(
    lambda m: not m.voters & m.learners)


def memberships_data(draw: st.DrawFn) -> bytes:
    """Returns: a CONFIG entry's data (a valid membership: the decoder refuses anything else)."""
    return draw(memberships).encode()


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    prev = draw(small)
    terms = draw(st.lists(small, max_size=20))
    entries = tuple(Entry(prev + 1 + k, t, kind, memberships_data(draw) if kind is EntryKind.CONFIG
                          else draw(st.binary(max_size=30)))
                    for k, t in enumerate(terms) for kind in (draw(st.sampled_from(EntryKind)),))
    return AppendEntries(draw(nat), draw(ids), draw(ids), prev, draw(nat), entries, draw(nat), draw(nat))


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, nat, ids, ids, nat, nat, st.booleans(), st.booleans()),
    st.builds(RequestVoteReply, nat, ids, ids, st.booleans(), st.booleans()),
    append_entries(),
    st.builds(AppendEntriesReply, nat, ids, ids, st.booleans(), nat, nat, nat, nat),
    st.builds(TimeoutNow, nat, ids, ids),
    st.builds(InstallSnapshot, nat, ids, ids, st.builds(SnapshotMeta, nat, nat), st.binary(max_size=100),
              st.none() | memberships),
    st.builds(InstallSnapshotReply, nat, ids, ids, nat),
)


@given(messages)
def test_round_trip(msg: Message) -> None:
    """decode(encode(m)) == m for every message type."""
    assert decode_message(encode_message(msg)) == msg


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_raise_only_malformed(frame: bytes) -> None:
    """Garbage never raises anything but MalformedMessage (a subclass of ValueError)."""
    with contextlib.suppress(MalformedMessage):
        decode_message(frame)


def mutated(msg: Message, data: st.DataObject, min_flips: int) -> bytes:
    """Returns: `msg`'s frame with `min_flips` to 4 bytes changed, then cut and 0-3 bytes appended."""
    frame = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(min_flips, 4))):
        k = data.draw(st.integers(0, len(frame) - 1))
        frame[k] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    return bytes(frame[:cut]) + data.draw(st.binary(max_size=3))


@given(messages, st.data())
def test_mutated_frames_raise_only_malformed(msg: Message, data: st.DataObject) -> None:
    """A valid frame with bytes flipped, cut or appended decodes or raises MalformedMessage."""
    with contextlib.suppress(MalformedMessage):
        decode_message(mutated(msg, data, 1))


def _decoded_by(path_limit: int, frame: bytes) -> Message | str:
    """Returns: what decode_message makes of `frame` with `ONE_CALL_BYTES` at `path_limit`."""
    saved = wire.ONE_CALL_BYTES
    wire.ONE_CALL_BYTES = path_limit
    try:
        return decode_message(frame)
    except MalformedMessage:
        return "malformed"
    finally:
        wire.ONE_CALL_BYTES = saved


@given(messages, st.data())
def test_the_one_call_path_and_the_unpacker_path_agree(msg: Message, data: st.DataObject) -> None:
    """Small frames skip the Unpacker: both paths accept and refuse exactly the same frames."""
    frame = mutated(msg, data, 0)
    assert _decoded_by(0, frame) == _decoded_by(MAX_FRAME_BYTES, frame)


any_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)


@given(st.integers(0, 9), st.lists(any_value, max_size=9))
def test_well_formed_msgpack_of_the_wrong_shape_is_malformed(tag: int, fields: list[object]) -> None:
    """Any msgpack array starting with a tag decodes only if every field has the right type."""
    try:
        frame = msgpack.packb([tag, *fields], use_bin_type=True)
    except (OverflowError, ValueError):
        return
    with contextlib.suppress(MalformedMessage):
        decode_message(frame)


@pytest.mark.parametrize("body", [
    [3, 1, "n1", "n2", 0, 0, [], 0, True],  # bool where an int is expected
    [3, 1, "n1", "n2", -1, 0, [], 0, 0],  # negative index
    [3, 1, "n1", "n2", 0, 0, [1, 0], 0, 0],  # entries not in triples
    [3, 1, "n1", "n2", 0, 0, [1, 3, b""], 0, 0],  # unknown entry kind
    [3, 1, "n1", "n2", 0, 0, [1, 2, b""], 0, 0],  # a CONFIG entry that is not a membership
    [6, 1, "n1", "n2", 1, 1, b"", b"\x90"],  # a snapshot's membership that is not one
    [3, 1, "n1", "n2", 0, 0, [1, 0, "text"], 0, 0],  # str where bytes are expected
    [4, 1, "n1", "n2", 1, 0, 0, 0, 0],  # int where a bool is expected
    [1, 1, "n1", "", 0, 0, False, False],  # empty id
    [1, 1, "n1", "x" * 256, 0, 0, False, False],  # id too long
    [5, 1, "n1"],  # missing field
    [5, 1, "n1", "n2", 0],  # extra field
    [99, 1, "n1", "n2"],  # unknown tag
    [True, 1, "n1", "n2"],  # bool tag
    {"tag": 5},  # not an array
    [],
])
def test_bad_shapes(body: object) -> None:
    """Specific wrong shapes and types are refused."""
    with pytest.raises(MalformedMessage):
        decode_message(msgpack.packb(body, use_bin_type=True))


def test_bounds() -> None:
    """Oversized frames, trailing bytes, non-bytes and lying length headers are refused cheaply."""
    with pytest.raises(MalformedMessage):
        decode_message(b"\x00" * (MAX_FRAME_BYTES + 1))
    good = encode_message(TimeoutNow(1, "n1", "n2"))
    with pytest.raises(MalformedMessage):
        decode_message(good + b"\x00")
    with pytest.raises(MalformedMessage):
        decode_message("text")  # type: ignore[arg-type]
    with pytest.raises(MalformedMessage):
        decode_message(b"\xdd\x03\xff\xff\xff")  # array32 header claiming 67M elements
    with pytest.raises(MalformedMessage):
        decode_message(b"\xc6\xff\xff\xff\xff")  # bin32 header claiming 4 GiB
    too_many = [1, 0, b""] * (MAX_ENTRIES_PER_MESSAGE + 1)
    with pytest.raises(MalformedMessage, match="entries in one message"):
        decode_message(msgpack.packb([3, 1, "n1", "n2", 0, 0, too_many, 0, 0], use_bin_type=True))


def test_a_thousand_entry_batch_round_trips() -> None:
    """1000 entries of 100 bytes survive encode + decode (their speed is measured by bench/codec.py)."""
    entries = tuple(Entry(k + 1, 3, EntryKind.NORMAL, bytes(100)) for k in range(1000))
    msg = AppendEntries(3, "n1", "n2", 0, 0, entries, 900, 0)
    assert decode_message(encode_message(msg)) == msg


def test_encode_refuses_non_contiguous_batches() -> None:
    """The codec implies indexes, so a batch with a hole is a bug, refused at the sender."""
    bad = AppendEntries(1, "n1", "n2", 0, 0, (Entry(2, 1, EntryKind.NORMAL, b""),), 0, 0)
    with pytest.raises(ValueError):
        encode_message(bad)
    with pytest.raises(TypeError):
        encode_message("not a message")  # type: ignore[arg-type]
