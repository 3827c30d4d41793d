"""`python -m bench --scale`: Wiber and NATS JetStream holding millions of retained messages, side by side.

The regular benchmark measures speed on small, fresh logs. This workload measures what a large
retained log costs: memory, restarts, checkpoints, reads of the old data and a rejoining replica.
Each system gets a fresh 3-node cluster on 127.0.0.1 (temporary directories, children killed by
pid) per case, is filled with the same data and goes through the same phases.

One topic of N retained 100-byte messages (``--scale-messages``, a list runs one case per N):

(a) fill: Wiber ``Publisher(batch_size=1000, linger_s=0.002, window=100)``; NATS ``publish_async``
    with 1,000 acks outstanding. Messages per second, first publish to last ack.
(b) memory: each node's ``VmRSS`` and ``RssAnon`` (``/proc/PID/status``) once every replica holds
    the fill, minus the same figures of that process idle before the fill. Anonymous RSS (heap)
    is the target figure: VmRSS also counts file pages mapped in.
(c) restart: kill -9 of every node, start them all again; seconds from the start to the next
    acknowledged publish.
(e) cold replay, right after that restart: HISTORY pages of 1,000 from offset 0 on a follower
    (local reads), or a NATS pull consumer fetching 1,000 at a time; messages per second. The OS
    page cache is not dropped (that would need root and disturb the machine's other users).
(d) checkpointing under load: Wiber's nodes are restarted with ``snapshot_every`` small (and
    ``snapshot_bytes`` small when this Wiber knows that key), then one `Client` publishes one
    message at a time, each acknowledged, for ``--scale-seq-seconds``: p50, p99 and max latency,
    and the leader changes, counted as the rise of the highest Raft term of the nodes (STATUS)
    from before to after: every election takes a new term, and PreVote keeps a term from moving
    without one. NATS has no setting for how often a stream's Raft group compacts; it runs as
    configured, and its term is the stream group's, from each server's ``/raftz``.
(f) wiped follower: kill -9 of one follower, its data directory deleted, started again; seconds
    until its STATUS ``applied_index`` and ``commit_index`` reach the leader's ``commit_index``.
    NATS: a server that leads neither the stream nor the meta group, its store directory deleted;
    seconds until that server's own view of the stream (``/jsz?streams=true`` on its monitoring
    port) shows the leader's last sequence.

The phases run in the order listed: the replay is the first read after the kill -9 restart, and
(d) restarts the nodes once more, untimed, with its configuration. NATS runs twice, with
``sync_interval: always`` and with its default sync, as in the regular benchmark; its clients are
nats-py, so its fill and replay rates include a Python client's cost, as Wiber's do.

Many topics (``--scale-topics T --scale-per-topic M``, default 100,000 x 10; 0 skips it): Wiber
topics ``t.<n>``, NATS subjects ``t.<n>`` of one stream (subjects ``t.>``), filled topic after
topic; anonymous RSS above idle, files and bytes in each node's data directory, restart to next
ack, and the time to read one whole topic (median of 100 random topics): a HISTORY from offset 0
on a follower, or an ephemeral pull consumer filtered on the subject, created and fetched until
it has the topic's M messages.

Every load loop is bounded by its count and by a deadline (``--seconds``, default 600 s per phase
here; the sequential phase by ``--scale-seq-seconds``). Results: `run` returns the "scale" section
of the JSON document and the printed table (Wiber / NATS ratios where a ratio means something).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    CHILDREN,
    PAYLOAD,
    PAYLOAD_BYTES,
    Progress,
    Section,
    free_port,
    median,
    percentile,
    rate,
    say,
    wait_for,
)

SYSTEMS: tuple[str, ...] = ("wiber", "nats_always", "nats_default")
LABELS: dict[str, str] = {"wiber": "Wiber", "nats_always": "NATS alw", "nats_default": "NATS def"}

#: Subjects (NATS) and topics (Wiber) of the single-topic case: the fill, the restart probe, the sequential load.
FILL_TOPIC = "s.fill"
RESTART_TOPIC = "s.restart"
SEQ_TOPIC = "s.seq"
#: Prefix of the many-topics case's topics: ``t.0`` ... ``t.<T-1>``.
MANY_PREFIX = "t."

#: Wiber's fill publisher: its fastest client settings, `Publisher(batch_size=1000, linger_s=0.002, window=100)`.
WIBER_BATCH = 1000
WIBER_LINGER_S = 0.002
WIBER_WINDOW = 100
#: NATS publish_async acks outstanding during a fill (as the regular benchmark's pipelined row).
NATS_PENDING = 1000
#: Messages per HISTORY page / NATS fetch in the replay.
PAGE = 1000

#: Wiber cluster settings for "checkpoint often" (phase d); a key this Wiber's config does not know is left out.
CHECKPOINT_OFTEN: dict[str, int] = {"snapshot_every": 200, "snapshot_bytes": 1 << 20}

#: Upper bound of the sequential phase's count (its deadline normally ends it first).
SEQ_MAX = 200_000
#: Topics sampled for the one-topic read latency of the many-topics case.
HISTORY_SAMPLES = 100
#: Per-try timeout of the clients that wait for a restarted cluster.
RESTART_PER_TRY_S = 0.5


# ---------------------------------------------------------------------------------------- settings, results


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    """What one ``--scale`` run does.

    messages: N of each single-topic case, one case per value.
    topics, per_topic: the many-topics case (T topics of M messages); 0 skips it.
    seconds: the deadline of any one phase (a fill, a restart, a replay, a catch-up).
    seq_seconds: how long the sequential publisher of phase (d) runs.
    systems: which of `SYSTEMS` run.
    """

    messages: tuple[int, ...] = (3_000_000,)
    topics: int = 100_000
    per_topic: int = 10
    seconds: float = 600.0
    seq_seconds: float = 10.0
    systems: tuple[str, ...] = SYSTEMS
    progress: bool = True
    seed: int = 1


@dataclass(frozen=True, slots=True)
class Rss:
    """A process's resident memory in KiB: all of it (VmRSS) and its anonymous part (RssAnon)."""

    vm_kib: int
    anon_kib: int


@dataclass(slots=True)
class ScaleResult:
    """One system's figures for one case, with per-node details that do not fit in one figure."""

    section: Section
    case: str
    many: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        s = self.section
        return {"system": s.system, "label": s.label, "durability": s.durability, "case": self.case,
                "error": s.error, "seconds": round(s.seconds, 1), "figures": [f.as_dict() for f in s.figures],
                "details": self.details}


