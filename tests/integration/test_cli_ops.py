"""Looking at a cluster from the command line (issue 18), against real node processes on 127.0.0.1:
`ping`/`status`/`topics --json` and the exit statuses 0/1/3; `status --watch` with rates, bounded
by --count and stopped by Ctrl-C. Every process a test starts is killed at the end; every wait is
a poll with a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import REPO, ClusterHarness, wait_for
from tests.integration.test_cli import LineReader, wiber, wiber_command
from tests.integration.test_election import agreed_leader


def json_doc(done: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    """Returns: the one JSON document a `--json` command printed (and checks it printed only that)."""
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1, done.stdout
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    return doc


@pytest.mark.timeout(90)
def test_ping_status_topics_json_and_the_exit_status_of_some_down_and_no_quorum(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    leader, term = wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    cluster.client(total_s=20.0).publish("orders", b"one")

    done = wiber(cluster, "ping", "--json")
    assert done.returncode == 0, done.stderr
    doc = json_doc(done)
    assert list(doc) == ["nodes", "cluster"]
    nodes = doc["nodes"]
    assert isinstance(nodes, list) and [n["state"] for n in nodes] == ["up"] * 3
    assert all(list(n) == ["address", "state", "node", "role", "term", "leader", "rtt_ms", "error"] for n in nodes)
    assert doc["cluster"] == {"nodes": 3, "up": 3, "error": 0, "down": 0, "majority": 2, "leader": leader,
                              "term": term, "exit_status": 0, "summary": f"ok: leader {leader} (term {term}), "
                                                                         f"all 3 nodes up"}

    done = wiber(cluster, "status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json_doc(done)
    nodes = doc["nodes"]
    assert isinstance(nodes, list)
    assert sorted(n["node"] for n in nodes) == ["n1", "n2", "n3"]
    for n in nodes:
        assert list(n) == ["address", "state", "node", "error", "status", "rates"] and n["rates"] is None
        assert n["status"]["commit_index"] >= 1 and "ok" not in n["status"]

    done = wiber(cluster, "topics", "--json")
    assert done.returncode == 0 and json_doc(done) == {"topics": [{"topic": "orders", "end_offset": 1}]}

    followers = [nid for nid in cluster.nodes if nid != leader]
    cluster.kill(followers[0])  # one of three down: a quorum with its leader is left
    done = wiber(cluster, "ping", "--timeout", "0.3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.decode().count("DOWN") == 1 and b"degraded: leader" in done.stderr
    done = wiber(cluster, "status", "--timeout", "0.3")
    assert done.returncode == 1 and done.stdout.decode().count(" down ") == 1, done.stdout

    cluster.kill(followers[1])  # the leader alone: no quorum, whatever it still believes
    done = wiber(cluster, "ping", "--timeout", "0.3", "--json")
    assert done.returncode == 3, done.stderr
    assert json_doc(done)["cluster"]["exit_status"] == 3  # type: ignore[index]
    done = wiber(cluster, "status", "--timeout", "0.3")
    assert done.returncode == 3 and b"no quorum: 1 of 3 nodes answered" in done.stderr, done.stderr


@contextmanager
def popen(cluster: ClusterHarness | None, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run `wiber ARGS` in the background with SIGINT at its default (a suite started in the
    background inherits it ignored); kill it at the end whatever happened."""
    proc = subprocess.Popen(wiber_command(cluster, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(REPO), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.timeout(90)
def test_status_watch_refreshes_with_rates_until_count_or_ctrl_c(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    wait_for(lambda: agreed_leader(cluster), 10, "a leader")
    client = cluster.client(total_s=20.0)

    # JSON lines, one document per refresh; publishing meanwhile makes the commit rate move.
    with popen(cluster, "status", "--watch", "--json", "--interval", "0.5", "--count", "3") as proc:
        def finished() -> bool:
            client.publish("load", b"x")
            return proc.poll() is not None

        wait_for(finished, 30, "three refreshes of status --watch", interval=0.05)
        assert proc.returncode == 0 and proc.stdout is not None and proc.stderr is not None
        docs = [json.loads(line) for line in proc.stdout.read().decode().splitlines()]
        assert proc.stderr.read() == b""
    assert len(docs) == 3 and all(d["cluster"]["exit_status"] == 0 and d["ts"] > 0 for d in docs)
    assert all(n["rates"] is None for n in docs[0]["nodes"])
    later = [n["rates"] for d in docs[1:] for n in d["nodes"]]
    assert all(set(r) >= {"commit_per_s", "applied_per_s", "dropped_per_s"} for r in later)
    assert max(r["commit_per_s"] for r in later) > 0, later
    assert max(r["stored_per_s"] for r in later) > 0 and max(r["requests_per_s"] for r in later) > 0, later

    # Not a terminal: one table after another, no screen clearing, rate columns filled from the second.
    done = wiber(cluster, "status", "--watch", "--interval", "0.2", "--count", "2")
    text = done.stdout.decode()
    assert done.returncode == 0 and "\x1b[" not in text, done.stderr
    tables = text.split("\n\n")
    assert len(tables) == 2 and all("COMMIT/s" in t and "all 3 nodes up" in t for t in tables)
    assert all(re.search(r"\s-\s+-\s+-$", row) for row in tables[0].splitlines()[2:])
    assert not any(re.search(r"\s-\s+-\s+-$", row) for row in tables[1].strip().splitlines()[2:])

    # Without --count it runs until Ctrl-C, then leaves with the last refresh's status, quietly.
    with popen(cluster, "status", "--watch", "--interval", "0.2") as proc:
        reader = LineReader(proc.stdout)
        reader.lines(5, timeout=20)  # the head line, the header and three nodes
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
