"""The seeded whole-cluster simulation over real `DurableStorage`, each node on its own `CrashFS`,
crashing at file operations of its writes (``Cluster(storage="durable")``, `tests/sim/durable.py`).

* `test_seed_on_disk[sN]`: `WIBER_SIM_DURABLE_SEEDS` seeds (default `SEEDS`) of `run_seed` with the
  same faults and workload as `test_sim.py`, safety checked after every step, liveness after healing,
  but every crash a power loss (what was not fsynced is gone) and every restart `DurableStorage`'s
  recovery. A failure is one line ending with the command that replays the seed.
* `test_the_seeds_hit_every_kind_of_crash_point`: the seeds do crash inside an append, a hard-state
  replace, a compaction and a snapshot install, so passing proves something.
* `test_a_durability_bug_is_caught`: with an fsync left out of `DurableStorage` (`MUTANTS`), a listed
  seed breaks a safety property: with `sync` a no-op, acknowledged entries vanish at a power loss
  and a leader is elected without a committed entry (Leader Completeness); with the hard state's
  rename never fsynced, a restarted node forgets its vote and votes again in the same term
  (Election Safety). The seeds were found with `test_search_mutant_seeds`
  (``WIBER_SIM_DURABLE_SEARCH=400``); a change to the core, the storage or the simulation may move
  them: search again and update the lists.
* `test_replay_on_disk`: replays ``WIBER_SIM_SEED`` (and ``WIBER_SIM_MUTANT``, a key of `MUTANTS`)
  with its transcript.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from wiber.storage.durable import DurableStorage
from wiber.storage.format import HARD_STATE_NAME

from .chaos import DEFAULT_STEPS, Profile, SimResult, cluster_for, env_int, replay_command, run_seed
from .cluster import Cluster
from .durable import APPEND, COMPACTION, HARD_STATE, SNAPSHOT_INSTALL
from .invariants import InvariantViolation
from .trace import Transcript

SEEDS = env_int("WIBER_SIM_DURABLE_SEEDS", 500)
STEPS = env_int("WIBER_SIM_STEPS", DEFAULT_STEPS)
#: Mid-Ready crashes, each now a crash point, more often than in test_sim.py (its default is 0.002).
PROFILE = Profile(mid_ready_crash_rate=0.005)
TEST = "tests/sim/test_sim_durable.py"


def cluster_on_disk(seed: int, logger: logging.Logger | None = None) -> Cluster:
    """Returns: the cluster `seed` runs in test_sim.py (size, Raft settings), on durable storage."""
    return Cluster.like(cluster_for(seed, logger=logger), storage="durable")


def run_on_disk(seed: int, steps: int = STEPS, cluster: Cluster | None = None) -> SimResult:
    """Run one seed on durable storage (see `run_seed` for what it raises)."""
    return run_seed(seed, steps, profile=PROFILE,
                    cluster=cluster if cluster is not None else cluster_on_disk(seed))


def replay_on_disk_command(seed: int, steps: int = STEPS, mutant: str | None = None) -> str:
    """Returns: the shell command that replays `seed` on durable storage (under `mutant`, if given)."""
    command = replay_command(seed, steps, test=TEST)
    return f"WIBER_SIM_MUTANT='{mutant}' {command}" if mutant is not None else command


def run_on_disk_or_fail(seed: int) -> None:
    """Run a seed on durable storage; on any failure, fail with one line ending with the replay command."""
    try:
        run_on_disk(seed)
    except Exception as exc:  # noqa: BLE001 - every failure mode of a seed gets the same one-line report
        detail = " ".join(str(exc).split())
        pytest.fail(f"seed={seed} (durable storage): {type(exc).__name__}: {detail} -- replay: "
                    f"{replay_on_disk_command(seed)}", pytrace=False)


@pytest.mark.parametrize("seed", range(SEEDS), ids=lambda s: f"s{s}")
def test_seed_on_disk(seed: int) -> None:
    """Safety after every step and liveness after healing, for one seed on durable storage."""
    run_on_disk_or_fail(seed)


def test_the_seeds_hit_every_kind_of_crash_point() -> None:
    """A sample of the seeds crashes inside every kind of write, and loses unsynced entries to it."""
    stats: Counter[str] = Counter()
    for seed in range(min(SEEDS, 40)):
        cluster = cluster_on_disk(seed)
        run_on_disk(seed, cluster=cluster)
        stats.update(cluster.stats)
    for kind in (APPEND, HARD_STATE, COMPACTION, SNAPSHOT_INSTALL):
        assert stats[f"crash points: {kind}"] > 0, f"no crash point in a {kind} in 40 seeds: {dict(stats)}"
    assert stats["entries lost at a power loss"] > 0 and stats["snapshots installed"] > 0, dict(stats)


def test_a_seed_on_disk_runs_identically_twice() -> None:
    """Two runs of one seed on durable storage are identical, step for step (crash points included)."""
    def run() -> tuple[list[str], dict[str, int]]:
        cluster = cluster_on_disk(5)
        lines: list[str] = []
        cluster.net.on_send = lambda m, lost: lines.append(f"{cluster.now} {m} {lost}")
        cluster.on_event = lines.append
        run_on_disk(5, 1000, cluster=cluster)
        return lines, dict(cluster.stats)
    first = run()
    assert any("crash points" in k for k in first[1]), first[1]
    assert run() == first


# -- durability bugs the simulation catches ---------------------------------------------------------


def _sync_does_nothing(self: DurableStorage) -> None:
    """`sync` that returns at once: appended entries are acknowledged before any fsync."""


def _hard_state_rename_not_durable(real: Callable[[DurableStorage, str, list[bytes]], None]
                                   ) -> Callable[[DurableStorage, str, list[bytes]], None]:
    """Returns: `_replace` that, for the hard state, skips the directory fsync after the rename (so
    a power loss brings the previous term and vote back)."""
    def replace(self: DurableStorage, name: str, parts: list[bytes]) -> None:
        if name != HARD_STATE_NAME:
            real(self, name, parts)
            return
        self._fsync_dir = lambda: None  # type: ignore[method-assign]
        try:
            real(self, name, parts)
        finally:
            del self._fsync_dir
    return replace


#: Each mutant: the `DurableStorage` method replaced, its replacement, and seeds where it breaks a
#: safety property (found by `test_search_mutant_seeds`).
MUTANTS: dict[str, tuple[str, Callable[..., None], list[int]]] = {
    "sync does nothing": ("sync", _sync_does_nothing, [0, 2, 4, 6]),
    "hard state rename not fsynced":
        ("_replace", _hard_state_rename_not_durable(DurableStorage._replace), [30, 36, 86, 118]),
}


@contextmanager
def _mutant(name: str | None) -> Iterator[None]:
    """Within the block, `DurableStorage` has the fsync of `MUTANTS[name]` left out (None: as it is)."""
    with pytest.MonkeyPatch.context() as m:
        if name is not None:
            method, replacement, _ = MUTANTS[name]
            m.setattr(DurableStorage, method, replacement)
        yield


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_a_durability_bug_is_caught(name: str) -> None:
    """With an fsync left out of the storage, some listed seed breaks a safety property."""
    caught = []
    seeds = MUTANTS[name][2]
    with _mutant(name):
        for seed in seeds:
            try:
                run_on_disk(seed)
            except InvariantViolation as exc:
                caught.append((seed, str(exc)))
            except Exception:  # noqa: BLE001 - a liveness failure or a refused restart is not proof enough
                pass
    assert caught, (f"mutant {name!r} survived seeds {seeds}: search again with WIBER_SIM_MUTANT="
                    f"'{name}' WIBER_SIM_DURABLE_SEARCH=400 .venv/bin/python -m pytest {TEST} -k search -s")


def test_a_failing_seed_on_disk_reports_one_line_with_the_command_to_rerun_it() -> None:
    """What CI prints for a failing seed: one line, ending with the exact command to replay it."""
    name, seeds = "sync does nothing", MUTANTS["sync does nothing"][2]
    with _mutant(name), pytest.raises(pytest.fail.Exception) as info:
        run_on_disk_or_fail(seeds[0])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"seed={seeds[0]} (durable storage): InvariantViolation: ")
    assert message.endswith(f"replay: WIBER_SIM_SEED={seeds[0]} .venv/bin/python -m pytest {TEST} -k replay")


@pytest.mark.skipif("WIBER_SIM_DURABLE_SEARCH" not in os.environ,
                    reason="set WIBER_SIM_DURABLE_SEARCH=<seeds> (and WIBER_SIM_MUTANT) to search for seeds")
def test_search_mutant_seeds() -> None:
    """Print the seeds among the first N whose run breaks a safety property under the mutant(s)."""
    count = env_int("WIBER_SIM_DURABLE_SEARCH", 0)
    names = [os.environ["WIBER_SIM_MUTANT"]] if "WIBER_SIM_MUTANT" in os.environ else sorted(MUTANTS)
    for name in names:
        found = []
        with _mutant(name):
            for seed in range(count):
                try:
                    run_on_disk(seed)
                except InvariantViolation:
                    found.append(seed)
                except Exception:  # noqa: BLE001 - only safety violations count
                    pass
        print(f"{name}: {len(found)} of {count} seeds break a safety property: {found[:20]}")
        for seed in found[:3]:
            print("  " + replay_on_disk_command(seed, mutant=name))


@pytest.mark.skipif("WIBER_SIM_SEED" not in os.environ, reason="set WIBER_SIM_SEED=<seed> to replay a seed")
def test_replay_on_disk() -> None:
    """Replay one seed on durable storage exactly, with its transcript for debugging."""
    seed = int(os.environ["WIBER_SIM_SEED"])
    mutant = os.environ.get("WIBER_SIM_MUTANT")
    logger = logging.getLogger(f"wiber.sim.replay.durable.{seed}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    cluster = cluster_on_disk(seed, logger)
    transcript = Transcript(cluster)
    try:
        with _mutant(mutant):
            result = run_on_disk(seed, cluster=cluster)
    except Exception:
        print("\n".join(transcript.lines[-200:]))
        raise
    finally:
        transcript.close()
    if os.environ.get("WIBER_SIM_TRACE") == "1":
        print(transcript.text())
    print(result)

