"""DurableStorage over CrashFS, with a power loss at every single mutating file operation.

A scripted workload (appends, syncs, hard-state changes, a truncation of a conflicting suffix,
compactions, snapshots from a leader, a restart, segment rolls every three records) runs on a
`CrashFS`; for each index k of its mutating operations, a fresh run crashes at the k-th one, the
storage is reopened on what the crash left, and `check` compares it with what the workload had been
told: every acknowledged entry (appended, then `sync` returned), the hard state last set, the
snapshot last installed are there, and the log is a gap-free run of entries that were written,
continuing the snapshot. The mutation tests at the end prove the check has teeth: the same
enumeration over a DurableStorage with one fsync left out finds a violation.
"""

from __future__ import annotations

import copy
import errno
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from crashfs import CrashFS, SimulatedCrash
from durable_helpers import ents, record_size

from wiber.raft.messages import Entry, EntryKind, HardState, SnapshotMeta
from wiber.storage import DurableStorage, StorageFailure

DIRECTORY = "/data/n1"
SEGMENT_BYTES = 3 * record_size()       # three records per segment: the workload rolls often
QUIET = logging.getLogger("tests.crash_points")
QUIET.disabled = True                   # recovery's warnings are expected here, by the hundred


NO_SNAPSHOT = SnapshotMeta(0, 0)


def snapshot_data(meta: SnapshotMeta) -> bytes:
    """Returns: the state machine bytes the workload stores in the snapshot at `meta`."""
    return b"state@%d/%d" % (meta.index, meta.term) if meta.index else b""