def read_rss(pid: int) -> Rss:
    """Returns: VmRSS and RssAnon of process `pid` from /proc/PID/status."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                found[key] = int(rest.split()[0])
    return Rss(found["VmRSS"], found["RssAnon"])


def dir_usage(path: Path) -> tuple[int, int]:
    """Returns: (number of files, bytes allocated on disk) under `path`, recursively."""
    files = 0
    allocated = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            files += 1
            allocated += st.st_blocks * 512
    return files, allocated


def _mib(kib_or_bytes: float, kib: bool = True) -> float:
    return kib_or_bytes / 1024 if kib else kib_or_bytes / (1024 * 1024)


def _record_memory(result: ScaleResult, idle: dict[str, Rss], after: dict[str, Rss], roles: dict[str, str],
                   messages: int) -> None:
    """Add the RSS figures (max node) and every node's before/after to `result`."""
    nodes: dict[str, Any] = {}
    for name in idle:
        nodes[name] = {"role": roles.get(name, "?"),
                       "idle_vm_mib": round(_mib(idle[name].vm_kib), 1),
                       "idle_anon_mib": round(_mib(idle[name].anon_kib), 1),
                       "after_vm_mib": round(_mib(after[name].vm_kib), 1),
                       "after_anon_mib": round(_mib(after[name].anon_kib), 1),
                       "delta_vm_mib": round(_mib(after[name].vm_kib - idle[name].vm_kib), 1),
                       "delta_anon_mib": round(_mib(after[name].anon_kib - idle[name].anon_kib), 1)}
    result.details["rss"] = nodes
    anon = max(n["delta_anon_mib"] for n in nodes.values())
    vm = max(n["delta_vm_mib"] for n in nodes.values())
    note = "; ".join(f"{name} ({n['role']}) anon {n['delta_anon_mib']:.1f} MiB, VmRSS {n['delta_vm_mib']:.1f} MiB"
                     for name, n in nodes.items())
    result.section.add("rss_anon_delta_mib", anon, "MiB", len(nodes), better="lower",
                       note=f"max over nodes of RssAnon after - idle; {note}")
    result.section.add("rss_vm_delta_mib", vm, "MiB", len(nodes), better="lower",
                       note="max over nodes of VmRSS after - idle")
    anon_kib = max(after[name].anon_kib - idle[name].anon_kib for name in idle)
    result.section.add("rss_anon_per_msg_b", anon_kib * 1024 / messages if messages else None, "B",
                       messages, better="lower", note="the max node's anonymous RSS above idle / messages stored")


def _record_disk(result: ScaleResult, dirs: dict[str, Path]) -> None:
    """Add files and allocated bytes of each node's data directory (max node as the figure)."""
    usage = {name: dir_usage(path) for name, path in dirs.items()}
    result.details["disk"] = {name: {"files": files, "mib": round(_mib(size, kib=False), 1)}
                              for name, (files, size) in usage.items()}
    result.section.add("files", max(f for f, _ in usage.values()), "files", len(usage), better="lower",
                       note="files in a node's data directory (max over nodes)")
    result.section.add("disk_mib", max(_mib(s, kib=False) for _, s in usage.values()), "MiB", len(usage),
                       better="lower", note="bytes allocated under a node's data directory (max over nodes)")


def _latencies(result: ScaleResult, latencies: list[float], failed: int) -> None:
    ms = [x * 1000 for x in latencies]
    note = f"one at a time, each acknowledged{f'; {failed} failed' if failed else ''}"
    result.section.add("seq_p50_ms", percentile(ms, 50), "ms", len(ms), better="lower", note=note)
    result.section.add("seq_p99_ms", percentile(ms, 99), "ms", len(ms), better="lower", note=note)
    result.section.add("seq_max_ms", max(ms) if ms else None, "ms", len(ms), better="lower", note=note)
    result.section.add("seq_count", float(len(ms)), "msg", len(ms), note=note)


# ---------------------------------------------------------------------------------------- Wiber


def wiber_checkpoint_settings() -> dict[str, int]:
    """Returns: the `CHECKPOINT_OFTEN` keys this Wiber's `ClusterConfig` has (a config refuses unknown keys)."""
    from wiber.config import ClusterConfig
    known = {f.name for f in dataclasses.fields(ClusterConfig)}
    return {k: v for k, v in CHECKPOINT_OFTEN.items() if k in known}


