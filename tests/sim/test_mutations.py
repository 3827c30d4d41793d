"""Proof that the simulation catches real bugs: switch off one rule of the core, see the property break.

Each mutation of `tests/sim/mutations.py` replaces one method of `Raft` and names the safety
property of `tests/sim/invariants.py` it must break; every property has at least one:

* Election Safety: `vote_twice` (a vote granted again in the same term), `vote_before_persisting`
  (a vote forgotten in a crash).
* Leader Append-Only: `leader_drops_uncommitted` (a new leader deletes its uncommitted tail).
* Log Matching: `no_prev_term_check` (a follower appends after a mismatching prev entry).
* Leader Completeness: `up_to_date_check` (section 5.4.1 off), `figure_8` (section 5.4.2 off),
  `ack_before_persisting` (an acknowledged entry lost in a crash).
* State Machine Safety: `commit_beyond_new_entries` (a follower commits a stale suffix).
* Linearizable reads: `read_without_heartbeat` (ReadIndex without its heartbeat round), also shown
  by a deterministic scenario: a leader cut off from the others answers from its stale commit index.

The listed seeds must each raise exactly that property, and pass without the mutation. When a
change to the core or the simulation moves them, find new ones with
``.venv/bin/python -m tests.sim.replay --search 300 --mutation NAME``; replay one with
``.venv/bin/python -m tests.sim.replay --seed N --steps 2000 --mutation NAME``.
"""

from __future__ import annotations

import pytest

from wiber.raft import Role

from .chaos import SIM, replay_command, run_seed, run_until
from .cluster import Cluster
from .invariants import LINEARIZABLE_READS, PROPERTIES, InvariantViolation
from .mutations import MUTATION_STEPS, MUTATIONS, mutated


def _outcome(seed: int) -> str:
    """Returns: how seed `seed` ends (`MUTATION_STEPS` steps of `SIM`): the property broken, or why not."""
    try:
        run_seed(seed, MUTATION_STEPS, profile=SIM)
    except InvariantViolation as exc:
        return exc.broken
    except Exception as exc:  # noqa: BLE001 - any other ending is reported, and is not the property
        return f"{type(exc).__name__}: {exc}"
    return "passed"


def test_every_property_has_a_mutation() -> None:
    """Each safety property the checker knows is the target of at least one mutation."""
    assert {m.breaks for m in MUTATIONS.values()} == set(PROPERTIES)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_mutation_breaks_its_property(name: str) -> None:
    """With the rule switched off, every listed seed breaks the property the mutation targets."""
    mutation = MUTATIONS[name]
    with mutated(name):
        outcomes = {seed: _outcome(seed) for seed in mutation.seeds}
    wrong = {seed: outcome for seed, outcome in outcomes.items() if outcome != mutation.breaks}
    assert not wrong, (
        f"mutation {name} must break {mutation.breaks}, seeds ended otherwise: {wrong} (replay: "
        f"{replay_command(next(iter(wrong)), MUTATION_STEPS, mutation=name)}; search again: "
        f".venv/bin/python -m tests.sim.replay --search 300 --mutation {name})")


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_listed_seeds_pass_on_the_real_core(name: str) -> None:
    """Without the mutation the same seeds pass: the violation is the mutation's doing."""
    outcomes = {seed: _outcome(seed) for seed in MUTATIONS[name].seeds}
    assert set(outcomes.values()) == {"passed"}, outcomes


# -- a stale leader's read, deterministically ----------------------------------------------------------


def _ticks(c: Cluster, ticks: int) -> None:
    """Run `c` for `ticks` ticks of simulated time."""
    end = c.now + ticks
    run_until(c, lambda: c.now >= end, f"t={end}", 100 * ticks)


def _role(c: Cluster, node: str) -> Role | None:
    """Returns: the role of `node` (None while it is down)."""
    core = c.nodes[node].core
    return core.role if core is not None else None


def stale_leader_read() -> tuple[Cluster, str]:
    """Three nodes, CheckQuorum off; the leader, n*, commits two commands, is cut off from the
    others, which elect a new leader and commit a third; then a client reads at the old leader, and
    the cluster runs two more election timeouts.

    Returns:
        the cluster and the old leader's id.
    Raises:
        InvariantViolation: the old leader answered the read from its commit index (stale: the new
            leader has committed more).
    """
    c = Cluster(["n1", "n2", "n3"], 7, check_quorum=False)
    run_until(c, lambda: c.leader() is not None, "leader")
    old = c.leader()
    assert old is not None
    c.propose(old.id, [b"a", b"b"])
    run_until(c, lambda: all(n.state[0] >= 3 for n in c.nodes.values()), "commit of a, b everywhere")
    c.net.isolate(old.id)
    run_until(c, lambda: c.leader() not in (None, old), "new leader")
    new = c.leader()
    assert new is not None and old.core is not None and old.core.role is Role.LEADER
    c.propose(new.id, [b"c"])
    stale_commit = old.core.commit_index
    run_until(c, lambda: c.checker.read_floor() > stale_commit, "commit of c")
    assert c.read(old.id, b"stale read"), "the old leader refused the read"
    _ticks(c, 2 * c.configs[old.id].election_ticks)
    return c, old.id


def test_a_leader_cut_off_does_not_answer_a_read() -> None:
    """The real core holds the stale leader's read (no heartbeat round completes), and drops it
    when it learns of the new term, without a violation."""
    c, old = stale_leader_read()
    assert _role(c, old) is Role.LEADER, c.describe_nodes()
    assert b"stale read" in c.nodes[old].read_floors and c.stats["reads answered"] == 0
    c.net.heal()
    _ticks(c, 4 * c.configs[old].election_ticks)
    assert _role(c, old) is Role.FOLLOWER, c.describe_nodes()
    assert c.stats["reads answered"] == 0


def test_a_read_without_the_heartbeat_round_is_caught_in_the_scenario() -> None:
    """With `read_without_heartbeat`, the stale leader answers at once, and the checker says so."""
    with mutated("read_without_heartbeat"), pytest.raises(InvariantViolation) as info:
        stale_leader_read()
    assert info.value.broken == LINEARIZABLE_READS, str(info.value)
