"""A campaign: a cluster, a workload running throughout, a schedule of faults, then the checker.

`run_campaign` is shared by the CI test (a fixed schedule on 3 nodes) and `python -m
tests.faults.run` (a long randomized one). The steps:

1. Put the nodes in network namespaces when the machine allows it (else on 127.0.0.1, and the
   network faults are skipped with the reason), start them, wait for one leader named by all.
2. Start the workload processes (publishers, subscribers, HISTORY readers); wait for the first
   acknowledged publish.
3. For each fault of the schedule: wait until the cluster is healthy (one leader named by every
   node, followers caught up), apply the fault, keep it for a while, heal it, measure how long
   until the cluster is healthy again (if not within `healthy_timeout_s`: record ``stuck`` with
   the node log tails and heal everything), let the workload run quietly for a while. Holding a
   fault for N seconds is the schedule, not a wait for a condition.
4. Heal everything; keep the workload running `tail_s` more (so the last heal's recovery is
   measured); stop the publishers and readers; drain every node; let the subscribers catch up to the end of
   the log; stop them; check.

Everything started is stopped by pid in a `finally`, and the namespaces are deleted; node logs,
histories and the report stay in `out_dir` as evidence.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults import netlab
from tests.faults.checker import FinalState, Report, check, drain, median
from tests.faults.cluster import DOWN, FaultCluster
from tests.faults.history import NEMESIS, HistoryWriter, read_history
from tests.faults.nemesis import (
    ALL_FAULTS,
    LEADER_LOSS,
    NETWORK_FAULTS,
    PROCESS_FAULTS,
    Nemesis,
    NoLeader,
)
from tests.faults.workload import Progress, Workload, WorkloadSpec

log = logging.getLogger(__name__)


@dataclass
class CampaignSpec:
    """What to run: cluster size, schedule, timing, workload."""

    nodes: int = 3
    seed: int = 0
    schedule: Sequence[str] | None = None  # a fixed list of faults; None: random picks for `minutes`
    minutes: float = 10.0
    pool: Sequence[str] = ALL_FAULTS  # what random picks choose from
    hold_s: tuple[float, float] = (1.5, 4.0)  # each fault is held log-uniformly within this range
    combine_p: float = 0.0  # random schedules: chance that a second fault (other family) joins the first
    quiet_s: tuple[float, float] = (1.0, 3.0)
    tail_s: float = 4.0
    healthy_timeout_s: float = 20.0
    netns: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)


@dataclass
class CampaignResult:
    spec: CampaignSpec
    out_dir: Path
    report: Report
    applied: Counter[str]
    skipped: dict[str, str]
    netns_reason: str | None
    elapsed_s: float
    progress: Progress
    final: FinalState | None = None
    rejoins: list[dict[str, Any]] = field(default_factory=list)


ProgressFn = Callable[[dict[str, Any]], None]


def _schedule(spec: CampaignSpec, rng: random.Random, nemesis: Nemesis, end: float,
              skipped: dict[str, str]) -> Iterator[str]:
    if spec.schedule is not None:
        yield from spec.schedule
        return
    pool = []
    for kind in spec.pool:
        reason = nemesis.unavailable(kind)
        if reason:
            skipped[kind] = reason
        else:
            pool.append(kind)
    if not pool:
        return
    while time.monotonic() < end:
        yield rng.choice(pool)


def run_campaign(spec: CampaignSpec, out_dir: Path, on_progress: ProgressFn | None = None) -> CampaignResult:
    """Run one campaign (see the module docstring). Returns: its result; the report says what broke."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history_dir = out_dir / "history"
    rng = random.Random(spec.seed)
    started = time.monotonic()
    reason = netlab.unavailable_reason() if spec.netns else "network namespaces were turned off for this run"
    node_ids = [f"n{i}" for i in range(1, spec.nodes + 1)]
    lab: netlab.NetLab | None = None
    cluster: FaultCluster | None = None
    workload: Workload | None = None
    applied: Counter[str] = Counter()
    skipped: dict[str, str] = {}
    extra: list[tuple[str, dict[str, Any]]] = []  # stuck / crashed, added to the report
    rejoins: list[dict[str, Any]] = []  # per heal: how long until the cluster was healthy again
    current = {"fault": "-"}
    last_tick = [0.0]
    total_s = spec.minutes * 60 if spec.schedule is None else None

    def tick(force: bool = False) -> None:
        now = time.monotonic()
        if on_progress is None or workload is None or (not force and now - last_tick[0] < 0.5):
            return
        last_tick[0] = now
        p = workload.poll()
        on_progress({"elapsed": now - started, "total": total_s, "applied": sum(applied.values()),
                     "fault": current["fault"], "ok": p.ok, "info": p.info, "fail": p.fail, "reads": p.reads,
                     "history_ok": dict(p.history_ok)})

    def check_crashes() -> None:
        assert cluster is not None
        for nid, rc in cluster.crashed().items():
            tail = cluster.nodes[nid].log_tail(80)
            extra.append(("crashed", {"node": nid, "exit": rc, "log_tail": tail}))
            log.warning("campaign: %s exited on its own (status %s); starting it again", nid, rc)
            cluster.nodes[nid].state = DOWN
            cluster.start(nid)

    def hold(seconds: float) -> None:
        """Keep the current state for `seconds` (the schedule), watching for crashes."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            check_crashes()
            tick()
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def wait_healthy(timeout: float) -> str | None:
        assert cluster is not None
        deadline = time.monotonic() + timeout
        while True:
            check_crashes()
            problem = cluster.health_problem()
            tick()
            if problem is None or time.monotonic() >= deadline:
                return problem
            time.sleep(0.1)

    try:
        if reason is None:
            lab = netlab.NetLab(node_ids)
            lab.up()
        cluster = FaultCluster(out_dir / "cluster", spec.nodes, lab, **spec.settings)
        cluster.start()
        cluster.wait_up()
        problem = wait_healthy(30.0)
        if problem:
            raise RuntimeError(f"the cluster did not come up healthy: {problem}\n{cluster.log_tails()}")
        nemesis_history = HistoryWriter(history_dir / "nemesis.jsonl", NEMESIS)
        nemesis = Nemesis(cluster, nemesis_history, rng, reason)
        addr_map = cluster.addr_map()
        workload = Workload(list(addr_map.values()), history_dir, out_dir / "workload-logs", spec.workload,
                            node_ids=list(addr_map))
        workload.start()
        deadline = time.monotonic() + 30.0
        while workload.poll().ok == 0:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no publish was acknowledged within 30 s; workload dead: {workload.dead()}\n"
                                   f"{cluster.log_tails()}")
            time.sleep(0.1)
        end = time.monotonic() + (spec.minutes * 60 if spec.schedule is None else 0)
        for kind in _schedule(spec, rng, nemesis, end, skipped):
            current["fault"] = f"(waiting for health before {kind})"
            problem = wait_healthy(spec.healthy_timeout_s)
            if problem:
                extra.append(("stuck", {"before": kind, "problem": problem, "log_tails": cluster.log_tails(40),
                                        "rules": lab.rules() if lab else None}))
                log.warning("campaign: not healthy before %s: %s; healing everything", kind, problem)
                nemesis.heal_everything()
                if wait_healthy(spec.healthy_timeout_s):
                    break  # still stuck: stop the schedule, check what we have
            reason_k = nemesis.unavailable(kind)
            if reason_k:
                skipped[kind] = reason_k
                continue
            try:
                fault = nemesis.start(kind)
            except NoLeader:
                continue  # the leader moved between the health check and now; go on
            applied[kind] += 1
            current["fault"] = f"{kind} {fault.detail}"
            held = math.exp(rng.uniform(math.log(spec.hold_s[0]), math.log(spec.hold_s[1])))
            second = None
            if spec.schedule is None and spec.combine_p > 0 and rng.random() < spec.combine_p:
                hold(held / 2)
                family = PROCESS_FAULTS if kind in PROCESS_FAULTS else NETWORK_FAULTS
                others = [k for k in spec.pool if k not in family and not nemesis.unavailable(k)]
                if others:
                    kind2 = rng.choice(others)
                    try:
                        second = nemesis.start(kind2)
                        applied[kind2] += 1
                        current["fault"] = f"{kind} + {kind2} {second.detail}"
                    except (NoLeader, RuntimeError) as exc:
                        log.info("campaign: could not add %s to %s: %s", kind2, kind, exc)
                hold(held / 2)
            else:
                hold(held)
            if second is not None:
                nemesis.heal(second)
            nemesis.heal(fault)
            healed_at = time.monotonic()
            current["fault"] = f"healed {kind}"
            problem = wait_healthy(spec.healthy_timeout_s)
            rejoins.append({"fault_id": fault.id, "kind": kind, "with": second.kind if second else None,
                            "healthy_s": None if problem else round(time.monotonic() - healed_at, 3)})
            if problem:
                what = f"{kind} #{fault.id} ({fault.detail})"
                if second is not None:
                    what += f" + {second.kind} #{second.id} ({second.detail})"
                extra.append(("stuck", {"after": what, "problem": problem,
                                        "log_tails": cluster.log_tails(40), "rules": lab.rules() if lab else None}))
                log.warning("campaign: not healthy %g s after healing %s: %s", spec.healthy_timeout_s, kind, problem)
                nemesis.heal_everything()
            hold(rng.uniform(*spec.quiet_s))
        current["fault"] = "final heal"
        nemesis.heal_everything()
        problem = wait_healthy(spec.healthy_timeout_s)
        if problem:
            extra.append(("stuck", {"before": "final drain", "problem": problem,
                                    "log_tails": cluster.log_tails(40)}))
        hold(spec.tail_s)
        current["fault"] = "draining"
        tick(force=True)
        workload.stop_publishers()
        final = drain(cluster.request_to, node_ids, spec.workload.topics, timeout=30.0)
        ends = {}
        for topic in spec.workload.topics:
            ends[topic] = max((max((o for o, _ in log_.get(topic, [])), default=-1) + 1
                               for log_ in final.logs.values()), default=0)
        workload.wait_subscribers(ends, timeout=30.0)
        workload.stop()
        for name, rc in workload.dead().items():
            if rc != 0:
                extra.append(("client_crashed", {"process": name, "exit": rc,
                                                 "log_tail": workload.log_tail(name)}))
        nemesis_history.close()
        history = read_history(history_dir)
        report = check(history, final, subscribers_must_finish=True)
        for kind, detail in extra:
            report.add(kind, **detail)
        result = CampaignResult(spec, out_dir, report, applied, skipped, reason, time.monotonic() - started,
                                workload.progress, final, rejoins)
        (out_dir / "report.json").write_text(json.dumps(
            {**report.to_json(), "applied": dict(applied), "skipped": skipped, "seed": spec.seed, "rejoins": rejoins,
             "netns_reason": reason, "elapsed_s": result.elapsed_s}, indent=1, default=str))
        return result
    finally:
        if workload is not None:
            workload.kill_all()
        if cluster is not None:
            cluster.close()
        if lab is not None:
            lab.down()


def summary_table(result: CampaignResult) -> str:
    """Returns: the end-of-run table: faults per kind, ops, anomalies, recovery times."""
    r = result.report
    where = "network namespaces" if result.netns_reason is None else f"127.0.0.1 ({result.netns_reason})"
    lines = [f"seed {result.spec.seed}, {result.spec.nodes} nodes, {result.elapsed_s:.0f} s, {where}",
             f"artifacts: {result.out_dir}", ""]
    lines.append(f"{'fault':<22}{'applied':>8}{'max heal->ack s':>17}{'max fault->ack s':>18}"
                 f"{'max heal->healthy s':>21}")
    kinds = sorted(set(result.applied) | set(result.skipped))
    for kind in kinds:
        heals = [x["recovery_s"] for x in r.recoveries if x["kind"] == kind and x["recovery_s"] is not None]
        starts = [x["recovery_s"] for x in r.failovers if x["kind"] == kind and x["recovery_s"] is not None]
        healthy = [x["healthy_s"] for x in result.rejoins if x["kind"] == kind and x["healthy_s"] is not None]
        if kind in result.skipped and not result.applied.get(kind):
            lines.append(f"{kind:<22}{'skipped':>8}  ({result.skipped[kind][:70]})")
        else:
            lines.append(f"{kind:<22}{result.applied.get(kind, 0):>8}{_fmt(max(heals, default=None)):>17}"
                         f"{_fmt(max(starts, default=None)):>18}{_fmt(max(healthy, default=None)):>21}")
    lines.append("")
    ops = r.ops
    lines.append(f"publishes: {ops.get('invoke', 0)} invoked, {ops.get('ok', 0)} ok, {ops.get('fail', 0)} fail, "
                 f"{ops.get('info', 0)} unknown; {r.stored} stored; {r.reads} subscriber deliveries")
    lines.append("HISTORY reads: " + "; ".join(
        f"{consistency} {c.get('ok', 0)} ok, {c.get('fail', 0)} fail, {c.get('info', 0)} unanswered"
        for consistency, c in sorted(r.history_reads.items())) if r.history_reads else "HISTORY reads: none")
    counts = r.counts()
    lines.append("anomalies: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    rec = r.recovery_times()
    lost_leader = [x["recovery_s"] for x in r.failovers if x["kind"] in LEADER_LOSS and x["recovery_s"] is not None]
    unrecovered = [x for x in r.recoveries if x["recovery_s"] is None]
    healthy_all = [x["healthy_s"] for x in result.rejoins if x["healthy_s"] is not None]
    lines.append(f"heal -> first ack:                  {_stats(rec)}"
                 + (f", {len(unrecovered)} heals never followed by an ack" if unrecovered else ""))
    lines.append(f"leader lost -> first ack of a publish sent after it: {_stats(lost_leader)}")
    lines.append(f"heal -> healthy (one leader named by all, followers caught up): {_stats(healthy_all)}")
    lines.append("verdict: " + ("CLEAN" if r.clean else "ANOMALIES FOUND (see report.json and node logs)"))
    return "\n".join(lines)


def _stats(xs: Sequence[float]) -> str:
    return f"n={len(xs)} median {_fmt(median(xs))} s, max {_fmt(max(xs, default=None))} s"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
