"""Pytest hooks of the simulation: say where this run's seeds start (`chaos.seed_offset`).

Pytest prints the header before it loads this file when the run starts above tests/sim (``pytest``
alone), so the offset is then printed in the terminal summary instead.
"""

from __future__ import annotations

import pytest

from .chaos import SEED_OFFSET_ENV, seed_offset

_said: list[bool] = []


def _offset_line() -> str:
    """Returns: the seed offset of tests/sim/test_sim.py, and how to run the same seeds again."""
    _said.append(True)
    offset = seed_offset()
    return f"wiber simulation: seed offset {offset} (run the same seeds: {SEED_OFFSET_ENV}={offset})"


def pytest_report_header(config: pytest.Config) -> str:
    """The header line of a run started in tests/sim."""
    return _offset_line()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The same line at the end of a run whose header came before this file was loaded."""
    if not _said:
        terminalreporter.write_line(_offset_line())
