"""The wire fuzzer's driver: ``python -m tests.fuzz.runner`` (``make fuzz``).

Starts a real cluster (3 nodes by default) the way the tests' `ClusterHarness` does, then sends
seeded samples (`tests.fuzz.generators`) to the nodes' client ports (a DEALER and a REQ per node)
and raft ports (a DEALER per node, framed as a peer's: wiber/node/transport.py), alternating ports
and taking the nodes in turn, at ``--rate`` samples a second (0: as fast as they go), for
``--count`` samples per port or for ``--minutes``. Replies are read as they come; each must be a
msgpack map with a bool ``ok``. A watcher, every quarter second, reads every node's STATUS (the
leader, term and commit index the next samples aim at), samples RSS, looks for processes that
ended and for tracebacks in the logs: each is a finding, written with the samples the node got
last (``finding-N.jsonl``: hex frames, replayable with ``--replay``), and a node that ended is
started again so the run goes on. When the sending stops, `tests.fuzz.health.check` judges the
cluster.

The seed is printed first; ``--seed`` makes the same samples again (the aim taken from the
cluster's state at the time may differ). ``--replay FILE`` sends a finding's samples one by one
to a fresh cluster and names the first after which a node fails.

Exit status: 0 healthy and no finding, 1 findings or an unhealthy cluster (report in
``report.json`` in the output directory, beside the node logs), 2 the fuzzer could not run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import msgpack
import zmq

from tests.conftest import HARNESS_CLIENT, ClusterHarness, wait_for
from tests.fuzz import health
from tests.fuzz.generators import BYZANTINE, CLIENT, RAFT, Selection, generate, parse_selection, plan
from tests.fuzz.sample import Context, Sample
from wiber import protocol
from wiber.errors import WIRE_ERRORS

BATCH = 96
"""Samples sent between two syncs (`View.sync`): the most that any node has queued is its share of them."""
SYNC_S = 2.0
"""How long a sync waits for a node's STATUS."""
FUZZ_CLIENT = "fuzzer"
"""The client name the fuzzer's client sockets use on a secured cluster."""
FUZZ_RIGHTS: dict[str, Any] = {"name": FUZZ_CLIENT, "publish": ["fuzz.>"], "subscribe": ["fuzz.>"]}
"""Its rights: some of the topics it sends are outside them (FORBIDDEN), and it is no admin."""
STRANGER_RECONNECT_MS = 20
"""How soon the DEALER with an unknown key tries its refused handshake again (if libzmq does)."""
PROGRESS_S = 15.0
"""How often a run for minutes prints a progress line."""
JOURNAL_PER_NODE = 300
"""Samples remembered per node: a finding is written with the ones its node got last."""
DEFAULT_SETTINGS: dict[str, Any] = {"max_message_bytes": 65_536}
"""Cluster settings of a fuzz run: a small message limit makes frames just over it cheap to send."""


@dataclass(slots=True)
class Spec:
    """One fuzz run.

    Attributes:
        seed: the samples' seed.
        count: samples per port (None: until `minutes` pass).
        minutes: how long to send (None: until `count` samples per port are sent).
        rate: samples a second over all ports and nodes (0: as fast as they go).
        nodes: cluster size.
        selection: the frame families used.
        out_dir: where the cluster's files, the node logs and the findings go.
        recover_s: how long the cluster may take, after the fuzzing, to answer PING and a PUB.
        max_rss_mib: the RSS no node may pass.
        max_fds: the open file descriptors no node may pass (an idle node has about 30).
        restart: start a node that ended again (and go on fuzzing).
        secure: the cluster has a security section (docs/design.md section 10): the client port is
            fuzzed as client `FUZZ_CLIENT` (may publish and read ``fuzz.>`` only, no admin), the raft
            port as a peer node authenticated with its own key (frames claiming another sender are
            dropped), and a DEALER with a key the cluster does not know is refused at its handshake.
    """

    seed: int
    out_dir: Path
    count: int | None = 500
    minutes: float | None = None
    rate: float = 0.0
    nodes: int = 3
    selection: Selection = field(default_factory=Selection)
    recover_s: float = 20.0
    max_rss_mib: int = 512
    max_fds: int = 256
    restart: bool = True
    secure: bool = False
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))


