"""Measure what durability costs on this machine: ``python -m wiber.storage.measure [--dir DIR]``.

Prints, for a `DurableStorage` in a fresh temporary directory (on the file system of ``--dir``,
default the system temp dir; measure on the disk the nodes will use):

1. the cost of ``sync()`` after appending one 4 KiB entry, p50/p99 over 1,000 rounds, next to a
   bare ``os.write`` + ``os.fsync`` of 4 KiB on a plain file (the floor);
2. append throughput of 100-byte entries with one ``sync()`` per 1,000 entries (group commit, what
   a node does per loop turn under load) versus one ``sync()`` per entry;
3. what one ``append`` of 1,000 such entries costs without the fsync (the Python side of a turn),
   and how long reopening (recovery) of the log written in (2) takes.

Each phase stops at its count or its time budget, whichever comes first, so the whole run stays
within about 20 seconds even on a slow disk. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence

from wiber.raft.messages import Entry, EntryKind
from wiber.storage.durable import DurableStorage

__all__ = ["main"]


def _percentile(samples: list[float], p: float) -> float:
    """Returns: the `p`-th percentile (nearest rank) of `samples`."""
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[k]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _raw_fsync(directory: str, rounds: int, budget: float) -> list[float]:
    """Returns: seconds per write(4 KiB) + fsync on a plain file (the floor for any durable append)."""
    path = os.path.join(directory, "raw")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = os.urandom(4096)
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            samples.append(time.perf_counter() - t0)
            if time.perf_counter() > deadline:
                break
    finally:
        os.close(fd)
        os.unlink(path)
    return samples


def _sync_4k(directory: str, rounds: int, budget: float) -> tuple[list[float], list[float]]:
    """Returns: seconds per sync() and per append+sync() of one 4 KiB entry."""
    syncs: list[float] = []
    rounds_total: list[float] = []
    data = os.urandom(4096 - 25)          # 4 KiB on disk with the record's 25 bytes of framing
    with DurableStorage.open(os.path.join(directory, "sync4k")) as st:
        st.append([Entry(1, 1, EntryKind.NORMAL, data)])
        st.sync()                         # the segment and its directory entry exist from here on
        index = 2
        deadline = time.perf_counter() + budget
        for _ in range(rounds):
            t0 = time.perf_counter()
            st.append([Entry(index, 1, EntryKind.NORMAL, data)])
            t1 = time.perf_counter()
            st.sync()
            t2 = time.perf_counter()
            syncs.append(t2 - t1)
            rounds_total.append(t2 - t0)
            index += 1
            if t2 > deadline:
                break
    return syncs, rounds_total


def _throughput(directory: str, per_sync: int, total: int, budget: float) -> tuple[int, float, int]:
    """Append 100-byte entries, calling sync() after every `per_sync` of them.

    Returns:
        (entries appended, seconds, fsyncs issued).
    """
    data = b"x" * 100
    with DurableStorage.open(directory) as st:
        start_syncs = st.sync_count
        index = 1
        t0 = time.perf_counter()
        deadline = t0 + budget
        while index <= total:
            batch = [Entry(i, 1, EntryKind.NORMAL, data) for i in range(index, index + per_sync)]
            st.append(batch)
            st.sync()
            index += per_sync
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - t0
        return index - 1, elapsed, st.sync_count - start_syncs


def _append_only(directory: str, rounds: int) -> list[float]:
    """Returns: seconds per append() of 1,000 entries of 100 bytes, without syncing."""
    data = b"x" * 100
    samples: list[float] = []
    with DurableStorage.open(directory, fsync=False) as st:
        index = 1
        for _ in range(rounds):
            batch = [Entry(i, 1, EntryKind.NORMAL, data) for i in range(index, index + 1000)]
            t0 = time.perf_counter()
            st.append(batch)
            samples.append(time.perf_counter() - t0)
            index += 1000
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and print the figures. Returns: the exit status."""
    parser = argparse.ArgumentParser(prog="python -m wiber.storage.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None, help="measure on this directory's file system (default: temp dir)")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="wiber-measure-", dir=args.dir)
    try:
        print(f"wiber.storage.measure in {root} (fsync on)")

        raw = _raw_fsync(root, 300, 2.0)
        print(f"raw write(4 KiB)+fsync      n={len(raw):5d}  p50 {_ms(_percentile(raw, 50))}  "
              f"p99 {_ms(_percentile(raw, 99))}")
        syncs, rounds = _sync_4k(root, 1000, 8.0)
        print(f"DurableStorage sync() 4 KiB n={len(syncs):5d}  p50 {_ms(_percentile(syncs, 50))}  "
              f"p99 {_ms(_percentile(syncs, 99))}")
        print(f"  append+sync() of 4 KiB    n={len(rounds):5d}  p50 {_ms(_percentile(rounds, 50))}  "
              f"p99 {_ms(_percentile(rounds, 99))}")

        n, secs, fsyncs = _throughput(os.path.join(root, "group"), 1000, 200_000, 3.0)
        group_rate = n / secs
        print(f"append 100 B, sync per 1,000: {n:7d} entries in {secs:.2f} s = {group_rate:10,.0f} entries/s "
              f"({group_rate * 100 / 1e6:.1f} MB/s of data, {fsyncs} fsyncs)")
        n1, secs1, fsyncs1 = _throughput(os.path.join(root, "single"), 1, 5_000, 3.0)
        single_rate = n1 / secs1
        print(f"append 100 B, sync per entry: {n1:7d} entries in {secs1:.2f} s = {single_rate:10,.0f} entries/s "
              f"({fsyncs1} fsyncs)")
        print(f"  group commit is {group_rate / single_rate:.0f}x faster")

        appends = _append_only(os.path.join(root, "nosync"), 100)
        print(f"append() of 1,000 x 100 B, no fsync: p50 {_ms(statistics.median(appends))}  "
              f"p99 {_ms(_percentile(appends, 99))}")

        t0 = time.perf_counter()
        with DurableStorage.open(os.path.join(root, "group")) as st:
            count = st.last_index()
        print(f"recovery (open) of {count:,} entries of 100 B: {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
