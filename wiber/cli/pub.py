"""`wiber pub`: publish one message, or every line of stdin through the auto-batching Publisher.

Stdin is read with `select`, so a slow producer (`tail -f log | wiber pub t`) still sees each line
sent within the linger time rather than when the next line arrives.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from typing import TYPE_CHECKING

from wiber.cli.common import (
    Subcommands,
    addresses,
    checked_topic,
    client_args,
    key_options,
    max_message_bytes,
    open_client,
    publisher_args,
)
from wiber.errors import WireError

if TYPE_CHECKING:  # the client library imports zmq: kept out of `wiber --help`
    from wiber.publisher import PublishFuture


def register(sub: Subcommands) -> None:
    """Add `pub` to the `wiber` parser."""
    p = sub.add_parser(
        "pub", help="publish a message, or each line of stdin",
        description=(
            "Publish MESSAGE to TOPIC; once a majority has it on disk, print\n"
            "  topic=T offset=N index=I lamport=L\n"
            "\n"
            "Without MESSAGE, read stdin: each line, without its trailing newline, is one\n"
            "message. Lines are gathered into batches (PUB_BATCH) with many requests in\n"
            "flight, and stored exactly once, in order. At the end one line is printed:\n"
            "  published N messages to T (offsets A..B) in S s (R msg/s)\n"
            "A progress line goes to stderr every second when stderr is a terminal."
        ),
        epilog=("examples:\n"
                "  wiber pub orders 'order 17 shipped'\n"
                "  seq 1000000 | wiber pub numbers --batch 2000\n"
                "  tail -f app.log | wiber pub logs\n"
                "\n"
                "exit status: 0 all stored; 1 the cluster did not store a message (the line says\n"
                "why); 2 bad usage. A stream gives up on a message after 10 x --timeout."),
    )
    p.add_argument("topic", metavar="TOPIC", help="topic name: 1-255 bytes of UTF-8, not starting with $; "
                                                   "dot-separated tokens, none empty, none * or >")
    p.add_argument("message", metavar="MESSAGE", nargs="?",
                   help="the message (UTF-8); omit to read one message per line from stdin")
    publisher_args(p, "stdin: ")
    client_args(p)
    p.set_defaults(func=cmd_pub)


def cmd_pub(args: argparse.Namespace) -> int:
    """Publish MESSAGE, or every line of stdin through the auto-batching Publisher."""
    checked_topic(args.topic, "publish")
    if args.message is not None:
        with open_client(args) as client:
            ack = client.publish(args.topic, args.message)
        print(f"topic={ack.topic} offset={ack.offset} index={ack.index} lamport={ack.lamport}")
        return 0
    return _pub_stream(args, sys.stdin.fileno())


class _StreamStats:
    """What a `wiber pub` stream handed in and what came back (updated by the futures' callbacks)."""

    def __init__(self) -> None:
        self.handed = 0
        self.acked = 0
        self.first_offset: int | None = None
        self.last_offset: int | None = None
        self.error: BaseException | None = None  # the first message the cluster did not store

    def on_done(self, future: PublishFuture) -> None:
        error = future.exception()
        if error is not None:
            if self.error is None:
                self.error = error
            return
        offset = future.result().offset
        self.acked += 1
        self.first_offset = offset if self.first_offset is None else min(self.first_offset, offset)
        self.last_offset = offset if self.last_offset is None else max(self.last_offset, offset)


class _Progress:
    """A one-line progress report on stderr, rewritten about once a second, only on a terminal."""

    def __init__(self, stats: _StreamStats, started: float) -> None:
        self.stats = stats
        self.started = started
        self.enabled = sys.stderr.isatty()
        self._next = started + 1.0
        self._shown = False

    def tick(self) -> None:
        now = time.monotonic()
        if not self.enabled or now < self._next:
            return
        self._next = now + 1.0
        rate = self.stats.acked / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r\033[Kwiber: {self.stats.handed:,} read, {self.stats.acked:,} acknowledged, "
                         f"{rate:,.0f} msg/s")
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False


#: Bytes read from stdin at a time: many lines per read when input is plentiful.
_READ_CHUNK = 1 << 16


def _pub_stream(args: argparse.Namespace, fd: int) -> int:
    """Publish each line read from `fd` (stdin) and print one summary line. Returns: exit status.

    The loop waits on stdin with `select` and, while anything is unanswered, lets the publisher do
    its I/O in between, so a partial batch leaves within its linger time even when no further line
    comes. The first message the cluster fails to store stops the stream (the next ones would fail
    alike, each after the whole deadline); a line refused locally (too large) stops reading, but
    what came before it is still sent and acknowledged.
    """
    import zmq

    from wiber.client import Timeouts
    from wiber.publisher import Publisher

    ctx = zmq.Context()
    stats = _StreamStats()
    started = time.monotonic()
    progress = _Progress(stats, started)
    refused: str | None = None
    interrupted = False
    max_bytes = max_message_bytes(args)
    publisher = Publisher(
        addresses(args), window=args.window, batch_size=args.batch, linger_s=args.linger_ms / 1000.0,
        max_message_bytes=max_bytes,
        # A stream rides out a leader failover (about 1.5 s): a message fails after ten tries' time.
        timeouts=Timeouts(per_try_s=args.timeout, total_s=10 * args.timeout), ctx=ctx, **key_options(args),
        io_thread=False,  # this loop does the I/O between reads of stdin; ctx.destroy below ends it
    )

    def hand_in(line: bytes) -> bool:
        """Give one line to the publisher. Returns: False when it was refused (stop reading)."""
        nonlocal refused
        try:
            publisher.publish(args.topic, line, callback=stats.on_done)
        except WireError as exc:
            refused = f"line {stats.handed + 1} refused: {exc}"
            return False
        stats.handed += 1
        return True

    if os.isatty(fd):
        print("wiber: reading messages from stdin, one per line; Ctrl-D ends", file=sys.stderr)
    pending = b""
    try:
        try:
            while stats.error is None and refused is None:
                outstanding = stats.handed > stats.acked
                readable, _, _ = select.select([fd], [], [], 0.0 if outstanding else 0.5)
                if not readable:
                    if outstanding:
                        publisher.poll(0.005)  # sends batches whose linger is over, reads acks
                    progress.tick()
                    continue
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    if pending:
                        hand_in(pending)  # a last line without its newline
                    break
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if stats.error is not None or not hand_in(line):
                        break
                if len(pending) > max_bytes and refused is None:  # binary input: do not buffer it all
                    refused = f"line {stats.handed + 1} is over max_message_bytes ({max_bytes})"
                progress.tick()
        except KeyboardInterrupt:
            interrupted = True  # stop reading; what was handed in is still sent and acknowledged
        if stats.error is None:
            publisher.flush()  # returns once every request is answered or given up on
    finally:
        progress.clear()
        ctx.destroy(linger=0)  # after a failure, unanswered requests are abandoned here
    elapsed = time.monotonic() - started
    if stats.error is not None or refused is not None:
        print(f"wiber: publishing to {args.topic!r} stopped after {stats.acked} acknowledged messages "
              f"({stats.handed} read): {refused or stats.error}", file=sys.stderr)
        return 1
    rate = stats.acked / max(elapsed, 1e-9)
    offsets = f" (offsets {stats.first_offset}..{stats.last_offset})" if stats.acked else ""
    print(f"published {stats.acked} messages to {args.topic}{offsets} in {elapsed:.2f} s ({rate:.0f} msg/s)")
    return 130 if interrupted else 0
