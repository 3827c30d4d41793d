"""A consumer-group member in its own process, for tests that kill it with -9 (tests/integration/test_consumer_groups.py).

    python -m tests.integration.consumer_worker --addr A --addr B ... --group G --pattern P [--out TOPIC]
        [--ack-wait-ms MS] [--batch N] [--hold N] [--limit N]

Default mode, the exactly-once pattern of docs/consumers.md: for each delivered message it publishes
``topic:offset`` to ``--out`` under the message's `publish_key`, then acks it, until `--limit` acks
(or forever). With ``--hold N`` it fetches N messages, reports them, and then waits to be killed
without acking any. Every step is one flushed line on stdout:

    fetched TOPIC OFFSET DELIVERY
    published TOPIC OFFSET DUPLICATE(0|1)
    acked TOPIC OFFSET HELD(0|1)
    holding N
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from wiber.client import Client, Timeouts


def say(*words: object) -> None:
    """Write one line and flush it: a kill -9 right after loses nothing already said."""
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--addr", action="append", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--pattern", required=True)
    parser.add_argument("--member")
    parser.add_argument("--out")
    parser.add_argument("--ack-wait-ms", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--hold", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args(argv)
    with Client(args.addr, Timeouts(per_try_s=0.5, total_s=30.0)) as client:
        consumer = client.consumer(args.group, args.pattern, ack_wait_ms=args.ack_wait_ms, from_start=True,
                                   member=args.member)
        if args.hold:
            held = 0
            while held < args.hold:
                for message in consumer.fetch(args.hold - held, timeout=1.0):
                    say("fetched", message.topic, message.offset, message.delivery)
                    held += 1
            say("holding", held)
            signal.pause()  # until the test kills this process
            return 0
        acked = 0
        while not args.limit or acked < args.limit:
            for message in consumer.fetch(args.batch, timeout=1.0):
                say("fetched", message.topic, message.offset, message.delivery)
                if args.out:
                    ack = client.publish(args.out, f"{message.topic}:{message.offset}", dedup=message.publish_key)
                    say("published", message.topic, message.offset, int(ack.duplicate))
                say("acked", message.topic, message.offset, int(message.ack()))
                acked += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