class WiberScale:
    """One Wiber cluster of a case, and the phases run on it."""

    def __init__(self, settings: ScaleSettings, result: ScaleResult) -> None:
        from bench.wiber_bench import WiberCluster
        self.settings = settings
        self.result = result
        self.cluster = WiberCluster()

    # -- helpers

    @property
    def section(self) -> Section:
        return self.result.section

    def addrs(self, first: str | None = None) -> list[str]:
        """Returns: every node's client address, `first`'s first."""
        order = ([first] if first else []) + [n for n in self.cluster.addr if n != first]
        return [self.cluster.addr[n] for n in order]

    def data_dir(self, node_id: str) -> Path:
        return self.cluster.root / "data" / node_id

    def rss(self) -> dict[str, Rss]:
        return {nid: read_rss(child.pid) for nid, child in self.cluster.nodes.items()}

    def status(self, node_id: str) -> dict[str, Any]:
        """Returns: STATUS of one node, waiting (up to the phase deadline) while it is busy or starting."""
        reply: dict[str, Any] = wait_for(lambda: self.cluster.request(node_id, "STATUS", timeout=5.0),
                                         self.settings.seconds, f"STATUS of {node_id}")
        return reply

    def wait_all_caught_up(self) -> str:
        """Wait until every follower has applied the leader's commit index. Returns: the leader."""
        leader = self.cluster.leader(self.settings.seconds)
        target = int(self.status(leader)["commit_index"])
        for follower in self.cluster.followers(leader):
            def applied(nid: str = follower) -> bool:
                return int(self.cluster.request(nid, "STATUS", timeout=5.0)["applied_index"]) >= target

            wait_for(applied, self.settings.seconds, f"{follower} to apply index {target}")
        return leader

    def rewrite_config(self, settings: dict[str, Any]) -> None:
        """Set `settings` in the cluster section of the YAML (nodes read it when next started), and check it."""
        from wiber.config import load_config
        doc = yaml.safe_load(self.cluster.config_path.read_text())
        doc["cluster"].update(settings)
        self.cluster.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        load_config(str(self.cluster.config_path))  # raises ConfigError naming the key this Wiber refuses
        self.result.details["config_cluster"] = doc["cluster"]

    def restart_all(self, topic: str) -> float:
        """kill -9 every node, start them all. Returns: seconds from the start to the next acknowledged publish."""
        from wiber.client import Client, Timeouts
        for child in self.cluster.nodes.values():
            child.kill()
        t0 = time.monotonic()
        self.cluster.start()
        with Client(self.addrs(), Timeouts(per_try_s=RESTART_PER_TRY_S, total_s=self.settings.seconds)) as client:
            client.publish(topic, PAYLOAD, ts=time.time())  # an explicit ts: no clock-sync PINGs first
        return time.monotonic() - t0

    # -- phases

    def start(self) -> str:
        self.cluster.start()
        leader = self.cluster.leader(self.settings.seconds)
        for nid in self.cluster.addr:
            self.status(nid)
        self.result.details["config_cluster"] = yaml.safe_load(self.cluster.config_path.read_text())["cluster"]
        return leader

    def fill(self, leader: str, plan: list[tuple[str, int]], total: int, desc: str) -> tuple[int, str]:
        """Phase (a). Returns: (messages acknowledged, the leader once every follower caught up)."""
        from bench.wiber_bench import publish_many
        acked, elapsed, failed = publish_many(self.addrs(leader), plan, self.settings.seconds, WIBER_WINDOW,
                                              WIBER_BATCH, WIBER_LINGER_S, desc, self.settings.progress,
                                              say_deadline=True)
        self.result.details["fill"] = {"acked": acked, "total": total, "failed": failed, "seconds": round(elapsed, 3)}
        self.section.add("fill_rate", rate(acked, elapsed), "msg/s", acked,
                         note=f"Publisher(batch_size={WIBER_BATCH}, linger_s={WIBER_LINGER_S}, window={WIBER_WINDOW}); "
                              f"{acked} of {total} acked"
                              f"{f', {failed} failed' if failed else ''}")
        say(f"  wiber: {acked} acked in {elapsed:.1f} s; waiting for every follower to apply them")
        return acked, self.wait_all_caught_up()

    def memory_and_disk(self, idle: dict[str, Rss], leader: str, messages: int) -> None:
        """Phase (b), and the data directories' files and bytes."""
        roles = {nid: ("leader" if nid == leader else "follower") for nid in self.cluster.addr}
        _record_memory(self.result, idle, self.rss(), roles, messages)
        _record_disk(self.result, {nid: self.data_dir(nid) for nid in self.cluster.addr})

    def restart(self) -> None:
        """Phase (c)."""
        seconds = self.restart_all(RESTART_TOPIC)
        self.section.add("restart_s", seconds, "s", 1, better="lower",
                         note="kill -9 of every node, start -> next acked publish "
                              f"(Client per-try {RESTART_PER_TRY_S} s, any node)")

    def replay(self, topic: str, count: int) -> None:
        """Phase (e): HISTORY pages of `PAGE` from offset 0 on a follower, right after the restart."""
        from wiber.client import Client, Timeouts
        leader = self.wait_all_caught_up()
        follower = self.cluster.followers(leader)[-1]
        read = 0
        offset = 0
        with Client(self.cluster.addr[follower], Timeouts(per_try_s=30.0, total_s=60.0)) as client:
            deadline = time.monotonic() + self.settings.seconds
            start = time.perf_counter()
            with Progress(f"wiber cold HISTORY replay on {follower}", count, self.settings.progress) as bar:
                while read < count and time.monotonic() < deadline:
                    history = client.history(topic, from_offset=offset, limit=PAGE)
                    if not history.messages:
                        break
                    read += len(history.messages)
                    offset = history.next_offset
                    bar.update(len(history.messages))
            elapsed = time.perf_counter() - start
        self.section.add("replay_rate", rate(read, elapsed), "msg/s", read,
                         note=f"HISTORY limit={PAGE} from offset 0, local, on follower {follower}, first read "
                              f"after the restart; {read} of {count} read")

    def sequential(self) -> None:
        """Phase (d): restart with checkpoint-often settings, then one acknowledged publish at a time."""
        from wiber.client import Client, Timeouts
        checkpoint = wiber_checkpoint_settings()
        for child in self.cluster.nodes.values():
            child.kill()
        self.rewrite_config(checkpoint)
        self.cluster.start()
        leader = self.wait_all_caught_up()
        before = {nid: self.status(nid) for nid in self.cluster.addr}
        latencies: list[float] = []
        failed = 0
        with Client(self.addrs(leader), Timeouts(per_try_s=5.0, total_s=30.0)) as client:
            for _ in range(20):  # connection, clock sync, the leader's caches
                client.publish(SEQ_TOPIC, PAYLOAD)
            deadline = time.monotonic() + self.settings.seq_seconds
            with Progress("wiber sequential publish, checkpoint often", None, self.settings.progress) as bar:
                while len(latencies) < SEQ_MAX and time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    try:
                        client.publish(SEQ_TOPIC, PAYLOAD)
                    except Exception as exc:  # noqa: BLE001 - count it and go on until the deadline
                        failed += 1
                        say(f"  wiber sequential: {exc!r}")
                        continue
                    latencies.append(time.perf_counter() - t0)
                    bar.update()
        after = {nid: self.status(nid) for nid in self.cluster.addr}
        _latencies(self.result, latencies, failed)
        term_before = max(int(s["term"]) for s in before.values())
        term_after = max(int(s["term"]) for s in after.values())
        leaders = sorted({str(s["leader"]) for s in after.values()})
        self.section.add("leader_changes", float(term_after - term_before), "terms", 1, better="lower",
                         note=f"highest term {term_before} -> {term_after}; leader {leader} before, "
                              f"{'/'.join(leaders)} after; its snapshot_index {before[leader].get('snapshot_index')}"
                              f" -> {after[leader].get('snapshot_index')}; settings {checkpoint}")
        self.result.details["sequential"] = {
            "checkpoint_settings": checkpoint,
            "snapshot_index": {nid: [before.get(nid, {}).get("snapshot_index"), after[nid].get("snapshot_index")]
                               for nid in self.cluster.addr},
            "term": [term_before, term_after], "leader_before": leader, "leader_after": leaders}

    def wipe_follower(self) -> None:
        """Phase (f): kill a follower, delete its data directory, start it, time until it has caught up."""
        leader = self.wait_all_caught_up()
        follower = self.cluster.followers(leader)[-1]
        self.cluster.kill(follower)
        shutil.rmtree(self.data_dir(follower))
        target = int(self.status(leader)["commit_index"])
        t0 = time.monotonic()
        self.cluster.start(follower)

        def caught_up() -> bool:
            status = self.cluster.request(follower, "STATUS", timeout=1.0)
            return int(status["applied_index"]) >= target and int(status["commit_index"]) >= target

        wait_for(caught_up, self.settings.seconds, f"wiped {follower} to reach index {target}", interval=0.02)
        seconds = time.monotonic() - t0
        self.section.add("wipe_catchup_s", seconds, "s", 1, better="lower",
                         note=f"follower {follower}: kill -9, data dir deleted, start -> STATUS applied_index and "
                              f"commit_index >= leader's commit_index {target}")

    def topic_reads(self, topics: int, per_topic: int) -> None:
        """The many-topics case's read: one whole topic by HISTORY from offset 0 on a follower, timed."""
        from wiber.client import Client, Timeouts
        leader = self.wait_all_caught_up()
        follower = self.cluster.followers(leader)[-1]
        sample = random.Random(self.settings.seed).sample(range(topics), min(HISTORY_SAMPLES, topics))
        times: list[float] = []
        short = 0
        deadline = time.monotonic() + self.settings.seconds
        with Client(self.cluster.addr[follower], Timeouts(per_try_s=10.0, total_s=30.0)) as client:
            client.history(RESTART_TOPIC, from_offset=0, limit=1)  # warm-up: connection
            for k in sample:
                if time.monotonic() >= deadline:
                    break
                t0 = time.perf_counter()
                read = 0
                offset = 0
                while read < per_topic:
                    history = client.history(f"{MANY_PREFIX}{k}", from_offset=offset, limit=min(PAGE, per_topic))
                    if not history.messages:
                        break
                    read += len(history.messages)
                    offset = history.next_offset
                times.append(time.perf_counter() - t0)
                short += read < per_topic
        ms = [t * 1000 for t in times]
        note = (f"HISTORY from offset 0 of one topic ({per_topic} msgs), local, on follower {follower}; "
                f"{len(ms)} random topics{f'; {short} came back short' if short else ''}")
        self.section.add("topic_read_p50_ms", median(ms), "ms", len(ms), better="lower", note=note)
        self.section.add("topic_read_p99_ms", percentile(ms, 99), "ms", len(ms), better="lower", note=note)

    def close(self) -> None:
        self.cluster.close()

    def log_tails(self) -> None:
        for nid, child in self.cluster.nodes.items():
            say(f"----- wiber {nid} log tail -----\n{child.log_tail()}")


