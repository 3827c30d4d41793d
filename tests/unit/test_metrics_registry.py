"""The metrics registry's page is read by the real Prometheus parser as we meant it: names, types,
escaped label values and help, cumulative histogram buckets; construction rejects what Prometheus
would; the hot path and a 10,000-topic page stay cheap (docs/operations.md, "Metrics")."""

from __future__ import annotations

import logging
import math
import time

import pytest
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.parser import text_string_to_metric_families

from wiber.node.metrics import CONTENT_TYPE, LATENCY_BUCKETS, SNAPSHOT_BUCKETS, Counter, Gauge, Histogram
from wiber.node.metrics import Registry
from wiber.node.metrics.registry import format_value


def parse(registry: Registry) -> dict[str, Family]:
    """Returns: the families the real parser reads from the page, by family name."""
    return {f.name: f for f in text_string_to_metric_families(registry.render().decode("utf-8"))}


def samples(registry: Registry, family: str) -> list[tuple[str, dict[str, str], float]]:
    fam = parse(registry)[family]
    return [(s.name, s.labels, s.value) for s in fam.samples]


def test_content_type_is_text_exposition_0_0_4() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_names_types_and_values_read_back() -> None:
    reg = Registry()
    stored = reg.register(Counter("wiber_messages_stored_total", "Messages stored."))
    requests = reg.register(Counter("wiber_requests_total", "Client requests.", ("op", "result")))
    term = reg.register(Gauge("wiber_raft_term", "Current term."))
    reg.register(Gauge("wiber_raft_leader", "1 on the leader.", fn=lambda: 1))
    reg.register(Gauge("wiber_topic_end_offset", "End offset per topic.", ("topic",),
                       fn=lambda: [(("a",), 10), (("b",), 20.5)]))
    stored.inc()
    stored.inc(2)
    requests.add(("publish", "ok"))
    requests.add(("publish", "ok"), 2)
    requests.labels("read", "not_leader").inc()
    term.set(7)

    fams = parse(reg)
    assert {name: f.type for name, f in fams.items()} == {
        "wiber_messages_stored": "counter", "wiber_requests": "counter", "wiber_raft_term": "gauge",
        "wiber_raft_leader": "gauge", "wiber_topic_end_offset": "gauge"}
    assert fams["wiber_requests"].documentation == "Client requests."
    assert samples(reg, "wiber_messages_stored") == [("wiber_messages_stored_total", {}, 3.0)]
    assert samples(reg, "wiber_requests") == [
        ("wiber_requests_total", {"op": "publish", "result": "ok"}, 3.0),
        ("wiber_requests_total", {"op": "read", "result": "not_leader"}, 1.0)]
    assert samples(reg, "wiber_raft_term") == [("wiber_raft_term", {}, 7.0)]
    assert samples(reg, "wiber_raft_leader") == [("wiber_raft_leader", {}, 1.0)]
    assert samples(reg, "wiber_topic_end_offset") == [
        ("wiber_topic_end_offset", {"topic": "a"}, 10.0),
        ("wiber_topic_end_offset", {"topic": "b"}, 20.5)]


def test_callback_gauges_are_read_at_render_time() -> None:
    reg = Registry()
    state = {"commit": 1.0}
    reg.register(Gauge("wiber_raft_commit_index", "Commit index.", fn=lambda: state["commit"]))
    assert samples(reg, "wiber_raft_commit_index")[0][2] == 1.0
    state["commit"] = 42.0
    assert samples(reg, "wiber_raft_commit_index")[0][2] == 42.0


@pytest.mark.parametrize("value", ['say "hi"', "back\\slash", "two\nlines", "all \\\" \n\\n", "",
                                   "ünïcødé ✓", "{a=\"b\"}, c"])
def test_label_values_are_escaped_and_read_back_exactly(value: str) -> None:
    reg = Registry()
    reg.register(Counter("x_total", "x", ("v",))).add((value,))
    reg.register(Gauge("g", "g", ("v", "w"))).labels(value, "plain").set(1)
    reg.register(Gauge("f", "f", ("v",), fn=lambda: [((value,), 2.0)]))
    reg.register(Gauge("f2", "f", ("v", "w"), fn=lambda: [((value, value), 3.0)]))
    assert samples(reg, "x") == [("x_total", {"v": value}, 1.0)]
    assert samples(reg, "g") == [("g", {"v": value, "w": "plain"}, 1.0)]
    assert samples(reg, "f") == [("f", {"v": value}, 2.0)]
    assert samples(reg, "f2") == [("f2", {"v": value, "w": value}, 3.0)]


