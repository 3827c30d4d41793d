"""What every benchmark module shares: figures, bounds, child processes, ports, percentiles, progress.

Theory of operation
-------------------
A workload produces `Figure`s: one number with its unit, the system and workload it belongs to,
how many samples it rests on and the durability that was in force. `bench.report` matches them
across systems by `workload` and turns them into one table and a JSON file.

Every server a benchmark starts is a child process started through `Children.spawn`: it listens on
127.0.0.1 only, keeps its files in a temporary directory, and is killed by its pid in a `finally`,
again at interpreter exit (`atexit`), and by the kernel if this process dies first (Linux
`PR_SET_PDEATHSIG`). Nothing is ever stopped by name.

Every load loop is bounded twice: by a message count and by a deadline (`Bounds.seconds`).
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import logging
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
PAYLOAD_BYTES = 100
PAYLOAD = b"x" * PAYLOAD_BYTES


# ---------------------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number.

    `workload` is the key `bench.report` matches systems on (e.g. ``seq_p50_ms``); `better` says
    whether a higher or a lower value is the better one, so ratios can be read either way.
    """

    system: str
    workload: str
    value: float | None
    unit: str
    durability: str
    samples: int = 0
    better: str = "higher"
    note: str = ""
    raw: tuple[float, ...] = ()
    """The individual measurements `value` is the median of, when there are few (failovers)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Section:
    """The figures of one system (one column of the table), or why it could not run."""

    system: str
    label: str
    durability: str
    figures: list[Figure] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def add(self, workload: str, value: float | None, unit: str, samples: int = 0, better: str = "higher",
            note: str = "", raw: tuple[float, ...] = ()) -> None:
        """Record one figure under this section's system and durability."""
        self.figures.append(Figure(self.system, workload, value, unit, self.durability, samples, better, note, raw))


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much load each workload may put on a system: counts, and seconds per workload.

    messages: the count for the pipelined workloads (batch 1 / one ack per message).
    sequential: the count for one-at-a-time workloads (each waits its ack).
    subscriber: the count published while a subscriber receives.
    batched: the count for the auto-batching workload (and so the size of the topic replay reads).
    seconds: the deadline of any one workload; a workload that reaches it stops and reports what it did.
    kills: failovers measured per system (the median is reported).
    """

    messages: int = 100_000
    sequential: int = 3_000
    subscriber: int = 150_000
    batched: int = 300_000
    seconds: float = 30.0
    kills: int = 3

    @classmethod
    def make(cls, messages: int, seconds: float, kills: int) -> Bounds:
        """Returns: bounds derived from one message count (sequential /30, subscriber x1.5, batched x3).

        The pipelined count is the largest so that each system's pipelined run lasts seconds, long
        enough for its steady state to outweigh its first turns and the machine's hiccups.
        """
        return cls(messages=messages, sequential=max(50, messages // 30), subscriber=messages * 3 // 2,
                   batched=messages * 3, seconds=seconds, kills=kills)


# ---------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float | None:
    """Returns: the p-th percentile (0..100) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float | None:
    """Returns: the median, or None for no values."""
    return statistics.median(values) if values else None


def rate(count: int, seconds: float) -> float | None:
    """Returns: count per second, or None when nothing was timed."""
    return count / seconds if count and seconds > 0 else None


# ---------------------------------------------------------------------------------------- ports


_handed_out: set[int] = set()


def free_port() -> int:
    """Returns: a TCP port on 127.0.0.1 that was free a moment ago and not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Returns: whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy, for at most `timeout` seconds.

    Returns: that value.
    Raises:
        TimeoutError: the deadline passed first (names `what` and the last exception seen).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the system is settling: any error may pass
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}"
                               + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------- children


def _load_prctl() -> Callable[..., int] | None:
    """Returns: libc's prctl, loaded now (in the parent), so a forked child only makes the syscall."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child (before exec, or first thing in a worker): be SIGKILLed when the benchmark dies.

    Only a system call through a function pointer loaded before the fork: nothing that takes a lock.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """One process this benchmark started, with its log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._env = env
        self._cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the process; its stdout and stderr go to its log file."""
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self._env or {})}, cwd=str(self._cwd),
                preexec_fn=die_with_parent if _PRCTL is not None else None,  # noqa: PLW1509 - one syscall
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL this process (by its pid) and reap it; nothing when it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not die within 10 s of SIGKILL", self.name, self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Children:
    """Every process the benchmark started: spawned here, killed by pid here, always."""

    def __init__(self) -> None:
        self._children: list[Child] = []
        atexit.register(self.kill_all)

    def spawn(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
              cwd: Path = REPO) -> Child:
        """Returns: a started child process, tracked for `kill_all`."""
        child = Child(name, argv, log_path, env, cwd)
        self._children.append(child)
        child.start()
        return child

    def kill_all(self) -> None:
        """SIGKILL every tracked process that still runs (each by its own pid)."""
        for child in self._children:
            child.kill()
        self._children.clear()


CHILDREN = Children()


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit; every child started after
    inherits it. A node holds one descriptor per client connection, and the many-clients workload
    (`bench.clients_bench`) opens 1,000 at the leader, past a soft limit of 1,024 with the rest.

    Returns: (soft limit before, soft limit now).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so every `finally` (and atexit) kills our children."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# ---------------------------------------------------------------------------------------- progress


class Progress:
    """Progress of one workload on stderr: a tqdm bar on a terminal, then one summary line."""

    def __init__(self, desc: str, total: int | None, enabled: bool = True, unit: str = "msg") -> None:
        self._desc = desc
        self._unit = unit
        self._done = 0
        self._start = time.monotonic()
        self._enabled = enabled
        self._tty = sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True,
                         disable=not (enabled and self._tty), file=sys.stderr, mininterval=0.25)
        # Hand tqdm work in steps of ~0.5%: a per-message tqdm call would slow the clients being measured.
        self._step = max(1, (total or 0) // 200)
        self._pending = 0

    def update(self, n: int = 1) -> None:
        self._done += n
        self._pending += n
        if self._pending >= self._step:
            self._bar.update(self._pending)
            self._pending = 0

    def close(self) -> None:
        if self._pending:
            self._bar.update(self._pending)
            self._pending = 0
        self._bar.close()
        if self._enabled:
            elapsed = time.monotonic() - self._start
            say(f"  {self._desc}: {self._done} {self._unit} in {elapsed:.1f} s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def say(text: str, stream: IO[str] | None = None) -> None:
    """Print one status line without breaking an open progress bar."""
    tqdm.write(text, file=stream or sys.stderr)


def chunks(total: int, size: int) -> Iterator[int]:
    """Yield the sizes of consecutive chunks of `size` that add up to `total`."""
    while total > 0:
        yield min(size, total)
        total -= size


def topic_per_message(plan: Iterable[tuple[str, int]]) -> Iterator[str]:
    """Yield the topic of each message of `plan`, a sequence of (topic, count) filled one after the other."""
    for topic, count in plan:
        yield from itertools.repeat(topic, count)
