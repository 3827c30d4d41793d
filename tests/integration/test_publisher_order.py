"""One Publisher's messages are stored in the order handed in, through resends, CPU starvation and
leader changes (the report: 20,000 plain PUBs from one `Publisher(window=1000, batch_size=1)` on a
loaded 2-core machine, and every subscriber saw the same forward jump, then 399 earlier messages).

The cause, shown by `test_a_node_that_becomes_leader_mid_stream_stores_no_ordered_seq_past_a_refused_one`:
a node answers NOT_LEADER to seqs 1..k of a client's stream, becomes leader, and takes k+1.. from the
rest of the same stream; the client's resend of 1..k then lands after them. A starved publisher makes
such a straddling stream likely (its burst reaches the node over many of the node's loop turns). The
fix: the Publisher sends every request ``ordered`` and sessions store an ordered request only as the
next seq (OUT_OF_SEQUENCE otherwise, docs/design.md section 3); and it never lets a later request out
on a connection after an earlier one that could not be sent on it.

What these tests hold:

* a node that became leader in the middle of a stream stores no ordered seq past one it refused,
  while a stream without ``ordered`` does (the hazard is real, and the flag is what closes it);
* against a stand-in node: the Publisher sends every request ``ordered`` with its client_id's lowest
  seq in flight as ``ack_floor``, answers OUT_OF_SEQUENCE by sending everything in flight again in
  seq order, and sends nothing on a connection after a request it could not send on it;
* 20,000 plain PUBs with a 50 ms per-try timeout (thousands of resends) beside CPU burners and live
  subscriptions: every future acknowledged at offsets 0..N-1, HISTORY holds exactly the messages in
  the order handed in, and every subscriber saw them in that order;
* the same with the publisher's own process starved (SIGSTOP/SIGCONT) while the leader is stopped
  again and again (a leader change mid-stream, several times): the reproduction of the report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
import zmq

from tests.conftest import REPO, ClusterHarness, wait_for
from tests.integration.test_election import agreed_leader
from tests.integration.test_publisher import read_all
from wiber import zmqcalls
from wiber.client import Client, Timeouts
from wiber.publisher import Publisher

TOTAL = 20_000


def payload(i: int) -> bytes:
    return b"%06d" % i


def stored(client: Client, topic: str) -> list[bytes]:
    """Returns: the data of every message of `topic` (linearizable HISTORY, paged to its end)."""
    return [m.data for m in read_all(client, topic)]


def first_disorder(datas: list[bytes], total: int) -> str | None:
    """Returns: None when `datas` is payload(0) .. payload(total - 1) in order, else where it is not."""
    expected = [payload(i) for i in range(total)]
    if datas == expected:
        return None
    jumps = [(k, datas[k - 1], datas[k]) for k in range(1, len(datas))
             if int(datas[k]) != int(datas[k - 1]) + 1]
    return f"{len(datas)} messages ({len(set(datas))} distinct) for {total}; first jumps {jumps[:4]}"


@contextmanager
def cpu_burners(n: int) -> Iterator[None]:
    """`n` processes spinning on a CPU each, killed by pid on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def pause_resume(pid: int, stop: threading.Event, running_s: float, stopped_s: float) -> None:
    """SIGSTOP/SIGCONT `pid` in turn (stopped `stopped_s`, running `running_s`) until `stop` or it exits;
    it is left running."""
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            stop.wait(stopped_s)
            os.kill(pid, signal.SIGCONT)
            stop.wait(running_s)
    except ProcessLookupError:
        return
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------- the node-level hazard


