"""`wiber consume` and `wiber consumers`: a member of a durable consumer group on the command line, and
the list of groups (docs/consumers.md).

`wiber consume GROUP PATTERN` joins group GROUP (creating it on PATTERN when it is new), prints each
message it is given as `topic<TAB>offset<TAB>data` (or a JSON object per line, `wiber.cli.read`'s with
`delivery` added) and acks it once the line is written and flushed: a message is acked only after it
reached stdout, so a process that dies in between leaves it to come again after the group's ack_wait_ms
(at least once). Ctrl-C or SIGTERM stops it once the request in flight is answered (a second one at
once): no FETCH of it is left parked on the node to deliver to a member that is gone. What it was given
but did not write when it stops (a signal, a closed stdout, an error) it gives back with NAK, for the
next fetch of any member. `--count N` fetches at most the messages it still needs, so it leaves none
held when it ends.

`--ack-wait-ms` and `--from-start` are settings of a new group. For an existing group, leave them out
and the group's own are used; a value that differs from the group's is GroupConflict (exit 1), as is
another PATTERN. `wiber consumers` reads GROUPS from the leader when one answers (its applied state
holds every ack it answered), else from any node.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from wiber import protocol
from wiber.cli.common import Subcommands, UsageError, checked_topic, client_args, int_between, open_client
from wiber.cli.read import _lenient_stdout, _quiet_stdout, format_message
from wiber.errors import ClientError, GroupConflict, PendingCapReached, WireError

if TYPE_CHECKING:  # the client library imports zmq: kept out of `wiber --help`
    from types import FrameType

    from wiber.client import Client, ConsumedMessage, Consumer

#: Messages one FETCH asks for with --count 0: few, so a slow stdout holds few past ack_wait_ms.
BATCH = 10
#: How long one fetch waits on the cluster for a message, in seconds (the loop then asks again): also
#: how long a stop may wait for the FETCH in flight.
FETCH_WAIT_S = 0.5
#: How long to wait before asking again when the group holds as many unacked deliveries as it may.
CAP_PAUSE_S = 1.0

CONSUME_HELP = (
    "Join durable consumer group GROUP and print the messages it delivers, acking each once its line is "
    "written. A group lives in the cluster: it remembers how far it has delivered each topic PATTERN "
    "matches and which messages are delivered but not acked, across restarts of this command and of the "
    "nodes. It is created on first use; a new group starts at the end of each matching topic (only "
    "messages published from then on) unless --from-start, and a matching topic created later is "
    "delivered from its offset 0. Every member of a group (every `wiber consume` of it, and every "
    "Client.consumer) gets its own share of the messages. Delivery is at least once: a message printed "
    "but not acked when this process dies (or delivered to a member that vanished) is delivered again "
    "after the group's ack_wait_ms, with a higher delivery count; messages received but not printed when "
    "it stops (Ctrl-C, SIGTERM, a closed stdout) are given back at once. Ctrl-C or SIGTERM stops it "
    "after the request in flight (within about a second; a second Ctrl-C at once). "
    "Output: one line per message, `topic<TAB>offset<TAB>data` (data as UTF-8, undecodable bytes "
    "replaced), or with --json one JSON object per line with topic, offset, data, encoding, lamport, ts, "
    "index, late and delivery (1 on the first delivery), where data is the UTF-8 text or, when the bytes "
    "are not UTF-8, base64 (encoding says which). Stdout is flushed after each line, before its ack. "
    "Runs until Ctrl-C or SIGTERM (exit 0) or --count messages (stopped before those: exit 130 or 143); "
    "exit 1 when the cluster refuses the group (GroupConflict: the group exists with another pattern or "
    "settings; the message names them) or does not answer."
)


def register(sub: Subcommands) -> None:
    """Add `consume` and `consumers` to the `wiber` parser."""
    p = sub.add_parser("consume", help="print the messages a durable consumer group delivers, acking each",
                       description=CONSUME_HELP,
                       epilog="examples:\n  wiber consume billing 'orders.>'\n"
                              "  wiber consume audit orders.eu --from-start --count 100 --json\n\n"
                              "exit status: see above; 2 bad usage.")
    p.add_argument("group", metavar="GROUP", help="the group's name (a topic name without * or >)")
    p.add_argument("pattern", metavar="PATTERN",
                   help="the topics the group reads: a topic name or a pattern such as 'orders.*' (one token) "
                        "or 'orders.>' (one or more); quote it for the shell. An existing group must have "
                        "this pattern")
    p.add_argument("--count", type=int_between(0, None), default=0, metavar="N",
                   help="exit after N messages (default 0: until Ctrl-C); fetches no more than it still needs")
    p.add_argument("--json", action="store_true", help="one JSON object per line, with delivery")
    p.add_argument("--ack-wait-ms", type=int_between(1, protocol.ACK_WAIT_MS_MAX), metavar="MS",
                   help=f"a new group's hold: a message not acked within MS is delivered again (1 to "
                        f"{protocol.ACK_WAIT_MS_MAX}, default {protocol.ACK_WAIT_MS_DEFAULT}); for an existing "
                        f"group leave it out (its own is used) or give the same value")
    p.add_argument("--from-start", action="store_true", default=None,
                   help="a new group starts at the first kept message of each matching topic, not at its end "
                        "(an existing group: leave it out, or give it only if the group was made so)")
    p.add_argument("--member", metavar="NAME",
                   help="this member's name (default: host, pid and a random part); a message it holds can "
                        "be nak'ed only under the same name")
    client_args(p)
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser(
        "consumers", help="list the consumer groups with their pattern, pending count and lag",
        description="Print one row per consumer group: GROUP, PATTERN, ACK_WAIT_MS, TOPICS (how many topics "
                    "the pattern matches), PENDING (delivered, not acked yet) and LAG (kept messages not "
                    "delivered yet), sorted by name; with --json one JSON object per line with group, "
                    "pattern, ack_wait_ms, from_start, topics, pending and lag. Read from the leader when one "
                    "answers (it has applied every ack it answered), else from any node. With security, only "
                    "the groups whose pattern this client may read. --delete GROUP removes a group instead "
                    "(every member's state goes with it: its next use creates it anew).",
        epilog="examples:\n  wiber consumers\n  wiber consumers --json | jq 'select(.lag > 1000)'\n"
               "  wiber consumers --delete billing\n\n"
               "exit status: 0 listed or deleted; 1 the cluster did not answer, or no such group to delete.")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--delete", metavar="GROUP", help="delete consumer group GROUP (exit 1 when there is none)")
    client_args(p)
    p.set_defaults(func=cmd_consumers)


def checked_names(group: str, pattern: str | None = None, member: str | None = None) -> None:
    """Check the group, pattern and member names by the broker's own rules before anything is sent.

    Raises: UsageError naming the problem (exit 2).
    """
    from wiber.broker.consumers import ConsumerOp, CreateGroupOp, DeleteGroupOp, FetchOp, consumer_op_problem

    op: ConsumerOp = DeleteGroupOp(group)
    if pattern is not None:
        checked_topic(pattern, "subscribe")
        op = CreateGroupOp(group, pattern)
    problem = consumer_op_problem(op)
    if problem is None and member is not None:
        problem = consumer_op_problem(FetchOp(group, member, 1))
    if problem is not None:
        raise UsageError(problem)


def join(client: Client, args: argparse.Namespace) -> Consumer:
    """Returns: a member of group `args.group`, creating the group when it is new.

    An existing group's ack_wait_ms and from_start are taken for those options left out.

    Raises: GroupConflict: the group has another pattern, or a setting given differs from its own.
    """
    ack_wait_ms = protocol.ACK_WAIT_MS_DEFAULT if args.ack_wait_ms is None else args.ack_wait_ms
    from_start = bool(args.from_start)
    try:
        return client.consumer(args.group, args.pattern, ack_wait_ms=ack_wait_ms, from_start=from_start,
                               member=args.member)
    except GroupConflict:
        existing = leader_groups(client).get(args.group)
        if existing is None or existing["pattern"] != args.pattern:
            raise
        if args.ack_wait_ms is None:
            ack_wait_ms = int(existing["ack_wait_ms"])
        if args.from_start is None:
            from_start = bool(existing["from_start"])
        if (ack_wait_ms, from_start) != (existing["ack_wait_ms"], existing["from_start"]):
            raise
        return client.consumer(args.group, args.pattern, ack_wait_ms=ack_wait_ms, from_start=from_start,
                               member=args.member)


class StopSignals:
    """Ctrl-C and SIGTERM while consuming: the first asks the loop to stop once the request in flight is
    answered (so no FETCH is left parked on the node to deliver to a member that is gone, and nothing
    is left half-acked); a second stops at once (KeyboardInterrupt). A SIGINT ignored by whoever
    started the process (`nohup`, a background job) stays ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def requested(self) -> bool:
        """Returns: whether a signal asked to stop (a method: a handler sets it between any two lines)."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


def cmd_consume(args: argparse.Namespace) -> int:
    """Print and ack the messages group `args.group` delivers, until Ctrl-C, SIGTERM or --count.

    Returns: 0, or 128 + the signal's number when one stopped it before --count messages.
    """
    checked_names(args.group, args.pattern, args.member)
    _lenient_stdout()
    with StopSignals() as stop, open_client(args) as client:
        try:
            consumer = join(client, args)
            if consumer.created:
                start = "the first kept message" if consumer.from_start else "the end"
                print(f"created consumer group {args.group!r} on {args.pattern!r} (from {start} of each "
                      f"topic, ack_wait_ms {consumer.ack_wait_ms})", file=sys.stderr)
            printed = consume(consumer, args.count, args.json, stop)
        except BrokenPipeError:
            _quiet_stdout()  # the reader went away (`wiber consume g p | head`): not an error
            return 0
    if stop.signum is None or args.count == 0 or printed >= args.count:
        return 0
    return 128 + stop.signum


def consume(consumer: Consumer, count: int, as_json: bool, stop: StopSignals) -> int:
    """Fetch, print and ack until `count` messages were printed (0: no limit) or `stop` has a signal.

    Each line is flushed before its message is acked. Whatever was fetched but not written when this
    ends (a signal, a closed stdout, an error) is nak'ed, so the group delivers it again at once.

    Returns: how many messages were printed (and acked).
    """
    out = sys.stdout
    printed = 0
    warned = False
    while (count == 0 or printed < count) and not stop.requested():
        try:
            batch = consumer.fetch(BATCH if count == 0 else min(BATCH, count - printed), timeout=FETCH_WAIT_S)
        except PendingCapReached as exc:
            if not warned:
                print(f"wiber: {exc}; waiting for acks", file=sys.stderr)
                warned = True
            time.sleep(CAP_PAUSE_S)
            continue
        written = 0
        try:
            for message in batch:
                if stop.requested():
                    break
                out.write(format_consumed(message, as_json) + "\n")
                out.flush()
                written += 1
                message.ack()
                printed += 1
        finally:
            give_back(consumer, batch[written:])
    return printed


def give_back(consumer: Consumer, messages: list[ConsumedMessage]) -> None:
    """NAK the messages received but not written: best effort (unanswered, they come back after ack_wait_ms)."""
    if not messages:
        return
    try:
        consumer.nak(messages)
    except (WireError, ClientError):
        pass


def format_consumed(message: ConsumedMessage, as_json: bool) -> str:
    """Returns: one output line (without its newline): `topic<TAB>offset<TAB>data`, or `format_message`'s
    JSON object with ``delivery`` added."""
    if not as_json:
        return format_message(message.message, False, with_topic=True)
    fields = json.loads(format_message(message.message, True))
    fields["delivery"] = message.delivery
    return json.dumps(fields, ensure_ascii=False)


def leader_groups(client: Client) -> dict[str, dict[str, Any]]:
    """Returns: GROUPS as the leader has applied them (every ack it answered is in), or as the first node
    that answers has when the leader does not."""
    pong = client.ping()
    leader = pong.get("leader")
    if leader is not None and pong["node"] != leader:
        for address in client.addresses:
            try:
                if client.request_to(address, "PING")["node"] == leader:
                    return dict(client.request_to(address, "GROUPS")["groups"])
            except (WireError, ClientError):
                continue
    return client.groups()  # the node that answered the PING: the leader, or the best there is


def format_groups_table(groups: dict[str, dict[str, Any]]) -> str:
    """Returns: a header and one row per group: GROUP, PATTERN, ACK_WAIT_MS, TOPICS, PENDING, LAG."""
    table = [["GROUP", "PATTERN", "ACK_WAIT_MS", "TOPICS", "PENDING", "LAG"]]
    for name in sorted(groups):
        group = groups[name]
        table.append([name, str(group["pattern"]), str(group["ack_wait_ms"]), str(group["topics"]),
                      str(group["pending"]), str(group["lag"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def cmd_consumers(args: argparse.Namespace) -> int:
    """List the consumer groups (a table, or JSON lines), or delete one with --delete."""
    if args.delete is not None:
        checked_names(args.delete)
        with open_client(args) as client:
            deleted = bool(client.request("GROUP_DELETE", group=args.delete)["deleted"])
        if not deleted:
            print(f"wiber: no consumer group {args.delete!r}", file=sys.stderr)
            return 1
        print(f"deleted consumer group {args.delete!r}", file=sys.stderr)
        return 0
    with open_client(args) as client:
        groups = leader_groups(client)
    if args.json:
        for name in sorted(groups):
            print(json.dumps({"group": name, **groups[name]}, ensure_ascii=False))
    else:
        print(format_groups_table(groups))
    return 0
