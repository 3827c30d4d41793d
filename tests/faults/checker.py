"""The checker: what every node finally holds, held against what the workload was told.

`drain` waits until every node has applied the same commit index (a quiet cluster converges),
then reads every topic from every node with HISTORY (``consistency: local``, pages of 1000).
`check` takes that final state and the history and finds, per docs/design.md section 4:

* lost            - a publish acknowledged ``ok`` whose value is missing from a node's final log (1)
* offset_mismatch - an ``ok`` whose topic/offset is not where the value is (1)
* duplicated      - a value stored at two offsets (3: retries with one client_id/seq apply once)
* unexpected      - a value in a log that no process ever published, or whose publish ``fail``ed
* inconsistent    - two values at one offset across nodes, a node's log shorter than another's or
                    not dense from its first offset (2)
* sub_skipped / sub_duplicated / sub_nonmonotonic / sub_mismatch / sub_incomplete - a subscriber
  that missed an offset, got one twice, went backwards, got a value the final log does not hold
  there, or did not deliver up to the end of the log (the subscription promise of section 3)
* stale_read      - a ``linearizable`` HISTORY whose answer misses something observed before it was
                    sent (5): the topic's end offset it reported is not above the offset of every
                    publish acknowledged ``ok`` before the read's invoke (real time: one machine's
                    monotonic clock), nor at the end offset of every read answered before it (a
                    local read shows only committed messages, which a later linearizable read must
                    show too), nor above every offset a subscriber was delivered before it
* read_mismatch   - a HISTORY answer (either consistency) that shows what is not committed or not
                    where it is (5): an (offset, value) that differs from the final log there, an
                    offset past the final log's end, an end offset past the final log's end (the
                    node had applied more than was ever committed), or offsets that are not
                    consecutive or not below the end offset the answer gave. Local reads may be
                    stale (any end at or below the final one is fine); offsets that retention
                    removed before the drain are not judged
* not_converged   - the nodes did not reach the same commit index before the drain deadline
* stamp_order     - (docs/design.md section 5, checked because clock skew is one of the faults) a message
                    whose ``lamport`` is not above every earlier entry's, or whose ``ts`` is below
                    an earlier entry's, in log (index) order
* stuck, crashed  - added by the campaign: the cluster did not become healthy again (one leader
                    named by all, followers caught up) after a heal, or a node exited on its own
* client_crashed  - added by the campaign: a workload process (the client library) exited with an
                    error or had to be killed

Publishes whose outcome is unknown (``info``) may or may not be in the log; both are fine. A read
invoked while a publish is in flight may or may not show it; failed or unanswered reads show
nothing and are only counted (`Report.history_reads`).
Availability is measured, not judged: per nemesis heal, the time from the heal to the first
``ok`` publish completed after it (``recoveries``); per fault start, the time from the start to
the first ``ok`` of a publish invoked after it (``failovers``; for faults that take the leader
away this is docs/design.md section 4, promise 6, as a client sees it).
"""

from __future__ import annotations

import bisect
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.faults.history import (
    FAIL,
    HEAL,
    HISTORY,
    INVOKE,
    LINEARIZABLE,
    NEMESIS,
    OK,
    PUBLISH,
    READ,
    START,
    Op,
)

ANOMALY_KINDS = (
    "lost", "offset_mismatch", "duplicated", "unexpected", "inconsistent",
    "sub_skipped", "sub_duplicated", "sub_nonmonotonic", "sub_mismatch", "sub_incomplete", "not_converged",
    "stale_read", "read_mismatch", "stamp_order", "stuck", "crashed", "client_crashed",
)

#: topic -> [(offset, value)] in offset order, as one node holds it.
NodeLog = dict[str, list[tuple[int, str]]]


@dataclass
class FinalState:
    """What every node holds at the end."""

    logs: dict[str, NodeLog]  # node id -> topic -> [(offset, value)]
    converged: bool = True
    notes: list[str] = field(default_factory=list)
    #: node id -> topic -> [(offset, index, lamport, ts)] (optional: hand-made states leave it out)
    stamps: dict[str, dict[str, list[tuple[int, int, int, float]]]] = field(default_factory=dict)


