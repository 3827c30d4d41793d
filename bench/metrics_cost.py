"""What scraping /metrics costs the publish rate (issue 18): pipelined publishing with and without a scraper.

    .venv-bench/bin/python -m bench.metrics_cost --pairs 5

One 3-node cluster (fsync on). Each pair publishes `--messages` 100-byte messages through one
`Publisher(window=1000, batch_size=1)`, the benchmark's pipelined workload, twice: once with
nobody scraping, once while a separate process GETs /metrics from all three nodes every 100 ms
(ten times Prometheus's usual 1 s; a plain-socket GET, cheaper than urllib), in alternating order so drift of the machine falls on both
sides. Reported: each run's rate, the median ratio with/without, and what the scraper saw (scrapes,
their median and worst latency, bytes per scrape). The scraper's own CPU shares the machine's two
cores with the nodes, as it would not in production: the figure is an upper bound.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import time
from typing import Any

from bench.common import die_with_parent, install_signal_handlers, say
from bench.wiber_bench import WiberCluster, publish_many

SCRAPE_EVERY_S = 0.1


def _get_metrics(port: int) -> bytes:
    """One GET /metrics on a plain socket (urllib's own CPU, on the cores the nodes share, blurred
    the figure). Returns: the body. Raises: OSError on any failure, or a non-200 answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: wiber\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"answered {head[:40]!r}")
    return body


def _scraper(ports: list[int], stop: Any, seconds: float, out: Any) -> None:
    """Child process: GET /metrics from every port every SCRAPE_EVERY_S until `stop` or `seconds`."""
    die_with_parent()
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        for port in ports:
            started = time.perf_counter()
            try:
                sizes.append(len(_get_metrics(port)))
                latencies.append(time.perf_counter() - started)
            except OSError:
                errors += 1
        next_at += SCRAPE_EVERY_S
        stop.wait(max(0.0, next_at - time.monotonic()))
    out.put((latencies, sizes, errors))


def _run(cluster: WiberCluster, leader: str, messages: int, seconds: float, scrape: bool,
         topic: str) -> tuple[float, dict[str, Any] | None]:
    """Returns: (acked messages per second, the scraper's figures or None)."""
    proc = None
    stop = mp.Event()
    results: Any = mp.Queue()
    if scrape:
        ports = list(cluster.metrics_port.values())
        proc = mp.Process(target=_scraper, args=(ports, stop, seconds + 30, results), daemon=True)
        proc.start()
    try:
        acked, elapsed, failed = publish_many([cluster.addr[leader]], [(topic, messages)], seconds, 1000, 1, 0.0,
                                              topic, False)
    finally:
        stop.set()
    figures = None
    if proc is not None:
        try:
            latencies, sizes, errors = results.get(timeout=30)
        finally:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        figures = {"scrapes": len(latencies), "errors": errors,
                   "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
                   "max_ms": max(latencies) * 1000 if latencies else float("nan"),
                   "bytes": statistics.median(sizes) if sizes else 0}
    if failed:
        say(f"  {topic}: {failed} publishes failed")
    return acked / elapsed if elapsed > 0 else 0.0, figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5, help="runs with and without the scraper (default 5)")
    p.add_argument("--messages", type=int, default=30_000, help="messages per run (default 30000)")
    p.add_argument("--seconds", type=float, default=60.0, help="deadline of each run (default 60)")
    args = p.parse_args(argv)
    install_signal_handlers()
    cluster = WiberCluster(3)
    try:
        cluster.start()
        leader = cluster.leader()
        publish_many([cluster.addr[leader]], [("warmup", 5_000)], args.seconds, 1000, 1, 0.0, "warmup", False)
        ratios = []
        for pair in range(1, args.pairs + 1):
            order = (False, True) if pair % 2 else (True, False)
            rates: dict[bool, float] = {}
            seen: dict[str, Any] | None = None
            for scrape in order:
                rates[scrape], figures = _run(cluster, leader, args.messages, args.seconds, scrape,
                                              f"pair{pair}-{'scraped' if scrape else 'quiet'}")
                seen = figures or seen
            ratios.append(rates[True] / rates[False])
            assert seen is not None
            say(f"pair {pair}: without scraping {rates[False]:,.0f} msg/s, scraped every 100 ms {rates[True]:,.0f} "
                f"msg/s ({ratios[-1]:.3f}x); {seen['scrapes']} scrapes of ~{seen['bytes']:,.0f} bytes, "
                f"p50 {seen['p50_ms']:.1f} ms, max {seen['max_ms']:.1f} ms, {seen['errors']} errors")
        cost = 1 - statistics.median(ratios)
        say(f"median ratio {statistics.median(ratios):.3f}x over {len(ratios)} pairs: scraping every 100 ms costs "
            f"{cost * 100:.1f}% of the pipelined publish rate (target: under 3%)")
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
