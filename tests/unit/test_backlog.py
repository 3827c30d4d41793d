"""`wiber.node.backlog`: HISTORY replies not yet sent are bounded per connection and in all."""

from __future__ import annotations

import pytest

from wiber.node import backlog as backlog_module
from wiber.node.backlog import CONNECTION_REPLIES, REPLIES_PER_CONNECTION, ReplyBacklog


class FakeTracker:
    """A zmq.MessageTracker stand-in: done once the test says libzmq sent the reply."""

    def __init__(self) -> None:
        self.done = False


MIB = 1 << 20


def test_a_connection_may_hold_its_limit_of_unread_replies_then_is_refused_until_it_reads() -> None:
    backlog = ReplyBacklog(max_reply_bytes=MIB)
    trackers = [FakeTracker() for _ in range(REPLIES_PER_CONNECTION)]
    for tracker in trackers:
        assert backlog.refusal(b"a") is None
        backlog.add(b"a", tracker, MIB)
    problem = backlog.refusal(b"a")
    assert problem is not None and "has not read yet" in problem and "4.0 MiB" in problem
    assert backlog.refusal(b"b") is None  # another connection is not held back by this one
    trackers[0].done = True  # libzmq sent one: room for one more
    assert backlog.refusal(b"a") is None
    assert backlog.status() == {"unsent_reply_bytes": (REPLIES_PER_CONNECTION - 1) * MIB, "history_refused": 1}


def test_small_replies_are_bounded_in_number_too() -> None:
    backlog = ReplyBacklog(max_reply_bytes=MIB)
    for _ in range(CONNECTION_REPLIES):
        backlog.add(b"a", FakeTracker(), 60)
    assert backlog.refusal(b"a") is not None


def test_the_total_is_bounded_and_checked_against_what_others_have_read_since(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backlog_module, "TOTAL_BYTES", 8 * MIB)
    backlog = ReplyBacklog(max_reply_bytes=MIB)
    held = [FakeTracker() for _ in range(8)]
    for k, tracker in enumerate(held):
        backlog.add(b"c%d" % k, tracker, MIB)  # eight connections, one unread reply each
    problem = backlog.refusal(b"new")
    assert problem is not None and "its clients have not read" in problem
    for tracker in held[:2]:
        tracker.done = True  # two of them read theirs: not checked by their own connections
    assert backlog.refusal(b"new") is None  # the full check before refusing found the room
    assert backlog.status()["unsent_reply_bytes"] == 6 * MIB


def test_connections_whose_replies_all_went_are_forgotten() -> None:
    backlog = ReplyBacklog(max_reply_bytes=MIB)
    tracker = FakeTracker()
    backlog.add(b"gone", tracker, 100)
    tracker.done = True
    backlog.prune()
    assert backlog._connections == {} and backlog.total == 0 and backlog.count == 0


class CountingTracker(FakeTracker):
    """Counts how often the backlog asks whether it is done."""

    asked = 0

    @property
    def done(self) -> bool:
        CountingTracker.asked += 1
        return False

    @done.setter
    def done(self, value: bool) -> None:
        pass


def test_checks_cost_little_however_many_replies_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection's replies leave in order: only the front is asked. At the total's limit, the
    whole check runs once per turn, not once per request of a burst."""
    monkeypatch.setattr(backlog_module, "TOTAL_REPLIES", 1000)
    backlog = ReplyBacklog(max_reply_bytes=MIB)
    for k in range(1000):
        backlog.add(b"c%d" % (k % 10), CountingTracker(), 60)  # 10 connections, 100 unread each
    CountingTracker.asked = 0
    for _ in range(50):
        assert backlog.refusal(b"new", turn=1) is not None
    assert CountingTracker.asked == 10  # one whole check: the front of each connection
    assert backlog.refusal(b"c0", turn=2) is not None
    assert CountingTracker.asked == 21  # its own front, then the whole check of the new turn