class RawStream:
    """PUBs of one client_id with seq 1, 2, 3, ... on a raw DEALER to one node; every answer kept."""

    def __init__(self, ctx: zmq.Context, addr: str, ordered: bool) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(addr)
        self.client_id = uuid.uuid4().hex
        self.ordered = ordered
        self.sent = 0
        self.answers: dict[int, str] = {}  # seq -> "ok" or the error code

    def send_next(self) -> None:
        self.sent += 1
        request: dict[str, Any] = {"op": "PUB", "topic": "raw", "data": b"%d" % self.sent, "id": self.sent,
                                   "client_id": self.client_id, "seq": self.sent, "ack_floor": 1}
        if self.ordered:
            request["ordered"] = True
        self.sock.send_multipart([b"", msgpack.packb(request)])

    def read(self) -> None:
        while self.sock.poll(0):
            reply = msgpack.unpackb(self.sock.recv_multipart()[-1])
            self.answers[reply["id"]] = "ok" if reply["ok"] else reply["error"]

    def led(self) -> bool:
        """Whether the node has answered as a leader (anything but NOT_LEADER)."""
        return any(answer != "NOT_LEADER" for answer in self.answers.values())

    def stored_past_a_refusal(self) -> list[int]:
        """Returns: the seqs stored although an earlier seq of this stream was answered NOT_LEADER."""
        refused = [seq for seq, answer in self.answers.items() if answer == "NOT_LEADER"]
        if not refused:
            return []
        return [seq for seq, answer in self.answers.items() if answer == "ok" and seq > min(refused)]