# -- what the disk may hold ------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """One state the reopened storage may show, as the workload knows it.

    Attributes:
        log: the entry at each index as written (entries a compaction covered stay; after a
            leader's snapshot, only a stand-in at its index, carrying its term).
        last: the last index written.
        snap: the snapshot recovery must pick.
        required: the acknowledged entries (synced, and neither truncated nor replaced since).
        vote: the (term, voted_for) the hard state must hold.
    """

    log: Mapping[int, Entry] = field(default_factory=dict)
    last: int = 0
    snap: SnapshotMeta = NO_SNAPSHOT
    required: Mapping[int, Entry] = field(default_factory=dict)
    vote: tuple[int, str | None] = (0, None)


def check(st: DurableStorage, m: Model) -> str | None:
    """Returns: why `st` (just reopened) is not in state `m`, or None when it is."""
    meta, data = st.snapshot()
    if meta != m.snap:
        return f"snapshot {meta}, expected {m.snap}"
    if data != snapshot_data(meta):
        return f"snapshot {meta} holds {data!r}"
    hs, _ = st.initial_state()
    if (hs.term, hs.voted_for) != m.vote:
        return f"hard state term {hs.term} vote {hs.voted_for}, expected {m.vote}"
    first, last = st.first_index(), st.last_index()
    if first != meta.index + 1:
        return f"first index {first} does not follow the snapshot at {meta.index}"
    got = st.entries(first, last + 1) if last >= first else []
    if [e.index for e in got] != list(range(first, last + 1)):
        return f"indexes {[e.index for e in got]} are not {first}..{last}"
    for e in got:
        if m.log.get(e.index) != e:
            return f"entry {e.index} (term {e.term}) is not the one written there ({m.log.get(e.index)})"
    if got and meta.index:
        anchor = m.log.get(meta.index)
        if anchor is None or anchor.term != meta.term:
            return f"entries {first}..{last} do not continue the snapshot {meta}"
    for i, e in sorted(m.required.items()):
        if i > meta.index and (i > last or got[i - first] != e):
            return f"acknowledged entry {i} is lost (log {first}..{last}, snapshot at {meta.index})"
    if not meta.index <= hs.commit <= last:
        return f"commit {hs.commit} outside [{meta.index}, {last}]"
    return None


# -- the workload ----------------------------------------------------------------------------------


class Run:
    """The storage a workload drives (steps may close and reopen it)."""

    def __init__(self, fs: CrashFS) -> None:
        self.fs = fs
        self.st: DurableStorage | None = None

    @property
    def storage(self) -> DurableStorage:
        assert self.st is not None
        return self.st


def open_storage(fs: CrashFS) -> DurableStorage:
    """Returns: the workload's storage, opened (and recovered) on `fs`."""
    return DurableStorage.open(DIRECTORY, segment_bytes=SEGMENT_BYTES, logger=QUIET, fs=fs)


@dataclass(frozen=True)
class Step:
    """One call of the workload, and what it does to the model.

    Attributes:
        name: for messages.
        act: the call.
        during: the states the disk may be in if the crash interrupts the call.
        after: the state once the call returned (its acknowledgement included).
    """

    name: str
    act: Callable[[Run], None]
    during: Callable[[Model], list[Model]]
    after: Callable[[Model], Model]


def opening() -> Step:
    def act(run: Run) -> None:
        run.st = open_storage(run.fs)
    return Step("open", act, lambda m: [m], lambda m: m)


def closing() -> Step:
    def act(run: Run) -> None:
        run.storage.close()
        run.st = None
    return Step("close", act, lambda m: [m], _synced)


def appending(batch: list[Entry]) -> Step:
    first = batch[0].index

    def written(m: Model) -> Model:
        log = {i: e for i, e in m.log.items() if i < first}
        log.update((e.index, e) for e in batch)
        return replace(m, log=log, last=batch[-1].index,
                       required={i: e for i, e in m.required.items() if i < first})

    def during(m: Model) -> list[Model]:
        if first > m.last:
            return [replace(written(m), required=m.required)]
        # a truncation: the old suffix may be partly gone, and what it held is no longer required
        return [replace(m, required=written(m).required), written(m)]

    name = f"append {first}..{batch[-1].index} term {batch[0].term}"
    return Step(name, lambda run: run.storage.append(batch), during, written)


def _synced(m: Model) -> Model:
    return replace(m, required={i: e for i, e in m.log.items() if i > m.snap.index})


def syncing() -> Step:
    return Step("sync", lambda run: run.storage.sync(), lambda m: [m], _synced)


def setting(hs: HardState) -> Step:
    vote = (hs.term, hs.voted_for)

    def during(m: Model) -> list[Model]:
        return [m] if vote == m.vote else [m, replace(m, vote=vote)]

    return Step(f"set_hard_state {hs}", lambda run: run.storage.set_hard_state(hs), during,
                lambda m: replace(m, vote=vote))


def compacting(index: int) -> Step:
    def act(run: Run) -> None:
        st = run.storage
        meta = SnapshotMeta(index, st.term(index))
        st.compact(index, snapshot_data(meta))

    def after(m: Model) -> Model:
        return replace(m, snap=SnapshotMeta(index, m.log[index].term))

    return Step(f"compact {index}", act, lambda m: [m, after(m)], after)


def installing(meta: SnapshotMeta) -> Step:
    def after(m: Model) -> Model:
        stand_in = Entry(meta.index, meta.term, EntryKind.NORMAL, b"<in the leader's snapshot>")
        return Model({meta.index: stand_in}, meta.index, meta, {}, m.vote)

    def during(m: Model) -> list[Model]:
        # the old state whole; or the new snapshot over what is left of the old log, which may stay
        # only if it continues the snapshot (the continuity check in `check`)
        return [m, replace(m, snap=meta, required={}), after(m)]

    return Step(f"apply_snapshot {meta}", lambda run: run.storage.apply_snapshot(meta, snapshot_data(meta)),
                during, after)


def workload() -> list[Step]:
    """Returns: the scripted steps every crash-point test runs."""
    return [
        opening(),
        setting(HardState(1, "n1", 0)),
        appending(ents(1, 5)), syncing(),                    # rolls after 3
        appending(ents(5, 8)), syncing(),
        setting(HardState(1, "n1", 5)),                      # commit only: nothing written
        appending(ents(8, 11)),                              # never synced
        appending(ents(6, 9, term=2)),                       # truncates 6..10 (two segments go)
        setting(HardState(2, "n2", 5)),                      # syncs the log first
        syncing(),
        compacting(4),
        appending(ents(9, 14, term=2)), syncing(),
        closing(), opening(),                                # a clean restart in the middle
        compacting(11),
        appending(ents(14, 16, term=2)),                     # never synced
        installing(SnapshotMeta(13, 3)),                     # conflicts at 13: the log goes
        appending(ents(14, 18, term=3)), syncing(),
        setting(HardState(3, None, 13)),
        installing(SnapshotMeta(16, 3)),                     # continues the log at 16
        appending(ents(17, 20, term=3)),
        closing(),
    ]


def random_workload(seed: int, length: int) -> list[Step]:
    """Returns: `length` random steps (after an open) that a Raft node could ask of its storage:
    appends and syncs, new terms that truncate a suffix, votes, compactions, leader's snapshots
    (continuing the log or not), restarts."""
    rng = random.Random(seed)
    steps, m, term = [opening()], Model(), 1

    def add(step: Step) -> None:
        nonlocal m
        steps.append(step)
        m = step.after(m)

    while len(steps) <= length:
        roll = rng.random()
        if roll < 0.35 or m.last == m.snap.index:
            add(appending(ents(m.last + 1, m.last + 1 + rng.randint(1, 5), term=term)))
        elif roll < 0.55:
            add(syncing())
        elif roll < 0.65:
            term += 1
            start = rng.randint(m.snap.index + 1, m.last)
            add(appending(ents(start, start + rng.randint(1, 4), term=term)))
        elif roll < 0.72:
            term += rng.randint(0, 1)
            add(setting(HardState(term, rng.choice(["n1", "n2", None]), rng.randint(0, m.last))))
        elif roll < 0.82:
            add(compacting(rng.randint(m.snap.index + 1, m.last)))
        elif roll < 0.92:
            term += 1
            index = rng.randint(m.snap.index + 1, m.last + 3)
            keeps = index <= m.last and rng.random() < 0.5   # the log's own term there: it continues
            add(installing(SnapshotMeta(index, m.log[index].term if keeps else term)))
        else:
            add(closing())
            add(opening())
    if steps[-1].name != "open":
        add(closing())
    return steps


def fresh_fs() -> CrashFS:
    """Returns: a CrashFS where the data directory's parent exists durably."""
    fs = CrashFS()
    fs.makedirs("/data")
    fs.fsync_dir("/")
    return fs


def run_until_crash(fs: CrashFS, steps: list[Step]) -> tuple[str, list[Model]]:
    """Run `steps` on `fs` until it crashes (or fails) or they end; the storage is abandoned.

    Returns:
        Where it stopped, and the states the disk may now be in.
    """
    run, m = Run(fs), Model()
    for step in steps:
        during = step.during(m)
        try:
            step.act(run)
        except SimulatedCrash:
            return f"during {step.name}", during
        except StorageFailure:
            if run.st is not None:
                run.st.close()                       # failed: closes without touching the disk
            return f"failed during {step.name}", during
        m = step.after(m)
    return "after the last step", [m]


def reopen_and_check(fs: CrashFS, candidates: list[Model]) -> str | None:
    """Reopen the storage on `fs` (after its crash). Returns: the violation found, or None."""
    try:
        st = open_storage(fs)
    except Exception as exc:   # noqa: BLE001 - any refusal to reopen is the violation to report
        return f"does not reopen: {exc!r}"
    try:
        reasons = [check(st, m) for m in candidates]
    finally:
        st.close()
    if any(r is None for r in reasons):
        return None
    return "; or ".join(r for r in reasons if r is not None)


def count_mutations(steps: list[Step]) -> int:
    """Returns: how many mutating file operations the whole workload makes."""
    fs = fresh_fs()
    start = fs.mutations
    run_until_crash(fs, steps)
    return fs.mutations - start


def crash_point_violations(steps: list[Step] | None = None, *, torn: int | None = None,
                           names: int | None = None, double: bool = False) -> list[str]:
    """Crash a workload at every mutating operation; reopen; check.

    Args:
        steps: the workload (default: the scripted `workload()`).
        torn: seed for `CrashFS.crash`'s torn mode (None: strict crashes).
        names: seed for its partial-name-changes mode.
        double: also crash the recovery that follows, at each of its own mutating operations,
            and check the second reopen.

    Returns:
        One line per violation (empty when DurableStorage keeps every promise).
    """
    steps = workload() if steps is None else steps
    total = count_mutations(steps)
    violations = []
    for k in range(total + 1):   # k == total: the crash comes after the last step
        rng_torn = random.Random(torn * 100_003 + k) if torn is not None else None
        rng_names = random.Random(names * 100_003 + k) if names is not None else None
        fs = fresh_fs()
        fs.crash_after(k)
        where, candidates = run_until_crash(fs, steps)
        fs.crash(rng_torn, names=rng_names)
        if double:
            violations += [f"crash at operation {k} ({where}), then in recovery: {v}"
                           for v in _recovery_crash_violations(fs, candidates)]
        problem = reopen_and_check(fs, candidates)
        if problem is not None:
            violations.append(f"crash at operation {k} ({where}): {problem}")
    return violations


def _recovery_crash_violations(crashed: CrashFS, candidates: list[Model]) -> list[str]:
    """Crash the recovery of `crashed` at each of its mutating operations; reopen; check."""
    probe = copy.deepcopy(crashed)
    start = probe.mutations
    try:
        open_storage(probe).close()
    except Exception:   # noqa: BLE001 - the caller's own reopen reports it
        return []
    out = []
    for j in range(probe.mutations - start):
        fs = copy.deepcopy(crashed)
        fs.crash_after(j)
        try:
            open_storage(fs).close()
            out.append(f"recovery did not reach its mutating operation {j}")
        except SimulatedCrash:
            pass
        problem = reopen_and_check(fs.crash(), candidates)
        if problem is not None:
            out.append(f"at its operation {j}: {problem}")
    return out


# -- the tests -------------------------------------------------------------------------------------


def test_the_workload_covers_what_it_claims() -> None:
    """The crash points are only as good as the workload: it must roll, truncate, compact, install."""
    fs = fresh_fs()
    ops: dict[str, int] = {}
    for name in ("open", "pwrite", "fsync", "ftruncate", "replace", "unlink", "fsync_dir"):
        real = getattr(fs, name)

        def counted(*args: Any, _real: Callable[..., Any] = real, _name: str = name) -> Any:
            ops[_name] = ops.get(_name, 0) + 1
            return _real(*args)

        setattr(fs, name, counted)
    where, (final,) = run_until_crash(fs, workload())
    assert where == "after the last step"
    assert final.snap == SnapshotMeta(16, 3) and final.last == 19 and final.vote == (3, None)
    assert ops["ftruncate"] >= 1 and ops["replace"] >= 6 and ops["unlink"] >= 8
    assert count_mutations(workload()) > 100
    assert fs.open_fds == 0
    st = open_storage(fs.crash())
    assert check(st, final) is None
    st.close()


def test_every_crash_point_keeps_every_promise() -> None:
    assert crash_point_violations() == []


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["torn", "names", "both"])
def test_every_crash_point_with_torn_writes_or_partial_name_changes(mode: str, seed: int) -> None:
    torn = seed if mode in ("torn", "both") else None
    names = seed if mode in ("names", "both") else None
    assert crash_point_violations(torn=torn, names=names) == []


