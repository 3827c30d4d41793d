r"""Proof that the simulation catches real bugs: switch off one rule of the core, find a violation.

Each mutation replaces one small method of `Raft` (monkeypatch, nothing test-only in the core):

* `up_to_date_check`: `_log_is_up_to_date` always grants (section 5.4.1 switched off), so a node
  with a stale log can win an election and overwrite committed entries.
* `figure_8`: `_maybe_commit` commits any entry a majority holds, whatever its term (the rule of
  section 5.4.2 switched off), so an old-term entry can be committed and then overwritten.
* `persist_before_reply`: `_reply_channel` sends every reply before persisting, so a node can
  acknowledge entries or grant a vote and then lose them in a crash.

The seeds listed were found by searching the default simulation (`WIBER_MUTATION_SEARCH=N` searches
N seeds and prints the ones that fail); any change to the core or the simulation may move them, in
which case search again and update the lists. Replay one with, e.g. ::

    WIBER_MUTATION=figure_8 WIBER_SIM_SEED=176 \
        .venv/bin/python -m pytest tests/sim/test_mutations.py -k replay

"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from wiber.raft import Raft
from wiber.raft.messages import Message
from wiber.raft.quorum import committed_index

from .chaos import DEFAULT_STEPS, env_int, run_seed
from .invariants import InvariantViolation


def _always_up_to_date(self: Raft, last_index: int, last_term: int) -> bool:
    """(a) Grant votes whatever the candidate's log."""
    return True


def _commit_by_counting_any_term(self: Raft) -> bool:
    """(b) Figure 8 switched off: commit what a majority holds, of any term."""
    matches = {p: pr.match for p, pr in self._prs.items()}
    matches[self._id] = self._self_match
    return self._log.commit_to(committed_index(matches, self._voters))


def _reply_before_persisting(self: Raft, msg: Message) -> list[Message]:
    """(c) Every reply leaves with the messages that do not wait for the disk."""
    return self._msgs


MUTATIONS: dict[str, tuple[str, Callable[..., object], list[int]]] = {
    "up_to_date_check": ("_log_is_up_to_date", _always_up_to_date, [0, 1, 2, 4]),
    "figure_8": ("_maybe_commit", _commit_by_counting_any_term, [176, 200, 266, 322]),
    "persist_before_reply": ("_reply_channel", _reply_before_persisting, [0, 58, 66, 78]),
}


def replay_mutation_command(name: str, seed: int) -> str:
    """Returns: the command that replays `seed` under mutation `name`."""
    return (f"WIBER_MUTATION={name} WIBER_SIM_SEED={seed} .venv/bin/python -m pytest "
            f"tests/sim/test_mutations.py -k replay")


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the rule switched off, some listed seed breaks a safety invariant."""
    method, replacement, seeds = MUTATIONS[name]
    monkeypatch.setattr(Raft, method, replacement)
    caught = []
    for seed in seeds:
        try:
            run_seed(seed, DEFAULT_STEPS)
        except InvariantViolation as exc:
            caught.append((seed, str(exc)))
        except AssertionError:
            pass  # a liveness failure is not proof enough: safety must break
    assert caught, (f"mutation {name} survived seeds {seeds}: search again with "
                    f"WIBER_MUTATION={name} WIBER_MUTATION_SEARCH=2000 .venv/bin/python -m pytest "
                    f"tests/sim/test_mutations.py -k search -s")


@pytest.mark.skipif("WIBER_MUTATION" not in os.environ, reason="set WIBER_MUTATION and WIBER_SIM_SEED")
def test_replay_mutation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay one seed under one mutation; it is expected to fail with the violation."""
    name = os.environ["WIBER_MUTATION"]
    method, replacement, _ = MUTATIONS[name]
    monkeypatch.setattr(Raft, method, replacement)
    run_seed(env_int("WIBER_SIM_SEED", 0), env_int("WIBER_SIM_STEPS", DEFAULT_STEPS))


@pytest.mark.skipif("WIBER_MUTATION_SEARCH" not in os.environ,
                    reason="set WIBER_MUTATION_SEARCH=<seeds> (and WIBER_MUTATION) to search for seeds")
def test_search_mutation_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Print the seeds among the first N whose run breaks an invariant under the mutation(s)."""
    count = env_int("WIBER_MUTATION_SEARCH", 0)
    names = [os.environ["WIBER_MUTATION"]] if "WIBER_MUTATION" in os.environ else sorted(MUTATIONS)
    for name in names:
        method, replacement, _ = MUTATIONS[name]
        with monkeypatch.context() as patch:
            patch.setattr(Raft, method, replacement)
            found = []
            for seed in range(count):
                try:
                    run_seed(seed, DEFAULT_STEPS)
                except InvariantViolation:
                    found.append(seed)
                except AssertionError:
                    pass
        print(f"{name}: {len(found)} of {count} seeds break an invariant: {found[:20]}")
        for seed in found[:3]:
            print("  " + replay_mutation_command(name, seed))


def test_a_failing_seed_reports_one_line_with_the_command_to_rerun_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What CI prints for a failing seed: one line, ending with the exact command to replay it."""
    from .test_sim import run_or_fail

    monkeypatch.setattr(Raft, "_log_is_up_to_date", _always_up_to_date)
    with pytest.raises(pytest.fail.Exception) as info:
        run_or_fail(0, DEFAULT_STEPS)
    message = str(info.value)
    assert "\n" not in message and message.startswith("seed=0: InvariantViolation: ")
    assert message.endswith(
        "replay: WIBER_SIM_SEED=0 .venv/bin/python -m pytest tests/sim/test_sim.py -k replay")
