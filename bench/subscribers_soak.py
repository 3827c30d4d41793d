"""Soak check: many subscriptions on a loaded 2-core machine, no node down (issue 17).

    .venv-bench/bin/python -m bench.subscribers_soak --runs 10

The claim checked: with 200 subscriptions and no node down, no subscription fails over, and every
subscriber gets every message once and in the order it was handed in. Each run starts a fresh
3-node cluster (`bench.wiber_bench.WiberCluster`: 127.0.0.1, a temporary directory, every node
killed by its pid at the end), then:

* `PROCESSES` processes of `THREADS` threads each, one subscription per thread: a `Client` of its
  own (default `Timeouts`; a process's clients share its ZeroMQ context) whose first address is node
  ``k % 3`` for the k-th subscriber, so they are spread over the three nodes, and
  ``Client.subscribe(TOPIC, from_offset=0)``, attached before anything is published;
* one ``Publisher(window=1000, batch_size=1)`` publishing `--messages` numbered messages (``b"0"``,
  ``b"1"``, ...) to `TOPIC`, the leader's address first;
* each subscriber checks that message k of what it receives is at offset k and holds ``b"k"``, for
  k = 0 .. messages-1, and reports its `Subscription.failovers`, its gap fills and whether the node
  it was attached to changed at all (`Subscription._node`, read only here: a move after a request
  error is not counted as a failover);
* before publishing and after every subscriber is done, PING every node: its leader and term.

Per run it prints publish errors, leader changes (new terms between the two PINGs), total
failovers, subscribers with a wrong sequence (and those that did not get every message by the
deadline), the topic's end offset, and whether the subscriber claim held. A run passes when there
was no publish error, no leader change and the claim held; the exit status is 1 if any run failed.

Evidence for a failed run: the nodes log at INFO (Raft's role changes and why a leader stepped
down), a thread asks every node for STATUS every `WATCH_S` (each answer, its round trip and the
nodes' last contact with their peers go to ``status.jsonl``; the line names the first new term and
the longest silences before it), and each run prints the CPU time of every node and of the
subscriber processes, and how long each node's loop thread waited for a CPU (/proc schedstat).
A failed run's logs stay in ``bench/results/soak-*/runN``.

Every wait is bounded: `--seconds` for the publisher and each subscriber, `ATTACH_S` for the
attach, the workers' reports `--seconds` + 30 s after publishing started; a worker still alive then
is killed by its pid, and so is every node.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import CHILDREN, die_with_parent, install_signal_handlers, raise_fd_limit, say
from bench.wiber_bench import WiberCluster

TOPIC = "soak"
PROCESSES = 10
THREADS = 20
#: How long the worker processes may take to start and attach every subscription.
ATTACH_S = 120.0
#: How often the watcher asks every node for STATUS during a run.
WATCH_S = 0.1
RESULTS = Path(__file__).resolve().parent / "results"


def _subscriber(k: int, nodes: list[tuple[str, str]], ctx: Any, messages: int, seconds: float, ready: Any,
                results: list[dict[str, Any]]) -> None:
    """One subscription: attach at node ``k % 3`` ((id, address) pairs), then check every message for
    `seconds`; append its result."""
    from wiber.client import Client

    node = k % len(nodes)
    addrs = [addr for _nid, addr in nodes]
    result: dict[str, Any] = {"k": k, "node": nodes[node][0], "received": 0, "wrong": 0, "problem": "",
                              "failovers": 0, "gaps_filled": 0, "moves": 0, "done_at": None, "error": ""}
    signalled = False
    try:
        with Client(addrs[node:] + addrs[:node], ctx=ctx) as client:
            with client.subscribe(TOPIC, from_offset=0) as sub:
                sub.get(timeout=0.05)  # attach (SUB, HISTORY) before anything is published
                # Evidence only, read from a private attribute: a move after a request error is no failover.
                attached = sub._node  # noqa: SLF001
                if attached is None:
                    result["problem"] = "not attached when publishing started; "
                ready.release()
                signalled = True
                deadline = time.monotonic() + seconds
                expected = 0
                while expected < messages and time.monotonic() < deadline:
                    message = sub.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                    if sub._node != attached:  # noqa: SLF001
                        result["moves"] += attached is not None
                        attached = sub._node  # noqa: SLF001
                    if message is None:
                        continue
                    result["received"] += 1
                    if message.offset != expected or message.data != b"%d" % expected:
                        result["wrong"] += 1
                        if result["wrong"] == 1:
                            result["problem"] += (f"expected offset {expected} holding {expected}, got offset "
                                                  f"{message.offset} holding {message.data[:20]!r}")
                        try:
                            expected = int(message.data) + 1  # check on from what came
                        except ValueError:
                            expected = message.offset + 1
                        continue
                    expected += 1
                result["done_at"] = time.monotonic() if expected >= messages else None
                result["failovers"] = sub.failovers
                result["gaps_filled"] = sub.gaps_filled
    except Exception as exc:  # noqa: BLE001 - reported with the run
        result["error"] = repr(exc)
        if not signalled:
            ready.release()
    results.append(result)


def _worker(index: int, nodes: list[tuple[str, str]], messages: int, seconds: float, log_path: str,
            nice: int, out: Any) -> None:
    """In a child process (`nice` added to its niceness): `THREADS` subscriptions, numbered from
    ``index * THREADS``; report their results."""
    die_with_parent()
    if nice:
        os.nice(nice)
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    import zmq
    ctx = zmq.Context()
    attach_deadline = time.monotonic() + ATTACH_S
    ready = threading.Semaphore(0)
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=_subscriber, name=f"sub-{index * THREADS + t}", daemon=True,
                                args=(index * THREADS + t, nodes, ctx, messages, seconds, ready, results))
               for t in range(THREADS)]
    for thread in threads:
        thread.start()
    attached = sum(1 for _ in threads if ready.acquire(timeout=max(0.0, attach_deadline - time.monotonic())))
    out.put(("ready", index, attached))
    for thread in threads:  # each subscriber receives for `seconds` from its attach at most
        thread.join(max(0.0, attach_deadline + seconds + 15 - time.monotonic()))
    out.put(("done", index, list(results)))
    ctx.destroy(linger=0)


def _leaders(cluster: WiberCluster) -> dict[str, tuple[str | None, int]]:
    """Returns: per node, (the leader it names, its term) from PING; (None, -1) when it did not answer."""
    seen: dict[str, tuple[str | None, int]] = {}
    for nid in cluster.addr:
        try:
            pong = cluster.request(nid, "PING", timeout=2.0)
            seen[nid] = (pong.get("leader"), int(pong.get("term", -1)))
        except Exception:  # noqa: BLE001 - a silent node is reported as such
            seen[nid] = (None, -1)
    return seen


class _Watch:
    """Every `WATCH_S`, STATUS of each node from a thread of this process, one JSON line per answer in
    `path`: the evidence when the leader changes (the term, each node's silence from its peers as it
    saw it, and how long each node took to answer, which is how long its loop was busy)."""

    def __init__(self, cluster: WiberCluster, path: Path, seconds: float) -> None:
        self._cluster = cluster
        self._path = path
        self._seconds = seconds
        self._stop = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="soak-watch", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from wiber.client import Client, Timeouts

        clients = {nid: Client(addr, Timeouts(per_try_s=1.0, total_s=1.0)) for nid, addr in self._cluster.addr.items()}
        until = time.monotonic() + self._seconds
        try:
            with open(self._path, "w") as out:
                while not self._stop.wait(WATCH_S) and time.monotonic() < until:
                    for nid, client in clients.items():
                        sample: dict[str, Any] = {"t": time.monotonic(), "node": nid}
                        t0 = time.perf_counter()
                        try:
                            status = client.status()
                            sample.update(term=status["term"], role=status["role"], leader=status["leader"],
                                          contact_ms={p: v["last_contact_ms"] for p, v in status["peers"].items()},
                                          transport=status["transport"])
                        except Exception as exc:  # noqa: BLE001 - a node that does not answer is evidence too
                            sample["error"] = repr(exc)
                        sample["rtt_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                        self.samples.append(sample)
                        out.write(json.dumps(sample) + "\n")
        finally:
            for client in clients.values():
                client.close()

    def summary(self, t0: float, term: int, leader: str | None) -> str:
        """Returns: when a node first showed a term past `term` (seconds after `t0`), and, over the
        2 s before, each node's slowest STATUS answer and the longest silence between `leader` (the
        leader before) and each follower, as each side saw it."""
        moved = next((s for s in self.samples if s.get("term", term) > term), None)
        if moved is None:
            return f"STATUS every {WATCH_S:g} s saw no term past {term}"
        window = [s for s in self.samples if moved["t"] - 2.0 <= s["t"] <= moved["t"]]
        rtt = {nid: max((s["rtt_ms"] for s in window if s["node"] == nid), default=None) for nid in self._cluster.addr}
        worst: dict[str, int] = {}
        for sample in window:
            for peer, ms in sample.get("contact_ms", {}).items():
                if ms is not None and leader in (sample["node"], peer):
                    pair = f"{sample['node']}<-{peer}"
                    worst[pair] = max(ms, worst.get(pair, 0))
        return (f"term {moved['term']} first seen at {moved['node']} (leader {moved.get('leader')}) "
                f"{moved['t'] - t0:.1f} s after publishing started; over the 2 s before it, slowest STATUS "
                f"answer per node (ms) {rtt}, longest silence between leader {leader} and a follower as "
                f"'seen by<-from' (ms) {dict(sorted(worst.items()))}")


def _cpu(pid: int) -> tuple[float, float]:
    """Returns: seconds on a CPU of every thread of process `pid` (/proc/PID/stat), and seconds its main
    thread (a node's loop) spent runnable but waiting for a CPU (/proc/PID/schedstat); zeros when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        waited_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), waited_ns / 1e9


def _cpu_report(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                seconds: float) -> str:
    """Returns: what each process (a node, or every subscriber process together) used of the CPUs during
    `seconds`, and how long each node's loop thread waited for one."""
    used = {name: after[name][0] - before[name][0] for name in before if after.get(name, (0.0, 0.0))[0]}
    subscribers = sum(v for name, v in used.items() if name.startswith("worker"))
    nodes = ", ".join(f"{name} {used[name]:.1f} s on CPU, loop thread {after[name][1] - before[name][1]:.1f} s "
                      f"waiting for a CPU" for name in sorted(used) if not name.startswith("worker"))
    return (f"CPU over the {seconds:.1f} s after publishing started ({os.cpu_count()} CPUs): {nodes}; "
            f"subscriber processes {subscribers:.1f} s together")


def _publish(addrs: list[str], messages: int, seconds: float) -> dict[str, Any]:
    """Publish `messages` numbered messages through one Publisher(window=1000, batch_size=1).
    Returns: acked, errors (with one sample), seconds, the publisher's resends and failovers."""
    from wiber.publisher import Publisher

    errors: list[str] = []
    acked = 0
    lock = threading.Lock()

    def done(future: Any) -> None:
        nonlocal acked
        exc = future.exception()
        with lock:
            if exc is None:
                acked += 1
            else:
                errors.append(repr(exc))

    start = time.monotonic()
    publisher = Publisher(addrs, window=1000, batch_size=1)
    try:
        for i in range(messages):
            publisher.publish(TOPIC, b"%d" % i, callback=done)
            if i % 1000 == 999 and time.monotonic() - start > seconds:
                errors.append(f"deadline of {seconds:g} s passed after {i + 1} messages handed over")
                break
        try:
            publisher.flush(timeout=max(5.0, seconds - (time.monotonic() - start)))
        except TimeoutError as exc:
            errors.append(repr(exc))
    finally:
        try:
            publisher.close()
        except Exception as exc:  # noqa: BLE001 - unanswered requests at close
            errors.append(f"close: {exc!r}")
    return {"acked": acked, "errors": errors, "seconds": time.monotonic() - start,
            "resends": publisher.resends, "failovers": publisher.failovers}


def _collect(out: Any, processes: int, until: float, kind_wanted: str, got: dict[str, list[Any]]) -> None:
    """Take the workers' messages into `got` (by kind: "ready" counts, "done" result lists) until each of
    `processes` sent one of `kind_wanted`, or `until` (monotonic) passes."""
    while len(got[kind_wanted]) < processes and time.monotonic() < until:
        try:
            kind, _index, part = out.get(timeout=max(0.1, until - time.monotonic()))
        except queue.Empty:
            return
        got[kind].append(part)


def run_once(run: int, args: argparse.Namespace, logs: Path) -> tuple[bool, bool, int]:
    """One run on a fresh cluster; prints its line (and why it failed).

    Returns: whether it passed (no publish error, no leader change, the claim held), whether the
    subscriber claim held (none failed over; each got every message once, in order), and the elections."""
    from wiber.client import Client

    settings = {"election_timeout_ms": args.election_timeout_ms} if args.election_timeout_ms else {}
    cluster = WiberCluster(log_level="info", **settings)
    run_logs = logs / f"run{run}"
    run_logs.mkdir(parents=True, exist_ok=True)
    mpctx = mp.get_context("spawn")
    out = mpctx.Queue()
    procs: list[Any] = []
    got: dict[str, list[Any]] = {"ready": [], "done": []}
    subscriptions = args.processes * THREADS
    try:
        cluster.start()
        leader = cluster.leader(30)
        nodes = sorted(cluster.addr.items())
        procs = [mpctx.Process(target=_worker, args=(i, nodes, args.messages, args.seconds,
                                                     str(run_logs / f"worker{i}.log"), args.nice, out), daemon=True)
                 for i in range(args.processes)]
        for proc in procs:
            proc.start()
        _collect(out, len(procs), time.monotonic() + ATTACH_S + 30, "ready", got)
        before = _leaders(cluster)
        pids = {**{nid: child.pid for nid, child in cluster.nodes.items()},
                **{f"worker{i}": proc.pid for i, proc in enumerate(procs)}}
        cpu_before = {name: _cpu(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        with _Watch(cluster, run_logs / "status.jsonl", args.seconds + 30) as watch:
            published = _publish([cluster.addr[leader], *(cluster.addr[f] for f in cluster.followers(leader))],
                                 args.messages, args.seconds)
            _collect(out, len(procs), t0 + args.seconds + 30, "done", got)  # every subscriber attached before t0
        cpu = _cpu_report(cpu_before, {name: _cpu(pid) for name, pid in pids.items()}, time.monotonic() - t0)
        after = _leaders(cluster)
        with Client(list(cluster.addr.values())) as client:
            end = client.topics().get(TOPIC)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for nid, child in cluster.nodes.items():
            try:
                shutil.copy(child.log_path, run_logs / f"{nid}.log")
            except OSError:
                pass
        cluster.close()

    results = [r for part in got["done"] for r in part]
    problems: list[str] = []
    if sum(got["ready"]) < subscriptions:
        problems.append(f"only {sum(got['ready'])} of {subscriptions} subscriptions attached before publishing")
    leaders_before = {v[0] for v in before.values()}
    leaders_after = {v[0] for v in after.values()}
    term_before = max(v[1] for v in before.values())
    term_after = max(v[1] for v in after.values())
    changed = (leaders_before != leaders_after or len(leaders_after) != 1 or None in leaders_after
               or term_after != term_before)
    failovers = sum(r["failovers"] for r in results)
    moves = sum(r["moves"] for r in results)
    wrong = [r for r in results if r["wrong"]]
    incomplete = [r for r in results if r["done_at"] is None]
    errors = [r for r in results if r["error"]]
    last_done = max((r["done_at"] for r in results if r["done_at"] is not None), default=None)
    if published["errors"] or published["acked"] != args.messages:
        problems.append(f"publisher: {published['acked']} acked; e.g. {published['errors'][:1]}")
    if changed:
        problems.append(f"(leader, term) per node before {before}, after {after}; "
                        f"{watch.summary(t0, term_before, leader)}")
    if len(got["done"]) < len(procs):
        problems.append(f"only {len(got['done'])} of {len(procs)} worker processes reported")
    if failovers or moves:
        problems.append(("failed over: " + ", ".join(
            f"subscriber {r['k']} (first node {r['node']}) {r['failovers']} failovers, {r['moves']} moves"
            for r in results if r["failovers"] or r["moves"]))[:2000])
    for r in (wrong + incomplete + errors)[:5]:
        problems.append(f"subscriber {r['k']} (first node {r['node']}): received {r['received']}, wrong "
                        f"{r['wrong']}; {r['problem']} {r['error']}".rstrip())
    if end != args.messages:
        problems.append(f"topic end offset {end}, not {args.messages}")
    ok = not problems and len(results) == subscriptions
    # The claim itself: every subscriber got every message once, in order, and none failed over.
    held = (len(results) == subscriptions and not (failovers or moves or wrong or incomplete or errors)
            and end == args.messages)
    elections = max(term_after - term_before, int(changed))  # each new term is one election at least
    gaps = sum(r["gaps_filled"] for r in results)
    say(f"run {run}/{args.runs}: {'OK' if ok else 'FAILED'} (subscriber claim {'held' if held else 'FAILED'}): "
        f"publish errors {len(published['errors'])} "
        f"({published['acked']} acked in {published['seconds']:.1f} s; publisher resends {published['resends']}, "
        f"failovers {published['failovers']}); leader changes {elections} "
        f"({'/'.join(sorted(map(str, leaders_before)))} term {term_before} -> "
        f"{'/'.join(sorted(map(str, leaders_after)))} term {term_after}); subscription failovers {failovers} "
        f"(node moves {moves}); wrong sequence {len(wrong)}; incomplete {len(incomplete)}; errors {len(errors)}; "
        f"{len(results)} subscribers reported; gaps filled {gaps}; end offset {end}; last subscriber done "
        f"{f'{last_done - t0:.1f} s' if last_done else 'never'} after publishing started", sys.stdout)
    for problem in problems:
        say(f"  {problem}", sys.stdout)
    say(f"  {cpu}", sys.stdout)
    if ok:
        shutil.rmtree(run_logs, ignore_errors=True)
    else:
        say(f"  logs kept in {run_logs}", sys.stdout)
    return ok, held, elections


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.subscribers_soak", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="runs, each on a fresh cluster (default 10)")
    p.add_argument("--messages", type=int, default=20_000, help="messages published per run (default 20000)")
    p.add_argument("--processes", type=int, default=PROCESSES,
                   help=f"subscriber processes of {THREADS} threads each (default {PROCESSES})")
    p.add_argument("--seconds", type=float, default=300.0,
                   help="deadline of a run's publishing, and of each subscriber from its attach (default 300)")
    g = p.add_argument_group("experiments (the check itself runs with neither)")
    g.add_argument("--election-timeout-ms", type=int, metavar="MS",
                   help="the cluster's election_timeout_ms (default: the config's default)")
    g.add_argument("--nice", type=int, default=0, metavar="N",
                   help="niceness added to the subscriber processes (default 0): do the nodes keep their "
                        "leader when the subscribers yield the CPUs to them?")
    args = p.parse_args(argv)
    if args.runs < 1 or args.messages < 1 or args.processes < 1 or args.seconds <= 0:
        p.error("--runs, --messages and --processes must be >= 1, --seconds > 0")
    install_signal_handlers()
    fd_before, fd_now = raise_fd_limit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix=f"soak-{datetime.now():%Y%m%d-%H%M%S}-", dir=RESULTS))
    say(f"subscribers soak: {args.runs} runs, {args.processes * THREADS} subscriptions ({args.processes} processes "
        f"x {THREADS} threads), {args.messages} messages each; open files soft limit {fd_before}"
        + (f" -> {fd_now}" if fd_now != fd_before else "")
        + (f"; election_timeout_ms {args.election_timeout_ms}" if args.election_timeout_ms else "")
        + (f"; subscriber processes at nice +{args.nice}" if args.nice else ""), sys.stdout)
    passed = held = changed = elections = 0
    try:
        for run in range(1, args.runs + 1):
            try:
                ok, claim, won = run_once(run, args, logs)
                passed += ok
                held += claim
                changed += won > 0
                elections += won
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - a run that could not run is a failed run
                say(f"run {run}/{args.runs}: FAILED to run: {exc!r}; logs in {logs / f'run{run}'}", sys.stdout)
    finally:
        CHILDREN.kill_all()
    say(f"{passed} of {args.runs} runs passed; the subscriber claim held in {held}; {changed} runs had a leader "
        f"change ({elections} elections in all)", sys.stdout)
    if passed == args.runs:
        shutil.rmtree(logs, ignore_errors=True)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
