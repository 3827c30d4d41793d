"""`wiber cluster list | add ID | remove ID`: the cluster's membership (docs/operations.md, "Membership").

`add` and `remove` start one single-server change on the leader (MEMBER_ADD, MEMBER_REMOVE) and wait
until it is committed, showing a learner's lag while it catches up; `list` shows the leader's view.
All three need an admin key when the cluster has a security section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from wiber.cli.common import (
    Subcommands,
    addresses,
    client_args,
    fail,
    float_at_least,
    key_options,
    open_client,
)
from wiber.client import Client, Timeouts
from wiber.config import load_config
from wiber.errors import BadRequest, ClientError, WireError

#: How often a change in progress is looked at.
POLL_S = 0.2
EXIT_HELP = ("exit status: 0 done; 1 the cluster refused the change or it did not finish within --wait;\n"
             "2 bad usage or config.")


def register(sub: Subcommands) -> None:
    """Add `cluster` and its subcommands to the `wiber` parser."""
    p = sub.add_parser(
        "cluster", help="list, add or remove the cluster's members",
        description="The cluster's membership: voters (they elect the leader and make a majority) and "
                    "learners (new nodes catching up, promoted to voters by the leader). One change at a "
                    "time; each is a log entry, so every node agrees on it. Grow: add the node to the YAML "
                    "on every node, start it with `wiber node --join`, then `wiber cluster add ID`. Shrink: "
                    "`wiber cluster remove ID`, then stop the node. Replace a lost disk: remove, wipe, start "
                    "with --join, add. See docs/operations.md, \"Membership\".",
        epilog="examples:\n  wiber cluster list\n  wiber cluster add n4 --wait 300\n"
               "  wiber cluster remove n2\n\n"
               + EXIT_HELP,
    )
    csub = p.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    q = csub.add_parser("list", help="the voters and learners, with each one's lag behind the leader",
                        description="The membership as the leader follows it: one line per member with its "
                                    "role and how many log entries it lacks, and the config's nodes that "
                                    "are not members. --json prints the leader's MEMBERS answer.",
                        epilog="examples:\n  wiber cluster list\n  wiber cluster list --json | jq .voters")
    q.add_argument("--json", action="store_true", help="the MEMBERS answer as one JSON document")
    client_args(q)
    q.set_defaults(func=cmd_list)
    for name, verb in (("add", "add"), ("remove", "remove")):
        q = csub.add_parser(
            name, help=f"{verb} one node, and wait until the change is committed",
            description=("Add node ID (listed in the config, started with `wiber node --join`) as a learner; "
                         "the leader makes it a voter once it caught up. Waits for that, showing its lag."
                         if name == "add" else
                         "Remove node ID (a voter or a learner). A leader removing itself hands leadership "
                         "over first. Waits until the change is committed; then stop the node."),
            epilog=f"examples:\n  wiber cluster {name} n4\n  wiber cluster {name} n4 --wait 30\n\n"
                   + EXIT_HELP,
        )
        q.add_argument("node", metavar="ID", help="the node's id in the config")
        q.add_argument("--wait", type=float_at_least(0.0, strict=True), default=120.0, metavar="S",
                       help="seconds to wait for the change to finish (default 120)")
        client_args(q)
        q.set_defaults(func=cmd_add if name == "add" else cmd_remove)


def leader_members(client: Client, nodes: list[str], per_try_s: float) -> dict[str, Any]:
    """Returns: the MEMBERS answer of the node that says it leads (a follower's when none does).

    Raises: ClientError: no node answered."""
    answers: list[dict[str, Any]] = []
    for address in nodes:
        try:
            answer = client.request_to(address, "MEMBERS")
        except (ClientError, WireError):
            continue
        if answer.get("leader") == answer.get("node"):
            return answer
        answers.append(answer)
    if not answers:
        raise ClientError(f"no node answered MEMBERS within {per_try_s:g} s: {', '.join(nodes)}")
    return answers[0]


def cmd_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        members = leader_members(client, addresses(args), args.timeout)
    if args.json:
        print(json.dumps(members, sort_keys=True))
        return 0
    lag = members.get("lag", {})
    print(f"{'NODE':<12} {'ROLE':<8} {'LAG':>10}")
    for node in members["voters"] + members["learners"]:
        role = "voter" if node in members["voters"] else "learner"
        mark = " (leader)" if node == members.get("leader") else ""
        print(f"{node:<12} {role:<8} {lag.get(node, '-'):>10}{mark}")
    if not args.addr:
        listed = members["voters"] + members["learners"]
        others = [n.id for n in load_config(args.config).nodes if n.id not in listed]
        for node in others:
            print(f"{node:<12} {'-':<8} {'-':>10} (in the config, not a member)")
    committed = members["commit_index"] >= members["membership_index"]
    print(f"membership at log index {members['membership_index']}, "
          f"{'committed' if committed else 'not committed yet'} (seen by {members['node']})", file=sys.stderr)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    if not args.addr and args.node not in {n.id for n in load_config(args.config).nodes}:
        return fail(f"{args.node} is not in {args.config}: add it to the nodes (host and ports) on every "
                    f"node's config first, start it with `wiber node --config CFG --id {args.node} --join`, "
                    f"then add it", 2)
    return _change(args, "MEMBER_ADD", lambda m: args.node in m["voters"],
                   lambda m: args.node in m["voters"] + m["learners"])


def cmd_remove(args: argparse.Namespace) -> int:
    def gone(members: dict[str, Any]) -> bool:
        return args.node not in members["voters"] + members["learners"]

    return _change(args, "MEMBER_REMOVE", gone, gone)


def _change(args: argparse.Namespace, op: str, done: Any, started: Any) -> int:
    """Send `op` unless the leader's membership shows it `started` already (a second run after a
    --wait that ran out, a reply lost and retried), then wait until it is `done` and committed."""
    nodes = addresses(args)
    deadline = time.monotonic() + args.wait
    with open_client(args) as client:
        members = leader_members(client, nodes, args.timeout)
        if not started(members):
            with Client(nodes, Timeouts(per_try_s=args.timeout, total_s=max(args.wait, args.timeout)),
                        **key_options(args)) as changer:
                try:  # retried at the leader, and while it says UNAVAILABLE
                    changer.request(op, node=args.node)
                except BadRequest:
                    if not started(leader_members(client, nodes, args.timeout)):
                        raise  # refused for its own reason, not because a lost reply's retry found it made
        shown = ""
        while True:
            members = leader_members(client, nodes, args.timeout)
            if done(members) and members["commit_index"] >= members["membership_index"]:
                break
            lag = members.get("lag", {}).get(args.node)
            learning = args.node in members["learners"]
            line = (f"{args.node}: learner, {lag} entries behind the leader" if learning
                    else f"{args.node}: waiting for the change to commit")
            if line != shown and sys.stderr.isatty():
                print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
            shown = line
            if time.monotonic() >= deadline:
                print(file=sys.stderr) if sys.stderr.isatty() else None
                hint = (f"; is it running (wiber node --config CFG --id {args.node} --join)?"
                        if args.node in members["learners"] else "")
                return fail(f"{op} {args.node} did not finish within {args.wait:g} s: {shown}{hint}", 1)
            time.sleep(POLL_S)  # polling a remote state at a human's pace; nothing here to wait on
    if shown and sys.stderr.isatty():
        print(file=sys.stderr)
    voters = ",".join(members["voters"])
    learners = f"; learners {','.join(members['learners'])}" if members["learners"] else ""
    verb = "is a voter" if op == "MEMBER_ADD" else "was removed (stop its process now)"
    print(f"{args.node} {verb}: voters {voters}{learners} (leader {members.get('leader')})")
    return 0
