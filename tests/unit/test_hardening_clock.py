"""Hardening of clock sync (issue 15): samples that are not finite or are absurd are refused, so the
synced clock, and with it every message's ``ts``, stays a finite number of epoch seconds."""

from __future__ import annotations

import math

import pytest

from wiber.clock import MAX_DELAY_S, MAX_OFFSET_S, FakeClock, OffsetEstimator, SyncedClock
from wiber.node import timesync

NOW = 1_700_000_000.0


@pytest.mark.parametrize("t2, t3", [
    (math.nan, math.nan), (math.inf, math.inf), (-math.inf, NOW), (NOW + 2 * MAX_OFFSET_S,) * 2,
    (NOW - 2 * MAX_OFFSET_S,) * 2, (NOW, NOW - 2 * MAX_DELAY_S),
])
def test_absurd_samples_are_refused_and_the_offset_stays(t2: float, t3: float) -> None:
    estimator = OffsetEstimator()
    assert estimator.add(NOW, NOW + 0.5, NOW + 0.5, NOW + 0.01)
    assert not estimator.add(NOW, t2, t3, NOW + 0.01)
    assert estimator.offset == pytest.approx(0.495) and math.isfinite(estimator.error)


def test_the_synced_clock_is_finite_even_with_a_nan_offset() -> None:
    """Belt and braces: were a NaN offset ever set, `now()` gives the wall clock, never NaN."""
    synced = SyncedClock(FakeClock(wall=NOW))
    synced.estimator.offset = math.nan
    assert synced.now() == NOW


@pytest.mark.parametrize("t", [math.nan, math.inf, -1.0, 1e12])
def test_clock_sync_frames_with_absurd_times_do_not_parse(t: float) -> None:
    with pytest.raises(ValueError):
        timesync.parse(timesync.reply("n1", NOW, t, NOW))
    with pytest.raises(ValueError):
        timesync.parse(timesync.probe("n2", t))
    assert timesync.parse(timesync.reply("n1", NOW, NOW, NOW)) == ("n1", NOW, NOW, NOW)