@dataclass(slots=True)
class Sent:
    """A sample as sent, for the journal of its target node."""

    index: int
    target: str
    sample: Sample
    ctx: Context
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "target": self.target, "port": self.sample.port,
                "family": self.sample.family, "socket": self.sample.socket,
                "frames": [f.hex() for f in self.sample.frames],
                "ctx": self.ctx.to_json(), "at": self.at}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Sent:
        frames = tuple(bytes.fromhex(f) for f in doc["frames"])
        sample = Sample(doc["port"], doc["family"], frames, doc["socket"])
        return cls(doc["index"], doc["target"], sample, Context.from_json(doc["ctx"]), doc["at"])


@dataclass(slots=True)
class Finding:
    """A node that ended, logged a traceback, or answered a client with something that is not a reply."""

    kind: str
    node: str
    signature: str
    detail: str
    first_index: int
    count: int = 1
    journal: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "signature": self.signature, "detail": self.detail,
                "first_index": self.first_index, "count": self.count, "journal": self.journal}


@dataclass(slots=True)
class Report:
    """What a run did and found."""

    seed: int
    sent: dict[str, int] = field(default_factory=lambda: {CLIENT: 0, RAFT: 0})
    frames: int = 0
    dropped: int = 0
    replies: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    health: health.Health | None = None
    memory: str = ""
    out_dir: str = ""
    security: dict[str, Any] = field(default_factory=dict)
    """Per node, the `security` map of its STATUS after a secured run (refusals and forgeries counted)."""

    @property
    def rate(self) -> float:
        """Returns: samples (multipart messages) sent a second."""
        return sum(self.sent.values()) / self.seconds if self.seconds else 0.0

    @property
    def frame_rate(self) -> float:
        """Returns: frames (message parts) sent a second."""
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.findings and self.health is not None and self.health.ok

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "sent": self.sent, "dropped": self.dropped, "replies": self.replies,
                "outcomes": self.outcomes,
                "frames": self.frames, "seconds": round(self.seconds, 2),
                "samples_per_s": round(self.rate, 1),
                "frames_per_s": round(self.frame_rate, 1),
                "findings": [f.to_json() for f in self.findings],
                "health": self.health.problems if self.health is not None else None,
                "recovered_s": round(self.health.recovered_s, 2) if self.health is not None else None,
                "lagging": self.health.lagging if self.health is not None else None,
                "memory": self.memory, "security": self.security, "ok": self.ok}

    def summary(self) -> str:
        lines = [f"seed {self.seed}: {self.sent[CLIENT]} client + {self.sent[RAFT]} raft samples in "
                 f"{self.seconds:.1f} s ({self.rate:.0f}/s; {self.frames} frames, {self.frame_rate:.0f}/s), "
                 f"{self.replies} replies, {self.dropped} dropped",
                 "replies: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
                 f"memory: {self.memory}"]
        for f in self.findings:
            lines.append(f"FINDING {f.kind} on {f.node} x{f.count} (first after sample {f.first_index}): "
                         f"{f.signature}\n  samples: {f.journal}\n" + "\n".join("    " + ln for ln in
                                                                          f.detail.splitlines()[-12:]))
        if self.health is not None:
            lines += [f"UNHEALTHY: {p}" for p in self.health.problems]
            for nid, status in sorted(self.health.lagging.items()):
                lines.append(f"note: {nid} had not applied the health PUB {health.CATCH_UP_S:g} s after "
                             f"it was acknowledged: {status}")
            if self.health.ok:
                lines.append(f"healthy: every node answers PING, a PUB was acknowledged (offset "
                             f"{self.health.pub_offset}) {self.health.recovered_s:.1f} s after the fuzzing")
        for nid, counters in sorted(self.security.items()):
            lines.append(f"security of {nid}: {counters}")
        lines.append("OK" if self.ok else f"FAILED (files in {self.out_dir})")
        return "\n".join(lines)


