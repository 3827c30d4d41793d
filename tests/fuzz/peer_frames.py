"""Frame families of the raft port: forged and mutated Raft messages (`wiber.raft.wire`), snapshot
transfer frames (`wiber.storage.transfer.frames`) and clock-sync frames (`wiber.node.timesync`),
alone or several in one multipart message, as a peer's DEALER sends them (wiber/node/transport.py).

Forged messages name real node ids and terms near the cluster's: only then do they get past the
node's sender check into the Raft core, the broker and the snapshot receiver, where the bugs are.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib
from typing import Any, Callable, Final


from tests.fuzz import checkpoint_files, mutate, values
from tests.fuzz.client_frames import LAST_LAMPORTS, TOPICS
from tests.fuzz.sample import RAFT, Context, Sample
from wiber.broker.entry import ENTRY_FORMAT, MalformedEntry, PubOp, decode_entry, encode_entry
from wiber.node import timesync
from wiber.raft.messages import (
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
from wiber.raft.wire import MalformedMessage, decode_message, encode_message
from wiber.storage.transfer.frames import (
    DATA,
    DONE,
    MANIFEST,
    MANIFEST_VERSION,
    MARKER,
    REQUEST,
    Abort,
    Data,
    Done,
    FileInfo,
    Manifest,
    ManifestFrame,
    Request,
)

FAR_NUMBERS: Final = (2**31, 2**53, 2**62, 2**63 - 2, 2**63 - 1)
"""Large numbers the wire accepts (below 2**63): indexes a forged message may claim."""

LAST_TERMS: Final = 2**63 - 2**20
"""Terms from here to 2**63 - 1 leave the cluster fewer elections than it may need: a node that
takes one can never campaign again."""

FAR_TERMS: Final = (2**31, 2**53, 2**62)
"""Large terms a forged message may claim outside the byzantine families."""

SNAPSHOT_FILES: Final = ("index.db", "seg-00000001.dat", "seg-00000002.dat", "x")


# -------------------------------------------------------------------------------- Raft messages


def _number(rng: random.Random, near: int, far: tuple[int, ...] = FAR_NUMBERS) -> int:
    """Returns: a term or index near `near` most of the time, else 0, 1 or one of `far`."""
    pick = rng.random()
    if pick < 0.7:
        return min(2**63 - 1, max(0, near + rng.randint(-2, 3)))
    if pick < 0.85:
        return rng.choice((0, 1))
    return rng.choice(far)


def _term(rng: random.Random, ctx: Context) -> int:
    """Returns: a term near the cluster's most of the time, else 0, 1 or a far one well below
    `LAST_TERMS` (a cluster that takes it keeps 2**62 elections)."""
    return _number(rng, ctx.term, FAR_TERMS)


def within_trust(frame: bytes, ctx: Context) -> bytes:
    """Returns: `frame`, or the Raft message it decodes to made unable to break what Raft trusts
    its peers for (the byzantine families, `BYZANTINE`, send what this takes away).

    Raft believes its peers: a forged commit index commits forged entries on a follower, which
    then refuses the real leader's (they conflict below its commit) for good; a forged entry of
    the term the leader's entry at its index has passes the leader's consistency check, so the
    leader's own commit index commits it (and a later leader finds it conflicting, below the
    commit: that follower is stuck); forged entries of a term above the cluster's
    win an election with a log that lacks committed entries; forged granted votes elect a node
    that lacks them; forged acknowledgements (a successful AppendEntriesReply, an
    InstallSnapshotReply, or a follower's true answer to a forged heartbeat "from the leader"
    whose prev matches the follower's log where the leader's differs: the follower acknowledges
    it to the real leader) make a leader commit what no majority holds, and a follower that took it
    refuses every later leader's log below its commit (seen in runs: the leader resends the same
    append every 2 ms for good); a term in the last 2**20 (`LAST_TERMS`) leaves no election.
    Each of these stops a node or the cluster for good, as Byzantine faults do, which only keys
    (issue 15's CURVE) prevent, and not from a peer that has one. So here: a term not above
    ``max(2**62, cluster's + 3)`` (a random 63-bit one, taken, would leave the cluster's terms
    near `LAST_TERMS` for the rest of the run, where every later forgery is stale: the cluster
    climbs past 2**62 only by its own elections); an AppendEntries with commit 0, after (index, 0)
    (only (0, 0) matches: the log's start, which every log shares), with entries of term 0, which
    no real entry has (so they match nothing, are never committed and win no election), with
    lamports below `client_frames.LAST_LAMPORTS`, and, when it has entries, at a term above the
    cluster's (the follower's acknowledgement then goes to a node that leads no such term: no
    leader counts it for its own entries); a vote reply that does not grant; an append reply
    that rejects; a snapshot reply at index 0.
    """
    try:
        msg = decode_message(frame)
    except MalformedMessage:
        return frame
    tamed = msg
    if msg.term > max(FAR_TERMS[-1], ctx.term + 3):
        tamed = dataclasses.replace(msg, term=min(ctx.term + 1, 2**63 - 1))
    if isinstance(tamed, AppendEntries):
        entries = tuple(dataclasses.replace(e, term=0, data=_entry_within_room(e.data))
                        for e in tamed.entries)
        term = max(tamed.term, ctx.term + 1) if entries else tamed.term
        tamed = dataclasses.replace(tamed, term=term, commit=0, entries=entries, prev_term=0)
    if isinstance(tamed, RequestVoteReply):
        tamed = dataclasses.replace(tamed, granted=False)
    if isinstance(tamed, AppendEntriesReply):
        tamed = dataclasses.replace(tamed, success=False)
    if isinstance(tamed, InstallSnapshotReply):
        tamed = dataclasses.replace(tamed, match_index=0)
    return frame if tamed == msg else encode_message(tamed)


def _entry_within_room(data: bytes) -> bytes:
    """Returns: a broker entry's data, with lamports in the last ones lowered (see `LAST_LAMPORTS`)."""
    try:
        ts, ops = decode_entry(data)
    except MalformedEntry:
        return data
    if all(op.lamport < LAST_LAMPORTS for op in ops):
        return data
    return encode_entry(ts, [op._replace(lamport=min(op.lamport, 2**62)) for op in ops])


def _sender(rng: random.Random, ctx: Context) -> str:
    pick = rng.random()
    if pick < 0.85:
        return rng.choice(ctx.peers)
    if pick < 0.9:
        return ctx.target
    return rng.choice(("n9", "x" * 255, "é"))


def _entry_data(rng: random.Random, ctx: Context) -> bytes:
    """Returns: an entry's data: a real broker entry, one with boundary values, or garbage."""
    pick = rng.random()
    if pick < 0.4:
        ops = [PubOp(rng.choice(TOPICS), (values.random_bytes(rng, 64),), False,
                     lamport=rng.choice((0, 1, 2**62)))]
        return encode_entry(ctx.wall, ops)
    if pick < 0.8:
        op: list[Any] = [rng.choice(TOPICS), values.random_bytes(rng, 32), 0, rng.randrange(100)]
        if rng.random() < 0.5:
            op += ["fuzz-1", rng.randrange(1, 100), None]
        body: list[Any] = [ENTRY_FORMAT, ctx.wall, [op]]
        return _entry_within_room(values.pack(mutate.mutate_tree(rng, body)))
    return values.random_bytes(rng, 64)


def raft_message(rng: random.Random, ctx: Context) -> Message:
    """Returns: a Raft message of any of the seven types, from a real peer to the target mostly."""
    term = _term(rng, ctx)
    frm = _sender(rng, ctx)
    to = ctx.target if rng.random() < 0.9 else rng.choice(ctx.nodes + ("n9",))
    kind = rng.randrange(8)
    if kind in (0, 1):
        # From the start of the log (0, 0) always matches: its entries then meet the target's own.
        prev, prev_term = (0, 0) if rng.random() < 0.25 else (_number(rng, ctx.commit_index), _term(rng, ctx))
        count = rng.choice((0, 0, 1, 2, 5))
        if prev > 2**63 - 1 - count:
            count = 0
        entries = tuple(Entry(prev + 1 + k, min(term, _term(rng, ctx)),
                              rng.choice((EntryKind.NORMAL, EntryKind.NOOP)), _entry_data(rng, ctx))
                        for k in range(count))
        commit = rng.choice((prev + count, _number(rng, ctx.commit_index)))
        return AppendEntries(term, frm, to, prev, prev_term, entries, commit,
                             rng.choice((0, 1, rng.randrange(1 << 20))))
    if kind == 2:
        return AppendEntriesReply(term, frm, to, rng.random() < 0.5, _number(rng, ctx.commit_index),
                                  _number(rng, ctx.commit_index), _term(rng, ctx), rng.randrange(1 << 10))
    if kind in (3, 4):
        pre_vote, force = rng.choice(((False, False), (True, False), (False, True), (True, True)))
        return RequestVote(term, frm, to, _number(rng, ctx.commit_index), _term(rng, ctx), pre_vote, force)
    if kind == 5:
        return RequestVoteReply(term, frm, to, rng.random() < 0.5, rng.random() < 0.5)
    if kind == 6:
        return TimeoutNow(term, frm, to)
    if rng.random() < 0.5:
        return InstallSnapshotReply(term, frm, to, _number(rng, ctx.commit_index))
    return InstallSnapshot(term, frm, to, SnapshotMeta(_number(rng, ctx.commit_index), _term(rng, ctx)),
                           values.random_bytes(rng, 64))


# ------------------------------------------------------------------------------ snapshot transfer


def _transfer_id(rng: random.Random) -> int:
    return rng.choice((0, 1, 7, rng.getrandbits(64), 2**64 - 1))


def transfer_frame(rng: random.Random, ctx: Context) -> bytes:
    """Returns: a well-formed transfer frame of any kind, claimed by a real node (the leader, often)."""
    sender = ctx.leader if ctx.leader is not None and rng.random() < 0.6 else _sender(rng, ctx)
    tid = _transfer_id(rng)
    name = rng.choice(SNAPSHOT_FILES)
    kind = rng.randrange(5)
    if kind == 0:
        sizes = [rng.choice((0, 1, 100, 1 << 20, 2**63 - 1)) for _ in range(rng.choice((0, 1, 2, 3)))]
        files = tuple(FileInfo(SNAPSHOT_FILES[k], size, 0 if size == 0 else rng.getrandbits(32))
                      for k, size in enumerate(sizes))
        meta = values.pack(rng.choice((ctx.term, ctx.term + 1, 0, 2**62)))
        manifest = Manifest(_number(rng, ctx.commit_index + 10), _term(rng, ctx), meta, files)
        return ManifestFrame(sender, tid, manifest).encode()
    if kind == 1:
        return Request(sender, tid, name, rng.choice((0, 1 << 20, 2**62)), rng.choice((1, 1 << 20))).encode()
    if kind == 2:
        offset = rng.choice((0, 1, 1 << 20, 2**62))
        return Data(sender, tid, name, offset, values.random_bytes(rng, 256)).encode()
    if kind == 3:
        return Done(sender, tid).encode()
    return Abort(sender, tid, values.random_str(rng)[:64]).encode()


def forged_snapshot(rng: random.Random, ctx: Context) -> list[bytes]:
    """Returns: a whole transfer in one message: a MANIFEST "from the leader" at its term, then the
    DATA of every file at offset 0 (what the receiver asks for first), with matching CRCs: a
    follower stages it completely and may step it into its core (a garbage snapshot)."""
    sender = ctx.leader if ctx.leader is not None and rng.random() < 0.8 else rng.choice(ctx.peers)
    tid = rng.getrandbits(64)
    contents = {}
    for name in rng.sample(SNAPSHOT_FILES[:3], rng.randint(1, 3)):
        head = b"SQLite format 3\x00" if name == "index.db" and rng.random() < 0.5 else b""
        contents[name] = head + values.random_bytes(rng, 2048)
    files = tuple(FileInfo(name, len(data), zlib.crc32(data)) for name, data in contents.items())
    index = rng.choice((ctx.commit_index + rng.randint(1, 50), 2**62, 2**63 - 1))
    meta = values.pack(ctx.term if rng.random() < 0.8 else ctx.term + 1)
    manifest = Manifest(index, rng.choice((ctx.term, max(0, ctx.term - 1))), meta, files)
    frames = [ManifestFrame(sender, tid, manifest).encode()]
    frames += [Data(sender, tid, name, 0, data).encode() for name, data in contents.items()]
    return frames


def forged_checkpoint(rng: random.Random, ctx: Context, installable: bool = False) -> list[bytes]:
    """Returns: a whole transfer in one message, as `forged_snapshot`, of a real checkpoint's files
    with a wrong row, blob or segment (`checkpoint_files.mutated`): what gets past "not a database"
    into the follower's checks of a staged snapshot. Its index (`checkpoint_files.INDEX`) is at or
    below the follower's commit index, so one that passes the checks is discarded, never installed;
    `installable` moves it past the cluster's commit index instead (a byzantine forgery)."""
    sender = ctx.leader if ctx.leader is not None and rng.random() < 0.9 else rng.choice(ctx.peers)
    tid = rng.getrandbits(64)
    index, term = checkpoint_files.INDEX, checkpoint_files.TERM
    if installable:
        index, term = ctx.commit_index + rng.randint(20, 200), max(0, ctx.term - 1)
    contents = checkpoint_files.mutated(rng, (index, term) if installable else None)
    files = tuple(FileInfo(name, len(data), zlib.crc32(data)) for name, data in contents)
    manifest = Manifest(index, term, values.pack(ctx.term), files)
    frames = [ManifestFrame(sender, tid, manifest).encode()]
    frames += [Data(sender, tid, name, 0, data).encode() for name, data in contents if data]
    return frames


def _transfer_by_hand(rng: random.Random, ctx: Context) -> bytes:
    """Returns: a transfer frame packed by hand with out-of-range or mistyped fields (names with
    ``/`` or ``..``, sizes and offsets past 2**63, duplicate files), which the constructors refuse."""
    sender = ctx.leader or rng.choice(ctx.peers)
    kind = rng.choice((MANIFEST, REQUEST, DATA, DONE))
    tid: Any = rng.choice((2**64 - 1, -1, 1.5, None))
    name: Any = rng.choice(("../x", "/etc/passwd", ".", "..", "a/b", "", "x" * 256, "a\x00b", 7))
    if kind == MANIFEST:
        files = [[name, values.boundary_int(rng), values.boundary_int(rng)] for _ in range(rng.randint(0, 3))]
        if files and rng.random() < 0.5:
            files.append(list(files[0]))
        items: list[Any] = [MANIFEST, sender, rng.getrandbits(64),
                            [MANIFEST_VERSION, values.boundary_int(rng), values.boundary_int(rng),
                             values.pack(ctx.term), files]]
    elif kind == REQUEST:
        items = [REQUEST, sender, tid, name, values.boundary_int(rng), values.boundary_int(rng)]
    elif kind == DATA:
        items = [DATA, sender, tid, name, values.boundary_int(rng), values.random_bytes(rng, 64)]
    else:
        items = [DONE, sender, tid]
    return MARKER + values.pack(items)


# ------------------------------------------------------------------------------------ clock sync


def _clock_value(rng: random.Random, ctx: Context) -> float:
    pick = rng.random()
    if pick < 0.4:
        return ctx.wall + rng.uniform(-1, 1)
    return values.boundary_float(rng)


def timesync_frame(rng: random.Random, ctx: Context) -> bytes:
    """Returns: a clock probe or reply, from the leader mostly (only its replies become samples),
    with times that are right, absurd, infinite or NaN."""
    sender = ctx.leader if ctx.leader is not None and rng.random() < 0.7 else _sender(rng, ctx)
    if rng.random() < 0.3:
        return timesync.probe(sender, _clock_value(rng, ctx))
    return timesync.reply(sender, _clock_value(rng, ctx), _clock_value(rng, ctx), _clock_value(rng, ctx))


def _timesync_by_hand(rng: random.Random, ctx: Context) -> bytes:
    """Returns: a clock-sync frame with a wrong kind, a short body, or a sender that is not UTF-8."""
    kind = rng.choice((0, 1, 2, 3, 255))
    body = struct.pack(">Bddd", kind, *(_clock_value(rng, ctx) for _ in range(3)))
    body = body[:rng.choice((1, 9, 16, 25, 25, 25))]
    sender = rng.choice((b"", b"\xff\xfe", (ctx.leader or "n1").encode(), b"n1\x00"))
    return timesync.MARKER + body + sender


# ------------------------------------------------------------------------------------- families


def _one(family: str, frame: bytes) -> Sample:
    return Sample(RAFT, family, (frame,))


def random_bytes(rng: random.Random, ctx: Context) -> Sample:
    """Any bytes, now and then behind a transfer or clock-sync marker."""
    prefix = rng.choice((b"", b"", MARKER, timesync.MARKER))
    return _one("raft.random_bytes", prefix + values.random_bytes(rng, 2048))


def random_msgpack(rng: random.Random, ctx: Context) -> Sample:
    """A random value tree, or hand-built msgpack (huge declared lengths, deep nesting)."""
    frame = values.pack(values.tree(rng)) if rng.random() < 0.5 else values.crafted(rng)
    return _one("raft.random_msgpack", within_trust(frame, ctx))


def message(rng: random.Random, ctx: Context) -> Sample:
    """A forged, well-formed Raft message (encode_message) from a real peer, at terms near the
    cluster's, within what Raft can survive (`within_trust`)."""
    return _one("raft.message", within_trust(encode_message(raft_message(rng, ctx)), ctx))


def message_mutated(rng: random.Random, ctx: Context) -> Sample:
    """A forged Raft message with fields swapped for boundary values (2**63, 2**64 - 1, -1, floats,
    bools for ints), items dropped or added, or its bytes mutated."""
    frame = encode_message(raft_message(rng, ctx))
    mutated = mutate.mutate_packed(rng, frame) if rng.random() < 0.6 else mutate.mutate_bytes(rng, frame)
    return _one("raft.message_mutated", within_trust(mutated, ctx))


def far_term(rng: random.Random, ctx: Context) -> Sample:
    """(Byzantine) A forged Raft message at one of the last terms (`LAST_TERMS` to 2**63 - 1): a
    node that takes it has (almost) no election left."""
    msg = raft_message(rng, ctx)
    term = rng.choice((2**63 - 1, 2**63 - 2, LAST_TERMS, rng.randrange(LAST_TERMS, 2**63)))
    return _one("raft.far_term", encode_message(dataclasses.replace(msg, term=term)))


def forged_state(rng: random.Random, ctx: Context) -> Sample:
    """(Byzantine) A forged AppendEntries whose commit index covers its entries (of any term), a
    granted vote or a successful append reply: a follower commits and applies forged entries
    (garbage ones too), a candidate wins, a leader commits what no majority holds."""
    if rng.random() < 0.2:
        ack = AppendEntriesReply(ctx.term, rng.choice(ctx.peers), ctx.target, True,
                                 ctx.commit_index + rng.randint(0, 5), 0, 0, rng.choice((0, 1)))
        return _one("raft.forged_state", encode_message(ack))
    if rng.random() < 0.25:
        vote = RequestVoteReply(ctx.term + rng.randint(0, 1), rng.choice(ctx.peers), ctx.target, True,
                                rng.random() < 0.5)
        return _one("raft.forged_state", encode_message(vote))
    msg = raft_message(rng, ctx)
    while not isinstance(msg, AppendEntries) or not msg.entries:
        msg = raft_message(rng, ctx)
    commit = msg.prev_index + len(msg.entries)
    return _one("raft.forged_state", encode_message(dataclasses.replace(msg, commit=commit)))


def transfer(rng: random.Random, ctx: Context) -> Sample:
    """A well-formed snapshot transfer frame of any kind (MANIFEST, REQUEST, DATA, DONE, ABORT)."""
    return _one("raft.transfer", transfer_frame(rng, ctx))


def transfer_mutated(rng: random.Random, ctx: Context) -> Sample:
    """A transfer frame with fields out of range or mistyped, or its bytes mutated behind the marker."""
    pick = rng.random()
    if pick < 0.3:
        frame = _transfer_by_hand(rng, ctx)
    elif pick < 0.65:
        frame = mutate.mutate_packed(rng, transfer_frame(rng, ctx), keep=len(MARKER))
    else:
        frame = mutate.mutate_bytes(rng, transfer_frame(rng, ctx), keep=len(MARKER))
    return _one("raft.transfer_mutated", frame)


def snapshot(rng: random.Random, ctx: Context) -> Sample:
    """A complete forged snapshot transfer of garbage files in one multipart message."""
    return Sample(RAFT, "raft.snapshot", tuple(forged_snapshot(rng, ctx)))


def checkpoint(rng: random.Random, ctx: Context) -> Sample:
    """A complete forged snapshot transfer of a real checkpoint's files with a wrong row, blob or
    segment, in one multipart message (a garbage one while the cluster has committed nothing)."""
    if ctx.commit_index < checkpoint_files.INDEX:
        return Sample(RAFT, "raft.checkpoint", tuple(forged_snapshot(rng, ctx)))
    return Sample(RAFT, "raft.checkpoint", tuple(forged_checkpoint(rng, ctx)))


def installed_checkpoint(rng: random.Random, ctx: Context) -> Sample:
    """(Byzantine) A forged snapshot of a real checkpoint, with a wrong row, blob or segment, past
    the cluster's commit index "from the leader": one that passes the follower's checks is installed."""
    return Sample(RAFT, "raft.installed_checkpoint", tuple(forged_checkpoint(rng, ctx, installable=True)))


def clock(rng: random.Random, ctx: Context) -> Sample:
    """A clock probe or reply with right, absurd, infinite or NaN times."""
    return _one("raft.timesync", timesync_frame(rng, ctx))


def clock_mutated(rng: random.Random, ctx: Context) -> Sample:
    """A malformed clock-sync frame: wrong kind, short, bad sender, or bytes mutated behind the marker."""
    if rng.random() < 0.5:
        return _one("raft.timesync_mutated", _timesync_by_hand(rng, ctx))
    frame = mutate.mutate_bytes(rng, timesync_frame(rng, ctx), keep=len(timesync.MARKER))
    return _one("raft.timesync_mutated", frame)


_SINGLE: Final = (message, message_mutated, transfer, transfer_mutated, clock, clock_mutated, random_bytes,
                  random_msgpack)


def multipart(rng: random.Random, ctx: Context) -> Sample:
    """Several frames of the other families in one message, with frames dropped, repeated or emptied."""
    parts = [rng.choice(_SINGLE)(rng, ctx).frames[0] for _ in range(rng.randint(2, 6))]
    parts = [within_trust(part, ctx) for part in mutate.mutate_parts(rng, parts)]
    return Sample(RAFT, "raft.multipart", tuple(parts))


FAMILIES: Final[dict[str, tuple[Callable[[random.Random, Context], Sample], float]]] = {
    "raft.random_bytes": (random_bytes, 1.0),
    "raft.random_msgpack": (random_msgpack, 1.0),
    "raft.message": (message, 2.5),
    "raft.message_mutated": (message_mutated, 3.0),
    "raft.far_term": (far_term, 0.05),
    "raft.forged_state": (forged_state, 0.5),
    "raft.transfer": (transfer, 1.0),
    "raft.transfer_mutated": (transfer_mutated, 1.0),
    "raft.snapshot": (snapshot, 0.4),
    "raft.checkpoint": (checkpoint, 0.4),
    "raft.installed_checkpoint": (installed_checkpoint, 0.3),
    "raft.timesync": (clock, 1.5),
    "raft.timesync_mutated": (clock_mutated, 0.5),
    "raft.multipart": (multipart, 1.0),
}
"""Family name -> (maker, weight)."""

BYZANTINE: Final = frozenset({"raft.far_term", "raft.forged_state", "raft.installed_checkpoint"})
"""Families whose forgeries Raft cannot survive without keys (see `within_trust`): a run leaves
them out unless asked (``--byzantine``, or by name), and judges its health without them."""

