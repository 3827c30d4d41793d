"""`wiber up` as an operator runs it (issue 18), with real node processes on 127.0.0.1: it refuses a
config whose ports are taken (naming the port and its holder), reports a killed node at once with
its log tail and restarts it, backs off from a node that fails at start, and passes its logging
options to its nodes. Every process a test starts is killed by its pid at the end; every wait is a
poll with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO, ClusterHarness, wait_for


def pids_in(text: str) -> set[int]:
    """Returns: every pid `wiber up` printed."""
    return {int(p) for p in re.findall(r"pid (\d+)", text)}


def kill_all(pids: set[int]) -> None:
    """SIGKILL each pid still alive (nodes run in their own sessions: killing `up` leaves them)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def wiber_up(cluster: ClusterHarness, *options: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """Run `wiber [OPTIONS] up` on the cluster's config, output in files. Yields: (process, stdout, stderr).
    At the end `up` is killed if still running, then every node pid it printed."""
    out_path, err_path = cluster.root / "up.out", cluster.root / "up.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "wiber", *options, "up", "--config", str(cluster.config_path)],
                                stdout=out, stderr=err, cwd=str(REPO),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield proc, out_path, err_path
    except BaseException:
        sys.stderr.write(f"----- wiber up stdout -----\n{out_path.read_text()}\n"
                         f"----- wiber up stderr (tail) -----\n{err_path.read_text()[-4000:]}\n")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        kill_all(pids_in(out_path.read_text()))


@pytest.mark.timeout(120)
def test_up_restarts_a_killed_node_and_a_second_up_refuses_the_taken_ports(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, start=False)
    with wiber_up(cluster, "--log-level", "info", "--log-format", "json") as (proc, out_path, err_path):
        wait_for(lambda: out_path.read_text().count(" is up (") == 3, 30, "all three nodes up in `wiber up`")
        text = out_path.read_text()
        first_pid = {nid: int(p) for nid, p in re.findall(r"^  (n\d): client .* pid (\d+)$", text, re.M)}
        assert sorted(first_pid) == ["n1", "n2", "n3"], text

        # A second `up` on the same config starts nothing and names the port and who holds it.
        second = subprocess.run([sys.executable, "-m", "wiber", "up", "--config", str(cluster.config_path)],
                                capture_output=True, cwd=str(REPO), timeout=30, check=False)
        err = second.stderr.decode()
        n1 = cluster.config.node("n1")
        assert second.returncode == 2 and second.stdout == b"", err
        assert f"node n1: client port 127.0.0.1:{n1.port} is already in use, held by pid {first_pid['n1']} (" in err
        assert f"node n3: pub port 127.0.0.1:{cluster.config.node('n3').pub_port} is already in use" in err
        assert "not starting" in err and "already running?" in err

        # The nodes inherited --log-format json: every line they wrote is one object.
        logged = [json.loads(line) for line in err_path.read_text().splitlines()]
        assert logged and all({"ts", "level", "logger", "msg"} <= set(o) for o in logged)

        os.kill(first_pid["n2"], signal.SIGKILL)
        report = wait_for(lambda: re.search(
            rf"wiber: node n2 \(pid {first_pid['n2']}\) exited after [\d.]+ s with status -9 \(killed by SIGKILL\)\n"
            rf"wiber: its last \d+ log lines:\n((?:    .*\n)+)wiber: restarting n2 in 0.5 s \(restart 1\)",
            out_path.read_text()), 10, "the report of n2's exit")
        assert all(json.loads(line.strip())["logger"].startswith("wiber") for line in report[1].splitlines())
        restarted = wait_for(lambda: re.search(r"wiber: n2 restarted \(pid (\d+), restart 1\)", out_path.read_text()),
                             10, "n2 restarted")
        new_pid = int(restarted[1])
        assert new_pid != first_pid["n2"]
        wait_for(lambda: "wiber: n2 is up again (" in out_path.read_text(), 20, "the new n2 to answer")
        assert wait_for(lambda: cluster.ping("n2"), 5, "n2 PING")

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        text = out_path.read_text()
        assert all(f"wiber: {nid} stopped (status 0)" in text for nid in ("n1", "n2", "n3")), text
        for pid in [*first_pid.values(), new_pid]:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.timeout(120)
def test_up_reports_a_node_that_fails_at_start_and_backs_off(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, start=False)
    (cluster.root / "data").mkdir()
    (cluster.root / "data" / "n3").write_text("a file where n3's data directory should be")
    with wiber_up(cluster) as (proc, out_path, _):
        pattern = (r"wiber: node n3 \(pid \d+\) exited at start \(before it answered\) with status 2\n"
                   r"wiber: its last 1 log lines:\n    wiber: cannot open the data directory .*\n"
                   r"wiber: restarting n3 in {delay} s \(restart {n}\)")
        wait_for(lambda: re.search(pattern.format(delay="0.5", n=1), out_path.read_text()), 20, "n3's first report")
        wait_for(lambda: re.search(pattern.format(delay="1", n=2), out_path.read_text()), 20, "a longer backoff")
        wait_for(lambda: re.search(pattern.format(delay="2", n=3), out_path.read_text()), 20, "doubling again")
        # The other two are a quorum and elect a leader meanwhile.
        wait_for(lambda: "wiber: leader is " in out_path.read_text(), 20, "a leader among n1 and n2")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
