"""`wiber bench pub|sub`: load-generate against a running cluster (wiber.loadgen does the work)."""

from __future__ import annotations

import argparse

from wiber.cli.common import (
    Subcommands,
    addresses,
    client_args,
    float_at_least,
    int_between,
    key_options,
    publisher_args,
)


def register(sub: Subcommands) -> None:
    """Add `bench pub` and `bench sub` to the `wiber` parser."""
    p = sub.add_parser("bench", help="load-generate against a running cluster (pub or sub)",
                       description="Measure a running cluster: `bench pub` publishes and reports msg/s and "
                                   "the publish-to-acknowledgement latency histogram; `bench sub` subscribes "
                                   "and reports the delivery rate and end-to-end latency (leader ts to delivery).",
                       epilog="examples:\n  wiber bench pub load --messages 100000 --size 100\n"
                              "  wiber bench sub load --messages 100000 --from 0")
    bench = p.add_subparsers(dest="bench_command", required=True, metavar="pub|sub")
    bp = bench.add_parser("pub", help="publish N messages and measure",
                          description="Publish --messages messages of --size bytes to TOPIC from --publishers "
                                      "processes; print msg/s and the publish-to-acknowledgement latency "
                                      "histogram.",
                          epilog="examples:\n  wiber bench pub load --messages 100000 --size 100\n"
                                 "  wiber bench pub load --batch 1 --window 64 --publishers 4\n\n"
                                 "exit status: 0 measured; 1 the cluster did not answer; 2 bad usage.")
    bp.add_argument("topic", metavar="TOPIC")
    bp.add_argument("--messages", type=int_between(1, None), default=100_000, metavar="N",
                    help="messages in all (default 100000)")
    bp.add_argument("--size", type=int_between(0, None), default=100, metavar="B", help="bytes each (default 100)")
    publisher_args(bp, "")
    bp.add_argument("--publishers", type=int_between(1, 64), default=1, metavar="P",
                    help="publisher processes (default 1)")
    bp.add_argument("--seconds", type=float_at_least(0.0, strict=True), default=120.0, metavar="S",
                    help="stop sending after this long (default 120)")
    client_args(bp)
    bp.set_defaults(func=cmd_bench)
    bs = bench.add_parser("sub", help="receive N messages and measure",
                          description="Subscribe to TOPIC until --messages arrive; print the delivery rate "
                                      "and the end-to-end latency (leader timestamp to delivery).",
                          epilog="examples:\n  wiber bench sub load --messages 100000 --from 0\n"
                                 "  wiber bench sub load --messages 50000 & wiber bench pub load --messages 50000\n\n"
                                 "exit status: 0 measured; 1 the cluster did not answer; 2 bad usage.")
    bs.add_argument("topic", metavar="TOPIC")
    bs.add_argument("--messages", type=int_between(1, None), default=100_000, metavar="N",
                    help="stop after this many (default 100000)")
    bs.add_argument("--from", dest="from_offset", type=int_between(0, None), default=None, metavar="N",
                    help="start at this offset (default: only new messages)")
    bs.add_argument("--seconds", type=float_at_least(0.0, strict=True), default=120.0, metavar="S",
                    help="give up after this long (default 120)")
    client_args(bs)
    bs.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Load-generate against a running cluster and print rate and latency histogram."""
    from wiber import loadgen

    nodes = addresses(args)
    keys = key_options(args)
    if args.bench_command == "pub":
        print(loadgen.bench_pub(nodes, args.topic, args.messages, args.size, args.window, args.batch,
                                args.linger_ms / 1000.0, args.publishers, args.seconds, **keys))
    else:
        print(loadgen.bench_sub(nodes, args.topic, args.messages, args.from_offset, args.seconds, **keys))
    return 0
