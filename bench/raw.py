"""The raw ceiling: what one Python ZeroMQ hop costs on this machine, with msgpack on both ends.

* one-way: PUSH -> PULL, one msgpack map per frame (and, for the batched comparison, 100 per
  frame); the PULL side runs in its own process, so sender and receiver each have a core as a
  client and a node would. Rate = messages received / (last received - first sent).
* round trip: DEALER -> ROUTER echo (the ROUTER decodes each request and encodes a reply map, as a
  node does), one request at a time: p50/p99 and requests per second.

Nothing here is durable or replicated: it is the upper bound for one hop between two processes.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import msgpack
import zmq

from bench.common import (
    PAYLOAD,
    Bounds,
    Progress,
    Section,
    chunks,
    die_with_parent,
    free_port,
    percentile,
    rate,
)

SYSTEM = "raw"
DURABILITY = "none (in memory, one hop)"


def _pull_worker(port: int, expected: int, per_frame: int, seconds: float, out: Any) -> None:
    """In a child process: receive `expected` messages on PULL (or stop at the deadline), report timing."""
    die_with_parent()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    out.put("ready")
    count = 0
    first = last = 0.0
    deadline = time.monotonic() + seconds
    try:
        while count < expected and time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            item = msgpack.unpackb(sock.recv(), raw=False)
            now = time.monotonic()
            if count == 0:
                first = now
            count += len(item) if per_frame > 1 else 1
            last = now
    finally:
        sock.close(linger=0)
        ctx.term()
    out.put((count, first, last))


def _echo_worker(port: int, seconds: float, out: Any) -> None:
    """In a child process: a ROUTER that decodes each request and answers a small map, until told to stop."""
    die_with_parent()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    out.put("ready")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart()
            msg = msgpack.unpackb(frames[-1], raw=False)
            if msg.get("op") == "STOP":
                break
            reply = msgpack.packb({"ok": True, "id": msg.get("id"), "offset": msg.get("id")})
            sock.send_multipart([*frames[:-1], reply])
    finally:
        sock.close(linger=0)
        ctx.term()


def _stop(sock: Any, ctx: Any, worker: Any) -> None:
    """Close the driver's socket and context, then reap the worker process (killing it if it hangs)."""
    sock.close(linger=0)
    ctx.term()
    worker.join(timeout=5)
    if worker.is_alive():
        worker.kill()
        worker.join(timeout=5)


def _one_way(section: Section, bounds: Bounds, per_frame: int, progress: bool) -> None:
    """PUSH -> PULL with `per_frame` messages per frame; records a rate figure."""
    total = bounds.messages * (10 if per_frame == 1 else 50)
    mpctx = mp.get_context("spawn")
    out = mpctx.Queue()
    port = free_port()
    worker = mpctx.Process(target=_pull_worker, args=(port, total, per_frame, bounds.seconds + 5, out), daemon=True)
    worker.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 5000)  # a dead receiver raises zmq.Again instead of blocking forever
    try:
        if out.get(timeout=30) != "ready":
            raise RuntimeError("PULL worker did not start")
        sock.connect(f"tcp://127.0.0.1:{port}")
        time.sleep(0.2)  # let the connection settle so the first frames are not queued before it
        desc = f"raw PUSH->PULL {per_frame}/frame"
        deadline = time.monotonic() + bounds.seconds
        sent = 0
        start = time.monotonic()
        with Progress(desc, total, progress) as bar:
            if per_frame == 1:
                for n in chunks(total, 1000):
                    for _ in range(n):
                        sock.send(msgpack.packb({"topic": "raw", "data": PAYLOAD}))
                    sent += n
                    bar.update(n)
                    if time.monotonic() >= deadline:
                        break
            else:
                for n in chunks(total, per_frame):
                    sock.send(msgpack.packb([{"topic": "raw", "data": PAYLOAD}] * n))
                    sent += n
                    bar.update(n)
                    if time.monotonic() >= deadline:
                        break
        count, _first, last = out.get(timeout=bounds.seconds + 15)
        key = "oneway_rate" if per_frame == 1 else "oneway_batch_rate"
        section.add(key, rate(count, last - start), "msg/s", count,
                    note=f"PUSH->PULL {per_frame} msg/frame, msgpack, receiver in its own process")
        if count < sent:
            section.add(f"{key}_lost", float(sent - count), "msg", sent, better="lower")
    finally:
        _stop(sock, ctx, worker)


def _round_trip(section: Section, bounds: Bounds, progress: bool) -> None:
    """DEALER -> ROUTER echo, one request at a time; records p50, p99 and rate."""
    total = bounds.sequential * 5
    mpctx = mp.get_context("spawn")
    out = mpctx.Queue()
    port = free_port()
    worker = mpctx.Process(target=_echo_worker, args=(port, bounds.seconds + 10, out), daemon=True)
    worker.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if out.get(timeout=30) != "ready":
            raise RuntimeError("ROUTER worker did not start")
        sock.connect(f"tcp://127.0.0.1:{port}")

        def one(i: int) -> float:
            t0 = time.perf_counter()
            sock.send_multipart([b"", msgpack.packb({"op": "PUB", "topic": "raw", "data": PAYLOAD, "id": i})])
            if not sock.poll(2000):
                raise TimeoutError("echo server did not answer within 2 s")
            msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            return time.perf_counter() - t0

        for i in range(200):  # warm-up: connection set up, caches warm
            one(i)
        latencies: list[float] = []
        deadline = time.monotonic() + bounds.seconds
        start = time.perf_counter()
        with Progress("raw DEALER->ROUTER round trip", total, progress) as bar:
            for n in chunks(total, 500):
                for i in range(n):
                    latencies.append(one(i))
                bar.update(n)
                if time.monotonic() >= deadline:
                    break
        elapsed = time.perf_counter() - start
        ms = [x * 1000 for x in latencies]
        note = "DEALER->ROUTER echo, msgpack both ways, one at a time"
        section.add("seq_p50_ms", percentile(ms, 50), "ms", len(ms), better="lower", note=note)
        section.add("seq_p99_ms", percentile(ms, 99), "ms", len(ms), better="lower", note=note)
        section.add("seq_rate", rate(len(ms), elapsed), "msg/s", len(ms), note=note)
        sock.send_multipart([b"", msgpack.packb({"op": "STOP"})])
    finally:
        _stop(sock, ctx, worker)


def run(bounds: Bounds, progress: bool = True) -> Section:
    """Measure the raw ceiling. Returns: its section (one-way rates, round-trip latency and rate)."""
    section = Section(SYSTEM, "raw pyzmq", DURABILITY)
    _one_way(section, bounds, 1, progress)
    _one_way(section, bounds, 100, progress)
    _round_trip(section, bounds, progress)
    return section
