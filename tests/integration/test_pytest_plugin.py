"""The pytest plugin (wiber/pytest_plugin.py) as a user meets it: a project of its own whose tests use
only `wiber_cluster` and `wiber_client`, run by `python -m pytest` in a subprocess of this interpreter
(where Wiber is installed, so the plugin comes from its `pytest11` entry point).

Whether the user's tests pass, fail or the session is interrupted, no node process may be left: the
plugin records every pid it started in `pids` beside the nodes' logs, and each is checked here. A node
left behind by a broken plugin is killed here, but only one whose command line names the cluster's
config under this test's own temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for

#: The inner session's limit: starting a cluster takes a few seconds, its tests less.
INNER_TIMEOUT_S = 90

USER_TESTS = '''\
from wiber import Client


def test_publish_and_history(wiber_client: Client) -> None:
    first = wiber_client.publish("orders", b"first")
    second = wiber_client.publish("orders", b"second")
    assert second.offset == first.offset + 1
    history = wiber_client.history("orders", from_offset=first.offset)
    assert [m.data for m in history.messages] == [b"first", b"second"]


def test_subscribe(wiber_cluster) -> None:
    assert len(wiber_cluster.addresses) == 3
    client = wiber_cluster.client()
    with client.subscribe("events", from_offset=0) as sub:
        client.publish("events", b"one")
        client.publish("events", b"two")
        got = [sub.get(timeout=10), sub.get(timeout=10)]
    assert [(m.offset, m.data) for m in got if m is not None] == [(0, b"one"), (1, b"two")]


def test_a_new_client_each_test(wiber_client: Client) -> None:
    assert wiber_client.history("orders", from_offset=0).messages[0].data == b"first"
'''


def run_pytest(project: Path, basetemp: Path, *args: str,
               timeout: float = INNER_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `python -m pytest` on `project` as a user would, with its temporary files under `basetemp`.

    The outer session's PYTEST_* variables stay out (PYTEST_ADDOPTS, PYTEST_DISABLE_PLUGIN_AUTOLOAD,
    ...): the inner session must load the plugin the way a user's does.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={project}",
           f"--basetemp={basetemp}", *args]
    return subprocess.run(cmd, cwd=str(project), env=env, capture_output=True, text=True, timeout=timeout)


def recorded_pids(basetemp: Path) -> dict[int, Path]:
    """Returns: every node pid the plugin recorded under `basetemp`, with the config the node ran."""
    pids: dict[int, Path] = {}
    for pid_file in basetemp.glob("*/pids"):
        for line in pid_file.read_text().splitlines():
            _, pid = line.split()
            pids[int(pid)] = pid_file.parent / "cluster.yaml"
    return pids


def node_alive(pid: int, config: Path) -> bool:
    """Returns: whether `pid` is still that node: a live process (not a zombie, which an init that
    does not reap may keep) whose command line names `config` (a reused pid is someone else)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and str(config).encode() in cmdline


@contextlib.contextmanager
def inner_session(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Yields: (an empty project directory, the inner session's basetemp). Afterwards any node the
    inner session left running fails the test, once it has been killed."""
    project = tmp_path / "project"
    project.mkdir()
    basetemp = tmp_path / "basetemp"
    try:
        yield project, basetemp
    finally:  # also when the test failed or the inner session timed out
        leftovers = [pid for pid, config in recorded_pids(basetemp).items() if node_alive(pid, config)]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)  # a node of this test's own inner session (its config is ours)
    assert not leftovers, f"node processes outlived the inner pytest session: {leftovers}"


@pytest.fixture
def user_project(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """`inner_session` as a fixture."""
    with inner_session(tmp_path) as dirs:
        yield dirs


def assert_no_node_left(basetemp: Path, out: str) -> None:
    """Assert that the inner session recorded its nodes' pids and that none of them runs any more."""
    pids = recorded_pids(basetemp)
    assert len(pids) >= 3, f"the plugin recorded no pids under {basetemp}:\n{out}"
    alive = [pid for pid, config in pids.items() if node_alive(pid, config)]
    assert not alive, f"nodes still running after the session: {alive}\n{out}"


skip_without_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see processes")


@skip_without_proc
def test_a_users_tests_pass_against_a_real_cluster(user_project: tuple[Path, Path]) -> None:
    project, basetemp = user_project
    (project / "test_orders.py").write_text(USER_TESTS)
    out = run_pytest(project, basetemp, "-v")
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "3 passed" in out.stdout, report
    assert_no_node_left(basetemp, report)
    logs = sorted(p.name for p in next(basetemp.glob("wiber*")).glob("*.log"))
    assert logs == ["n1.log", "n2.log", "n3.log"]


@skip_without_proc
def test_a_failing_user_test_fails_and_the_nodes_die(user_project: tuple[Path, Path]) -> None:
    project, basetemp = user_project
    (project / "test_wrong.py").write_text(textwrap.dedent('''\
        def test_offsets_start_at_one(wiber_client):
            assert wiber_client.publish("orders", b"x").offset == 1


        def test_still_runs_after(wiber_client):
            assert wiber_client.publish("orders", b"y").offset == 1
    '''))
    out = run_pytest(project, basetemp)
    report = out.stdout + out.stderr
    assert out.returncode == 1, report
    assert "1 failed, 1 passed" in out.stdout, report
    assert "assert 0 == 1" in out.stdout, report
    assert "wiber node logs" in out.stdout and "n1.log" in out.stdout, report  # where to look next
    assert_no_node_left(basetemp, report)


CUT_SHORT = textwrap.dedent('''\
    import os
    import signal


    def test_cut_short(wiber_client):
        wiber_client.publish("orders", b"x")
        os.kill(os.getpid(), signal.{signal})
''')


@skip_without_proc
@pytest.mark.parametrize("sig, status", [
    pytest.param("SIGINT", pytest.ExitCode.INTERRUPTED, id="ctrl-c"),
    pytest.param("SIGKILL", -signal.SIGKILL, id="kill-9", marks=pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the nodes die with pytest by PR_SET_PDEATHSIG (Linux)")),
])
def test_the_nodes_die_when_the_session_is_cut_short(user_project: tuple[Path, Path], sig: str, status: int) -> None:
    """Ctrl-C mid-test: pytest tears the session down. kill -9 of pytest runs no finalizer at all:
    the kernel kills the nodes (PDEATHSIG), which may take a moment."""
    project, basetemp = user_project
    (project / "test_cut_short.py").write_text(CUT_SHORT.format(signal=sig))
    out = run_pytest(project, basetemp)
    report = out.stdout + out.stderr
    assert out.returncode == status, report
    wait_for(lambda: not any(node_alive(pid, config) for pid, config in recorded_pids(basetemp).items()),
             10, "the nodes of the cut-short session to die")
    assert_no_node_left(basetemp, report)
