# p2pshare: `make demo` runs the system, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test test-long check lint types demo bench bench-quick audit clean

$(STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

test-long: $(STAMP)
	$(BIN)/python -m pytest -m long

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

# A throwaway PKI and sample shares in demo/ (git-ignored), indexd, peer1 and peer2 in the
# background on free loopback ports, and the shell as peer3 in the foreground; leaving the
# shell stops them all. Scriptable: printf 'search koala\nget koala joey.txt\nquit\n' | make demo
# DEMO_ARGS=--small makes peer2's large file 2 MiB instead of 50 MiB.
demo: $(STAMP)
	@$(BIN)/python -m peerd.demo $(DEMO_ARGS)

# Every figure of design §6 against its limit measured in the same run (BENCHMARKS.md);
# the table is printed and the JSON written to bench/results/latest.json. BENCH_ARGS=--quick
# for a smoke run (what `make test` runs once).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info demo bench/results