@pytest.mark.parametrize("seed", [None, 7])
def test_a_crash_during_recovery_after_every_crash_point(seed: int | None) -> None:
    assert crash_point_violations(double=True, torn=seed, names=seed) == []


@pytest.mark.parametrize("seed", range(10))
def test_every_crash_point_of_a_random_workload(seed: int) -> None:
    steps = random_workload(seed, length=40)
    assert sum(s.name.startswith(("apply_snapshot", "compact")) for s in steps) >= 1
    assert crash_point_violations(steps) == []
    assert crash_point_violations(steps, torn=seed, names=seed, double=True) == []


def test_a_full_disk_at_any_write_loses_nothing_acknowledged() -> None:
    steps = workload()
    probe = fresh_fs()
    calls = 0
    real = probe.pwrite

    def counting(fd: int, data: bytes, offset: int) -> int:
        nonlocal calls
        calls += 1
        return real(fd, data, offset)

    probe.pwrite = counting  # type: ignore[method-assign]
    run_until_crash(probe, steps)
    violations = []
    for n in range(calls):
        fs = fresh_fs()
        fs.fail_after(n, errno.ENOSPC)
        where, candidates = run_until_crash(fs, steps)
        assert where.startswith("failed during"), where
        problem = reopen_and_check(fs.crash(), candidates)
        if problem is not None:
            violations.append(f"ENOSPC at write {n} ({where}): {problem}")
    assert violations == []


