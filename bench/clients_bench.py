"""Many clients, each its own connection: `CLIENTS` clients publishing `PER_CLIENT` messages each (issue 17).

``clients_p50_ms``, ``clients_p99_ms``: the latency of every publish of `CLIENTS` separate clients,
each with a connection of its own as the clients of 1,000 processes would have, each publishing
`PER_CLIENT` messages one at a time (each waits its ack). A client's first publish counts, timed from
the moment the client is made, so it includes what a new client pays once: the connection (Wiber's
REQ socket connects on the first request; nats-py's ``connect`` is awaited before the publish), the
node's new session, and no clock sync (a Wiber client learns the cluster's time from its replies).
``clients_first_p99_ms`` is the p99 of the first publishes alone.

* Wiber: `wiber.Client` (per-try 5 s), the leader's address first, as the other Wiber rows.
* NATS: ``nats.connect`` (the stream leader's server first, as the other NATS rows connect to one
  server), then ``js.publish`` per message, each awaiting its PubAck.

The clients are made in `PROCESSES` processes, each running `WORKERS` workers (threads for Wiber, one
per blocking client call; asyncio tasks for NATS): a worker makes its clients one after the other,
each publishing its messages before the worker makes the next, and keeps them open until every
worker is done. So `PROCESSES * WORKERS` publishes are in flight at once, and the leader holds all
`CLIENTS` connections (one file descriptor each: `bench.common.raise_fd_limit`) at the end. A
process's clients share its ZeroMQ context (one I/O thread), each with a socket and a TCP connection
of its own. The processes start together once each has imported everything; each worker stops making
clients at `Bounds.seconds`, and the run is killed (by pid) 60 s after it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

from bench.common import PAYLOAD, Progress, Section, die_with_parent, percentile, rate, say

CLIENTS = 1000
PER_CLIENT = 10
PROCESSES = 4
WORKERS = 25
WIBER_TOPIC = "clients"
NATS_SUBJECT = "bench.clients"
#: How long a worker process may take to import and get ready, and the run past its deadline.
START_S = 60.0
GRACE_S = 60.0


def _shares(total: int, parts: int) -> list[int]:
    """Returns: `total` split into `parts` counts that differ by one at most."""
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


class _Tally:
    """One process's latencies (seconds), first publishes apart, and its failures."""

    def __init__(self) -> None:
        # Only appends (atomic under the GIL), so a process's threads share one tally.
        self.first: list[float] = []
        self.rest: list[float] = []
        self.errors: list[str] = []
        self.clients: list[Any] = []
        """Every client made, kept open until the figures are out."""

    def publish_done(self, index: int, seconds: float) -> None:
        (self.first if index == 0 else self.rest).append(seconds)

    def failed(self, exc: BaseException) -> None:
        self.errors.append(repr(exc))

    def result(self, elapsed: float) -> dict[str, Any]:
        return {"first": self.first, "rest": self.rest, "errors": len(self.errors),
                "error_sample": self.errors[0] if self.errors else "", "clients": len(self.clients),
                "elapsed": elapsed}


def _wiber_process(addrs: list[str], clients: int, seconds: float, go: Any, out: Any) -> None:
    """In a child process: `WORKERS` threads make `clients` Clients between them and publish; report a `_Tally`."""
    die_with_parent()
    import threading

    import zmq

    from wiber.client import Client, Timeouts

    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, max(1024, 2 * clients + 64))
    timeouts = Timeouts(per_try_s=5.0, total_s=max(30.0, seconds))
    tally = _Tally()
    out.put("ready")
    if not go.wait(START_S):
        return
    deadline = time.monotonic() + seconds

    def worker(share: int) -> None:
        for _ in range(share):
            if time.monotonic() >= deadline:
                return
            t0 = time.perf_counter()
            client = Client(addrs, timeouts, ctx=ctx)
            tally.clients.append(client)
            for k in range(PER_CLIENT):
                try:
                    client.publish(WIBER_TOPIC, PAYLOAD)
                    tally.publish_done(k, time.perf_counter() - t0)
                except Exception as exc:  # noqa: BLE001 - counted and reported in the figure's note
                    tally.failed(exc)
                t0 = time.perf_counter()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(share,), daemon=True) for share in _shares(clients, WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline + GRACE_S / 2 - time.monotonic()))
    elapsed = time.perf_counter() - start
    out.put(tally.result(elapsed))
    for client in tally.clients:
        client.close()
    ctx.destroy(linger=0)