def _run_wiber_single(settings: ScaleSettings, result: ScaleResult, n: int) -> None:
    w = WiberScale(settings, result)
    try:
        say(f"scale wiber N={n}: starting 3 nodes")
        leader = w.start()
        idle = w.rss()
        say(f"scale wiber N={n}: (a) fill")
        acked, leader = w.fill(leader, [(FILL_TOPIC, n)], n, f"wiber fill {n}")
        say(f"scale wiber N={n}: (b) RSS and data directories")
        w.memory_and_disk(idle, leader, acked)
        say(f"scale wiber N={n}: (c) kill -9 all, restart -> next ack")
        w.restart()
        say(f"scale wiber N={n}: (e) cold HISTORY replay")
        w.replay(FILL_TOPIC, acked)
        say(f"scale wiber N={n}: (d) restart with {wiber_checkpoint_settings()}, sequential publish "
            f"{settings.seq_seconds:g} s")
        w.sequential()
        say(f"scale wiber N={n}: (f) wiped follower catch-up")
        w.wipe_follower()
    except BaseException:
        w.log_tails()
        raise
    finally:
        w.close()


def _run_wiber_many(settings: ScaleSettings, result: ScaleResult) -> None:
    t, m = settings.topics, settings.per_topic
    w = WiberScale(settings, result)
    try:
        say(f"scale wiber {t}x{m}: starting 3 nodes")
        leader = w.start()
        idle = w.rss()
        say(f"scale wiber {t}x{m}: fill")
        plan = [(f"{MANY_PREFIX}{k}", m) for k in range(t)]
        acked, leader = w.fill(leader, plan, t * m, f"wiber fill {t} topics x {m}")
        say(f"scale wiber {t}x{m}: RSS and data directories")
        w.memory_and_disk(idle, leader, acked)
        say(f"scale wiber {t}x{m}: kill -9 all, restart -> next ack")
        w.restart()
        say(f"scale wiber {t}x{m}: read {min(HISTORY_SAMPLES, t)} random topics")
        w.topic_reads(t, m)
    except BaseException:
        w.log_tails()
        raise
    finally:
        w.close()


# ---------------------------------------------------------------------------------------- NATS


def _nats_imports() -> Any:
    """Returns: the bench.nats_bench module (imported lazily: a missing nats-py fails only NATS's columns)."""
    from bench import nats_bench
    return nats_bench


