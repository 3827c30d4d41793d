"""`wiber ping`, `wiber status` and `wiber topics`: what each node says about itself and the cluster."""

from __future__ import annotations

import argparse
import time
from typing import Any

from wiber.cli.common import Subcommands, client_args, open_client
from wiber.errors import ClientError, WireError


def register(sub: Subcommands) -> None:
    """Add `ping`, `status` and `topics` to the `wiber` parser."""
    p = sub.add_parser("ping", help="PING every node")
    client_args(p)
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("status", help="STATUS of every node, one row each")
    client_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("topics", help="list topics with their end offsets",
                       description="Print one line per topic, `TOPIC<TAB>END_OFFSET`, sorted by name; the end "
                                   "offset is the offset the topic's next message will get.")
    client_args(p)
    p.set_defaults(func=cmd_topics)


def cmd_ping(args: argparse.Namespace) -> int:
    """PING every node given; one line each. Exit 1 when any node does not answer."""
    failed = 0
    with open_client(args) as client:
        for address in client.addresses:
            started = time.monotonic()
            try:
                pong = client.request_to(address, "PING")
            except (WireError, ClientError) as exc:
                print(f"{address}  {'ERROR' if isinstance(exc, WireError) else 'DOWN'}  {exc}")
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
            state = "error" if isinstance(st, WireError) else "down"  # it answered, but not STATUS (FORBIDDEN)
            table.append(["?", address, state, "-", "-", "-", "-", "-", "-", str(st)[:60]])
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
    with open_client(args) as client:
        rows = client.status_all()
    print(format_status_table(rows))
    return 1 if any(isinstance(v, BaseException) for v in rows.values()) else 0


def cmd_topics(args: argparse.Namespace) -> int:
    """Print every topic and its end offset, one per line, sorted by name."""
    with open_client(args) as client:
        topics = client.topics()
    for topic in sorted(topics):
        print(f"{topic}\t{topics[topic]}")
    return 0
