"""`wiber bench pub|sub` against a real cluster: it reports what it measured."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Callable

import pytest

from tests.conftest import REPO, ClusterHarness
from wiber.loadgen import histogram, percentile


def run(cluster: ClusterHarness, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "wiber", "bench", *args, "--config", str(cluster.config_path)],
                         capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_bench_pub_then_sub_report_rates_and_latency_histograms(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    pub = run(cluster, "pub", "load", "--messages", "3000", "--batch", "100", "--window", "10")
    assert re.search(r"3,000 messages of 100 B in [\d.]+ s = [\d,]+ msg/s", pub), pub
    assert "p99" in pub and "<= " in pub
    # The warm-up message plus the 3,000 measured ones are all there, readable by `bench sub`.
    sub = run(cluster, "sub", "load", "--from", "0", "--messages", "3001")
    assert re.search(r"3,001 messages of 100 B", sub), sub
    multi = run(cluster, "pub", "load2", "--messages", "1000", "--batch", "1", "--window", "50",
                "--publishers", "2")
    assert "1,000 messages" in multi and "pub x2" in multi


def test_percentiles_and_histogram_buckets() -> None:
    values = sorted([0.0004, 0.0015, 0.003, 0.003, 0.9, 7.0])
    assert percentile(values, 0.5) in (0.003,)
    assert percentile([], 0.5) == 0.0
    assert histogram(values) == [("<= 0.5 ms", 1), ("<= 2 ms", 1), ("<= 5 ms", 2), ("<= 1000 ms", 1),
                                 ("> 5000 ms", 1)]


def test_codec_benchmark_reports_both_codecs_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.codec` (where the codec's speed is measured now) runs and reports its figures."""
    from bench.codec import main

    assert main(["--entries", "50", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"wiber\.raft\.wire +[\d.]+ us/entry", out), out
    assert re.search(r"plain msgpack +[\d.]+ us/entry", out) and re.search(r"ratio +[\d.]+ x", out), out
