"""Clocks: skew from the environment, the fake clock used by deterministic tests."""

from __future__ import annotations

import pytest

from wiber.clock import FakeClock, SystemClock, skew_from_env


def test_skew_from_env_reads_milliseconds() -> None:
    assert skew_from_env({}) == 0.0
    assert skew_from_env({"WIBER_CLOCK_SKEW_MS": "2000"}) == 2.0
    assert skew_from_env({"WIBER_CLOCK_SKEW_MS": "-1500"}) == -1.5


def test_skew_from_env_refuses_garbage_with_the_variable_name() -> None:
    with pytest.raises(ValueError, match="WIBER_CLOCK_SKEW_MS"):
        skew_from_env({"WIBER_CLOCK_SKEW_MS": "soon"})


def test_system_clock_applies_skew_to_wall_only() -> None:
    plain, skewed = SystemClock(), SystemClock(skew_s=3.0)
    assert 2.9 < skewed.wall() - plain.wall() < 3.1
    assert abs(skewed.monotonic() - plain.monotonic()) < 0.1


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(monotonic=5.0, wall=100.0)
    assert (clock.monotonic(), clock.wall()) == (5.0, 100.0)
    clock.advance(1.5)
    assert (clock.monotonic(), clock.wall()) == (6.5, 101.5)
    clock.set_wall(50.0)
    assert (clock.monotonic(), clock.wall()) == (6.5, 50.0)
    with pytest.raises(ValueError):
        clock.advance(-1)


# ------------------------------------------------------------------ offset estimation


from wiber.clock import OffsetEstimator, SyncedClock  # noqa: E402
from wiber.node.reorder import ReorderBuffer  # noqa: E402
from wiber.node import timesync  # noqa: E402


def exchange(true_offset: float, send_delay: float, reply_delay: float, t1: float) -> tuple[float, ...]:
    """One exchange against a reference whose clock reads local + true_offset."""
    t2 = t1 + send_delay + true_offset
    t3 = t2 + 0.0001  # the reference answers at once
    t4 = t3 - true_offset + reply_delay
    return t1, t2, t3, t4


def test_symmetric_delays_give_the_true_offset() -> None:
    est = OffsetEstimator()
    est.add(*exchange(2.0, 0.003, 0.003, 100.0))
    assert abs(est.offset - 2.0) < 1e-9
    assert abs(est.error - 0.003) < 1e-9


def test_asymmetric_delays_err_by_at_most_half_the_delay_and_the_best_sample_wins() -> None:
    est = OffsetEstimator(window=8)
    true_offset = -1.5
    delays = [(0.040, 0.002), (0.002, 0.030), (0.010, 0.010), (0.0005, 0.0015), (0.050, 0.001)]
    for k, (up, down) in enumerate(delays):
        est.add(*exchange(true_offset, up, down, 10.0 + k))
        # The estimate is never further from the truth than its stated error bound.
        assert abs(est.offset - true_offset) <= est.error + 1e-9
    assert est.error == pytest.approx((0.0005 + 0.0015) / 2)  # the minimum-delay sample is used
    assert abs(est.offset - true_offset) <= 0.001


def test_only_the_last_window_samples_count() -> None:
    est = OffsetEstimator(window=2)
    est.add(*exchange(1.0, 0.0001, 0.0001, 1.0))   # excellent, but will age out
    est.add(*exchange(1.2, 0.01, 0.01, 2.0))
    est.add(*exchange(1.2, 0.02, 0.02, 3.0))
    assert abs(est.offset - 1.2) < 1e-9 and est.samples == 2


def test_negative_delay_samples_are_ignored_and_synced_clock_adds_the_offset() -> None:
    est = OffsetEstimator()
    est.add(10.0, 5.0, 100.0, 10.001)  # the reference took longer to answer than the round trip
    assert est.samples == 0 and est.offset == 0.0
    est.add(*exchange(3.0, 0.001, 0.001, 50.0))
    clock = FakeClock(wall=1000.0)
    assert abs(SyncedClock(clock, est).now() - 1003.0) < 1e-6


