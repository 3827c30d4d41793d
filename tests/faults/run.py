"""A long randomized fault campaign: ``python -m tests.faults.run`` (``make faults``).

Starts a cluster (5 nodes by default, each in its own network namespace when run as root with
``ip`` and ``nft``; else on 127.0.0.1 without the network faults), runs the workload throughout,
and applies faults picked at random with a seeded generator for ``--minutes``; then drains every
node and checks docs/design.md section 4. The seed is printed first: ``--seed`` replays the same choices
of faults, targets and durations (which node is leader at each moment still depends on timing).

Prints a progress line while it runs and a summary table at the end (faults per kind, ops
ok/fail/unknown, HISTORY reads per consistency, anomalies, recovery times). Exit status: 0 clean,
1 the checker found anomalies (details in ``report.json`` next to the node logs and histories in
the output directory), 2 the campaign could not run.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.faults.campaign import CampaignSpec, run_campaign, summary_table
from tests.faults.nemesis import ALL_FAULTS
from tests.faults.workload import WorkloadSpec


class ProgressLine:
    """A progress bar: tqdm when installed and stderr is a terminal, else plain text lines."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last_line = 0.0
        if self.tty:
            try:
                from tqdm import tqdm  # optional: only if installed
                self.bar = tqdm(total=int(total_s), unit="s", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def __call__(self, state: dict[str, Any]) -> None:
        elapsed = state["elapsed"]
        stats = (f"faults {state['applied']} | ok {state['ok']} unknown {state['info']} fail {state['fail']} "
                 f"| delivered {state['reads']} | read lin {state['history_ok'].get('linearizable', 0)} "
                 f"local {state['history_ok'].get('local', 0)} | {state['fault'][:50]}")
        if self.bar is not None:
            self.bar.n = min(int(elapsed), int(self.total_s))
            self.bar.set_postfix_str(stats, refresh=True)
            return
        width = 30
        done = min(1.0, elapsed / self.total_s) if self.total_s else 1.0
        bar = "#" * int(done * width) + "." * (width - int(done * width))
        line = f"[{bar}] {_mmss(elapsed)}/{_mmss(self.total_s)} {stats}"
        if self.tty:
            sys.stderr.write("\r" + line[:150].ljust(150))
            sys.stderr.flush()
        elif time.monotonic() - self.last_line >= 15.0:
            self.last_line = time.monotonic()
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.tty:
            sys.stderr.write("\n")


def _mmss(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to apply faults (default 10)")
    parser.add_argument("--nodes", type=int, default=5, choices=[3, 5, 7], help="cluster size (default 5)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed, printed)")
    parser.add_argument("--faults", default=",".join(ALL_FAULTS),
                        help=f"comma-separated faults to pick from (default all: {','.join(ALL_FAULTS)})")
    parser.add_argument("--publishers", type=int, default=4, help="publisher processes (default 4)")
    parser.add_argument("--pipelined", type=int, default=1,
                        help="more publisher processes using the pipelined, batching Publisher (default 1)")
    parser.add_argument("--max-hold", type=float, default=8.0,
                        help="longest a fault is held, in seconds (default 8; each is held 0.3..this, log-uniform)")
    parser.add_argument("--combine", type=float, default=0.3,
                        help="chance that a second fault (process + network) overlaps the first (default 0.3)")
    parser.add_argument("--readers", type=int, default=2,
                        help="processes issuing HISTORY reads, alternately linearizable and local (default 2)")
    parser.add_argument("--topics", type=int, default=3, help="topics, each with one subscriber (default 3)")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="mean pause between a publisher's publishes")
    parser.add_argument("--snapshot-every", type=int, default=200, help="cluster.snapshot_every (default 200)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another cluster setting for the YAML, e.g. --set session_window=8 (repeatable)")
    parser.add_argument("--no-netns", action="store_true", help="run on 127.0.0.1 (no network faults)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temp dir)")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    given = list(sys.argv[1:] if argv is None else argv)
    kept = [a for i, a in enumerate(given) if a != "--seed" and not a.startswith("--seed=")
            and (i == 0 or given[i - 1] != "--seed")]
    print(f"seed {seed}  (replay: python -m tests.faults.run --seed {seed} {' '.join(kept)})".rstrip(") ") + ")",
          flush=True)
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(ALL_FAULTS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix=f"wiber-faults-{seed}-"))
    print(f"artifacts in {out}", flush=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    settings: dict[str, Any] = {"snapshot_every": args.snapshot_every}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            parser.error(f"--set wants KEY=VALUE, got {item!r}")
        settings[key.strip()] = yaml.safe_load(raw)
    topics = tuple(f"t{i}" for i in range(args.topics))
    spec = CampaignSpec(
        nodes=args.nodes, seed=seed, schedule=None, minutes=args.minutes, pool=faults, netns=not args.no_netns,
        hold_s=(0.3, max(0.3, args.max_hold)), quiet_s=(0.5, 3.0), combine_p=args.combine,
        settings=settings,
        workload=WorkloadSpec(publishers=args.publishers, pipelined=args.pipelined, readers=args.readers,
                              topics=topics, subscribed=topics,
                              pace_s=args.pace_ms / 1000.0, max_seconds=args.minutes * 60 + 300, seed=seed),
    )
    progress = ProgressLine(args.minutes * 60)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind through the campaign's `finally`: stop nodes, delete namespaces

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        result = run_campaign(spec, out, progress)
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted; everything started was stopped; artifacts in {out}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - any failure to set up or run: say it, exit 2
        progress.close()
        print(f"the campaign could not run: {exc}", file=sys.stderr)
        return 2
    progress.close()
    print(summary_table(result))
    if not result.report.clean:
        print("\n" + result.report.describe(limit=3))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
