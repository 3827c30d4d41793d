"""Transcripts of simulated runs: every message sent, every role change, every fault, one per line.

A line reads ``t=12 n1->n2 AppendEntries t=2 prev=1/11 n=3 commit=10`` (simulated time, then the
message as `wiber.raft.describe` prints it: log positions are ``term/index``), or
``t=12 INFO n1 became leader at term 2`` (the core's INFO log), or ``t=12 EVENT isolate n1``,
or ``# comment`` from the scenario. Golden transcripts live in ``tests/sim/testdata/``.
"""

from __future__ import annotations

import logging

from wiber.raft import Message, describe

from .cluster import Cluster

__all__ = ["Transcript"]


class Transcript(logging.Handler):
    """Records a cluster's traffic, core INFO logs and events as lines."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(logging.INFO)
        self.cluster = cluster
        self.lines: list[str] = []
        cluster.net.on_send = self._on_send
        cluster.on_event = self._on_event
        cluster.logger.addHandler(self)

    def close(self) -> None:
        self.cluster.logger.removeHandler(self)
        super().close()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"t={self.cluster.now} {record.levelname} {record.getMessage()}")

    def note(self, text: str) -> None:
        """Add a scenario comment."""
        self.lines.append(f"# {text}")

    def _on_send(self, msg: Message, dropped: bool) -> None:
        self.lines.append(f"t={self.cluster.now} {describe(msg)}{' (lost)' if dropped else ''}")

    def _on_event(self, line: str) -> None:
        self.lines.append(f"{line.split(' ', 1)[0]} EVENT {line.split(' ', 1)[1]}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
