"""Cluster membership as the Raft core sees it: who votes, who only learns, and the changes between.

Membership lives in the log (Ongaro's thesis, chapter 4): a CONFIG entry carries the whole new
membership, and a node uses the newest one in its log, committed or not; a CONFIG entry removed by a
conflicting leader takes its membership with it. Changes go one server at a time (thesis 4.1: any
two majorities of the old and the new voter sets then overlap), a new node joins as a learner that
receives the log but neither votes nor counts toward a commit, and a learner is promoted once it
caught up (thesis 4.2.1). Everything here is pure data; the rules that use it are in the core.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import msgpack

__all__ = ["ChangeBlocked", "ChangeKind", "ConfChange", "Membership", "MembershipError", "decode_membership"]


class MembershipError(ValueError):
    """A membership change that cannot be made; the message says why and what to do."""


class ChangeBlocked(MembershipError):
    """A change that fits, but not now: a change in progress, a leader new to its term, a transfer.
    Retrying shortly is right."""


class ChangeKind(Enum):
    """One single-server change (thesis 4.1)."""

    ADD_LEARNER = "add"
    """A new node receives the log as a learner; it votes only once promoted."""
    PROMOTE = "promote"
    """A learner that caught up becomes a voter."""
    REMOVE = "remove"
    """A voter or a learner leaves."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A change of one server's place in the cluster."""

    kind: ChangeKind
    node: str


@dataclass(frozen=True, slots=True)
class Membership:
    """The voters and learners of one configuration (disjoint sets of node ids)."""

    voters: frozenset[str]
    learners: frozenset[str] = frozenset()

    @classmethod
    def of(cls, voters: Iterable[str], learners: Iterable[str] = ()) -> Membership:
        """Returns: the membership of the given ids."""
        return cls(frozenset(voters), frozenset(learners))

    @property
    def members(self) -> frozenset[str]:
        """Every node that receives the log: voters and learners."""
        return self.voters | self.learners

    def role_of(self, node: str) -> str:
        """Returns: 'voter', 'learner' or 'none'."""
        if node in self.voters:
            return "voter"
        return "learner" if node in self.learners else "none"

    def apply(self, change: ConfChange) -> Membership:
        """Returns: the membership after `change`.

        Raises:
            MembershipError: the change does not fit this membership (adding a member, promoting a
                non-learner, removing a stranger, or removing the last voter).
        """
        node = change.node
        if change.kind is ChangeKind.ADD_LEARNER:
            if node in self.members:
                raise MembershipError(f"{node} is already a {self.role_of(node)} of the cluster")
            return Membership(self.voters, self.learners | {node})
        if change.kind is ChangeKind.PROMOTE:
            if node not in self.learners:
                raise MembershipError(f"{node} is not a learner (it is {self.role_of(node)}): only a learner "
                                      f"that caught up becomes a voter")
            return Membership(self.voters | {node}, self.learners - {node})
        if node not in self.members:
            raise MembershipError(f"{node} is not a member of the cluster (voters: {sorted(self.voters)}, "
                                  f"learners: {sorted(self.learners)})")
        if self.voters == {node}:
            raise MembershipError(f"{node} is the last voter: a cluster cannot remove all of its voters")
        return Membership(self.voters - {node}, self.learners - {node})

    def encode(self) -> bytes:
        """Returns: the data of a CONFIG entry carrying this membership."""
        data: bytes = msgpack.packb({"voters": sorted(self.voters), "learners": sorted(self.learners)},
                                    use_bin_type=True)
        return data

    def describe(self) -> str:
        """Returns: 'voters n1,n2,n3; learners n4' for logs and errors."""
        learners = f"; learners {','.join(sorted(self.learners))}" if self.learners else ""
        return f"voters {','.join(sorted(self.voters))}{learners}"


def decode_membership(data: bytes) -> Membership:
    """Returns: the membership a CONFIG entry's data carries.

    Raises:
        ValueError: the data is not a membership (a malformed or forged entry).
    """
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types for bad input
        raise ValueError(f"a CONFIG entry that is not msgpack: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"voters", "learners"}:
        raise ValueError("a CONFIG entry must be a map of exactly 'voters' and 'learners'")
    voters, learners = obj["voters"], obj["learners"]
    for name, ids in (("voters", voters), ("learners", learners)):
        if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 255 for i in ids):
            raise ValueError(f"a CONFIG entry's {name} must be a list of node ids")
    membership = Membership(frozenset(voters), frozenset(learners))
    if not membership.voters or membership.voters & membership.learners:
        raise ValueError("a CONFIG entry needs at least one voter, and no node both voter and learner")
    return membership
