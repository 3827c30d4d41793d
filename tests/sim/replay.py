r"""Run, replay and search seeds of the simulation from the command line.

Every failure the simulation reports ends with one of these commands (`chaos.replay_command`)::

    .venv/bin/python -m tests.sim.replay --seed 1234 --steps 6000            # transcript tail on failure
    .venv/bin/python -m tests.sim.replay --seed 1234 --steps 6000 --trace    # its whole transcript
    .venv/bin/python -m tests.sim.replay --seed 176 --steps 2000 --mutation figure_8
    .venv/bin/python -m tests.sim.replay --seeds 300 --steps 20000           # many long seeds (make faults)
    .venv/bin/python -m tests.sim.replay --search 2000 --mutation figure_8   # seeds that catch a mutation
    .venv/bin/python -m tests.sim.replay --seed 30 --steps 2000 --durable --storage-mutant hard-state-rename-not-fsynced
    .venv/bin/python -m tests.sim.replay --search 400 --storage-mutant sync-does-nothing

``--durable`` runs the seeds on `DurableStorage` over CrashFS with crash points (tests/sim/on_disk.py,
its own profile, as tests/sim/test_sim_durable.py does); ``--storage-mutant`` leaves one of its
fsyncs out (and implies ``--durable``).

Seeds run the `chaos.SIM` profile. ``--seeds N`` runs N seeds from ``--offset`` (default: drawn at
random and printed) and prints one line per failure. ``--search N`` runs seeds 0..N-1 under each
mutation of `tests/sim/mutations.py` (or the one named) and prints the seeds that break the
property the mutation must break, for its `MUTATIONS` entry. The exit status is 1 when a seed
failed (for ``--seed`` under a mutation, that is the expected outcome), 0 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from collections.abc import Sequence

from .chaos import DEFAULT_STEPS, SIM, SIM_STEPS, cluster_for, failure_line, replay_command, run_seed
from .invariants import InvariantViolation
from .mutations import MUTATION_STEPS, MUTATIONS, mutated
from .on_disk import STORAGE_MUTANTS, cluster_on_disk, run_on_disk, search_on_disk, storage_mutated
from .trace import Transcript

__all__ = ["main", "search"]

#: Transcript lines printed when a replayed seed fails (``--trace`` prints them all).
TAIL = 200


def replay(seed: int, steps: int, wire: bool, mutation: str | None, trace: bool, durable: bool = False,
           storage_mutant: str | None = None) -> int:
    """Run one seed with its transcript. Returns: the exit status (1 if it failed)."""
    logger = logging.getLogger(f"wiber.sim.replay.{seed}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    cluster = cluster_on_disk(seed, logger) if durable else cluster_for(seed, wire=wire, logger=logger)
    transcript = Transcript(cluster)
    try:
        with mutated(mutation), storage_mutated(storage_mutant):
            if durable:
                result = run_on_disk(seed, steps, cluster=cluster)
            else:
                result = run_seed(seed, steps, profile=SIM, cluster=cluster)
    except Exception as exc:  # noqa: BLE001 - every failure of a seed is reported the same way
        print("\n".join(transcript.lines if trace else transcript.lines[-TAIL:]))
        print(failure_line(seed, steps, exc, wire=wire, mutation=mutation, durable=durable,
                           storage_mutant=storage_mutant))
        return 1
    finally:
        transcript.close()
    if trace:
        print(transcript.text(), end="")
    print(result)
    return 0


def run_many(count: int, offset: int, steps: int, wire: bool, mutation: str | None, durable: bool = False) -> int:
    """Run seeds ``offset .. offset + count - 1``, one line per failure. Returns: the exit status."""
    print(f"{count} seeds from offset {offset}, {steps} steps each (rerun: --seeds {count} --offset {offset} "
          f"--steps {steps})", flush=True)
    start = time.monotonic()
    ticks: list[int] = []
    failed = 0
    with mutated(mutation):
        for seed in range(offset, offset + count):
            try:
                result = run_on_disk(seed, steps) if durable else run_seed(seed, steps, profile=SIM, wire=wire)
                ticks.append(result.ticks)
            except Exception as exc:  # noqa: BLE001 - every failure of a seed is reported the same way
                failed += 1
                print(failure_line(seed, steps, exc, wire=wire, mutation=mutation, durable=durable), flush=True)
    if ticks:
        print(f"ticks per passing seed: median {statistics.median(ticks):.0f}, min {min(ticks)}, "
              f"max {max(ticks)}")
    print(f"{count - failed} of {count} seeds passed in {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


def search(name: str, count: int, steps: int = MUTATION_STEPS) -> tuple[list[int], dict[str, list[int]]]:
    """Run seeds 0..count-1 under mutation `name`.

    Returns:
        the seeds whose run breaks the property the mutation must break, and the seeds that broke
        another property first, by property.
    """
    wanted = MUTATIONS[name].breaks
    found: list[int] = []
    others: dict[str, list[int]] = {}
    with mutated(name):
        for seed in range(count):
            try:
                run_seed(seed, steps, profile=SIM)
            except InvariantViolation as exc:
                if exc.broken == wanted:
                    found.append(seed)
                else:
                    others.setdefault(exc.broken, []).append(seed)
            except Exception:  # noqa: BLE001 - a liveness failure or a core's refusal breaks no property
                pass
    return found, others


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring). Returns: the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.sim.replay", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--seed", type=int, help="replay this seed, with its transcript")
    what.add_argument("--seeds", type=int, metavar="N", help="run N seeds from --offset")
    what.add_argument("--search", type=int, metavar="N", help="search seeds 0..N-1 that catch a mutation")
    parser.add_argument("--steps", type=int, help=f"steps of chaos per seed (default {SIM_STEPS}; "
                                                   f"{MUTATION_STEPS} with --search)")
    parser.add_argument("--offset", type=int, help="the first seed of --seeds (default: random)")
    parser.add_argument("--wire", action="store_true", help="round-trip every message through the codec")
    parser.add_argument("--mutation", choices=sorted(MUTATIONS), help="run with this rule of the core off")
    parser.add_argument("--trace", action="store_true", help="print the whole transcript of --seed")
    parser.add_argument("--durable", action="store_true",
                        help="nodes on DurableStorage over CrashFS, crashing at file operations")
    parser.add_argument("--storage-mutant", choices=sorted(STORAGE_MUTANTS),
                        help="leave this fsync out of DurableStorage (implies --durable)")
    args = parser.parse_args(argv)
    durable = args.durable or args.storage_mutant is not None
    if durable and (args.wire or args.mutation):
        parser.error("--durable runs the on-disk profile: without --wire or --mutation")
    if args.search is not None and args.storage_mutant is not None:
        steps = args.steps if args.steps is not None else DEFAULT_STEPS
        found = search_on_disk(args.storage_mutant, args.search, steps)
        print(f"{args.storage_mutant}: {len(found)} of {args.search} seeds break a safety property: {found[:20]}")
        for seed in found[:3]:
            print("  " + replay_command(seed, steps, storage_mutant=args.storage_mutant))
        return 0
    if args.search is not None:
        steps = args.steps if args.steps is not None else MUTATION_STEPS
        for name in [args.mutation] if args.mutation else sorted(MUTATIONS):
            found, others = search(name, args.search, steps)
            print(f"{name}: {len(found)} of {args.search} seeds break {MUTATIONS[name].breaks}: {found[:20]}"
                  + (f" (other properties first: {others})" if others else ""))
            for seed in found[:3]:
                print("  " + replay_command(seed, steps, mutation=name))
        return 0
    steps = args.steps if args.steps is not None else SIM_STEPS
    if args.seeds is not None:
        offset = args.offset if args.offset is not None else random.SystemRandom().randrange(1_000_000)
        return run_many(args.seeds, offset, steps, args.wire, args.mutation, durable)
    return replay(args.seed, steps, args.wire, args.mutation, args.trace, durable, args.storage_mutant)


if __name__ == "__main__":
    sys.exit(main())