def drain(request_to: Any, node_ids: Sequence[str], topics: Iterable[str] = (), timeout: float = 30.0,
          page: int = 1000) -> FinalState:
    """Read the final log of every node, once they have applied the same commit index.

    Args:
        request_to: ``request_to(node_id, op, timeout=..., **fields) -> reply`` (raises on error).
        node_ids: every node of the cluster.
        topics: topics to read besides those the nodes list in TOPICS.
    """
    notes: list[str] = []
    deadline = time.monotonic() + timeout
    converged = False
    last: dict[str, Any] = {}
    while True:
        statuses: dict[str, Any] = {}
        for nid in node_ids:
            try:
                st = request_to(nid, "STATUS", timeout=1.0)
                statuses[nid] = (st["commit_index"], st["applied_index"])
            except Exception as exc:  # noqa: BLE001
                statuses[nid] = repr(exc)
        last = statuses
        values = set(statuses.values())
        if len(values) == 1:
            only = next(iter(values))
            if isinstance(only, tuple) and only[0] == only[1]:
                converged = True
                break
        if time.monotonic() >= deadline:
            notes.append(f"nodes did not converge within {timeout:g} s: {last}")
            break
        time.sleep(0.1)
    all_topics = set(topics)
    for nid in node_ids:
        try:
            all_topics |= set(request_to(nid, "TOPICS", timeout=2.0)["topics"])
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{nid}: TOPICS failed: {exc!r}")
    logs: dict[str, NodeLog] = {}
    stamps: dict[str, dict[str, list[tuple[int, int, int, float]]]] = {}
    for nid in node_ids:
        logs[nid] = {}
        stamps[nid] = {}
        for topic in sorted(all_topics):
            items: list[tuple[int, str]] = []
            stamped: list[tuple[int, int, int, float]] = []
            offset = 0
            try:
                while True:
                    reply = request_to(nid, "HISTORY", timeout=5.0, topic=topic, from_offset=offset, limit=page,
                                       consistency="local")
                    items.extend((int(m["offset"]), bytes(m["data"]).decode("utf-8", "replace"))
                                 for m in reply["messages"])
                    stamped.extend((int(m["offset"]), int(m["index"]), int(m["lamport"]), float(m["ts"]))
                                   for m in reply["messages"])
                    if reply["next_offset"] >= reply["end_offset"] or not reply["messages"]:
                        break
                    offset = reply["next_offset"]
            except Exception as exc:  # noqa: BLE001
                notes.append(f"{nid}: HISTORY {topic} from {offset} failed: {exc!r}")
            logs[nid][topic] = items
            stamps[nid][topic] = stamped
    return FinalState(logs, converged, notes, stamps)


@dataclass
class Report:
    """Everything `check` found, plus counts and recovery times."""

    anomalies: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in ANOMALY_KINDS})
    ops: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    #: consistency -> op type -> how many HISTORY reads (invoke / ok / fail / info)
    history_reads: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    stored: int = 0
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, **detail: Any) -> None:
        self.anomalies[kind].append(detail)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.anomalies.items()}

    @property
    def clean(self) -> bool:
        return not any(self.anomalies.values())

    def subscribers_clean(self) -> bool:
        return not any(v for k, v in self.anomalies.items() if k.startswith("sub_"))

    def recovery_times(self) -> list[float]:
        return [r["recovery_s"] for r in self.recoveries if r["recovery_s"] is not None]

    def describe(self, limit: int = 5) -> str:
        """Returns: one line per anomaly kind found, with up to `limit` examples each."""
        lines = []
        for kind, items in self.anomalies.items():
            if items:
                lines.append(f"{kind}: {len(items)}; e.g. {items[:limit]}")
        return "\n".join(lines) or "no anomalies"

    def to_json(self) -> dict[str, Any]:
        return {"anomalies": self.anomalies, "counts": self.counts(), "ops": dict(self.ops), "reads": self.reads,
                "history_reads": {k: dict(v) for k, v in self.history_reads.items()},
                "stored": self.stored, "recoveries": self.recoveries, "failovers": self.failovers,
                "faults": dict(self.faults)}