def test_a_data_directory_created_with_its_parents_survives_a_crash() -> None:
    fs = CrashFS()                                   # /data does not exist yet
    steps = [opening(), setting(HardState(1, "n1", 0)), appending(ents(1, 3)), syncing()]
    where, (final,) = run_until_crash(fs, steps)
    assert where == "after the last step" and final.vote == (1, "n1") and len(final.required) == 2
    st = open_storage(fs.crash())
    assert check(st, final) is None
    st.close()


# -- the check has teeth ---------------------------------------------------------------------------


@contextmanager
def _without_fsync(method: str) -> Iterator[None]:
    """Within the block, DurableStorage.<method> runs with every fsync it makes skipped."""
    real = getattr(DurableStorage, method)

    def lazy(self: DurableStorage, *args: Any) -> Any:
        saved, self._fsync = self._fsync, False
        try:
            return real(self, *args)
        finally:
            self._fsync = saved

    with pytest.MonkeyPatch.context() as m:
        m.setattr(DurableStorage, method, lazy)
        yield


@contextmanager
def _patched(method: str, replacement: Callable[..., Any]) -> Iterator[None]:
    """Within the block, DurableStorage.<method> is `replacement`."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(DurableStorage, method, replacement)
        yield


def _sync_without_directory_fsync(self: DurableStorage) -> None:
    """`_sync_log` that forgets the directory: a new segment's name is never made durable."""
    if self._unsynced and self._fd is not None:
        self._fsync_fd(self._fd)
    self._unsynced = False
    self._dir_dirty = False


