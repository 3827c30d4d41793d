"""Wiber, three real node processes on 127.0.0.1, fsync on (the default), data in a temporary directory.

Workloads (100-byte payloads; each bounded by a count and `Bounds.seconds`):

* ``seq``: `Client.publish`, each waiting its ack (a majority has it on disk): p50, p99, rate.
* ``pipelined``: `Publisher(window=1000, batch_size=1)`: 1,000 PUBs in flight, throughput.
* ``aio``: `wiber.aio.Client` shared by 1,000 asyncio tasks, each awaiting its publish (`bench.aio_bench`).
* ``clients``: 1,000 `Client`s, each its own connection, publishing 10 messages each: p50, p99
  (`bench.clients_bench`).
* ``batched``: `Publisher(window=BATCH_WINDOW, batch_size=1000, linger_s=0.002)`: throughput.
* ``subscriber``: `Client.subscribe` on a follower, in its own process, while an auto-batching
  Publisher publishes; messages per second received (last received - publishing started).
* ``replay``: HISTORY pages of 1,000 (consistency local, on a follower) over the batched topic.
* ``consume``: a durable consumer group over `Bounds.messages` messages published beforehand
  (auto-batching, not timed): one `Consumer` fetches batches of `CONSUME_BATCH` and acks each
  batch with one ACK request (`Consumer.ack`, which returns once the ACK committed), until every
  message is acked; consumed-and-acked messages per second.
* ``failover``: kill -9 of the leader (found through PING's `leader`) to the next acknowledged
  publish of a `Client` with per-try 0.25 s; the killed node is restarted and caught up between kills.

``wiber_curve`` (`run_curve`) runs the publish workloads (seq, pipelined, aio, batched) again on a cluster
with a `security` section: every node and the benchmark's admin client hold CURVE keys, so every
frame between client and node and between nodes is encrypted, and each request passes the client's
rights check. Beside ``wiber`` in the same run, it is what CURVE costs.

The nodes are started as tests/conftest.py starts them: ``python -m wiber node --config F --id nX``.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench import aio_bench, clients_bench
from bench.common import (
    CHILDREN,
    PAYLOAD,
    Bounds,
    Child,
    Progress,
    Section,
    die_with_parent,
    free_port,
    median,
    percentile,
    rate,
    say,
    topic_per_message,
    wait_for,
)
from wiber.cli.keygen import write_key_pair
from wiber.client import Client, Timeouts
from wiber.client.curve import client_options, config_curve_keys
from wiber.config import load_config
from wiber.publisher import Publisher

SYSTEM = "wiber"
DURABILITY = "fsync per batch, majority on disk before ack"
CURVE_SYSTEM = "wiber_curve"
#: The benchmark's client under `security.clients` of a secured cluster (admin: STATUS is needed).
BENCH_CLIENT = "bench"

#: Requests (of up to 1,000 messages each) in flight for the auto-batching workload.
BATCH_WINDOW = 16
#: Per-try timeout of the failover client: how soon it gives up on a dead leader.
FAILOVER_PER_TRY_S = 0.25
#: Messages per FETCH of the consume-and-ack workload (NATS fetches as many: `nats_bench.CONSUME_BATCH`).
CONSUME_BATCH = 100
#: The consumer group's ack_wait_ms: longer than any run's FETCH-to-ACK gap, so nothing is redelivered.
CONSUME_ACK_WAIT_MS = 30_000


class WiberCluster:
    """Three node processes of one cluster, with their YAML, data and logs in one temporary directory.

    With `secure`, the config has a security section: a key pair per node and one for the
    benchmark's admin client (`BENCH_CLIENT`), all in the directory's ``keys``; `client_options`
    are then the arguments that make a Client or Publisher use them. `log_level` is the nodes'."""

    def __init__(self, n: int = 3, secure: bool = False, log_level: str = "warning", **cluster_settings: Any) -> None:
        self.log_level = log_level
        self.root = Path(tempfile.mkdtemp(prefix="wiber-bench-"))
        nodes = [{"id": f"n{i}", "host": "127.0.0.1", "port": free_port(), "raft_port": free_port(),
                  "pub_port": free_port(), "metrics_port": free_port()} for i in range(1, n + 1)]
        self.config_path = self.root / "cluster.yaml"
        doc: dict[str, Any] = {"cluster": {"data_dir": str(self.root / "data"), **cluster_settings}, "nodes": nodes}
        keys = self.root / "keys"
        if secure:
            for name in [str(node["id"]) for node in nodes] + [BENCH_CLIENT]:
                write_key_pair(str(keys), name)
            doc["security"] = {"keys_dir": str(keys), "clients": [{"name": BENCH_CLIENT, "admin": True}]}
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.client_options: dict[str, Any] = client_options(config_curve_keys(
            load_config(str(self.config_path)), str(keys / f"{BENCH_CLIENT}.key_secret"))) if secure else {}
        self.addr = {str(node["id"]): f"127.0.0.1:{node['port']}" for node in nodes}
        #: Where each node serves /metrics (bench.metrics_cost scrapes them).
        self.metrics_port = {str(node["id"]): int(node["metrics_port"]) for node in nodes}
        self.nodes: dict[str, Child] = {}

    def start(self, node_id: str | None = None) -> None:
        """Start one node (again), or all of them."""
        for nid in [node_id] if node_id else list(self.addr):
            if nid in self.nodes:
                self.nodes[nid].start()
            else:
                self.nodes[nid] = CHILDREN.spawn(
                    f"wiber {nid}",
                    [sys.executable, "-m", "wiber", "node", "--config", str(self.config_path), "--id", nid,
                     "--log-level", self.log_level],
                    self.root / f"{nid}.log")

    def kill(self, node_id: str) -> None:
        """kill -9 one node (by pid) and reap it."""
        self.nodes[node_id].kill()

    def close(self) -> None:
        """Kill every node (by pid) and remove the temporary directory."""
        for child in self.nodes.values():
            child.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def request(self, node_id: str, op: str, timeout: float = 0.5) -> dict[str, Any]:
        """Returns: one node's ok reply to PING or STATUS. Raises: WiberError when it does not answer."""
        with Client(self.addr[node_id], Timeouts(per_try_s=timeout, total_s=timeout),
                    **self.client_options) as client:
            return client.request_to(self.addr[node_id], op)

    def leader(self, timeout: float = 15.0) -> str:
        """Returns: the leader id that every running node agrees on (PING's `leader`)."""
        def agreed() -> str | None:
            seen = {self.request(nid, "PING")["leader"] for nid, c in self.nodes.items() if c.running()}
            return seen.pop() if len(seen) == 1 and None not in seen else None
        leader: str = wait_for(agreed, timeout, "the Wiber nodes to agree on a leader")  # type: ignore[assignment]
        return leader

    def followers(self, leader: str) -> list[str]:
        return [nid for nid in self.addr if nid != leader]

    def wait_caught_up(self, node_id: str, leader: str, timeout: float) -> None:
        """Wait until `node_id` has applied everything the leader had committed when we asked."""
        target = int(self.request(leader, "STATUS")["commit_index"])
        wait_for(lambda: int(self.request(node_id, "STATUS")["applied_index"]) >= target, timeout,
                 f"{node_id} to catch up to index {target}")


