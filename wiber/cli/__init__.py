"""The `wiber` command and the `wiber-node` launcher.

    wiber [--log-level L] [--log-format text|json] [--version] COMMAND ...
    wiber up      [--config PATH]        start every node of the config, restart any that exits
    wiber node    --config PATH --id ID  run one node (what `wiber-node` does)
    wiber ping    [--config PATH | --addr HOST:PORT ...] [--json]
    wiber status  [--config PATH | --addr HOST:PORT ...] [--json] [--watch [--interval S] [--count N]]
    wiber topics  [--json]
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

Exit status: 0 success, 1 the cluster did not answer or answered an error, 2 bad usage or config;
`ping` and `status` also say 3 for no quorum (`wiber.cli.health`, docs/operations.md "Exit status").

`--log-level` and `--log-format` are global: accepted before the command or after it, by every
command (`wiber.cli.logs`: one line or one JSON object per record on stderr, quiet by default).
Every command's help ends with examples (`ExampleFormatter` keeps their lines as written); a unit
test walks the parser tree to hold every command to that.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterator, Sequence

import wiber
from wiber.cli import bench, cluster, consume, info, keygen, node, pub, read
from wiber.cli.common import UsageError, fail
from wiber.cli.logs import add_logging_args, setup_logging
from wiber.cli.info import format_status_table
from wiber.cli.node import node_main, run_node
from wiber.cli.read import format_message
from wiber.client.curve import CurveError
from wiber.errors import ClientError, ConfigError, WireError

__all__ = ["build_parser", "format_message", "format_status_table", "main", "node_main", "run_node"]


class ExampleFormatter(argparse.HelpFormatter):
    """Help text wrapped to the terminal, except lines that start with a space (examples, formats,
    tables), which are kept as written; blank lines separate paragraphs."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if paragraph:
                out.append(textwrap.fill(" ".join(paragraph), width, initial_indent=indent,
                                         subsequent_indent=indent))
                paragraph.clear()

        for line in text.splitlines():
            if not line.strip():
                flush()
                out.append("")
            elif line.startswith(" "):
                flush()
                out.append(indent + line)
            else:
                paragraph.append(line.strip())
        flush()
        return "\n".join(out)


def walk_parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Yields: (`prog`, parser) for `parser` and every subcommand parser below it, depth first."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from walk_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    """Returns: the `wiber` argument parser with every subcommand; every one takes the logging options."""
    parser = argparse.ArgumentParser(
        prog="wiber",
        description="Wiber: a replicated publish/subscribe log. Start a cluster with `wiber up`, "
                    "then talk to it with the other commands. --log-level and --log-format may also "
                    "follow the command.",
        epilog="examples:\n  wiber up --config conf/cluster.yaml\n  wiber status --watch\n"
               "  wiber pub orders 'order 17 shipped'\n  wiber sub orders --from 0\n"
               "  wiber --log-level info --log-format json ping --json",
    )
    parser.add_argument("--version", action="version", version=f"wiber {wiber.__version__}")
    add_logging_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (node, info, cluster, pub, read, consume, bench, keygen):
        group.register(sub)
    for _, p in walk_parsers(parser):
        p.formatter_class = ExampleFormatter
        if p is not parser:
            add_logging_args(p, top=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `wiber`."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except (ConfigError, UsageError, CurveError) as exc:
        return fail(str(exc), 2)
    except (WireError, ClientError) as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