class NatsScale:
    """One 3-server JetStream cluster of a case (monitoring ports on), and the phases run on it."""

    def __init__(self, settings: ScaleSettings, result: ScaleResult, sync_always: bool) -> None:
        nb = _nats_imports()
        self.nb = nb
        self.settings = settings
        self.result = result
        self.cluster = nb.NatsCluster(sync_always)
        self.http_port = {name: free_port() for name in self.cluster.names}
        for name in self.cluster.names:  # the monitoring endpoint: /jsz (per-server stream state), /raftz (terms)
            conf = self.cluster.root / f"{name}.conf"
            conf.write_text(conf.read_text() + f'http: "127.0.0.1:{self.http_port[name]}"\n')
        self.nc: Any = None
        self.js: Any = None

    @property
    def section(self) -> Section:
        return self.result.section

    def store_dir(self, name: str) -> Path:
        return Path(self.cluster.root) / name / "store"

    def monitor(self, name: str, path: str) -> dict[str, Any]:
        """Returns: the JSON of one server's monitoring endpoint `path`."""
        url = f"http://127.0.0.1:{self.http_port[name]}{path}"
        with urllib.request.urlopen(url, timeout=2.0) as reply:  # noqa: S310 - a fixed http://127.0.0.1 URL
            doc: dict[str, Any] = json.loads(reply.read())
        return doc

    def local_stream(self, name: str) -> dict[str, Any] | None:
        """Returns: server `name`'s own stream_detail of the stream (its state, raft group), or None."""
        doc = self.monitor(name, "/jsz?streams=true")
        for account in doc.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream.get("name") == self.nb.STREAM:
                    return dict(stream)
        return None

    def last_seqs(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name in self.cluster.names:
            try:
                stream = self.local_stream(name)
                out[name] = None if stream is None else int(stream["state"]["last_seq"])
            except Exception:  # noqa: BLE001 - a server that is down or busy
                out[name] = None
        return out

    def stream_term(self) -> tuple[int | None, dict[str, Any]]:
        """Returns: the highest term of the stream's Raft group over the servers (from /raftz), and each server's."""
        per: dict[str, Any] = {}
        for name in self.cluster.names:
            try:
                stream = self.local_stream(name)
                group = stream and (stream.get("stream_raft_group") or (stream.get("cluster") or {}).get("raft_group"))
                groups = self.monitor(name, "/raftz?acc=%24G").get("$G", {})
                node = groups.get(group) if group else None
                per[name] = None if node is None else {"term": int(node["term"]), "leader": node.get("leader"),
                                                       "state": node.get("state")}
            except Exception as exc:  # noqa: BLE001 - report what could not be read
                per[name] = {"error": repr(exc)}
        terms = [p["term"] for p in per.values() if p and "term" in p]
        return (max(terms) if terms else None), per

    def rss(self) -> dict[str, Rss]:
        return {name: read_rss(child.pid) for name, child in self.cluster.servers.items()}

    async def connect(self, names: list[str] | None = None) -> None:
        await self.disconnect()
        self.nc = await self.nb.connect([self.cluster.url(n) for n in names or self.cluster.names])
        self.js = self.nc.jetstream()

    async def disconnect(self) -> None:
        if self.nc is not None:
            try:
                await self.nc.close()
            finally:
                self.nc = None
                self.js = None

    async def leader(self) -> str:
        """Returns: the stream leader, once it has two current replicas."""
        leader: str = await self.nb._retry("a healthy stream", self.settings.seconds,
                                           lambda: self.nb._stream_healthy(self.js))
        return leader

    def meta_leaders(self) -> dict[str, str | None]:
        """Returns: the JetStream meta leader each server knows of (None: none yet, or no answer)."""
        out: dict[str, str | None] = {}
        for name in self.cluster.names:
            try:
                out[name] = (self.monitor(name, "/jsz").get("meta_cluster") or {}).get("leader") or None
            except Exception:  # noqa: BLE001 - a server that is down or busy
                out[name] = None
        return out

    async def wait_synced(self) -> str:
        """Wait until every server knows the meta leader and its own copy of the stream has the leader's
        last sequence (after a restart a stream can take PubAcks before the meta group, which creates
        consumers, has a leader). Returns: the stream leader."""
        leader = await self.leader()
        info = await self.js.stream_info(self.nb.STREAM)
        target = int(info.state.last_seq)
        deadline = time.monotonic() + self.settings.seconds
        while True:
            seqs = self.last_seqs()
            metas = self.meta_leaders()
            if all(s is not None and s >= target for s in seqs.values()) and all(metas.values()):
                return leader
            if time.monotonic() >= deadline:
                raise TimeoutError(f"NATS servers did not reach last_seq {target} and a meta leader within "
                                   f"{self.settings.seconds:g} s: {seqs}, {metas}")
            await asyncio.sleep(0.05)

    # -- phases

    async def start(self) -> str:
        from nats.js.api import StorageType, StreamConfig
        self.cluster.start()
        await self.connect()
        await self.nb._retry("JetStream to be ready", self.settings.seconds, self.js.account_info)
        await self.nb._retry("the stream to be created", self.settings.seconds, lambda: self.js.add_stream(
            StreamConfig(name=self.nb.STREAM, subjects=["s.>", f"{MANY_PREFIX}>"], num_replicas=3,
                         storage=StorageType.FILE)))
        return await self.leader()

    async def fill(self, plan: list[tuple[str, int]], total: int, desc: str) -> tuple[int, str]:
        """Phase (a). Returns: (messages acknowledged, the stream leader once every server has them)."""
        acked, elapsed, failed = await self.nb.publish_async(self.nc, plan, self.settings.seconds, desc,
                                                             self.settings.progress, pending=NATS_PENDING,
                                                             say_deadline=True)
        self.result.details["fill"] = {"acked": acked, "total": total, "failed": failed, "seconds": round(elapsed, 3)}
        self.section.add("fill_rate", rate(acked, elapsed), "msg/s", acked,
                         note=f"publish_async, {NATS_PENDING} acks outstanding; {acked} of {total} acked"
                              f"{f', {failed} failed' if failed else ''}")
        say(f"  {self.section.system}: {acked} acked in {elapsed:.1f} s; waiting for every server to store them")
        return acked, await self.wait_synced()

    def memory_and_disk(self, idle: dict[str, Rss], leader: str, messages: int) -> None:
        roles = {name: ("stream leader" if name == leader else "follower") for name in self.cluster.names}
        _record_memory(self.result, idle, self.rss(), roles, messages)
        _record_disk(self.result, {name: self.store_dir(name) for name in self.cluster.names})

    async def restart(self) -> None:
        """Phase (c): kill -9 every server, start them, time until a publish gets its PubAck."""
        await self.disconnect()
        for child in self.cluster.servers.values():
            child.kill()
        t0 = time.monotonic()
        self.cluster.start()  # returns once every client port accepts connections
        await self.connect()
        deadline = t0 + self.settings.seconds
        last: BaseException | None = None
        while True:
            try:
                await self.js.publish(RESTART_TOPIC, PAYLOAD, timeout=RESTART_PER_TRY_S)
                break
            except Exception as exc:  # noqa: BLE001 - no responders, timeout, unavailable: the stream is recovering
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no PubAck within {self.settings.seconds:g} s of the restart (last: {last!r})")
            await asyncio.sleep(0.01)
        self.section.add("restart_s", time.monotonic() - t0, "s", 1, better="lower",
                         note=f"kill -9 of every server, start -> next PubAck (publish timeout {RESTART_PER_TRY_S} s)")

    async def replay(self, subject: str, count: int) -> None:
        """Phase (e): a pull consumer (ack none) fetching `PAGE` at a time from the start, after the restart."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        await self.wait_synced()
        psub = await self.nb._retry("a pull consumer", self.settings.seconds, lambda: self.js.pull_subscribe(
            subject, stream=self.nb.STREAM, config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, max_waiting=8)))
        read = 0
        deadline = time.monotonic() + self.settings.seconds
        start = time.perf_counter()
        try:
            with Progress(f"{self.section.system} cold replay (pull, fetch {PAGE})", count,
                          self.settings.progress) as bar:
                while read < count and time.monotonic() < deadline:
                    try:
                        msgs = await psub.fetch(PAGE, timeout=10)
                    except asyncio.TimeoutError:
                        break
                    read += len(msgs)
                    bar.update(len(msgs))
            elapsed = time.perf_counter() - start
        finally:
            await psub.unsubscribe()
        self.section.add("replay_rate", rate(read, elapsed), "msg/s", read,
                         note=f"pull consumer, ack none, fetch({PAGE}), first read after the restart; "
                              f"{read} of {count} read")

    async def sequential(self) -> None:
        """Phase (d): one js.publish at a time for seq_seconds; the stream group's term before and after."""
        leader = await self.wait_synced()
        term_before, per_before = self.stream_term()
        latencies: list[float] = []
        failed = 0
        for _ in range(20):
            await self.js.publish(SEQ_TOPIC, PAYLOAD)
        deadline = time.monotonic() + self.settings.seq_seconds
        with Progress(f"{self.section.system} sequential publish", None, self.settings.progress) as bar:
            while len(latencies) < SEQ_MAX and time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    await self.js.publish(SEQ_TOPIC, PAYLOAD, timeout=30)
                except Exception as exc:  # noqa: BLE001 - count it and go on until the deadline
                    failed += 1
                    say(f"  {self.section.system} sequential: {exc!r}")
                    continue
                latencies.append(time.perf_counter() - t0)
                bar.update()
        term_after, per_after = self.stream_term()
        info = await self.js.stream_info(self.nb.STREAM)
        _latencies(self.result, latencies, failed)
        changes = None if term_before is None or term_after is None else float(term_after - term_before)
        self.section.add("leader_changes", changes, "terms", 1, better="lower",
                         note=f"stream Raft group's highest term (/raftz) {term_before} -> {term_after}; "
                              f"stream leader {leader} before, {info.cluster.leader if info.cluster else '?'} "
                              "after; no setting for how often it compacts: defaults")
        self.result.details["sequential"] = {"term_before": per_before, "term_after": per_after}

    async def wipe_follower(self) -> None:
        """Phase (f): a server leading neither the stream nor the meta group loses its store and restarts."""
        leader = await self.wait_synced()
        meta_leader = None
        try:
            meta_leader = (self.monitor(leader, "/jsz").get("meta_cluster") or {}).get("leader")
        except Exception:  # noqa: BLE001 - then only the stream leader is avoided
            pass
        candidates = [n for n in self.cluster.names if n not in (leader, meta_leader)]
        victim = candidates[0] if candidates else next(n for n in self.cluster.names if n != leader)
        info = await self.js.stream_info(self.nb.STREAM)
        target = int(info.state.last_seq)
        await self.connect([n for n in self.cluster.names if n != victim])
        self.cluster.kill(victim)
        shutil.rmtree(self.store_dir(victim))
        self.store_dir(victim).mkdir(parents=True)
        t0 = time.monotonic()
        self.cluster.start(victim)
        deadline = t0 + self.settings.seconds
        seen: int | None = None
        while True:
            try:
                stream = self.local_stream(victim)
                seen = None if stream is None else int(stream["state"]["last_seq"])
            except Exception:  # noqa: BLE001 - still starting
                seen = None
            if seen is not None and seen >= target:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"wiped {victim} did not reach last_seq {target} within "
                                   f"{self.settings.seconds:g} s (last seen {seen})")
            await asyncio.sleep(0.02)
        self.section.add("wipe_catchup_s", time.monotonic() - t0, "s", 1, better="lower",
                         note=f"server {victim} (neither stream leader {leader} nor meta leader {meta_leader}): "
                              f"kill -9, store dir deleted, start -> its own /jsz stream state last_seq >= {target}")

    async def read_subject(self, subject: str, count: int, deadline: float) -> tuple[int, int]:
        """Read `subject` from its first message with an ephemeral pull consumer (ack none), `PAGE` per fetch.

        A JetStream error (503 "no responders" while a consumer's leader is being placed) or a timed
        out creation is retried until `deadline`: the time it costs belongs to the read.
        Returns: (messages read, errors retried).
        """
        from nats.errors import Error as NatsError
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        retries = 0
        while True:
            psub = None
            read = 0
            try:
                psub = await self.js.pull_subscribe(subject, stream=self.nb.STREAM, config=ConsumerConfig(
                    ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, max_waiting=1))
                while read < count and time.monotonic() < deadline:
                    try:
                        msgs = await psub.fetch(min(PAGE, count - read), timeout=5)
                    except asyncio.TimeoutError:
                        break
                    read += len(msgs)
                return read, retries
            except NatsError:  # a JetStream API error, or the consumer's creation timed out
                retries += 1
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.01)
            finally:
                if psub is not None:
                    await self._drop_consumer(psub)

    async def _drop_consumer(self, psub: Any) -> None:
        """Delete an ephemeral consumer now (it would otherwise linger until its inactivity threshold)."""
        try:
            info = await psub.consumer_info()
            await psub.unsubscribe()
            await self.js.delete_consumer(self.nb.STREAM, info.name)
        except Exception as exc:  # noqa: BLE001 - a consumer left behind does not change the figures
            say(f"  {self.section.system}: could not delete a consumer: {exc!r}")

    async def topic_reads(self, topics: int, per_topic: int) -> None:
        """The many-topics case's read: an ephemeral pull consumer on one subject, fetched until M messages."""
        await self.wait_synced()
        deadline = time.monotonic() + self.settings.seconds
        await self.read_subject(RESTART_TOPIC, 1, deadline)  # warm-up: connection, JetStream API after the restart
        sample = random.Random(self.settings.seed).sample(range(topics), min(HISTORY_SAMPLES, topics))
        times: list[float] = []
        short = 0
        retried = 0
        for k in sample:
            if time.monotonic() >= deadline:
                break
            t0 = time.perf_counter()
            read, retries = await self.read_subject(f"{MANY_PREFIX}{k}", per_topic, deadline)
            times.append(time.perf_counter() - t0)
            short += read < per_topic
            retried += retries
        ms = [t * 1000 for t in times]
        note = (f"ephemeral pull consumer filtered on one subject ({per_topic} msgs), created and fetched "
                f"(deleting it not timed); {len(ms)} random subjects"
                + (f"; {short} came back short" if short else "")
                + (f"; {retried} JetStream errors retried within the timing" if retried else ""))
        self.section.add("topic_read_p50_ms", median(ms), "ms", len(ms), better="lower", note=note)
        self.section.add("topic_read_p99_ms", percentile(ms, 99), "ms", len(ms), better="lower", note=note)

    async def close(self) -> None:
        try:
            await self.disconnect()
        finally:
            self.cluster.close()

    def log_tails(self) -> None:
        for name, child in self.cluster.servers.items():
            say(f"----- nats {name} log tail -----\n{child.log_tail()}")


