"""Random fault schedules and workloads over a `Cluster`, then a liveness check after healing.

`run_seed(seed)` is the whole experiment for one seed, deterministic in the seed:

1. Chaos phase, `steps` steps: at each tick, with the probabilities of a `Profile`, propose on
   the leader (or on a random node, which must refuse), start ReadIndex reads, transfer
   leadership, compact a node's log, and change the faults: partitions (isolate a node or the
   leader, split, bridge, 5-node ring, one-way links), loss and duplication, delays, crashes (now,
   or between sending and persisting a Ready). Crashed nodes restart after a random delay.
2. Liveness phase: heal the network, restart every node, then within `liveness_ticks` of
   simulated time a leader must appear and a proposal must be applied by every node (it is
   proposed again, as a client would retry, if it does not commit).

Safety is checked after every step by the cluster's `SafetyChecker`.

`SIM` and `SIM_STEPS` are what tests/sim/test_sim.py runs (`DEFAULT` plus reads at stale leaders,
for a median of over a thousand ticks a seed); ``python -m tests.sim.replay`` (`replay_command`)
replays any seed of it, and `seed_offset` moves the seeds of each test run.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

from wiber.raft import ChangeKind, ConfChange, Role
from wiber.raft.messages import ENTRY_OVERHEAD

from .cluster import Cluster

__all__ = [
    "DEFAULT", "DEFAULT_STEPS", "SIM", "SIM_STEPS", "LivenessFailure", "Profile", "SimResult", "cluster_for",
    "env_int", "failure_line", "nodes_for", "replay_command", "run_seed", "run_until",
    "seed_offset",
]

DEFAULT_STEPS = 2000
#: The steps of a seed in tests/sim/test_sim.py: a median of about 1,200 ticks (2,000 steps: 440).
SIM_STEPS = 6000
#: The environment variable that fixes `seed_offset`.
SEED_OFFSET_ENV = "WIBER_SIM_SEED_OFFSET"


class LivenessFailure(AssertionError):
    """After the faults healed, no leader appeared or no proposal committed in time."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Per-tick probabilities of the chaos phase."""

    propose: float = 0.8
    read: float = 0.05
    transfer: float = 0.01
    compact: float = 0.02
    fault: float = 0.1
    mid_ready_crash_rate: float = 0.002
    liveness_ticks: int = 300
    #: While a node still leads an older term than the newest leader's (cut off, not yet stepped
    #: down), the chance per tick that a client reads there (0: the draw is skipped, so seeds run
    #: as they did before this knob).
    stale_read: float = 0.0
    #: The chance per tick of a membership action on the leader (`_reconfigure`; 0: the draw is skipped).
    reconfig: float = 0.0


