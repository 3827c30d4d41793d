"""The peer codec's speed beside plain msgpack: ``python -m bench.codec [--entries N] [--repeat R]``.

An AppendEntries of N entries of 100 bytes goes through `wiber.raft.wire` (encode + decode, with
its validation of untrusted input) and, beside it, the same fields as plain tuples through
``msgpack.packb``/``unpackb``: the ratio is what the codec's checks and dataclasses cost. The
figure used to be a timed assertion in the unit tests; a shared 2-core machine made it a coin
toss there, so it is measured here and reported, never asserted.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import msgpack

from wiber.raft.messages import AppendEntries, Entry, EntryKind
from wiber.raft.wire import decode_message, encode_message


def best_of(repeat: int, work: Callable[[], object]) -> float:
    """Returns: the fastest of `repeat` runs of `work`, in seconds (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def measure(entries: int, repeat: int) -> dict[str, float]:
    """Returns: microseconds per entry for the codec and for plain msgpack, and their ratio."""
    batch = tuple(Entry(k + 1, 3, EntryKind.NORMAL, bytes(100)) for k in range(entries))
    message = AppendEntries(3, "n1", "n2", 0, 0, batch, entries - 1, 0)
    if decode_message(encode_message(message)) != message:
        raise AssertionError("the codec does not round-trip the benchmark's message")
    plain = [3, 3, "n1", "n2", 0, 0, [[e.term, int(e.kind), e.data] for e in batch], entries - 1, 0]

    def codec() -> object:
        return decode_message(encode_message(message))

    def raw() -> object:
        return msgpack.unpackb(msgpack.packb(plain, use_bin_type=True), raw=False)

    codec_us = best_of(repeat, codec) / entries * 1e6
    raw_us = best_of(repeat, raw) / entries * 1e6
    return {"codec_us_per_entry": codec_us, "msgpack_us_per_entry": raw_us, "ratio": codec_us / raw_us}


def main(argv: list[str] | None = None) -> int:
    """Measure and print one line per figure."""
    p = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=1000, help="entries per AppendEntries (default 1000)")
    p.add_argument("--repeat", type=int, default=20, help="runs, the fastest reported (default 20)")
    args = p.parse_args(argv)
    if args.entries < 1 or args.repeat < 1:
        p.error("--entries and --repeat must be at least 1")
    figures = measure(args.entries, args.repeat)
    print(f"AppendEntries of {args.entries:,} x 100 B, encode + decode, best of {args.repeat}:")
    print(f"  wiber.raft.wire  {figures['codec_us_per_entry']:8.3f} us/entry")
    print(f"  plain msgpack    {figures['msgpack_us_per_entry']:8.3f} us/entry")
    print(f"  ratio            {figures['ratio']:8.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
