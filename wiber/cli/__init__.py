"""The `wiber` command and the `wiber-node` launcher.

    wiber up      [--config PATH]        start every node of the config in the foreground
    wiber node    --config PATH --id ID  run one node (what `wiber-node` does)
    wiber ping    [--config PATH | --addr HOST:PORT ...]
    wiber status  [--config PATH | --addr HOST:PORT ...]
    wiber topics
    wiber pub     TOPIC [MESSAGE] [--batch N] [--linger-ms MS] [--window N]
    wiber sub     TOPIC|PATTERN [--from N] [--count N] [--json]   (PATTERN: orders.* or orders.>)
    wiber history TOPIC [--from N | --last N] [--limit N] [--all] [--linearizable] [--json]
    wiber consume GROUP PATTERN [--count N] [--json] [--ack-wait-ms MS] [--from-start] [--member NAME]
    wiber consumers [--json] [--delete GROUP]   the durable consumer groups: pattern, pending, lag
    wiber bench pub TOPIC [--messages N] [--size B] [--window N] [--batch N] [--linger-ms MS] [--publishers P]
    wiber bench sub TOPIC [--messages N] [--from N]

Every client command (and `up`) also takes `--config PATH | --addr HOST:PORT ...`, `--timeout S`
and `--key PATH` (default $WIBER_KEY: the client's secret key, for a config with a security section).
    wiber keygen  NAME [--dir DIR] [--force]   write NAME.key and NAME.key_secret (0600)
One module per group of commands: `node` (node, up), `info` (ping, status, topics), `pub`,
`read` (sub, history), `consume` (consume, consumers), `bench`, `keygen`; `common` holds what they
share. This module wires them into one parser and maps errors to exit statuses.

Output formats, made for pipes and scripts: see `wiber.cli.read`. Summaries and progress go to
stderr, so stdout holds only the data.

Exit status: 0 success, 1 the cluster did not answer or answered an error, 2 bad usage or config.
Only the node process configures logging handlers (one line per event, quiet by default).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from wiber.cli import bench, consume, info, keygen, node, pub, read
from wiber.cli.common import UsageError, fail
from wiber.cli.info import format_status_table
from wiber.cli.node import node_main, run_node
from wiber.cli.read import format_message
from wiber.client.curve import CurveError
from wiber.errors import ClientError, ConfigError, WireError

__all__ = ["build_parser", "format_message", "format_status_table", "main", "node_main", "run_node"]


def build_parser() -> argparse.ArgumentParser:
    """Returns: the `wiber` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="wiber",
        description="Wiber: a replicated publish/subscribe log. Start a cluster with `wiber up`, "
                    "then talk to it with the other commands.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (node, info, pub, read, consume, bench, keygen):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `wiber`."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, UsageError, CurveError) as exc:
        return fail(str(exc), 2)
    except (WireError, ClientError) as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
