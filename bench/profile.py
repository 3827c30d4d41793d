"""Where a Wiber cluster spends its CPU: ``python -m bench.profile [--workload pipelined|sequential]``.

Starts three nodes (as `make bench` does), runs one workload from this process and prints, per
process, the CPU time per message (user + system of every thread, ZeroMQ's I/O thread included,
from /proc/<pid>/stat), how much of it ZeroMQ's own threads took, its utilization, and how often
per message its loop (and ZeroMQ's threads) slept and woke. With ``--spy leader`` (or
``follower``) it also runs py-spy on that node during the load and prints the functions with the
most samples, by own time and including callees (the raw samples stay in the output directory for
a flame graph).

That is how the hot-path changes listed in bench/README.md were found and measured. The machine is
noisy: compare CPU per message, which moves less than rates, and repeat (``--repeat``).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from bench.common import PAYLOAD, CHILDREN, install_signal_handlers, percentile, say
from bench.wiber_bench import WiberCluster
from wiber.client import Client, Timeouts
from wiber.publisher import Publisher

_TICKS = os.sysconf("SC_CLK_TCK")


class Usage(NamedTuple):
    """What one process has used so far, from /proc (subtract two to get a run's share)."""

    cpu_s: float  # user + system, every thread, also those that ended
    zmq_cpu_s: float  # the threads but the main one that are still running (ZeroMQ's I/O and reaper)
    wakeups: int  # the main thread's voluntary context switches: a poll that waited, an fsync
    zmq_wakeups: int  # the same for the other live threads

    def since(self, before: Usage) -> Usage:
        """Returns: what was used between `before` and this."""
        return Usage(self.cpu_s - before.cpu_s, self.zmq_cpu_s - before.zmq_cpu_s,
                     self.wakeups - before.wakeups, self.zmq_wakeups - before.zmq_wakeups)


def usage(pid: int) -> Usage:
    """Returns: process `pid`'s usage now, in one pass over its threads."""
    zmq_cpu = 0.0
    wakeups = zmq_wakeups = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat, status = (task / "stat").read_text(), (task / "status").read_text()
        except FileNotFoundError:  # the thread ended
            continue
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        if task.name == str(pid):
            wakeups = switches
        else:
            zmq_cpu += _cpu_seconds(stat)
            zmq_wakeups += switches
    return Usage(_cpu_seconds(Path(f"/proc/{pid}/stat").read_text()), zmq_cpu, wakeups, zmq_wakeups)


def _cpu_seconds(stat: str) -> float:
    """Returns: user + system CPU seconds from the text of a /proc `stat` file."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def top_frames(raw: Path, count: int = 20) -> str:
    """Returns: a table of the functions with the most py-spy samples in `raw` (py-spy's raw format)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples; own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame[:110]}" for frame, n in own.most_common(count)]
    lines.append("  including callees:")
    lines += [f"  {100 * n / total:5.1f}%  {frame[:110]}" for frame, n in inclusive.most_common(count)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    cluster = WiberCluster()
    try:
        cluster.start()
        leader = cluster.leader()
        addrs, roles = _roles(cluster, leader)
        say(f"leader {leader}; {args.workload}, {args.messages} messages of {len(PAYLOAD)} bytes")
        for attempt in range(args.repeat):
            spy: subprocess.Popen[bytes] | None = None
            raw = args.out / f"pyspy-{args.spy}-{attempt + 1}.txt"
            if args.spy != "none":
                target = leader if args.spy == "leader" else cluster.followers(leader)[0]
                spy = subprocess.Popen(
                    [shutil.which("py-spy") or "py-spy", "record", "--rate", str(args.rate), "--format", "raw",
                     "--output", str(raw), "--pid", str(cluster.nodes[target].pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # py-spy attaches
            pids = {nid: child.pid for nid, child in cluster.nodes.items()}
            pids["client"] = os.getpid()
            before = {nid: usage(pid) for nid, pid in pids.items()}
            start = time.perf_counter()
            summary = _sequential(addrs, args) if args.workload == "sequential" else _pipelined(addrs, args)
            elapsed = time.perf_counter() - start
            used = {nid: usage(pid).since(before[nid]) for nid, pid in pids.items()}
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=30)
            print(f"run {attempt + 1}: {summary} ({elapsed:.2f} s)")
            n = args.messages
            for nid, u in used.items():
                if nid == "client":  # its context, and so ZeroMQ's threads, ended with the workload
                    zmq_cpu = zmq_wakes = "   -"
                else:
                    zmq_cpu, zmq_wakes = f"{1e6 * u.zmq_cpu_s / n:4.1f}", f"{u.zmq_wakeups / n:.2f}"
                print(f"  {nid:6s} {roles.get(nid, ''):8s} {1e6 * u.cpu_s / n:6.1f} us CPU/msg "
                      f"(ZeroMQ threads {zmq_cpu})  {100 * u.cpu_s / elapsed:5.1f}% of a core  "
                      f"wake-ups/msg {u.wakeups / n:.2f} (ZeroMQ {zmq_wakes})")
            now_leader = cluster.leader()
            if now_leader != leader:  # the roles above are those at the start of the run
                say(f"  (the leader changed during the run: now {now_leader}; the next run uses it)")
                leader = now_leader
                addrs, roles = _roles(cluster, leader)
            if spy is not None and raw.exists():
                print(f"  py-spy on the {args.spy} ({raw}):")
                print(top_frames(raw))
    finally:
        cluster.close()


def _roles(cluster: WiberCluster, leader: str) -> tuple[list[str], dict[str, str]]:
    """Returns: the client addresses, the leader's first, and each node's role."""
    addrs = [cluster.addr[leader], *(cluster.addr[f] for f in cluster.followers(leader))]
    return addrs, {nid: ("leader" if nid == leader else "follower") for nid in cluster.addr}


def _pipelined(addrs: list[str], args: argparse.Namespace) -> str:
    with Publisher(addrs[:1], window=args.window, batch_size=1, linger_s=0.0,
                   timeouts=Timeouts(per_try_s=5.0, total_s=60.0)) as publisher:
        for _ in range(1000):
            publisher.publish("profile-warm", PAYLOAD)
        publisher.flush()
        start = time.perf_counter()
        for _ in range(args.messages):
            publisher.publish("profile", PAYLOAD)
        publisher.flush()
        elapsed = time.perf_counter() - start
    return f"pipelined (window {args.window}, batch 1): {args.messages / elapsed:,.0f} msg/s"


def _sequential(addrs: list[str], args: argparse.Namespace) -> str:
    latencies: list[float] = []
    with Client(addrs, Timeouts(per_try_s=2.0, total_s=10.0)) as client:
        for _ in range(100):
            client.publish("profile-warm", PAYLOAD)
        for _ in range(args.messages):
            t0 = time.perf_counter()
            client.publish("profile", PAYLOAD)
            latencies.append(1000 * (time.perf_counter() - t0))
    return f"sequential: p50 {percentile(latencies, 50):.3f} ms, p99 {percentile(latencies, 99):.3f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("pipelined", "sequential"), default="pipelined")
    p.add_argument("--messages", type=int, help="messages per run (default 100,000 pipelined, 3,000 sequential)")
    p.add_argument("--window", type=int, default=1000, help="requests in flight, pipelined (default 1000)")
    p.add_argument("--repeat", type=int, default=1, help="runs on the same cluster (default 1)")
    p.add_argument("--spy", choices=("none", "leader", "follower"), default="none",
                   help="run py-spy on this node during each run (needs the bench extra's py-spy)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250: it slows the node)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="where py-spy's raw samples go")
    args = p.parse_args(argv)
    if args.messages is None:
        args.messages = 3000 if args.workload == "sequential" else 100_000
    if args.messages < 1 or args.window < 1 or args.repeat < 1:
        p.error("--messages, --window and --repeat must be at least 1")
    if args.spy != "none" and shutil.which("py-spy") is None:
        p.error("py-spy is not on PATH: pip install -e '.[bench]' (or pip install py-spy)")
    args.out.mkdir(parents=True, exist_ok=True)
    install_signal_handlers()
    try:
        run(args)
    finally:
        CHILDREN.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
