"""Real node processes for fault tests: on 127.0.0.1, or each in its own network namespace.

`FaultCluster` writes the cluster YAML, starts ``python -m wiber node --config F --id nX`` per node
(prefixed with ``ip netns exec NS`` when a `NetLab` is given, so the node binds its namespace's
address), and kills, pauses, resumes and restarts them by pid. It remembers what each node should
be doing (``up``, ``paused``, ``down``), so a node that exits on its own is reported as a crash,
not mistaken for a fault the nemesis injected. Every start writes a marker line into the node's
log (``=== harness: ...``) with the wall time, so node logs line up with the history.

Only processes this harness started are signalled, by pid; `close` (also registered with atexit)
kills them all.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
import zmq

from tests.conftest import REPO, free_port, wait_for
from tests.faults.netlab import NetLab
from tests.integration.test_election import agreed_leader
from wiber.client import Client, Timeouts
from wiber.config import Config, load_config

UP, PAUSED, DOWN = "up", "paused", "down"


def _load_libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # loaded in the parent: the child between fork and exec only calls it


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the driver dies, even by kill -9 (Linux prctl).

    It survives `ip netns exec`'s exec into the node (only a set-uid exec clears it), so no node
    outlives a driver that was killed before its `finally` and atexit could run.
    """
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


#: Client, raft and pub ports of every node when each node has its own address (a namespace).
NETNS_PORTS = (7101, 7201, 7301)


class NodeProc:
    """One node process and the state the harness wants it in."""

    def __init__(self, node_id: str, log_path: Path) -> None:
        self.id = node_id
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = DOWN
        self.env: dict[str, str] = {}
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def mark(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"=== harness {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} "
                    f"(wall {time.time():.3f}): {text}\n")