def _nats_process(urls: list[str], clients: int, seconds: float, go: Any, out: Any) -> None:
    """In a child process: `WORKERS` asyncio tasks make `clients` NATS connections between them and
    publish; report a `_Tally`."""
    die_with_parent()
    import asyncio

    from bench.nats_bench import connect

    tally = _Tally()

    async def main() -> float:
        deadline = time.monotonic() + seconds

        async def worker(share: int) -> None:
            for _ in range(share):
                if time.monotonic() >= deadline:
                    return
                t0 = time.perf_counter()
                try:
                    nc = await connect(urls)
                except Exception as exc:  # noqa: BLE001 - counted and reported in the figure's note
                    tally.failed(exc)
                    continue
                tally.clients.append(nc)
                js = nc.jetstream()
                for k in range(PER_CLIENT):
                    try:
                        await js.publish(NATS_SUBJECT, PAYLOAD, timeout=10.0)
                        tally.publish_done(k, time.perf_counter() - t0)
                    except Exception as exc:  # noqa: BLE001 - counted and reported in the figure's note
                        tally.failed(exc)
                    t0 = time.perf_counter()

        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(s) for s in _shares(clients, WORKERS))),
                                   timeout=seconds + GRACE_S / 2)
        except asyncio.TimeoutError:
            tally.failed(TimeoutError(f"workers still publishing {seconds + GRACE_S / 2:g} s after the start"))
        elapsed = time.perf_counter() - start
        out.put(tally.result(elapsed))
        for nc in tally.clients:
            try:
                await asyncio.wait_for(nc.close(), timeout=2.0)
            except Exception:  # noqa: BLE001 - the figures are out; the process ends anyway
                pass
        return elapsed

    out.put("ready")
    if go.wait(START_S):
        asyncio.run(main())


def _run(target: Callable[..., None], addrs: list[str], seconds: float, desc: str,
         progress: bool) -> dict[str, Any]:
    """Run `target` in `PROCESSES` spawned processes with `CLIENTS` clients between them, started together.

    Returns: the merged tally: first and rest latencies in ms, errors, an error's repr, clients made,
    seconds from the start to the last process done. Raises: RuntimeError when a process did not
    get ready or report.
    """
    mpctx = mp.get_context("spawn")
    out = mpctx.Queue()
    go = mpctx.Event()
    procs = [mpctx.Process(target=target, args=(addrs, share, seconds, go, out), daemon=True)
             for share in _shares(CLIENTS, PROCESSES)]
    merged: dict[str, Any] = {"first": [], "rest": [], "errors": 0, "error_sample": "", "clients": 0, "elapsed": 0.0}
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            if out.get(timeout=START_S) != "ready":
                raise RuntimeError(f"{desc}: a worker process did not get ready")
        go.set()
        with Progress(desc, CLIENTS * PER_CLIENT, progress) as bar:
            for _ in procs:
                one = out.get(timeout=seconds + GRACE_S)
                merged["first"] += [x * 1000 for x in one["first"]]
                merged["rest"] += [x * 1000 for x in one["rest"]]
                merged["errors"] += one["errors"]
                merged["error_sample"] = merged["error_sample"] or one["error_sample"]
                merged["clients"] += one["clients"]
                merged["elapsed"] = max(merged["elapsed"], one["elapsed"])
                bar.update(len(one["first"]) + len(one["rest"]))
    finally:
        for proc in (p for p in procs if p.pid is not None):  # started ones
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    return merged


def _add(section: Section, tally: dict[str, Any], what: str) -> None:
    first, rest = tally["first"], tally["rest"]
    every = first + rest
    errors = f"; {tally['errors']} failed (e.g. {tally['error_sample']})" if tally["errors"] else ""
    short = (f"; only {tally['clients']} of {CLIENTS} clients made by the deadline"
             if tally["clients"] < CLIENTS else "")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    note = (f"{CLIENTS} clients x {PER_CLIENT} ({what}), {PROCESSES} processes x {WORKERS} workers, each "
            f"client's first publish timed from its creation: first p50 {ms(percentile(first, 50))} / p99 "
            f"{ms(percentile(first, 99))} ms, without firsts p50 {ms(percentile(rest, 50))} / p99 "
            f"{ms(percentile(rest, 99))} ms; {rate(len(every), tally['elapsed']) or 0:.0f} msg/s{errors}{short}")
    section.add("clients_p50_ms", percentile(every, 50), "ms", len(every), better="lower", note=note)
    section.add("clients_p99_ms", percentile(every, 99), "ms", len(every), better="lower", note=note)
    section.add("clients_first_p99_ms", percentile(first, 99), "ms", len(first), better="lower", note=note)
    say(f"  {section.system} {note}")


def wiber(section: Section, addrs: list[str], seconds: float, progress: bool) -> None:
    """Measure the many-clients rows with `wiber.Client`s on `addrs` (the leader first)."""
    tally = _run(_wiber_process, addrs, seconds, f"wiber {CLIENTS} clients x {PER_CLIENT} publishes", progress)
    _add(section, tally, "a wiber.Client each")


def nats(section: Section, urls: list[str], seconds: float, progress: bool) -> None:
    """Measure the many-clients rows with nats-py connections to `urls` (the stream leader's first)."""
    tally = _run(_nats_process, urls, seconds, f"{section.system} {CLIENTS} clients x {PER_CLIENT} publishes",
                 progress)
    _add(section, tally, "nats.connect + js.publish each")
