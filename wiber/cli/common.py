"""What every `wiber` client command shares: the options naming the cluster and the client's key,
the Client they build, the argparse value types, and how a command fails (one line on stderr, an
exit status).

Keys (docs/design.md section 10): when the config has a security section, a command uses CURVE
with the client's key (`--key PATH`, else `WIBER_KEY`) and each node's public key from keys_dir;
with `--addr`, the config is read for the keys only when `--key` is given.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from wiber import protocol
from wiber.client.curve import KEY_ENV, SECRET_SUFFIX, client_options, config_curve_keys
from wiber.config import load_config
from wiber.errors import WireError

if TYPE_CHECKING:  # the client library imports zmq: kept out of `wiber --help`
    from wiber.client import Client

DEFAULT_CONFIG = os.environ.get("WIBER_CONFIG", "conf/cluster.yaml")

#: The subcommand table each command module adds its parsers to.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """A command line the cluster would refuse anyway (a bad topic name): exit status 2."""


def fail(message: str, status: int) -> int:
    """Print `wiber: MESSAGE` on stderr. Returns: `status`, the exit status to leave with."""
    print(f"wiber: {message}", file=sys.stderr)
    return status


def client_args(p: argparse.ArgumentParser) -> None:
    """Add the options naming the cluster (--config, --addr) and the per-node --timeout."""
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"cluster YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--addr", action="append", metavar="HOST:PORT",
                   help="a node's client address; repeat for several (overrides --config)")
    p.add_argument("--timeout", type=float_at_least(0.0, strict=True), default=1.0, metavar="S",
                   help="seconds to wait per node (default 1)")
    key_arg(p)


def key_arg(p: argparse.ArgumentParser) -> None:
    """Add --key: the client's secret key file, for a cluster whose config has a security section."""
    p.add_argument("--key", metavar="PATH",
                   help=f"this client's secret key file (<name>{SECRET_SUFFIX}), used when the config has a "
                        f"security section (default: ${KEY_ENV})")


def key_options(args: argparse.Namespace) -> dict[str, Any]:
    """Returns: the `client_key` and `server_keys` arguments of a Client or Publisher for this command:
    empty (plain TCP) unless the config has a security section.

    Raises:
        UsageError: a security section and no key, or --key for a config without one.
        CurveError, KeyFileError: a key file is missing, unreadable or malformed.
    """
    explicit: str | None = args.key
    if getattr(args, "addr", None) and explicit is None:
        return {}  # --addr alone reads no config, as without security
    config = load_config(args.config)
    if config.security is None:
        if explicit is not None:
            raise UsageError(f"--key given, but {config.path} has no security section: its nodes do not use "
                             f"CURVE (drop --key)")
        return {}  # a WIBER_KEY in the environment is for secured clusters only
    key = explicit or os.environ.get(KEY_ENV) or None
    if key is None:
        raise UsageError(f"{config.path} has a security section: give this client's key with --key PATH or "
                         f"{KEY_ENV}=PATH (a <name>{SECRET_SUFFIX} file listed under security.clients; "
                         f"`wiber keygen NAME` makes one)")
    return client_options(config_curve_keys(config, key))


def publisher_args(p: argparse.ArgumentParser, context: str) -> None:
    """Add the `Publisher` options (--batch, --linger-ms, --window) shared by `pub` and `bench pub`."""
    # The window is capped at the broker's default session_window: a resend must find its answer kept.
    p.add_argument("--batch", type=int_between(1, protocol.MAX_BATCH_MESSAGES), default=1000, metavar="N",
                   help=f"{context}messages per request at most (default 1000; 1 sends plain PUBs)")
    p.add_argument("--linger-ms", type=float_at_least(0.0), default=2.0, metavar="MS",
                   help=f"{context}how long a partial batch waits for more (default 2)")
    p.add_argument("--window", type=int_between(1, 4096), default=100, metavar="N",
                   help=f"{context}requests in flight at most (default 100)")


def addresses(args: argparse.Namespace) -> list[str]:
    """Returns: the client addresses to talk to: every --addr, else every node of --config."""
    if args.addr:
        return list(args.addr)
    config = load_config(args.config)
    return [n.client_addr for n in config.nodes]


def open_client(args: argparse.Namespace) -> Client:
    """Returns: a Client on the command's nodes, waiting --timeout per try and three tries in all."""
    from wiber.client import Client, Timeouts

    return Client(addresses(args), Timeouts(per_try_s=args.timeout, total_s=max(args.timeout, 3 * args.timeout)),
                  **key_options(args))


def checked_topic(topic: str, use: protocol.TopicUse = "read") -> str:
    """Returns: `topic`, checked by the wire contract's own rule for `use` before anything is sent.

    Raises:
        UsageError: the name is empty, too long, holds NUL or starts with `$`; or it is a pattern
            where one topic is needed, or a bad pattern (`wiber.topics`).
    """
    try:
        return protocol.validate_topic(topic, use=use)
    except WireError as exc:
        raise UsageError(f"bad topic name {topic!r}: {exc}") from None


def max_message_bytes(args: argparse.Namespace) -> int:
    """Returns: the cluster's `max_message_bytes` (from --config; the default with --addr)."""
    if args.addr:
        return protocol.Limits().max_message_bytes
    return load_config(args.config).cluster.max_message_bytes


def int_between(low: int, high: int | None) -> Callable[[str], int]:
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


def float_at_least(low: float, strict: bool = False) -> Callable[[str], float]:
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

