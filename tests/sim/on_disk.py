"""Seeds of the simulation on real `DurableStorage` (each node on its own CrashFS), and the storage
mutants the simulation must catch there: what tests/sim/test_sim_durable.py and
``python -m tests.sim.replay --durable`` share.

A storage mutant leaves one fsync out of `DurableStorage` for the duration of a block
(`storage_mutated`); `STORAGE_MUTANTS` lists, per mutant, seeds where the simulation then reports a
broken safety property (``python -m tests.sim.replay --search N --storage-mutant NAME`` finds them
again when a change moved them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from wiber.storage.durable import DurableStorage
from wiber.storage.format import HARD_STATE_NAME

from .chaos import DEFAULT_STEPS, Profile, SimResult, cluster_for, run_seed
from .cluster import Cluster
from .invariants import InvariantViolation

__all__ = ["DURABLE_PROFILE", "STORAGE_MUTANTS", "StorageMutant", "cluster_on_disk", "run_on_disk",
           "search_on_disk", "storage_mutated"]

#: Mid-Ready crashes, each a crash point at a file operation, more often than in test_sim.py.
DURABLE_PROFILE = Profile(mid_ready_crash_rate=0.005)


def cluster_on_disk(seed: int, logger: logging.Logger | None = None) -> Cluster:
    """Returns: the cluster `seed` runs in test_sim.py (size, Raft settings), on durable storage."""
    return Cluster.like(cluster_for(seed, logger=logger), storage="durable")


def run_on_disk(seed: int, steps: int = DEFAULT_STEPS, cluster: Cluster | None = None) -> SimResult:
    """Run one seed on durable storage (see `run_seed` for what it raises)."""
    return run_seed(seed, steps, profile=DURABLE_PROFILE,
                    cluster=cluster if cluster is not None else cluster_on_disk(seed))


def _sync_does_nothing(self: DurableStorage) -> None:
    """`sync` that returns at once: appended entries are acknowledged before any fsync."""


def _hard_state_rename_not_durable(real: Callable[[DurableStorage, str, list[bytes]], None]
                                   ) -> Callable[[DurableStorage, str, list[bytes]], None]:
    """Returns: `_replace` that, for the hard state, skips the directory fsync after the rename (so
    a power loss brings the previous term and vote back)."""
    def replace(self: DurableStorage, name: str, parts: list[bytes]) -> None:
        if name != HARD_STATE_NAME:
            real(self, name, parts)
            return
        self._fsync_dir = lambda: None  # type: ignore[method-assign]
        try:
            real(self, name, parts)
        finally:
            del self._fsync_dir
    return replace


@dataclass(frozen=True, slots=True)
class StorageMutant:
    """One fsync left out: the `DurableStorage` method replaced, its replacement, and seeds that catch it."""

    method: str
    replacement: Callable[..., None]
    seeds: tuple[int, ...]


STORAGE_MUTANTS: dict[str, StorageMutant] = {
    # Acknowledged entries vanish at a power loss; a leader is elected without a committed entry.
    "sync-does-nothing": StorageMutant("sync", _sync_does_nothing, (0, 2, 4, 6)),
    # A restarted node forgets its vote and votes again in the same term: two leaders of one term.
    "hard-state-rename-not-fsynced": StorageMutant(
        "_replace", _hard_state_rename_not_durable(DurableStorage._replace), (30, 36, 86, 118)),
}


@contextmanager
def storage_mutated(name: str | None) -> Iterator[None]:
    """Within the block, `DurableStorage` runs with mutant `name` (None: as it is)."""
    with pytest.MonkeyPatch.context() as m:
        if name is not None:
            mutant = STORAGE_MUTANTS[name]
            m.setattr(DurableStorage, mutant.method, mutant.replacement)
        yield


def search_on_disk(name: str, count: int, steps: int = DEFAULT_STEPS) -> list[int]:
    """Returns: the seeds among 0..count-1 whose run on disk breaks a safety property under mutant `name`."""
    found = []
    with storage_mutated(name):
        for seed in range(count):
            try:
                run_on_disk(seed, steps)
            except InvariantViolation:
                found.append(seed)
            except Exception:  # noqa: BLE001 - only safety violations count
                pass
    return found
