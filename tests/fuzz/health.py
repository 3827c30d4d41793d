"""What a cluster must show after fuzzing (docs/design.md section 4, promise 7): every node process
still running, every node answering PING with a sane clock, a PUB acknowledged within a deadline,
no traceback in any node's log, and each node's memory (RSS) within a bound.

Raft state is not judged: without keys (issue 15's CURVE), forged peer traffic may legitimately
change terms and logs. Only health is.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ClusterHarness, wait_for
from wiber.client import Client

CLOCK_SLACK_S = 60.0
"""How far a node's PONG `time` may be from the fuzzer's wall clock (same machine, synced clocks)."""

HEALTH_TOPIC = "fuzz.health"
CATCH_UP_S = 10.0
"""How long every node gets to apply the health PUB before it is noted as lagging."""


def rss_bytes(pid: int) -> int | None:
    """Returns: the resident set size of process `pid` (Linux /proc), or None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def open_fds(pid: int) -> int | None:
    """Returns: how many file descriptors process `pid` has open (Linux /proc), or None when unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class TracebackScanner:
    """Reads a node's log as it grows and returns every Python traceback that appears in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""

    def scan(self) -> list[str]:
        """Returns: the tracebacks (each its whole text, up to the exception line) written since the
        last call; one still being written is returned by a later call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", "replace")
        found, self._partial = split_tracebacks(text)
        return found


def split_tracebacks(text: str) -> tuple[list[str], str]:
    """Returns: (the complete tracebacks in `text`, the tail to keep: an unfinished one, or '').

    A traceback runs from ``Traceback (most recent call last):`` to its exception line, the first
    line after it that is not indented (chained ones, joined by "During handling..." or "The above
    exception...", count as one).
    """
    lines = text.split("\n")
    found: list[str] = []
    start: int | None = None
    for k, line in enumerate(lines[:-1]):  # the last item is an unfinished line (or '')
        if start is None:
            if "Traceback (most recent call last):" in line:
                start = k
            continue
        if not line or line.startswith((" ", "\t")) or line.startswith("Traceback (most recent call last):") \
                or line.startswith(("During handling", "The above exception")):
            continue
        chained = k + 2 < len(lines) and lines[k + 1] == "" \
            and lines[k + 2].startswith(("During handling", "The above"))
        if chained:
            continue  # a chained traceback goes on
        found.append("\n".join(lines[start:k + 1]))
        start = None
    tail = "\n".join(lines[start:]) if start is not None else lines[-1]
    return found, tail


def signature(traceback_text: str) -> str:
    """Returns: what tells one bug from another: the last source line named and the exception type."""
    lines = traceback_text.strip().split("\n")
    where = next((ln.strip() for ln in reversed(lines) if ln.strip().startswith("File ")), "?")
    what = lines[-1].split(":", 1)[0].strip()
    return f"{what} at {where}"


@dataclass(slots=True)
class MemoryWatch:
    """Each node's RSS: at the start of fuzzing, its peak while sampled, and the last sample (bytes);
    and its open file descriptors (last and peak): a leak of either shows in a long run."""

    start: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    peak_fds: dict[str, int] = field(default_factory=dict)

    def sample(self, harness: ClusterHarness) -> None:
        for nid, node in harness.nodes.items():
            if node.proc is None or not node.running():
                continue
            rss = rss_bytes(node.pid)
            if rss is None:
                continue
            self.start.setdefault(nid, rss)
            self.peak[nid] = max(self.peak.get(nid, 0), rss)
            self.last[nid] = rss
            fds = open_fds(node.pid)
            if fds is not None:
                self.fds[nid] = fds
                self.peak_fds[nid] = max(self.peak_fds.get(nid, 0), fds)

    def describe_last(self) -> str:
        """Returns: each node's last sampled RSS, in MiB, and open descriptors."""
        return " ".join(f"{nid} {self.last[nid] >> 20} MiB/{self.fds.get(nid, '?')} fds"
                        for nid in sorted(self.last))

    def describe(self) -> str:
        mib = 1 << 20
        return ", ".join(f"{nid} {self.start.get(nid, 0) / mib:.0f}->{self.last.get(nid, 0) / mib:.0f} MiB "
                         f"(peak {self.peak.get(nid, 0) / mib:.0f}), {self.fds.get(nid, '?')} fds "
                         f"(peak {self.peak_fds.get(nid, '?')})" for nid in sorted(self.peak))


@dataclass(slots=True)
class Health:
    """The result of `check`: each check's problems (an empty list means healthy)."""

    problems: list[str] = field(default_factory=list)
    pongs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pub_offset: int | None = None
    recovered_s: float = 0.0
    lagging: dict[str, Any] = field(default_factory=dict)
    """Nodes that had not applied the health PUB `CATCH_UP_S` after it was acknowledged (a note)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _clock_problem(nid: str, pong: dict[str, Any]) -> str | None:
    """Returns: what is wrong with the node's clock as its PONG shows it, or None."""
    node_time = pong.get("time")
    if isinstance(node_time, bool) or not isinstance(node_time, (int, float)) or not math.isfinite(node_time):
        return f"{nid} answers PING with time {node_time!r}: not a finite number"
    off = node_time - time.time()
    if abs(off) > CLOCK_SLACK_S:
        return f"{nid} answers PING with time {node_time!r}, {off:+.0f} s off the wall clock"
    return None


def _statuses(harness: ClusterHarness, client: Client) -> str:
    """Returns: every node's STATUS in one line (what a PUB that is not acknowledged needs explained)."""
    keys = ("role", "term", "leader", "commit_index", "applied_index", "last_index", "snapshot_index")
    out = []
    for node in harness.config.nodes:
        try:
            status = client.request_to(node.client_addr, "STATUS")
        except Exception as exc:  # a node that does not answer is part of the explanation
            out.append(f"{node.id}: no STATUS ({type(exc).__name__})")
            continue
        peers = {p: s.get("match_index") for p, s in (status.get("peers") or {}).items()}
        out.append(f"{node.id}: " + " ".join(f"{k}={status.get(k)}" for k in keys) + f" match={peers}")
    return "STATUS " + "; ".join(out)


def _lagging(harness: ClusterHarness, client: Client, index: int, within_s: float) -> dict[str, Any]:
    """Returns: the nodes that have not applied log `index` within `within_s`, with their STATUS
    (a note, not a problem: a majority is all Raft needs, and forged traffic may leave a node behind)."""
    behind: dict[str, Any] = {}

    def caught_up() -> bool:
        behind.clear()
        for node in harness.config.nodes:
            try:
                status = client.request_to(node.client_addr, "STATUS")
            except Exception as exc:  # a node that does not answer is behind, as far as anyone knows
                behind[node.id] = type(exc).__name__
                continue
            if not isinstance(status.get("applied_index"), int) or status["applied_index"] < index:
                keys = ("role", "term", "commit_index", "applied_index")
                behind[node.id] = {k: status.get(k) for k in keys}
        return not behind

    try:
        wait_for(caught_up, within_s, f"every node to apply index {index}", interval=0.2)
    except AssertionError:
        pass
    return dict(behind)


def check(harness: ClusterHarness, scanners: dict[str, TracebackScanner], memory: MemoryWatch,
          recover_s: float, max_rss_bytes: int, max_fds: int) -> Health:
    """Judge the cluster's health after fuzzing (every check runs; each failure is one problem line).

    Every node must be running and answer PING within `recover_s` (time for the cluster to settle
    and re-elect), with a finite clock near ours; a PUB through `wiber.client.Client` must then be
    acknowledged within `recover_s`; no log may hold a traceback not already returned by
    `scanners`; no node's RSS may have passed `max_rss_bytes`, nor its open descriptors `max_fds`.
    """
    health = Health()
    started = time.monotonic()
    for nid, node in harness.nodes.items():
        if not node.running():
            code = node.proc.poll() if node.proc is not None else None
            health.problems.append(f"{nid} is not running (exit status {code})")
    for nid, node in harness.nodes.items():
        if not node.running():
            continue
        try:
            pong = wait_for(functools.partial(harness.ping, nid), recover_s, f"{nid} to answer PING")
        except AssertionError as exc:
            health.problems.append(str(exc))
            continue
        if pong is None:  # wait_for returns only a truthy value
            continue
        health.pongs[nid] = pong
        problem = _clock_problem(nid, pong)
        if problem:
            health.problems.append(problem)
    remaining = max(1.0, recover_s - (time.monotonic() - started))
    client = harness.client(per_try_s=min(1.0, remaining), total_s=remaining)  # the admin key when secured
    try:
        ack = client.publish(HEALTH_TOPIC, b"after the fuzzing")
        health.pub_offset = ack.offset
    except Exception as exc:  # any failure to publish is the finding: name it
        health.problems.append(f"a PUB was not acknowledged within {remaining:.1f} s: {type(exc).__name__}: "
                               f"{exc}; {_statuses(harness, client)}")
    else:
        health.lagging = _lagging(harness, client, ack.index, CATCH_UP_S)
    health.recovered_s = time.monotonic() - started
    for nid, scanner in scanners.items():
        for text in scanner.scan():
            health.problems.append(f"{nid} logged a traceback: {signature(text)}")
    memory.sample(harness)
    for nid, peak in memory.peak.items():
        if peak > max_rss_bytes:
            health.problems.append(f"{nid} peaked at {peak >> 20} MiB RSS, over the bound of "
                                   f"{max_rss_bytes >> 20} MiB")
    for nid, fds in memory.peak_fds.items():
        if fds > max_fds:
            health.problems.append(f"{nid} peaked at {fds} open file descriptors, over the bound of "
                                   f"{max_fds}")
    return health
