"""A real Prometheus server scraping a 3-node cluster: the done-when check of issue 18.

    .venv-bench/bin/python -m bench.prometheus_check      # needs Debian's `prometheus` on PATH

Starts three nodes (as `make run` does, on free ports with metrics ports of their own) and a
Prometheus (`apt-get install prometheus`) scraping their /metrics every second, on 127.0.0.1 with
its data in a temporary directory. Then, asking Prometheus's HTTP API and nothing else:

1. every family docs/operations.md lists as required is there, for each node;
2. `sum(wiber_raft_leader)` is 1;
3. under a steady publish load paced at `--rate` messages per second for `--seconds`,
   `rate(wiber_messages_stored_total[30s])` on the leader matches the rate the publisher saw
   acknowledged over the same 30 s, within 10%;
4. `wiber_consumer_pending{group}` follows a consumer group: the messages fetched and not acked,
   then 0 after the ack.

Prints each check with its figures and exits 1 if any failed. Every process it starts is killed
by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import free_port, install_signal_handlers, say, wait_for
from bench.wiber_bench import WiberCluster
from wiber.client import Client, Timeouts
from wiber.publisher import Publisher

REQUIRED = ("wiber_raft_term", "wiber_raft_commit_index", "wiber_raft_leader", "wiber_messages_stored_total",
            "wiber_requests_total", "wiber_fsync_seconds_bucket", "wiber_loop_turn_seconds_bucket",
            "wiber_topic_end_offset", "wiber_consumer_pending", "wiber_clock_offset_seconds",
            "wiber_auth_rejected_total", "wiber_snapshot_seconds_bucket")
WINDOW_S = 30


class Prometheus:
    """One Prometheus server process scraping `targets` every second."""

    def __init__(self, targets: list[str], root: Path) -> None:
        self.port = free_port()
        config = root / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: wiber\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
        self.log = open(root / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return list(self.api("query", **params)["result"])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prometheus_check", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=3000, help="publish load, messages per second (default 3000)")
    p.add_argument("--seconds", type=float, default=45.0, help="length of the load (default 45, at least 35)")
    args = p.parse_args(argv)
    if shutil.which("prometheus") is None:
        say("prometheus is not on PATH: apt-get install prometheus")
        return 2
    install_signal_handlers()
    root = Path(tempfile.mkdtemp(prefix="wiber-prometheus-"))
    cluster = WiberCluster(3)
    prometheus: Prometheus | None = None
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        say(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    try:
        cluster.start()
        leader = cluster.leader()
        instance = {nid: f"127.0.0.1:{port}" for nid, port in cluster.metrics_port.items()}
        prometheus = Prometheus(list(instance.values()), root)
        prom = prometheus

        def all_up() -> bool:
            try:
                return len([r for r in prom.query("up") if r["value"][1] == "1"]) == 3
            except OSError:
                return False

        wait_for(all_up, 60, "Prometheus to scrape all three nodes")
        client = Client([cluster.addr[leader]], Timeouts(per_try_s=2.0, total_s=30.0))
        client.publish("orders.warmup", b"x")

        # 3. a steady load; acks timed by the publisher
        acks: list[float] = []
        publisher = Publisher([cluster.addr[leader]], window=1000, batch_size=100, linger_s=0.005)
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < args.seconds:
            while sent < elapsed * args.rate:
                publisher.publish("orders.load", b"m" * 100, callback=lambda f: acks.append(time.monotonic()))
                sent += 1
            time.sleep(0.005)  # pacing the load generator, not synchronisation
        publisher.flush(timeout=30)
        publisher.close()
        end_mono, end_wall = time.monotonic(), time.time()
        seen = sum(1 for t in acks if end_mono - WINDOW_S <= t <= end_mono) / WINDOW_S
        wait_for(lambda: bool(prom.query(f'wiber_messages_stored_total{{instance="{instance[leader]}"}}')), 10,
                 "a sample of the leader's messages stored")
        time.sleep(2.5)  # two scrapes past the end of the window, so Prometheus holds its last samples
        result = prom.query(f'rate(wiber_messages_stored_total{{instance="{instance[leader]}"}}[{WINDOW_S}s])',
                            at=end_wall)
        prom_rate = float(result[0]["value"][1]) if result else float("nan")
        check(abs(prom_rate - seen) <= 0.10 * seen,
              f"rate(wiber_messages_stored_total[{WINDOW_S}s]) on the leader {prom_rate:,.0f}/s against "
              f"{seen:,.0f}/s acknowledged over the same {WINDOW_S} s ({len(acks):,} acked of {sent:,} sent; "
              f"{abs(prom_rate - seen) / seen * 100:.1f}% apart)")

        # 4. a consumer group's pending deliveries
        consumer = client.consumer("billing", "orders.*", ack_wait_ms=600_000, from_start=True)
        taken = consumer.fetch(250, timeout=5.0)
        query = f'wiber_consumer_pending{{group="billing",instance="{instance[leader]}"}}'

        def pending_is(n: int) -> bool:
            result = prom.query(query)
            return bool(result) and float(result[0]["value"][1]) == n

        wait_for(lambda: pending_is(len(taken)), 15, f"{query} = {len(taken)}")
        check(True, f"{query} = {len(taken)} after fetching {len(taken)} without ack")
        consumer.ack(taken)
        wait_for(lambda: pending_is(0), 15, f"{query} = 0")
        check(True, f"{query} = 0 after the ack")
        # 1. and 2.
        for name in REQUIRED:
            have = {r["metric"].get("instance") for r in prom.query(name)}
            check(set(instance.values()) <= have, f"{name} scraped from {len(have & set(instance.values()))} of 3 nodes")
        leaders = prom.query("sum(wiber_raft_leader)")
        check(bool(leaders) and float(leaders[0]["value"][1]) == 1.0,
              f"sum(wiber_raft_leader) = {leaders[0]['value'][1] if leaders else 'nothing'}")

        client.close()
    except Exception as exc:  # noqa: BLE001 - a check that could not finish is a failure, said as such
        check(False, f"the check stopped: {exc!r}")
    finally:
        if prometheus is not None:
            prometheus.close()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    say(f"{len(failures)} check(s) failed" if failures else "every check passed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
