"""`wiber ping`, `wiber status` and `wiber topics`: what each node says about itself and the cluster.

`ping` and `status` end with the exit status of `wiber.cli.health` (0 all up with a leader, 1 some
down but a quorum with a leader, 3 no quorum); `status --watch` refreshes its table every interval
with per-second rates from successive STATUS answers (`wiber.cli.watch`). With `--json` each prints
one JSON document instead of its table; the keys are documented in docs/operations.md ("JSON output").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from wiber.cli.common import Subcommands, client_args, float_at_least, int_between, open_client
from wiber.cli.health import NodeAnswer, Verdict, classify, verdict
from wiber.errors import ClientError, WireError

EXIT_HELP = ("exit status: 0 every node up and a leader; 1 some nodes down or answering an error, but a\n"
             "majority there and a leader; 3 no quorum (fewer than a majority answered, or no leader among\n"
             "them); 2 bad usage or config. See docs/operations.md, \"Exit status\".")


def register(sub: Subcommands) -> None:
    """Add `ping`, `status` and `topics` to the `wiber` parser."""
    p = sub.add_parser(
        "ping", help="PING every node",
        description="PING every node: one line each with its id, role, term, the leader it knows and the "
                    "round trip, then a summary line on stderr. With --json one JSON document: "
                    "{\"nodes\": [{address, state, node, role, term, leader, rtt_ms, error}], "
                    "\"cluster\": {nodes, up, error, down, majority, leader, term, exit_status, summary}}.",
        epilog="examples:\n  wiber ping --config conf/cluster.yaml\n"
               "  wiber ping --addr 127.0.0.1:9101 --json | jq .cluster.leader\n\n" + EXIT_HELP,
    )
    p.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    client_args(p)
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser(
        "status", help="STATUS of every node, one row each (--watch: refreshing, with rates)",
        description="STATUS of every node as a table, one row each, then a summary line on stderr. "
                    "--watch refreshes it every --interval seconds (in place on a terminal; one table per "
                    "interval otherwise) with per-second rates from successive answers: MSGS/s (messages "
                    "stored), REQS/s (client requests answered), COMMIT/s and APPLY/s (Raft entries: a batch is one entry), DROP/s (messages the transport dropped), "
                    "until Ctrl-C or --count refreshes. With --json one JSON document: {\"nodes\": [{address, "
                    "state, node, error, status, rates}], \"cluster\": {...as ping}} where status is the "
                    "node's STATUS reply; with --watch, one such document per line per interval.",
        epilog="examples:\n  wiber status\n  wiber status --watch --interval 2\n"
               "  wiber status --json | jq '.nodes[].status.commit_index'\n\n" + EXIT_HELP
               + "\nWith --watch, the exit status is that of the last refresh.",
    )
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    p.add_argument("--watch", action="store_true", help="refresh every --interval seconds, with rates")
    p.add_argument("--interval", type=float_at_least(0.0, strict=True), default=1.0, metavar="S",
                   help="seconds between refreshes with --watch (default 1)")
    p.add_argument("--count", type=int_between(1, None), metavar="N",
                   help="with --watch, stop after N refreshes (default: until Ctrl-C)")
    client_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "topics", help="list topics with their end offsets",
        description="Print one line per topic, `TOPIC<TAB>END_OFFSET`, sorted by name; the end offset is the "
                    "offset the topic's next message will get. With --json one JSON document: "
                    "{\"topics\": [{\"topic\": NAME, \"end_offset\": N}, ...]}, sorted by name.",
        epilog="examples:\n  wiber topics\n  wiber topics --json | jq '.topics[] | select(.end_offset > 0)'\n\n"
               "exit status: 0 listed; 1 the cluster did not answer; 2 bad usage or config.",
    )
    p.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    client_args(p)
    p.set_defaults(func=cmd_topics)


def print_json(doc: Any) -> None:
    """Print one JSON document on one line of stdout and flush it (a pipe reader sees it at once)."""
    print(json.dumps(doc, sort_keys=False, default=repr))
    sys.stdout.flush()


def summary_line(result: Verdict) -> None:
    """Print the verdict's summary on stderr, so stdout keeps only the data."""
    print(f"wiber: {result.summary}", file=sys.stderr)


