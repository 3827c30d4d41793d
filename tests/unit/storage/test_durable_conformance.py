"""DurableStorage reads exactly as MemoryStorage does, across random writes and reopens (hypothesis).

The same random program of append (with truncation and skipping), compact, apply_snapshot,
set_hard_state and sync runs against both (and `release`, which drops applied entries from
DurableStorage's memory: its reads must then come back from the segments, unchanged); DurableStorage is also closed and reopened at random
points. After every step every read (and every out-of-range exception) must agree. The hard state's
commit is the one exception by design: DurableStorage persists it only along with a term or vote
change, and clamps it into [snapshot index, last index] on reopen.
"""

from __future__ import annotations

import tempfile
from typing import Any

from durable_helpers import ents, read_all
from hypothesis import given, settings
from hypothesis import strategies as st

from wiber.raft.messages import HardState, SnapshotMeta
from wiber.raft.storage import MemoryStorage
from wiber.storage import DurableStorage

Op = tuple[Any, ...]
Storage = MemoryStorage | DurableStorage

ops = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 12), st.integers(1, 8), st.integers(1, 5), st.integers(0, 40)),
    st.tuples(st.just("gap"), st.integers(2, 4)),
    st.tuples(st.just("compact"), st.integers(-2, 14), st.binary(max_size=20)),
    st.tuples(st.just("snapshot"), st.integers(-2, 16), st.integers(1, 6), st.binary(max_size=20)),
    st.tuples(st.just("hard_state"), st.integers(0, 4), st.sampled_from([None, "n1", "n2"]), st.integers(0, 60)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("release"), st.integers(-2, 20)),
)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """Returns: ("ok", result) or ("raise", exception type): what a call did."""
    try:
        return "ok", fn(*args)
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return "raise", type(exc)


def edges(s: Storage) -> list[tuple[str, Any]]:
    """Returns: the outcome of reads at and beyond both ends of the log."""
    first, last = s.first_index(), s.last_index()
    out = [outcome(s.term, i) for i in (first - 2, first - 1, last, last + 1)]
    out += [outcome(s.entries, lo, hi) for lo, hi in
            ((first - 1, last + 1), (first, last + 2), (last + 1, last + 1), (first + 1, first))]
    out += [outcome(s.entries, first, last + 1, budget) for budget in (0, 30, 200)]
    return out


def apply(s: Storage, op: Op) -> tuple[str, Any]:
    """Run `op` on one storage. Returns: its outcome."""
    kind = op[0]
    if kind == "append":
        _, back, n, term, size = op
        start = max(1, s.last_index() + 1 - back)
        return outcome(s.append, ents(start, start + n, term=term, size=size))
    if kind == "gap":
        return outcome(s.append, ents(s.last_index() + op[1], s.last_index() + op[1] + 1))
    if kind == "compact":
        return outcome(s.compact, s.first_index() - 1 + op[1], op[2])
    if kind == "snapshot":
        return outcome(s.apply_snapshot, SnapshotMeta(s.first_index() - 1 + op[1], op[2]), op[3])
    if kind == "hard_state":
        return outcome(s.set_hard_state, HardState(op[1], op[2], op[3]))
    raise AssertionError(op)


@settings(max_examples=120, deadline=None)
@given(program=st.lists(ops, min_size=1, max_size=40),
       segment_bytes=st.sampled_from([1, 60, 150, 1 << 20]))
def test_durable_storage_reads_like_memory_storage(program: list[Op], segment_bytes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="wiber-conformance-") as directory:
        mem = MemoryStorage()
        dur = DurableStorage.open(directory, fsync=False, segment_bytes=segment_bytes)
        persisted = HardState(0, None, 0)          # what the hard state file holds
        try:
            for step, op in enumerate(program):
                if op[0] == "sync":
                    dur.sync()
                elif op[0] == "release":
                    dur.release(dur.first_index() - 1 + op[1])
                elif op[0] == "reopen":
                    dur.close()
                    dur = DurableStorage.open(directory, fsync=False, segment_bytes=segment_bytes)
                    lo, hi = mem.first_index() - 1, mem.last_index()
                    mem.set_hard_state(HardState(persisted.term, persisted.voted_for,
                                                 min(max(persisted.commit, lo), hi)))
                else:
                    got, want = apply(dur, op), apply(mem, op)
                    assert got == want, f"step {step} {op}"
                    if op[0] == "hard_state":
                        hs = HardState(op[1], op[2], op[3])
                        if (hs.term, hs.voted_for) != (persisted.term, persisted.voted_for):
                            persisted = hs
                assert read_all(dur) == read_all(mem), f"after step {step} {op}"
                assert edges(dur) == edges(mem), f"after step {step} {op}"
                assert dur.initial_state() == mem.initial_state(), f"after step {step} {op}"
                assert not dur.failed
        finally:
            dur.close()
