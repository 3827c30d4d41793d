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
