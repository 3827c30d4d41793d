"""Source mutations that the suite must catch: ``python -m tests.mutants [NAME ...]`` (``make mutants``).

Each mutant deletes or moves one safety rule in the product's own source (the fsync of the node's
persist step, the fsync's place before the replies, ReadIndex's heartbeat round, session dedup),
in a throwaway git worktree of HEAD, and runs the tests that are meant to catch it. A mutant that
survives (every test passes) is a hole in the proof of docs/design.md section 4 and makes the run
exit 1. The simulation's own mutations (tests/sim/test_mutations.py) patch the Raft core in
process; these edit files, so that what is proven is the code as shipped, node loop included.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Mutant:
    """One edit of one file, and the tests that must fail with it."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTANTS = (
    Mutant("no-fsync", "wiber/node/loop.py",
           "            synced = clock()\n            self.storage.sync()\n",
           "            synced = clock()\n",
           ("tests/integration/test_fsync_before_reply.py", "tests/integration/test_durability.py"),
           "promise 1: the persist step's fsync deleted"),
    Mutant("fsync-next-turn", "wiber/node/loop.py",
           "        if rd.must_sync:\n            synced = clock()\n            self.storage.sync()",
           "        if getattr(self, '_sync_due', False):\n            synced = clock()\n            self.storage.sync()\n"
           "        self._sync_due = rd.must_sync\n        if rd.must_sync:\n            synced = clock()",
           ("tests/integration/test_fsync_before_reply.py",),
           "promise 1: the fsync moved to the next loop turn, after the replies"),
    Mutant("read-without-heartbeat-round", "wiber/raft/reads.py",
           "        if not self._peers:\n            self._read_states.append(ReadState(self._log.committed, ctx))",
           "        if True:\n            self._read_states.append(ReadState(self._log.committed, ctx))",
           ("tests/unit/raft/test_paper.py", "tests/sim/test_mutations.py"),
           "promise 5: ReadIndex answered without a heartbeat round"),
    Mutant("no-session-dedup", "wiber/broker/state.py",
           "            answer = session.answers.get(seq)\n",
           "            answer = None\n",
           ("tests/integration/test_dedup_failover.py", "tests/unit/test_broker.py"),
           "promise 3: a retry's kept answer ignored, so it is stored again"),
)


def run_mutant(mutant: Mutant, python: str) -> tuple[bool, str]:
    """Apply `mutant` in a fresh worktree of HEAD and run its tests. Returns: (caught, summary line)."""
    with tempfile.TemporaryDirectory(prefix=f"wiber-mutant-{mutant.name}-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--quiet", "--detach", str(tree), "HEAD"], cwd=REPO, check=True)
        try:
            target = tree / mutant.path
            text = target.read_text()
            if text.count(mutant.old) != 1:
                return False, f"the code to mutate is not in {mutant.path} exactly once: update tests/mutants.py"
            target.write_text(text.replace(mutant.old, mutant.new))
            # The worktree's own package comes first on sys.path (python -m puts the cwd there), and
            # node processes the tests start run from it too (their cwd is the tree).
            out = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *mutant.tests],
                                 cwd=tree, capture_output=True, text=True, timeout=900)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    lines = out.stdout.splitlines()
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "no summary")
    failed = [line.split(" - ")[0] for line in lines if line.startswith("FAILED ")]
    caught = out.returncode == 1 and bool(failed)
    detail = "; ".join(f.removeprefix("FAILED ") for f in failed[:4])
    return caught, f"{summary.strip('= ')}" + (f" -- {detail}" if detail else "")


def main(argv: list[str] | None = None) -> int:
    """Run the mutants named (default: all); exit 1 if one survives."""
    p = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"mutants to run (default all: {', '.join(m.name for m in MUTANTS)})")
    args = p.parse_args(argv)
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        p.error(f"unknown mutant(s) {sorted(unknown)}")
    survived = 0
    for mutant in (m for m in MUTANTS if not args.names or m.name in args.names):
        started = time.monotonic()
        caught, summary = run_mutant(mutant, sys.executable)
        survived += not caught
        verdict = "caught" if caught else "SURVIVED"
        print(f"{mutant.name:30} {verdict:8} {time.monotonic() - started:5.0f} s  {mutant.why}\n    {summary}",
              flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
