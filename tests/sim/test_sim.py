"""Seeded whole-cluster simulations of the Raft core (docs/design.md section 6.2).

* `test_seed[sN]`: `WIBER_SIM_SEEDS` seeds (default 200; even seeds run 3 nodes, odd seeds 5) of
  `WIBER_SIM_STEPS` steps (default `SIM_STEPS`, a median of about 1,200 ticks) of random faults
  and workload (`chaos.SIM`), safety checked after every step, then liveness after healing. The
  seeds start at a new offset every run (`chaos.seed_offset`, printed in pytest's header; set
  ``WIBER_SIM_SEED_OFFSET`` to run the same seeds again). Any failure is one line ending with the
  command that replays the seed, e.g. ``.venv/bin/python -m tests.sim.replay --seed 1234 --steps 6000``
  (tests/sim/replay.py; ``--trace`` prints its whole transcript).
* `test_seed_over_the_wire[sN]`: a few more seeds with every message round-tripped through the codec.

``make faults`` also runs a few hundred seeds ten times longer (``python -m tests.sim.replay --seeds``).
"""

from __future__ import annotations

from collections import Counter

import pytest

from wiber.raft import Raft

from .chaos import (
    MEMBERSHIP,
    SIM,
    SIM_STEPS,
    cluster_for,
    env_int,
    failure_line,
    membership_cluster_for,
    replay_command,
    run_seed,
    seed_offset,
)
from .mutations import MUTATIONS, mutated
from .replay import main as replay_main

SEEDS = env_int("WIBER_SIM_SEEDS", 200)
STEPS = env_int("WIBER_SIM_STEPS", SIM_STEPS)
WIRE_SEEDS = 12
OFFSET = seed_offset()


def run_or_fail(seed: int, steps: int, wire: bool = False) -> None:
    """Run a seed of `SIM`; on any failure, fail with one line that ends with the replay command."""
    try:
        run_seed(seed, steps, profile=SIM, wire=wire)
    except Exception as exc:  # noqa: BLE001 - every failure mode of a seed gets the same one-line report
        pytest.fail(failure_line(seed, steps, exc, wire=wire), pytrace=False)


@pytest.mark.parametrize("seed", range(OFFSET, OFFSET + SEEDS), ids=lambda s: f"s{s}")
def test_seed(seed: int) -> None:
    """Safety after every step and liveness after healing, for one seed."""
    run_or_fail(seed, STEPS)


@pytest.mark.parametrize("seed", range(OFFSET + SEEDS, OFFSET + SEEDS + WIRE_SEEDS), ids=lambda s: f"s{s}")
def test_seed_over_the_wire(seed: int) -> None:
    """The same, with every message round-tripped through the msgpack codec."""
    run_or_fail(seed, STEPS, wire=True)


def test_the_simulation_exercises_every_feature() -> None:
    """A fixed sample of seeds must actually exercise what the core offers, or passing proves little."""
    stats: Counter[str] = Counter()
    for seed in range(40):
        cluster = cluster_for(seed)
        run_seed(seed, STEPS, profile=SIM, cluster=cluster)
        stats.update(cluster.stats)
        stats.update(cluster.net.kinds)
        stats["dropped"] += cluster.net.dropped
        stats["duplicated"] += cluster.net.duplicated
        stats["crashes"] += cluster.crashes
        stats["terms"] += len(cluster.checker.leaders)
        stats["committed"] += cluster.checker.read_floor()
    for feature in ("snapshots installed", "reads answered", "reads at a stale leader", "torn writes",
                    "compactions", "TimeoutNow", "InstallSnapshot", "dropped", "duplicated", "crashes"):
        assert stats[feature] > 0, f"no {feature} in 40 seeds: {dict(stats)}"
    assert stats["terms"] > 100 and stats["committed"] > 2000, dict(stats)


def test_a_seed_runs_identically_twice() -> None:
    """Two runs of one seed are identical, step for step."""
    def run() -> list[str]:
        cluster = cluster_for(3)
        lines: list[str] = []
        cluster.net.on_send = lambda m, lost: lines.append(f"{cluster.now} {m} {lost}")
        run_seed(3, 500, profile=SIM, cluster=cluster)
        return lines
    assert run() == run()


