"""`wiber up`'s node processes: start, relay their log lines, notice an exit at once, restart with backoff.

Each node runs as a child in its own session (a terminal's Ctrl-C reaches only `wiber up`, which
then stops the nodes in order). Its stdout and stderr come through one pipe, read by a thread per
process that copies each line to `wiber up`'s stderr, where the nodes' logs always went, and
keeps the last TAIL_LINES: when the node exits, `up` says so at once with its exit status and
those lines, then starts it again after a backoff. A node that exits before it ever answered a
request "exited at start": its log tail usually says why (a bad data directory, a port taken).

Backoff (`Backoff`): 0.5 s after the first exit, doubling to at most 30 s while the node keeps
failing; once a node has stayed up for STABLE_S it is healthy again and its next exit waits 0.5 s.
A node that fails at start (a bad data directory, a port taken meanwhile) thus retries quickly at
first and then twice a minute, without spinning.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

#: How many of a node's last output lines an exit report shows.
TAIL_LINES = 10
#: One line at a time on the shared stderr, whichever node's reader writes it.
_RELAY_LOCK = threading.Lock()


@dataclass(slots=True)
class Backoff:
    """Exponential restart delay: `initial_s` doubling to `max_s`, back to `initial_s` after a run of
    `stable_s` or more. A value object with no clock: the caller says how long the run lasted."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 10.0
    _next_s: float = 0.0

    def __post_init__(self) -> None:
        self._next_s = self.initial_s

    def after_exit(self, ran_s: float) -> float:
        """Returns: how long to wait before restarting a process that exited after running `ran_s`."""
        if ran_s >= self.stable_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


def describe_exit(returncode: int) -> str:
    """Returns: `status 2`, or `status -9 (killed by SIGKILL)` for a signal."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"status {returncode} (killed by {name})"
    return f"status {returncode}"


class SupervisedNode:
    """One node's process across its restarts: the current Popen, its output tail and its backoff."""

    def __init__(self, node_id: str, argv: Sequence[str], relay: IO[bytes], backoff: Backoff | None = None) -> None:
        self.id = node_id
        self._argv = list(argv)
        self._relay = relay
        self.backoff = backoff or Backoff()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.restart_at: float | None = None  # monotonic time of the next start, when waiting
        self.answered = False  # the current process has answered a request (set by whoever asks it)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """Returns: the current process's pid, None before the first start."""
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        """Returns: whether the current process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the node's process, with a fresh output tail and a reader thread for its pipe."""
        self.tail.clear()
        self.restart_at = None
        self.answered = False
        self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        name=f"wiber-up-{self.id}", daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[bytes] | None) -> None:
        """Copy each line of the node's output to the relay and keep the last TAIL_LINES (thread)."""
        if pipe is None:
            return
        with pipe:
            for line in pipe:
                self.tail.append(line.decode(errors="replace").rstrip("\n"))
                with _RELAY_LOCK:
                    try:
                        self._relay.write(line)
                        self._relay.flush()
                    except (OSError, ValueError):  # `up`'s stderr closed: keep the tail anyway
                        pass

    def settle_output(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until the reader has seen the end of the exited process's output."""
        if self._reader is not None:
            self._reader.join(timeout)

    def exit_report(self, now: float) -> str:
        """Returns: the lines `up` prints when the current process has exited: status, run time, log tail."""
        assert self.proc is not None and self.proc.returncode is not None
        ran = now - self.started_at
        when = f"after {ran:.1f} s" if self.answered else "at start (before it answered)"
        lines = [f"wiber: node {self.id} (pid {self.proc.pid}) exited {when} with "
                 f"{describe_exit(self.proc.returncode)}"]
        if self.tail:
            lines.append(f"wiber: its last {len(self.tail)} log lines:")
            lines += [f"    {line}" for line in self.tail]
        else:
            lines.append("wiber: it wrote no log lines (raise --log-level to see more)")
        return "\n".join(lines)


class Supervisor:
    """Every node of `wiber up`: notice exits, report them, restart after the backoff."""

    def __init__(self, nodes: Sequence[SupervisedNode], say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nodes = list(nodes)
        self._say = say
        self._clock = clock

    def start_all(self) -> None:
        """Start every node's process."""
        for node in self.nodes:
            node.start()

    def turn(self) -> None:
        """Report each node that exited since the last turn and schedule its restart; start those due."""
        now = self._clock()
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.restart_at is None and node.proc.poll() is not None:
                node.settle_output()
                self._say(node.exit_report(now))
                delay = node.backoff.after_exit(now - node.started_at)
                node.restart_at = now + delay
                self._say(f"wiber: restarting {node.id} in {delay:g} s (restart {node.restarts + 1})")
            elif node.restart_at is not None and now >= node.restart_at:
                node.restarts += 1
                node.start()
                self._say(f"wiber: {node.id} restarted (pid {node.pid}, restart {node.restarts})")

    def stop_all(self, timeout: float = 5.0) -> None:
        """SIGTERM every running node, wait up to `timeout`, SIGKILL any that would not stop; say each."""
        for node in self.nodes:
            if node.running():
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            node.settle_output()
            self._say(f"wiber: {node.id} stopped (status {node.proc.returncode})")


def stderr_bytes() -> IO[bytes]:
    """Returns: the byte stream under sys.stderr, where node output is relayed."""
    return sys.stderr.buffer
