# p2pshare: `make demo` runs the system, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test test-hosts test-long check lint types demo bench bench-quick audit clean

$(STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The whole suite under coverage, the daemons the tests start included (setup.cfg
# [coverage:run]), then the gate: each package at least 90 % of lines
# (tests/support/coverage_gate.py). The data go to a temporary folder of this run's own, so
# two runs in one tree do not mix; combined, they end up in .coverage (`coverage report -m`).
# PYTEST_ARGS='-x -k name' narrows a run (the gate may fail then).
test: $(STAMP)
	@data=$$(mktemp -d) && trap 'rm -rf "$$data"' EXIT && export COVERAGE_FILE="$$data/.coverage" \
	&& echo "coverage run -m pytest $(PYTEST_ARGS)" && $(BIN)/coverage run -m pytest $(PYTEST_ARGS) \
	&& $(BIN)/coverage combine -q && mv -f "$$data/.coverage" .coverage \
	&& COVERAGE_FILE=.coverage $(BIN)/python tests/support/coverage_gate.py

# Only the host tests (tests/hosts/): the index and peers each in a network namespace of its
# own, with its own 198.18.0.0/15 address and optionally a rate-limited link, on one bridge
# (tests/support/hosts.py). They need root, or unprivileged user namespaces; without either
# they are skipped, except under CI=true, where they fail. `make test` runs them too.
test-hosts: $(STAMP)
	$(BIN)/python -m pytest tests/hosts

# The slow variants (e.g. the 10,000-frame fuzz run of tests/adversarial/test_framing.py).
test-long: $(STAMP)
	$(BIN)/python -m pytest -m long

# TLS audit of a live indexd and peerd (tests/support/tls_audit.py): sslyze, Python's ssl and
# openssl s_client; fails on anything but TLS 1.3, AEAD suites and X25519, or a peer that
# takes clients without a certificate. sslyze pins an older `cryptography`, so it gets a venv
# of its own (the `audit` extra) instead of changing the project's.
AUDIT_VENV  := .venv-audit
AUDIT_STAMP := $(AUDIT_VENV)/.installed

$(AUDIT_STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(AUDIT_VENV)/bin/python || $(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install -q --upgrade pip
	$(AUDIT_VENV)/bin/python -m pip install -q -e '.[audit]'
	@touch $(AUDIT_STAMP)

audit: $(AUDIT_STAMP)
	$(AUDIT_VENV)/bin/python tests/support/tls_audit.py $(AUDIT_ARGS)

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

# Every figure of docs/design.md §6 against its limit measured in the same run (BENCHMARKS.md);
# the table is printed and the JSON written to bench/results/latest.json. BENCH_ARGS=--quick
# for a smoke run (what `make test` runs once).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) $(AUDIT_VENV) build *.egg-info demo bench/results
