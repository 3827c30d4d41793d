"""How long the node's loop thread has waited, runnable, for a CPU: the scheduler's own count.

On a machine whose CPUs are shared with busy clients (200 subscriber threads on two cores), a node's
loop can stand in the run queue for hundreds of milliseconds. Its peers' messages wait in the
sockets meanwhile, and its timers see an election timeout go by that it never had the CPU to
watch. The node takes that time off Raft's clock as it does a wait on its own disk
(`wiber.node.raftclock`); this module says how much of a late turn was such a wait, so that time
the loop spent working still counts.

Linux counts it per thread in `/proc/thread-self/schedstat` (the second field, in nanoseconds,
`Documentation/scheduler/sched-stats.rst`). Elsewhere, or where /proc is hidden, the reading is
`None` and nothing is taken off.
"""

from __future__ import annotations

from typing import Callable

#: The scheduler's per-thread statistics: time on the CPU, time waiting on a run queue, timeslices.
SCHEDSTAT_PATH = "/proc/thread-self/schedstat"


def run_queue_wait_s(path: str = SCHEDSTAT_PATH) -> float | None:
    """Returns: the seconds the calling thread has spent runnable but waiting for a CPU since it
    started, or None where the kernel does not say (not Linux, no /proc, schedstats hidden)."""
    try:
        with open(path, "rb") as f:
            fields = f.read(128).split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class CpuWaits:
    """The run-queue wait of the loop thread between two readings (one per clock probe, one per
    late turn: a reading costs a /proc read, ~10 us, too much for every turn)."""

    def __init__(self, read: Callable[[], float | None] = run_queue_wait_s) -> None:
        """`read` returns the thread's total run-queue wait so far (tests pass their own)."""
        self._read = read
        self._seen = read()

    def mark(self) -> None:
        """Start the next span here (called every clock probe, so a span is short)."""
        self._seen = self._read()

    def since_mark(self) -> float:
        """Returns: the seconds waited for a CPU since the last mark (0 when unknown); marks again."""
        before, now = self._seen, self._read()
        self._seen = now
        if before is None or now is None:
            return 0.0
        return max(0.0, now - before)
