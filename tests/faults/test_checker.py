"""The checker finds each anomaly in hand-made histories, and nothing in a clean one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.checker import ANOMALY_KINDS, FinalState, check
from tests.faults.history import (
    FAIL,
    HEAL,
    HISTORY,
    INFO,
    INVOKE,
    LINEARIZABLE,
    LOCAL,
    NEMESIS,
    OK,
    PUBLISH,
    READ,
    START,
    HistoryWriter,
    Op,
    read_history,
    write_history,
)


class H:
    """A tiny history builder with a clock that moves 0.1 s per record."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.t = 100.0

    def _add(self, op: Op) -> None:
        self.ops.append(op)
        self.t += 0.1

    def pub(self, process: str, topic: str, value: str, outcome: str = OK, offset: int | None = None) -> None:
        self._add(Op(process, INVOKE, PUBLISH, topic, value, time=self.t))
        self._add(Op(process, outcome, PUBLISH, topic, value, offset if outcome == OK else None, time=self.t))

    def read(self, process: str, topic: str, offset: int, value: str) -> None:
        self._add(Op(process, OK, READ, topic, value, offset, time=self.t))

    def read_invoke(self, process: str, topic: str, consistency: str, node: str = "n1") -> None:
        self._add(Op(process, INVOKE, HISTORY, topic, time=self.t, node=node, consistency=consistency))

    def read_done(self, process: str, topic: str, consistency: str, end: int | None = None,
                  messages: tuple[tuple[int, str], ...] = (), outcome: str = OK, node: str = "n1") -> None:
        self._add(Op(process, outcome, HISTORY, topic, time=self.t, node=node, consistency=consistency,
                     end=end if outcome == OK else None, messages=messages if outcome == OK else None))

    def hread(self, process: str, topic: str, consistency: str, end: int | None = None,
              messages: tuple[tuple[int, str], ...] = (), outcome: str = OK, node: str = "n1") -> None:
        """A HISTORY read answered before anything else happens."""
        self.read_invoke(process, topic, consistency, node)
        self.read_done(process, topic, consistency, end, messages, outcome, node)

    def nemesis(self, f: str, kind: str, fault_id: int) -> None:
        self._add(Op(NEMESIS, INFO, f, value=kind, fault_id=fault_id, node="n1", time=self.t))


def clean_case() -> tuple[H, FinalState]:
    h = H()
    h.pub("p1", "a", "p1-0", offset=0)
    h.pub("p2", "a", "p2-0", offset=1)
    h.pub("p1", "b", "p1-1", offset=0)
    h.pub("p2", "a", "p2-1", outcome=INFO)  # unknown: stored, as it happens
    h.pub("p2", "b", "p2-2", outcome=INFO)  # unknown: not stored
    h.pub("p1", "a", "p1-2", outcome=FAIL)  # refused: not stored
    for offset, value in enumerate(["p1-0", "p2-0", "p2-1"]):
        h.read("s1", "a", offset, value)
    log = {"a": [(0, "p1-0"), (1, "p2-0"), (2, "p2-1")], "b": [(0, "p1-1")]}
    final = FinalState({"n1": {t: list(v) for t, v in log.items()}, "n2": {t: list(v) for t, v in log.items()},
                        "n3": {t: list(v) for t, v in log.items()}})
    return h, final


def found(report_counts: dict[str, int]) -> set[str]:
    return {k for k, v in report_counts.items() if v}


def test_a_clean_history_has_no_anomaly() -> None:
    h, final = clean_case()
    report = check(h.ops, final)
    assert report.clean, report.describe()
    assert report.ops["ok"] == 3 and report.ops["info"] == 2 and report.ops["fail"] == 1
    assert report.stored == 4 and report.reads == 3


def test_an_acknowledged_value_missing_everywhere_is_lost() -> None:
    h, final = clean_case()
    h.pub("p3", "b", "p3-0", offset=1)  # acknowledged, but no node has it
    report = check(h.ops, final)
    assert found(report.counts()) == {"lost"}
    assert report.anomalies["lost"][0]["value"] == "p3-0"
    assert report.anomalies["lost"][0]["missing_on"] == ["n1", "n2", "n3"]


