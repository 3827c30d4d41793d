"""`wiber node` / `wiber-node` (run one node) and `wiber up` (every node of a config, in the foreground)."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wiber.cli.common import DEFAULT_CONFIG, Subcommands, fail, key_arg, key_options
from wiber.clock import SystemClock, skew_from_env
from wiber.config import Config, load_config
from wiber.errors import ClientError, ConfigError, NodeStartError, WireError

if TYPE_CHECKING:
    from wiber.client import Client

#: The node process's first cycle-collector threshold (see run_node).
GC_THRESHOLD_0 = 20_000
LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def register(sub: Subcommands) -> None:
    """Add `up` and `node` to the `wiber` parser."""
    p = sub.add_parser("up", help="start every node of a config in the foreground")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"cluster YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    key_arg(p)  # to PING the nodes it started
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("node", help="run one node (same as wiber-node)")
    _add_node_args(p)
    p.set_defaults(func=lambda a: run_node(a.config, a.node_id, a.log_level))


def _setup_logging(level: str) -> None:
    """Only the node process configures logging handlers: one line per event, on stderr."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def _node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wiber-node",
        description="Run one Wiber node in the foreground until SIGTERM or SIGINT.",
    )
    _add_node_args(p)
    return p


def _add_node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="cluster YAML file (see conf/cluster.yaml)")
    p.add_argument("--id", required=True, dest="node_id", help="this node's id in the config, e.g. n1")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"], help="default: warning (quiet)")


def run_node(config_path: str, node_id: str, log_level: str) -> int:
    """Run one node until a signal stops it. Returns: the process exit status."""
    _setup_logging(log_level)
    from wiber.node import Node  # imported here: `wiber --help` stays fast

    try:
        config = load_config(config_path)
        config.node(node_id)
        clock = SystemClock(skew_from_env())
        node = Node(config, node_id, clock=clock)
    except (ConfigError, NodeStartError, ValueError) as exc:
        return fail(str(exc), 2)
    node.install_signal_handlers()
    # A loaded node allocates ~10 short-lived containers per message, so the default first
    # threshold (700) ran the cycle collector ~500 times a second; at 20,000 it runs rarely and
    # each run visits about the same survivors (pipelined publishing: ~10% less CPU per message,
    # measured with the older generations' thresholds at 20 instead of 10, as here).
    gc.set_threshold(GC_THRESHOLD_0, 20, 20)
    node.run()
    return 0


def node_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `wiber-node`."""
    args = _node_parser().parse_args(argv)
    return run_node(args.config, args.node_id, args.log_level)


def _spawn_node(config_path: str, node_id: str, log_level: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "wiber", "node", "--config", config_path, "--id", node_id,
           "--log-level", log_level]
    # Own session: a terminal Ctrl-C reaches only `wiber up`, which then stops each node in order.
    return subprocess.Popen(cmd, start_new_session=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Start every node of the config, report endpoints and the leader, stop them all on Ctrl-C."""
    config: Config = load_config(args.config)
    keys = key_options(args)  # before any node starts: a missing key is a usage error
    from wiber.client import Client, Timeouts

    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for node in config.nodes:
            procs[node.id] = _spawn_node(args.config, node.id, args.log_level)
        print(f"wiber: starting {len(procs)} nodes from {args.config} (Ctrl-C stops them all)")
        for node in config.nodes:
            print(f"  {node.id}: client {node.client_addr}  raft {node.raft_addr}  pub {node.pub_addr}"
                  f"  pid {procs[node.id].pid}")
        sys.stdout.flush()
        with Client([n.client_addr for n in config.nodes], Timeouts(per_try_s=0.2, total_s=0.5), **keys) as client:
            _watch_cluster(config, procs, lambda: stopping, client)
    finally:
        _stop_all(procs)
    return 0


def _watch_cluster(config: Config, procs: dict[str, subprocess.Popen[bytes]], stopping: Any,
                   client: Client) -> None:
    """Print when each node answers and whenever the leader changes, until stopped."""
    answered: set[str] = set()
    last_leader: object = object()
    while not stopping():
        for node in config.nodes:
            proc = procs[node.id]
            if proc.poll() is not None and node.id not in answered:
                print(f"wiber: node {node.id} exited with status {proc.returncode}")
                answered.add(node.id)
                continue
            try:
                pong = client.request_to(node.client_addr, "PING")
            except (WireError, ClientError):
                continue
            if node.id not in answered:
                answered.add(node.id)
                print(f"wiber: {node.id} is up ({pong['role']})")
            if pong["leader"] != last_leader and pong["role"] == "leader":
                last_leader = pong["leader"]
                print(f"wiber: leader is {pong['leader']} (term {pong['term']})")
            sys.stdout.flush()
        deadline = time.monotonic() + 0.5
        while not stopping() and time.monotonic() < deadline:
            time.sleep(0.05)


def _stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every node we started, wait, then SIGKILL any that would not stop."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for node_id, proc in procs.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"wiber: {node_id} stopped (status {proc.returncode})")