def test_help_text_is_escaped() -> None:
    reg = Registry()
    reg.register(Gauge("g", 'a \\ backslash, a "quote"\nand a second line'))
    assert parse(reg)["g"].documentation == 'a \\ backslash, a "quote"\nand a second line'
    assert b"\\\\ backslash" in reg.render() and b"\\nand" in reg.render()


def test_histogram_buckets_are_cumulative_and_inf_equals_count() -> None:
    reg = Registry()
    h = reg.register(Histogram("wiber_fsync_seconds", "fsync time.", (0.001, 0.01, 0.1)))
    for value in (0.0005, 0.001, 0.002, 0.05, 0.1, 0.2, 30.0):
        h.observe(value)
    got = samples(reg, "wiber_fsync_seconds")
    buckets = [(labels["le"], value) for name, labels, value in got if name.endswith("_bucket")]
    # le is "less or equal": 0.001 and 0.1 count in their own bound's bucket.
    assert buckets == [("0.001", 2.0), ("0.01", 3.0), ("0.1", 5.0), ("+Inf", 7.0)]
    totals = {name: value for name, labels, value in got if not name.endswith("_bucket")}
    assert totals["wiber_fsync_seconds_count"] == 7.0 == buckets[-1][1] == h.count
    assert totals["wiber_fsync_seconds_sum"] == pytest.approx(30.3535) == h.sum
    assert parse(reg)["wiber_fsync_seconds"].type == "histogram"


def test_empty_histogram_renders_zeros() -> None:
    reg = Registry()
    reg.register(Histogram("wiber_snapshot_seconds", "Snapshot time.", SNAPSHOT_BUCKETS))
    got = samples(reg, "wiber_snapshot_seconds")
    assert len(got) == len(SNAPSHOT_BUCKETS) + 3
    assert all(value == 0 for _, _, value in got)


def test_default_buckets_span_what_they_measure() -> None:
    for buckets, low, high in ((LATENCY_BUCKETS, 50e-6, 10.0), (SNAPSHOT_BUCKETS, 1e-3, 60.0)):
        assert buckets[0] == low and buckets[-1] == high
        assert all(a < b for a, b in zip(buckets, buckets[1:]))
    assert Histogram("h", "h").buckets == LATENCY_BUCKETS
    assert Histogram("h", "h", (1, 2, math.inf)).buckets == (1.0, 2.0)


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (3.0, "3"), (-2.0, "-2"), (1234567.0, "1234567"), (1e16, "10000000000000000"),
    (2**70, "1180591620717411303424"), (0.25, "0.25"), (1e-05, "1e-05"), (1e300, "1e+300"),
    (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (True, "1"),
])
def test_values_print_as_prometheus_expects(value: float, text: str) -> None:
    assert format_value(value) == text


def test_special_values_read_back() -> None:
    reg = Registry()
    for name, value in (("nan", math.nan), ("pinf", math.inf), ("ninf", -math.inf)):
        reg.register(Gauge(name, name)).set(value)
    fams = parse(reg)
    assert math.isnan(fams["nan"].samples[0].value)
    assert fams["pinf"].samples[0].value == math.inf
    assert fams["ninf"].samples[0].value == -math.inf


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "wiber.requests", "é"])
def test_invalid_metric_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Gauge(name, "x")


@pytest.mark.parametrize("label", ["", "1a", "a:b", "a-b", "__reserved"])
def test_invalid_label_names_are_refused(label: str) -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        Gauge("g", "x", (label,))


