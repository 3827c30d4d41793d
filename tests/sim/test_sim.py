"""Seeded whole-cluster simulations of the Raft core (docs/design.md section 6.2).

* `test_seed[N]`: `WIBER_SIM_SEEDS` seeds (default 500; even seeds run 3 nodes, odd seeds 5) of
  `WIBER_SIM_STEPS` steps (default 2000) of random faults and workload, safety checked after
  every step, then liveness after healing. Any failure is one line ending with the command that
  replays the seed, e.g. ``WIBER_SIM_SEED=1234 .venv/bin/python -m pytest tests/sim/test_sim.py -k replay``.
* `test_replay`: runs the seed in `WIBER_SIM_SEED` (with `WIBER_SIM_STEPS`, `WIBER_SIM_WIRE=1`),
  printing its transcript tail on failure (`WIBER_SIM_TRACE=1` prints it all).
* `test_transcript[...]`: scripted scenarios compared line by line with golden files in
  ``tests/sim/testdata/``; ``WIBER_REWRITE=1`` rewrites them.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from wiber.raft import Role

from .chaos import DEFAULT_STEPS, cluster_for, env_int, replay_command, run_seed
from .cluster import Cluster
from .trace import Transcript

SEEDS = env_int("WIBER_SIM_SEEDS", 500)
STEPS = env_int("WIBER_SIM_STEPS", DEFAULT_STEPS)
WIRE_SEEDS = 12
TESTDATA = Path(__file__).parent / "testdata"


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


# -- transcripts ----------------------------------------------------------------------------------

def _run_until(c: Cluster, what: str, done: Callable[[], bool], bound: int = 2000) -> None:
    for _ in range(bound):
        if done():
            return
        c.step()
    raise AssertionError(f"transcript scenario: {what} did not happen in {bound} steps")


def _all_applied(c: Cluster, index: int) -> bool:
    return all(n.state[0] >= index for n in c.nodes.values() if n.core is not None)


def scenario_election_replication_partition(c: Cluster, t: Transcript) -> None:
    """Elect, replicate, cut the leader off, elect another, heal and catch up."""
    t.note("three nodes start; the first to time out pre-votes, campaigns and wins")
    _run_until(c, "a leader", lambda: c.leader() is not None and _all_applied(c, 1))
    first = c.leader()
    assert first is not None
    t.note(f"propose three entries on {first.id}")
    c.propose(first.id, [b"a", b"b", b"c"])
    _run_until(c, "replication", lambda: _all_applied(c, 2))
    t.note(f"isolate {first.id}: the others elect a new leader, {first.id} steps down (CheckQuorum)")
    c.net.isolate(first.id)
    c._event(f"isolate {first.id}")
    _run_until(c, "a new leader", lambda: (c.leader() is not None and c.leader() is not first
                                           and first.core is not None and first.core.role is Role.FOLLOWER))
    second = c.leader()
    assert second is not None
    t.note(f"{second.id} leads; a proposal commits on the majority")
    c.propose(second.id, [b"d"])
    _run_until(c, "commit on the majority", lambda: second.state[0] >= 6)
    t.note(f"heal: {first.id} learns the new term and catches up")
    c.net.heal()
    c._event("heal")
    _run_until(c, "catch-up", lambda: _all_applied(c, 6))


def scenario_snapshot_read_transfer(c: Cluster, t: Transcript) -> None:
    """Crash a follower, compact the leader's log, restart the follower (InstallSnapshot), read
    linearizably, then hand leadership over to the restarted follower."""
    _run_until(c, "a leader", lambda: c.leader() is not None and _all_applied(c, 1))
    leader = c.leader()
    assert leader is not None
    follower = next(i for i in c.ids if i != leader.id)
    t.note(f"crash {follower}, commit two entries without it, compact {leader.id}'s log")
    c.crash(follower, 1000)
    c.propose(leader.id, [b"x"])
    c.propose(leader.id, [b"y"])
    _run_until(c, "commit", lambda: leader.state[0] >= 3)
    c.compact(leader.id)
    t.note(f"restart {follower}: it needs compacted entries, so it gets the snapshot")
    c.restart(follower)
    _run_until(c, "snapshot install", lambda: _all_applied(c, 3))
    t.note(f"a linearizable read on {leader.id} waits for a heartbeat round")
    c.read(leader.id, b"read-1")
    _run_until(c, "read", lambda: c.stats["reads answered"] == 1)
    t.note(f"transfer leadership to {follower}: TimeoutNow, then a forced election")
    c.transfer(leader.id, follower)
    _run_until(c, "transfer", lambda: c.leader() is c.nodes[follower] and _all_applied(c, 4))


SCENARIOS = {
    "election_replication_partition": scenario_election_replication_partition,
    "snapshot_read_transfer": scenario_snapshot_read_transfer,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_transcript(name: str) -> None:
    """A scripted scenario's transcript matches its golden file (WIBER_REWRITE=1 to regenerate)."""
    logger = logging.getLogger(f"wiber.sim.transcript.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    c = Cluster(["n1", "n2", "n3"], seed=2024, election_ticks=10, heartbeat_ticks=3, logger=logger)
    c.net.set_delay(1, 1)
    t = Transcript(c)
    try:
        SCENARIOS[name](c, t)
    finally:
        t.close()
    golden = TESTDATA / f"{name}.txt"
    if os.environ.get("WIBER_REWRITE") == "1":
        TESTDATA.mkdir(exist_ok=True)
        golden.write_text(t.text())
        return
    expected = golden.read_text() if golden.exists() else ""
    if t.text() != expected:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), t.text().splitlines(True),
                                                 str(golden), "actual"))[:60])
        pytest.fail(f"transcript {name} differs from {golden} (WIBER_REWRITE=1 .venv/bin/python -m pytest "
                    f"tests/sim/test_sim.py -k transcript to accept):\n{diff}")
