"""One PySyncObj node for the benchmark, in its own process: a replicated append-only counter.

Run as ``python -m bench.pysyncobj_node --self 127.0.0.1:P --partner 127.0.0.1:Q ... --control C``.
PySyncObj has no client protocol, so the load runs inside a node (as in BASELINES: no client hop);
the benchmark drives each node over a ZeroMQ REP control socket on 127.0.0.1 with msgpack maps:

* ``{"op": "status"}`` -> ``{"leader", "self", "ready", "commit_idx", "last_applied"}``
* ``{"op": "seq", "count", "seconds"}`` -> ``{"latencies": [s, ...], "elapsed"}``: synchronous appends.
* ``{"op": "pipe", "count", "window", "seconds"}`` -> ``{"acked", "failed", "elapsed"}``: appends with
  callbacks, at most `window` outstanding.
* ``{"op": "until_ack", "try_s", "seconds"}`` -> ``{"ok"}``: synchronous appends with a short timeout
  until one succeeds (failover).
* ``{"op": "stop"}``: exit.

Nothing is written to disk: PySyncObj keeps its log in memory here (no journal, no fsync).
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import msgpack
import zmq
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.syncobj import SyncObjException


class Counter(SyncObj):  # type: ignore[misc]  # pysyncobj has no type hints
    """The replicated state: how many payloads were appended and how many bytes they held."""

    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, partners, conf)
        self.count = 0
        self.nbytes = 0

    @replicated  # type: ignore[untyped-decorator]
    def append(self, data: bytes) -> int:
        self.count += 1
        self.nbytes += len(data)
        return self.count


def _status(node: Counter) -> dict[str, Any]:
    status = node.getStatus()
    leader = status.get("leader")
    return {"leader": None if leader is None else str(getattr(leader, "id", leader)),
            "self": str(getattr(node.selfNode, "id", node.selfNode)),
            "ready": bool(node.isReady()), "commit_idx": int(status["commit_idx"]),
            "last_applied": int(status["last_applied"])}


def _seq(node: Counter, payload: bytes, count: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        node.append(payload, sync=True, timeout=5.0)
        latencies.append(time.perf_counter() - t0)
        if time.monotonic() >= deadline:
            break
    return {"latencies": latencies, "elapsed": time.perf_counter() - start}


def _pipe(node: Counter, payload: bytes, count: int, window: int, seconds: float) -> dict[str, Any]:
    slots = threading.Semaphore(window)
    lock = threading.Lock()
    acked = failed = 0
    all_done = threading.Event()
    sent = 0
    target = [count]  # lowered to what was actually sent once the send loop ends

    def callback(result: Any, error: Any) -> None:
        nonlocal acked, failed
        with lock:
            if error == FAIL_REASON.SUCCESS:
                acked += 1
            else:
                failed += 1
            finished = acked + failed
        slots.release()
        if finished >= target[0]:
            all_done.set()

    deadline = time.monotonic() + seconds
    start = time.perf_counter()
    for _ in range(count):
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
        node.append(payload, callback=callback)
        sent += 1
        if time.monotonic() >= deadline:
            break
    with lock:
        target[0] = sent
        if acked + failed >= sent:
            all_done.set()
    all_done.wait(timeout=max(5.0, deadline - time.monotonic()))
    return {"acked": acked, "failed": failed, "elapsed": time.perf_counter() - start}


def _until_ack(node: Counter, payload: bytes, timeout: float, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            node.append(payload, sync=True, timeout=timeout)
            return {"ok": True}
        except SyncObjException:
            time.sleep(0.01)
    return {"ok": False}


def main() -> None:
    """Run one node and serve control requests until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self", dest="self_addr", required=True)
    parser.add_argument("--partner", action="append", default=[])
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--no-batch", action="store_true", help="appendEntriesUseBatch=False")
    args = parser.parse_args()
    conf = SyncObjConf(appendEntriesUseBatch=not args.no_batch, dynamicMembershipChange=False)
    node = Counter(args.self_addr, args.partner, conf)
    payload = b"x" * 100
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{args.control}")
    try:
        while True:
            msg = msgpack.unpackb(sock.recv(), raw=False)
            op = msg.get("op")
            reply: dict[str, Any]
            try:
                if op == "status":
                    reply = _status(node)
                elif op == "seq":
                    reply = _seq(node, payload, int(msg["count"]), float(msg["seconds"]))
                elif op == "pipe":
                    reply = _pipe(node, payload, int(msg["count"]), int(msg["window"]), float(msg["seconds"]))
                elif op == "until_ack":
                    reply = _until_ack(node, payload, float(msg["try_s"]), float(msg["seconds"]))
                elif op == "stop":
                    sock.send(msgpack.packb({"ok": True}))
                    break
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except Exception as exc:  # noqa: BLE001 - report to the driver rather than die silently
                reply = {"error": repr(exc)}
            sock.send(msgpack.packb(reply))
    finally:
        sock.close(linger=0)
        ctx.term()
        node.destroy()


if __name__ == "__main__":
    main()
