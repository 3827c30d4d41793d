"""`wiber sub` and `wiber history`: print the stored messages of a topic, live or from the past.

A message prints as `offset<TAB>data` (data decoded as UTF-8, undecodable bytes replaced), as
`topic<TAB>offset<TAB>data` for `wiber sub PATTERN` (many topics), or with `--json` as one JSON
object per line whose `data` is the UTF-8 text, or base64 when the bytes are not UTF-8 (`encoding`
says which). Summaries go to stderr, so stdout holds only the data.
`wiber sub` exits 0 on Ctrl-C or a closed stdout (`wiber sub t | head`).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
from typing import TYPE_CHECKING

from wiber.cli.common import Subcommands, checked_topic, client_args, int_between, open_client
from wiber.protocol import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT
from wiber.topics import is_pattern

if TYPE_CHECKING:  # the client library imports zmq: kept out of `wiber --help`
    from wiber.client import Client, History, Message

FORMATS = ("Output: one message per line, `offset<TAB>data` (data as UTF-8, undecodable bytes replaced); "
           "with --json one JSON object per line with topic, offset, data, encoding, lamport, ts, index, "
           "where data is the UTF-8 text or, when the bytes are not UTF-8, base64 (encoding says which).")


def register(sub: Subcommands) -> None:
    """Add `sub` and `history` to the `wiber` parser."""
    p = sub.add_parser(
        "sub", help="print every message of a topic (or of a pattern's topics) as it is stored",
        description="Print the messages of TOPIC as they are stored: each once, in offset order, across node "
                    "failures (gaps are filled from HISTORY). Without --from, only messages stored from now on. "
                    "TOPIC may be a pattern of dot-separated tokens where * matches one token and a last > "
                    "one or more (orders.* gets orders.eu, not orders.eu.x; orders.> gets both): each "
                    "matching topic in its own offset order, a topic created later from its offset 0, and "
                    "each line starts with the topic: `topic<TAB>offset<TAB>data`. "
                    "Runs until Ctrl-C (exit 0) or --count messages. " + FORMATS,
        epilog="examples:\n  wiber sub orders --from 0 --count 10\n  wiber sub 'orders.>' --json | jq .data\n\n"
               "exit status: 0 stopped by Ctrl-C or after --count; 1 the cluster did not answer; 2 bad usage.",
    )
    p.add_argument("topic", metavar="TOPIC", help="topic name, or a pattern such as 'orders.*' or 'orders.>' "
                                                   "(quote it for the shell)")
    p.add_argument("--from", dest="from_offset", type=int_between(0, None), metavar="N",
                   help="start at offset N (0: the whole kept history, then live); with a pattern, in every "
                        "topic that matches now")
    p.add_argument("--count", type=int_between(1, None), metavar="N", help="exit after N messages")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    client_args(p)
    p.set_defaults(func=cmd_sub)

    p = sub.add_parser(
        "history", help="print stored messages of a topic",
        description="Print stored messages of TOPIC in offset order, then to stderr one line "
                    "`first_offset=F end_offset=E next_offset=N`: the oldest offset kept (retention), the "
                    "offset the next message will get, and where to read on with --from. "
                    "One request returns at most 1000 messages; --all pages through them all. " + FORMATS,
        epilog="examples:\n  wiber history orders --last 20\n  wiber history orders --all --json > orders.jsonl\n"
               "  wiber history orders --from 1500 --limit 500 --linearizable\n\n"
               "exit status: 0 printed; 1 the cluster did not answer or refused; 2 bad usage.",
    )
    p.add_argument("topic", metavar="TOPIC", help="topic name")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_offset", type=int_between(0, None), metavar="N",
                       help="start at offset N (default: the oldest kept)")
    start.add_argument("--last", type=int_between(1, None), metavar="N", help="the newest N messages")
    p.add_argument("--limit", type=_history_limit, metavar="N",
                   help=f"messages per request, 1-{HISTORY_MAX_LIMIT} (default {HISTORY_DEFAULT_LIMIT}; "
                        f"with --last N, N up to {HISTORY_MAX_LIMIT}; with --all, {HISTORY_MAX_LIMIT})")
    p.add_argument("--all", action="store_true",
                   help="page through with next_offset up to the end offset (as of the first request)")
    p.add_argument("--linearizable", action="store_true",
                   help="read through the leader: shows every acknowledged publish (default: the answering "
                        "node's committed state, possibly a little behind)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    client_args(p)
    p.set_defaults(func=cmd_history)


def _history_limit(text: str) -> int:
    """The argparse type of `history --limit`: 1 to HISTORY_MAX_LIMIT, pointing at --all beyond."""
    value = int_between(1, None)(text)
    if value > HISTORY_MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"at most {HISTORY_MAX_LIMIT} per request, got {value}; --all reads everything, page by page")
    return value


def format_message(message: Message, as_json: bool, with_topic: bool = False) -> str:
    """Returns: one output line (without its newline) for a stored message.

    Text: `offset<TAB>data`, the data decoded as UTF-8 with undecodable bytes replaced (for eyes
    and `cut`); `topic<TAB>offset<TAB>data` with `with_topic` (a pattern's many topics). JSON:
    every field of the message; `data` is the UTF-8 text when the bytes decode, else their base64,
    and `encoding` ("utf-8" or "base64") says which, so a script gets the exact bytes back either way.
    """
    if not as_json:
        line = f"{message.offset}\t{message.data.decode('utf-8', errors='replace')}"
        return f"{message.topic}\t{line}" if with_topic else line
    try:
        data, encoding = message.data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        data, encoding = base64.b64encode(message.data).decode("ascii"), "base64"
    return json.dumps({
        "topic": message.topic, "offset": message.offset, "data": data, "encoding": encoding,
        "lamport": message.lamport, "ts": message.ts, "index": message.index, "late": message.late,
    }, ensure_ascii=False)


def cmd_sub(args: argparse.Namespace) -> int:
    """Print every message of a topic (or of a pattern's topics) once, in offset order, as it is stored;
    until Ctrl-C or --count."""
    checked_topic(args.topic, "subscribe")
    with_topic = is_pattern(args.topic)
    _lenient_stdout()
    out = sys.stdout
    printed = 0
    with open_client(args) as client:
        subscription = client.subscribe(args.topic, from_offset=args.from_offset)
        try:
            while args.count is None or printed < args.count:
                message = subscription.get(timeout=0)  # what is already here: no flush per line
                if message is None:
                    out.flush()
                    message = subscription.get(timeout=1.0)
                    if message is None:
                        continue
                out.write(format_message(message, args.json, with_topic) + "\n")
                printed += 1
            out.flush()
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a subscription ends: exit 0, no traceback
        except BrokenPipeError:
            _quiet_stdout()  # the reader went away (`wiber sub t | head`): not an error
        finally:
            subscription.close()
    return 0


def _lenient_stdout() -> None:
    """Make stdout replace, not raise on, a character its encoding lacks (a non-UTF-8 locale)."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into a closed pipe stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def cmd_history(args: argparse.Namespace) -> int:
    """Print stored messages of a topic; their range goes to stderr as one line."""
    checked_topic(args.topic)
    _lenient_stdout()
    consistency = "linearizable" if args.linearizable else "local"
    with open_client(args) as client:
        try:
            if args.all:
                history = _history_all(client, args, consistency)
            else:
                limit = args.limit or (min(args.last, HISTORY_MAX_LIMIT) if args.last else HISTORY_DEFAULT_LIMIT)
                history = client.history(args.topic, from_offset=args.from_offset, last=args.last, limit=limit,
                                         consistency=consistency)
                _print_messages(history.messages, args.json)
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
            return 0
    print(f"first_offset={history.first_offset} end_offset={history.end_offset} "
          f"next_offset={history.next_offset}", file=sys.stderr)
    return 0


def _history_all(client: Client, args: argparse.Namespace, consistency: str) -> History:
    """Print every page from the start (--from, the newest --last, or the oldest kept) to the end offset.

    The end is the end offset the first read reports, so a topic written to meanwhile still ends.
    Returns: the last page read (its offsets say where reading stopped).
    """
    page = args.limit or HISTORY_MAX_LIMIT
    if args.last is not None:
        head = client.history(args.topic, last=1, limit=1, consistency=consistency)
        start = max(head.first_offset, head.end_offset - args.last)
        end = head.end_offset
        history = client.history(args.topic, from_offset=start, limit=max(1, min(page, end - start)),
                                 consistency=consistency)
    else:
        history = client.history(args.topic, from_offset=args.from_offset or 0, limit=page,
                                 consistency=consistency)
        end = history.end_offset
    while True:
        _print_messages([m for m in history.messages if m.offset < end], args.json)
        if history.next_offset >= end or not history.messages:
            return history
        history = client.history(args.topic, from_offset=history.next_offset,
                                 limit=min(page, end - history.next_offset), consistency=consistency)


def _print_messages(messages: list[Message], as_json: bool) -> None:
    write = sys.stdout.write
    for message in messages:
        write(format_message(message, as_json) + "\n")