def _sequential(section: Section, cluster: WiberCluster, leader: str, bounds: Bounds, progress: bool) -> None:
    addrs = [cluster.addr[leader], *(cluster.addr[f] for f in cluster.followers(leader))]
    latencies: list[float] = []
    with Client(addrs, Timeouts(per_try_s=2.0, total_s=10.0), **cluster.client_options) as client:
        for _ in range(50):  # warm-up: connection, leader's caches
            client.publish("seq-warm", PAYLOAD)
        deadline = time.monotonic() + bounds.seconds
        start = time.perf_counter()
        with Progress("wiber sequential publish", bounds.sequential, progress) as bar:
            for _ in range(bounds.sequential):
                t0 = time.perf_counter()
                client.publish("seq", PAYLOAD)
                latencies.append(time.perf_counter() - t0)
                bar.update()
                if time.monotonic() >= deadline:
                    break
        elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    note = "Client.publish, one at a time, each waits its ack"
    section.add("seq_p50_ms", percentile(ms, 50), "ms", len(ms), better="lower", note=note)
    section.add("seq_p99_ms", percentile(ms, 99), "ms", len(ms), better="lower", note=note)
    section.add("seq_rate", rate(len(ms), elapsed), "msg/s", len(ms), note=note)


def publish_many(addrs: list[str], plan: Sequence[tuple[str, int]], seconds: float, window: int, batch_size: int,
                 linger_s: float, desc: str, progress: bool, *, say_prefix: str = "",
                 say_deadline: bool = False, options: dict[str, Any] | None = None) -> tuple[int, float, int]:
    """Publish `plan` ((topic, count) pairs, in order) through one Publisher and wait for every ack.

    Bounded by `seconds`: the loop stops handing messages over at the deadline (said when
    `say_deadline`), the flush waits what is left of it (at least 5 s). `say_prefix` starts the
    lines said about `desc`; `options` go to the Publisher (a secured cluster's keys).

    Returns: (acknowledged, seconds from first publish to last ack, failed).
    """
    acked = 0
    failed = 0
    with Progress(desc, sum(count for _topic, count in plan), progress) as bar:
        def done(future: Any) -> None:
            nonlocal acked, failed
            if future.exception() is None:
                acked += 1
                bar.update()
            else:
                failed += 1

        publisher = Publisher(addrs, window=window, batch_size=batch_size, linger_s=linger_s,
                              timeouts=Timeouts(per_try_s=5.0, total_s=max(30.0, seconds)), **(options or {}))
        try:
            deadline = time.monotonic() + seconds
            start = time.perf_counter()
            for sent, topic in enumerate(topic_per_message(plan), 1):
                publisher.publish(topic, PAYLOAD, callback=done)
                if sent % 1000 == 0 and time.monotonic() >= deadline:
                    if say_deadline:
                        say(f"  {say_prefix}{desc}: deadline of {seconds:g} s reached after {sent} messages "
                            f"handed over")
                    break
            try:
                publisher.flush(timeout=max(5.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                say(f"  {say_prefix}{desc}: {exc}")
            elapsed = time.perf_counter() - start
        finally:
            try:
                publisher.close()
            except Exception as exc:  # noqa: BLE001 - unanswered requests at close: already reported as failed/unacked
                say(f"  {say_prefix}{desc}: close: {exc!r}")
    return acked, elapsed, failed


def _pipelined(section: Section, cluster: WiberCluster, leader: str, bounds: Bounds, progress: bool) -> None:
    addrs = [cluster.addr[leader]]
    acked, elapsed, failed = publish_many(addrs, [("pipelined", bounds.messages)], bounds.seconds, 1000, 1, 0.0,
                                          "wiber pipelined (window 1000, batch 1)", progress, say_prefix="wiber ",
                                          options=cluster.client_options)
    section.add("pipelined_rate", rate(acked, elapsed), "msg/s", acked,
                note=f"Publisher(window=1000, batch_size=1){f'; {failed} failed' if failed else ''}")


def _batched(section: Section, cluster: WiberCluster, leader: str, bounds: Bounds, progress: bool) -> int:
    addrs = [cluster.addr[leader]]
    acked, elapsed, failed = publish_many(addrs, [("batched", bounds.batched)], bounds.seconds, BATCH_WINDOW, 1000,
                                          0.002, f"wiber auto-batching (window {BATCH_WINDOW}, batch 1000)",
                                          progress, say_prefix="wiber ", options=cluster.client_options)
    section.add("batched_rate", rate(acked, elapsed), "msg/s", acked,
                note=f"Publisher(window={BATCH_WINDOW}, batch_size=1000, linger 2 ms)"
                     f"{f'; {failed} failed' if failed else ''}")
    return acked


def _subscriber_worker(addr: str, topic: str, expected: int, seconds: float, out: Any) -> None:
    """In a child process: subscribe at one node from offset 0, receive `expected` messages, report timing."""
    die_with_parent()
    count = 0
    first = last = 0.0
    with Client(addr, Timeouts(per_try_s=2.0, total_s=10.0)) as client:
        sub = client.subscribe(topic, from_offset=0)
        try:
            sub.get(timeout=0.05)  # attach (SUB + HISTORY) before the publisher starts
            out.put("ready")
            deadline = time.monotonic() + seconds
            while count < expected and time.monotonic() < deadline:
                message = sub.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                if message is None:
                    continue
                now = time.monotonic()
                if count == 0:
                    first = now
                count += 1
                last = now
        finally:
            sub.close()
    out.put((count, first, last, sub.gaps_filled, sub.failovers))


def _subscriber(section: Section, cluster: WiberCluster, leader: str, bounds: Bounds, progress: bool) -> None:
    follower = cluster.followers(leader)[0]
    mpctx = mp.get_context("spawn")
    out = mpctx.Queue()
    worker = mpctx.Process(target=_subscriber_worker,
                           args=(cluster.addr[follower], "sub", bounds.subscriber, bounds.seconds + 10, out),
                           daemon=True)
    worker.start()
    try:
        if out.get(timeout=30) != "ready":
            raise RuntimeError("subscriber did not start")
        start = time.monotonic()
        acked, _elapsed, _failed = publish_many([cluster.addr[leader]], [("sub", bounds.subscriber)], bounds.seconds,
                                                BATCH_WINDOW, 1000, 0.002,
                                                f"wiber publish for a subscriber on {follower}", progress,
                                                say_prefix="wiber ")
        count, _first, last, gaps, failovers = out.get(timeout=bounds.seconds + 20)
        section.add("subscriber_rate", rate(count, last - start), "msg/s", count,
                    note=f"Client.subscribe on follower {follower}, own process; auto-batching publisher "
                         f"({acked} acked); {gaps} gap fills, {failovers} failovers")
    finally:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def _replay(section: Section, cluster: WiberCluster, leader: str, topic_size: int, bounds: Bounds,
            progress: bool) -> None:
    follower = cluster.followers(leader)[-1]
    cluster.wait_caught_up(follower, leader, 30)
    count = 0
    offset = 0
    with Client(cluster.addr[follower], Timeouts(per_try_s=5.0, total_s=10.0)) as client:
        deadline = time.monotonic() + bounds.seconds
        start = time.perf_counter()
        with Progress(f"wiber HISTORY replay on {follower}", topic_size, progress) as bar:
            while count < topic_size and time.monotonic() < deadline:
                history = client.history("batched", from_offset=offset, limit=1000)
                if not history.messages:
                    break
                count += len(history.messages)
                offset = history.next_offset
                bar.update(len(history.messages))
        elapsed = time.perf_counter() - start
    section.add("replay_rate", rate(count, elapsed), "msg/s", count,
                note=f"HISTORY limit=1000 pages, consistency local, on follower {follower}")


def _consume(section: Section, cluster: WiberCluster, leader: str, bounds: Bounds, progress: bool) -> None:
    """Pre-publish `bounds.messages` (auto-batching, not timed), then consume and ack them all through
    one member of a new group: FETCH up to `CONSUME_BATCH`, one ACK for the batch, repeat."""
    addrs = [cluster.addr[leader], *(cluster.addr[f] for f in cluster.followers(leader))]
    stored, _elapsed, _failed = publish_many([cluster.addr[leader]], [("consume", bounds.messages)], bounds.seconds,
                                             BATCH_WINDOW, 1000, 0.002, "wiber fill for consume-and-ack", progress,
                                             say_prefix="wiber ")
    fetched = acked = redelivered = batches = 0
    with Client(addrs, Timeouts(per_try_s=5.0, total_s=10.0)) as client:
        consumer = client.consumer("bench-consume", "consume", ack_wait_ms=CONSUME_ACK_WAIT_MS, from_start=True)
        deadline = time.monotonic() + bounds.seconds
        start = time.perf_counter()
        with Progress(f"wiber consume-and-ack (fetch {CONSUME_BATCH}, one ACK per batch)", stored, progress) as bar:
            while acked < stored and time.monotonic() < deadline:
                batch = consumer.fetch(CONSUME_BATCH, timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                if not batch:
                    continue
                fetched += len(batch)
                redelivered += sum(1 for message in batch if message.delivery > 1)
                done = consumer.ack(batch)
                batches += 1
                acked += done
                bar.update(done)
        elapsed = time.perf_counter() - start
    section.add("consume_ack_rate", rate(acked, elapsed), "msg/s", acked,
                note=f"Client.consumer (group from_start, ack_wait {CONSUME_ACK_WAIT_MS} ms) via the leader: "
                     f"fetch({CONSUME_BATCH}), then one ACK request for the batch (Consumer.ack, returns once "
                     f"committed on a majority); {batches} batches, {fetched} fetched"
                     f"{f', {redelivered} redelivered' if redelivered else ''}")


def _failover(section: Section, cluster: WiberCluster, bounds: Bounds, progress: bool) -> None:
    times: list[float] = []
    addrs = list(cluster.addr.values())
    with Progress("wiber failover (kill -9 leader)", bounds.kills, progress, unit="kill") as bar:
        for _ in range(bounds.kills):
            leader = cluster.leader()
            with Client(addrs, Timeouts(per_try_s=FAILOVER_PER_TRY_S, total_s=max(30.0, bounds.seconds))) as client:
                client.publish("failover", PAYLOAD)  # attached to the leader now
                t0 = time.monotonic()
                cluster.kill(leader)
                try:
                    client.publish("failover", PAYLOAD)
                    times.append(time.monotonic() - t0)
                except Exception as exc:  # noqa: BLE001 - report, restart, try the next kill
                    say(f"  wiber failover: no ack after killing {leader}: {exc!r}")
            cluster.start(leader)
            new_leader = cluster.leader()
            cluster.wait_caught_up(leader, new_leader, 60)
            bar.update()
    section.add("failover_s", median(times), "s", len(times), better="lower",
                note=f"kill -9 leader -> next ack (client per-try {FAILOVER_PER_TRY_S} s)", raw=tuple(times))


def run(bounds: Bounds, progress: bool = True, secure: bool = False) -> Section:
    """Start a 3-node cluster, run every workload, stop the cluster. Returns: the Wiber section.

    With `secure`, the cluster uses CURVE on every socket and only the publish workloads run
    (sequential, pipelined, auto-batching): the ``wiber_curve`` section, to compare with the plain
    one of the same run."""
    section = (Section(CURVE_SYSTEM, "Wiber 3 nodes, CURVE", DURABILITY + "; CurveZMQ on every socket") if secure
               else Section(SYSTEM, "Wiber 3 nodes", DURABILITY))
    cluster = WiberCluster(secure=secure)
    try:
        cluster.start()
        leader = cluster.leader(30)
        _sequential(section, cluster, leader, bounds, progress)
        _pipelined(section, cluster, leader, bounds, progress)
        aio_bench.wiber(section, [cluster.addr[leader], *(cluster.addr[f] for f in cluster.followers(leader))],
                        bounds, progress, cluster.client_options)
        topic_size = _batched(section, cluster, leader, bounds, progress)
        if not secure:
            clients_bench.wiber(section, [cluster.addr[leader], *(cluster.addr[f] for f in cluster.followers(leader))],
                                bounds.seconds, progress)
            _subscriber(section, cluster, leader, bounds, progress)
            _replay(section, cluster, leader, topic_size, bounds, progress)
            _consume(section, cluster, leader, bounds, progress)
            _failover(section, cluster, bounds, progress)
    except BaseException:
        for nid, child in cluster.nodes.items():
            say(f"----- {section.label} {nid} log tail -----\n{child.log_tail()}")
        raise
    finally:
        cluster.close()
    return section


def run_curve(bounds: Bounds, progress: bool = True) -> Section:
    """Returns: the ``wiber_curve`` section (`run` with CURVE on every socket)."""
    return run(bounds, progress, secure=True)