MUTANTS: dict[str, Callable[[], Any]] = {
    "sync skips every fsync": lambda: _without_fsync("_sync_log"),
    "sync skips the directory fsync after a roll":
        lambda: _patched("_sync_log", _sync_without_directory_fsync),
    "a roll does not fsync the full segment": lambda: _without_fsync("_roll"),
    "a truncation is not made durable": lambda: _without_fsync("_truncate_from"),
    "atomic replace without fsyncs (hard state, snapshots)": lambda: _without_fsync("_replace"),
    "a leader's snapshot removes the log without fsyncs": lambda: _without_fsync("apply_snapshot"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_crash_point_check_catches_a_missing_fsync(mutant: str) -> None:
    with MUTANTS[mutant]():
        violations = crash_point_violations()
    assert violations, f"no crash point exposes: {mutant}"


def test_a_leader_snapshot_ending_where_a_segment_ends_is_never_continued_by_a_conflicting_log() -> None:
    """Rule 7 at a segment boundary: the old entry at the snapshot's index sits in a segment wholly
    below it, and the segments after it, of an older term, must go even if a crash interrupts."""
    steps = [opening(), appending(ents(1, 8)), syncing(),        # segments 1..3, 4..6, 7
             installing(SnapshotMeta(3, 2)), appending(ents(4, 6, term=2)), syncing(), closing()]
    assert crash_point_violations(steps) == []
    assert crash_point_violations(steps, double=True, torn=1, names=1) == []
