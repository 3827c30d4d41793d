"""What a frame family is given (`Context`: the target and what the fuzzer knows of the cluster) and
what it makes (`Sample`: the multipart message to send, and where)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CLIENT: str = "client"
RAFT: str = "raft"
PORTS: tuple[str, str] = (CLIENT, RAFT)


@dataclass(frozen=True, slots=True)
class Context:
    """What a family may use to aim its frames: forged peer traffic only reaches the Raft core when
    it names real node ids, and a forged snapshot or clock sample only when it comes "from the leader".

    Attributes:
        target: the node the sample is sent to.
        nodes: every node id of the cluster.
        leader: the leader as last seen by the fuzzer (None: unknown).
        term: the highest term last seen.
        commit_index: the highest commit index last seen.
        wall: the fuzzer's wall clock (epoch seconds) when the sample was made.
        max_message_bytes: the cluster's limit (frames just over it test the size checks).
    """

    target: str
    nodes: tuple[str, ...]
    leader: str | None = None
    term: int = 1
    commit_index: int = 0
    wall: float = 1.7e9
    max_message_bytes: int = 65_536

    @property
    def peers(self) -> tuple[str, ...]:
        """Returns: the node ids other than the target (the senders a forged message claims)."""
        return tuple(n for n in self.nodes if n != self.target) or self.nodes

    def to_json(self) -> dict[str, Any]:
        """Returns: the context as a JSON-able map (journals record it beside each sample)."""
        return {"target": self.target, "nodes": list(self.nodes), "leader": self.leader, "term": self.term,
                "commit_index": self.commit_index, "wall": self.wall,
                "max_message_bytes": self.max_message_bytes}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Context:
        """Returns: the context `to_json` wrote."""
        return cls(doc["target"], tuple(doc["nodes"]), doc["leader"], doc["term"], doc["commit_index"],
                   doc["wall"], doc["max_message_bytes"])


@dataclass(frozen=True, slots=True)
class Sample:
    """One multipart message of the fuzzer.

    Attributes:
        port: `CLIENT` or `RAFT`.
        family: the family that made it (``client.random_bytes``, ``raft.timesync``, ...).
        frames: the parts to send. On the client port via a DEALER they include the envelope
            (normally ``[b"", body]``); via a REQ (`socket` ``"req"``) they are the body parts alone.
        socket: ``"dealer"`` or ``"req"`` (client port only).
    """

    port: str
    family: str
    frames: tuple[bytes, ...]
    socket: str = "dealer"

    @property
    def size(self) -> int:
        """Returns: the bytes of all parts."""
        return sum(len(f) for f in self.frames)
