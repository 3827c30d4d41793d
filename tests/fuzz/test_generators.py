"""The fuzzer's generators without a cluster: replayable per seed, every family alive, the "valid"
families valid by the product's own decoders, and the traceback scanner reading logs right."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable

import msgpack
import pytest

from tests.conftest import ClusterHarness
from tests.fuzz import checkpoint_files, client_frames, peer_frames
from tests.fuzz.generators import (
    BYZANTINE,
    FAMILIES,
    Selection,
    UnknownFamily,
    generate,
    parse_selection,
    plan,
    sample_rng,
)
from tests.fuzz.health import signature, split_tracebacks
from tests.fuzz.sample import CLIENT, RAFT, Context
from wiber import protocol
from wiber.broker.entry import MalformedEntry, decode_entry
from wiber.errors import BadRequest, TooLarge
from wiber.node import timesync
from wiber.raft.messages import AppendEntries, AppendEntriesReply, InstallSnapshotReply, RequestVoteReply
from wiber.raft.wire import decode_message
from wiber.storage.transfer.frames import decode_frame

CTX = Context("n1", ("n1", "n2", "n3"), leader="n2", term=7, commit_index=40, wall=1.7e9)
N = 600


def _samples(family: str, count: int = N) -> list[tuple[bytes, ...]]:
    port = family.split(".")[0]
    selection = Selection(only=(family,))
    return [generate(11, i, port, CTX, selection).frames for i in range(count)]


def test_a_sample_is_a_function_of_seed_index_and_context() -> None:
    for port in (CLIENT, RAFT):
        first = [generate(5, i, port, CTX) for i in range(200)]
        again = [generate(5, i, port, CTX) for i in range(200)]
        other = [generate(6, i, port, CTX) for i in range(200)]
        assert first == again
        assert first != other
    assert sample_rng(1, 2).random() == sample_rng(1, 2).random() != sample_rng(2, 1).random()


def test_every_family_makes_samples_for_its_own_port() -> None:
    seen = set()
    for port in (CLIENT, RAFT):
        for i in range(3000):
            sample = generate(3, i, port, CTX, Selection(byzantine=True))
            assert sample.port == port and sample.family.startswith(port + ".")
            assert sample.frames and all(type(f) is bytes for f in sample.frames)
            seen.add(sample.family)
    assert seen == set(FAMILIES)


def test_the_client_families_cover_every_op_of_the_contract() -> None:
    assert set(client_frames.OPS) == protocol.OPS


def test_valid_client_requests_are_accepted_by_the_node_parser() -> None:
    limits = protocol.Limits(CTX.max_message_bytes)
    ops = set()
    too_large = 0
    for frames in _samples("client.valid"):
        assert frames[0] == b""
        try:
            _, req = protocol.parse_request(frames[1], limits)
        except (TooLarge, BadRequest) as exc:  # the few sent just over a limit on purpose
            assert isinstance(exc, TooLarge) or "10000 items" in str(exc)
            too_large += 1
            continue
        ops.add(req["op"])
    assert ops == protocol.OPS
    assert too_large < N // 10


def test_forged_raft_messages_decode_and_name_real_nodes() -> None:
    senders = set()
    for frames in _samples("raft.message"):
        msg = decode_message(frames[0])
        senders.add(msg.frm)
    assert {"n2", "n3"} <= senders


def test_transfer_and_clock_frames_decode() -> None:
    for frames in _samples("raft.transfer", 200):
        decode_frame(frames[0])
    for frames in _samples("raft.snapshot", 100):
        kinds = [type(decode_frame(f)).__name__ for f in frames]
        assert kinds[0] == "ManifestFrame" and set(kinds[1:]) == {"Data"}
    sane = absurd = 0
    for frames in _samples("raft.timesync", 300):
        try:
            _, t1, t2, t3 = timesync.parse(frames[0])
        except ValueError:  # the node refuses times that are not finite, or absurd
            absurd += 1
            continue
        sane += 1
        assert all(t is None or math.isfinite(t) for t in (t1, t2, t3))
    assert sane > 0 and absurd > 0  # NaN, infinities and absurd times are sent, beside sane ones


def test_only_the_byzantine_and_far_families_forge_what_raft_trusts_and_spend_the_last_lamports() -> None:
    """Byzantine families (forged commits, granted votes, the last terms) and far lamports are their
    own families, so a run can leave them out; every other sample keeps within what Raft survives."""
    assert not BYZANTINE & set(Selection().families(RAFT))
    for port in (CLIENT, RAFT):
        selection = Selection(exclude=("client.far_lamport",))
        for i in range(4000):
            for frame in generate(9, i, port, CTX, selection).frames:
                _assert_within_trust(frame)
    assert any(decode_message(f[0]).term >= peer_frames.LAST_TERMS for f in _samples("raft.far_term", 20))
    forged = [decode_message(f[0]) for f in _samples("raft.forged_state", 50)]
    assert any(isinstance(m, AppendEntries) and m.commit > m.prev_index for m in forged)
    assert any(isinstance(m, RequestVoteReply) and m.granted for m in forged)
    assert any(isinstance(m, AppendEntriesReply) and m.success for m in forged)
    far = [msgpack.unpackb(f[1])["lamport"] for f in _samples("client.far_lamport", 20)]
    assert min(far) >= client_frames.LAST_LAMPORTS


def _assert_within_trust(frame: bytes) -> None:
    try:
        msg = decode_message(frame)
    except ValueError:
        try:
            req = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except Exception:
            return
        if isinstance(req, dict) and type(req.get("lamport")) is int:
            assert req["lamport"] < client_frames.LAST_LAMPORTS
        return
    assert msg.term <= max(peer_frames.FAR_TERMS[-1], CTX.term + 3)
    if isinstance(msg, RequestVoteReply):
        assert not msg.granted
    if isinstance(msg, AppendEntriesReply):
        assert not msg.success
    if isinstance(msg, InstallSnapshotReply):
        assert msg.match_index == 0
    if isinstance(msg, AppendEntries):
        assert msg.commit == 0
        assert msg.prev_term == 0
        assert not msg.entries or msg.term > CTX.term
        for entry in msg.entries:
            assert entry.term == 0
            try:
                _, ops = decode_entry(entry.data)
            except MalformedEntry:
                continue
            assert all(op.lamport < client_frames.LAST_LAMPORTS for op in ops)


def test_selection_by_family_port_or_prefix() -> None:
    assert parse_selection(["raft.timesync,raft.timesync_mutated"]).families(RAFT) == [
        "raft.timesync", "raft.timesync_mutated"]
    assert parse_selection(["client"]).ports() == [CLIENT]
    assert "client.far_lamport" not in parse_selection(exclude=["client.far_lamport"]).families(CLIENT)
    assert "raft.far_term" in parse_selection(["raft.far_term"]).families(RAFT)
    assert BYZANTINE <= set(parse_selection(byzantine=True).families(RAFT))
    with pytest.raises(UnknownFamily, match="no fuzz family matches 'raft.nope'"):
        parse_selection(["raft.nope"])


def test_plan_alternates_ports_and_takes_the_nodes_in_turn() -> None:
    nodes = ("n1", "n2", "n3")
    assert [plan(i, [CLIENT, RAFT], nodes) for i in range(6)] == [
        (CLIENT, "n1"), (RAFT, "n1"), (CLIENT, "n2"), (RAFT, "n2"), (CLIENT, "n3"), (RAFT, "n3")]


LOG = """2026-01-01 level=INFO node n1 listening
Traceback (most recent call last):
  File "/w/wiber/node/loop.py", line 10, in run
    self.step()
