"""One table and one JSON document from the sections of a run: Wiber next to each peer, as ratios.

Rows are workloads. Each row names, per peer, which of that peer's figures is the matching one
(`ROWS`): the raw ceiling matches a publish round trip with a DEALER->ROUTER round trip, pipelined
publishing with a one-way PUSH->PULL stream, and so on. A ratio is always Wiber / peer: for a rate
above 1 means Wiber is faster; for a latency or a failover time below 1 means Wiber is faster.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import clients_bench
from bench.common import Figure, Section

#: column order of the table, and the short durability label shown under each column head
COLUMNS: list[tuple[str, str, str]] = [
    ("raw", "raw zmq", "none, 1 hop"),
    ("wiber", "Wiber", "fsync/batch"),
    ("wiber_curve", "W CURVE", "+CurveZMQ"),
    ("nats_always", "NATS alw", "fsync/write"),
    ("nats_default", "NATS def", "fsync 2 min"),
    ("pysyncobj", "PySyncObj", "memory only"),
]

#: the ratio columns: (key in the JSON, column head, peer system)
RATIOS: list[tuple[str, str, str]] = [
    ("wiber/nats_always", "W/NATSalw", "nats_always"),
    ("wiber/nats_default", "W/NATSdef", "nats_default"),
    ("wiber/pysyncobj", "W/PySO", "pysyncobj"),
    ("wiber/raw", "W/raw", "raw"),
    ("wiber/wiber_curve", "W/CURVE", "wiber_curve"),
]


@dataclass(frozen=True, slots=True)
class Row:
    """One workload: Wiber's figure and, per other system, the key of its matching figure."""

    label: str
    wiber: str
    peers: dict[str, str]
    unit: str
    better: str = "higher"


ROWS: list[Row] = [
    Row("sequential publish p50", "seq_p50_ms",
        {"raw": "seq_p50_ms", "wiber_curve": "seq_p50_ms", "nats_always": "seq_p50_ms", "nats_default": "seq_p50_ms", "pysyncobj": "seq_p50_ms"},
        "ms", "lower"),
    Row("sequential publish p99", "seq_p99_ms",
        {"raw": "seq_p99_ms", "wiber_curve": "seq_p99_ms", "nats_always": "seq_p99_ms", "nats_default": "seq_p99_ms", "pysyncobj": "seq_p99_ms"},
        "ms", "lower"),
    Row("sequential publish rate", "seq_rate",
        {"raw": "seq_rate", "wiber_curve": "seq_rate", "nats_always": "seq_rate", "nats_default": "seq_rate", "pysyncobj": "seq_rate"},
        "msg/s"),
    Row("pipelined, 1000 in flight, batch 1", "pipelined_rate",
        {"raw": "oneway_rate", "wiber_curve": "pipelined_rate", "nats_always": "pipelined_rate",
         "nats_default": "pipelined_rate", "pysyncobj": "pipelined_rate"}, "msg/s"),
    Row("  same, PySyncObj unbatched", "pipelined_rate", {"pysyncobj": "pipelined_nobatch_rate"}, "msg/s"),
    Row("asyncio: 1000 tasks, each awaits", "aio_gathered_rate",
        {"wiber_curve": "aio_gathered_rate", "nats_always": "aio_gathered_rate", "nats_default": "aio_gathered_rate"},
        "msg/s"),
    Row("1000 clients x 10 publishes p50", "clients_p50_ms",
        {"nats_always": "clients_p50_ms", "nats_default": "clients_p50_ms"}, "ms", "lower"),
    Row("  same, p99", "clients_p99_ms",
        {"nats_always": "clients_p99_ms", "nats_default": "clients_p99_ms"}, "ms", "lower"),
    Row("  same, p99 of first publishes", "clients_first_p99_ms",
        {"nats_always": "clients_first_p99_ms", "nats_default": "clients_first_p99_ms"}, "ms", "lower"),
    Row("auto-batching (1000, 2 ms)", "batched_rate",
        {"raw": "oneway_batch_rate", "wiber_curve": "batched_rate", "nats_always": "pipelined_rate",
         "nats_default": "pipelined_rate", "pysyncobj": "pipelined_rate"}, "msg/s"),
    Row("subscriber delivery", "subscriber_rate",
        {"raw": "oneway_rate", "nats_always": "subscriber_rate", "nats_default": "subscriber_rate"}, "msg/s"),
    Row("replay (HISTORY / pull, 1000/page)", "replay_rate",
        {"raw": "oneway_batch_rate", "nats_always": "replay_rate", "nats_default": "replay_rate"}, "msg/s"),
    Row("consume-and-ack (fetch 100)", "consume_ack_rate",
        {"nats_always": "consume_ack_rate", "nats_default": "consume_ack_rate"}, "msg/s"),
    Row("failover: kill -9 leader -> ack", "failover_s",
        {"nats_always": "failover_s", "nats_default": "failover_s", "pysyncobj": "failover_s"}, "s", "lower"),
]