class FaultCluster:
    """N node processes of one cluster (see the module docstring)."""

    def __init__(self, root: Path, n: int, lab: NetLab | None = None, **settings: Any) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lab = lab
        self.config_path = self.root / "cluster.yaml"
        node_ids = [f"n{i}" for i in range(1, n + 1)]
        nodes = []
        for nid in node_ids:
            if lab is not None:
                port, raft_port, pub_port = NETNS_PORTS
                nodes.append({"id": nid, "host": lab.host(nid), "port": port, "raft_port": raft_port,
                              "pub_port": pub_port})
            else:
                nodes.append({"id": nid, "host": "127.0.0.1", "port": free_port(), "raft_port": free_port(),
                              "pub_port": free_port(), "metrics_port": free_port()})
        cluster: dict[str, Any] = {"data_dir": str(self.root / "data"), **settings}
        if lab is not None:
            # Private addresses inside network namespaces this test made: no one else can reach
            # them, so plain TCP is fine there (a node refuses a non-loopback host otherwise).
            cluster.setdefault("insecure", True)
        doc = {"cluster": cluster, "nodes": nodes}
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.config: Config = load_config(str(self.config_path))
        self.nodes = {nid: NodeProc(nid, self.root / f"{nid}.log") for nid in node_ids}
        self.ctx = zmq.Context()
        self._clients: dict[float, Client] = {}
        self._closed = False
        atexit.register(self.close)

    # ------------------------------------------------------------ processes

    def start(self, node_id: str | None = None, env: dict[str, str] | None = None) -> None:
        """Start one node (with extra environment), or every node that is not running."""
        ids = [node_id] if node_id else [i for i, p in self.nodes.items() if not p.running()]
        for nid in ids:
            node = self.nodes[nid]
            if node.running():
                raise RuntimeError(f"{nid} is already running (pid {node.pid})")
            node.env = dict(env or {})
            argv = [sys.executable, "-m", "wiber", "node", "--config", str(self.config_path), "--id", nid,
                    "--log-level", "info"]
            if self.lab is not None:
                argv = self.lab.exec_prefix(nid) + argv
            node.mark(f"start {nid} env={node.env or '{}'}")
            with open(node.log_path, "ab") as logf:
                # preexec_fn is safe here: the driver runs no Python threads.
                node.proc = subprocess.Popen(
                    argv, stdout=logf, stderr=subprocess.STDOUT, cwd=str(REPO), env={**os.environ, **node.env},
                    preexec_fn=die_with_parent)  # noqa: PLW1509
            node.state = UP
            node.starts += 1
            node.mark(f"{nid} is pid {node.pid}")

    def kill(self, node_id: str) -> None:
        """kill -9 one node (a paused one too) and reap it."""
        node = self.nodes[node_id]
        node.state = DOWN
        if node.proc is not None and node.proc.poll() is None:
            node.mark(f"kill -9 {node_id} (pid {node.pid})")
            node.proc.kill()
            node.proc.wait(timeout=10)

    def terminate(self, node_id: str, timeout: float = 5.0) -> int | None:
        """SIGTERM one node (a graceful stop; SIGKILL after `timeout`). Returns: its exit status."""
        node = self.nodes[node_id]
        node.state = DOWN
        if node.proc is None or node.proc.poll() is not None:
            return None if node.proc is None else node.proc.returncode
        node.mark(f"SIGTERM {node_id} (pid {node.pid})")
        os.kill(node.proc.pid, signal.SIGCONT)
        node.proc.terminate()
        try:
            return node.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            node.mark(f"{node_id} did not stop within {timeout:g} s of SIGTERM: kill -9")
            node.proc.kill()
            node.proc.wait(timeout=10)
            return None

    def pause(self, node_id: str) -> None:
        """SIGSTOP one node."""
        node = self.nodes[node_id]
        if node.proc is None or node.proc.poll() is not None:
            raise RuntimeError(f"{node_id} is not running")
        node.mark(f"SIGSTOP {node_id} (pid {node.pid})")
        os.kill(node.proc.pid, signal.SIGSTOP)
        node.state = PAUSED

    def resume(self, node_id: str) -> None:
        """SIGCONT one node."""
        node = self.nodes[node_id]
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGCONT)
            node.mark(f"SIGCONT {node_id} (pid {node.pid})")
        if node.state == PAUSED:
            node.state = UP

    def restart(self, node_id: str, env: dict[str, str] | None = None, graceful: bool = False) -> None:
        """Stop one node (kill -9, or SIGTERM when graceful) and start it again with `env`."""
        if graceful:
            self.terminate(node_id)
        else:
            self.kill(node_id)
        self.start(node_id, env)

    def crashed(self) -> dict[str, int]:
        """Returns: the nodes that should be running but exited, with their exit status."""
        out = {}
        for nid, node in self.nodes.items():
            if node.state != DOWN and node.proc is not None and node.proc.poll() is not None:
                out[nid] = int(node.proc.returncode)
        return out

    def close(self) -> None:
        """Kill every node this harness started (by pid) and close its clients (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            node.state = DOWN
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self.ctx.term()

    # ------------------------------------------------------------ talking to it

    def addr(self, node_id: str) -> str:
        return self.config.node(node_id).client_addr

    def addrs(self) -> list[str]:
        return [n.client_addr for n in self.config.nodes]

    def addr_map(self) -> dict[str, str]:
        return {n.id: n.client_addr for n in self.config.nodes}

    def _client(self, timeout: float) -> Client:
        client = self._clients.get(timeout)
        if client is None:
            client = self._clients[timeout] = Client(self.addrs(), Timeouts(timeout, timeout), ctx=self.ctx)
        return client

    def request_to(self, node_id: str, op: str, timeout: float = 0.5, **fields: Any) -> dict[str, Any]:
        """One request to one node, no failover. Raises: WireError, ClientError."""
        return self._client(timeout).request_to(self.addr(node_id), op, **fields)

    def ping(self, node_id: str, timeout: float = 0.3) -> dict[str, Any] | None:
        """Returns: the node's PONG, or None when it does not answer in time."""
        try:
            return self.request_to(node_id, "PING", timeout)
        except Exception:  # noqa: BLE001
            return None

    def status(self, node_id: str, timeout: float = 0.5) -> dict[str, Any] | None:
        try:
            return self.request_to(node_id, "STATUS", timeout)
        except Exception:  # noqa: BLE001
            return None

    def up_ids(self) -> list[str]:
        return [nid for nid, n in self.nodes.items() if n.state == UP]

    def agreed_leader(self, among: list[str] | None = None) -> tuple[str, int] | None:
        """Returns: (leader, term) when every node of `among` (default: every up node) names it."""
        return agreed_leader(self, among or self.up_ids())  # type: ignore[arg-type]

    def wait_up(self, timeout: float = 20.0) -> None:
        """Wait until every up node answers PING. Raises: AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        for nid in self.up_ids():
            try:
                wait_for(lambda nid=nid: self.ping(nid), max(0.0, deadline - time.monotonic()),
                         f"{nid} to answer PING", interval=0.05)
            except AssertionError as exc:
                raise AssertionError(f"{nid} did not answer PING within {timeout:g} s ({exc})\n"
                                     f"{self.log_tails()}") from None

    def health_problem(self) -> str | None:
        """Returns: why the cluster is not healthy now, or None when it is.

        Healthy: every node that should run does, every up node names the same leader, and every
        follower has applied what the leader had committed a moment before.
        """
        crashed = self.crashed()
        if crashed:
            return "crashed: " + ", ".join(f"{n} (exit {rc})" for n, rc in crashed.items())
        down = [nid for nid, n in self.nodes.items() if n.state != UP]
        if down:
            return f"not up: {', '.join(down)}"
        agreed = self.agreed_leader()
        if agreed is None:
            return "no leader named by every node"
        leader = agreed[0]
        lead = self.status(leader)
        if lead is None or lead.get("role") != "leader":
            return f"{leader} does not answer STATUS as leader"
        for nid in self.up_ids():
            if nid == leader:
                continue
            st = self.status(nid)
            if st is None:
                return f"{nid} does not answer STATUS"
            if st["applied_index"] < lead["commit_index"]:
                return f"{nid} applied {st['applied_index']} < leader commit {lead['commit_index']}"
        return None

    def log_tails(self, lines: int = 60) -> str:
        return "\n".join(f"----- {nid} ({n.log_path}) -----\n{n.log_tail(lines)}" for nid, n in self.nodes.items())
