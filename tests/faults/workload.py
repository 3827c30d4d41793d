"""The workload: publisher and subscriber processes that record what they did (see `history`).

Publishers (``python -m tests.faults.workload publish ...``) publish unique values
``<process>-<i>`` to topics picked at random, with `wiber.client.Client` (its client_id/seq
retries make each publish exactly-once; per try 0.5 s, in all 5 s). A returned Ack is ``ok``
with its offset; ClientError (no answer in time) and SESSION_EXPIRED are ``info`` (unknown: it
may be stored); a request refused as bad is ``fail``.

Pipelined publishers (``publish --pipelined``) do the same through `wiber.publisher.Publisher`:
many requests in flight, messages gathered into PUB_BATCHes, every request in flight resent with
its seq on failover; each message's future resolving is its completion.

Subscribers (``python -m tests.faults.workload subscribe ...``) follow one topic from offset 0
with `Client.subscribe` and record every delivered (offset, value). Should the subscription raise,
it is recorded (``info``) and reopened after the last delivered offset.

Readers (``python -m tests.faults.workload read ...``) issue HISTORY requests alternately
``linearizable`` and ``local`` (docs/design.md section 4, promise 5), each to a node picked at
random, on a topic picked at random: mostly the newest `window` messages (``last``), one in four
a window from a random offset below the end seen so far. A linearizable read that reaches a
follower follows its NOT_LEADER once, to the leader it names; a local read is answered by the
node asked, whatever its state. An answer is ``ok`` with the node, the topic's end offset and the
(offset, value) pairs; an error answer is ``fail``, no answer in time ``info``.

All are bounded by a count or a time, and stop cleanly at SIGTERM (the operation under way
finishes first). `Workload` is the driver's side: it starts the processes, tails their files for
progress, waits for subscribers to catch up and stops everything it started, by pid.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import itertools
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.cluster import die_with_parent
from tests.faults.history import (
    FAIL,
    HISTORY,
    INFO,
    INVOKE,
    LINEARIZABLE,
    LOCAL,
    OK,
    PUBLISH,
    READ,
    HistoryWriter,
)
from wiber.client import Client, Timeouts
from wiber.errors import (
    BadRequest,
    ClientError,
    NotLeader,
    SessionExpired,
    TooLarge,
    UnknownOp,
    WiberError,
    WireError,
)

REPO = Path(__file__).resolve().parents[2]


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def run_publisher(addrs: Sequence[str], topics: Sequence[str], process: str, out: Path, count: int,
                  seconds: float, pace_s: float, seed: int, per_try_s: float = 0.5, total_s: float = 5.0) -> None:
    """Publish up to `count` values for up to `seconds`, recording each outcome."""
    stop = _stop_event()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    with HistoryWriter(out, process) as history, Client(list(addrs), Timeouts(per_try_s, total_s)) as client:
        history.record(INFO, "client", detail=f"client_id={client.client_id}")
        for i in range(count):
            if stop.is_set() or time.monotonic() >= deadline:
                break
            topic = rng.choice(list(topics))
            value = f"{process}-{i}"
            history.record(INVOKE, PUBLISH, topic=topic, value=value)
            try:
                ack = client.publish(topic, value)
            except SessionExpired as exc:
                history.record(INFO, PUBLISH, topic=topic, value=value, error=f"SessionExpired: {exc}")
            except (BadRequest, TooLarge, UnknownOp) as exc:
                history.record(FAIL, PUBLISH, topic=topic, value=value, error=f"{type(exc).__name__}: {exc}")
            except (ClientError, WiberError) as exc:
                history.record(INFO, PUBLISH, topic=topic, value=value, error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a zmq error: whatever it was, the outcome is unknown
                history.record(INFO, PUBLISH, topic=topic, value=value, error=f"{type(exc).__name__}: {exc}")
            else:
                history.record(OK, PUBLISH, topic=ack.topic, value=value, offset=ack.offset,
                               detail="duplicate" if ack.duplicate else None)
            stop.wait(pace_s * rng.uniform(0.5, 1.5))  # bounded pacing, not synchronization


def run_pipelined_publisher(addrs: Sequence[str], topics: Sequence[str], process: str, out: Path, count: int,
                            seconds: float, pace_s: float, seed: int, per_try_s: float = 0.5,
                            total_s: float = 5.0) -> None:
    """Like `run_publisher`, through the pipelined, batching `Publisher` (futures complete later)."""
    from wiber.publisher import Publisher, PublishFuture

    stop = _stop_event()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    pending: dict[int, tuple[str, str]] = {}

    with HistoryWriter(out, process) as history:
        publisher = Publisher(list(addrs), window=100, batch_size=50, linger_s=0.005,
                              timeouts=Timeouts(per_try_s, total_s),
                              io_thread=False)  # callbacks (history records) in this thread
        history.record(INFO, "client", detail=f"client_id={publisher.client_id} pipelined")

        def done(future: PublishFuture, topic: str, value: str) -> None:
            pending.pop(id(future), None)
            error = future.exception()
            if error is None:
                ack = future.result(0)
                history.record(OK, PUBLISH, topic=ack.topic, value=value, offset=ack.offset,
                               detail="duplicate" if ack.duplicate else None)
            elif isinstance(error, (BadRequest, TooLarge, UnknownOp)):
                history.record(FAIL, PUBLISH, topic=topic, value=value, error=f"{type(error).__name__}: {error}")
            else:
                history.record(INFO, PUBLISH, topic=topic, value=value, error=f"{type(error).__name__}: {error}")

        try:
            for i in range(count):
                if stop.is_set() or time.monotonic() >= deadline:
                    break
                topic = rng.choice(list(topics))
                value = f"{process}-{i}"
                history.record(INVOKE, PUBLISH, topic=topic, value=value)
                try:
                    future = publisher.publish(topic, value, callback=functools.partial(done, topic=topic,
                                                                                         value=value))
                except Exception as exc:  # noqa: BLE001 - refused locally, or the publisher broke: unknown
                    history.record(INFO, PUBLISH, topic=topic, value=value, error=f"{type(exc).__name__}: {exc}")
                    continue
                if not future.done():
                    pending[id(future)] = (topic, value)
                until = time.monotonic() + pace_s * rng.uniform(0.5, 1.5)
                while time.monotonic() < until:  # bounded pacing that keeps the publisher's I/O going
                    publisher.poll(max(0.0, min(0.01, until - time.monotonic())))
            try:
                publisher.flush(total_s + 1.0)
            except Exception as exc:  # noqa: BLE001
                history.record(INFO, "flush", error=f"{type(exc).__name__}: {exc}")
        finally:
            for topic, value in list(pending.values()):
                history.record(INFO, PUBLISH, topic=topic, value=value, error="unresolved when the process stopped")
            try:
                publisher.close()
            except Exception as exc:  # noqa: BLE001 - already stopping; say why, then exit
                history.record(INFO, "close", error=f"{type(exc).__name__}: {exc}")


def run_subscriber(addrs: Sequence[str], topic: str, process: str, out: Path, seconds: float,
                   per_try_s: float = 0.5, total_s: float = 5.0) -> None:
    """Follow `topic` from offset 0 for up to `seconds`, recording every delivered message."""
    stop = _stop_event()
    deadline = time.monotonic() + seconds
    next_offset = 0
    with HistoryWriter(out, process) as history, Client(list(addrs), Timeouts(per_try_s, total_s)) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            sub = client.subscribe(topic, from_offset=next_offset)
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    message = sub.get(timeout=0.25)
                    if message is None:
                        continue
                    history.record(OK, READ, topic=topic, offset=message.offset,
                                   value=message.data.decode("utf-8", "replace"))
                    next_offset = message.offset + 1
            except Exception as exc:  # noqa: BLE001 - record it and reopen after the last delivered offset
                history.record(INFO, READ, topic=topic, error=f"{type(exc).__name__}: {exc}",
                               detail=f"reopening from {next_offset}")
                stop.wait(0.1)
            finally:
                history.record(INFO, "subscription", topic=topic,
                               detail=f"failovers={sub.failovers} gaps_filled={sub.gaps_filled}")
                sub.close()


def _history_at(client: Client, nodes: dict[str, str], node: str, consistency: str,
                fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """HISTORY at one node; a linearizable read refused by a follower goes once to the leader it names.

    Returns: the node that answered (its id, or its address if it is not among `nodes`) and the reply.
    """
    try:
        return node, client.request_to(nodes[node], "HISTORY", consistency=consistency, **fields)
    except NotLeader as err:
        if err.leader_addr is None:
            raise
        leader = err.leader or err.leader_addr
        return leader, client.request_to(err.leader_addr, "HISTORY", consistency=consistency, **fields)


def run_reader(addrs: Sequence[str], node_ids: Sequence[str], topics: Sequence[str], process: str, out: Path,
               seconds: float, pace_s: float, seed: int, window: int = 8, per_try_s: float = 0.5,
               total_s: float = 5.0) -> None:
    """Read `topics` with HISTORY, alternately linearizable and local, for up to `seconds`, recording each."""
    stop = _stop_event()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    nodes = dict(zip(node_ids, addrs, strict=True))
    ends: dict[str, int] = {}  # per topic, the highest end offset any answer reported
    with HistoryWriter(out, process) as history, Client(list(addrs), Timeouts(per_try_s, total_s)) as client:
        for i in itertools.count():
            if stop.is_set() or time.monotonic() >= deadline:
                break
            consistency = LINEARIZABLE if i % 2 == 0 else LOCAL
            topic = rng.choice(list(topics))
            node = rng.choice(list(nodes))
            fields: dict[str, Any] = {"topic": topic, "limit": window}
            if ends.get(topic) and rng.random() < 0.25:
                fields["from_offset"] = rng.randrange(ends[topic])
                asked = f"from {fields['from_offset']}"
            else:
                fields["last"] = window
                asked = f"last {window}"
            history.record(INVOKE, HISTORY, topic=topic, node=node, consistency=consistency, detail=asked)
            try:
                answered, reply = _history_at(client, nodes, node, consistency, fields)
            except WireError as exc:
                history.record(FAIL, HISTORY, topic=topic, node=node, consistency=consistency,
                               error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - no answer in time, or a zmq error: no result
                history.record(INFO, HISTORY, topic=topic, node=node, consistency=consistency,
                               error=f"{type(exc).__name__}: {exc}")
            else:
                messages = tuple((int(m["offset"]), bytes(m["data"]).decode("utf-8", "replace"))
                                 for m in reply["messages"])
                end = int(reply["end_offset"])
                ends[topic] = max(ends.get(topic, 0), end)
                history.record(OK, HISTORY, topic=topic, node=answered, consistency=consistency, end=end,
                               messages=messages)
            stop.wait(pace_s * rng.uniform(0.5, 1.5))  # bounded pacing, not synchronization


# ---------------------------------------------------------------------------------------------
# The driver's side.


@dataclass
class Progress:
    """What the workload has done so far, tallied from its history files."""

    invoked: int = 0
    ok: int = 0
    fail: int = 0
    info: int = 0
    reads: int = 0
    last_ok_time: float = 0.0
    read_next: dict[str, int] = field(default_factory=dict)  # subscriber process -> next offset
    history_ok: dict[str, int] = field(default_factory=dict)  # consistency -> HISTORY reads answered ok


class _Tail:
    """Reads the complete lines appended to one file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines if line.strip()]