MATCHING_NOTES = [
    ("raw: sequential rows = DEALER->ROUTER round trip; pipelined and subscriber = PUSH->PULL 1 msg/frame; "
     "auto-batching and replay = PUSH->PULL 100 msgs/frame."),
    "NATS has no client-side batching: the auto-batching row compares with its pipelined publish_async.",
    ("asyncio: 1000 tasks share one client and each awaits its publish before the next (wiber.aio.Client.publish / "
     "nats-py js.publish): 1000 in flight, the way an asyncio application with many producers publishes."),
    (f"{clients_bench.CLIENTS} clients: a wiber.Client / a nats-py connection each, {clients_bench.PER_CLIENT} "
     f"publishes each awaiting its ack, {clients_bench.PROCESSES} processes x {clients_bench.WORKERS} workers "
     f"({clients_bench.PROCESSES * clients_bench.WORKERS} in flight); a client's first publish is timed from its "
     "creation, so its connection counts."),
    "PySyncObj runs its load inside the leader process (no client hop) and keeps its log in memory.",
    ("consume-and-ack: Wiber fetches 100 and acks the batch with one ACK request, answered once committed; "
     "NATS fetches 100 and acks each message with a fire-and-forget msg.ack(), its clock stopping when "
     "consumer_info shows every ack processed."),
    "ratio = Wiber / peer: for msg/s above 1 means Wiber is faster; for ms and s below 1 means Wiber is faster.",
    "W CURVE: the same Wiber workloads on a cluster with a security section (CurveZMQ on every socket, "
    "an admin client key); W/CURVE is what turning CURVE on costs.",
]


def _figure(sections: dict[str, Section], system: str, workload: str) -> Figure | None:
    section = sections.get(system)
    if section is None:
        return None
    return next((f for f in section.figures if f.workload == workload), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def build_rows(sections: dict[str, Section]) -> list[dict[str, Any]]:
    """Returns: one JSON-ready dict per table row, with values, ratios and durability per system."""
    rows: list[dict[str, Any]] = []
    for row in ROWS:
        values: dict[str, float | None] = {}
        durability: dict[str, str] = {}
        notes: dict[str, str] = {}
        wiber = _figure(sections, "wiber", row.wiber)
        values["wiber"] = wiber.value if wiber else None
        if wiber:
            durability["wiber"] = wiber.durability
            notes["wiber"] = wiber.note
        for system, key in row.peers.items():
            fig = _figure(sections, system, key)
            values[system] = fig.value if fig else None
            if fig:
                durability[system] = fig.durability
                notes[system] = f"{key}: {fig.note}" if fig.note else key
        ratios = {name: _ratio(values["wiber"], values.get(peer)) for name, _head, peer in RATIOS
                  if peer in row.peers}
        rows.append({"label": row.label.strip(), "workload": row.wiber, "unit": row.unit, "better": row.better,
                     "values": values, "ratios": ratios, "durability": durability, "notes": notes})
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        if value >= 1e4:
            return f"{value / 1e3:.1f}k"
        if value >= 1e3:
            return f"{value / 1e3:.2f}k"
        return f"{value:.0f}"
    if unit == "ms":
        return f"{value:.3f}" if value < 1 else f"{value:.2f}"
    return f"{value:.2f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


def render_table(rows: list[dict[str, Any]], sections: dict[str, Section], meta: dict[str, Any]) -> str:
    """Returns: the table as text, with its durability line, matching notes and the run's load."""
    label_w = max(len(r.label) for r in ROWS) + 8
    heads = [head for _s, head, _d in COLUMNS] + [head for _k, head, _p in RATIOS]
    widths = [max(12, len(h) + 2) for h in heads]

    def line(first: str, cells: list[str]) -> str:
        return first.ljust(label_w) + "".join(c.rjust(w) for c, w in zip(cells, widths))

    out = [line("workload (unit)", heads),
           line("  durability", [d for _s, _h, d in COLUMNS] + [""] * len(RATIOS)),
           "-" * (label_w + sum(widths))]
    for spec, row in zip(ROWS, rows):
        cells = [_fmt(row["values"].get(system), row["unit"]) if (system == "wiber" or system in spec.peers)
                 else "" for system, _h, _d in COLUMNS]
        cells += [_fmt_ratio(row["ratios"].get(key)) if peer in spec.peers else "" for key, _h, peer in RATIOS]
        out.append(line(f"{spec.label} ({row['unit']})", cells))
    out.append("-" * (label_w + sum(widths)))
    for note in MATCHING_NOTES:
        out.append(f"  {note}")
    for section in sections.values():
        if section.error:
            out.append(f"  {section.label}: FAILED: {section.error}")
    for section in sections.values():
        for fig in section.figures:
            if fig.workload == "failover_s" and fig.raw:
                out.append(f"  {section.label} failover: median of {len(fig.raw)}: {fig.note}; "
                           f"all: {', '.join(f'{t:.2f}' for t in fig.raw)}")
    load = meta.get("load")
    if load:
        out.append(f"  machine: {meta.get('cpus')} CPUs, {meta.get('python', 'Python ?')} for every Python process; "
                   f"load average (1 min) at start {load['start'][0]:.2f}, "
                   f"end {load['end'][0]:.2f}; per section: "
                   + ", ".join(f"{k} {'/'.join(f'{one[0]:.2f}' for one in v)}"
                               for k, v in load.get("sections", {}).items()))
    return "\n".join(out)


def write_json(results_dir: Path, document: dict[str, Any], prefix: str = "") -> tuple[Path, Path]:
    """Write `latest.json` and a timestamped copy (`prefix` before both names, e.g. ``scale-``, so a
    workload run on its own does not replace the regular run's file). Returns: both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=False, default=str)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    latest = results_dir / f"{prefix}latest.json"
    stamped = results_dir / f"{prefix}run-{stamp}.json"
    latest.write_text(text + "\n")
    stamped.write_text(text + "\n")
    return latest, stamped