def test_an_acknowledged_value_missing_on_one_node_is_lost_there_and_inconsistent() -> None:
    h, final = clean_case()
    final.logs["n3"]["a"] = final.logs["n3"]["a"][:1]  # n3 lost its tail
    report = check(h.ops, final)
    assert found(report.counts()) == {"lost", "inconsistent"}
    assert {x["value"] for x in report.anomalies["lost"]} == {"p2-0"}  # p2-1 was never acknowledged
    assert report.anomalies["lost"][0]["missing_on"] == ["n3"]


def test_a_value_at_two_offsets_is_duplicated() -> None:
    h, final = clean_case()
    for log in final.logs.values():
        log["a"].append((3, "p1-0"))
    report = check(h.ops, final)
    assert "duplicated" in found(report.counts())
    assert report.anomalies["duplicated"][0]["positions"] == [("a", 0), ("a", 3)]
    assert "sub_incomplete" in found(report.counts())  # s1 never delivered offset 3


def test_a_value_no_one_published_is_unexpected() -> None:
    h, final = clean_case()
    for log in final.logs.values():
        log["b"].append((1, "ghost"))
    report = check(h.ops, final, subscribers_must_finish=False)
    assert found(report.counts()) == {"unexpected"}
    assert report.anomalies["unexpected"][0]["problem"] == "never published"


def test_a_stored_value_whose_publish_failed_is_unexpected() -> None:
    h, final = clean_case()
    for log in final.logs.values():
        log["b"].append((1, "p1-2"))  # its PUB was answered as refused
    report = check(h.ops, final, subscribers_must_finish=False)
    assert found(report.counts()) == {"unexpected"}
    assert report.anomalies["unexpected"][0]["problem"] == "its publish failed"


def test_two_values_at_one_offset_across_nodes_are_inconsistent() -> None:
    h, final = clean_case()
    final.logs["n2"]["a"][2] = (2, "p2-2")
    report = check(h.ops, final)
    assert "inconsistent" in found(report.counts())
    bad = [x for x in report.anomalies["inconsistent"] if x.get("problem") == "different values"]
    assert bad and bad[0]["offset"] == 2 and bad[0]["values"]["n2"] == "p2-2"


def test_a_gap_in_a_nodes_offsets_is_inconsistent() -> None:
    h, final = clean_case()
    for log in final.logs.values():
        log["a"] = [log["a"][0], log["a"][2]]  # offsets 0, 2: not dense
    report = check(h.ops, final, subscribers_must_finish=False)
    kinds = {x["problem"] for x in report.anomalies["inconsistent"]}
    assert "offsets not dense" in kinds
    assert "lost" in found(report.counts())  # p2-0 was acknowledged at offset 1


def test_an_ack_for_another_offset_is_an_offset_mismatch() -> None:
    h, final = clean_case()
    h.ops = [op if op.value != "p2-0" or op.type != OK or op.f != PUBLISH else
             Op(op.process, OK, PUBLISH, "a", "p2-0", 7, time=op.time) for op in h.ops]
    report = check(h.ops, final)
    assert found(report.counts()) == {"offset_mismatch"}
    assert report.anomalies["offset_mismatch"][0]["acked"] == ("a", 7)
    assert report.anomalies["offset_mismatch"][0]["found"] == [("a", 1)]


def test_subscriber_skipped_offset() -> None:
    h, final = clean_case()
    h.ops = [op for op in h.ops if not (op.f == READ and op.offset == 1)]
    report = check(h.ops, final)
    assert found(report.counts()) == {"sub_skipped"}
    assert report.anomalies["sub_skipped"][0]["missing"] == (1, 1)


def test_subscriber_duplicated_offset() -> None:
    h, final = clean_case()
    h.read("s1", "a", 2, "p2-1")
    report = check(h.ops, final)
    assert found(report.counts()) == {"sub_duplicated"}


