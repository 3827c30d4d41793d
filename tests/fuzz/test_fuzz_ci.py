"""The wire fuzzer in CI: a bounded run against a real 3-node cluster (docs/design.md section 4,
promise 7: bad input from a client or a peer gets an error or is dropped; the node never crashes).

`make fuzz` runs the same fuzzer for minutes with a random seed; this runs a fixed seed and count,
so a failure here replays with ``python -m tests.fuzz.runner --seed CI_SEED --count CI_COUNT``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.fuzz.generators import Selection
from tests.fuzz.runner import BATCH, Fuzzer, Spec, replay
from tests.fuzz.sample import CLIENT, RAFT

CI_SEED = 20261204
CI_COUNT = 3000
"""Samples per port: a few seconds of sending at the rate the nodes take them."""

OPEN_FINDINGS = ("client.far_lamport",)
"""Families that find what is not fixed yet, left out of CI until it is (`make fuzz` sends them):
a PUB with a lamport in the last 2**20 below 2**63 leaves the cluster's Lamport clock no room, and
every later PUB is refused. (The byzantine families, forged Raft state only keys stop, are left
out of every run that does not ask for them.)"""


def test_a_bounded_fuzz_run_leaves_every_node_healthy(tmp_path: Path) -> None:
    spec = Spec(CI_SEED, tmp_path, count=CI_COUNT, selection=Selection(exclude=OPEN_FINDINGS))
    report = Fuzzer(spec).run()
    print(report.summary())
    assert report.sent == {CLIENT: CI_COUNT, RAFT: CI_COUNT}, report.summary()
    assert report.replies > CI_COUNT // 2  # the client port answered the fuzzing, it was not ignored
    assert report.ok, report.summary()
    assert json.loads((tmp_path / "report.json").read_text())["ok"]


def test_a_bounded_fuzz_run_of_a_secured_cluster_leaves_it_healthy_and_counts_what_it_refused(
        tmp_path: Path) -> None:
    """With keys (docs/design.md section 10): the client port fuzzed by a client with narrow rights,
    the raft port by a peer with its own key claiming other senders, and a stranger's key refused."""
    selection = Selection(exclude=OPEN_FINDINGS)
    spec = Spec(CI_SEED, tmp_path, count=CI_COUNT // 2, selection=selection, secure=True)
    report = Fuzzer(spec).run()
    print(report.summary())
    assert report.ok, report.summary()
    assert report.outcomes.get("FORBIDDEN", 0) > 0, report.summary()
    for nid, security in report.security.items():
        assert security["enabled"] and security["forged_frm"] > 0, (nid, security)
        assert security["rejected"]["raft"] >= 1, (nid, security)


class _KillsANode(Fuzzer):
    """A run in which n2 is killed (not by a frame) once the fuzzing is under way."""

    killed = False

    def watch(self, last_index: int) -> None:
        if last_index >= BATCH and not self.killed:
            self.harness.kill("n2")
            self.killed = True
        super().watch(last_index)


def test_a_node_that_ends_is_a_finding_with_its_last_samples_and_is_started_again(tmp_path: Path) -> None:
    selection = Selection(only=("client.valid", "raft.timesync"))
    spec = Spec(7, tmp_path / "run", count=4 * BATCH, selection=selection)
    spec.out_dir.mkdir()
    report = _KillsANode(spec).run()
    assert [(f.kind, f.node, f.signature) for f in report.findings] == [("crash", "n2", "exit status -9")]
    assert not report.ok
    assert report.health is not None and report.health.ok, report.summary()  # n2 was started again
    journal = Path(report.findings[0].journal)
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines and all(line["target"] == "n2" for line in lines)
    # The samples replay one by one on a fresh cluster; none of them is what ended n2.
    (tmp_path / "replay").mkdir()
    assert replay(journal, tmp_path / "replay") == -1