ValueError: bad

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/w/wiber/node/loop.py", line 12, in run
    raise KeyError(1)
KeyError: 1
2026-01-01 level=INFO next line
Traceback (most recent call last):
  File "/w/x.py", line 3, in f
"""


def test_tracebacks_are_read_whole_and_a_partial_one_waits() -> None:
    found, tail = split_tracebacks(LOG)
    assert len(found) == 1
    assert found[0].startswith("Traceback") and found[0].endswith("KeyError: 1")
    assert "ValueError: bad" in found[0]
    assert signature(found[0]) == 'KeyError at File "/w/wiber/node/loop.py", line 12, in run'
    assert tail.startswith("Traceback") and "x.py" in tail
    found, tail = split_tracebacks(tail + "    g()\nOSError: disk\n")
    assert [signature(t) for t in found] == ['OSError at File "/w/x.py", line 3, in f']
    assert tail == ""


def test_the_checkpoint_template_passes_a_followers_checks_and_its_mutations_reach_them(
        cluster_factory: Callable[..., ClusterHarness], tmp_path: Path) -> None:
    """The forged checkpoints are worth sending: the template is a true checkpoint by the node's own
    check (`Checkpoints.check_staged`), and mutations of it fail that check in many ways, few of
    them at the first step ("not a database")."""
    from wiber.broker import BrokerSettings
    from wiber.node.checkpoints import Checkpoints
    from wiber.raft.messages import SnapshotMeta
    from wiber.storage import DurableStorage

    config = cluster_factory(1, start=False).config
    checkpoints = Checkpoints(config, "n1", DurableStorage.open(config.node_data_dir("n1")), BrokerSettings())
    meta = SnapshotMeta(checkpoint_files.INDEX, checkpoint_files.TERM)

    def check(files: list[tuple[str, bytes]]) -> str | None:
        staging = tmp_path / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name, content in files:
            (staging / name).write_bytes(content)
        return checkpoints.check_staged(str(staging), meta)

    try:
        assert check(list(checkpoint_files.template())) is None
        problems = [check(checkpoint_files.mutated(sample_rng(4, i))) for i in range(120)]
    finally:
        checkpoints.close()
    kinds = {p.split(":")[0] for p in problems if p is not None}
    assert len(kinds) >= 4, kinds
    assert sum(p is not None and "not a database" in p for p in problems) < len(problems) // 4