def _reference(final: FinalState, report: Report) -> dict[str, dict[int, str]]:
    """Returns: topic -> offset -> value, by majority across nodes; reports inconsistencies."""
    topics = sorted({t for log in final.logs.values() for t in log})
    nodes = sorted(final.logs)
    ref: dict[str, dict[int, str]] = {}
    for topic in topics:
        per_node: dict[str, dict[int, str]] = {}
        for nid in nodes:
            items = final.logs[nid].get(topic, [])
            per_node[nid] = dict(items)
            offsets = [o for o, _ in items]
            if offsets and offsets != list(range(offsets[0], offsets[0] + len(offsets))):
                missing = sorted(set(range(offsets[0], offsets[-1] + 1)) - set(offsets))
                report.add("inconsistent", topic=topic, node=nid, problem="offsets not dense",
                           missing=missing[:20])
        all_offsets = sorted({o for d in per_node.values() for o in d})
        ref[topic] = {}
        for offset in all_offsets:
            values = {nid: d.get(offset) for nid, d in per_node.items()}
            present = Counter(v for v in values.values() if v is not None)
            ref[topic][offset] = present.most_common(1)[0][0]
            if len(present) > 1:
                report.add("inconsistent", topic=topic, offset=offset, problem="different values",
                           values=values)
        ends = {nid: (max(d) + 1 if d else 0) for nid, d in per_node.items()}
        if len(set(ends.values())) > 1:
            report.add("inconsistent", topic=topic, problem="logs of different lengths", ends=ends)
    return ref


def check(history: Sequence[Op], final: FinalState, subscribers_must_finish: bool = True) -> Report:
    """Returns: the Report of `history` against `final` (see the module docstring)."""
    report = Report()
    if not final.converged:
        report.add("not_converged", notes=final.notes)
    ref = _reference(final, report)

    # Where each value is stored, across the reference and every node.
    positions: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for topic, offsets in ref.items():
        for offset, value in offsets.items():
            positions[value].append((topic, offset))
    report.stored = sum(len(o) for o in ref.values())
    on_node: dict[str, set[str]] = {nid: {v for items in log.values() for _, v in items}
                                    for nid, log in final.logs.items()}

    invoked: set[str] = set()
    failed: set[str] = set()
    acked: list[Op] = []
    for op in history:
        if op.f == PUBLISH:
            report.ops[op.type] += 1
            if op.type == INVOKE and op.value is not None:
                invoked.add(op.value)
            elif op.type == FAIL and op.value is not None:
                failed.add(op.value)
            elif op.type == OK:
                acked.append(op)
        elif op.f == READ and op.type == OK:
            report.reads += 1
        elif op.process == NEMESIS and op.f == START and op.value:
            report.faults[op.value] += 1

    for value, where in positions.items():
        if len(where) > 1:
            report.add("duplicated", value=value, positions=sorted(where))
        if value not in invoked:
            report.add("unexpected", value=value, positions=sorted(where), problem="never published")
        elif value in failed:
            report.add("unexpected", value=value, positions=sorted(where), problem="its publish failed")

    for op in acked:
        assert op.value is not None
        missing_on = sorted(nid for nid, values in on_node.items() if op.value not in values)
        if missing_on:
            report.add("lost", value=op.value, topic=op.topic, offset=op.offset, process=op.process,
                       acked_at_wall=op.wall, missing_on=missing_on)
        where = positions.get(op.value, [])
        if where and (op.topic, op.offset) not in where:
            report.add("offset_mismatch", value=op.value, acked=(op.topic, op.offset), found=sorted(where))

    _check_subscribers(history, ref, report, subscribers_must_finish)
    _check_history_reads(history, ref, report)
    _check_stamps(final, report)
    _measure_recoveries(history, acked, report)
    return report


