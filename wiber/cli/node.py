"""`wiber node` / `wiber-node` (run one node) and `wiber up` (every node of a config, in the foreground).

`up` refuses to start when a port of the config is taken (`wiber.cli.ports`), then supervises its
nodes (`wiber.cli.supervise`): an exit is reported at once with the node's last log lines, and the
node restarted with backoff. The nodes inherit `up`'s --log-level and --log-format.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from wiber.cli.common import DEFAULT_CONFIG, Subcommands, fail, key_arg, key_options
from wiber.cli.logs import DEFAULT_FORMAT, DEFAULT_LEVEL, add_logging_args, setup_logging
from wiber.cli.ports import check_ports
from wiber.cli.supervise import SupervisedNode, Supervisor, stderr_bytes
from wiber.clock import SystemClock, skew_from_env
from wiber.config import Config, load_config
from wiber.errors import ClientError, ConfigError, NodeStartError, WireError

if TYPE_CHECKING:
    from wiber.client import Client

#: The node process's first cycle-collector threshold (see run_node).
GC_THRESHOLD_0 = 20_000


def register(sub: Subcommands) -> None:
    """Add `up` and `node` to the `wiber` parser."""
    p = sub.add_parser(
        "up", help="start every node of a config in the foreground, and restart any that exits",
        description="Start every node of the config as a child process and stay in the foreground: print "
                    "each node's endpoints and pid, when it answers and who leads. First every port the "
                    "config gives a node (client, raft, pub, and any other) must be free: if one is taken, "
                    "nothing starts and the line names the node, the port and, when it can be found, the "
                    "process holding it. A node that exits is reported at once with its exit status and "
                    "last log lines, and started again after 0.5 s, doubling to 30 s while it keeps "
                    "failing (back to 0.5 s once it has run 10 s). Node log lines go to stderr, at "
                    "--log-level in --log-format. Ctrl-C or SIGTERM stops every node.",
        epilog="examples:\n  wiber up --config conf/cluster.yaml\n"
               "  wiber --log-level info --log-format json up --config conf/cluster.yaml 2> nodes.jsonl\n\n"
               "exit status: 0 stopped by Ctrl-C or SIGTERM; 2 bad usage or config, or a port of the\n"
               "config is taken (nothing was started).",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"cluster YAML (default {DEFAULT_CONFIG})")
    key_arg(p)  # to PING the nodes it started
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "node", help="run one node (same as wiber-node)",
        description="Run one node of the config in the foreground until SIGTERM or SIGINT; log lines go to "
                    "stderr at --log-level in --log-format.",
        epilog="examples:\n  wiber node --config conf/cluster.yaml --id n1\n"
               "  wiber node --config conf/cluster.yaml --id n2 --log-level info --log-format json\n"
               "  wiber node --config conf/cluster.yaml --id n4 --join    # then: wiber cluster add n4\n\n"
               "exit status: 0 stopped by a signal; 2 bad config, or a port or the data directory "
               "unusable.",
    )
    _add_node_args(p, with_logging=False)  # --log-level and --log-format are `wiber`'s global options
    p.set_defaults(func=lambda a: run_node(a.config, a.node_id, a.log_level, a.log_format, a.join))


def _node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wiber-node",
        description="Run one Wiber node in the foreground until SIGTERM or SIGINT.",
        epilog="example:\n  wiber-node --config conf/cluster.yaml --id n1 --log-level info",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_node_args(p, with_logging=True)
    return p


def _add_node_args(p: argparse.ArgumentParser, with_logging: bool) -> None:
    p.add_argument("--config", required=True, help="cluster YAML file (see conf/cluster.yaml)")
    p.add_argument("--id", required=True, dest="node_id", help="this node's id in the config, e.g. n1")
    p.add_argument("--join", action="store_true",
                   help="join a running cluster with an empty data directory: a new node, or one whose disk "
                        "was replaced after `wiber cluster remove`; it waits for `wiber cluster add ID` and "
                        "never seeds a cluster of its own (ignored once the node has data)")
    if with_logging:
        add_logging_args(p, top=True)


def run_node(config_path: str, node_id: str, log_level: str = DEFAULT_LEVEL, log_format: str = DEFAULT_FORMAT,
             join: bool = False) -> int:
    """Run one node until a signal stops it. Returns: the process exit status."""
    setup_logging(log_level, log_format)
    from wiber.node import Node  # imported here: `wiber --help` stays fast

    try:
        config = load_config(config_path)
        config.node(node_id)
        clock = SystemClock(skew_from_env())
        node = Node(config, node_id, clock=clock, join=join)
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
    return run_node(args.config, args.node_id, args.log_level, args.log_format, args.join)


def _node_argv(config_path: str, node_id: str, log_level: str, log_format: str) -> list[str]:
    """Returns: the command line of one node of `wiber up`, with up's own logging options."""
    return [sys.executable, "-m", "wiber", "--log-level", log_level, "--log-format", log_format,
            "node", "--config", config_path, "--id", node_id]


