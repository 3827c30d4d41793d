"""A writer process killed with SIGKILL at a random moment: every entry it reported durable is there.

The child appends, truncates (never below what it reported committed), compacts and rolls tiny
segments as fast as it can, and after each `sync` prints the index and term it now promises never
to lose. The parent kills it mid-flight, reopens the directory (recovery must accept whatever the
kill left: a half-written batch, a roll, a truncation, a snapshot replace) and checks the promise.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wiber.raft.storage import Compacted
from wiber.storage import DurableStorage

CHILD = r"""
import random, sys
from wiber.raft.messages import Entry, EntryKind
from wiber.storage import DurableStorage

directory, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
st = DurableStorage.open(directory, segment_bytes=400)
term, commit = 1, 0
while True:
    last = st.last_index()
    if rng.random() < 0.15 and last > commit:          # a new leader replaces an uncommitted suffix
        term += 1
        start = rng.randint(max(commit, st.first_index() - 1) + 1, last)
    else:
        start = last + 1
    n = rng.randint(1, 30)
    st.append([Entry(i, term, EntryKind.NORMAL, b"%d/%d" % (i, term) * rng.randint(1, 4))
               for i in range(start, start + n)])
    st.sync()
    last = st.last_index()
    if rng.random() < 0.5:
        commit = rng.randint(commit, last)
        print(commit, st.term(commit), flush=True)
    if rng.random() < 0.05 and commit > st.first_index():
        st.compact(commit - 1, b"state")
"""


@pytest.mark.parametrize("seed", range(6))
def test_kill_9_never_loses_what_was_reported_durable(tmp_path: Path, seed: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(seed)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    promised: list[tuple[int, int]] = []
    stop_after = random.Random(seed).randint(20, 120)
    deadline = time.monotonic() + 20
    try:
        while len(promised) < stop_after and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            index, term = map(int, line.split())
            promised.append((index, term))
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        _, err = child.communicate(timeout=10)
    assert promised, f"the child wrote nothing: {err}"
    # lines are printed after sync, so everything printed (and possibly more) is durable
    index, term = promised[-1]
    with DurableStorage.open(str(tmp_path), segment_bytes=400) as st:
        assert st.last_index() >= index
        try:
            assert st.term(index) == term
        except Compacted:
            assert st.last_snapshot_index >= index
        for i in range(st.first_index(), st.last_index() + 1):
            e = st.entries(i, i + 1)[0]
            assert e.data.startswith(b"%d/%d" % (i, e.term))