def test_subscriber_going_backwards_is_non_monotonic() -> None:
    h = H()
    h.pub("p1", "a", "x0", offset=0)
    h.pub("p1", "a", "x1", offset=1)
    h.pub("p1", "a", "x2", offset=2)
    h.read("s1", "a", 0, "x0")
    h.read("s1", "a", 2, "x2")  # skips 1 ...
    h.read("s1", "a", 1, "x1")  # ... then goes back for it
    final = FinalState({"n1": {"a": [(0, "x0"), (1, "x1"), (2, "x2")]}})
    report = check(h.ops, final)
    assert found(report.counts()) == {"sub_skipped", "sub_nonmonotonic"}


def test_subscriber_value_not_in_the_log_is_a_mismatch() -> None:
    h, final = clean_case()
    h.ops = [op if op.f != READ or op.offset != 1 else Op("s1", OK, READ, "a", "p9-9", 1, time=op.time)
             for op in h.ops]
    report = check(h.ops, final)
    assert found(report.counts()) == {"sub_mismatch"}


def test_subscriber_that_stops_short_is_incomplete_only_when_it_must_finish() -> None:
    h, final = clean_case()
    h.ops = [op for op in h.ops if not (op.f == READ and op.offset == 2)]
    assert found(check(h.ops, final).counts()) == {"sub_incomplete"}
    assert check(h.ops, final, subscribers_must_finish=False).clean


def test_nodes_that_did_not_converge_are_reported() -> None:
    h, final = clean_case()
    final.converged = False
    final.notes.append("n3 stuck at commit 5")
    assert found(check(h.ops, final).counts()) == {"not_converged"}


def test_stamps_out_of_log_order_are_found() -> None:
    h, final = clean_case()
    final.stamps = {"n1": {"a": [(0, 5, 10, 1.0), (1, 6, 11, 2.0), (2, 8, 11, 3.0)],   # lamport not above
                           "b": [(0, 7, 20, 1.5)]}}                                    # ts went back
    report = check(h.ops, final)
    assert found(report.counts()) == {"stamp_order"}
    assert [(x["index"]) for x in report.anomalies["stamp_order"]] == [7, 8]
    final.stamps = {"n1": {"a": [(0, 5, 10, 1.0), (1, 6, 11, 2.0), (2, 8, 30, 3.0)],
                           "b": [(0, 7, 20, 2.0), (1, 7, 21, 2.0)]}}  # one batch entry: lamports in a row
    assert check(h.ops, final).clean


def test_recovery_is_the_time_from_heal_to_the_next_acknowledged_publish() -> None:
    h = H()
    h.pub("p1", "a", "x0", offset=0)               # ok at t=100.1
    h._add(Op("p3", INVOKE, PUBLISH, "a", "x3", time=h.t))  # t=100.2: invoked before the fault ...
    h.nemesis(START, "kill_leader", 1)             # t=100.3
    h._add(Op("p3", OK, PUBLISH, "a", "x3", 2, time=h.t))   # t=100.4: ... so it does not count for it
    h.pub("p1", "a", "x1", outcome=INFO)           # t=100.5 / 100.6
    h.nemesis(HEAL, "kill_leader", 1)              # t=100.7
    h._add(Op("p2", INVOKE, PUBLISH, "a", "x2", time=h.t))  # t=100.8
    h.t += 1.0
    h._add(Op("p2", OK, PUBLISH, "a", "x2", 1, time=h.t))   # t=101.9
    h.nemesis(START, "pause_leader", 2)            # t=102.0: no ack after it
    h.nemesis(HEAL, "pause_leader", 2)
    final = FinalState({"n1": {"a": [(0, "x0"), (1, "x2"), (2, "x3")]}})
    report = check(h.ops, final)
    assert report.clean, report.describe()
    assert report.faults == {"kill_leader": 1, "pause_leader": 1}
    heal = {r["fault_id"]: r["recovery_s"] for r in report.recoveries}
    assert heal[1] == pytest.approx(1.2, abs=1e-6)
    assert heal[2] is None
    start = {r["fault_id"]: r["recovery_s"] for r in report.failovers}
    assert start[1] == pytest.approx(1.6, abs=1e-6)
    assert start[2] is None


