"""`quorum.committed_index` and `vote_result` against naive definitions (etcd `quorum/quick_test.go`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wiber.raft.quorum import VoteResult, committed_index, quorum_size, vote_result

VOTERS = ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]


def naive_committed(matches: dict[str, int], voters: list[str]) -> int:
    """The largest index that at least a majority of voters hold (by trying every candidate)."""
    need = len(voters) // 2 + 1
    best = 0
    for candidate in {matches.get(v, 0) for v in voters} | {0}:
        if sum(1 for v in voters if matches.get(v, 0) >= candidate) >= need:
            best = max(best, candidate)
    return best


@given(st.integers(1, 7).flatmap(lambda n: st.tuples(
    st.just(VOTERS[:n]),
    st.dictionaries(st.sampled_from(VOTERS), st.integers(0, 50)))))
def test_committed_index_matches_the_naive_majority(case: tuple[list[str], dict[str, int]]) -> None:
    """The sort-based committed index equals the brute-force one (non-voters ignored, missing ones 0)."""
    voters, matches = case
    assert committed_index(matches, voters) == naive_committed(matches, voters)


@given(st.integers(1, 7).flatmap(lambda n: st.tuples(
    st.just(VOTERS[:n]),
    st.dictionaries(st.sampled_from(VOTERS), st.booleans()))))
def test_vote_result_matches_counting(case: tuple[list[str], dict[str, bool]]) -> None:
    """WON iff a majority granted; LOST iff a majority can no longer grant; else PENDING."""
    voters, votes = case
    need = len(voters) // 2 + 1
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    expected = (VoteResult.WON if granted >= need
                else VoteResult.LOST if granted + missing < need else VoteResult.PENDING)
    assert vote_result(votes, voters) is expected


def test_examples() -> None:
    """A few fixed cases, including the even-sized cluster's larger majority."""
    assert quorum_size(["a"]) == 1 and quorum_size(["a", "b", "c", "d"]) == 3
    assert committed_index({"a": 5, "b": 4, "c": 1}, ["a", "b", "c"]) == 4
    assert committed_index({"a": 5, "b": 4, "c": 3, "d": 1}, ["a", "b", "c", "d"]) == 3
    assert committed_index({"a": 9}, ["a"]) == 9
    assert vote_result({"a": True}, ["a", "b", "c"]) is VoteResult.PENDING
    assert vote_result({"a": True, "b": True}, ["a", "b", "c"]) is VoteResult.WON
    assert vote_result({"a": True, "b": False, "c": False}, ["a", "b", "c"]) is VoteResult.LOST
