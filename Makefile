# The README's two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The benchmark has its own venv, on the distribution's interpreter when there is a usable one:
# version managers (pyenv here) build CPython without PGO/LTO by default, and that build ran every
# Python system of the benchmark ~20% slower on this machine (a dict/tuple loop 68 -> 55 ms, Wiber's
# pipelined rate +20-30% in three A/B pairs). Every Python process of a run uses this one interpreter.
BENCH_PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, venv; print(sys.executable if sys.version_info >= (3, 10) else "")' 2>/dev/null || true)
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
CONFIG ?= conf/cluster.yaml

.PHONY: run test bench venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# A stamp per extra so that `make test` after `make run` adds the test extra.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(BENCH_BIN)/python:
	$(or $(BENCH_PYTHON),$(PYTHON)) -m venv $(BENCH_VENV) || { rm -rf $(BENCH_VENV); $(PYTHON) -m venv $(BENCH_VENV); }
	$(BENCH_BIN)/pip install --quiet --upgrade pip

$(BENCH_VENV)/.installed-bench: pyproject.toml | $(BENCH_BIN)/python
	$(BENCH_BIN)/pip install --quiet -e '.[bench]'
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/wiber up --config $(CONFIG)

# tools/install-system-deps.sh installs nftables/iproute2 when root and missing (the fault suite's
# network partitions); without them those cases skip with the reason.
test: $(VENV)/.installed-test
	sh tools/install-system-deps.sh
	$(BIN)/python -m pytest

# Side-by-side benchmark against NATS JetStream, PySyncObj and raw pyzmq (docs/design.md, section 7).
bench: $(BENCH_VENV)/.installed-bench
	$(BENCH_BIN)/python -m bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) data .pytest_cache

# Long seeds of the Raft simulation first (tests/sim/replay.py: 300 seeds of 20,000 steps, a median
# of ~4,000 ticks each, 1.5 minutes, the seed offset printed first; a failing seed prints the command
# that replays it), then a long randomized fault campaign (tests/faults/run.py): 10 minutes, 5 nodes,
# a seed printed first. Tune them with SIM_ARGS and FAULTS_ARGS, e.g.
# `make faults SIM_ARGS="--seeds 1000 --steps 50000" FAULTS_ARGS="--minutes 30 --seed 1234"`.
SIM_ARGS ?= --seeds 300 --steps 20000
.PHONY: faults
faults: $(VENV)/.installed-test
	$(BIN)/python -m tests.sim.replay $(SIM_ARGS)
	sh tools/install-system-deps.sh
	$(BIN)/python -m tests.faults.run $(FAULTS_ARGS)

# Source mutants (tests/mutants.py): each deletes or moves one safety rule of the shipped code (the
# persist fsync, its place before the replies, ReadIndex's heartbeat round, session dedup) in a
# throwaway git worktree and runs the tests meant to catch it; exits 1 if one survives (~30 s).
.PHONY: mutants
mutants: $(VENV)/.installed-test
	$(BIN)/python -m tests.mutants

# The wire fuzzer (tests/fuzz/runner.py): seeded random and mutated frames against a 3-node
# cluster's client and raft ports for 5 minutes, then every node must answer PING, a PUB must be
# acknowledged and no log may hold a traceback; the seed is printed first. Tune it with FUZZ_ARGS,
# e.g. `make fuzz FUZZ_ARGS="--minutes 30 --seed 1234"` (`--secure`: a cluster with keys;
# `--byzantine`: forged Raft state too; `--list`: the frame families).
.PHONY: fuzz
fuzz: $(VENV)/.installed-test
	$(BIN)/python -m tests.fuzz.runner --minutes 5 $(FUZZ_ARGS)
