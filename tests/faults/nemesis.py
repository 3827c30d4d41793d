"""The nemesis: faults against real node processes and the network between them.

Process faults (any cluster):

* ``kill_leader`` / ``kill_follower`` / ``kill_random`` - kill -9; heal: start it again.
* ``kill_majority`` / ``kill_all`` - kill -9 a majority / every node (no quorum: nothing can be
                     acknowledged); heal: start them again. Acknowledged messages must survive.
* ``pause_leader`` - SIGSTOP the leader; heal: SIGCONT (it must find out it was deposed).
* ``pause_majority`` - SIGSTOP a majority (no quorum; the leader, if not paused, steps down).
* ``clock_skew``   - kill -9 a node and start it with ``WIBER_CLOCK_SKEW_MS`` of +-2..60 s;
                     heal: SIGTERM it (a graceful stop) and start it unskewed.

Network faults (nodes in network namespaces, `tests.faults.netlab`; root only):

* ``isolate_one``          - one node cut from every other, both ways (silent drops).
* ``random_halves``        - a random minority cut from the majority (the leader on either side).
* ``leader_from_majority`` - the leader cut from every other.
* ``bridge``               - two sides that cannot see each other, and one node that sees both.
* ``majorities_ring``      - (5 nodes) a ring: each node sees its two neighbours only, so each
                             sees a majority and no two see the same one.
* ``one_way``              - packets from one node to one peer dropped, the reverse direction open.
* ``blackhole_one``        - blackhole routes to every peer in one node's namespace (sends fail at
                             once: a fast-fail cut rather than a silent one).
* ``slow_link``            - tbf rate limit on the leader's outbound link (64 kbit/s - 1 Mbit/s).

Heal of a network fault: delete the nftables tables, qdiscs and routes. Delay, random loss,
duplication and reordering by the kernel (tc netem) are not available on the test machines, whose
kernels have no netem qdisc and no gact action.

Every fault is recorded in the history when applied (``start``) and when healed (``heal``),
with its kind, its nodes and a description. Targets are chosen with the seeded `random.Random`
given, so a seed replays the same choices (which node is leader depends on timing, though).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults import netlab
from tests.faults.cluster import DOWN, PAUSED, FaultCluster
from tests.faults.history import HEAL, INFO, START, HistoryWriter

log = logging.getLogger(__name__)

PROCESS_FAULTS = ("kill_leader", "kill_follower", "kill_random", "kill_majority", "kill_all",
                  "pause_leader", "pause_majority", "clock_skew")
NETWORK_FAULTS = ("isolate_one", "leader_from_majority", "random_halves", "bridge", "majorities_ring",
                  "one_way", "blackhole_one", "slow_link")
ALL_FAULTS = PROCESS_FAULTS + NETWORK_FAULTS

#: Faults that take the current leader away from the majority (promise 6: a new one within 1.5 s).
LEADER_LOSS = ("kill_leader", "pause_leader", "leader_from_majority")

NETEM_REASON = ("added latency and random packet loss need tc netem, which this kernel does not have "
                "(no netem qdisc, no gact action on the test machines); the seeded Raft simulation (tests/sim) covers "
                "delay, loss, duplication and reordering, and `slow_link` covers a slow link with tbf")

SKEW_ENV = "WIBER_CLOCK_SKEW_MS"


class NoLeader(RuntimeError):
    """No leader could be found to aim a fault at."""


@dataclass
class Fault:
    """One applied fault and how to undo it."""

    id: int
    kind: str
    nodes: list[str]
    detail: str
    undo: Callable[[], None] = field(repr=False)
    healed: bool = False


class Nemesis:
    """Applies and heals faults on one `FaultCluster` (see the module docstring)."""

    def __init__(self, cluster: FaultCluster, history: HistoryWriter, rng: random.Random,
                 net_reason: str | None = None) -> None:
        self.cluster = cluster
        self.net_reason = net_reason  # why the cluster is not in network namespaces, if it is not
        self.history = history
        self.rng = rng
        self._next_id = 1
        self.active: list[Fault] = []

    # ------------------------------------------------------------ what can run here

    def unavailable(self, kind: str) -> str | None:
        """Returns: why `kind` cannot run on this cluster, or None when it can."""
        if kind == "netem":
            return NETEM_REASON
        if kind not in ALL_FAULTS:
            return f"unknown fault {kind!r}"
        if kind in NETWORK_FAULTS:
            if self.cluster.lab is None:
                return (self.net_reason or netlab.unavailable_reason()
                        or "the cluster runs on 127.0.0.1, not in network namespaces")
            if kind == "majorities_ring" and len(self.cluster.nodes) < 5:
                return "a majorities ring needs 5 nodes (with 3, every node sees every other)"
        return None

    # ------------------------------------------------------------ helpers

    def leader(self) -> str:
        """Returns: the leader every up node names. Raises: NoLeader."""
        agreed = self.cluster.agreed_leader()
        if agreed is None:
            raise NoLeader("no leader named by every up node")
        return agreed[0]

    def _others(self, node: str) -> list[str]:
        return [n for n in self.cluster.nodes if n != node]

    def _pick(self, nodes: list[str]) -> str:
        return self.rng.choice(sorted(nodes))

    def _record(self, type_f: str, fault: Fault) -> None:
        self.history.record(INFO, type_f, value=fault.kind, node=",".join(fault.nodes), fault_id=fault.id,
                            detail=fault.detail)
        log.info("nemesis %s #%d %s: %s", type_f, fault.id, fault.kind, fault.detail)

    def _lab(self) -> netlab.NetLab:
        lab = self.cluster.lab
        if lab is None:
            raise RuntimeError("network faults need the cluster in network namespaces")
        return lab

    # ------------------------------------------------------------ apply and heal

    def start(self, kind: str) -> Fault:
        """Apply one fault now and record it. Returns: the fault (give it to `heal`).

        Raises:
            NoLeader: the fault aims at the leader and there is none.
            RuntimeError: the fault cannot run here (see `unavailable`).
        """
        reason = self.unavailable(kind)
        if reason:
            raise RuntimeError(f"{kind}: {reason}")
        c = self.cluster
        nodes = sorted(c.nodes)
        fid = self._next_id
        self._next_id += 1

        def restart_plain(n: str) -> Callable[[], None]:
            return lambda: c.start(n) if c.nodes[n].state == DOWN else None

        if kind in ("kill_leader", "kill_follower", "kill_random"):
            if kind == "kill_leader":
                target = self.leader()
            elif kind == "kill_follower":
                target = self._pick(self._others(self.leader()))
            else:
                target = self._pick(nodes)
            c.kill(target)
            fault = Fault(fid, kind, [target], f"kill -9 {target}", restart_plain(target))
        elif kind in ("kill_majority", "kill_all"):
            size = len(nodes) if kind == "kill_all" else len(nodes) // 2 + 1
            targets = sorted(self.rng.sample(nodes, size))
            for n in targets:
                c.kill(n)

            def restart_all() -> None:
                for n in targets:
                    if c.nodes[n].state == DOWN:
                        c.start(n)

            fault = Fault(fid, kind, targets, f"kill -9 {','.join(targets)}", restart_all)
        elif kind == "pause_majority":
            targets = sorted(self.rng.sample(nodes, len(nodes) // 2 + 1))
            for n in targets:
                c.pause(n)

            def resume_all() -> None:
                for n in targets:
                    c.resume(n)

            fault = Fault(fid, kind, targets, f"SIGSTOP {','.join(targets)}", resume_all)
        elif kind == "pause_leader":
            target = self.leader()
            c.pause(target)
            fault = Fault(fid, kind, [target], f"SIGSTOP {target} (leader)", lambda: c.resume(target))
        elif kind == "clock_skew":
            target = self._pick(nodes)
            skew_ms = self.rng.choice([-1, 1]) * self.rng.randint(2_000, 60_000)
            c.restart(target, env={SKEW_ENV: str(skew_ms)})

            def unskew() -> None:
                c.restart(target, env={}, graceful=True)

            fault = Fault(fid, kind, [target], f"restart {target} with {SKEW_ENV}={skew_ms}", unskew)
        else:
            fault = self._network_fault(fid, kind, nodes)
        self.active.append(fault)
        self._record(START, fault)
        return fault

    def _network_fault(self, fid: int, kind: str, nodes: list[str]) -> Fault:
        lab = self._lab()
        if kind in ("isolate_one", "leader_from_majority"):
            target = self.leader() if kind == "leader_from_majority" else self._pick(nodes)
            lab.cut([target], self._others(target))
            return Fault(fid, kind, [target], f"{target} cut from {','.join(self._others(target))}", lab.heal)
        if kind == "random_halves":
            order = nodes[:]
            self.rng.shuffle(order)
            minority, majority = sorted(order[:len(order) // 2]), sorted(order[len(order) // 2:])
            lab.cut(minority, majority)
            return Fault(fid, kind, minority + majority, f"{','.join(minority)} | {','.join(majority)}", lab.heal)
        if kind == "bridge":
            order = nodes[:]
            self.rng.shuffle(order)
            mid = len(order) // 2
            side_a, bridge, side_b = order[:mid], order[mid], order[mid + 1:]
            lab.cut(side_a, side_b)
            return Fault(fid, kind, order, f"{','.join(side_a)} | {','.join(side_b)}, bridged by {bridge}",
                         lab.heal)
        if kind == "majorities_ring":
            ring = nodes[:]
            self.rng.shuffle(ring)
            n = len(ring)
            pairs = [(ring[i], ring[j]) for i in range(n) for j in range(n)
                     if i != j and (i - j) % n not in (1, n - 1)]
            lab.block(pairs)
            return Fault(fid, kind, ring, f"ring {'-'.join(ring)}-{ring[0]}: each sees its neighbours only",
                         lab.heal)
        if kind == "one_way":
            leader = self.leader()
            follower = self._pick(self._others(leader))
            src, dst = (leader, follower) if self.rng.random() < 0.5 else (follower, leader)
            lab.block([(src, dst)])
            return Fault(fid, kind, [src, dst], f"packets {src} -> {dst} dropped ({dst} -> {src} open)", lab.heal)
        if kind == "blackhole_one":
            target = self._pick(nodes)
            lab.blackhole(target, self._others(target))
            return Fault(fid, kind, [target], f"blackhole routes in {target} to {','.join(self._others(target))}",
                         lab.heal)
        if kind == "slow_link":
            target = self.leader()
            rate = self.rng.choice(["64kbit", "256kbit", "1mbit"])
            lab.slow(target, rate)
            return Fault(fid, kind, [target], f"{target} (leader) outbound limited to {rate} (tbf)", lab.heal)
        raise RuntimeError(f"unknown fault {kind!r}")

    def heal(self, fault: Fault) -> None:
        """Undo one fault and record the heal."""
        if fault.healed:
            return
        fault.undo()
        fault.healed = True
        if fault in self.active:
            self.active.remove(fault)
        self._record(HEAL, fault)

    def heal_everything(self) -> None:
        """Undo every active fault; then resume any paused node, start any stopped one, heal the net."""
        for fault in list(self.active):
            try:
                self.heal(fault)
            except Exception as exc:  # noqa: BLE001 - keep healing the rest
                log.warning("nemesis: healing %s failed: %r", fault, exc)
        c = self.cluster
        for nid, node in c.nodes.items():
            if node.state == PAUSED:
                c.resume(nid)
            elif node.state == DOWN or not node.running():
                if node.running():
                    c.kill(nid)
                c.start(nid)
        if c.lab is not None:
            c.lab.heal()