def _check_subscribers(history: Sequence[Op], ref: Mapping[str, Mapping[int, str]], report: Report,
                       must_finish: bool) -> None:
    deliveries: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in history:
        if op.f == READ and op.type == OK and op.topic is not None and op.offset is not None:
            deliveries[(op.process, op.topic)].append(op)
    subscribed = {(op.process, op.topic) for op in history
                  if op.f in (READ, "subscription") and op.topic is not None}
    for key in sorted(subscribed | set(deliveries)):
        process, topic = key
        log = ref.get(topic, {})
        seen: set[int] = set()
        last = -1
        for op in deliveries.get(key, []):
            offset = op.offset
            assert offset is not None
            if offset in seen:
                report.add("sub_duplicated", process=process, topic=topic, offset=offset)
            elif offset < last:
                report.add("sub_nonmonotonic", process=process, topic=topic, offset=offset, after=last)
            elif offset > last + 1:
                report.add("sub_skipped", process=process, topic=topic, missing=(last + 1, offset - 1))
            if log.get(offset) != op.value:
                report.add("sub_mismatch", process=process, topic=topic, offset=offset, got=op.value,
                           log=log.get(offset))
            seen.add(offset)
            last = max(last, offset)
        end = max(log) + 1 if log else 0
        if must_finish and last + 1 < end:
            report.add("sub_incomplete", process=process, topic=topic, delivered_up_to=last, log_end=end)


def _paired_reads(history: Sequence[Op], report: Report) -> list[tuple[Op | None, Op]]:
    """Returns: each answered HISTORY read with its invoke (a reader process has one read in flight)."""
    invokes: dict[str, Op] = {}
    answered: list[tuple[Op | None, Op]] = []
    for op in history:
        if op.f != HISTORY:
            continue
        invoke = op if op.type == INVOKE else invokes.pop(op.process, None)
        consistency = (invoke or op).consistency or "?"
        report.history_reads[consistency][op.type] += 1
        if op.type == INVOKE:
            invokes[op.process] = op
        elif op.type == OK:
            answered.append((invoke, op))
    return answered


def _read_problems(read: Op, topic: str, log: Mapping[int, str]) -> list[dict[str, Any]]:
    """Returns: what a read's answer shows that the final log (`log`, of `topic`) does not hold."""
    problems: list[dict[str, Any]] = []
    messages = read.messages or ()
    end = read.end if read.end is not None else max((o + 1 for o, _ in messages), default=0)
    log_first = min(log, default=0)
    log_end = max(log) + 1 if log else 0
    offsets = [o for o, _ in messages]
    if offsets and (offsets != list(range(offsets[0], offsets[0] + len(offsets))) or offsets[-1] >= end):
        problems.append({"problem": "offsets not consecutive below the end it gave", "offsets": offsets,
                         "end": end})
    if end > log_end:
        problems.append({"problem": "end beyond the final log", "end": end, "log_end": log_end})
    for offset, value in messages:
        if offset < log_first:
            continue  # removed by retention before the drain: nothing to compare with
        if offset >= log_end:
            problems.append({"problem": "offset beyond the final log", "offset": offset, "got": value,
                             "log_end": log_end})
        elif log.get(offset) != value:
            problems.append({"problem": "value differs from the final log", "offset": offset, "got": value,
                             "log": log.get(offset)})
    return problems


