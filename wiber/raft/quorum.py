"""Majority arithmetic, as pure functions (etcd `quorum/majority.go`).

A quorum is any majority of the voters: ``len(voters) // 2 + 1`` of them. Two quorums always share
a voter, which is the whole of Raft's safety argument (paper section 5.2 and 5.4).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import Enum

__all__ = ["VoteResult", "committed_index", "quorum_size", "vote_result"]


class VoteResult(Enum):
    """The outcome of an election so far."""

    PENDING = "pending"
    LOST = "lost"
    WON = "won"


def quorum_size(voters: Collection[str]) -> int:
    """Returns: how many voters make a majority."""
    return len(voters) // 2 + 1


def committed_index(match_indexes: Mapping[str, int], voters: Collection[str]) -> int:
    """The largest index that a majority of voters hold (a voter missing from the map holds 0).

    Only the leader's rule about terms (Figure 8) stands between this number and a commit.

    Returns:
        the index at position ``n // 2`` of the voters' match indexes sorted in decreasing order.
    Raises:
        ValueError: no voters.
    """
    n = len(voters)
    if n == 0:
        raise ValueError("committed_index needs at least one voter")
    get = match_indexes.get
    ordered = sorted([get(v, 0) for v in voters], reverse=True)
    return ordered[n // 2]


def vote_result(votes: Mapping[str, bool], voters: Collection[str]) -> VoteResult:
    """Count `votes` (voter -> granted) over `voters`; votes from non-voters do not count.

    Returns:
        WON when a majority granted, LOST when a majority can no longer grant, else PENDING.
    """
    granted = rejected = 0
    for v in voters:
        vote = votes.get(v)
        if vote is True:
            granted += 1
        elif vote is False:
            rejected += 1
    need = len(voters) // 2 + 1
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING
