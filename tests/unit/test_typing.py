"""The package type-checks under mypy's strict flags (setup.cfg), so type hints stay true."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_wiber_is_clean_under_mypy_strict() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "wiber"], capture_output=True, text=True,
                         cwd=str(REPO), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