def _check_history_reads(history: Sequence[Op], ref: Mapping[str, Mapping[int, str]], report: Report) -> None:
    """Every answer shows only the final log (read_mismatch); a linearizable one, all seen before it (stale_read)."""
    answered = _paired_reads(history, report)
    # Per topic, what was observed when: (completed at, end offset it proves, who observed it).
    seen: dict[str, list[tuple[float, int, dict[str, Any]]]] = defaultdict(list)
    for op in history:
        if op.f == PUBLISH and op.type == OK and op.topic is not None and op.offset is not None:
            seen[op.topic].append((op.time, op.offset + 1, {"publish": op.value, "process": op.process,
                                                           "offset": op.offset, "acked_at": op.time}))
        elif (op.f == READ and op.type == OK and op.topic is not None and op.offset is not None
              and ref.get(op.topic, {}).get(op.offset) == op.value):
            seen[op.topic].append((op.time, op.offset + 1, {"delivered_to": op.process, "offset": op.offset,
                                                           "at": op.time}))
    for invoke, read in answered:
        topic = (invoke or read).topic or ""
        problems = _read_problems(read, topic, ref.get(topic, {}))
        for problem in problems:
            report.add("read_mismatch", process=read.process, node=read.node, consistency=read.consistency,
                       topic=topic, invoked_at=invoke.time if invoke else None, answered_at=read.time, **problem)
        if not problems and read.end is not None:
            seen[topic].append((read.time, read.end, {"read_by": read.process, "node": read.node,
                                                      "consistency": read.consistency, "end": read.end,
                                                      "answered_at": read.time}))
    floors: dict[str, tuple[list[float], list[tuple[int, dict[str, Any]]]]] = {}
    for topic, events in seen.items():
        events.sort(key=lambda e: e[0])
        best: list[tuple[int, dict[str, Any]]] = []
        for _, end, who in events:
            best.append((end, who) if not best or end > best[-1][0] else best[-1])
        floors[topic] = ([e[0] for e in events], best)
    for invoke, read in answered:
        if invoke is None or invoke.consistency != LINEARIZABLE or invoke.topic not in floors:
            continue
        times, best = floors[invoke.topic]
        i = bisect.bisect_left(times, invoke.time)  # observations completed strictly before the read was sent
        if i and (read.end or 0) < best[i - 1][0]:
            report.add("stale_read", process=read.process, node=read.node, topic=invoke.topic,
                       invoked_at=invoke.time, end=read.end, must_reach=best[i - 1][0], witness=best[i - 1][1])


def _check_stamps(final: FinalState, report: Report, limit: int = 20) -> None:
    """Lamport strictly increasing and ts non-decreasing in log order, on each node's log."""
    for nid in sorted(final.stamps):
        entries: dict[int, list[tuple[int, float, str, int]]] = defaultdict(list)
        for topic, items in final.stamps[nid].items():
            for offset, index, lamport, ts in items:
                entries[index].append((lamport, ts, topic, offset))
        found = 0
        prev: tuple[int, int, float] | None = None  # (index, max lamport, ts)
        for index in sorted(entries):
            msgs = entries[index]
            low = min(m[0] for m in msgs)
            ts = max(m[1] for m in msgs)
            if prev is not None and (low <= prev[1] or ts < prev[2]):
                found += 1
                if found <= limit:
                    report.add("stamp_order", node=nid, index=index, lamport=low, ts=ts, previous_index=prev[0],
                               previous_lamport=prev[1], previous_ts=prev[2], at=sorted((t, o) for _, _, t, o in msgs))
            prev = (index, max(m[0] for m in msgs), max(ts, prev[2]) if prev else ts)
        if found > limit:
            report.add("stamp_order", node=nid, problem=f"{found - limit} more not shown")
        if found:
            return  # the nodes hold the same log (or `inconsistent` says otherwise): one node's list is enough


def _measure_recoveries(history: Sequence[Op], acked: Sequence[Op], report: Report) -> None:
    """Per heal: heal -> first ``ok`` completed after it. Per start: start -> first ``ok`` of a
    publish invoked after it (an answer already on its way when the fault hit does not count)."""
    invoked_at = {op.value: op.time for op in history if op.f == PUBLISH and op.type == INVOKE}
    by_time = sorted(acked, key=lambda op: op.time)
    ok_times = [op.time for op in by_time]
    for op in history:
        if op.process != NEMESIS or op.f not in (START, HEAL):
            continue
        i = bisect.bisect_right(ok_times, op.time)
        if op.f == START:
            while i < len(by_time) and invoked_at.get(by_time[i].value, op.time) <= op.time:
                i += 1
        took = ok_times[i] - op.time if i < len(ok_times) else None
        row = {"fault_id": op.fault_id, "kind": op.value, "node": op.node, "wall": op.wall,
               "recovery_s": None if took is None else round(took, 3)}
        (report.recoveries if op.f == HEAL else report.failovers).append(row)


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


__all__ = ["ANOMALY_KINDS", "FinalState", "Report", "check", "drain", "median"]