def test_a_failing_seed_reports_one_line_with_the_command_to_rerun_it() -> None:
    """What CI prints for a failing seed: one line with the seed, ending with the command that replays it."""
    name = "up_to_date_check"
    seed = MUTATIONS[name].seeds[0]
    with mutated(name), pytest.raises(pytest.fail.Exception) as info:
        run_or_fail(seed, 2000)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"seed={seed}: InvariantViolation: Leader Completeness: ")
    assert message.endswith(f"replay: .venv/bin/python -m tests.sim.replay --seed {seed} --steps 2000")


def test_the_replay_command_replays_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m tests.sim.replay --seed N` runs the seed and prints its result, exit status 0."""
    assert replay_main(["--seed", "3", "--steps", "500", "--wire"]) == 0
    assert capsys.readouterr().out.startswith("SimResult(seed=3, nodes=5, steps=500,")


def test_the_replay_command_replays_a_mutation(capsys: pytest.CaptureFixture[str]) -> None:
    """Under `--mutation`, the seed fails: the transcript tail, then the one-line report, exit status 1."""
    seed = MUTATIONS["read_without_heartbeat"].seeds[0]
    command = ["--seed", str(seed), "--steps", "2000", "--mutation", "read_without_heartbeat"]
    assert replay_main(command) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 10 and lines[0].startswith("t=")
    assert lines[-1].startswith(f"seed={seed}: InvariantViolation: Linearizable reads: ")
    assert lines[-1].endswith(f"replay: .venv/bin/python -m tests.sim.replay {' '.join(command)}")
    assert Raft._start_read is not MUTATIONS["read_without_heartbeat"].replacement  # restored afterwards


def test_the_replay_command_runs_and_searches_many_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    """``--seeds`` sums up (exit 0 when all pass); ``--search`` lists the seeds that catch a mutation."""
    assert replay_main(["--seeds", "3", "--offset", "10", "--steps", "300"]) == 0
    out = capsys.readouterr().out
    assert "3 seeds from offset 10, 300 steps each" in out and "3 of 3 seeds passed" in out
    assert replay_main(["--search", "3", "--mutation", "leader_drops_uncommitted"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("leader_drops_uncommitted: 3 of 3 seeds break Leader Append-Only: [0, 1, 2]\n")
    assert f"  {replay_command(0, 2000, mutation='leader_drops_uncommitted')}\n" in out


MEMBERSHIP_SEEDS = env_int("WIBER_SIM_MEMBERSHIP_SEEDS", 40)


MEMBERSHIP_OFFSET = OFFSET + 50_000  # past the other seeds of the run


@pytest.mark.parametrize("seed", range(MEMBERSHIP_OFFSET, MEMBERSHIP_OFFSET + MEMBERSHIP_SEEDS), ids=lambda s: f"s{s}")
def test_seed_with_membership_changes(seed: int) -> None:
    """Five nodes, three voters at first; random adds (as learners, promoted by the leader), removes and
    disks replaced the documented way (removed, wiped, started with join, added again), under the same
    faults: every invariant after every step (Election Safety across wiped nodes
    included), and liveness of the final members after healing."""
    try:
        run_seed(seed, STEPS, profile=MEMBERSHIP, cluster=membership_cluster_for(seed))
    except Exception as exc:  # noqa: BLE001 - every failure mode of a seed gets the same one-line report
        pytest.fail(f"membership seed={seed}: {type(exc).__name__}: {exc}", pytrace=False)


def test_the_membership_seeds_exercise_every_change() -> None:
    """A fixed sample of seeds adds, removes, promotes, and replaces disks."""
    stats: Counter[str] = Counter()
    promoted = 0
    for seed in range(15):
        cluster = membership_cluster_for(seed)
        run_seed(seed, STEPS, profile=MEMBERSHIP, cluster=cluster)
        stats.update(cluster.stats)
        promoted += sum(1 for n in cluster.nodes.values() if n.core is not None and n.id in ("n4", "n5")
                        and n.id in n.core.membership.voters)
    for what in ("membership add", "membership remove", "wipes with join"):
        assert stats[what] > 0, f"no {what} in 15 seeds: {dict(stats)}"
    assert promoted > 0, "no joined node became a voter in 15 seeds"