def test_a_linearizable_read_missing_an_acknowledged_publish_is_stale() -> None:
    h, final = clean_case()  # p2-0 was acknowledged at a/1 before the read below was sent
    h.hread("r1", "a", LINEARIZABLE, end=1, messages=((0, "p1-0"),), node="n3")
    report = check(h.ops, final)
    assert found(report.counts()) == {"stale_read"}
    stale = report.anomalies["stale_read"][0]
    assert stale["node"] == "n3" and stale["end"] == 1
    assert stale["must_reach"] == 3  # s1 was delivered a/2 (p2-1) before the read, too
    assert stale["witness"]["delivered_to"] == "s1"


def test_a_linearizable_read_missing_a_publish_acknowledged_just_before_it_is_stale() -> None:
    h = H()
    h.pub("p1", "a", "x0", offset=0)
    h.pub("p1", "a", "x1", offset=1)
    h.hread("r1", "a", LINEARIZABLE, end=1, messages=((0, "x0"),))
    report = check(h.ops, FinalState({"n1": {"a": [(0, "x0"), (1, "x1")]}}))
    assert found(report.counts()) == {"stale_read"}
    assert report.anomalies["stale_read"][0]["witness"]["publish"] == "x1"
    assert report.anomalies["stale_read"][0]["must_reach"] == 2


def test_a_stale_local_read_is_fine() -> None:
    h, final = clean_case()
    h.hread("r1", "a", LOCAL, end=1, messages=((0, "p1-0"),), node="n3")  # n3 had applied less: allowed
    h.hread("r1", "b", LOCAL, end=0)  # nothing applied yet on that node
    report = check(h.ops, final)
    assert report.clean, report.describe()
    assert report.history_reads[LOCAL] == {"invoke": 2, "ok": 2}


def test_a_linearizable_read_concurrent_with_a_publish_may_or_may_not_see_it() -> None:
    final = FinalState({"n1": {"a": [(0, "x0"), (1, "x1")]}})
    for end, messages in ((1, ((0, "x0"),)), (2, ((0, "x0"), (1, "x1")))):
        h = H()
        h.pub("p1", "a", "x0", offset=0)
        h.read_invoke("r1", "a", LINEARIZABLE)
        h.pub("p1", "a", "x1", offset=1)  # acknowledged after the read was sent, before its answer
        h.read_done("r1", "a", LINEARIZABLE, end=end, messages=messages)
        report = check(h.ops, final)
        assert report.clean, report.describe()
    h = H()
    h.pub("p1", "a", "x0", offset=0)
    h._add(Op("p1", INVOKE, PUBLISH, "a", "x1", time=h.t))
    h.hread("r1", "a", LINEARIZABLE, end=1, messages=((0, "x0"),))  # sent while x1 was in flight
    h._add(Op("p1", OK, PUBLISH, "a", "x1", 1, time=h.t))
    assert check(h.ops, final).clean


def test_a_linearizable_read_behind_an_earlier_read_is_stale() -> None:
    h, final = clean_case()
    h.ops = [op for op in h.ops if op.f != READ]  # no subscriber: only the reads are witnesses
    h.hread("r2", "a", LOCAL, end=3, messages=((2, "p2-1"),), node="n2")
    h.hread("r1", "a", LINEARIZABLE, end=2, messages=((1, "p2-0"),), node="n1")  # shows less than r2 did
    report = check(h.ops, final, subscribers_must_finish=False)
    assert found(report.counts()) == {"stale_read"}
    assert report.anomalies["stale_read"][0]["witness"]["read_by"] == "r2"
    h.ops = h.ops[:-2]
    h.hread("r1", "a", LOCAL, end=2, messages=((1, "p2-0"),), node="n1")  # a local read may lag it
    assert check(h.ops, final, subscribers_must_finish=False).clean