def test_construction_and_use_errors() -> None:
    with pytest.raises(ValueError, match="must end with _total"):
        Counter("wiber_requests", "x")
    with pytest.raises(ValueError, match="duplicate label names"):
        Counter("x_total", "x", ("a", "a"))
    assert Gauge("ns:sub_metric", "colons are allowed in metric names").name == "ns:sub_metric"
    reg = Registry()
    reg.register(Gauge("g", "x"))
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Gauge("g", "y"))
    c = Counter("c_total", "x", ("op", "result"))
    with pytest.raises(ValueError, match="expected 2 label values"):
        c.add(("only_one",))
    with pytest.raises(ValueError, match="expected 2 label values"):
        c.labels("a", "b", "c")
    with pytest.raises(ValueError, match="must be str"):
        c.add(("a", 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is labelled"):
        c.inc()
    with pytest.raises(ValueError, match="only goes up"):
        Counter("u_total", "x").inc(-1)
    with pytest.raises(ValueError, match="only goes up"):
        c.labels("a", "b").inc(-1)
    with pytest.raises(ValueError, match="has no labels"):
        Counter("u_total", "x").labels("a")
    with pytest.raises(ValueError, match="callback"):
        Gauge("f", "x", fn=lambda: 1.0).set(2)
    with pytest.raises(ValueError, match="callback"):
        Gauge("f", "x", ("t",), fn=lambda: []).labels("a")
    with pytest.raises(ValueError, match="is labelled"):
        Gauge("l", "x", ("t",)).set(1)
    for bad in ((), (1, 1), (2, 1), (math.nan,), (1, math.inf, 2)):
        with pytest.raises(ValueError, match="bucket"):
            Histogram("h", "x", bad)
    with pytest.raises(ValueError, match="NaN"):
        Histogram("h", "x").observe(math.nan)


def test_add_and_labels_share_one_series_and_remove_drops_it() -> None:
    reg = Registry()
    c = reg.register(Counter("wiber_requests_total", "x", ("op", "result")))
    child = c.labels("publish", "ok")
    assert c.labels("publish", "ok") is child
    child.inc()
    c.add(("publish", "ok"), 2)
    assert child.get() == 3 == c.get("publish", "ok")
    c.remove("publish", "ok")
    assert samples(reg, "wiber_requests") == []
    c.add(("publish", "ok"))
    assert samples(reg, "wiber_requests") == [
        ("wiber_requests_total", {"op": "publish", "result": "ok"}, 1.0)]
    g = reg.register(Gauge("wiber_consumer_pending", "x", ("group",)))
    g.labels("g1").set(5)
    g.labels("g1").dec(2)
    g.labels("g1").inc()
    assert g.get("g1") == 4
    u = reg.register(Gauge("wiber_clock_offset_seconds", "x"))
    u.set(0.5)
    u.inc(0.25)
    u.dec(1)
    assert u.get() == -0.25


def test_a_failing_callback_leaves_its_family_empty_and_the_rest_whole(
        caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry()

    def broken() -> float:
        raise RuntimeError("storage gone")

    reg.register(Gauge("broken", "x", fn=broken))
    reg.register(Gauge("wrong_width", "x", ("topic",), fn=lambda: [(("a", "b"), 1.0)]))
    reg.register(Gauge("scalar_for_labels", "x", ("topic",), fn=lambda: 1.0))
    reg.register(Gauge("ok", "x")).set(1)
    with caplog.at_level(logging.ERROR, logger="wiber.node.metrics.registry"):
        fams = parse(reg)
    broken = (fams["broken"], fams["wrong_width"], fams["scalar_for_labels"])
    assert [f.samples for f in broken] == [[], [], []]
    assert fams["ok"].samples[0].value == 1
    assert sum("callback failed" in r.message for r in caplog.records) == 3


def test_ten_thousand_labelled_samples_render_fast() -> None:
    """The bound is loose for slow CI machines; the real figure is printed (pytest -s)."""
    offsets = {(f"orders.region-{i}",): float(i * 1000) for i in range(10_000)}
    by_callback, by_counter = Registry(), Registry()
    by_callback.register(Gauge("wiber_topic_end_offset", "End offset per topic.", ("topic",),
                               fn=offsets.items))
    counter = by_counter.register(Counter("wiber_requests_total", "x", ("op", "result")))
    for i in range(10_000):
        counter.add((f"op{i}", "ok"), i)
    timings = {}
    for label, registry in (("gauge callback", by_callback), ("counter", by_counter)):
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            page = registry.render()
            best = min(best, time.perf_counter() - start)
        timings[label] = best
        assert page.count(b"\n") == 10_002
    print("render of 10,000 labelled samples: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in timings.items()))
    assert max(timings.values()) < 0.5
    assert len(parse(by_callback)["wiber_topic_end_offset"].samples) == 10_000
    assert len(parse(by_counter)["wiber_requests"].samples) == 10_000
