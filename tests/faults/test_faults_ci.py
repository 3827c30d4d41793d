"""docs/design.md section 4 under faults, on real processes: the CI schedule (3 nodes, a few minutes).

One campaign (`tests.faults.campaign`) runs once for the module: a workload of 3 publisher and 2
subscriber processes (plus one pipelined, batching publisher, and 2 readers issuing HISTORY
alternately linearizable and local to nodes picked at random) runs throughout while the nemesis
applies, one after the other, kill -9 of the leader and of a follower, SIGSTOP/SIGCONT of the
leader, a restart with a skewed clock, and - with the nodes in network namespaces (root, `ip`,
`nft`) - one node isolated, the leader cut from the majority, a bridge, one-way loss, a
blackholed node and a slow (tbf rate-limited) leader link. Then every node is drained and the checker runs. Each
test below asserts one promise on that one run; the network faults skip, with the reason, where
the machine does not allow namespaces. `WIBER_FAULTS_SEED` picks another seed;
`WIBER_FAULTS_NO_NETNS=1` runs on 127.0.0.1 even as root (the network faults then skip).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tests.faults.campaign import (
    CampaignResult,
    CampaignSpec,
    run_campaign,
    summary_table,
)
from tests.faults.history import LINEARIZABLE, LOCAL
from tests.faults.nemesis import LEADER_LOSS
from tests.faults.workload import WorkloadSpec
from wiber.config.model import ClusterConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(330)]

SCHEDULE = ("kill_leader", "kill_follower", "pause_leader", "clock_skew",
            "isolate_one", "leader_from_majority", "bridge", "one_way", "blackhole_one", "slow_link")
SETTINGS: dict[str, int] = {"snapshot_every": 50}  # checkpoints every few seconds of load
#: After a heal, an acknowledged publish within ten election timeouts (3 s at the default 300 ms):
#: derived from the configured timeout, so a schedule run with other timing keeps a fair limit.
RECOVERY_LIMIT_S = 10 * SETTINGS.get(
    "election_timeout_ms", next(f.default for f in dataclasses.fields(ClusterConfig) if f.name == "election_timeout_ms")
) / 1000
MIN_READS = 100  # HISTORY reads of each consistency answered ok, so the read check is not vacuous


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> CampaignResult:
    seed = int(os.environ.get("WIBER_FAULTS_SEED", "7"))
    spec = CampaignSpec(
        nodes=3, seed=seed, schedule=SCHEDULE, netns=os.environ.get("WIBER_FAULTS_NO_NETNS", "") in ("", "0"),
        hold_s=(1.5, 2.2), quiet_s=(0.8, 1.2), tail_s=3.0,
        healthy_timeout_s=15.0, settings=SETTINGS,
        workload=WorkloadSpec(publishers=3, pipelined=1, readers=2, topics=("t0", "t1", "t2"),
                              subscribed=("t0", "t1"), pace_s=0.02, max_seconds=280.0, seed=seed),
    )
    out: Path = tmp_path_factory.mktemp("faults-ci")
    result = run_campaign(spec, out)
    table = summary_table(result)
    (out / "summary.txt").write_text(table + "\n")
    print("\n" + table)
    return result


def _evidence(result: CampaignResult) -> str:
    return (f"\n{summary_table(result)}\n{result.report.describe(limit=3)}\n"
            f"node logs and histories: {result.out_dir}")


@pytest.mark.parametrize("kind", SCHEDULE)
def test_fault_applied_and_recovered_within_3_s(campaign: CampaignResult, kind: str) -> None:
    if kind in campaign.skipped:
        if os.environ.get("WIBER_REQUIRE_FAULTS") == "1":  # CI: a fault kind that cannot run is a failure
            pytest.fail(f"{kind} could not run, and WIBER_REQUIRE_FAULTS=1: {campaign.skipped[kind]}")
        pytest.skip(f"{kind}: {campaign.skipped[kind]}")
    assert campaign.applied[kind] >= 1, f"{kind} was not applied" + _evidence(campaign)
    heals = [r for r in campaign.report.recoveries if r["kind"] == kind]
    assert heals, f"no heal recorded for {kind}" + _evidence(campaign)
    slow = [r for r in heals if r["recovery_s"] is None or r["recovery_s"] >= RECOVERY_LIMIT_S]
    assert not slow, f"{kind}: heal -> first acknowledged publish took too long: {slow}" + _evidence(campaign)


def test_no_acknowledged_publish_is_lost(campaign: CampaignResult) -> None:
    counts = campaign.report.counts()
    assert counts["lost"] == 0 and counts["offset_mismatch"] == 0, _evidence(campaign)
    assert campaign.report.ops["ok"] > 100, "the workload barely ran" + _evidence(campaign)


def test_no_publish_is_stored_twice_or_invented(campaign: CampaignResult) -> None:
    counts = campaign.report.counts()
    assert counts["duplicated"] == 0 and counts["unexpected"] == 0, _evidence(campaign)


def test_every_node_holds_the_same_dense_log(campaign: CampaignResult) -> None:
    counts = campaign.report.counts()
    assert counts["inconsistent"] == 0 and counts["not_converged"] == 0, _evidence(campaign)


def test_subscribers_see_every_message_once_in_order(campaign: CampaignResult) -> None:
    assert campaign.report.subscribers_clean(), _evidence(campaign)
    assert campaign.report.reads > 0


def test_reads_show_only_committed_messages_and_linearizable_ones_everything_acknowledged_before(
        campaign: CampaignResult) -> None:
    # docs/design.md section 4, promise 5, under the same faults.
    counts = campaign.report.counts()
    assert counts["stale_read"] == 0 and counts["read_mismatch"] == 0, _evidence(campaign)
    answered = {c: campaign.report.history_reads[c]["ok"] for c in (LINEARIZABLE, LOCAL)}
    assert min(answered.values()) >= MIN_READS, f"too few reads answered: {answered}" + _evidence(campaign)


def test_cluster_never_stuck_and_no_node_crashed(campaign: CampaignResult) -> None:
    counts = campaign.report.counts()
    assert counts["stuck"] == 0 and counts["crashed"] == 0, _evidence(campaign)


def test_no_client_process_crashed(campaign: CampaignResult) -> None:
    assert campaign.report.counts()["client_crashed"] == 0, _evidence(campaign)


def test_publishes_resume_within_3_s_after_the_leader_is_lost(campaign: CampaignResult) -> None:
    lost = [r for r in campaign.report.failovers if r["kind"] in LEADER_LOSS]
    if not lost:
        pytest.skip("no fault took the leader away in this run")
    slow = [r for r in lost if r["recovery_s"] is None or r["recovery_s"] >= RECOVERY_LIMIT_S]
    assert not slow, f"leader lost -> first acknowledged publish took too long: {slow}" + _evidence(campaign)


def test_lamport_and_ts_follow_log_order_through_skewed_clocks(campaign: CampaignResult) -> None:
    # docs/design.md section 5, checked here because a node restarts with a skewed clock during the run.
    assert campaign.report.counts()["stamp_order"] == 0, _evidence(campaign)
