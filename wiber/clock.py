"""Clocks: the `Clock` interface the node takes, the system clock, and a fake for tests.

The node never calls `time` directly: it asks its `Clock` for `monotonic()` (timers, deadlines)
and `wall()` (epoch seconds, for message `ts` and PING `time`). Tests pass `FakeClock` and move it
by hand (trio's MockClock). `WIBER_CLOCK_SKEW_MS` in the environment skews a process's wall clock
on purpose, so clock-sync code can be tested with real processes.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Protocol

SKEW_ENV = "WIBER_CLOCK_SKEW_MS"


class Clock(Protocol):
    """Where a node gets the time from."""

    def monotonic(self) -> float:
        """Returns: seconds from an arbitrary origin, never going back."""
        ...

    def wall(self) -> float:
        """Returns: this process's wall clock in epoch seconds (skew included)."""
        ...


def skew_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Returns: the skew in seconds that `WIBER_CLOCK_SKEW_MS` asks for (0 when unset).

    Raises:
        ValueError: the variable is set but is not a number.
    """
    env = os.environ if environ is None else environ
    raw = env.get(SKEW_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        return float(raw) / 1000.0
    except ValueError:
        raise ValueError(f"{SKEW_ENV} must be a number of milliseconds, got {raw!r}") from None


class SystemClock:
    """The machine's clocks, with an optional fixed skew added to wall time."""

    def __init__(self, skew_s: float = 0.0) -> None:
        self.skew_s = skew_s

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time() + self.skew_s


class FakeClock:
    """A clock that moves only when told to: deterministic tests of anything timed."""

    def __init__(self, monotonic: float = 0.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._monotonic += seconds
        self._wall += seconds

    def set_wall(self, wall: float) -> None:
        """Step the wall clock (as NTP or an operator may), leaving monotonic time alone."""
        self._wall = wall