DEFAULT = Profile()
#: The profile of tests/sim/test_sim.py and of ``python -m tests.sim.replay``: clients also read
#: at leaders that were cut off, where only ReadIndex's heartbeat round stops a stale answer.
SIM = Profile(stale_read=0.5)


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one seed did (for reports and for tests that want more than "no violation")."""

    seed: int
    nodes: int
    steps: int
    ticks: int
    commit: int
    crashes: int
    terms: int
    ticks_to_leader: int
    ticks_to_commit: int
    ticks_to_all_applied: int


def nodes_for(seed: int) -> int:
    """Returns: the cluster size a seed runs with (even seeds 3 nodes, odd seeds 5)."""
    return 3 if seed % 2 == 0 else 5


def cluster_for(seed: int, *, wire: bool = False, logger: logging.Logger | None = None) -> Cluster:
    """Returns: the cluster a seed runs: its size from `nodes_for`, its Raft settings drawn from the seed.

    Settings vary so that every seed explores a corner: one-entry batches (which split a leader's
    NOOP from the old entries before it, the Figure 8 setting), tiny byte budgets, a window of one
    batch, short and long timeouts, PreVote and CheckQuorum off.
    """
    rng = random.Random(seed * 104729 + 3)
    election = rng.choice((6, 10, 10, 16))
    return Cluster(
        [f"n{i}" for i in range(1, nodes_for(seed) + 1)],
        seed,
        election_ticks=election,
        heartbeat_ticks=rng.choice((1, 2, 2, 3)),
        max_inflight=rng.choice((1, 2, 4, 16)),
        max_batch_entries=rng.choice((1, 1, 3, 8, 64)),
        max_batch_bytes=rng.choice((40, 1 << 20, 1 << 20)),
        pre_vote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
        wire=wire,
        logger=logger,
    )


#: The profile of the membership seeds (tests/sim/test_sim.py): SIM plus membership actions.
MEMBERSHIP = Profile(stale_read=0.5, reconfig=0.03)


def membership_cluster_for(seed: int) -> Cluster:
    """Returns: a cluster of five nodes that starts with three voters (n1-n3; n4 and n5 start empty
    with `join`), its Raft settings drawn from the seed as `cluster_for` draws them."""
    like = cluster_for(seed)
    cfg = like.configs[like.ids[0]]
    return Cluster([f"n{i}" for i in range(1, 6)], seed, election_ticks=cfg.election_ticks,
                   heartbeat_ticks=cfg.heartbeat_ticks, max_inflight=cfg.max_inflight,
                   max_batch_entries=cfg.max_batch_entries, max_batch_bytes=cfg.max_batch_bytes,
                   pre_vote=cfg.pre_vote, check_quorum=cfg.check_quorum, voters=["n1", "n2", "n3"])


def replay_command(seed: int, steps: int = DEFAULT_STEPS, *, wire: bool = False, mutation: str | None = None,
                   durable: bool = False, storage_mutant: str | None = None) -> str:
    """Returns: the shell command that replays exactly this seed (with `wire`, under `mutation`, on
    durable storage, under a storage mutant): ``python -m tests.sim.replay`` (tests/sim/replay.py)."""
    command = f".venv/bin/python -m tests.sim.replay --seed {seed} --steps {steps}"
    if wire:
        command += " --wire"
    if mutation is not None:
        command += f" --mutation {mutation}"
    if durable or storage_mutant is not None:
        command += " --durable"
    if storage_mutant is not None:
        command += f" --storage-mutant {storage_mutant}"
    return command


def failure_line(seed: int, steps: int, exc: BaseException, *, wire: bool = False,
                 mutation: str | None = None, durable: bool = False, storage_mutant: str | None = None) -> str:
    """Returns: a seed's failure as one line, ending with the command that replays it."""
    detail = " ".join(str(exc).split())
    where = " (durable storage)" if durable or storage_mutant is not None else ""
    return (f"seed={seed}{where}: {type(exc).__name__}: {detail} -- replay: "
            f"{replay_command(seed, steps, wire=wire, mutation=mutation, durable=durable, storage_mutant=storage_mutant)}")


@functools.cache
def seed_offset() -> int:
    """Returns: where this run's seeds start: `SEED_OFFSET_ENV` when set, else drawn at random once
    per process, so that each run of the suite explores new seeds (and prints the offset)."""
    value = os.environ.get(SEED_OFFSET_ENV, "").strip()
    return int(value) if value else random.SystemRandom().randrange(1_000_000)


def run_until(c: Cluster, done: Callable[[], bool], what: str, limit: int = 5000) -> None:
    """Step `c` until `done()` (scenarios).

    Raises:
        AssertionError: `what` did not happen within `limit` steps.
    """
    for _ in range(limit):
        if done():
            return
        c.step()
    raise AssertionError(f"no {what} within {limit} steps: {c.describe_nodes()}")


