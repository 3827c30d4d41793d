"""Scripted scenarios of the Raft core in the etcd style, compared line by line with golden transcripts.

Each scenario drives a small simulated cluster by hand (crash this node, compact that log, isolate
the leader) and records every message, role change and fault (`Transcript`); the text must equal
its golden file in ``tests/sim/testdata/``. ``WIBER_REWRITE=1`` rewrites the files, and the diff is
then reviewed like code. Each scenario also asserts its outcome on the nodes' state, so a rewritten
golden file cannot silently accept a wrong story.

The scenarios (one golden file each, named after the scenario):

* ``election_replication_partition``: elect, replicate, isolate the leader, elect another, heal.
* ``snapshot_read_transfer``: a crashed follower restarts after compaction (InstallSnapshot), a
  linearizable read, a leadership transfer.
* ``slow_follower_after_compaction``: the leader's link to a follower is paused while it commits and
  compacts past the follower's match; the follower is caught up by InstallSnapshot, then appends.
* ``lagging_commit``: a follower stores and acks entries but hears nothing more from the leader; it
  applies nothing until a heartbeat brings the commit index, then exactly the committed entries.
* ``leader_isolated_mid_append``: the leader is isolated when its entry reached one follower only,
  and appends another that reaches nobody; the follower holding the first is elected and commits
  it, the old leader steps down and its second entry is overwritten when it rejoins.

The per-link faults are built from `SimNetwork.cut`, `clear_cuts`, `isolate` and `heal`.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from wiber.raft import Entry, Role

from .cluster import Cluster, SimNode
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


def _fault(c: Cluster, line: str) -> None:
    """Record a fault the scenario injects by hand as an EVENT line of the transcript."""
    c._event(line)


def _entry(node: SimNode, index: int) -> Entry:
    """Returns: the entry `node` holds (persisted) at `index`."""
    return node.storage.entries(index, index + 1)[0]


def _started(c: Cluster, t: Transcript) -> SimNode:
    """Run until a leader is elected and everyone applied its first entry. Returns: the leader."""
    t.note("three nodes start and elect a leader, whose first entry commits everywhere")
    _run_until(c, "a leader", lambda: c.leader() is not None and _all_applied(c, 1))
    leader = c.leader()
    assert leader is not None
    return leader


def _propose(c: Cluster, node: SimNode, datas: list[bytes]) -> tuple[int, int]:
    """Propose on a node that must accept. Returns: the first and last index of the entries."""
    indexes = c.propose(node.id, datas)
    assert indexes is not None, f"{node.id} refused the proposal"
    return indexes


def scenario_slow_follower_after_compaction(c: Cluster, t: Transcript) -> None:
    """A follower's link is paused while the leader commits and compacts past its match index:
    the follower is caught up by InstallSnapshot, then by ordinary appends (etcd's
    ``slow_follower_after_compaction``)."""
    leader = _started(c, t)
    fast, slow = (c.nodes[i] for i in c.ids if i != leader.id)
    assert leader.core is not None
    match = leader.core.match_index(slow.id)
    t.note(f"pause {leader.id}->{slow.id} (everything {leader.id} sends {slow.id} is lost); "
           f"{slow.id} holds up to {match}")
    c.net.cut(leader.id, slow.id)
    _fault(c, f"cut {leader.id}->{slow.id}")
    t.note(f"{leader.id} commits three entries with {fast.id} alone, then compacts its log")
    _, last = _propose(c, leader, [b"a", b"b", b"c"])
    _run_until(c, "commit without the slow follower", lambda: leader.state[0] >= last and fast.state[0] >= last)
    assert slow.storage.last_index() == match and slow.state[0] == match
    assert c.compact(leader.id)
    assert leader.core is not None and leader.core.match_index(slow.id) + 1 < leader.storage.first_index(), \
        "the slow follower's next entry must be compacted away on the leader"
    snapshots = c.stats["snapshots installed"]
    t.note(f"resume {leader.id}->{slow.id}: {slow.id} refuses a probe at {last}; the entry it needs, "
           f"{match + 1}, is compacted on {leader.id}, so {leader.id} sends its snapshot")
    c.net.clear_cuts()
    _fault(c, f"resume {leader.id}->{slow.id}")
    _run_until(c, "snapshot install", lambda: slow.state[0] >= last)
    assert c.stats["snapshots installed"] == snapshots + 1
    meta, _ = slow.storage.snapshot()
    assert meta.index == last and slow.storage.first_index() == last + 1, "caught up by the snapshot"
    t.note(f"two more entries reach {slow.id} as ordinary appends after the snapshot")
    _propose(c, leader, [b"d", b"e"])
    _run_until(c, "appends after the snapshot", lambda: _all_applied(c, last + 2))
    assert slow.storage.snapshot()[0].index == last, "no second snapshot"
    assert [e.data for e in slow.storage.entries(last + 1, last + 3)] == [b"d", b"e"]
    assert slow.state == leader.state == fast.state


def scenario_lagging_commit(c: Cluster, t: Transcript) -> None:
    """A follower stores and acknowledges entries, then loses every message from the leader: it
    does not apply them until the commit index reaches it, and then applies exactly those."""
    leader = _started(c, t)
    other, lagging = (c.nodes[i] for i in c.ids if i != leader.id)
    t.note(f"propose p, q on {leader.id}; cut {leader.id}->{lagging.id} right after {lagging.id} "
           f"stored them (its ack is on the way)")
    first, last = _propose(c, leader, [b"p", b"q"])
    _run_until(c, f"{lagging.id} storing p, q", lambda: lagging.storage.last_index() >= last)
    c.net.cut(leader.id, lagging.id)
    _fault(c, f"cut {leader.id}->{lagging.id}")
    old_commit = lagging.state[0]
    assert leader.core is not None
    _run_until(c, "the commit of p, q", lambda: leader.state[0] >= last and other.state[0] >= last
               and leader.core is not None and leader.core.match_index(lagging.id) >= last)
    assert leader.state[0] == last
    committed_state = leader.state
    t.note(f"{leader.id} commits p, q ({other.id} and {lagging.id} acked); {lagging.id} holds them but "
           f"its commit is still {old_commit}; r commits without {lagging.id}")
    _propose(c, leader, [b"r"])
    lag_core = lagging.core
    assert lag_core is not None

    def lagging_unapplied() -> bool:
        assert lag_core.commit_index == old_commit and lagging.state[0] == old_commit, \
            f"{lagging.id} applied before it learned the commit"
        return leader.state[0] >= last + 1 and other.state[0] >= last + 1

    _run_until(c, "the commit of r", lagging_unapplied)
    t.note(f"heartbeats carry commit={last + 1}; {lagging.id} hears none of them for six ticks")
    until = c.now + 6
    _run_until(c, "six ticks", lambda: lagging_unapplied() and c.now >= until)
    assert lagging.storage.last_index() == last and lag_core.commit_index == old_commit
    t.note(f"resume {leader.id}->{lagging.id}: a heartbeat anchored at its match {last} tells it "
           f"commit min({last + 1}, {last}) = {last}, so it applies p, q and no more")
    c.net.clear_cuts()
    _fault(c, f"resume {leader.id}->{lagging.id}")
    _run_until(c, f"{lagging.id} learning the commit", lambda: lag_core.commit_index != old_commit)
    assert lag_core.commit_index == last and lagging.state == committed_state, \
        f"{lagging.id} must apply exactly p, q"
    assert lagging.storage.last_index() == last
    t.note(f"r reaches {lagging.id} by an ordinary append (after a probe at {last + 1} it refuses)")
    _run_until(c, "r", lambda: _all_applied(c, last + 1))
    assert lagging.state == leader.state == other.state
    assert [_entry(lagging, i).data for i in range(first, last + 2)] == [b"p", b"q", b"r"]


def scenario_leader_isolated_mid_append(c: Cluster, t: Transcript) -> None:
    """The leader's append reaches one follower only, and the leader is cut off before the ack
    comes back; a second entry reaches nobody. The follower that holds the first entry is elected
    and commits it; the old leader steps down and, when it rejoins, its second entry is
    overwritten."""
    old = _started(c, t)
    holder, other = (c.nodes[i] for i in c.ids if i != old.id)
    old_core = old.core
    assert old_core is not None
    old_term = old_core.term
    committed = [_entry(old, i) for i in range(1, old_core.commit_index + 1)]
    c.watch = b"y"
    t.note(f"cut {old.id}->{other.id}; {old.id} proposes x: the append reaches {holder.id} only")
    c.net.cut(old.id, other.id)
    _fault(c, f"cut {old.id}->{other.id}")
    ix, _ = _propose(c, old, [b"x"])
    _run_until(c, f"{holder.id} storing x", lambda: holder.storage.last_index() >= ix)
    t.note(f"isolate {old.id} before {holder.id}'s ack is back: x is on {old.id} and {holder.id}, "
           f"uncommitted; {old.id}, still leader, appends y, which reaches nobody")
    c.net.isolate(old.id)
    _fault(c, f"isolate {old.id}")
    iy, _ = _propose(c, old, [b"y"])
    assert iy == ix + 1 and old_core.commit_index < ix
    assert other.storage.last_index() < ix
    t.note(f"{holder.id}, whose log is longer, wins the election; {old.id} steps down (CheckQuorum)")
    _run_until(c, "a new leader", lambda: c.leader() not in (None, old) and old_core.role is Role.FOLLOWER)
    assert c.leader() is holder, "only the follower holding x can win"
    new_core = holder.core
    assert new_core is not None and new_core.term > old_term
    t.note(f"{holder.id}'s first entry of term {new_core.term} (index {iy}) reaches {other.id} with x "
           f"({other.id} first refuses it: it lacks x); {other.id}'s ack commits both")
    _run_until(c, "x committed", lambda: holder.state[0] >= iy and other.state[0] >= iy)
    for n in (holder, other):
        assert (_entry(n, ix).term, _entry(n, ix).data) == (old_term, b"x"), "x committed by the new leader"
        assert _entry(n, iy).term == new_core.term
    assert (_entry(old, iy).term, _entry(old, iy).data) == (old_term, b"y")
    t.note(f"heal: {old.id} learns term {new_core.term}; its y at {iy} is overwritten by {holder.id}'s entry")
    c.net.heal()
    _fault(c, "heal")
    _run_until(c, "catch-up", lambda: _all_applied(c, iy))
    assert old.core is old_core and old_core.role is Role.FOLLOWER and old_core.leader_id == holder.id
    assert old_core.term == new_core.term
    assert _entry(old, iy) == _entry(holder, iy) and _entry(old, iy).data != b"y", "y overwritten"
    assert c.watch_applied == set(), "y, never acknowledged, is applied nowhere"
    for n in c.nodes.values():
        assert [_entry(n, i) for i in range(1, len(committed) + 1)] == committed, "a committed entry was lost"
        assert _entry(n, ix).data == b"x"
    assert old.state == holder.state == other.state


SCENARIOS = {
    "election_replication_partition": scenario_election_replication_partition,
    "snapshot_read_transfer": scenario_snapshot_read_transfer,
    "slow_follower_after_compaction": scenario_slow_follower_after_compaction,
    "lagging_commit": scenario_lagging_commit,
    "leader_isolated_mid_append": scenario_leader_isolated_mid_append,
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
