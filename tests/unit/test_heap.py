"""`wiber.node.heap`: the heap is trimmed after a burst of peer frames, at most once per interval."""

from __future__ import annotations

from wiber.node.heap import HeapTrimmer


def test_a_trim_follows_a_burst_at_most_once_per_interval() -> None:
    calls: list[int] = []
    trimmer = HeapTrimmer(burst_bytes=100, interval_s=1.0)

    def trim(pad: int) -> int:  # glibc's malloc_trim, observed
        calls.append(pad)
        return 1

    trimmer._trim = trim
    trimmer.took(99)
    assert not trimmer.maybe_trim(10.0)  # below the burst mark: ordinary traffic costs nothing
    trimmer.took(1)
    assert trimmer.maybe_trim(10.0) and calls == [0]
    trimmer.took(500)
    assert not trimmer.maybe_trim(10.5)  # within the interval
    assert trimmer.maybe_trim(11.0) and calls == [0, 0]
    assert not trimmer.maybe_trim(20.0)  # nothing came in since


def test_glibc_has_malloc_trim_here() -> None:
    """The suite runs on glibc (Debian): the trimmer must find the real function, or the memory
    tests would pass for another reason."""
    assert HeapTrimmer()._trim is not None