@pytest.mark.timeout(60)
def test_a_node_that_becomes_leader_mid_stream_stores_no_ordered_seq_past_a_refused_one(
        cluster_factory: Callable[..., ClusterHarness], zmq_ctx: zmq.Context) -> None:
    cluster = cluster_factory(3)
    leader, _ = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    followers = [n for n in cluster.nodes if n != leader]
    # Two streams to each follower, one ordered, one not: whichever follower wins, both of its
    # streams straddle the moment it becomes leader.
    streams = [RawStream(zmq_ctx, cluster.addr(n), ordered) for n in followers for ordered in (True, False)]
    cluster.signal(leader, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 20
        after_win = 0
        while after_win < 300 and time.monotonic() < deadline:
            for stream in streams:
                stream.send_next()
                stream.read()
            if any(stream.led() for stream in streams):
                after_win += 1
            time.sleep(0.001)  # a steady stream, as a starved publisher's burst reaches a node
        assert after_win >= 300, "no follower became leader within 20 s"

        def all_answered() -> bool:
            for stream in streams:
                stream.read()
            return all(len(stream.answers) == stream.sent for stream in streams)

        wait_for(all_answered, 10, "every request answered")
    finally:
        cluster.signal(leader, signal.SIGCONT)
        for stream in streams:
            stream.sock.close(linger=0)
    winners = [s for s in streams if s.led()]
    assert {s.ordered for s in winners} == {True, False}, "the winner's two streams"
    for stream in winners:
        assert "NOT_LEADER" in stream.answers.values(), "the stream did not start before the election"
        if stream.ordered:
            assert stream.stored_past_a_refusal() == [], "an ordered seq was stored past one refused"
            assert "OUT_OF_SEQUENCE" in stream.answers.values()
        else:  # what the Publisher's resend of the refused seqs would then land after
            assert stream.stored_past_a_refusal(), "without ordered, the new leader stores past the refusal"


# ---------------------------------------------------------------------------- the Publisher's side


class StandIn:
    """A node played by a ROUTER socket: what each connection sent, and answers by hand."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.addr = f"127.0.0.1:{port}"
        self.requests: list[tuple[bytes, dict[str, Any]]] = []  # (connection, request), in arrival order

    def take(self, count: int, publisher: Publisher) -> list[tuple[bytes, dict[str, Any]]]:
        """Returns: the next `count` requests (driving `publisher` while waiting)."""
        def arrived() -> bool:
            publisher.poll(0.005)
            while self.sock.poll(0):
                identity, _, body = self.sock.recv_multipart()
                self.requests.append((identity, msgpack.unpackb(body)))
            return len(self.requests) >= count

        wait_for(arrived, 10, f"{count} requests at the stand-in node", interval=0.005)
        taken, self.requests = self.requests[:count], self.requests[count:]
        return taken

    def answer(self, identity: bytes, request: dict[str, Any], error: str | None = None) -> None:
        if error is None:
            seq = request["seq"]
            reply = {"ok": True, "topic": request["topic"], "offset": seq - 1, "index": seq, "lamport": seq,
                     "ts": 1.0, "duplicate": False, "id": request["id"]}
        else:
            reply = {"ok": False, "error": error, "message": "stand-in", "id": request["id"]}
        self.sock.send_multipart([identity, b"", msgpack.packb(reply)])


@pytest.mark.timeout(30)
def test_out_of_sequence_makes_the_publisher_send_everything_in_flight_again_in_order(
        zmq_ctx: zmq.Context) -> None:
    node = StandIn(zmq_ctx)
    timeouts = Timeouts(per_try_s=5.0, total_s=20.0)
    with Publisher([node.addr], window=10, batch_size=1, timeouts=timeouts) as publisher:
        futures = [publisher.publish("t", payload(i)) for i in range(5)]
        first = node.take(5, publisher)
        assert [r["seq"] for _, r in first] == [1, 2, 3, 4, 5]
        assert all(r["ordered"] is True and r["ack_floor"] == 1 for _, r in first)
        assert len({r["client_id"] for _, r in first}) == 1
        node.answer(*first[0])  # seq 1 stored; seq 2 refused on its way, so 3 comes out of sequence
        node.answer(*first[2], error="OUT_OF_SEQUENCE")
        again = node.take(4, publisher)
        assert [r["seq"] for _, r in again] == [2, 3, 4, 5] and len({c for c, _ in again}) == 1
        assert again[0][0] != first[0][0], "sent again on a new connection"
        assert all(r["ack_floor"] == 2 for _, r in again)
        for identity, request in again:
            node.answer(identity, request)
        publisher.flush(timeout=10)
        assert [f.result(timeout=0).offset for f in futures] == [0, 1, 2, 3, 4]
    node.sock.close(linger=0)


@pytest.mark.timeout(30)
def test_nothing_goes_out_on_a_connection_after_a_request_that_could_not_be_sent(
        zmq_ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    node = StandIn(zmq_ctx)
    real_send = zmqcalls.send
    delimiters = 0

    def send(sock: zmq.Socket, frame: Any, flags: int) -> Any:
        nonlocal delimiters
        if frame == b"":
            delimiters += 1
            if delimiters == 2:  # the second request's first frame: as when its connection ends
                raise zmq.Again()
        return real_send(sock, frame, flags)

    monkeypatch.setattr(zmqcalls, "send", send)
    timeouts = Timeouts(per_try_s=0.3, total_s=20.0)
    with Publisher([node.addr], window=10, batch_size=1, timeouts=timeouts) as publisher:
        futures = [publisher.publish("t", payload(i)) for i in range(4)]
        first = node.take(1, publisher)
        assert [r["seq"] for _, r in first] == [1]
        node.answer(*first[0])
        # After the per-try timeout the requests in flight go out again, on a new connection, in order.
        again = node.take(3, publisher)
        assert [r["seq"] for _, r in again] == [2, 3, 4], "a later seq went out before the unsent one"
        assert again[0][0] != first[0][0]
        for identity, request in again:
            node.answer(identity, request)
        publisher.flush(timeout=10)
        assert [f.result(timeout=0).offset for f in futures] == [0, 1, 2, 3]
        assert node.requests == [], "nothing else was sent"
    node.sock.close(linger=0)


# ---------------------------------------------------------------------------- the Publisher under load


class Watcher:
    """A subscription in its own thread, reading `total` messages of a topic from offset 0."""

    def __init__(self, cluster: ClusterHarness, topic: str, total: int, node: str) -> None:
        others = [n for n in cluster.nodes if n != node]
        self.client = cluster.client([node, *others], per_try_s=1.0, total_s=30.0)
        self.subscription = self.client.subscribe(topic, from_offset=0)
        self.datas: list[bytes] = []
        self.total = total
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        deadline = time.monotonic() + 55
        while len(self.datas) < self.total and time.monotonic() < deadline:
            message = self.subscription.get(timeout=0.5)
            if message is not None:
                self.datas.append(message.data)


@pytest.mark.timeout(120)
def test_forced_resends_under_cpu_starvation_keep_the_order_handed_in(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    nodes = list(cluster.nodes)
    watchers = [Watcher(cluster, "load", TOTAL, nodes[k % len(nodes)]) for k in range(6)]
    with cpu_burners(2):
        # 50 ms per try on a loaded machine: the oldest request times out again and again, and each
        # time every request in flight is sent again to another node.
        with Publisher(cluster.addrs(), window=1000, batch_size=1,
                       timeouts=Timeouts(per_try_s=0.05, total_s=60.0)) as publisher:
            futures = [publisher.publish("load", payload(i)) for i in range(TOTAL)]
            publisher.flush(timeout=60)
            resends = publisher.resends
    assert resends > 0, "no resend was forced"
    failed = [(k, f.exception()) for k, f in enumerate(futures) if f.exception() is not None]
    assert not failed, f"{len(failed)} publishes failed, first {failed[:2]}"
    problem = first_disorder(stored(cluster.client(total_s=30.0), "load"), TOTAL)
    assert problem is None, f"HISTORY is not the order handed in ({resends} resends): {problem}"
    assert [f.result(timeout=0).offset for f in futures] == list(range(TOTAL))
    for k, watcher in enumerate(watchers):
        watcher.thread.join(timeout=60)
        problem = first_disorder(watcher.datas, TOTAL)
        assert problem is None, f"subscriber {k}: {problem}"


@pytest.mark.timeout(120)
def test_a_starved_publisher_keeps_the_order_across_leader_changes(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    args = [arg for addr in cluster.addrs() for arg in ("--addr", addr)]
    worker = subprocess.Popen([sys.executable, "-m", "tests.integration.publisher_worker", *args,
                               "--topic", "led", "--count", str(TOTAL), "--per-try", "0.1"],
                              stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    stop = threading.Event()
    changes: list[str] = []

    def change_leaders() -> None:
        # Stop the leader until the others agree on another, let it go on, again: at most 12 times.
        while not stop.is_set() and worker.poll() is None and len(changes) < 12:
            found = agreed_leader(cluster)
            if found is None:
                stop.wait(0.05)
                continue
            old = found[0]
            rest = [n for n in cluster.nodes if n != old]
            cluster.signal(old, signal.SIGSTOP)
            try:
                wait_for(lambda: (agreed_leader(cluster, rest) or ("", 0))[0] in rest, 10, "another leader")
                changes.append(old)
            finally:
                cluster.signal(old, signal.SIGCONT)
            stop.wait(0.5)

    # The publisher runs 2 ms in every 22: its bursts reach a node over many of the node's loop turns.
    threads = [threading.Thread(target=pause_resume, args=(worker.pid, stop, 0.002, 0.020), daemon=True),
               threading.Thread(target=change_leaders, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        out, _ = worker.communicate(timeout=90)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        for node in cluster.nodes:
            if cluster.nodes[node].running():
                cluster.signal(node, signal.SIGCONT)
    assert worker.returncode == 0, f"the publisher process failed: {out!r}"
    report = json.loads(out.strip().splitlines()[-1])
    assert changes, "the leader never changed while the publisher ran"
    assert report["failed"] == [] and report["acked"] == TOTAL, report
    wait_for(lambda: agreed_leader(cluster), 10, "a leader after the changes")
    problem = first_disorder(stored(cluster.client(total_s=30.0), "led"), TOTAL)
    assert problem is None, f"HISTORY is not the order handed in ({len(changes)} leader changes, {report}): " \
        f"{problem}"
    assert report["offsets_in_order"], report