class Wires:
    """The fuzzer's sockets: per node a client DEALER, a client REQ, a raft DEALER and a STATUS
    DEALER; on a secured cluster each a CURVE client with its key (see `Spec.secure`), and a raft
    DEALER with a key the cluster does not know, refused at its handshake (nothing it would send
    can get in; the node counts the refusal)."""

    def __init__(self, harness: ClusterHarness) -> None:
        self.ctx = zmq.Context()
        self.client: dict[str, zmq.Socket[bytes]] = {}
        self.req: dict[str, zmq.Socket[bytes]] = {}
        self.raft: dict[str, zmq.Socket[bytes]] = {}
        self.watch: dict[str, zmq.Socket[bytes]] = {}
        self.stranger: dict[str, zmq.Socket[bytes]] = {}
        secure = bool(harness.keys)
        stranger_key = zmq.curve_keypair()
        for node in harness.config.nodes:
            peer = next(n.id for n in harness.config.nodes if n.id != node.id) if secure else None
            self.client[node.id] = self._socket(harness, node.id, zmq.DEALER, node.client_addr, FUZZ_CLIENT)
            self.req[node.id] = self._socket(harness, node.id, zmq.REQ, node.client_addr, FUZZ_CLIENT)
            self.req[node.id].setsockopt(zmq.REQ_RELAXED, 1)
            self.req[node.id].setsockopt(zmq.REQ_CORRELATE, 1)
            self.raft[node.id] = self._socket(harness, node.id, zmq.DEALER, node.raft_addr, peer)
            self.watch[node.id] = self._socket(harness, node.id, zmq.DEALER, node.client_addr, HARNESS_CLIENT)
            if secure:
                sock = self._socket(harness, node.id, zmq.DEALER, node.raft_addr, stranger_key)
                sock.setsockopt(zmq.RECONNECT_IVL, STRANGER_RECONNECT_MS)
                self.stranger[node.id] = sock

    def _socket(self, harness: ClusterHarness, node_id: str, kind: int, addr: str,
                key: str | tuple[bytes, bytes] | None) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if harness.keys and key is not None:
            harness.curve(sock, node_id, key)
        sock.connect(addr)
        return sock

    def send(self, sent: Sent) -> bool:
        """Send one sample. Returns: False when it was dropped (the node's queue stayed full 0.1 s)."""
        sample = sent.sample
        if sample.port == RAFT:
            sock = self.raft[sent.target]
        else:
            sock = self.req[sent.target] if sample.socket == "req" else self.client[sent.target]
        for attempt in (0, 1):
            try:
                sock.send_multipart(list(sample.frames), zmq.NOBLOCK)
                return True
            except zmq.Again:
                if attempt == 0:
                    sock.poll(100, zmq.POLLOUT)
        return False

    def replies(self) -> list[tuple[str, bytes]]:
        """Returns: every reply queued on the client sockets: (node, last frame)."""
        out = []
        for socks in (self.client, self.req):
            for nid, sock in socks.items():
                while True:
                    try:
                        out.append((nid, sock.recv_multipart(zmq.NOBLOCK)[-1]))
                    except zmq.Again:
                        break
                    except zmq.ZMQError as exc:  # a REQ with its reply already read (EFSM)
                        if exc.errno != zmq.EFSM:
                            raise
                        break
        return out

    def close(self) -> None:
        for socks in (self.client, self.req, self.raft, self.watch, self.stranger):
            for sock in socks.values():
                sock.close(linger=0)
        self.ctx.term()


