# Two set-up commands: `make run` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
CONFIG ?= routes.yaml
PYTEST_ARGS ?=

.PHONY: venv run test lint check mutation bench bench-memory chaos clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,fast]'
	@touch $(STAMP)

# The bench extra (Flask, gunicorn, requests and LiteLLM: the stacks bench/chain.py compares with).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,fast,bench]'
	@touch $(BENCH_STAMP)

venv: $(STAMP)

## run: migrate and seed the database, then the gateway with the DEMO model upstream behind it
## (CONFIG=other.yaml for another config, PORT=8081 for another gateway port)
run: venv
	@test -f certs/server.crt || $(VENV)/bin/gateway certs dev --config $(CONFIG)
	$(VENV)/bin/gateway db upgrade --config $(CONFIG)
	$(PY) seed_data.py --config $(CONFIG)
	$(PY) -m gateway.demo.launch $(CONFIG)$(if $(PORT), --port $(PORT))

## lint: ruff, formatting, mypy, no import circles in gateway/ and its layering (tools/)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gateway
	$(PY) tools/import_cycles.py
	$(PY) -m tools.import_rules

## check: validate the shipped routes.yaml and policies/
check: venv
	$(VENV)/bin/gateway check --config $(CONFIG)

## test: lint, config check, the mutation check, then the whole suite (pytest exit 5, no
## tests, fails)
test: lint check mutation
	$(PY) -m pytest -n auto --dist loadfile -q $(PYTEST_ARGS)

## mutation: break each decision listed in tools/mutations.toml (policy, authentication,
## rate limits, GCRA, routing, X-Forwarded-For, token checks, proxied headers) in a copy
## of gateway/ and require its focused tests to fail; fails on a surviving mutant or a
## snippet no longer in the code (about a minute on 2 cores)
mutation: venv
	$(PY) tools/mutation.py

## bench: the benchmarks under bench/ (figures, not pass/fail; about 8 minutes). chain.py needs
## 2 cores, taskset, and Debian's nginx and wrk, which it installs with apt-get when missing
bench: $(BENCH_STAMP)
	$(PY) bench/route_matching.py
	$(PY) bench/chain.py
	$(PY) bench/surfaces.py
	$(PY) bench/observability.py

## bench-memory: RSS over 300,000 full-chain requests and 1 GiB each way (about 3 minutes)
bench-memory: $(BENCH_STAMP)
	$(PY) bench/memory.py

## chaos: mixed load through two gateways while Redis, the upstream and the database fail on a
## schedule, then the invariants (bench/chaos.py; about 2 minutes; needs PostgreSQL and redis-server)
chaos: $(BENCH_STAMP)
	$(PY) bench/chaos.py --duration $(or $(DURATION),90)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
