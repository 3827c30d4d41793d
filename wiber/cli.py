"""The `wiber` command and the `wiber-node` launcher.

    wiber up      [--config PATH]        start every node of the config in the foreground
    wiber node    --config PATH --id ID  run one node (what `wiber-node` does)
    wiber ping    [--config PATH | --addr HOST:PORT ...]
    wiber status  [--config PATH | --addr HOST:PORT ...]
    wiber pub     TOPIC [MESSAGE] [--batch N] [--linger-ms MS] [--window N]
    wiber sub     TOPIC [--from N] [--count N] [--json]
    wiber history TOPIC [--from N | --last N] [--limit N] [--all] [--linearizable] [--json]
    wiber topics
    wiber bench pub TOPIC [--messages N] [--size B] [--window N] [--batch N] [--linger-ms MS] [--publishers P]
    wiber bench sub TOPIC [--messages N] [--from N]

Every client command also takes `--config PATH | --addr HOST:PORT ...` and `--timeout S`.

Output formats, made for pipes and scripts: a message prints as `offset<TAB>data` (data decoded
as UTF-8, undecodable bytes replaced), or with `--json` as one JSON object per line whose `data` is
the UTF-8 text, or base64 when the bytes are not UTF-8 (`encoding` says which). Summaries and
progress go to stderr, so stdout holds only the data.

`wiber pub` without MESSAGE reads stdin: each line (without its trailing `\n`) is one message,
sent through the auto-batching `Publisher` (many requests in flight, exactly once, in order).
Stdin is read with `select`, so a slow producer (`tail -f log | wiber pub t`) still sees each
line sent within the linger time rather than when the next line arrives.

Exit status: 0 success, 1 the cluster did not answer or answered an error, 2 bad usage or config.
`wiber sub` exits 0 on Ctrl-C or a closed stdout (`wiber sub t | head`).
Only this module configures logging handlers (one line per event, quiet by default).
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from wiber import protocol
from wiber.clock import SystemClock, skew_from_env
from wiber.config import Config, load_config
from wiber.errors import ClientError, ConfigError, NodeStartError, WireError
from wiber.protocol import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT

if TYPE_CHECKING:  # the client library imports zmq: kept out of `wiber --help`
    from wiber.client import Client, History, Message
    from wiber.publisher import PublishFuture

DEFAULT_CONFIG = os.environ.get("WIBER_CONFIG", "conf/cluster.yaml")
#: The node process's first cycle-collector threshold (see run_node).
GC_THRESHOLD_0 = 20_000
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


# -------------------------------------------------------------------- messages: pub, sub, history, topics


def format_message(message: Message, as_json: bool) -> str:
    """Returns: one output line (without its newline) for a stored message.

    Text: `offset<TAB>data`, the data decoded as UTF-8 with undecodable bytes replaced (for eyes
    and `cut`). JSON: every field of the message; `data` is the UTF-8 text when the bytes decode,
    else their base64, and `encoding` ("utf-8" or "base64") says which, so a script gets the exact
    bytes back either way.
    """
    if not as_json:
        return f"{message.offset}\t{message.data.decode('utf-8', errors='replace')}"
    try:
        data, encoding = message.data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        data, encoding = base64.b64encode(message.data).decode("ascii"), "base64"
    return json.dumps({
        "topic": message.topic, "offset": message.offset, "data": data, "encoding": encoding,
        "lamport": message.lamport, "ts": message.ts, "index": message.index, "late": message.late,
    }, ensure_ascii=False)


class _UsageError(Exception):
    """A command line the cluster would refuse anyway (a bad topic name): exit status 2."""


def _checked_topic(topic: str) -> str:
    """Returns: `topic`, checked by the wire contract's own rule before anything is sent.

    Raises:
        _UsageError: the name is empty, too long, holds NUL or starts with `$`.
    """
    try:
        return protocol.validate_topic(topic)
    except WireError as exc:
        raise _UsageError(f"bad topic name {topic!r}: {exc}") from None


def _max_message_bytes(args: argparse.Namespace) -> int:
    """Returns: the cluster's `max_message_bytes` (from --config; the default with --addr)."""
    if args.addr:
        return protocol.Limits().max_message_bytes
    return load_config(args.config).cluster.max_message_bytes