class View:
    """What the fuzzer knows of the cluster from STATUS: the leader, the highest term and commit index.

    `sync` is also the fuzzer's back-pressure: a node answers a STATUS only after the samples sent
    to it before (its loop reads peers, then clients, in order), so waiting for the answers keeps
    the queues short and makes the sending rate the rate the nodes really take.
    """

    def __init__(self) -> None:
        self.leader: str | None = None
        self.term = 1
        self.commit_index = 0
        self._asked = 0

    def sync(self, wires: Wires, timeout_s: float) -> None:
        """Ask every node for STATUS and wait up to `timeout_s` for the answers (a slow or dead node
        is not waited for longer: the watcher judges it)."""
        self._asked += 1
        body = protocol.pack({"op": "STATUS", "id": self._asked})
        waiting = {}
        for nid, sock in wires.watch.items():
            try:
                sock.send_multipart([b"", body], zmq.NOBLOCK)
                waiting[nid] = sock
            except zmq.Again:
                pass
        deadline = time.monotonic() + timeout_s
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for nid, sock in list(waiting.items()):
                if sock.poll(max(1, int(left * 1000 / len(waiting)))):
                    if self._read(sock):
                        del waiting[nid]

    def _read(self, sock: zmq.Socket[bytes]) -> bool:
        """Take every queued STATUS answer. Returns: whether the latest one asked for was among them."""
        latest = False
        while True:
            try:
                frame = sock.recv_multipart(zmq.NOBLOCK)[-1]
            except zmq.Again:
                return latest
            try:
                status = msgpack.unpackb(frame, raw=False)
            except Exception:  # a bad reply is the client sockets' finding, not the view's
                continue
            if not isinstance(status, dict):
                continue
            latest = latest or status.get("id") == self._asked
            if not status.get("ok"):
                continue
            if type(status.get("term")) is int and status["term"] >= self.term:
                self.term = status["term"]
                if isinstance(status.get("leader"), str):
                    self.leader = status["leader"]
            if type(status.get("commit_index")) is int:
                self.commit_index = max(self.commit_index, status["commit_index"])


class NotStarted(RuntimeError):
    """The cluster did not come up before the fuzzing (the message holds the nodes' log tails)."""


def settled(harness: ClusterHarness, timeout: float = 15.0) -> None:
    """Wait until every node has applied an entry of an elected leader: the fuzzer aims at a running
    cluster. (Before that a node's log is empty, and a forged append claiming history makes an empty
    node refuse to vote until it has caught up, docs/operations.md "Recovery": forged at the very start
    of a cluster without security, it keeps every node from voting until they are restarted.)"""
    for nid in harness.nodes:
        client = harness.client([nid])
        wait_for(lambda c=client, a=harness.addr(nid): c.request_to(a, "STATUS")["applied_index"] >= 1, timeout,
                 f"{nid} to apply its first leader's entry")


