"""`python -m tests.mutants` stays able to run: every mutant still finds the code it mutates."""

from __future__ import annotations

import pytest

from tests.mutants import MUTANTS, REPO, Mutant


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_finds_its_code_once_and_names_existing_tests(mutant: Mutant) -> None:
    """A refactor that moves the mutated lines must update tests/mutants.py, not silently skip it."""
    source = (REPO / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.name}: the code to mutate moved in {mutant.path}"
    assert mutant.new != mutant.old
    for test in mutant.tests:
        assert (REPO / test).exists(), f"{mutant.name}: {test} does not exist"