def cmd_up(args: argparse.Namespace) -> int:
    """Check the config's ports, start every node, supervise them until Ctrl-C, then stop them all."""
    config: Config = load_config(args.config)
    keys = key_options(args)  # before any node starts: a missing key is a usage error
    problems = check_ports(config)
    for problem in problems:
        optional = "" if problem.required else " (it defaults: the node will serve without it)"
        print(f"wiber: {problem.describe()}{optional}", file=sys.stderr)
    refused = sum(p.required for p in problems)
    if refused:
        return fail(f"not starting {args.config}: {refused} of its ports cannot be bound (is this "
                    f"cluster already running?); stop what holds them or change the ports in the config", 2)
    from wiber.client import Client, Timeouts

    def say(text: str) -> None:
        print(text)
        sys.stdout.flush()

    supervisor = Supervisor([SupervisedNode(n.id, _node_argv(args.config, n.id, args.log_level, args.log_format),
                                            stderr_bytes()) for n in config.nodes], say)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        supervisor.start_all()
        say(f"wiber: starting {len(config.nodes)} nodes from {args.config} (Ctrl-C stops them all)")
        for node, supervised in zip(config.nodes, supervisor.nodes):
            say(f"  {node.id}: client {node.client_addr}  raft {node.raft_addr}  pub {node.pub_addr}"
                f"  pid {supervised.pid}")
        with Client([n.client_addr for n in config.nodes], Timeouts(per_try_s=0.2, total_s=0.5), **keys) as client:
            _watch_cluster(config, supervisor, lambda: stopping, client, say)
    finally:
        supervisor.stop_all()
    return 0


#: How often `up` PINGs its nodes to see them answer and the leader change.
PING_EVERY_S = 0.5
#: How often `up` looks for an exited node (and a restart that is due).
SUPERVISE_EVERY_S = 0.05


def _watch_cluster(config: Config, supervisor: Supervisor, stopping: Callable[[], bool], client: Client,
                   say: Callable[[str], None]) -> None:
    """Supervise the nodes; say when each process answers and whenever the leader changes, until stopped.

    Only a node whose own process is running is PINGed, and "is up" is said once per process
    (`SupervisedNode.answered`): what answers on a port is then the node `up` started.
    """
    last_leader: object = object()
    next_ping = time.monotonic()
    while not stopping():
        supervisor.turn()
        if time.monotonic() >= next_ping:
            next_ping = time.monotonic() + PING_EVERY_S
            for node, supervised in zip(config.nodes, supervisor.nodes):
                if stopping() or not supervised.running():
                    continue
                try:
                    pong = client.request_to(node.client_addr, "PING")
                except (WireError, ClientError):
                    continue
                if not supervised.answered:
                    supervised.answered = True
                    again = " again" if supervised.restarts else ""
                    say(f"wiber: {node.id} is up{again} ({pong['role']})")
                if pong["leader"] != last_leader and pong["role"] == "leader":
                    last_leader = pong["leader"]
                    say(f"wiber: leader is {pong['leader']} (term {pong['term']})")
                supervisor.turn()  # an exit is said at once, even while slow PINGs go round
        deadline = time.monotonic() + SUPERVISE_EVERY_S
        while not stopping() and time.monotonic() < deadline:
            time.sleep(0.01)