class Fuzzer:
    """One run: the cluster, the sockets, the journals, the watcher and the findings."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.harness = ClusterHarness(spec.out_dir, spec.nodes, spec.settings,
                                      security=[FUZZ_RIGHTS] if spec.secure else None)
        self.nodes = tuple(self.harness.nodes)
        self.scanners = {nid: health.TracebackScanner(n.log_path) for nid, n in self.harness.nodes.items()}
        self.memory = health.MemoryWatch()
        self.view = View()
        self.journal: dict[str, deque[Sent]] = {nid: deque(maxlen=JOURNAL_PER_NODE) for nid in self.nodes}
        self.report = Report(spec.seed, out_dir=str(spec.out_dir))
        self._by_signature: dict[tuple[str, str], Finding] = {}
        self.wires: Wires | None = None

    # ------------------------------------------------------------------ findings

    def _find(self, kind: str, node: str, sig: str, detail: str, last_index: int) -> None:
        key = (kind, sig)
        known = self._by_signature.get(key)
        if known is not None:
            known.count += 1
            return
        finding = Finding(kind, node, sig, detail, last_index)
        path = self.spec.out_dir / f"finding-{len(self.report.findings) + 1}-{node}.jsonl"
        with open(path, "w") as f:
            for sent in self.journal[node]:
                f.write(json.dumps(sent.to_json()) + "\n")
        finding.journal = str(path)
        self._by_signature[key] = finding
        self.report.findings.append(finding)
        sys.stderr.write(f"finding: {kind} on {node}: {sig} (samples in {path})\n")

    def watch(self, last_index: int) -> None:
        """Look at every node: STATUS (the aim, and a wait for the node to take what it was sent),
        RSS, a process that ended, new tracebacks."""
        assert self.wires is not None
        self.view.sync(self.wires, SYNC_S)
        self.memory.sample(self.harness)
        for nid, node in self.harness.nodes.items():
            texts = self.scanners[nid].scan()
            if not node.running():
                # A node that ended is one finding, named by its last traceback when it wrote one.
                code = node.proc.poll() if node.proc is not None else None
                sig = health.signature(texts.pop()) if texts else f"exit status {code}"
                self._find("crash", nid, sig, node.log_tail(30), last_index)
                if self.spec.restart:
                    self.harness.start(nid)
            for text in texts:
                self._find("traceback", nid, health.signature(text), text, last_index)

    def _check_replies(self, last_index: int) -> None:
        """Read the replies queued: each must be a reply map, an error one with a documented code
        (docs/design.md section 3) and a message; count them by outcome."""
        assert self.wires is not None
        for nid, frame in self.wires.replies():
            self.report.replies += 1
            try:
                reply = protocol.parse_reply(frame)
            except Exception as exc:  # anything but a reply map is the finding
                self._find("bad_reply", nid, str(exc)[:80], frame[:200].hex(), last_index)
                continue
            code = "ok" if reply["ok"] else str(reply.get("error"))
            self.report.outcomes[code] = self.report.outcomes.get(code, 0) + 1
            if not reply["ok"] and (code not in WIRE_ERRORS or not isinstance(reply.get("message"), str)):
                self._find("bad_reply", nid, f"error reply {code!r} outside the contract",
                           repr(reply)[:400], last_index)

    # ------------------------------------------------------------------ the run

    def run(self) -> Report:
        spec = self.spec
        self.harness.start()
        try:
            try:
                self.harness.wait_up()
                settled(self.harness)
            except AssertionError as exc:
                raise NotStarted(f"the cluster did not start: {exc}\n{self.harness.log_tails()}") from None
            self.wires = Wires(self.harness)
            self._fuzz()
            self._check_replies(-1)
            self.wires.close()
            self.wires = None
            self.report.health = health.check(self.harness, self.scanners, self.memory, spec.recover_s,
                                              spec.max_rss_mib << 20, spec.max_fds)
            self.report.memory = self.memory.describe()
            if spec.secure:
                self._read_security()
        finally:
            if self.wires is not None:
                self.wires.close()
            self.harness.close()
        (spec.out_dir / "report.json").write_text(json.dumps(self.report.to_json(), indent=2))
        return self.report

    def _read_security(self) -> None:
        """Keep every node's STATUS `security` counters in the report (asked with the admin key)."""
        client = self.harness.client(per_try_s=1.0, total_s=1.0)
        for node in self.harness.config.nodes:
            try:
                self.report.security[node.id] = client.request_to(node.client_addr, "STATUS").get("security")
            except Exception as exc:  # a node that does not answer now was judged by the health check
                self.report.security[node.id] = f"no STATUS: {type(exc).__name__}"

    def _fuzz(self) -> None:
        spec = self.spec
        assert self.wires is not None
        ports = spec.selection.ports()
        limit = spec.count * len(ports) if spec.count is not None else None
        ends = time.monotonic() + spec.minutes * 60 if spec.minutes is not None else None
        started = next_progress = time.monotonic()
        self.watch(-1)
        index = 0
        while (limit is None or index < limit) and (ends is None or time.monotonic() < ends):
            port, target = plan(index, ports, self.nodes)
            ctx = Context(target, self.nodes, self.view.leader, self.view.term, self.view.commit_index,
                          time.time(), spec.settings.get("max_message_bytes", 1_048_576))
            sample = generate(spec.seed, index, port, ctx, spec.selection)
            sent = Sent(index, target, sample, ctx, time.time())
            self.journal[target].append(sent)
            if self.wires.send(sent):
                self.report.sent[port] += 1
                self.report.frames += len(sent.sample.frames)
            else:
                self.report.dropped += 1
            index += 1
            if index % BATCH == 0:
                self.watch(index - 1)
                self._check_replies(index - 1)
                if time.monotonic() >= next_progress and spec.minutes is not None:
                    next_progress = time.monotonic() + PROGRESS_S
                    sys.stderr.write(f"{time.monotonic() - started:6.0f} s: {index} samples, "
                                     f"{len(self.report.findings)} findings, term {self.view.term}, "
                                     f"{self.memory.describe_last()}\n")
            if spec.rate > 0:
                pause = started + index / spec.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the sending rate, not waiting for anything
        self.report.seconds = time.monotonic() - started
        self.watch(index - 1)


# ---------------------------------------------------------------------- replay