async def _nats_single(settings: ScaleSettings, result: ScaleResult, n: int, sync_always: bool) -> None:
    name = result.section.system
    s = NatsScale(settings, result, sync_always)
    try:
        say(f"scale {name} N={n}: starting 3 servers")
        await s.start()
        idle = s.rss()
        say(f"scale {name} N={n}: (a) fill")
        acked, leader = await s.fill([(FILL_TOPIC, n)], n, f"{name} fill {n}")
        say(f"scale {name} N={n}: (b) RSS and store directories")
        s.memory_and_disk(idle, leader, acked)
        say(f"scale {name} N={n}: (c) kill -9 all, restart -> next PubAck")
        await s.restart()
        say(f"scale {name} N={n}: (e) cold replay")
        await s.replay(FILL_TOPIC, acked)
        say(f"scale {name} N={n}: (d) sequential publish {settings.seq_seconds:g} s")
        await s.sequential()
        say(f"scale {name} N={n}: (f) wiped server catch-up")
        await s.wipe_follower()
    except BaseException:
        s.log_tails()
        raise
    finally:
        await s.close()


async def _nats_many(settings: ScaleSettings, result: ScaleResult, sync_always: bool) -> None:
    name = result.section.system
    t, m = settings.topics, settings.per_topic
    s = NatsScale(settings, result, sync_always)
    try:
        say(f"scale {name} {t}x{m}: starting 3 servers")
        await s.start()
        idle = s.rss()
        say(f"scale {name} {t}x{m}: fill")
        acked, leader = await s.fill([(f"{MANY_PREFIX}{k}", m) for k in range(t)], t * m,
                                     f"{name} fill {t} subjects x {m}")
        say(f"scale {name} {t}x{m}: RSS and store directories")
        s.memory_and_disk(idle, leader, acked)
        say(f"scale {name} {t}x{m}: kill -9 all, restart -> next PubAck")
        await s.restart()
        say(f"scale {name} {t}x{m}: read {min(HISTORY_SAMPLES, t)} random subjects")
        await s.topic_reads(t, m)
    except BaseException:
        s.log_tails()
        raise
    finally:
        await s.close()


