# The README's two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
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

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/wiber up --config $(CONFIG)

# tools/install-system-deps.sh installs nftables/iproute2 when root and missing (the fault suite's
# network partitions); without them those cases skip with the reason.
test: $(VENV)/.installed-test
	sh tools/install-system-deps.sh
	$(BIN)/python -m pytest

# Side-by-side benchmark against NATS JetStream, PySyncObj and raw pyzmq (DESIGN section 7).
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data .pytest_cache

# A long randomized fault campaign (tests/faults/run.py): 10 minutes, 5 nodes, a seed printed first.
# Tune it with FAULTS_ARGS, e.g. `make faults FAULTS_ARGS="--minutes 30 --seed 1234"`.
.PHONY: faults
faults: $(VENV)/.installed-test
	sh tools/install-system-deps.sh
	$(BIN)/python -m tests.faults.run $(FAULTS_ARGS)
