"""Wiber's pytest plugin: a real 3-node cluster for your tests, started once per session.

Installing Wiber registers this module with pytest (entry point `pytest11`, plugin name `wiber`),
so a project that depends on Wiber gets two fixtures without any conftest:

* `wiber_cluster` (session scope): three `python -m wiber node --config ... --id ...` processes on
  free ports of 127.0.0.1, with their config, data and logs in a temporary directory of the session
  (`WiberCluster.root`; pytest keeps the last three). It is ready once every node answers PING and
  one of them is leader. It offers `.addresses` (the nodes' client addresses, `host:port`),
  `.config_path` (the cluster's YAML file, e.g. for `WIBER_CONFIG` or `wiber --config`) and
  `.client()` (a new `wiber.Client` on every node, closed at the end of the session). The nodes
  are killed by pid (SIGKILL) at the end of the session whatever happens: a failing test, Ctrl-C,
  an error in the fixture itself; on Linux the nodes also die with the pytest process if that is
  killed outright. Every pid started is recorded in `WiberCluster.pid_file`.
* `wiber_client` (function scope): a connected `wiber.Client` on every node, closed after the test.

A node that does not come up fails the fixture with an error naming the node's log file and its
last lines; a failing test that used the cluster gets a report section with the nodes' log files.
The cluster starts only when a test asks for one of these fixtures: loading the plugin costs nothing.

Example, a test file of your project::

    def test_orders(wiber_client):
        ack = wiber_client.publish("orders", b"hello")
        assert wiber_client.history("orders", from_offset=ack.offset).messages[0].data == b"hello"

Setting (pytest.ini, pyproject.toml's [tool.pytest.ini_options] or `-o`): `wiber_start_timeout`,
the seconds the cluster may take to elect a leader (default 30). `-p no:wiber` turns the plugin
off; where plugin autoloading is off (PYTEST_DISABLE_PLUGIN_AUTOLOAD), `-p wiber.pytest_plugin`
turns it on. A cluster of another size or with other settings: `WiberCluster(root, size=5,
settings={"retention": {"max_messages": 100}})` used as a context manager in a fixture of your own.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from wiber.errors import WiberError

if TYPE_CHECKING:  # the client library imports zmq: kept out of pytest's start when no test uses it
    from wiber.client import Client, Timeouts

__all__ = ["ClusterStartError", "WiberCluster", "WiberNode", "wiber_client", "wiber_cluster"]

#: Seconds a cluster may take, by default, until every node answers PING and one of them leads.
START_TIMEOUT_S = 30.0
#: How many times the cluster is started on fresh ports when a port was taken in the meantime.
PORT_ATTEMPTS = 3
#: Lines of a node's log shown in an error or in a failing test's report.
LOG_TAIL_LINES = 20
#: How a node says that a port of its config is taken (wiber/node/transport.py).
PORT_TAKEN = "already in use"

# Started by `python -c` before the node on Linux: the kernel SIGKILLs the node when the thread that
# started it (pytest's main thread) dies, even by SIGKILL, where no finalizer or atexit runs.
# PR_SET_PDEATHSIG (1) survives the exec; a parent already gone by then is caught by getppid.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit("wiber pytest plugin: the pytest process ended before this node started")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

_handed_out: set[int] = set()  # ports given to a cluster of this process, never given twice
_running: list[WiberCluster] = []  # clusters not closed yet: atexit kills their nodes


class ClusterStartError(WiberError):
    """The cluster did not come up: a node exited, or no leader within the start timeout."""


class WiberNode:
    """One node process of a `WiberCluster`."""

    def __init__(self, node_id: str, port: int, raft_port: int, pub_port: int, log_path: Path,
                 metrics_port: int = 0) -> None:
        self.id = node_id
        self.port = port
        self.raft_port = raft_port
        self.pub_port = pub_port
        #: Where the node serves Prometheus metrics, `http://127.0.0.1:<metrics_port>/metrics`.
        self.metrics_port = metrics_port
        #: The node's stdout and stderr (its log lines at level info).
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The client address, `127.0.0.1:port`, as `wiber.Client` and `wiber --addr` take it."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id, or None before the node was started."""
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        """Returns: whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (by its pid) if it runs, and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # not reaped in time; SIGKILL is sent, the kernel finishes it
            pass

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Returns: the last `lines` lines of the node's log (or why there are none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


class WiberCluster:
    """A cluster of real Wiber node processes on 127.0.0.1, its files in `root`.

    `start()` starts it and waits for a leader; `close()` kills every node and closes every client
    made by `client()`. As a context manager it does both.

    Args:
        root: an existing directory for the config (`cluster.yaml`), the data (`data/`), the node
            logs (`n1.log`, ...) and the pid file (`pids`).
        size: how many nodes (3 or 5 make sense: Raft needs a majority).
        settings: keys of the config's `cluster` section (`python -m pydoc wiber.config`), e.g.
            `{"retention": {"max_messages": 100}}`; `data_dir` is always `root/data`.
        start_timeout_s: how long `start()` waits for every node to answer and a leader.
    """

    def __init__(self, root: Path, size: int = 3, settings: Mapping[str, Any] | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.root = Path(root)
        self.size = size
        self.settings = dict(settings or {})
        self.start_timeout_s = start_timeout_s
        self.config_path = self.root / "cluster.yaml"
        #: One line per node process ever started by this cluster: `node_id pid`.
        self.pid_file = self.root / "pids"
        self.nodes: list[WiberNode] = []
        self.leader: str | None = None
        self._clients: list[Client] = []
        self._closed = False

    # ------------------------------------------------------------------ what tests use

    @property
    def addresses(self) -> list[str]:
        """The client addresses of every node, `127.0.0.1:port`, in node order."""
        return [node.address for node in self.nodes]

    def client(self, timeouts: Timeouts | None = None) -> Client:
        """Returns: a new `wiber.Client` on every node (the default `Timeouts` unless given), closed
        by `close()` at the latest."""
        from wiber.client import Client

        client = Client(self.addresses, timeouts)
        self._clients.append(client)
        return client

    def release(self, client: Client) -> None:
        """Close a client of `client()` now, instead of at `close()`."""
        if client in self._clients:
            self._clients.remove(client)
        client.close()

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """Returns: each node's log file and its last `lines` lines."""
        return "\n".join(f"----- {node.id}: {node.log_path} -----\n{node.log_tail(lines)}" for node in self.nodes)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start every node and wait until each answers PING and one is leader.

        A port taken by another process between choosing it and the node binding it starts the
        cluster again on fresh ports (at most PORT_ATTEMPTS times). Whatever goes wrong, no node
        started here is left running when this raises.

        Raises:
            ClusterStartError: a node exited (the error names its log file) or the cluster had no
                leader within `start_timeout_s`.
        """
        if self._closed:
            raise ClusterStartError("this cluster was closed; make a new WiberCluster")
        _running.append(self)
        try:
            for attempt in range(1, PORT_ATTEMPTS + 1):
                self._launch()
                try:
                    self.leader = self._wait_ready(time.monotonic() + self.start_timeout_s,
                                                   retry_on_port=attempt < PORT_ATTEMPTS)
                    return
                except _PortTaken:
                    self._kill_nodes()
        except BaseException:  # KeyboardInterrupt too: the nodes die before it goes on
            self.close()
            raise

    def close(self) -> None:
        """Kill every node by its pid (SIGKILL), then close the clients of `client()`. Idempotent.

        The nodes go first: whatever a client's close does, no node outlives the cluster.
        """
        self._closed = True
        try:
            self._kill_nodes()
        finally:
            if self in _running:
                _running.remove(self)
            clients, self._clients = self._clients, []
            for client in clients:
                client.close()

    def __enter__(self) -> WiberCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _launch(self) -> None:
        """Write the config on fresh ports and start one process per node."""
        import yaml

        ports = _free_ports(4 * self.size)
        self.nodes = [
            WiberNode(f"n{i + 1}", ports[4 * i], ports[4 * i + 1], ports[4 * i + 2], self.root / f"n{i + 1}.log",
                      metrics_port=ports[4 * i + 3])
            for i in range(self.size)
        ]
        doc = {
            "cluster": {**self.settings, "data_dir": str(self.root / "data")},
            "nodes": [{"id": n.id, "host": "127.0.0.1", "port": n.port, "raft_port": n.raft_port,
                       "pub_port": n.pub_port, "metrics_port": n.metrics_port} for n in self.nodes],
        }
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        for node in self.nodes:
            node_cmd = ["-m", "wiber", "node", "--config", str(self.config_path), "--id", node.id,
                        "--log-level", "info"]
            with open(node.log_path, "ab") as log:
                # Own session: a Ctrl-C in the terminal reaches pytest only, which then kills the nodes.
                node.proc = subprocess.Popen(_node_command(node_cmd), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=str(self.root),
                                             start_new_session=True)
            with open(self.pid_file, "a") as pids:
                pids.write(f"{node.id} {node.pid}\n")

    def _wait_ready(self, deadline: float, retry_on_port: bool) -> str:
        """Returns: the leader's id, once every node answers PING and one of them leads.

        Raises:
            _PortTaken: a node exited because a port was taken, and `retry_on_port`.
            ClusterStartError: a node exited, or the deadline passed.
        """
        from wiber.client import Client, Timeouts

        pongs: dict[str, dict[str, Any]] = {}
        with Client(self.addresses, Timeouts(per_try_s=0.25, total_s=0.25)) as pinger:
            while True:
                for node in self.nodes:
                    self._check_alive(node, retry_on_port)
                    try:
                        pongs[node.id] = pinger.request_to(node.address, "PING")
                    except WiberError:
                        pongs.pop(node.id, None)
                leaders = [nid for nid, pong in pongs.items() if pong.get("role") == "leader"]
                if len(pongs) == len(self.nodes) and leaders:
                    return leaders[0]
                if time.monotonic() >= deadline:
                    raise ClusterStartError(self._not_ready(pongs))
                time.sleep(0.05)

    def _check_alive(self, node: WiberNode, retry_on_port: bool) -> None:
        """Raise if `node` has exited (`_PortTaken` when it lost a port race and may retry)."""
        assert node.proc is not None
        status = node.proc.poll()
        if status is None:
            return
        tail = node.log_tail()
        if retry_on_port and PORT_TAKEN in tail:
            raise _PortTaken(node.id)
        raise ClusterStartError(
            f"wiber node {node.id} exited with status {status} before the cluster was up; "
            f"its log is {node.log_path}; last lines:\n{tail}")

    def _not_ready(self, pongs: Mapping[str, Mapping[str, Any]]) -> str:
        """Returns: why the cluster is not ready at the deadline, naming the log files to read."""
        silent = [node for node in self.nodes if node.id not in pongs]
        if silent:
            what = ", ".join(f"{node.id} (log {node.log_path})" for node in silent)
            head = f"these nodes did not answer PING within {self.start_timeout_s:g} s: {what}"
        else:
            head = f"no node became leader within {self.start_timeout_s:g} s"
        return f"wiber cluster in {self.root}: {head}\n{self.log_tails()}"

    def _kill_nodes(self) -> None:
        """SIGKILL every node process still running, each by its pid, and reap them."""
        for node in self.nodes:
            node.kill()


class _PortTaken(Exception):
    """A node exited because one of its ports was taken after it was chosen: start again."""


def _node_command(node_args: list[str]) -> list[str]:
    """Returns: the command that runs `python <node_args>`; on Linux, through a tiny launcher that
    makes the node die with this thread (only from the main thread: another may end early)."""
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *node_args]
    return [sys.executable, *node_args]


def _free_ports(count: int) -> list[int]:
    """Returns: `count` distinct TCP ports of 127.0.0.1 that were free a moment ago and were not
    handed out before in this process (held open together while choosing, so they differ)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


