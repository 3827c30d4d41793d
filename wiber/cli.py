"""The `wiber` command and the `wiber-node` launcher.

    wiber up      [--config PATH]        start every node of the config in the foreground
    wiber node    --config PATH --id ID  run one node (what `wiber-node` does)
    wiber ping    [--config PATH | --addr HOST:PORT ...]
    wiber status  [--config PATH | --addr HOST:PORT ...]

Exit status: 0 success, 1 the cluster did not answer or answered an error, 2 bad usage or config.
Only this module configures logging handlers (one line per event, quiet by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from wiber.clock import SystemClock, skew_from_env
from wiber.config import Config, load_config
from wiber.errors import ClientError, ConfigError, NodeStartError, WireError

DEFAULT_CONFIG = os.environ.get("WIBER_CONFIG", "conf/cluster.yaml")
LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"

log = logging.getLogger("wiber.cli")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def _fail(message: str, status: int) -> int:
    print(f"wiber: {message}", file=sys.stderr)
    return status


# -------------------------------------------------------------------- node


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
        return _fail(str(exc), 2)
    node.install_signal_handlers()
    node.run()
    return 0


def node_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `wiber-node`."""
    args = _node_parser().parse_args(argv)
    return run_node(args.config, args.node_id, args.log_level)


# -------------------------------------------------------------------- client commands


def _addresses(args: argparse.Namespace) -> list[str]:
    if args.addr:
        return list(args.addr)
    config = load_config(args.config)
    return [n.client_addr for n in config.nodes]


def _client(args: argparse.Namespace) -> Any:
    from wiber.client import Client, Timeouts

    return Client(_addresses(args), Timeouts(per_try_s=args.timeout, total_s=max(args.timeout, 3 * args.timeout)))


def cmd_ping(args: argparse.Namespace) -> int:
    """PING every node given; one line each. Exit 1 when any node does not answer."""
    failed = 0
    with _client(args) as client:
        for address in client.addresses:
            started = time.monotonic()
            try:
                pong = client.request_to(address, "PING")
            except (WireError, ClientError) as exc:
                print(f"{address}  DOWN  {exc}")
                failed += 1
                continue
            rtt_ms = (time.monotonic() - started) * 1000
            print(f"{address}  {pong['node']}  {pong['role']}  term={pong['term']}  "
                  f"leader={pong['leader'] or '-'}  rtt={rtt_ms:.2f}ms")
    return 1 if failed else 0


def format_status_table(rows: dict[str, dict[str, Any] | BaseException]) -> str:
    """Returns: one table row per node of STATUS replies (or why a node did not answer)."""
    header = ["NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "CLOCK±ms", "UPTIME"]
    table = [header]
    for address, st in rows.items():
        if isinstance(st, BaseException):
            table.append(["?", address, "down", "-", "-", "-", "-", "-", "-", str(st)[:40]])
            continue
        clock = st.get("clock") or {}
        table.append([
            str(st["node"]), address, str(st["role"]), str(st["term"]), str(st["leader"] or "-"),
            str(st["commit_index"]), str(st["applied_index"]), str(st["last_index"]),
            f"{clock.get('offset_ms', 0):+.1f}±{clock.get('error_ms', 0):.1f}",
            f"{st['uptime_s']:.0f}s",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def cmd_status(args: argparse.Namespace) -> int:
    """STATUS of every node as a table. Exit 1 when any node does not answer."""
    with _client(args) as client:
        rows = client.status_all()
    print(format_status_table(rows))
    return 1 if any(isinstance(v, BaseException) for v in rows.values()) else 0


# -------------------------------------------------------------------- up


def _spawn_node(config_path: str, node_id: str, log_level: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "wiber", "node", "--config", config_path, "--id", node_id,
           "--log-level", log_level]
    # Own session: a terminal Ctrl-C reaches only `wiber up`, which then stops each node in order.
    return subprocess.Popen(cmd, start_new_session=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Start every node of the config, report endpoints and the leader, stop them all on Ctrl-C."""
    config: Config = load_config(args.config)
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
        _watch_cluster(config, procs, lambda: stopping, Client, Timeouts)
    finally:
        _stop_all(procs)
    return 0


def _watch_cluster(config: Config, procs: dict[str, subprocess.Popen[bytes]], stopping: Any,
                   client_cls: Any, timeouts_cls: Any) -> None:
    """Print when each node answers and whenever the leader changes, until stopped."""
    answered: set[str] = set()
    last_leader: object = object()
    with client_cls([n.client_addr for n in config.nodes], timeouts_cls(per_try_s=0.2, total_s=0.5)) as client:
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


# -------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Returns: the `wiber` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="wiber",
        description="Wiber: a replicated publish/subscribe log. Start a cluster with `wiber up`, "
                    "then talk to it with the other commands.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start every node of a config in the foreground")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"cluster YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("node", help="run one node (same as wiber-node)")
    _add_node_args(p)
    p.set_defaults(func=lambda a: run_node(a.config, a.node_id, a.log_level))

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"cluster YAML (default {DEFAULT_CONFIG})")
        p.add_argument("--addr", action="append", metavar="HOST:PORT",
                       help="a node's client address; repeat for several (overrides --config)")
        p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait per node (default 1)")

    p = sub.add_parser("ping", help="PING every node")
    client_args(p)
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("status", help="STATUS of every node, one row each")
    client_args(p)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `wiber`."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
