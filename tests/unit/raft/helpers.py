"""Small harness for driving Raft cores by hand (etcd `raft_test.go`'s `network`, in miniature).

`Node` is one core plus its `MemoryStorage` and state machine; `flush()` processes every pending
Ready as a node would (persist, then collect messages) and returns the messages. `Net` wires
nodes together with a FIFO queue, optional cut links, and `deliver_all()`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from wiber.raft import (
    AppendEntries,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    Raft,
    RaftConfig,
    ReadState,
    Ready,
    Role,
)


def entries(first: int, terms: Iterable[int]) -> list[Entry]:
    """Returns: NORMAL entries with the given terms, numbered from `first`."""
    return [Entry(first + k, t, EntryKind.NORMAL, f"e{first + k}".encode()) for k, t in enumerate(terms)]


def storage_with(terms: Iterable[int] = (), term: int = 0, voted_for: str | None = None,
                 commit: int = 0) -> MemoryStorage:
    """Returns: a storage holding a log with these entry terms and this hard state."""
    s = MemoryStorage()
    s.append(entries(1, terms))
    s.set_hard_state(HardState(term, voted_for, commit))
    return s


class Node:
    """A core, its storage, and what it applied."""

    def __init__(self, node_id: str, ids: Iterable[str], storage: MemoryStorage | None = None,
                 seed: int = 0, **settings: Any) -> None:
        settings.setdefault("election_ticks", 10)
        settings.setdefault("heartbeat_ticks", 1)
        # These tests tick one node to make it campaign; the others, "fresh" with empty logs, would
        # wait an election timeout before voting (tests/unit/raft/test_reconfig.py tests that wait).
        settings.setdefault("empty_listen_ticks", 0)
        self.config = RaftConfig(node_id, tuple(i for i in ids if i != node_id), **settings)
        self.storage = storage if storage is not None else MemoryStorage()
        self.seed = seed
        self.raft = Raft(self.config, self.storage, random.Random(seed))
        self.applied: list[Entry] = []
        self.read_states: list[ReadState] = []
        self.readys: list[Ready] = []

    @property
    def id(self) -> str:
        return self.config.id

    def persist(self, rd: Ready) -> None:
        """Write a Ready to storage and apply its committed entries (no advance)."""
        if rd.snapshot is not None:
            self.storage.apply_snapshot(*rd.snapshot)
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        self.applied.extend(rd.committed_entries)
        self.read_states.extend(rd.read_states)

    def flush(self) -> list[Message]:
        """Process every Ready in order. Returns: all messages they carried, in sending order."""
        out: list[Message] = []
        while self.raft.has_ready():
            rd = self.raft.ready()
            self.readys.append(rd)
            out.extend(rd.messages)
            self.persist(rd)
            out.extend(rd.messages_after_persist)
            self.raft.advance(rd)
        return out

    def step(self, msg: Message) -> list[Message]:
        """Step one message and flush. Returns: the messages produced."""
        self.raft.step(msg)
        return self.flush()

    def tick(self, n: int = 1) -> list[Message]:
        """Tick `n` times, flushing after each. Returns: the messages produced."""
        out: list[Message] = []
        for _ in range(n):
            self.raft.tick()
            out.extend(self.flush())
        return out

    def restart(self) -> None:
        """Crash and restart from storage (everything not persisted is lost)."""
        self.raft = Raft(self.config, self.storage, random.Random(self.seed + 1000))


class Net:
    """Nodes connected by a FIFO queue; links can be cut and messages filtered."""

    def __init__(self, ids: Iterable[str], storages: dict[str, MemoryStorage] | None = None,
                 **settings: Any) -> None:
        ids = list(ids)
        storages = storages or {}
        self.nodes = {i: Node(i, ids, storages.get(i), seed=k, **settings) for k, i in enumerate(ids)}
        self.queue: list[Message] = []
        self.cut: set[tuple[str, str]] = set()
        self.drop: Callable[[Message], bool] | None = None
        self.log: list[Message] = []

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def raft(self, node_id: str) -> Raft:
        return self.nodes[node_id].raft

    def send(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            if (m.frm, m.to) in self.cut or (self.drop is not None and self.drop(m)):
                continue
            self.queue.append(m)

    def flush_all(self) -> None:
        for node in self.nodes.values():
            self.send(node.flush())

    def deliver_all(self, limit: int = 10_000) -> None:
        """Flush every node, then deliver messages in FIFO order until none is left."""
        self.flush_all()
        for _ in range(limit):
            if not self.queue:
                return
            m = self.queue.pop(0)
            self.log.append(m)
            self.send(self.nodes[m.to].step(m))
        raise AssertionError("messages keep flowing")

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()
        self.drop = None

    def campaign(self, node_id: str) -> None:
        """Tick `node_id` until it starts campaigning, then deliver everything."""
        node = self.nodes[node_id]
        for _ in range(10 * node.config.election_ticks):
            self.send(node.tick())
            if node.raft.role is not Role.FOLLOWER:
                break
        self.deliver_all()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.nodes.values():
                self.send(node.tick())
            self.deliver_all()

    def leaders(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.raft.role is Role.LEADER]


IDS3 = ["n1", "n2", "n3"]


def role(r: Raft) -> Role:
    """Returns: the role of `r` (a call, so the type checker does not pin it across steps)."""
    return r.role


def elected(ids: list[str] = IDS3, leader: str = "n1", **settings: Any) -> Net:
    """Returns: a healed network whose `leader` won the first election and committed its NOOP."""
    net = Net(ids, **settings)
    net.campaign(leader)
    assert net.leaders() == [leader]
    assert net.raft(leader).commit_index == 1
    return net


def of_type(msgs: Iterable[Message], cls: type) -> list[Any]:
    """Returns: the messages of class `cls`."""
    return [m for m in msgs if type(m) is cls]


def appends(msgs: Iterable[Message]) -> list[AppendEntries]:
    return of_type(msgs, AppendEntries)
