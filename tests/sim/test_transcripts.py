"""Scripted scenarios of the Raft core in the etcd style, compared line by line with golden transcripts.

Each scenario drives a small simulated cluster by hand (crash this node, compact that log, isolate
the leader) and records every message, role change and fault (`Transcript`); the text must equal
its golden file in ``tests/sim/testdata/``. ``WIBER_REWRITE=1`` rewrites the files, and the diff is
then reviewed like code.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from wiber.raft import Role

from .cluster import Cluster
from .trace import Transcript

TESTDATA = Path(__file__).parent / "testdata"


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
                    f"tests/sim/test_transcripts.py to accept):\n{diff}")