def cmd_ping(args: argparse.Namespace) -> int:
    """PING every node given; one line each (or one JSON document). Returns: health's exit status."""
    answers: list[NodeAnswer] = []
    rtts: dict[str, float] = {}
    with open_client(args) as client:
        for address in client.addresses:
            started = time.monotonic()
            try:
                pong: dict[str, Any] | BaseException = client.request_to(address, "PING")
                rtts[address] = (time.monotonic() - started) * 1000
            except (WireError, ClientError) as exc:
                pong = exc
            answer = classify(address, pong)
            answers.append(answer)
            if not args.json:
                print(format_ping_line(answer, rtts.get(address)))
                sys.stdout.flush()
    result = verdict(answers)
    if args.json:
        print_json({"nodes": [ping_json(a, rtts.get(a.address)) for a in answers], "cluster": result.as_json()})
    else:
        summary_line(result)
    return result.exit_status


def format_ping_line(answer: NodeAnswer, rtt_ms: float | None) -> str:
    """Returns: one line of `wiber ping`: the node's view, or why it did not answer."""
    pong = answer.reply
    if pong is None:
        return f"{answer.address}  {'ERROR' if answer.state == 'error' else 'DOWN'}  {answer.error}"
    return (f"{answer.address}  {pong['node']}  {pong['role']}  term={pong['term']}  "
            f"leader={pong['leader'] or '-'}  rtt={rtt_ms or 0:.2f}ms")


def ping_json(answer: NodeAnswer, rtt_ms: float | None) -> dict[str, Any]:
    """Returns: one node's object in `ping --json`: the same keys whatever its state (null when unknown)."""
    pong = answer.reply or {}
    return {"address": answer.address, "state": answer.state, "node": pong.get("node"), "role": pong.get("role"),
            "term": pong.get("term"), "leader": pong.get("leader"),
            "rtt_ms": None if rtt_ms is None else round(rtt_ms, 3), "error": answer.error}


def status_json(answer: NodeAnswer, rates: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Returns: one node's object in `status --json`; `status` is its STATUS reply, null unless up."""
    return {"address": answer.address, "state": answer.state, "node": answer.node, "error": answer.error,
            "status": answer.reply, "rates": rates}


def format_status_table(rows: dict[str, dict[str, Any] | BaseException],
                        rates: dict[str, dict[str, float | None] | None] | None = None) -> str:
    """Returns: one table row per node of STATUS replies (or why a node did not answer); with `rates`
    (per address, from `health.rates`), the per-second columns of `status --watch` too."""
    header = ["NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "CLOCK±ms", "UPTIME"]
    if rates is not None:
        header += ["MSGS/s", "REQS/s", "COMMIT/s", "APPLY/s", "DROP/s"]
    table = [header]
    for address, st in rows.items():
        if isinstance(st, BaseException):
            state = classify(address, st).state  # it answered, but not STATUS (FORBIDDEN): error
            row = ["?", address, state, "-", "-", "-", "-", "-", "-", str(st)[:60]]
            table.append(row + ["-"] * (len(header) - len(row)))
            continue
        clock = st.get("clock") or {}
        row = [
            str(st["node"]), address, str(st["role"]), str(st["term"]), str(st["leader"] or "-"),
            str(st["commit_index"]), str(st["applied_index"]), str(st["last_index"]),
            f"{clock.get('offset_ms', 0):+.1f}±{clock.get('error_ms', 0):.1f}",
            f"{st['uptime_s']:.0f}s",
        ]
        if rates is not None:
            node_rates = rates.get(address) or {}
            row += [_rate(node_rates.get(k)) for k in ("stored_per_s", "requests_per_s", "commit_per_s",
                                                       "applied_per_s", "dropped_per_s")]
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _rate(value: float | None) -> str:
    """Returns: a rate cell: `-` before there are two answers to compare."""
    return "-" if value is None else f"{value:.1f}"


def cmd_status(args: argparse.Namespace) -> int:
    """STATUS of every node as a table (or one JSON document); --watch refreshes it. Returns: the exit status."""
    if args.watch:
        from wiber.cli.watch import watch_status

        return watch_status(args)
    if args.count is not None:
        from wiber.cli.common import UsageError

        raise UsageError("--count counts the refreshes of --watch: give --watch too")
    with open_client(args) as client:
        rows = client.status_all()
    answers = [classify(address, st) for address, st in rows.items()]
    result = verdict(answers)
    if args.json:
        print_json({"nodes": [status_json(a) for a in answers], "cluster": result.as_json()})
    else:
        print(format_status_table(rows))
        summary_line(result)
    return result.exit_status


def cmd_topics(args: argparse.Namespace) -> int:
    """Print every topic and its end offset, one per line (or one JSON document), sorted by name."""
    with open_client(args) as client:
        topics = client.topics()
    if args.json:
        print_json({"topics": [{"topic": t, "end_offset": topics[t]} for t in sorted(topics)]})
        return 0
    for topic in sorted(topics):
        print(f"{topic}\t{topics[topic]}")
    return 0
