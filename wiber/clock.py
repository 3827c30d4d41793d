"""Clocks: the `Clock` interface the node takes, the system clock, and a fake for tests.

The node never calls `time` directly: it asks its `Clock` for `monotonic()` (timers, deadlines)
and `wall()` (epoch seconds, for message `ts` and PING `time`). Tests pass `FakeClock` and move it
by hand (trio's MockClock). `WIBER_CLOCK_SKEW_MS` in the environment skews a process's wall clock
on purpose, so clock-sync code can be tested with real processes.
"""

from __future__ import annotations

import math
import os
import time
from typing import Mapping, Protocol

SKEW_ENV = "WIBER_CLOCK_SKEW_MS"
MAX_OFFSET_S = 86_400.0
"""A clock-sync sample saying the reference is further off than a day is refused (a forged or broken peer)."""
MAX_DELAY_S = 60.0
"""A clock-sync sample whose round trip took longer than this is refused: its error bound says nothing."""


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


# ------------------------------------------------------------------ clock synchronization


class OffsetEstimator:
    """NTP-style offset of a local wall clock to a reference clock, from four-timestamp exchanges.

    An exchange: the local side sends at t1 (local clock), the reference receives at t2 and answers
    at t3 (reference clock), the answer arrives at t4 (local clock). Then
    ``offset = ((t2 - t1) + (t3 - t4)) / 2`` and ``delay = (t4 - t1) - (t3 - t2)``. The offset of a
    sample is wrong by at most half its delay (all asymmetry on one side), so of the last `window`
    samples the one with the smallest delay is used, and its half delay is the error bound.

    Samples come from the network: one with a time that is not finite, an offset over
    `MAX_OFFSET_S` or a delay over `MAX_DELAY_S` is refused (a NaN offset once became a leader's
    message ``ts`` and crashed it), so `offset` and `error` are always finite.
    """

    def __init__(self, window: int = 8) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._samples: list[tuple[float, float]] = []  # (delay, offset), newest last
        self.offset = 0.0
        self.error = 0.0

    @property
    def samples(self) -> int:
        return len(self._samples)

    def add(self, t1: float, t2: float, t3: float, t4: float) -> bool:
        """Take one exchange (seconds). Exchanges with a negative delay (clock stepped) are ignored,
        absurd ones (see the class docstring) refused.

        Returns: whether the sample was taken.
        """
        delay = (t4 - t1) - (t3 - t2)
        offset = ((t2 - t1) + (t3 - t4)) / 2.0
        if not (math.isfinite(delay) and math.isfinite(offset)) or not 0 <= delay <= MAX_DELAY_S:
            return False
        if abs(offset) > MAX_OFFSET_S:
            return False
        self._samples.append((delay, offset))
        if len(self._samples) > self.window:
            del self._samples[0]
        best_delay, best_offset = min(self._samples)
        self.offset = best_offset
        self.error = best_delay / 2.0
        return True

    def reset(self) -> None:
        """Forget the samples (the reference changed) but keep the current offset until new ones come."""
        self._samples.clear()


class SyncedClock:
    """A wall clock corrected by an estimated offset: `now()` is the cluster's time as this node sees it.

    A node keeps its offset when it becomes leader, so cluster time does not jump at a leader change
    (the new leader's synced clock was following the old leader's).
    """

    def __init__(self, clock: Clock, estimator: OffsetEstimator | None = None) -> None:
        self.clock = clock
        self.estimator = estimator or OffsetEstimator()

    def now(self) -> float:
        """Returns: wall time plus the estimated offset to the reference, epoch seconds (the wall
        time alone should that ever not be a finite number: it becomes messages' ``ts``)."""
        wall = self.clock.wall()
        now = wall + self.estimator.offset
        return now if math.isfinite(now) else wall