@pytest.mark.parametrize("consistency", [LINEARIZABLE, LOCAL])
def test_a_read_value_other_than_the_final_logs_is_a_mismatch(consistency: str) -> None:
    h, final = clean_case()
    h.hread("r1", "a", consistency, end=3, messages=((1, "p2-0"), (2, "p9-9")))
    report = check(h.ops, final)
    assert found(report.counts()) == {"read_mismatch"}
    bad = report.anomalies["read_mismatch"][0]
    assert (bad["problem"], bad["offset"], bad["got"], bad["log"]) == ("value differs from the final log", 2,
                                                                        "p9-9", "p2-1")
    assert bad["consistency"] == consistency


def test_a_read_showing_what_was_never_committed_is_a_mismatch() -> None:
    h, final = clean_case()
    # n2 applied p2-2 at b/1 and showed it; the final log of b ends at offset 0: never committed.
    h.hread("r1", "b", LOCAL, end=2, messages=((0, "p1-1"), (1, "p2-2")), node="n2")
    report = check(h.ops, final)
    assert found(report.counts()) == {"read_mismatch"}
    problems = {x["problem"] for x in report.anomalies["read_mismatch"]}
    assert problems == {"end beyond the final log", "offset beyond the final log"}
    assert report.anomalies["stale_read"] == []  # a refuted answer is no witness for later reads


def test_a_read_whose_offsets_are_not_consecutive_below_its_end_is_a_mismatch() -> None:
    h, final = clean_case()
    h.hread("r1", "a", LOCAL, end=3, messages=((0, "p1-0"), (2, "p2-1")))
    h.hread("r1", "a", LOCAL, end=2, messages=((1, "p2-0"), (2, "p2-1")))
    report = check(h.ops, final)
    assert found(report.counts()) == {"read_mismatch"}
    assert [x["offsets"] for x in report.anomalies["read_mismatch"]] == [[0, 2], [1, 2]]


def test_reads_that_failed_or_got_no_answer_are_counted_not_judged() -> None:
    h, final = clean_case()
    h.hread("r1", "a", LINEARIZABLE, outcome=FAIL, node="n2")  # NOT_LEADER, UNAVAILABLE
    h.hread("r1", "a", LINEARIZABLE, outcome=INFO, node="n3")  # no answer in time
    h.hread("r1", "a", LINEARIZABLE, end=3, messages=((2, "p2-1"),))
    report = check(h.ops, final)
    assert report.clean, report.describe()
    assert report.history_reads[LINEARIZABLE] == {"invoke": 3, "ok": 1, "fail": 1, "info": 1}


def test_offsets_retention_removed_before_the_drain_are_not_judged() -> None:
    h = H()
    h.pub("p1", "a", "x0", offset=0)
    h.pub("p1", "a", "x1", offset=1)
    h.hread("r1", "a", LINEARIZABLE, end=2, messages=((0, "x0"), (1, "x1")))
    report = check(h.ops, FinalState({"n1": {"a": [(1, "x1")]}}))  # offset 0 removed by retention
    assert found(report.counts()) == {"lost"}  # x0 is gone from the log, as retention does; the read is fine


def test_every_anomaly_kind_is_counted() -> None:
    h, final = clean_case()
    assert set(check(h.ops, final).counts()) == set(ANOMALY_KINDS)


def test_history_round_trips_through_jsonl_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    h, _ = clean_case()
    write_history(tmp_path / "a.jsonl", [op for op in h.ops if op.process == "p1"])
    with HistoryWriter(tmp_path / "b.jsonl", "p2") as w:
        for op in h.ops:
            if op.process != "p1":
                w.write(op)
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write('{"process": "p2", "ty')  # the writer was killed mid-line
    assert read_history(tmp_path) == sorted(h.ops, key=lambda op: op.time)


def test_a_history_read_round_trips_through_jsonl(tmp_path: Path) -> None:
    h = H()
    h.hread("r1", "a", LINEARIZABLE, end=5, messages=((3, "p1-3"), (4, "p2-0")), node="n2")
    write_history(tmp_path / "r1.jsonl", h.ops)
    assert read_history(tmp_path) == h.ops
