"""`wiber status --watch`: the STATUS table refreshed every interval, with per-second rates.

A look at a cluster for people without Prometheus. Each refresh asks every node for STATUS, prints
the table (cleared in place with ANSI codes when stdout is a terminal; one table after another,
separated by a blank line, when it is not), and the rates `wiber.cli.health.rates` computes from
each node's previous answer: the first refresh has none (`-`). With --json, each refresh is one JSON
document on its own line (JSON Lines), with each node's `rates`.

Stops after --count refreshes, or on Ctrl-C / SIGTERM between or during one (no traceback); the
exit status is the last refresh's verdict. The wait between refreshes is measured from the start
of the previous one, so a slow node does not stretch the interval on top of its timeout.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from wiber.cli.common import open_client
from wiber.cli.health import EXIT_NO_QUORUM, classify, rates, verdict
from wiber.cli.info import format_status_table, print_json, status_json

#: Home the cursor and clear the screen: the table is redrawn in place on a terminal.
CLEAR = "\x1b[H\x1b[2J"


class _Stop:
    """SIGINT/SIGTERM turn into a flag checked between refreshes (and cut the wait short)."""

    def __init__(self) -> None:
        self._requested = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True

    def requested(self) -> bool:
        """Returns: whether SIGINT or SIGTERM came."""
        return self._requested

    def sleep_until(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic) or a stop request, in short steps so a signal ends it soon."""
        while not self._requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


def watch_status(args: argparse.Namespace) -> int:
    """Refresh the STATUS table every --interval seconds until --count or a signal. Returns: the last
    refresh's exit status (3 when it was stopped before the first one)."""
    tty = sys.stdout.isatty()
    previous: dict[str, Mapping[str, Any]] = {}
    status = EXIT_NO_QUORUM
    done = 0
    with _Stop() as stop, open_client(args) as client:
        while not stop.requested() and (args.count is None or done < args.count):
            started = time.monotonic()
            rows = client.status_all()
            if stop.requested() and done:  # a refresh cut short by Ctrl-C: keep the last full table
                break
            node_rates: dict[str, dict[str, float | None] | None] = {}
            for address, st in rows.items():
                if isinstance(st, BaseException):
                    node_rates[address] = None
                    continue
                node_rates[address] = rates(previous.get(address), st)
                previous[address] = st
            answers = [classify(address, st) for address, st in rows.items()]
            result = verdict(answers)
            status = result.exit_status
            done += 1
            if args.json:
                print_json({"ts": round(time.time(), 3), "nodes": [status_json(a, node_rates[a.address])
                                                                   for a in answers],
                            "cluster": result.as_json()})
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                head = f"{stamp}  every {args.interval:g} s  {result.summary}"
                print((CLEAR if tty else ("\n" if done > 1 else "")) + head)
                print(format_status_table(rows, node_rates))
                sys.stdout.flush()
            if args.count is not None and done >= args.count:
                break
            stop.sleep_until(started + args.interval)
    return status