# ---------------------------------------------------------------------------------------- the run


def _label(system: str) -> tuple[str, str]:
    """Returns: (label, durability) of a system's column."""
    if system == "wiber":
        from bench.wiber_bench import DURABILITY
        return "Wiber 3 nodes", DURABILITY
    nb = _nats_imports()
    mode = "always" if system == "nats_always" else "default"
    return f"NATS JS ({'sync always' if mode == 'always' else 'default sync'})", str(nb.DURABILITY[mode])


def _measure(system: str, case: str, many: bool, body: Callable[[ScaleResult], None]) -> ScaleResult:
    """Run one system's case; an exception fails that column only. Returns: its result."""
    try:
        label, durability = _label(system)
    except Exception as exc:  # noqa: BLE001 - e.g. nats-py missing
        label, durability = system, ""
        return ScaleResult(Section(system, label, durability, error=f"{type(exc).__name__}: {exc}"), case, many)
    result = ScaleResult(Section(system, label, durability), case, many)
    t0 = time.monotonic()
    try:
        body(result)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one system failing must not lose the others' figures
        traceback.print_exc()
        result.section.error = f"{type(exc).__name__}: {exc}"
    finally:
        CHILDREN.kill_all()
    result.section.seconds = time.monotonic() - t0
    say(f"   {system} {case} done in {result.section.seconds:.1f} s")
    return result


def _single(system: str, settings: ScaleSettings, n: int) -> Callable[[ScaleResult], None]:
    if system == "wiber":
        return lambda result: _run_wiber_single(settings, result, n)
    return lambda result: asyncio.run(_nats_single(settings, result, n, system == "nats_always"))


def _many(system: str, settings: ScaleSettings) -> Callable[[ScaleResult], None]:
    if system == "wiber":
        return lambda result: _run_wiber_many(settings, result)
    return lambda result: asyncio.run(_nats_many(settings, result, system == "nats_always"))


def run(settings: ScaleSettings) -> tuple[dict[str, Any], str]:
    """Run every case for every system. Returns: (the JSON "scale" section, the printed table)."""
    cases: list[tuple[str, list[ScaleResult]]] = []
    for n in settings.messages:
        case = f"one topic, N={n:,}"
        say(f"== scale: {case}")
        cases.append((case, [_measure(system, case, False, _single(system, settings, n))
                             for system in settings.systems]))
    if settings.topics > 0 and settings.per_topic > 0:
        case = f"{settings.topics:,} topics x {settings.per_topic}"
        say(f"== scale: {case}")
        cases.append((case, [_measure(system, case, True, _many(system, settings)) for system in settings.systems]))
    table = render_table(cases, settings)
    section = {
        "settings": {"messages": list(settings.messages), "topics": settings.topics, "per_topic": settings.per_topic,
                     "seconds": settings.seconds, "seq_seconds": settings.seq_seconds,
                     "systems": list(settings.systems), "payload_bytes": PAYLOAD_BYTES,
                     "wiber_fill": {"batch_size": WIBER_BATCH, "linger_s": WIBER_LINGER_S, "window": WIBER_WINDOW},
                     "nats_pending": NATS_PENDING,
                     "wiber_checkpoint_often": wiber_checkpoint_settings(), "seed": settings.seed},
        "cases": [{"case": case, "rows": build_rows(results),
                   "systems": {r.section.system: r.as_dict() for r in results}} for case, results in cases],
    }
    return section, table


# ---------------------------------------------------------------------------------------- table


@dataclass(frozen=True, slots=True)
class ScaleRow:
    """One row of the scale table: a workload key, its label and whether a Wiber / NATS ratio means something."""

    key: str
    label: str
    unit: str
    ratio: bool = True


