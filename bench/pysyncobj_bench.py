"""PySyncObj, three node processes on 127.0.0.1, a replicated counter (`bench.pysyncobj_node`).

PySyncObj has no client protocol: each workload runs inside the leader's process (no client hop,
as in BASELINES), driven over a small control socket. Its log is in memory: no journal, no fsync.

Two clusters, one after the other:

* ``appendEntriesUseBatch=False``: sequential synchronous appends (p50, p99, rate; with the default
  batching each synchronous commit waits for its 100 ms tick), pipelined appends, and failover.
* default settings (batching on): pipelined appends with callbacks, at most 1,000 outstanding.

Failover: kill -9 of the leader, then a survivor appends synchronously with a 0.25 s timeout until
one succeeds; the time from the kill to that answer. The killed node is restarted (empty: it has
no journal) and caught up between kills.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from bench.common import (
    CHILDREN,
    Bounds,
    Child,
    Progress,
    Section,
    free_port,
    median,
    percentile,
    rate,
    say,
    wait_for,
)

SYSTEM = "pysyncobj"
DURABILITY = "none (log in memory, no fsync)"
WINDOW = 1000
FAILOVER_TIMEOUT_S = 0.25


class SyncObjCluster:
    """Three `bench.pysyncobj_node` processes and their control sockets."""

    def __init__(self, batching: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pysyncobj-bench-"))
        self.batching = batching
        self.raft_addr = {f"p{i}": f"127.0.0.1:{free_port()}" for i in range(1, 4)}
        self.control = {name: free_port() for name in self.raft_addr}
        self.nodes: dict[str, Child] = {}
        self.ctx = zmq.Context()

    def name_of(self, raft_addr: str) -> str:
        return next(n for n, a in self.raft_addr.items() if a == raft_addr)

    def start(self, name: str | None = None) -> None:
        """Start one node (again), or all three."""
        for n in [name] if name else list(self.raft_addr):
            if n in self.nodes:
                self.nodes[n].start()
                continue
            argv = [sys.executable, "-m", "bench.pysyncobj_node", "--self", self.raft_addr[n],
                    "--control", str(self.control[n])]
            for other, addr in self.raft_addr.items():
                if other != n:
                    argv += ["--partner", addr]
            if not self.batching:
                argv.append("--no-batch")
            self.nodes[n] = CHILDREN.spawn(f"pysyncobj {n}", argv, self.root / f"{n}.log")

    def call(self, name: str, timeout: float, **msg: Any) -> dict[str, Any]:
        """Send one control request to a node. Returns: its reply. Raises: TimeoutError, RuntimeError."""
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"tcp://127.0.0.1:{self.control[name]}")
            sock.send(msgpack.packb(msg))
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"pysyncobj {name} did not answer {msg.get('op')} within {timeout:g} s")
            reply: dict[str, Any] = msgpack.unpackb(sock.recv(), raw=False)
        finally:
            sock.close(linger=0)
        if "error" in reply:
            raise RuntimeError(f"pysyncobj {name}: {reply['error']}")
        return reply

    def leader(self, timeout: float = 30.0) -> str:
        """Returns: the name of the leader every running node agrees on, once all are ready."""
        def agreed() -> str | None:
            statuses = [self.call(n, 1.0, op="status") for n, c in self.nodes.items() if c.running()]
            leaders = {s["leader"] for s in statuses}
            if len(leaders) == 1 and None not in leaders and all(s["ready"] for s in statuses):
                return self.name_of(leaders.pop())
            return None
        leader: str = wait_for(agreed, timeout, "PySyncObj nodes to agree on a leader")  # type: ignore[assignment]
        return leader

    def wait_caught_up(self, name: str, leader: str, timeout: float) -> None:
        target = int(self.call(leader, 1.0, op="status")["commit_idx"])
        wait_for(lambda: int(self.call(name, 1.0, op="status")["last_applied"]) >= target, timeout,
                 f"pysyncobj {name} to catch up to {target}")

    def close(self) -> None:
        for child in self.nodes.values():
            child.kill()
        self.ctx.term()
        shutil.rmtree(self.root, ignore_errors=True)


def _sequential(section: Section, cluster: SyncObjCluster, leader: str, bounds: Bounds, progress: bool) -> None:
    cluster.call(leader, 30, op="seq", count=50, seconds=10)  # warm-up
    with Progress("pysyncobj sequential appends (no batch)", bounds.sequential, progress) as bar:
        reply = cluster.call(leader, bounds.seconds + 30, op="seq", count=bounds.sequential, seconds=bounds.seconds)
        bar.update(len(reply["latencies"]))
    ms = [x * 1000 for x in reply["latencies"]]
    note = "sync append inside the leader (no client hop), appendEntriesUseBatch=False"
    section.add("seq_p50_ms", percentile(ms, 50), "ms", len(ms), better="lower", note=note)
    section.add("seq_p99_ms", percentile(ms, 99), "ms", len(ms), better="lower", note=note)
    section.add("seq_rate", rate(len(ms), reply["elapsed"]), "msg/s", len(ms), note=note)


def _pipelined(section: Section, cluster: SyncObjCluster, leader: str, bounds: Bounds, key: str,
               progress: bool) -> None:
    batching = "default batching" if cluster.batching else "appendEntriesUseBatch=False"
    with Progress(f"pysyncobj pipelined appends ({batching})", bounds.messages, progress) as bar:
        reply = cluster.call(leader, bounds.seconds + 30, op="pipe", count=bounds.messages, window=WINDOW,
                             seconds=bounds.seconds)
        bar.update(reply["acked"])
    failed = f"; {reply['failed']} failed" if reply["failed"] else ""
    section.add(key, rate(reply["acked"], reply["elapsed"]), "msg/s", reply["acked"],
                note=f"append with callbacks inside the leader, {WINDOW} outstanding, {batching}{failed}")


def _failover(section: Section, cluster: SyncObjCluster, bounds: Bounds, progress: bool) -> None:
    times: list[float] = []
    patience = max(30.0, bounds.seconds)
    with Progress("pysyncobj failover (kill -9 leader)", bounds.kills, progress, unit="kill") as bar:
        for _ in range(bounds.kills):
            leader = cluster.leader()
            survivor = next(n for n in cluster.raft_addr if n != leader)
            t0 = time.monotonic()
            cluster.nodes[leader].kill()
            reply = cluster.call(survivor, patience + 5, op="until_ack", try_s=FAILOVER_TIMEOUT_S, seconds=patience)
            if reply["ok"]:
                times.append(time.monotonic() - t0)
            else:
                say(f"  pysyncobj failover: no ack within {patience:g} s of killing {leader}")
            cluster.start(leader)
            new_leader = cluster.leader()
            cluster.wait_caught_up(leader, new_leader, 60)
            bar.update()
    section.add("failover_s", median(times), "s", len(times), better="lower",
                note=f"kill -9 leader -> next sync append on a survivor (timeout {FAILOVER_TIMEOUT_S} s; "
                     f"default election timeouts 0.4-1.4 s)", raw=tuple(times))


def _with_cluster(batching: bool, body: Any) -> None:
    cluster = SyncObjCluster(batching)
    try:
        cluster.start()
        body(cluster, cluster.leader(30))
    except BaseException:
        for name, child in cluster.nodes.items():
            say(f"----- pysyncobj {name} log tail -----\n{child.log_tail()}")
        raise
    finally:
        cluster.close()


def run(bounds: Bounds, progress: bool = True) -> Section:
    """Run both PySyncObj clusters' workloads. Returns: the PySyncObj section."""
    section = Section(SYSTEM, "PySyncObj 3 nodes", DURABILITY)

    def unbatched(cluster: SyncObjCluster, leader: str) -> None:
        _sequential(section, cluster, leader, bounds, progress)
        _pipelined(section, cluster, leader, bounds, "pipelined_nobatch_rate", progress)
        _failover(section, cluster, bounds, progress)

    def batched(cluster: SyncObjCluster, leader: str) -> None:
        _pipelined(section, cluster, leader, bounds, "pipelined_rate", progress)

    _with_cluster(False, unbatched)
    _with_cluster(True, batched)
    return section