def env_int(name: str, default: int) -> int:
    """Returns: the integer in environment variable `name`, or `default`."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def run_seed(seed: int, steps: int = DEFAULT_STEPS, *, profile: Profile = DEFAULT, wire: bool = False,
             cluster: Cluster | None = None) -> SimResult:
    """Run one seed: chaos, then heal and check liveness.

    Raises:
        InvariantViolation: a safety property broke.
        LivenessFailure: no leader or no commit within the bound after healing.
    """
    n = nodes_for(seed)
    c = cluster if cluster is not None else cluster_for(seed, wire=wire)
    c.mid_ready_crash_rate = profile.mid_ready_crash_rate
    rng = random.Random(seed * 7919 + 17)
    serial = 0
    for _ in range(steps):
        if c.step():
            continue
        serial = _chaos_tick(c, rng, profile, serial)
    chaos_ticks = c.now
    to_leader, to_commit, to_all = check_liveness(c, profile.liveness_ticks, f"live-{seed}".encode())
    return SimResult(seed, n, steps, chaos_ticks, c.checker.read_floor(), c.crashes, len(c.checker.leaders),
                     to_leader, to_commit, to_all)


def _chaos_tick(c: Cluster, rng: random.Random, p: Profile, serial: int) -> int:
    """After a tick: restarts, workload, faults. Returns: the next command serial number."""
    now = c.now
    for node in c.nodes.values():
        if node.core is None and now >= node.down_until:
            c.restart(node.id)
    up = c.up()
    if not up:
        return serial
    leader = c.leader()
    r = rng.random
    if r() < p.propose:
        target = leader if leader is not None and r() < 0.85 else rng.choice(up)
        count = rng.randint(1, 3)
        datas = [f"{c.seed}:{serial + k}".encode() for k in range(count)]
        serial += count
        c.propose(target.id, datas)
    if leader is not None and leader.core is not None:
        if r() < p.read:
            c.read(leader.id, f"r{serial}".encode())
            serial += 1
        if r() < p.transfer:
            c.transfer(leader.id, None if r() < 0.5 else rng.choice(c.ids))
    if p.stale_read:
        stale = [n for n in up if n is not leader and n.core is not None and n.core.role is Role.LEADER]
        if stale and r() < p.stale_read:
            if c.read(rng.choice(stale).id, f"r{serial}".encode()):
                c.stats["reads at a stale leader"] += 1
            serial += 1
    if p.reconfig and leader is not None and r() < p.reconfig:
        _reconfigure(c, rng, leader.id)
    if r() < p.compact:
        c.compact(rng.choice(up).id)
    if r() < p.fault:
        _fault(c, rng, leader.id if leader is not None else None)
    return serial


def _reconfigure(c: Cluster, rng: random.Random, leader: str) -> None:
    """One membership action (a cluster built with `voters`): add a node that is not a member (it joins
    as a learner, promoted by the leader), remove a member (at least two voters stay), or replace the
    disk of a node whose removal is committed (wipe, start with join: the documented procedure).

    A member's disk wiped and started *without* join is not drawn: it loses what it acknowledged, and
    with a membership change in flight an old configuration's majority can then elect a leader that
    lacks a committed entry (these seeds found it). The rule for empty nodes stops the double vote
    (tests/unit/raft/test_reconfig.py), not that; docs/operations.md says to replace a disk by
    remove, wipe, --join, add."""
    core = c.nodes[leader].core
    if core is None:  # it crashed earlier in this tick
        return
    latest = core.membership
    committed = core.membership_at(core.commit_index)
    outside = [i for i in c.ids if i not in latest.members and i not in committed.members]
    action = rng.random()
    if action < 0.4 and outside:
        c.change(leader, ConfChange(ChangeKind.ADD_LEARNER, rng.choice(outside)))
    elif action < 0.7 and len(latest.voters) > 2:
        c.change(leader, ConfChange(ChangeKind.REMOVE, rng.choice(sorted(latest.members))))
    elif outside:
        c.wipe(rng.choice(outside), join=True, down_for=rng.randint(1, 20))


def _fault(c: Cluster, rng: random.Random, leader: str | None) -> None:
    """Change the fault state of the cluster at random."""
    net = c.net
    ids = c.ids
    action = rng.randrange(12)
    if action == 0:
        net.heal()
        desc = "heal"
    elif action == 1:
        net.clear_cuts()
        victim = rng.choice(ids)
        net.isolate(victim)
        desc = f"isolate {victim}"
    elif action == 2:
        net.clear_cuts()
        victim = leader or rng.choice(ids)
        net.isolate(victim)
        desc = f"isolate leader {victim}"
    elif action == 3:
        net.clear_cuts()
        shuffled = list(ids)
        rng.shuffle(shuffled)
        k = rng.randint(1, len(ids) // 2)
        net.partition(shuffled[:k], shuffled[k:])
        desc = f"partition {shuffled[:k]} | {shuffled[k:]}"
    elif action == 4:
        net.clear_cuts()
        shuffled = list(ids)
        rng.shuffle(shuffled)
        middle, rest = shuffled[0], shuffled[1:]
        half = len(rest) // 2
        net.bridge(rest[:half], rest[half:], middle)
        desc = f"bridge {rest[:half]} <{middle}> {rest[half:]}"
    elif action == 5:
        net.clear_cuts()
        if len(ids) >= 5:
            net.ring()
            desc = "ring"
        else:
            victim = rng.choice(ids)
            net.isolate(victim)
            desc = f"isolate {victim}"
    elif action == 6:
        cuts = []
        for _ in range(rng.randint(1, 3)):
            a, b = rng.sample(ids, 2)
            net.one_way(a, b)
            cuts.append(f"{a}->{b}")
        desc = f"one-way cut {' '.join(cuts)}"
    elif action == 7:
        drop = rng.choice((0.02, 0.1, 0.2, 0.35))
        dup = rng.choice((0.0, 0.05, 0.15))
        net.set_loss(drop, dup)
        desc = f"loss drop={drop} dup={dup}"
    elif action == 8:
        hi = rng.choice((0, 1, 2, 3, 6))
        net.set_delay(0, hi)
        desc = f"delay 0..{hi}"
    elif action == 9:
        victim = rng.choice(ids)
        c.crash(victim, rng.randint(1, 40))
        desc = f"crash {victim}"
    elif action == 10:
        victim = leader or rng.choice(ids)
        c.crash(victim, rng.randint(1, 40))
        desc = f"crash leader {victim}"
    else:
        victim = rng.choice(ids)
        c.nodes[victim].crash_mid_ready = True
        desc = f"crash {victim} at its next write"
    c._event(desc)


def _marker_reach(c: Cluster, majority: int) -> tuple[bool, bool]:
    """Returns: whether a majority of the voters applied the watched marker, and whether every member
    did (every node, unless the cluster changes membership: then the members the leader follows)."""
    applied = c.watch_applied
    if not c.reconfig:
        return len(applied) >= majority, len(applied) == len(c.ids)
    leader = c.leader()
    if leader is None or leader.core is None:
        return False, False
    members = leader.core.membership
    return len(applied & members.voters) >= len(members.voters) // 2 + 1, members.members <= applied


def check_liveness(c: Cluster, bound: int, marker: bytes) -> tuple[int, int, int]:
    """Heal everything and restart every node, then require, in simulated time:

    * a leader within `bound` ticks;
    * a proposal (`marker`, proposed on the leader and again every few election timeouts, as a
      client retries) applied by a majority within ``bound + catch_up`` ticks;
    * and by every node within ``2 * (bound + catch_up)`` ticks.

    ``catch_up`` allows for the backlog: a new leader commits nothing before a majority holds its
    log up to its NOOP, and with the small batches and windows some seeds use, that takes one
    round trip (at most 4 ticks here) per window of entries behind.

    Returns:
        the ticks until a leader, until the majority commit, until every node applied it.
    Raises:
        LivenessFailure: one of these did not happen in time.
    """
    net = c.net
    net.heal()
    net.set_delay(0, 2)
    for node in c.nodes.values():
        node.crash_mid_ready = False
        c.restart(node.id)
    c.mid_ready_crash_rate = 0.0
    c.watch = marker
    c.watch_applied = set()
    config = c.configs[c.ids[0]]
    per_batch = max(1, min(config.max_batch_entries, config.max_batch_bytes // (ENTRY_OVERHEAD + 16)))
    backlog = (max(n.storage.last_index() for n in c.nodes.values())
               - min(n.storage.initial_state()[0].commit for n in c.nodes.values()))
    commit_bound = bound + 4 * -(-backlog // (per_batch * config.max_inflight))
    start = c.now
    retry_every = 3 * config.election_ticks
    majority = len(c.ids) // 2 + 1
    proposed_at: int | None = None
    leader_at: int | None = None
    commit_at: int | None = None
    while True:
        if not c.step():
            leader = c.leader()
            if leader is not None:
                if leader_at is None:
                    leader_at = c.now - start
                due = proposed_at is None or c.now - proposed_at >= retry_every
                if due and c.propose(leader.id, [marker]) is not None:
                    proposed_at = c.now
        committed_now, all_now = _marker_reach(c, majority)
        if commit_at is None and committed_now:
            commit_at = c.now - start
        if all_now:
            assert leader_at is not None and commit_at is not None
            return leader_at, commit_at, c.now - start
        elapsed = c.now - start
        if ((leader_at is None and elapsed > bound) or (commit_at is None and elapsed > commit_bound)
                or elapsed > 2 * commit_bound):
            what = ("no leader" if leader_at is None else
                    "no commit on a majority" if commit_at is None else "not applied by every node")
            raise LivenessFailure(
                f"{what} within the bound ({bound} ticks for a leader, {commit_bound} to commit, a backlog "
                f"of {backlog}) after healing at t={start} (now t={c.now}; {c.describe_nodes()})")
