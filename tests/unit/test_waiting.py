"""Bookkeeping of clients parked on the leader (wiber.waiting)."""

from __future__ import annotations

from wiber.node.waiting import PendingReads, PendingWrites, Waiter


def w(deadline: float, tag: str = "") -> Waiter[str]:
    return Waiter([b"client"], tag, deadline, tag)


def test_writes_are_answered_only_by_the_entry_they_were_proposed_in() -> None:
    writes: PendingWrites[str] = PendingWrites()
    writes.add(5, 2, [w(10, "a"), w(10, "b")])
    assert writes.take(5, 3) == ([w(10, "a"), w(10, "b")], False)  # another leader's entry took 5
    writes.add(6, 3, [w(10, "c")])
    waiters, ours = writes.take(6, 3)
    assert ours and [x.req_id for x in waiters] == ["c"]
    assert writes.take(7, 3) == ([], False) and len(writes) == 0


def test_expiry_takes_the_oldest_due_waiters_and_keeps_the_rest() -> None:
    writes: PendingWrites[str] = PendingWrites()
    writes.add(1, 1, [w(5, "a"), w(9, "b")])
    writes.add(2, 1, [w(6, "c")])
    assert writes.expire(4) == []
    assert [x.req_id for x in writes.expire(5)] == ["a"]
    assert [x.req_id for x in writes.expire(9)] == ["b", "c"]
    assert len(writes) == 0


def test_drain_returns_every_write() -> None:
    writes: PendingWrites[str] = PendingWrites()
    writes.add(1, 1, [w(5, "a")])
    writes.add(2, 1, [w(6, "b")])
    assert [x.req_id for x in writes.drain()] == ["a", "b"] and len(writes) == 0


def test_reads_wait_for_their_round_then_for_the_index_to_be_applied() -> None:
    reads: PendingReads[str] = PendingReads()
    reads.start(b"r1", [w(10, "x")])
    reads.start(b"r2", [w(3, "y")])
    assert reads.releasable(100) == []  # no round confirmed yet
    reads.confirm(b"r1", 7)
    reads.confirm(b"unknown", 1)
    assert reads.releasable(6) == []
    assert [x.req_id for x in reads.releasable(7)] == ["x"]
    assert [x.req_id for x in reads.expire(3)] == ["y"] and len(reads) == 0