@atexit.register
def _kill_leftovers() -> None:
    """The last resort when the interpreter exits with a cluster not closed: kill its nodes."""
    for cluster in list(_running):
        cluster._kill_nodes()


# ---------------------------------------------------------------------- pytest hooks and fixtures

def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini setting `wiber_start_timeout`."""
    parser.addini("wiber_start_timeout", "seconds the wiber_cluster fixture waits for every node and a leader "
                  f"(default {START_TIMEOUT_S:g})", default=str(START_TIMEOUT_S))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failing test that used the cluster gets a report section: each node's log file and tail."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running and "wiber_cluster" in getattr(item, "fixturenames", ()):
        for cluster in _running:
            report.sections.append((f"wiber node logs ({cluster.root})", cluster.log_tails()))


@pytest.fixture(scope="session")
def wiber_cluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[WiberCluster]:
    """A 3-node Wiber cluster for the whole session, with a leader; its nodes are killed at the end.

    `.addresses` are the nodes' client addresses, `.client()` gives a new `wiber.Client` on all of
    them, `.root` holds the config, data and node logs.
    """
    cluster = WiberCluster(tmp_path_factory.mktemp("wiber"),
                           start_timeout_s=float(pytestconfig.getini("wiber_start_timeout")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def wiber_client(wiber_cluster: WiberCluster) -> Iterator[Client]:
    """A `wiber.Client` on every node of `wiber_cluster`, closed (with its subscriptions) after the test."""
    client = wiber_cluster.client()
    try:
        yield client
    finally:
        wiber_cluster.release(client)