@dataclass
class WorkloadSpec:
    """How many processes, on which topics, how fast, for how long at most."""

    publishers: int = 3
    topics: tuple[str, ...] = ("t0", "t1", "t2")
    subscribed: tuple[str, ...] = ("t0", "t1")  # one subscriber process per topic listed
    pipelined: int = 0  # more publisher processes, through the pipelined Publisher
    readers: int = 1  # processes issuing HISTORY reads, alternately linearizable and local
    read_pace_s: float = 0.05
    read_window: int = 8  # messages per read
    pipelined_pace_s: float = 0.005
    pace_s: float = 0.02
    max_seconds: float = 900.0
    max_count: int = 1_000_000
    per_try_s: float = 0.5
    total_s: float = 5.0
    seed: int = 0


class Workload:
    """Starts, watches and stops the workload processes of one run (only these, by pid)."""

    def __init__(self, addrs: Sequence[str], history_dir: Path, log_dir: Path, spec: WorkloadSpec,
                 node_ids: Sequence[str] | None = None) -> None:
        self.addrs = list(addrs)
        self.node_ids = list(node_ids) if node_ids is not None else [f"n{i}" for i in range(1, len(addrs) + 1)]
        self.history_dir = Path(history_dir)
        self.log_dir = Path(log_dir)
        self.spec = spec
        self.publishers: dict[str, subprocess.Popen[bytes]] = {}
        self.subscribers: dict[str, subprocess.Popen[bytes]] = {}
        self.readers: dict[str, subprocess.Popen[bytes]] = {}
        self.progress = Progress()
        self._tails: dict[str, _Tail] = {}
        self.sub_topic: dict[str, str] = {}
        atexit.register(self.kill_all)

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        self.history_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = self.history_dir / f"{name}.jsonl"
        self._tails[name] = _Tail(out)
        with open(self.log_dir / f"{name}.log", "ab") as logf:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.faults.workload", *args, "--addrs", ",".join(self.addrs),
                 "--process", name, "--out", str(out), "--seconds", str(self.spec.max_seconds),
                 "--per-try", str(self.spec.per_try_s), "--total", str(self.spec.total_s)],
                stdout=logf, stderr=subprocess.STDOUT, cwd=str(REPO), preexec_fn=die_with_parent)  # noqa: PLW1509

    def start(self) -> None:
        for i, topic in enumerate(self.spec.subscribed, 1):
            name = f"s{i}"
            self.sub_topic[name] = topic
            self.subscribers[name] = self._spawn(["subscribe", "--topic", topic], name)
        for i in range(1, self.spec.publishers + 1):
            name = f"p{i}"
            self.publishers[name] = self._spawn(
                ["publish", "--topics", ",".join(self.spec.topics), "--count", str(self.spec.max_count),
                 "--pace", str(self.spec.pace_s), "--seed", str(self.spec.seed * 1000 + i)], name)
        for i in range(1, self.spec.pipelined + 1):
            name = f"q{i}"
            self.publishers[name] = self._spawn(
                ["publish", "--pipelined", "--topics", ",".join(self.spec.topics), "--count",
                 str(self.spec.max_count), "--pace", str(self.spec.pipelined_pace_s),
                 "--seed", str(self.spec.seed * 1000 + 500 + i)], name)
        for i in range(1, self.spec.readers + 1):
            name = f"r{i}"
            self.readers[name] = self._spawn(
                ["read", "--topics", ",".join(self.spec.topics), "--nodes", ",".join(self.node_ids),
                 "--pace", str(self.spec.read_pace_s), "--window", str(self.spec.read_window),
                 "--seed", str(self.spec.seed * 1000 + 700 + i)], name)

    def poll(self) -> Progress:
        """Read what the processes appended since the last call. Returns: the running tally."""
        p = self.progress
        for name, tail in self._tails.items():
            for line in tail.new_lines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                kind, f = rec.get("type"), rec.get("f")
                if f == PUBLISH:
                    if kind == INVOKE:
                        p.invoked += 1
                    elif kind == OK:
                        p.ok += 1
                        p.last_ok_time = max(p.last_ok_time, float(rec.get("time", 0.0)))
                    elif kind == FAIL:
                        p.fail += 1
                    elif kind == INFO:
                        p.info += 1
                elif f == READ and kind == OK:
                    p.reads += 1
                    p.read_next[name] = max(p.read_next.get(name, 0), int(rec["offset"]) + 1)
                elif f == HISTORY and kind == OK:
                    consistency = str(rec.get("consistency"))
                    p.history_ok[consistency] = p.history_ok.get(consistency, 0) + 1
        return p

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def dead(self) -> dict[str, int]:
        """Returns: workload processes that exited, with their status."""
        procs = {**self.publishers, **self.readers, **self.subscribers}
        return {n: int(p.returncode) for n, p in procs.items() if p.poll() is not None}

    def _stop(self, procs: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def stop_publishers(self, timeout: float = 15.0) -> None:
        """SIGTERM the publishers and readers; each finishes the request under way (at most `total_s`)."""
        self._stop({**self.publishers, **self.readers}, timeout)
        self.poll()

    def wait_subscribers(self, ends: dict[str, int], timeout: float) -> dict[str, int]:
        """Wait until every subscriber delivered up to its topic's end offset (or the deadline).

        Returns: per subscriber still behind, how many messages it lacks (empty when all caught up).
        """
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            behind = {name: ends.get(topic, 0) - self.progress.read_next.get(name, 0)
                      for name, topic in self.sub_topic.items()}
            behind = {n: b for n, b in behind.items() if b > 0}
            if not behind or time.monotonic() >= deadline:
                return behind
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every workload process (publishers first)."""
        self.stop_publishers(timeout)
        self._stop(self.subscribers, timeout)
        self.poll()

    def kill_all(self) -> None:
        for p in [*self.publishers.values(), *self.readers.values(), *self.subscribers.values()]:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.workload",
                                     description="One workload process of the fault tests.")
    sub = parser.add_subparsers(dest="role", required=True)
    for name in ("publish", "subscribe", "read"):
        p = sub.add_parser(name)
        p.add_argument("--addrs", required=True, help="comma-separated client addresses")
        p.add_argument("--process", required=True, help="this process's name in the history")
        p.add_argument("--out", required=True, type=Path, help="JSONL history file to append to")
        p.add_argument("--seconds", type=float, default=600.0, help="stop after this long at most")
        p.add_argument("--per-try", type=float, default=0.5)
        p.add_argument("--total", type=float, default=5.0)
        if name == "subscribe":
            p.add_argument("--topic", required=True)
            continue
        p.add_argument("--topics", required=True, help="comma-separated topics")
        p.add_argument("--seed", type=int, default=0)
        if name == "publish":
            p.add_argument("--count", type=int, default=100_000, help="publish at most this many")
            p.add_argument("--pace", type=float, default=0.02, help="seconds between publishes (mean)")
            p.add_argument("--pipelined", action="store_true", help="use the pipelined, batching Publisher")
        else:
            p.add_argument("--nodes", required=True, help="comma-separated node ids, in the order of --addrs")
            p.add_argument("--pace", type=float, default=0.05, help="seconds between reads (mean)")
            p.add_argument("--window", type=int, default=8, help="messages per read")
    args = parser.parse_args(argv)
    addrs = [a for a in args.addrs.split(",") if a]
    if args.role == "publish":
        run = run_pipelined_publisher if args.pipelined else run_publisher
        run(addrs, [t for t in args.topics.split(",") if t], args.process, args.out, args.count,
                      args.seconds, args.pace, args.seed, args.per_try, args.total)
    elif args.role == "read":
        run_reader(addrs, [n for n in args.nodes.split(",") if n], [t for t in args.topics.split(",") if t],
                   args.process, args.out, args.seconds, args.pace, args.seed, args.window, args.per_try, args.total)
    else:
        run_subscriber(addrs, args.topic, args.process, args.out, args.seconds, args.per_try, args.total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
