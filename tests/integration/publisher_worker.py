"""A Publisher in its own process, for tests that starve it of CPU with SIGSTOP/SIGCONT
(tests/integration/test_publisher_order.py).

    python -m tests.integration.publisher_worker --addr A --addr B ... --topic T --count N
        [--window W] [--batch B] [--per-try S] [--total S]

Publishes ``b"%06d" % i`` for i in 0..N-1 to one topic, flushes, and says one JSON line on stdout:
``{"acked", "failed" (the first few errors), "offsets_in_order" (future i acknowledged at offset i),
"resends", "failovers"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from wiber.client import Timeouts
from wiber.publisher import Publisher


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--addr", action="append", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--per-try", type=float, default=0.3)
    parser.add_argument("--total", type=float, default=60.0)
    args = parser.parse_args(argv)
    timeouts = Timeouts(per_try_s=args.per_try, total_s=args.total)
    with Publisher(args.addr, window=args.window, batch_size=args.batch, timeouts=timeouts) as publisher:
        futures = [publisher.publish(args.topic, b"%06d" % i) for i in range(args.count)]
        publisher.flush(timeout=args.total)
        failed = [repr(f.exception()) for f in futures if f.exception() is not None]
        offsets = [f.result(timeout=0).offset for f in futures if f.exception() is None]
        report = {"acked": len(offsets), "failed": failed[:3],
                  "offsets_in_order": offsets == list(range(len(offsets))),
                  "resends": publisher.resends, "failovers": publisher.failovers}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
