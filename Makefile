# The two commands of the README: `make demo` and `make test`. Each creates .venv on first use and
# re-installs only when setup.py changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
SETUP_HASH := $(shell cksum setup.py | cut -d' ' -f1)
BASE_STAMP := $(VENV)/.base-$(SETUP_HASH)
TEST_STAMP := $(VENV)/.test-$(SETUP_HASH)
WORKDIR ?= runs/demo
CONFIG ?= experiments/configs/star_arithmetic.py:demo

.PHONY: demo test test-fast lint test-all bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(BASE_STAMP): setup.py | $(PY)
	$(PIP) -e .
	touch $@

# The test extras add pytest, nbclient and (for Hugging Face parity tests) torch CPU + transformers.
$(TEST_STAMP): setup.py | $(PY)
	$(PIP) -e '.[test,hf]'
	touch $@ $(BASE_STAMP)

demo: $(BASE_STAMP)
	$(PY) -m star_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

# Every tier but `slow`: lint, the unit tests, then the end-to-end tier (whole loops, sweeps, notebooks,
# subprocess and multi-host runs; marked e2e).
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

# The unit tier alone (seconds to a few minutes): what to run while editing.
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not e2e" tests

lint: $(TEST_STAMP)
	$(PY) -m ruff check .

# Also the long tests (full experiments) that `make test` skips.
test-all: $(TEST_STAMP)
	$(PY) -m pytest -q --run-slow tests

bench: $(BASE_STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) runs
