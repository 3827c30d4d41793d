"""`wiber bench pub|sub`: a load generator against a running cluster, like `nats bench`.

`pub` runs P publisher processes, each with its own `Publisher` (pipelined, optionally batched),
sending N messages of S bytes in all, and measures each message's time from `publish()` to its
acknowledgement. `sub` subscribes and measures the delivery rate and the end-to-end latency (a
message's `ts`, stamped by the leader's synced clock, to its arrival on this client's synced clock).
Both show a progress line and end with a rate and a latency histogram summary. Against a cluster
with CURVE, both take the client's key pair and the nodes' public keys (`client_key`, `server_keys`,
as `Client` does); the publisher processes get them in their plan.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: Latency histogram buckets (upper bounds, milliseconds).
BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass(frozen=True, slots=True)
class PubPlan:
    """What one publisher process sends."""

    addresses: tuple[str, ...]
    topic: str
    messages: int
    size: int
    window: int
    batch: int
    linger_s: float
    deadline_s: float
    client_key: tuple[bytes, bytes] | None = None  # CURVE: (public, secret) of this client
    server_keys: Mapping[str, bytes] | None = None  # CURVE: each node's public key by address


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Returns: the q-quantile (0..1) of already sorted values (nearest rank), 0.0 when empty."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def histogram(latencies_s: Sequence[float]) -> list[tuple[str, int]]:
    """Returns: (bucket label, count) for each non-empty latency bucket, in order."""
    counts = [0] * (len(BUCKETS_MS) + 1)
    for value in latencies_s:
        ms = value * 1000
        for k, bound in enumerate(BUCKETS_MS):
            if ms <= bound:
                counts[k] += 1
                break
        else:
            counts[-1] += 1
    labels = [f"<= {b:g} ms" for b in BUCKETS_MS] + [f"> {BUCKETS_MS[-1]:g} ms"]
    return [(label, n) for label, n in zip(labels, counts) if n]


def summary(title: str, count: int, size: int, elapsed_s: float, latencies_s: list[float]) -> str:
    """Returns: the end-of-run report: rate, throughput, latency percentiles and histogram."""
    latencies_s = sorted(latencies_s)
    rate = count / elapsed_s if elapsed_s > 0 else 0.0
    lines = [
        f"{title}: {count:,} messages of {size} B in {elapsed_s:.2f} s = {rate:,.0f} msg/s "
        f"({rate * size / 1e6:.2f} MB/s)",
    ]
    if latencies_s:
        p = {q: percentile(latencies_s, q) * 1000 for q in (0.5, 0.9, 0.99, 0.999)}
        lines.append(f"latency ms: min {latencies_s[0] * 1000:.3f}  p50 {p[0.5]:.3f}  p90 {p[0.9]:.3f}  "
                     f"p99 {p[0.99]:.3f}  p99.9 {p[0.999]:.3f}  max {latencies_s[-1] * 1000:.3f}")
        total = len(latencies_s)
        width = 40
        top = max(n for _, n in histogram(latencies_s))
        for label, n in histogram(latencies_s):
            bar = "#" * max(1, round(width * n / top))
            lines.append(f"  {label:>12}  {n:>9,}  {100 * n / total:5.1f}%  {bar}")
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on stderr, redrawn at most every 0.2 s, only on a terminal."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()
        self._next = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now < self._next and done < self.total):
            return
        self._next = now + 0.2
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac)
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r\033[K{self.label} [{bar:<30}] {done:,}/{self.total:,} {rate:,.0f} msg/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def run_publisher(plan: PubPlan, progress: Any = None) -> tuple[int, float, list[float]]:
    """Send `plan.messages` messages. Returns: (acknowledged, elapsed s, latencies s of each message)."""
    from wiber.client import Timeouts
    from wiber.publisher import Publisher, PublishFuture

    payload = b"x" * plan.size
    latencies: list[float] = []
    acked = 0
    failed: list[BaseException] = []
    with Publisher(list(plan.addresses), window=plan.window, batch_size=plan.batch, linger_s=plan.linger_s,
                   timeouts=Timeouts(per_try_s=2.0, total_s=30.0), client_key=plan.client_key,
                   server_keys=plan.server_keys) as publisher:
        publisher.publish(plan.topic, payload).result(timeout=30)  # find the leader before timing
        started = time.monotonic()
        deadline = started + plan.deadline_s

        def done(future: PublishFuture, sent_at: float) -> None:
            nonlocal acked
            if future.exception() is not None:
                failed.append(future.exception())  # type: ignore[arg-type]
                return
            acked += 1
            latencies.append(time.monotonic() - sent_at)

        for i in range(plan.messages):
            if time.monotonic() > deadline:
                break
            sent_at = time.monotonic()
            publisher.publish(plan.topic, payload, callback=functools.partial(done, sent_at=sent_at))
            if progress is not None and i % 1000 == 0:
                progress(acked)
        publisher.flush(timeout=60)
        elapsed = time.monotonic() - started
    if failed:
        raise failed[0]
    return acked, elapsed, latencies


def _publisher_process(plan: PubPlan, out: Any) -> None:
    try:
        out.put(("ok", run_publisher(plan)))
    except BaseException as exc:  # reported to the parent, which prints it
        out.put(("error", repr(exc)))


def bench_pub(addresses: Sequence[str], topic: str, messages: int, size: int, window: int, batch: int,
              linger_s: float, publishers: int, deadline_s: float, client_key: tuple[bytes, bytes] | None = None,
              server_keys: Mapping[str, bytes] | None = None) -> str:
    """Run the publish benchmark. Returns: the summary text."""
    per = max(1, messages // publishers)
    plan = PubPlan(tuple(addresses), topic, per, size, window, batch, linger_s, deadline_s, client_key,
                   None if server_keys is None else dict(server_keys))
    title = f"pub x{publishers} (window {window}, batch {batch}, linger {linger_s * 1000:g} ms)"
    if publishers == 1:
        bar = Progress(per, "pub")
        acked, elapsed, latencies = run_publisher(plan, bar.update)
        bar.close()
        return summary(title, acked, size, elapsed, latencies)
    queue: Any = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_publisher_process, args=(plan, queue))
             for _ in range(publishers)]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=deadline_s + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    elapsed = time.monotonic() - started
    errors = [r[1] for r in results if r[0] != "ok"]
    if errors:
        raise RuntimeError(f"a publisher failed: {errors[0]}")
    acked = sum(r[1][0] for r in results)
    latencies = [x for r in results for x in r[1][2]]
    return summary(title, acked, size, elapsed, latencies)


def bench_sub(addresses: Sequence[str], topic: str, messages: int, from_offset: int | None,
              deadline_s: float, client_key: tuple[bytes, bytes] | None = None,
              server_keys: Mapping[str, bytes] | None = None) -> str:
    """Receive `messages` messages of `topic`. Returns: the summary text."""
    from wiber.client import Client, Timeouts

    with Client(list(addresses), Timeouts(per_try_s=1.0, total_s=10.0), client_key=client_key,
                server_keys=server_keys) as client:
        client.sync_clock()
        sub = client.subscribe(topic, from_offset=from_offset)
        bar = Progress(messages, "sub")
        latencies: list[float] = []
        size = 0
        got = 0
        started: float | None = None
        deadline = time.monotonic() + deadline_s
        while got < messages and time.monotonic() < deadline:
            message = sub.get(timeout=1.0)
            if message is None:
                continue
            if started is None:
                started = time.monotonic()
            got += 1
            size = len(message.data)
            latencies.append(max(0.0, client.now() - message.ts))
            bar.update(got)
        bar.close()
        sub.close()
    elapsed = time.monotonic() - (started or time.monotonic())
    return summary(f"sub {topic} (end-to-end latency: leader ts to delivery)", got, size, elapsed, latencies)
