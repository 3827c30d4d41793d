"""N Raft cores over `MemoryStorage` (or real `DurableStorage` on a `CrashFS` each) and a
`SimNetwork`, with crashes, checked after every step.

Theory of operation
-------------------
One *step* is one event: the delivery of the next due message to its node, or, when no message is
due, one tick of simulated time (every live node ticks, then the workload and the fault schedule
act). After each step the nodes touched have their `Ready`s processed and the `SafetyChecker` sees
them.

A `Ready` is processed in two phases, as a node does: (1) send `messages` (the leader's appends
may leave before its own write); (2) persist the snapshot, entries and hard state, then send
`messages_after_persist`, apply the committed entries, `advance()`. A node may crash between the
phases (a fault can schedule it, and any persisting Ready risks it with `mid_ready_crash_rate`):
what it sent in phase 1 is out; of what it was writing, only a prefix in the durability order of
`Ready` survives (nothing, the snapshot, some of the entries, everything but the hard state). A
crash discards the core; a restart builds a new core over the same `MemoryStorage`, which holds
exactly what was written, and restores the state machine from the storage's snapshot.

With ``storage="durable"`` each node writes the real `DurableStorage` on its own `CrashFS`, in the
node's order (`tests/sim/durable.py`), and a crash is a power loss: whatever was not fsynced is
gone. The crash between the phases is then a crash point: the power goes out at one of the file
operations of the Ready's persist (snapshot install, append, hard-state replace, sync), chosen with
the seeded rng; compactions, written as a node's checkpoint, are interrupted the same way with
`disk_crash_rate` (as are Readys installing a snapshot, both being rare). A restart reopens the
storage, whose recovery decides what survived, and the `SafetyChecker` takes the node's persisted
log to be what recovery returned.

The state machine is a chain hash of the applied entries; its snapshot is ``b"index:hash"``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from wiber.raft import (
    ConfChange,
    Membership,
    MembershipError,
    Message,
    ProposalDropped,
    Raft,
    RaftConfig,
    Ready,
    Role,
    describe,
)
from wiber.raft.membership import decode_membership
from wiber.raft.storage import MemoryStorage
from wiber.storage.durable import DurableStorage

from .durable import APPEND, COMPACTION, SNAPSHOT_INSTALL, SimDisk, SimulatedCrash, write_ready
from .invariants import SafetyChecker
from .network import SimNetwork

__all__ = ["Cluster", "MessageStorm", "SimNode"]


class MessageStorm(AssertionError):
    """Messages keep flowing within one tick: the cores ping-pong without converging."""


_LEADER = Role.LEADER


@dataclass
class SimNode:
    """One simulated node: its storage (its disk), its core while up, its state machine."""

    id: str
    storage: MemoryStorage | DurableStorage
    core: Raft | None = None
    restarts: int = 0
    state: tuple[int, int] = (0, 0)  # state machine: (applied index, chain hash)
    crash_mid_ready: bool = False  # crash between phase 1 and 2 of the next Ready that persists
    down_until: int = 0
    read_floors: dict[bytes, int] = field(default_factory=dict)
    disk: SimDisk | None = None  # the CrashFS under a DurableStorage (storage="durable")
    writing: str = ""  # the stage of the Ready being persisted (`write_ready`), for crash reports


class Cluster:
    """A simulated cluster; `step()` runs one event, checking safety after it."""

    def __init__(self, ids: list[str], seed: int, *, election_ticks: int = 10, heartbeat_ticks: int = 2,
                 max_inflight: int = 4, max_batch_entries: int = 8, max_batch_bytes: int = 1 << 20,
                 pre_vote: bool = True, check_quorum: bool = True, wire: bool = False,
                 logger: logging.Logger | None = None,
                 storage: Literal["memory", "durable"] = "memory", voters: list[str] | None = None) -> None:
        """`storage="durable"`: each node runs `DurableStorage` on its own `CrashFS` (module docstring).
        `voters`: the nodes that seed the cluster (default all); the others start empty with `join`,
        for membership changes (`change`, `wipe`), and snapshots then carry the membership."""
        self.ids = list(ids)
        self.seeds = list(voters) if voters is not None else list(ids)
        self.reconfig = voters is not None
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = SimNetwork(ids, random.Random(self.rng.getrandbits(64)), wire=wire)
        self.checker = SafetyChecker()
        if logger is None:
            # Quiet unless asked (replays and transcripts pass their own): a global DEBUG setting
            # elsewhere must not make every simulated step format log lines.
            logger = logging.getLogger("wiber.sim")
            logger.setLevel(logging.WARNING)
        self.logger = logger
        self.configs = {
            i: RaftConfig(i, tuple(x for x in (self.seeds if i in self.seeds else ids) if x != i),
                          election_ticks=election_ticks,
                          heartbeat_ticks=heartbeat_ticks, max_inflight=max_inflight,
                          max_batch_entries=max_batch_entries, max_batch_bytes=max_batch_bytes,
                          pre_vote=pre_vote, check_quorum=check_quorum, join=i not in self.seeds,
                          others=tuple(x for x in ids if x != i) if voters is not None else (),
                          logger=self.logger)
            for i in ids
        }
        self.nodes: dict[str, SimNode] = {}
        # durable: records every ~7 (tiny entries) to ~30 entries per segment, so segments roll often
        segment_bytes = self.rng.choice((256, 1024)) if storage == "durable" else 0
        for i in ids:
            self.checker.add_node(i)
            if storage == "durable":
                disk = SimDisk(f"/data/{i}", segment_bytes)
                node = SimNode(i, disk.storage, disk=disk)
            else:
                node = SimNode(i, MemoryStorage())
            self.nodes[i] = node
            self._start(node)
        self.mid_ready_crash_rate = 0.0
        #: Durable storage, while `mid_ready_crash_rate` is on: the chance that a compaction, or a
        #: Ready installing a snapshot, is interrupted at one of its file operations.
        self.disk_crash_rate = 0.25
        #: When set, nodes that apply an entry with exactly this data are added to `watch_applied`.
        self.watch: bytes | None = None
        self.watch_applied: set[str] = set()
        self.steps = 0
        self.crashes = 0
        #: Counts of notable events (snapshots installed, reads answered, torn writes, ...).
        self.stats: Counter[str] = Counter()
        self._burst = 0
        #: Deliveries allowed within one tick before the run fails as a message storm.
        self.max_burst = 5000
        #: Called with a line for each notable event (transcripts).
        self.on_event: Callable[[str], None] | None = None

    @property
    def now(self) -> int:
        """Simulated time in ticks."""
        return self.net.now

    # -- life and death -------------------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        """(Re)build the node's core from its storage and its state machine from the snapshot."""
        rng = random.Random(self.rng.getrandbits(64))
        meta, data = node.storage.snapshot()
        node.state, membership = _decode_state(data) if meta.index else ((0, 0), None)
        config = self.configs[node.id]
        if membership is not None:  # as a node takes it from its checkpoint
            config = dataclasses.replace(config, peers=tuple(sorted(membership.voters)),
                                         learners=tuple(sorted(membership.learners)), join=False,
                                         member=node.id in membership.members)
        node.core = Raft(config, node.storage, rng)
        node.read_floors = {}
        node.crash_mid_ready = False

    @classmethod
    def like(cls, other: Cluster, *, storage: Literal["memory", "durable"]) -> Cluster:
        """Returns: a new cluster with `other`'s ids, seed, Raft settings and wire mode, on `storage`."""
        cfg = other.configs[other.ids[0]]
        return cls(list(other.ids), other.seed, election_ticks=cfg.election_ticks,
                   heartbeat_ticks=cfg.heartbeat_ticks, max_inflight=cfg.max_inflight,
                   max_batch_entries=cfg.max_batch_entries, max_batch_bytes=cfg.max_batch_bytes,
                   pre_vote=cfg.pre_vote, check_quorum=cfg.check_quorum, wire=other.net.wire,
                   logger=other.logger, storage=storage)

    def crash(self, node_id: str, down_for: int = 0) -> None:
        """Kill a node now: it loses everything not persisted (its core; on disk, all not fsynced)."""
        node = self.nodes[node_id]
        if node.core is None:
            return
        node.core = None
        if node.disk is not None:
            node.disk.power_loss(self.rng)
        node.down_until = self.now + down_for
        self.crashes += 1
        self._event(f"crash {node_id}")

    def restart(self, node_id: str) -> None:
        """Start a crashed node again from its storage."""
        node = self.nodes[node_id]
        if node.core is not None:
            return
        node.restarts += 1
        if node.disk is not None:
            self._recover(node, node.disk)
        self._start(node)
        self._event(f"restart {node_id}")
        self._process(node)

    def _recover(self, node: SimNode, disk: SimDisk) -> None:
        """Reopen the node's storage on what its disk kept; the checker's view of its persisted log
        becomes what recovery returned (Log Matching checks every recovered entry)."""
        lost_from = node.storage.last_index()
        storage = node.storage = disk.open()
        checker = self.checker
        checker.add_node(node.id)
        meta, _ = storage.snapshot()
        if meta.index:
            checker.persisted_snapshot(node.id, meta)
        first, last = storage.first_index(), storage.last_index()
        if last >= first:
            checker.persisted_entries(node.id, storage.entries(first, last + 1), meta.index, False)
        if last < lost_from:
            self.stats["entries lost at a power loss"] += lost_from - last

    def up(self) -> list[SimNode]:
        """Returns: the nodes that are running."""
        return [n for n in self.nodes.values() if n.core is not None]

    def leader(self) -> SimNode | None:
        """Returns: the running leader of the highest term, if any."""
        best = None
        for n in self.nodes.values():
            core = n.core
            if core is not None and core.role is _LEADER and (best is None or core.term > best.core.term):  # type: ignore[union-attr]
                best = n
        return best

    # -- stepping -------------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one event. Returns: True if a message was delivered, False if time advanced."""
        self.steps += 1
        msg = self.net.deliver_one()
        if msg is not None:
            self._burst += 1
            if self._burst > self.max_burst:
                raise MessageStorm(f"more than {self.max_burst} messages delivered at t={self.now} "
                                   f"without time passing (last: {describe(msg)})")
            self.deliver(msg)
            return True
        self._burst = 0
        self.tick()
        return False

    def deliver(self, msg: Message) -> None:
        """Hand `msg` to its node (lost if the node is down)."""
        node = self.nodes[msg.to]
        core = node.core
        if core is None:
            return
        core.step(msg)
        self._process(node)

    def tick(self) -> None:
        """Advance time one tick; every live node ticks."""
        self.net.now += 1
        for node in self.nodes.values():
            if node.core is not None:
                node.core.tick()
                self._process(node)

    def stabilize(self, limit: int = 100_000) -> int:
        """Deliver every message in flight, and the answers, without ticking. Returns: how many."""
        return self.net.stabilize(self.deliver, limit)

    def _process(self, node: SimNode) -> None:
        """Handle the node's Readys in two phases (see the module docstring), then check safety."""
        core = node.core
        assert core is not None
        checker = self.checker
        send = self.net.send
        while core.has_ready():
            rd = core.ready()
            for m in rd.messages:
                send(m)
            is_leader = core.role is _LEADER
            persists = rd.entries or rd.hard_state is not None or rd.snapshot is not None
            if persists and self._crashes_now(node, rd):
                if node.disk is None:
                    self._torn_write(node, rd)
                else:
                    self._crash_point(node, node.disk, rd, is_leader)
                self.crash(node.id, self.rng.randint(1, 30))
                return
            self._persist(node, rd, is_leader)
            for m in rd.messages_after_persist:
                send(m)
            if rd.committed_entries:
                node.state = checker.applied(node.id, node.state, rd.committed_entries)
                if self.watch is not None and any(e.data == self.watch for e in rd.committed_entries):
                    self.watch_applied.add(node.id)
            for rs in rd.read_states:
                floor = node.read_floors.pop(rs.ctx, None)
                if floor is not None:
                    checker.read_answered(node.id, rs.index, floor)
                    self.stats["reads answered"] += 1
            core.advance(rd)
            if node.disk is not None:  # applied entries leave memory, read back from disk if needed
                node.disk.storage.release(node.state[0])
        checker.observe_role(node.id, core.role is _LEADER, core.term, core.last_index)

    def _crashes_now(self, node: SimNode, rd: Ready) -> bool:
        """Returns: whether the node crashes while persisting `rd` (scheduled, or drawn)."""
        rate = self.mid_ready_crash_rate
        if rate and node.disk is not None and rd.snapshot is not None:
            rate = max(rate, self.disk_crash_rate)
        return node.crash_mid_ready or bool(rate and self.rng.random() < rate)

    def _persist(self, node: SimNode, rd: Ready, is_leader: bool) -> None:
        """Write `rd` in the node's order (`write_ready`); the checker sees each write as it starts."""
        checker = self.checker

        def before(stage: str) -> None:
            node.writing = stage
            if stage == SNAPSHOT_INSTALL:
                assert rd.snapshot is not None
                meta, data = rd.snapshot
                checker.persisted_snapshot(node.id, meta)
                self.stats["snapshots installed"] += 1
                node.state = _decode_state(data)[0]
                checker.restored(node.id, node.state)
            elif stage == APPEND:
                checker.persisted_entries(node.id, rd.entries, node.storage.last_index(), is_leader)

        write_ready(node.storage, rd, before)
        node.writing = ""

    def _crash_point(self, node: SimNode, disk: SimDisk, rd: Ready, is_leader: bool) -> None:
        """A power loss at one file operation of persisting `rd`, drawn from the rng (module docstring).

        The caller then crashes the node, which loses what was not fsynced.
        """
        self.stats["crashes while persisting"] += 1
        k = disk.crash_point(lambda d: write_ready(d.storage, rd), self.rng)
        if k is None:  # nothing to write on disk (only the commit index changed)
            self._persist(node, rd, is_leader)
            return
        disk.fs.crash_after(k)
        try:
            self._persist(node, rd, is_leader)
        except SimulatedCrash:
            self.stats[f"crash points: {node.writing}"] += 1
            self._event(f"crash {node.id} at file operation {k} of its write ({node.writing})")
            return
        raise AssertionError(f"{node.id}: the crash point {k} of a Ready's persist was not reached")

    def _torn_write(self, node: SimNode, rd: Ready) -> None:
        """A crash while writing `rd`, before its fsync completed: a prefix of the writes survives.

        The contract with storage (see `Ready`) is that the writes are durable in order —
        snapshot, then entries, then hard state — so what survives a crash is a prefix of that
        sequence: nothing, the snapshot, some of the entries, or everything but the hard state.
        """
        rng = self.rng
        storage = node.storage
        parts: list[object] = ([rd.snapshot] if rd.snapshot is not None else []) + list(rd.entries)
        if rd.hard_state is not None:
            parts.append(rd.hard_state)
        keep = 0 if rng.random() < 0.5 else rng.randint(0, len(parts) - 1)
        self.stats["crashes while persisting"] += 1
        kept = []
        if keep and rd.snapshot is not None:
            storage.apply_snapshot(*rd.snapshot)
            self.checker.persisted_snapshot(node.id, rd.snapshot[0])
            kept.append("the snapshot")
            keep -= 1
        entries = rd.entries[:keep]
        if entries:
            self.checker.persisted_entries(node.id, entries, storage.last_index(),
                                           node.core is not None and node.core.role is _LEADER)
            storage.append(entries)
            kept.append(f"{len(entries)} of {len(rd.entries)} entries")
        if kept:
            self.stats["torn writes"] += 1
        self._event(f"crash {node.id} while persisting (kept {', '.join(kept) or 'nothing'})")

    # -- workload -------------------------------------------------------------------------------

    def propose(self, node_id: str, datas: list[bytes]) -> tuple[int, int] | None:
        """Propose on a node. Returns: the indexes, or None if it refused (ProposalDropped)."""
        node = self.nodes[node_id]
        if node.core is None:
            return None
        try:
            result = node.core.propose(datas)
        except ProposalDropped:
            return None
        self._process(node)
        return result

    def read(self, node_id: str, ctx: bytes) -> bool:
        """Start a ReadIndex read on a node. Returns: whether it accepted it."""
        node = self.nodes[node_id]
        if node.core is None:
            return False
        floor = self.checker.read_floor()
        try:
            node.core.read_index(ctx)
        except ProposalDropped:
            return False
        node.read_floors[ctx] = floor
        self._process(node)
        return True

    def transfer(self, node_id: str, target: str | None = None) -> bool:
        """Ask a node to hand its leadership over. Returns: whether it accepted."""
        node = self.nodes[node_id]
        if node.core is None:
            return False
        try:
            node.core.transfer_leadership(target)
        except (ProposalDropped, ValueError):  # not the leader, or the target is not a voter (any more)
            return False
        self._process(node)
        return True

    def compact(self, node_id: str) -> bool:
        """Snapshot a node's state machine and compact its log up to the applied index."""
        node = self.nodes[node_id]
        if node.core is None:
            return False
        index, _ = node.state
        if index <= node.storage.first_index() - 1:
            return False
        membership = node.core.membership_at(index) if self.reconfig else None
        data = _encode_state(node.state, membership if membership is not None and membership.voters else None)
        if node.disk is None:
            node.storage.compact(index, data)
        elif not self._compact_on_disk(node, node.disk, index, data):
            return False
        self.stats["compactions"] += 1
        self._event(f"compact {node_id} to {index}")
        return True

    def change(self, node_id: str, change: ConfChange) -> bool:
        """Ask a node (the leader) for a membership change. Returns: whether it accepted."""
        node = self.nodes[node_id]
        if node.core is None:
            return False
        try:
            node.core.propose_change(change)
        except (MembershipError, ProposalDropped):
            return False
        self.stats[f"membership {change.kind.value}"] += 1
        self._event(f"{change.kind.value} {change.node}")
        self._process(node)
        return True

    def wipe(self, node_id: str, *, join: bool, down_for: int) -> None:
        """A node loses its disk: crashed, its storage replaced by an empty one, started again after
        `down_for` ticks, with `join` (the documented replacement) or without (the rule for empty
        nodes must then keep it from voting twice)."""
        node = self.nodes[node_id]
        self.crash(node_id, down_for)
        node.storage = MemoryStorage()
        node.state = (0, 0)
        self.checker.add_node(node_id)
        peers = tuple(x for x in (self.ids if join else self.seeds) if x != node_id)
        self.configs[node_id] = dataclasses.replace(self.configs[node_id], peers=peers, learners=(),
                                                    join=join)
        self.stats["wipes with join" if join else "wipes without join"] += 1
        self._event(f"wipe {node_id}{' (join)' if join else ''}")

    def _compact_on_disk(self, node: SimNode, disk: SimDisk, index: int, data: bytes) -> bool:
        """Compact as a node's checkpoint does; with `disk_crash_rate`, crash at one of its file
        operations instead. Returns: whether it completed."""
        k = None
        if self.mid_ready_crash_rate and self.rng.random() < self.disk_crash_rate:
            k = disk.crash_point(lambda d: d.compact(index, data), self.rng)
        if k is None:
            disk.compact(index, data)
            return True
        disk.fs.crash_after(k)
        try:
            disk.compact(index, data)
        except SimulatedCrash:
            self.stats[f"crash points: {COMPACTION}"] += 1
            self._event(f"crash {node.id} at file operation {k} of compacting to {index}")
            self.crash(node.id, self.rng.randint(1, 30))
            return False
        raise AssertionError(f"{node.id}: the crash point {k} of a compaction was not reached")

    def _event(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(f"t={self.now} {line}")

    def describe_nodes(self) -> str:
        """Returns: one line per node: role, term, commit, last index, applied."""
        lines = []
        for n in self.nodes.values():
            c = n.core
            if c is None:
                lines.append(f"{n.id} down (persisted last {n.storage.last_index()})")
            else:
                lines.append(f"{n.id} {c.role.value} term={c.term} leader={c.leader_id} "
                             f"commit={c.commit_index} "
                             f"last={c.last_index} applied={n.state[0]}")
        return "; ".join(lines)


def _encode_state(state: tuple[int, int], membership: Membership | None = None) -> bytes:
    """Returns: the snapshot of a state machine, ``b"index:hash"`` (fixed-width hash: transcripts
    print snapshot sizes, which must not depend on the process's hash salt), then ``b"|"`` and the
    membership at its index when the cluster changes membership (a node's checkpoint keeps it)."""
    data = f"{state[0]}:{state[1]:016x}".encode()
    return data if membership is None else data + b"|" + membership.encode()


def _decode_state(data: bytes) -> tuple[tuple[int, int], Membership | None]:
    """Returns: the state machine a snapshot holds, and the membership when it carries one."""
    head, _, tail = data.partition(b"|")
    index, h = head.decode().split(":")
    return (int(index), int(h, 16)), decode_membership(tail) if tail else None

