"""Fixtures every test layer shares: real node processes, raw zmq sockets, waiting with a deadline.

* `cluster_factory(n=3, **cluster_settings)` starts N real `wiber node` processes on free
  127.0.0.1 ports with a temporary data dir; on a failing test each node's log tail is printed;
  whatever was started is killed at teardown, always. `security=[client entries]` (or True for
  none) gives the config a security section: a key pair per node and client is written into the
  cluster's `keys` directory with zmq.auth, and the harness's own clients and pings use the
  admin client `harness` (docs/design.md section 10); `ClusterHarness.curve(sock, node, key)`
  makes a raw socket a CURVE client of a node.
* `zmq_ctx` / `zmq_socket(kind)` track raw sockets, close them with linger 0, and fail a test whose
  context will not terminate (pyzmq's conftest).
* `wait_for(condition, timeout, what)` polls a condition until a deadline: the only way tests wait.
* `ClusterHarness.timing`: the time limits a test may assert, derived from the cluster's configured
  timeouts (a test that changes `election_timeout_ms` gets limits that follow), never bare numbers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import msgpack
import pytest
import yaml
import zmq
import zmq.auth

from wiber.client import Client, Timeouts
from wiber.config import Config, load_config

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent

_used_ports: set[int] = set()


def free_port() -> int:
    """Returns: a TCP port on 127.0.0.1 that was free a moment ago and not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _used_ports:
            _used_ports.add(port)
            return port


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy. Returns: that value.

    Raises:
        AssertionError: the deadline passed first (names `what` and the last exception seen).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # a condition may fail while the system settles
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def turn_until(node: Any, done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Turn an in-process node's loop (`wiber.node.Node.run_once`) until `done()`, within a deadline."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        node.run_once()


@dataclass(frozen=True, slots=True)
class Timing:
    """Time limits of one test cluster, derived from its configured timeouts (docs/design.md section 4)."""

    election_timeout_s: float
    heartbeat_s: float

    @property
    def failover_s(self) -> float:
        """Promise 6: a new leader accepts PUBs within 1.5 s at the default 300 ms election timeout."""
        return 5 * self.election_timeout_s

    @property
    def step_down_s(self) -> float:
        """CheckQuorum: a leader cut off steps down within about an election timeout; the rest is the
        time a test takes to notice (PINGs with a timeout of their own), the same bound as a failover."""
        return 5 * self.election_timeout_s

    @property
    def clock_error_s(self) -> float:
        """A follower's clock estimate rests on heartbeat round trips: its error stays within half a
        heartbeat interval when the round trips are faster than the heartbeats themselves."""
        return self.heartbeat_s / 2


class NodeProcess:
    """One real node process started by a test."""

    def __init__(self, node_id: str, log_path: Path) -> None:
        self.id = node_id
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


#: The admin client every secured harness adds to `security.clients` for its own clients and pings.
HARNESS_CLIENT = "harness"


class ClusterHarness:
    """N node processes of one cluster: start, kill, signal, restart, and clients to talk to them."""

    def __init__(self, root: Path, n: int, cluster_settings: dict[str, Any],
                 security: list[dict[str, Any]] | None = None) -> None:
        self.root = root
        self.config_path = root / "cluster.yaml"
        nodes = []
        for i in range(1, n + 1):
            nodes.append({
                "id": f"n{i}", "host": "127.0.0.1",
                "port": free_port(), "raft_port": free_port(), "pub_port": free_port(),
                "metrics_port": free_port(),
            })
        doc: dict[str, Any] = {"cluster": {"data_dir": str(root / "data"), **cluster_settings}, "nodes": nodes}
        #: Key pairs (public, secret) by node id and client name, when the cluster is secured.
        self.keys: dict[str, tuple[bytes, bytes]] = {}
        if security is not None:
            clients = [*security, {"name": HARNESS_CLIENT, "admin": True}]
            keys_dir = root / "keys"
            keys_dir.mkdir(mode=0o700)
            for name in [node["id"] for node in nodes] + [c["name"] for c in clients]:
                _, secret_file = zmq.auth.create_certificates(str(keys_dir), name)
                os.chmod(secret_file, 0o600)  # as `wiber keygen` leaves it (a node warns otherwise)
                public, secret = zmq.auth.load_certificate(secret_file)
                assert secret is not None
                self.keys[name] = (public, secret)
            doc["security"] = {"keys_dir": "keys", "clients": clients}  # relative to the config file
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self._doc = doc
        self.config: Config = load_config(str(self.config_path))
        self.nodes = {n.id: NodeProcess(n.id, root / f"{n.id}.log") for n in self.config.nodes}
        self._clients: list[Client] = []
        self._pingers: dict[str, Client] = {}
        self.timing = Timing(self.config.cluster.election_timeout_ms / 1000, self.config.cluster.heartbeat_ms / 1000)

    # ------------------------------------------------------------ processes

    def grow(self, node_id: str) -> None:
        """Add node `node_id` (free ports) to the YAML file, as an operator does before `cluster add`;
        running nodes read the file again when the node becomes a member. It is not started."""
        self._doc["nodes"].append({"id": node_id, "host": "127.0.0.1", "port": free_port(),
                                   "raft_port": free_port(), "pub_port": free_port(), "metrics_port": free_port()})
        self.config_path.write_text(yaml.safe_dump(self._doc, sort_keys=False))
        self.config = load_config(str(self.config_path))
        self.nodes[node_id] = NodeProcess(node_id, self.root / f"{node_id}.log")

    def start(self, node_id: str | None = None, env: dict[str, str] | None = None, join: bool = False) -> None:
        """Start one node (`join`: with --join), or every node that is not running."""
        ids = [node_id] if node_id else [i for i, p in self.nodes.items() if not p.running()]
        for nid in ids:
            node = self.nodes[nid]
            assert not node.running(), f"{nid} is already running"
            proc_env = {**os.environ, **(env or {})}
            with open(node.log_path, "ab") as logf:
                node.proc = subprocess.Popen(
                    [sys.executable, "-m", "wiber", "node", "--config", str(self.config_path),
                     "--id", nid, "--log-level", "info", *(["--join"] if join else [])],
                    stdout=logf, stderr=subprocess.STDOUT, env=proc_env, cwd=str(REPO),
                )

    def signal(self, node_id: str, sig: int) -> None:
        """Send a signal to a node this harness started."""
        node = self.nodes[node_id]
        assert node.proc is not None and node.running(), f"{node_id} is not running"
        os.kill(node.pid, sig)

    def kill(self, node_id: str) -> None:
        """kill -9 one node and reap it."""
        node = self.nodes[node_id]
        if node.proc is not None and node.running():
            node.proc.kill()  # SIGKILL ends a SIGSTOPped process too
            node.proc.wait(timeout=10)

    def stop(self, node_id: str, timeout: float = 5.0) -> int:
        """SIGTERM one node. Returns: its exit status."""
        node = self.nodes[node_id]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        return node.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill every process this harness started, then close its clients.

        The processes go first: whatever a client's close does, no node outlives the test.
        """
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()  # SIGKILL ends a SIGSTOPped process too
                node.proc.wait(timeout=10)
        for client in [*self._clients, *self._pingers.values()]:
            client.close()

    def log_tails(self) -> str:
        return "\n".join(f"----- {nid} ({n.log_path}) -----\n{n.log_tail()}" for nid, n in self.nodes.items())

    # ------------------------------------------------------------ talking to it

    def addr(self, node_id: str) -> str:
        return self.config.node(node_id).client_addr

    def addrs(self) -> list[str]:
        return [n.client_addr for n in self.config.nodes]

    def client(self, node_ids: list[str] | None = None, per_try_s: float = 0.5, total_s: float = 10.0) -> Client:
        """Returns: a Client on some or all nodes (the admin client's key when secured), closed at teardown."""
        addrs = [self.addr(i) for i in node_ids] if node_ids else self.addrs()
        client = Client(addrs, Timeouts(per_try_s=per_try_s, total_s=total_s), **self._client_keys())
        self._clients.append(client)
        return client

    def _client_keys(self) -> dict[str, Any]:
        """Returns: the Client arguments of the harness's admin key, or none for a cluster without security."""
        if not self.keys:
            return {}
        servers = {}
        for node in self.config.nodes:
            servers[node.client_addr] = servers[node.pub_addr] = self.keys[node.id][0]
        return {"client_key": self.keys[HARNESS_CLIENT], "server_keys": servers}

    def curve(self, sock: zmq.Socket, node_id: str, key: str | tuple[bytes, bytes] = HARNESS_CLIENT) -> zmq.Socket:
        """Make a raw socket, before it connects, a CURVE client of node `node_id` (any of its ports)
        with the key pair of client `key` (a name of this harness, or a pair). Returns: `sock`."""
        public, secret = self.keys[key] if isinstance(key, str) else key
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.keys[node_id][0])
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        return sock

    def ping(self, node_id: str, timeout: float = 0.5) -> dict[str, Any] | None:
        """Returns: the node's PONG, or None when it does not answer in time.

        One client per node serves every ping of a test (tests poll PING in loops: a client each
        time would cost a context, its threads and descriptors per call).
        """
        client = self._pingers.get(node_id)
        if client is None:
            client = self._pingers[node_id] = Client([self.addr(node_id)], **self._client_keys())
        client.timeouts = Timeouts(per_try_s=timeout, total_s=timeout)
        try:
            return client.request_to(self.addr(node_id), "PING")
        except Exception:
            return None

    def wait_up(self, timeout: float = 15.0) -> None:
        """Wait until every running node answers PING."""
        for nid, node in self.nodes.items():
            if node.running():
                wait_for(lambda nid=nid: self.ping(nid), timeout, f"{nid} to answer PING")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report on the item, so fixtures can tell a failing test at teardown."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., ClusterHarness]]:
    """Returns: a function that starts a cluster of real node processes; all of them die at teardown."""
    made: list[ClusterHarness] = []

    def make(n: int = 3, start: bool = True, security: list[dict[str, Any]] | bool | None = None,
             **cluster_settings: Any) -> ClusterHarness:
        root = tmp_path / f"cluster{len(made)}"
        root.mkdir()
        clients = None if security is None or security is False else [] if security is True else list(security)
        harness = ClusterHarness(root, n, cluster_settings, clients)
        made.append(harness)
        if start:
            harness.start()
            harness.wait_up()
        return harness

    yield make
    failed = getattr(request.node, "rep_call", None)
    errors: list[BaseException] = []
    for harness in made:
        if failed is not None and failed.failed:
            sys.stderr.write("\n" + harness.log_tails() + "\n")
        try:
            harness.close()
        except Exception as exc:  # the next harness's nodes must die too
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    """A fresh context; the test fails if it cannot terminate (a socket left open)."""
    ctx = zmq.Context()
    yield ctx
    done = threading.Event()

    def term() -> None:
        ctx.term()
        done.set()

    threading.Thread(target=term, daemon=True).start()
    if not done.wait(5.0):
        pytest.fail("zmq context did not terminate within 5 s: a socket was left open")


@pytest.fixture
def zmq_socket(zmq_ctx: zmq.Context) -> Iterator[Callable[[int], zmq.Socket]]:
    """Returns: a factory of raw sockets, each closed with linger 0 at teardown."""
    made: list[zmq.Socket] = []

    def make(kind: int) -> zmq.Socket:
        sock = zmq_ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


def raw_request(sock: zmq.Socket, body: bytes, timeout: float = 2.0) -> dict[str, Any]:
    """Send one frame on a REQ socket and return the decoded reply (raw zmq + msgpack only)."""
    sock.send(body)
    assert sock.poll(int(timeout * 1000)), "no reply before the deadline"
    reply = msgpack.unpackb(sock.recv(), raw=False)
    assert isinstance(reply, dict)
    return reply


def settled_subscribers(cluster: ClusterHarness, zmq_socket: Callable[[int], zmq.Socket], topic: str,
                        client: Client) -> list[zmq.Socket]:
    """Returns: one raw SUB socket per node on `topic`, each known to receive (settled).

    A SUB misses what is sent before its subscription settles, so this publishes to `topic` until
    every socket has heard, then drains what is still in flight.
    """
    subs = []
    for node in cluster.config.nodes:
        sub = zmq_socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode() + b"\0")
        sub.connect(node.pub_addr)
        subs.append(sub)
    heard = [False] * len(subs)

    def all_settled() -> bool:
        client.publish(topic, b"settle")
        for k, sub in enumerate(subs):
            while sub.poll(50):
                sub.recv_multipart()
                heard[k] = True
        return all(heard)

    wait_for(all_settled, 10, "every SUB to settle")
    for sub in subs:
        while sub.poll(300):
            sub.recv_multipart()
    return subs