def cmd_pub(args: argparse.Namespace) -> int:
    """Publish MESSAGE, or every line of stdin through the auto-batching Publisher."""
    _checked_topic(args.topic)
    if args.message is not None:
        with _client(args) as client:
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
    max_bytes = _max_message_bytes(args)
    publisher = Publisher(
        _addresses(args), window=args.window, batch_size=args.batch, linger_s=args.linger_ms / 1000.0,
        max_message_bytes=max_bytes,
        # A stream rides out a leader failover (about 1.5 s): a message fails after ten tries' time.
        timeouts=Timeouts(per_try_s=args.timeout, total_s=10 * args.timeout), ctx=ctx,
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


def cmd_sub(args: argparse.Namespace) -> int:
    """Print every message of a topic once, in offset order, as it is stored; until Ctrl-C or --count."""
    _checked_topic(args.topic)
    _lenient_stdout()
    out = sys.stdout
    printed = 0
    with _client(args) as client:
        subscription = client.subscribe(args.topic, from_offset=args.from_offset)
        try:
            while args.count is None or printed < args.count:
                message = subscription.get(timeout=0)  # what is already here: no flush per line
                if message is None:
                    out.flush()
                    message = subscription.get(timeout=1.0)
                    if message is None:
                        continue
                out.write(format_message(message, args.json) + "\n")
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
    _checked_topic(args.topic)
    _lenient_stdout()
    consistency = "linearizable" if args.linearizable else "local"
    with _client(args) as client:
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


def cmd_topics(args: argparse.Namespace) -> int:
    """Print every topic and its end offset, one per line, sorted by name."""
    with _client(args) as client:
        topics = client.topics()
    for topic in sorted(topics):
        print(f"{topic}\t{topics[topic]}")
    return 0


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
        p.add_argument("--timeout", type=_float_at_least(0.0, strict=True), default=1.0, metavar="S",
                       help="seconds to wait per node (default 1)")

    p = sub.add_parser("ping", help="PING every node")
    client_args(p)
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("status", help="STATUS of every node, one row each")
    client_args(p)
    p.set_defaults(func=cmd_status)

    formats = ("Output: one message per line, `offset<TAB>data` (data as UTF-8, undecodable bytes replaced); "
               "with --json one JSON object per line with topic, offset, data, encoding, lamport, ts, index, "
               "where data is the UTF-8 text or, when the bytes are not UTF-8, base64 (encoding says which).")

    p = sub.add_parser(
        "pub", help="publish a message, or each line of stdin",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Publish MESSAGE to TOPIC; once a majority has it on disk, print\n"
            "  topic=T offset=N index=I lamport=L\n"
            "\n"
            "Without MESSAGE, read stdin: each line, without its trailing newline, is one\n"
            "message. Lines are gathered into batches (PUB_BATCH) with many requests in\n"
            "flight, and stored exactly once, in order. At the end one line is printed:\n"
            "  published N messages to T (offsets A..B) in S s (R msg/s)\n"
            "A progress line goes to stderr every second when stderr is a terminal.\n"
            "\n"
            "examples:\n"
            "  wiber pub orders 'order 17 shipped'\n"
            "  seq 1000000 | wiber pub numbers --batch 2000\n"
            "  tail -f app.log | wiber pub logs"
        ),
        epilog=("exit status: 0 all stored; 1 the cluster did not store a message (the line says\n"
                "why); 2 bad usage. A stream gives up on a message after 10 x --timeout."),
    )
    p.add_argument("topic", metavar="TOPIC", help="topic name (1-255 bytes of UTF-8, not starting with $)")
    p.add_argument("message", metavar="MESSAGE", nargs="?",
                   help="the message (UTF-8); omit to read one message per line from stdin")
    publisher_args(p, "stdin: ")
    client_args(p)
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser(
        "sub", help="print every message of a topic as it is stored",
        description="Print the messages of TOPIC as they are stored: each once, in offset order, across node "
                    "failures (gaps are filled from HISTORY). Without --from, only messages stored from now on. "
                    "Runs until Ctrl-C (exit 0) or --count messages. " + formats,
    )
    p.add_argument("topic", metavar="TOPIC", help="topic name")
    p.add_argument("--from", dest="from_offset", type=_int_between(0, None), metavar="N",
                   help="start at offset N (0: the whole kept history, then live)")
    p.add_argument("--count", type=_int_between(1, None), metavar="N", help="exit after N messages")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    client_args(p)
    p.set_defaults(func=cmd_sub)

    p = sub.add_parser(
        "history", help="print stored messages of a topic",
        description="Print stored messages of TOPIC in offset order, then to stderr one line "
                    "`first_offset=F end_offset=E next_offset=N`: the oldest offset kept (retention), the "
                    "offset the next message will get, and where to read on with --from. "
                    "One request returns at most 1000 messages; --all pages through them all. " + formats,
    )
    p.add_argument("topic", metavar="TOPIC", help="topic name")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_offset", type=_int_between(0, None), metavar="N",
                       help="start at offset N (default: the oldest kept)")
    start.add_argument("--last", type=_int_between(1, None), metavar="N", help="the newest N messages")
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

    p = sub.add_parser("topics", help="list topics with their end offsets",
                       description="Print one line per topic, `TOPIC<TAB>END_OFFSET`, sorted by name; the end "
                                   "offset is the offset the topic's next message will get.")
    client_args(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("bench", help="load-generate against a running cluster (pub or sub)",
                       description="Measure a running cluster: `bench pub` publishes and reports msg/s and "
                                   "the publish-to-acknowledgement latency histogram; `bench sub` subscribes "
                                   "and reports the delivery rate and end-to-end latency (leader ts to delivery).")
    bench = p.add_subparsers(dest="bench_command", required=True, metavar="pub|sub")
    bp = bench.add_parser("pub", help="publish N messages and measure")
    bp.add_argument("topic", metavar="TOPIC")
    bp.add_argument("--messages", type=_int_between(1, None), default=100_000, metavar="N",
                    help="messages in all (default 100000)")
    bp.add_argument("--size", type=_int_between(0, None), default=100, metavar="B", help="bytes each (default 100)")
    publisher_args(bp, "")
    bp.add_argument("--publishers", type=_int_between(1, 64), default=1, metavar="P",
                    help="publisher processes (default 1)")
    bp.add_argument("--seconds", type=_float_at_least(0.0, strict=True), default=120.0, metavar="S",
                    help="stop sending after this long (default 120)")
    client_args(bp)
    bp.set_defaults(func=cmd_bench)
    bs = bench.add_parser("sub", help="receive N messages and measure")
    bs.add_argument("topic", metavar="TOPIC")
    bs.add_argument("--messages", type=_int_between(1, None), default=100_000, metavar="N",
                    help="stop after this many (default 100000)")
    bs.add_argument("--from", dest="from_offset", type=_int_between(0, None), default=None, metavar="N",
                    help="start at this offset (default: only new messages)")
    bs.add_argument("--seconds", type=_float_at_least(0.0, strict=True), default=120.0, metavar="S",
                    help="give up after this long (default 120)")
    client_args(bs)
    bs.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    """Load-generate against a running cluster and print rate and latency histogram."""
    from wiber import loadgen

    addresses = _addresses(args)
    if args.bench_command == "pub":
        print(loadgen.bench_pub(addresses, args.topic, args.messages, args.size, args.window, args.batch,
                                args.linger_ms / 1000.0, args.publishers, args.seconds))
    else:
        print(loadgen.bench_sub(addresses, args.topic, args.messages, args.from_offset, args.seconds))
    return 0


def publisher_args(p: argparse.ArgumentParser, context: str) -> None:
    """Add the `Publisher` options (--batch, --linger-ms, --window) shared by `pub` and `bench pub`."""
    # The window is capped at the broker's default session_window: a resend must find its answer kept.
    p.add_argument("--batch", type=_int_between(1, protocol.MAX_BATCH_MESSAGES), default=1000, metavar="N",
                   help=f"{context}messages per request at most (default 1000; 1 sends plain PUBs)")
    p.add_argument("--linger-ms", type=_float_at_least(0.0), default=2.0, metavar="MS",
                   help=f"{context}how long a partial batch waits for more (default 2)")
    p.add_argument("--window", type=_int_between(1, 4096), default=100, metavar="N",
                   help=f"{context}requests in flight at most (default 100)")


def _int_between(low: int, high: int | None) -> Callable[[str], int]:
    """Returns: an argparse type accepting integers in [low, high] (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"{low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def _history_limit(text: str) -> int:
    """The argparse type of `history --limit`: 1 to HISTORY_MAX_LIMIT, pointing at --all beyond."""
    value = _int_between(1, None)(text)
    if value > HISTORY_MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"at most {HISTORY_MAX_LIMIT} per request, got {value}; --all reads everything, page by page")
    return value


def _float_at_least(low: float, strict: bool = False) -> Callable[[str], float]:
    """Returns: an argparse type accepting numbers >= low (> low when strict)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'above' if strict else 'at least'} {low:g}, got {text}")
        return value
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `wiber`."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except _UsageError as exc:
        return _fail(str(exc), 2)
    except (WireError, ClientError) as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
