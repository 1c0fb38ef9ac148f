# The two commands of the README: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)
WORKDIR ?= runs/demo

.PHONY: demo test test-all bench clean venv

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,hf]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(PY) -m star_jax.main --config=experiments/configs/arithmetic.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Also runs the long tests (full experiments) that `make test` skips.
test-all: $(STAMP)
	$(PY) -m pytest -q --run-slow tests

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) runs
