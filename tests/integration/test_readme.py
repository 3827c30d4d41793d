"""Every Python example in the README runs to completion as written (issue 17).

Each ```python block of README.md runs against real nodes:

* a block that defines `test_` functions is a user's test file (the pytest plugin's section): it runs
  with `python -m pytest` in a project of its own, whose session starts its own cluster, and passes;
* any other block is a script: it runs in a subprocess against the plugin's `wiber_cluster` and
  must exit 0 within EXAMPLE_DEADLINE_S (a block that hangs, in a `close()` say, fails here).

The examples name their cluster the way the CLI does: the config file `$WIBER_CONFIG`, by default
conf/cluster.yaml (the cluster `make run` starts). The scripts run with WIBER_CONFIG naming the test
cluster's config, in a directory without conf/: one that ignores WIBER_CONFIG fails. One that writes
conf/cluster.yaml's addresses literally would talk to whatever runs there and is refused with a
line saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.test_pytest_plugin import INNER_TIMEOUT_S, inner_session, run_pytest
from wiber.config import load_config

README = REPO / "README.md"
#: How long a script example may run: the README's Publisher sends 100,000 messages (well under a
#: second on an idle machine), so this only catches one that never finishes.
EXAMPLE_DEADLINE_S = 60

_FENCE = re.compile(r"^```(\w*)\s*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Returns: (line of its first line of code, code) for each ```python block of a Markdown text."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        assert end < len(lines), f"README.md:{i + 1}: a code block that never ends"
        if fence.group(1) in ("python", "py", "python3"):
            blocks.append((i + 2, "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def readme_cluster_addresses() -> list[str]:
    """Returns: every `host:port` of conf/cluster.yaml, the cluster the README's reader runs."""
    config = load_config(str(REPO / "conf" / "cluster.yaml"))
    return [f"{node.host}:{port}" for node in config.nodes for port in (node.port, node.raft_port, node.pub_port)]


def is_test_file(code: str) -> bool:
    """Returns: whether a block is a pytest test file (it defines a `test_` function)."""
    return re.search(r"^def test_\w*\(", code, re.MULTILINE) is not None


def test_the_readme_has_python_examples() -> None:
    assert BLOCKS, "README.md has no ```python block: the parsing, or the README, is broken"


@pytest.mark.timeout(EXAMPLE_DEADLINE_S + INNER_TIMEOUT_S)
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_example_runs_to_completion(line: int, code: str, tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    literal = [addr for addr in readme_cluster_addresses() if addr in code]
    assert not literal, (
        f"README.md:{line}: the example names conf/cluster.yaml's address {literal[0]} literally, so no "
        f"test can point it at a cluster of its own: read the addresses from $WIBER_CONFIG (default "
        f"conf/cluster.yaml) as the other examples do")
    if is_test_file(code):
        with inner_session(tmp_path) as (project, basetemp):
            (project / "test_readme_example.py").write_text(code)
            out = run_pytest(project, basetemp)
        assert out.returncode == 0, f"README.md:{line}: the example's tests did not pass:\n{out.stdout}{out.stderr}"
        return
    cluster = request.getfixturevalue("wiber_cluster")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "WIBER_CONFIG": str(cluster.config_path)}
    try:
        out = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=env, capture_output=True,
                             text=True, timeout=EXAMPLE_DEADLINE_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README.md:{line}: the example did not finish within {EXAMPLE_DEADLINE_S} s "
                    f"(killed); its output until then:\n{_text(exc.stdout)}{_text(exc.stderr)}")
    assert out.returncode == 0, (
        f"README.md:{line}: the example exited with status {out.returncode}:\n{out.stdout}{out.stderr}")


def _text(output: str | bytes | None) -> str:
    """Returns: a TimeoutExpired's captured output as text (it may hold bytes even with text=True)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
