"""The seeded whole-cluster simulation over real `DurableStorage`, each node on its own `CrashFS`,
crashing at file operations of its writes (``Cluster(storage="durable")``, `tests/sim/durable.py`;
the runs and the storage mutants live in `tests/sim/on_disk.py`).

* `test_seed_on_disk[sN]`: `WIBER_SIM_DURABLE_SEEDS` seeds (default `SEEDS`), from the per-run seed
  offset of `test_sim.py` (past its own seeds), with the same faults and workload as `test_sim.py`, safety checked after every step, liveness after healing, but every
  crash a power loss (what was not fsynced is gone) and every restart `DurableStorage`'s recovery.
  A failure is one line ending with the command that replays the seed (``python -m tests.sim.replay
  --durable``).
* `test_the_seeds_hit_every_kind_of_crash_point`: the seeds do crash inside an append, a hard-state
  replace, a compaction and a snapshot install, so passing proves something.
* `test_a_durability_bug_is_caught`: with an fsync left out of `DurableStorage` (`STORAGE_MUTANTS`),
  a listed seed breaks a safety property: with `sync` a no-op, acknowledged entries vanish at a power
  loss and a leader is elected without a committed entry (Leader Completeness); with the hard state's
  rename never fsynced, a restarted node forgets its vote and votes again in the same term (Election
  Safety). ``python -m tests.sim.replay --search 400 --storage-mutant NAME`` finds seeds again.
"""

from __future__ import annotations

from collections import Counter

import pytest


from .chaos import DEFAULT_STEPS, env_int, failure_line, replay_command, seed_offset
from .durable import APPEND, COMPACTION, HARD_STATE, SNAPSHOT_INSTALL
from .invariants import InvariantViolation
from .on_disk import STORAGE_MUTANTS, cluster_on_disk, run_on_disk, storage_mutated
from .replay import main as replay_main

#: Each run draws new seeds (the offset), so runs add up; `make faults` adds long ones.
SEEDS = env_int("WIBER_SIM_DURABLE_SEEDS", 200)
#: Past `test_sim.py`'s seeds, so that one run does not spend both on the same ones.
OFFSET = seed_offset() + 10_000
STEPS = env_int("WIBER_SIM_STEPS", DEFAULT_STEPS)


def run_on_disk_or_fail(seed: int, storage_mutant: str | None = None) -> None:
    """Run a seed on durable storage; on any failure, fail with one line ending with the replay command."""
    try:
        run_on_disk(seed, STEPS)
    except Exception as exc:  # noqa: BLE001 - every failure mode of a seed gets the same one-line report
        pytest.fail(failure_line(seed, STEPS, exc, durable=True, storage_mutant=storage_mutant), pytrace=False)


@pytest.mark.parametrize("seed", range(OFFSET, OFFSET + SEEDS), ids=lambda s: f"s{s}")
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


@pytest.mark.parametrize("name", sorted(STORAGE_MUTANTS))
def test_a_durability_bug_is_caught(name: str) -> None:
    """With an fsync left out of the storage, some listed seed breaks a safety property."""
    caught = []
    seeds = STORAGE_MUTANTS[name].seeds
    with storage_mutated(name):
        for seed in seeds:
            try:
                run_on_disk(seed)
            except InvariantViolation as exc:
                caught.append((seed, str(exc)))
            except Exception:  # noqa: BLE001 - a liveness failure or a refused restart is not proof enough
                pass
    assert caught, (f"mutant {name!r} survived seeds {seeds}: search again with .venv/bin/python -m "
                    f"tests.sim.replay --search 400 --storage-mutant {name}")


def test_a_failing_seed_on_disk_reports_one_line_with_the_command_to_rerun_it() -> None:
    """What CI prints for a failing seed: one line, ending with the exact command to replay it, and
    that command (run in-process) fails the same way."""
    name = "sync-does-nothing"
    seed = STORAGE_MUTANTS[name].seeds[0]
    with storage_mutated(name), pytest.raises(pytest.fail.Exception) as info:
        run_on_disk_or_fail(seed, storage_mutant=name)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"seed={seed} (durable storage): InvariantViolation: ")
    command = replay_command(seed, STEPS, storage_mutant=name)
    assert message.endswith(f"replay: {command}")
    assert replay_main(command.split(" -m tests.sim.replay ")[1].split()) == 1


def test_the_command_line_replays_and_searches_on_disk(capsys: pytest.CaptureFixture[str]) -> None:
    """``--durable`` replays a seed that passes; ``--search`` under a storage mutant lists a seed that breaks."""
    assert replay_main(["--seed", "1", "--steps", "300", "--durable"]) == 0
    name = "sync-does-nothing"
    assert replay_main(["--search", str(STORAGE_MUTANTS[name].seeds[0] + 1), "--storage-mutant", name]) == 0
    out = capsys.readouterr().out
    assert f"{name}: " in out and "--durable --storage-mutant sync-does-nothing" in out, out
