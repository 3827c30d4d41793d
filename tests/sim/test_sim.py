"""Seeded whole-cluster simulations of the Raft core (docs/design.md section 6.2).

* `test_seed[N]`: `WIBER_SIM_SEEDS` seeds (default 500; even seeds run 3 nodes, odd seeds 5) of
  `WIBER_SIM_STEPS` steps (default 2000) of random faults and workload, safety checked after
  every step, then liveness after healing. Any failure is one line ending with the command that
  replays the seed, e.g. ``WIBER_SIM_SEED=1234 .venv/bin/python -m pytest tests/sim/test_sim.py -k replay``.
* `test_replay`: runs the seed in `WIBER_SIM_SEED` (with `WIBER_SIM_STEPS`, `WIBER_SIM_WIRE=1`),
  printing its transcript tail on failure (`WIBER_SIM_TRACE=1` prints it all).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import pytest

from .chaos import DEFAULT_STEPS, cluster_for, env_int, replay_command, run_seed
from .trace import Transcript

SEEDS = env_int("WIBER_SIM_SEEDS", 500)
STEPS = env_int("WIBER_SIM_STEPS", DEFAULT_STEPS)
WIRE_SEEDS = 12


def run_or_fail(seed: int, steps: int, wire: bool = False) -> None:
    """Run a seed; on any failure, fail with one line that ends with the replay command."""
    try:
        run_seed(seed, steps, wire=wire)
    except Exception as exc:  # noqa: BLE001 - every failure mode of a seed gets the same one-line report
        detail = " ".join(str(exc).split())
        command = replay_command(seed, steps)
        if wire:
            command = "WIBER_SIM_WIRE=1 " + command
        pytest.fail(f"seed={seed}: {type(exc).__name__}: {detail} -- replay: {command}", pytrace=False)


@pytest.mark.parametrize("seed", range(SEEDS), ids=lambda s: f"s{s}")
def test_seed(seed: int) -> None:
    """Safety after every step and liveness after healing, for one seed."""
    run_or_fail(seed, STEPS)


@pytest.mark.parametrize("seed", range(10_000, 10_000 + WIRE_SEEDS), ids=lambda s: f"s{s}")
def test_seed_over_the_wire(seed: int) -> None:
    """The same, with every message round-tripped through the msgpack codec."""
    run_or_fail(seed, STEPS, wire=True)


@pytest.mark.skipif("WIBER_SIM_SEED" not in os.environ, reason="set WIBER_SIM_SEED=<seed> to replay a seed")
def test_replay() -> None:
    """Replay one seed exactly, with its transcript for debugging."""
    seed = int(os.environ["WIBER_SIM_SEED"])
    wire = os.environ.get("WIBER_SIM_WIRE") == "1"
    logger = logging.getLogger(f"wiber.sim.replay.{seed}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    cluster = cluster_for(seed, wire=wire, logger=logger)
    transcript = Transcript(cluster)
    try:
        result = run_seed(seed, STEPS, cluster=cluster)
    except Exception:
        print("\n".join(transcript.lines[-200:]))
        raise
    finally:
        transcript.close()
    if os.environ.get("WIBER_SIM_TRACE") == "1":
        print(transcript.text())
    print(result)


def test_the_simulation_exercises_every_feature() -> None:
    """A sample of seeds must actually exercise what the core offers, or passing proves little."""
    stats: Counter[str] = Counter()
    for seed in range(40):
        cluster = cluster_for(seed)
        run_seed(seed, STEPS, cluster=cluster)
        stats.update(cluster.stats)
        stats.update(cluster.net.kinds)
        stats["dropped"] += cluster.net.dropped
        stats["duplicated"] += cluster.net.duplicated
        stats["crashes"] += cluster.crashes
        stats["terms"] += len(cluster.checker.leaders)
        stats["committed"] += cluster.checker.read_floor()
    for feature in ("snapshots installed", "reads answered", "torn writes", "compactions", "TimeoutNow",
                    "InstallSnapshot", "dropped", "duplicated", "crashes"):
        assert stats[feature] > 0, f"no {feature} in 40 seeds: {dict(stats)}"
    assert stats["terms"] > 100 and stats["committed"] > 2000, dict(stats)


def test_a_seed_runs_identically_twice() -> None:
    """Two runs of one seed are identical, step for step."""
    def run() -> list[str]:
        cluster = cluster_for(3)
        lines: list[str] = []
        cluster.net.on_send = lambda m, lost: lines.append(f"{cluster.now} {m} {lost}")
        run_seed(3, 500, cluster=cluster)
        return lines
    assert run() == run()
