"""Raft's clock on a node: when the core's next tick is due and how many ticks a turn fires.

Real time, less what the node could not watch through: waits on its own disk (fsyncs, snapshot
work) and waits for a CPU in the scheduler's run queue. Through either, the node hears nobody
and its peers (on a shared disk, or starved beside it) stall as well, so that time must not count
as their silence: counted, it deposed healthy leaders (CheckQuorum) and started elections with
every node up. What is taken off is bounded by a credit earned by ticking, so the clock never
runs below half speed and a cut-off node still notices, only later.

Only timing changes, never safety: reads use ReadIndex and no lease; the lease only keeps a node
that heard a leader recently from voting, and it lasts longer by what was taken off.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from wiber.node.cpuwait import CpuWaits

log = logging.getLogger("wiber.node.loop")

#: The Raft core counts time in ticks of this many milliseconds.
TICK_MS = 10
#: A wait on the node's own disk or for a CPU this long or longer is taken off Raft's clock.
DISK_WAIT_PAUSES_S = TICK_MS / 1000
#: At most this much Raft time, earned by ticks, is banked for taking waits off the clock.
DISK_WAIT_CREDIT_MAX_S = 1.0
#: A wait on the disk this long or longer is logged as a warning: it risks elections on peers with other disks.
DISK_WAIT_WARN_S = 0.1
#: A turn whose timers fire this late asks the scheduler how much of the delay was a wait for a CPU
#: (`wiber.node.cpuwait`) and takes that much off; so does every probe, for the waits of the turns
#: on time since the last.
CPU_WAIT_CHECK_S = 2 * TICK_MS / 1000
#: Waits for a CPU this long or longer are logged as a warning, at most once per this many seconds.
CPU_WAIT_WARN_S = 0.1
CPU_WAIT_WARN_EVERY_S = 10.0


def ms_to_ticks(ms: int) -> int:
    """Returns: the number of core ticks (at least 1) closest to `ms` milliseconds."""
    return max(1, round(ms / TICK_MS))


class RaftClock:
    """The node's Raft time: fires ticks as real time passes, minus the waits it takes off."""

    def __init__(self, node_id: str, now: float, election_ticks: int, monotonic: Callable[[], float]) -> None:
        """`election_ticks` caps the ticks of one turn (see `ticks_due`); `monotonic` is the node's clock."""
        self._id = node_id
        self._monotonic = monotonic
        self.tick_s = TICK_MS / 1000.0
        self.next_tick = now + self.tick_s
        # One election timeout of ticks at most per batch: one batch then crosses at most one
        # CheckQuorum boundary, whose flags the peers' messages before a stall have set (two
        # crossings with nothing stepped between deposed a healthy leader after a long stall).
        self._max_catch_up_ticks = election_ticks
        self.credit = 0.0  # Raft time ticked and not yet taken off for waits (`take_off`)
        self.cpu_waits = CpuWaits()  # the loop thread's waits for a CPU (tests put their own)
        self._cpu_wait_warned = -math.inf
        self.disk_wait_s = 0.0  # what was taken off, for metrics
        self.cpu_wait_s = 0.0

    def ticks_due(self, now: float, running: bool = True) -> int:
        """Returns: how many ticks to fire now (0 when none is due, or when not `running`).

        Every elapsed tick counts (a slow turn must not slow Raft's clock down), but after a long
        stall (SIGSTOP) one election timeout's worth is all any timer needs; waits for a CPU are
        taken off first (`cpu_waited`), waits on the disk when they happened (`disk_waited`).
        """
        if now - self.next_tick >= CPU_WAIT_CHECK_S:
            self.cpu_waited(now - self.next_tick)
        if now < self.next_tick:
            return 0
        ticks = int((now - self.next_tick) / self.tick_s) + 1
        fired = min(ticks, self._max_catch_up_ticks) if running else 0
        self.next_tick = now + self.tick_s
        self.credit = min(DISK_WAIT_CREDIT_MAX_S, self.credit + fired * self.tick_s)
        return fired

    def probe(self) -> None:
        """Take off what the loop waited for a CPU since the last reading: short waits add up as
        much as one long one (60% of the time in the run queue, in waits of 20-100 ms, still let
        300 ms of silence pass). Called every clock probe, so a reading spans ~100 ms."""
        self.cpu_waited(math.inf)

    def disk_waited(self, waited: float, what: str) -> None:
        """Take a long wait on this node's own disk (fsync, snapshot) off Raft's clock.

        On one shared disk every node stalls at once (0.1-0.9 s fsyncs, a few a minute on the
        benchmark machine): no leader sends, no follower answers, and the catch-up ticks afterwards
        counted that silence, so a follower campaigned (its peer, stalled too, was out of its lease
        and granted the pre-vote) or the leader stepped down (CheckQuorum). A SIGSTOP that lands
        inside an fsync is taken off too: the clock cannot tell it from the disk.
        """
        if waited < DISK_WAIT_PAUSES_S:
            return
        paused = self.take_off(waited)
        self.disk_wait_s += paused
        if waited >= DISK_WAIT_WARN_S:
            log.warning("node %s waited %.0f ms on its disk (%s); %.0f ms of it taken off Raft's timers",
                        self._id, waited * 1000, what, paused * 1000)

    def cpu_waited(self, late: float) -> None:
        """Take what the loop waited for a CPU since the last reading (at most `late`, how late the
        timers are) off Raft's clock: read on a late turn, and every probe.

        Nodes that share their CPUs with busy clients stand in the run queue for hundreds of
        milliseconds at a time, all of them in turn: a leader starved for 300 ms sent no
        heartbeat, and a follower starved as long woke to an election timeout gone by and
        campaigned; a leader whose followers were starved stepped down (CheckQuorum). 8 of 10 runs
        of 200 subscriber threads on two cores changed leader with every node up, the nodes' loops
        60% of the time in the run queue. The scheduler says how long the thread was runnable and
        not running (`wiber.node.cpuwait`); time a turn spent working still counts. On a starved
        machine Raft's clock so runs slower, never below half speed: a dead node is noticed later,
        a live one is not deposed.
        """
        waited = min(late, self.cpu_waits.since_mark())
        if waited < DISK_WAIT_PAUSES_S:
            return
        paused = self.take_off(waited)
        self.cpu_wait_s += paused
        now = self._monotonic()
        if waited >= CPU_WAIT_WARN_S and now - self._cpu_wait_warned >= CPU_WAIT_WARN_EVERY_S:
            self._cpu_wait_warned = now
            log.warning("node %s waited %.0f ms for a CPU; %.0f ms of it taken off Raft's timers (the machine "
                        "is overloaded: elections follow if it goes on)", self._id, waited * 1000, paused * 1000)

    def take_off(self, waited: float) -> float:
        """Move the next tick later by `waited`, as far as the credit allows; returns: what was taken off.

        The credit is the Raft time ticked since, capped at `DISK_WAIT_CREDIT_MAX_S`. So waits can
        never take off more Raft time than was ticked (plus the cap): with waits up to an election
        timeout the clock runs at least half as fast as real time; a longer wait beyond the credit
        counts one election timeout at most, as any long stall does (`ticks_due`).
        """
        paused = min(waited, self.credit)
        self.credit -= paused
        self.next_tick += paused
        return paused