def test_timesync_frames_round_trip_and_garbage_is_refused() -> None:
    assert timesync.parse(timesync.probe("n2", 1.5)) == ("n2", 1.5, None, None)
    assert timesync.parse(timesync.reply("n1", 1.5, 2.5, 2.6)) == ("n1", 1.5, 2.5, 2.6)
    for bad in (b"", b"\xc1T", b"\xc1T\x09", b"\xc1T\x01abc", b"\xc1T\x02" + b"\x00" * 8, b"\x93\x01"):
        with pytest.raises(ValueError):
            timesync.parse(bad)


# ------------------------------------------------------------------ bounded reordering


def test_reorder_releases_in_send_order_after_the_window() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(0.1)
    assert buf.add("b", ts=10.02, client_id="x", seq=2, now=10.05)
    assert buf.add("a", ts=10.01, client_id="y", seq=1, now=10.06)  # sent first, arrived later
    assert buf.release(10.10) == []  # the earliest window has not passed yet
    assert buf.next_release() == pytest.approx(10.11)
    assert buf.release(10.12) == ["a", "b"]  # b's window passed too: both go, in send order
    assert len(buf) == 0 and buf.late == 0


def test_ties_on_ts_go_by_client_id_then_seq() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(0.05)
    for item, cid, seq in (("c2", "c", 2), ("b1", "b", 1), ("c1", "c", 1)):
        buf.add(item, ts=5.0, client_id=cid, seq=seq, now=5.0)
    assert buf.release(5.05) == ["b1", "c1", "c2"]


def test_a_tie_on_ts_that_arrives_after_its_slot_is_late() -> None:
    """(ts, client_id, seq) is the order: an equal ts with a smaller client_id, arriving after the
    larger one was released, has missed its slot (comparing ts alone held it and logged it out of order)."""
    buf: ReorderBuffer[str] = ReorderBuffer(0.1)
    buf.add("c", ts=5.0, client_id="c", seq=1, now=5.0)
    assert buf.release(5.1) == ["c"]
    assert buf.add("b", ts=5.0, client_id="b", seq=1, now=5.1) is False
    assert buf.add("d", ts=5.0, client_id="d", seq=1, now=5.1) is True  # after "c" in the order: held
    assert buf.late == 1


def test_a_message_after_its_slot_is_late_never_dropped() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(0.1)
    buf.add("a", ts=1.0, client_id="x", seq=1, now=1.0)
    assert buf.release(1.2) == ["a"]
    assert buf.add("old", ts=0.95, client_id="y", seq=1, now=1.2) is False  # caller appends it at once
    assert buf.late == 1
    assert buf.add("new", ts=1.15, client_id="y", seq=2, now=1.2) is True  # still in order: held


def test_no_message_is_held_longer_than_the_window_after_arrival() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(0.1)
    buf.add("future", ts=100.0, client_id="fast-clock", seq=1, now=1.0)  # a client clock far ahead
    assert buf.next_release() == pytest.approx(1.1)
    assert buf.release(1.1) == ["future"]


def test_an_overdue_message_takes_earlier_sent_ones_with_it() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(0.1)
    buf.add("early-ts-late-arrival", ts=2.0, client_id="a", seq=1, now=2.0)
    buf.add("future", ts=50.0, client_id="b", seq=1, now=1.95)  # released at 2.05 by its arrival
    assert buf.release(2.06) == ["early-ts-late-arrival", "future"]
    assert buf.release(3.0) == [] and len(buf) == 0


def test_drain_returns_everything_in_send_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(1.0)
    for k, ts in enumerate((3.0, 1.0, 2.0)):
        buf.add(k, ts=ts, client_id="c", seq=k, now=0.0)
    assert buf.drain() == [1, 2, 0] and buf.next_release() is None
