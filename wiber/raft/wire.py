"""The peer wire format of Raft messages: msgpack arrays with a type tag first.

Theory of operation
-------------------
A frame is one msgpack array ``[tag, term, frm, to, *fields]`` (tags in `_TAG`). `AppendEntries`
carries its entries as one flat array ``[term, kind, data, term, kind, data, ...]``: their indexes
are implied (``prev_index + 1``, ``+ 2``, ...), so a decoded batch is contiguous by construction
and costs three msgpack objects per entry.

Frames come from the network and are untrusted. `decode_message` bounds the unpacker (frames over
`MAX_FRAME_BYTES` are refused before unpacking; every string, binary and array length is bounded by
the frame's own length, so a 5-byte header cannot make msgpack allocate gigabytes), checks the
exact shape and every field's type (`bool` is not accepted where an `int` is expected, nor the
reverse), refuses negative numbers and any above `MAX_NUMBER` (2**63 - 1), and raises
`MalformedMessage` — and nothing else — for any frame it does not accept. Semantic checks (entry
terms not above the message's term, and so on) belong to the core, which drops such messages.
"""

from __future__ import annotations

from typing import Any

import msgpack

from wiber.raft.membership import decode_membership
from wiber.raft.messages import (
    MAX_ENTRIES_PER_MESSAGE,
    MAX_NUMBER,
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

__all__ = ["MAX_FRAME_BYTES", "MAX_ID_LEN", "MalformedMessage", "decode_message", "encode_message"]

#: The largest frame `decode_message` accepts (the unpacker's `max_buffer_size`).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Frames up to this size are decoded with one `msgpack.unpackb` call instead of an Unpacker (small
#: enough that nested array headers, each bounded by the frame size, preallocate under a megabyte).
ONE_CALL_BYTES = 512
#: The longest node id accepted on the wire.
MAX_ID_LEN = 255

_REQUEST_VOTE = 1
_REQUEST_VOTE_REPLY = 2
_APPEND_ENTRIES = 3
_APPEND_ENTRIES_REPLY = 4
_TIMEOUT_NOW = 5
_INSTALL_SNAPSHOT = 6
_INSTALL_SNAPSHOT_REPLY = 7

_KINDS = (EntryKind.NORMAL, EntryKind.NOOP, EntryKind.CONFIG)
_CONFIG = int(EntryKind.CONFIG)


class MalformedMessage(ValueError):
    """A peer frame is not a well-formed Raft message (bad msgpack, shape, type or value)."""


def encode_message(msg: Message) -> bytes:
    """Encode one message into a frame.

    Returns:
        the msgpack bytes.
    Raises:
        TypeError: `msg` is not one of the Raft message classes.
        ValueError: an AppendEntries batch is not contiguous from `prev_index + 1` (a bug).
    """
    if isinstance(msg, AppendEntries):
        flat: list[Any] = []
        expect = msg.prev_index + 1
        for e in msg.entries:
            if e.index != expect:
                raise ValueError(f"AppendEntries entries must be contiguous from {msg.prev_index + 1}")
            expect += 1
            flat += (e.term, int(e.kind), e.data)
        body: list[Any] = [_APPEND_ENTRIES, msg.term, msg.frm, msg.to, msg.prev_index, msg.prev_term,
                           flat, msg.commit, msg.ctx]
    elif isinstance(msg, AppendEntriesReply):
        body = [_APPEND_ENTRIES_REPLY, msg.term, msg.frm, msg.to, msg.success, msg.match_index,
                msg.conflict_index, msg.conflict_term, msg.ctx]
    elif isinstance(msg, RequestVote):
        body = [_REQUEST_VOTE, msg.term, msg.frm, msg.to, msg.last_log_index, msg.last_log_term,
                msg.pre_vote, msg.force]
    elif isinstance(msg, RequestVoteReply):
        body = [_REQUEST_VOTE_REPLY, msg.term, msg.frm, msg.to, msg.granted, msg.pre_vote]
    elif isinstance(msg, TimeoutNow):
        body = [_TIMEOUT_NOW, msg.term, msg.frm, msg.to]
    elif isinstance(msg, InstallSnapshot):
        body = [_INSTALL_SNAPSHOT, msg.term, msg.frm, msg.to, msg.meta.index, msg.meta.term, msg.data]
        if msg.membership is not None:
            body.append(msg.membership.encode())
    elif isinstance(msg, InstallSnapshotReply):
        body = [_INSTALL_SNAPSHOT_REPLY, msg.term, msg.frm, msg.to, msg.match_index]
    else:
        raise TypeError(f"not a Raft message: {type(msg).__name__}")
    frame: bytes = msgpack.packb(body, use_bin_type=True)
    return frame


def decode_message(frame: bytes, max_frame: int = MAX_FRAME_BYTES) -> Message:
    """Decode one untrusted frame of at most `max_frame` bytes (a node passes what its largest
    entry needs when its configuration allows larger ones than `MAX_FRAME_BYTES`).

    Returns:
        the message.
    Raises:
        MalformedMessage: for anything that is not exactly a frame `encode_message` could produce
            (never any other exception).
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"frame must be bytes, not {type(frame).__name__}")
    size = len(frame)
    if size > max_frame:
        raise MalformedMessage(f"frame of {size} bytes is over the {max_frame}-byte limit")
    bounds: dict[str, Any] = {"raw": False, "use_list": True, "strict_map_key": True, "max_str_len": size,
                              "max_bin_len": size, "max_array_len": size, "max_map_len": size // 2,
                              "max_ext_len": size}
    try:
        if size <= ONE_CALL_BYTES:
            # The same bounds in one C call (acknowledgements, heartbeats, small appends); the
            # unpacker's setup costs more than decoding them. Trailing bytes raise ExtraData.
            return _build(msgpack.unpackb(frame, **bounds))
        unpacker = msgpack.Unpacker(max_buffer_size=max(size, 1), **bounds)
        unpacker.feed(frame)
        obj = unpacker.unpack()
        if unpacker.tell() != size:
            raise MalformedMessage("trailing bytes after the message")
        return _build(obj)
    except MalformedMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises a zoo of types for bad input: all mean "malformed"
        raise MalformedMessage(f"undecodable frame: {type(exc).__name__}: {exc}") from None


def _int(value: Any, what: str) -> int:
    """Returns: `value` if it is an int (not a bool) in [0, MAX_NUMBER]. Raises: MalformedMessage."""
    if type(value) is not int or not 0 <= value <= MAX_NUMBER:
        raise MalformedMessage(f"{what} must be an integer from 0 to 2**63 - 1")
    return value


def _bool(value: Any, what: str) -> bool:
    """Returns: `value` if it is a bool. Raises: MalformedMessage."""
    if type(value) is not bool:
        raise MalformedMessage(f"{what} must be a boolean")
    return value


def _id(value: Any, what: str) -> str:
    """Returns: `value` if it is a non-empty str of at most MAX_ID_LEN chars. Raises: MalformedMessage."""
    if type(value) is not str or not 0 < len(value) <= MAX_ID_LEN:
        raise MalformedMessage(f"{what} must be a node id (1-{MAX_ID_LEN} characters)")
    return value


def _bytes(value: Any, what: str) -> bytes:
    """Returns: `value` if it is bytes. Raises: MalformedMessage."""
    if type(value) is not bytes:
        raise MalformedMessage(f"{what} must be bytes")
    return value


_ARITY = {
    _REQUEST_VOTE: 8,
    _REQUEST_VOTE_REPLY: 6,
    _APPEND_ENTRIES: 9,
    _APPEND_ENTRIES_REPLY: 9,
    _TIMEOUT_NOW: 4,
    _INSTALL_SNAPSHOT: 7,
    _INSTALL_SNAPSHOT_REPLY: 5,
}


def _build(obj: Any) -> Message:
    """Returns: the message an unpacked frame stands for. Raises: MalformedMessage."""
    if type(obj) is not list or not obj:
        raise MalformedMessage("a message must be a non-empty array")
    tag = obj[0]
    if type(tag) is not int or tag not in _ARITY:
        raise MalformedMessage("unknown message type")
    if len(obj) != _ARITY[tag] and not (tag == _INSTALL_SNAPSHOT and len(obj) == 8):  # (+ membership)
        raise MalformedMessage(f"message type {tag} needs {_ARITY[tag]} fields, got {len(obj)}")
    term = _int(obj[1], "term")
    frm = _id(obj[2], "frm")
    to = _id(obj[3], "to")
    if tag == _APPEND_ENTRIES:
        prev_index = _int(obj[4], "prev_index")
        prev_term = _int(obj[5], "prev_term")
        flat = obj[6]
        if type(flat) is not list or len(flat) % 3:
            raise MalformedMessage("entries must be an array of (term, kind, data) triples")
        if len(flat) > 3 * MAX_ENTRIES_PER_MESSAGE:
            raise MalformedMessage(f"more than {MAX_ENTRIES_PER_MESSAGE} entries in one message")
        if prev_index + len(flat) // 3 > MAX_NUMBER:
            raise MalformedMessage("entry indexes past 2**63 - 1")
        entries = []
        index = prev_index
        kinds = _KINDS
        for k in range(0, len(flat), 3):
            e_term, e_kind, e_data = flat[k], flat[k + 1], flat[k + 2]
            if type(e_term) is not int or not 0 <= e_term <= MAX_NUMBER:
                raise MalformedMessage("entry term must be an integer from 0 to 2**63 - 1")
            if type(e_kind) is not int or not 0 <= e_kind < len(kinds):
                raise MalformedMessage("entry kind must be 0 (normal), 1 (noop) or 2 (config)")
            if type(e_data) is not bytes:
                raise MalformedMessage("entry data must be bytes")
            if e_kind == _CONFIG:
                try:
                    decode_membership(e_data)
                except ValueError as exc:
                    raise MalformedMessage(f"a CONFIG entry's data: {exc}") from None
            index += 1
            entries.append(Entry(index, e_term, kinds[e_kind], e_data))
        return AppendEntries(term, frm, to, prev_index, prev_term, tuple(entries),
                             _int(obj[7], "commit"), _int(obj[8], "ctx"))
    if tag == _APPEND_ENTRIES_REPLY:
        return AppendEntriesReply(term, frm, to, _bool(obj[4], "success"), _int(obj[5], "match_index"),
                                  _int(obj[6], "conflict_index"), _int(obj[7], "conflict_term"),
                                  _int(obj[8], "ctx"))
    if tag == _REQUEST_VOTE:
        return RequestVote(term, frm, to, _int(obj[4], "last_log_index"), _int(obj[5], "last_log_term"),
                           _bool(obj[6], "pre_vote"), _bool(obj[7], "force"))
    if tag == _REQUEST_VOTE_REPLY:
        return RequestVoteReply(term, frm, to, _bool(obj[4], "granted"), _bool(obj[5], "pre_vote"))
    if tag == _TIMEOUT_NOW:
        return TimeoutNow(term, frm, to)
    if tag == _INSTALL_SNAPSHOT:
        meta = SnapshotMeta(_int(obj[4], "snapshot index"), _int(obj[5], "snapshot term"))
        membership = None
        if len(obj) > 7:
            try:
                membership = decode_membership(_bytes(obj[7], "snapshot membership"))
            except ValueError as exc:
                raise MalformedMessage(f"snapshot membership: {exc}") from None
        return InstallSnapshot(term, frm, to, meta, _bytes(obj[6], "snapshot data"), membership)
    return InstallSnapshotReply(term, frm, to, _int(obj[4], "match_index"))