SINGLE_ROWS: list[ScaleRow] = [
    ScaleRow("fill_rate", "(a) fill", "msg/s"),
    ScaleRow("rss_anon_delta_mib", "(b) anon RSS above idle, max node", "MiB"),
    ScaleRow("rss_vm_delta_mib", "    VmRSS above idle, max node", "MiB"),
    ScaleRow("rss_anon_per_msg_b", "    anon RSS per message", "B"),
    ScaleRow("files", "    files in data dir, max node", "files"),
    ScaleRow("disk_mib", "    data dir on disk, max node", "MiB"),
    ScaleRow("restart_s", "(c) kill -9 all, restart -> ack", "s"),
    ScaleRow("seq_p50_ms", "(d) seq publish p50, checkpoint often", "ms"),
    ScaleRow("seq_p99_ms", "    seq publish p99", "ms"),
    ScaleRow("seq_max_ms", "    seq publish max", "ms"),
    ScaleRow("seq_count", "    seq publishes acked", "msg", ratio=False),
    ScaleRow("leader_changes", "    leader changes (term delta)", "terms", ratio=False),
    ScaleRow("replay_rate", "(e) cold replay, 1000/page", "msg/s"),
    ScaleRow("wipe_catchup_s", "(f) wiped follower catch-up", "s"),
]

MANY_ROWS: list[ScaleRow] = [
    ScaleRow("fill_rate", "(g) fill", "msg/s"),
    ScaleRow("rss_anon_delta_mib", "    anon RSS above idle, max node", "MiB"),
    ScaleRow("rss_vm_delta_mib", "    VmRSS above idle, max node", "MiB"),
    ScaleRow("files", "    files in data dir, max node", "files"),
    ScaleRow("disk_mib", "    data dir on disk, max node", "MiB"),
    ScaleRow("restart_s", "    kill -9 all, restart -> ack", "s"),
    ScaleRow("topic_read_p50_ms", "    read one topic, median", "ms"),
    ScaleRow("topic_read_p99_ms", "    read one topic, p99", "ms"),
]

RATIOS: list[tuple[str, str]] = [("nats_always", "W/NATSalw"), ("nats_default", "W/NATSdef")]


def _value(result: ScaleResult | None, key: str) -> float | None:
    if result is None:
        return None
    return next((f.value for f in result.section.figures if f.workload == key), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _rows_for(results: list[ScaleResult]) -> list[ScaleRow]:
    return MANY_ROWS if any(r.many for r in results) else SINGLE_ROWS


def build_rows(results: list[ScaleResult]) -> list[dict[str, Any]]:
    """Returns: the JSON rows of one case: each system's value and the Wiber / NATS ratios."""
    by_system = {r.section.system: r for r in results}
    rows: list[dict[str, Any]] = []
    for row in _rows_for(results):
        values = {system: _value(by_system.get(system), row.key) for system in SYSTEMS if system in by_system}
        ratios = {f"wiber/{peer}": _ratio(values.get("wiber"), values.get(peer))
                  for peer, _head in RATIOS if row.ratio and peer in values}
        rows.append({"workload": row.key, "label": row.label.strip(), "unit": row.unit, "values": values,
                     "ratios": ratios})
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        return f"{value / 1e3:.1f}k" if value >= 1e4 else f"{value:,.0f}"
    if unit in ("files", "msg", "terms", "B"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:.2f}" if value < 100 else f"{value:,.1f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


def render_table(cases: list[tuple[str, list[ScaleResult]]], settings: ScaleSettings) -> str:
    """Returns: one block per case (rows x systems, then the ratios), with per-node details and failures."""
    systems = [s for s in SYSTEMS if s in settings.systems]
    ratios = [(peer, head) for peer, head in RATIOS if peer in systems and "wiber" in systems]
    label_w = max(len(f"{r.label} ({r.unit})") for r in SINGLE_ROWS + MANY_ROWS) + 2
    heads = [LABELS[s] for s in systems] + [head for _p, head in ratios]
    widths = [max(11, len(h) + 2) for h in heads]

    def line(first: str, cells: list[str]) -> str:
        return first.ljust(label_w) + "".join(c.rjust(w) for c, w in zip(cells, widths))

    rule = "-" * (label_w + sum(widths))
    out: list[str] = []
    for case, results in cases:
        by_system = {r.section.system: r for r in results}
        out += [f"scale: {case} ({PAYLOAD_BYTES}-byte messages)", line("workload (unit)", heads), rule]
        for row in _rows_for(results):
            values = [_value(by_system.get(s), row.key) for s in systems]
            cells = [_fmt(v, row.unit) for v in values]
            wiber = _value(by_system.get("wiber"), row.key)
            cells += [_fmt_ratio(_ratio(wiber, _value(by_system.get(peer), row.key))) if row.ratio else ""
                      for peer, _head in ratios]
            out.append(line(f"{row.label} ({row.unit})", cells))
        out.append(rule)
        for r in results:
            label = LABELS.get(r.section.system, r.section.system)
            if r.section.error:
                out.append(f"  {label}: FAILED: {r.section.error}")
            rss = r.details.get("rss")
            if rss:
                out.append(f"  {label} RSS above idle, anon / VmRSS MiB: " + ", ".join(
                    f"{name} ({n['role']}) {n['delta_anon_mib']:.1f} / {n['delta_vm_mib']:.1f}"
                    f" (idle {n['idle_anon_mib']:.1f} / {n['idle_vm_mib']:.1f})" for name, n in rss.items()))
            disk = r.details.get("disk")
            if disk:
                out.append(f"  {label} data dirs: " + ", ".join(f"{name} {d['files']} files {d['mib']:.1f} MiB"
                                                               for name, d in disk.items()))
            fill = r.details.get("fill")
            if fill and fill["acked"] < fill["total"]:
                out.append(f"  {label} fill: only {fill['acked']:,} of {fill['total']:,} acknowledged "
                           f"({fill['failed']} failed) before the deadline")
            for key in ("leader_changes", "wipe_catchup_s", "topic_read_p50_ms"):
                note = next((f.note for f in r.section.figures if f.workload == key), "")
                if note:
                    out.append(f"  {label} {key}: {note}")
        out.append("")
    out.append("  ratio = Wiber / NATS: above 1 for msg/s means Wiber is faster; below 1 for MiB, B, files, s and "
               "ms means Wiber uses less or is faster. NATS has no knob for how often a stream checkpoints: "
               "its (d) runs with its defaults.")
    return "\n".join(out)