def replay(journal: Path, out_dir: Path, settle_s: float = 1.0) -> int:
    """Send a finding's samples one at a time to a fresh cluster of the same node ids; after each,
    wait until its target answers a PING (it has read what came before) and look for a failure.

    Returns: the index of the first sample after which a node ended or logged a traceback, or -1.
    """
    samples = [Sent.from_json(json.loads(line)) for line in journal.read_text().splitlines() if line.strip()]
    nodes = max(len(s.ctx.nodes) for s in samples) if samples else 3
    harness = ClusterHarness(out_dir, nodes, dict(DEFAULT_SETTINGS))
    scanners = {nid: health.TracebackScanner(n.log_path) for nid, n in harness.nodes.items()}
    harness.start()
    wires: Wires | None = None
    try:
        harness.wait_up()
        settled(harness)
        wires = Wires(harness)
        for sent in samples:
            wires.send(sent)
            harness.ping(sent.target, timeout=settle_s)
            for nid, node in harness.nodes.items():
                texts = scanners[nid].scan()
                if texts or not node.running():
                    print(f"sample {sent.index} ({sent.sample.family}) to {sent.target}: {nid} failed")
                    print("frames: " + " ".join(f.hex() for f in sent.sample.frames))
                    print("\n".join(texts) or node.log_tail(30))
                    return sent.index
        print(f"no failure in {len(samples)} samples")
        return -1
    finally:
        if wires is not None:
            wires.close()
        harness.close()


# ---------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.runner", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="the samples' seed (default: random, printed)")
    p.add_argument("--count", type=int, default=None, help="samples per port (default 500 without --minutes)")
    p.add_argument("--minutes", type=float, default=None, help="send for this long instead of --count")
    p.add_argument("--rate", type=float, default=0.0, help="samples a second (default 0: as fast as they go)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--only", action="append", default=[], metavar="FAMILIES",
                   help="comma-separated families or ports to use (client, raft, raft.timesync, ...)")
    p.add_argument("--exclude", action="append", default=[], metavar="FAMILIES", help="families not to use")
    p.add_argument("--secure", action="store_true",
                   help="fuzz a cluster with a security section (CURVE, ZAP, rights) as a keyed client "
                        "and peer")
    p.add_argument("--byzantine", action="store_true",
                   help="also send forged Raft state only keys stop (" + ", ".join(sorted(BYZANTINE)) + ")")
    p.add_argument("--recover-s", type=float, default=20.0,
                   help="deadline for PING and a PUB after the fuzzing (default 20)")
    p.add_argument("--max-rss-mib", type=int, default=512, help="RSS no node may pass (default 512)")
    p.add_argument("--max-fds", type=int, default=256, help="open descriptors no node may pass (default 256)")
    p.add_argument("--dir", type=Path, default=None, help="output directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the output directory of a clean run too")
    p.add_argument("--replay", type=Path, default=None, metavar="FINDING.jsonl",
                   help="send a finding's samples one by one to a fresh cluster")
    p.add_argument("--list", action="store_true", help="list the frame families and exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        from tests.fuzz.generators import FAMILIES
        for name, (maker, weight) in FAMILIES.items():
            doc = " ".join((maker.__doc__ or "").split())
            print(f"{name:24} {weight:4}  {doc}")
        return 0
    out_dir = args.dir or Path(tempfile.mkdtemp(prefix="wiber-fuzz-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.replay is not None:
        return 1 if replay(args.replay, out_dir) >= 0 else 0
    try:
        selection = parse_selection(args.only, args.exclude, args.byzantine)
    except ValueError as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    count = args.count if args.count is not None or args.minutes is not None else 500
    print(f"fuzz seed {seed} (replay the samples with --seed {seed}); files in {out_dir}", flush=True)
    spec = Spec(seed, out_dir, count=count, minutes=args.minutes, rate=args.rate, nodes=args.nodes,
                selection=selection, recover_s=args.recover_s, max_rss_mib=args.max_rss_mib,
                max_fds=args.max_fds, secure=args.secure)
    try:
        report = Fuzzer(spec).run()
    except (OSError, NotStarted) as exc:
        print(f"fuzz: could not run: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.ok and not args.keep and args.dir is None:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
