# The whole set-up on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck promcheck unit install clean bench bench-audit

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: a live three-agency network on this machine (Ctrl-C stops it)
demo: $(STAMP)
	$(BIN)/gateway demo $(DEMO_ARGS)

## test: lint, format check, strict types, promtool checks, and the test suite with branch coverage
test: lint typecheck promcheck unit

lint: $(STAMP)
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict gateway

## promcheck: promtool checks the Prometheus config and alert rules and runs the rules' unit tests
## (.ci/install-promtool.sh installs Debian's prometheus package where promtool is missing)
PROMTOOL ?= promtool
promcheck:
	PROMTOOL=$(PROMTOOL) .ci/install-promtool.sh
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml
	$(PROMTOOL) test rules deploy/prometheus/alerts_test.yml

unit: $(STAMP)
	$(BIN)/pytest --cov=gateway --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=85 -p no:cacheprovider $(PYTEST_ARGS)

## bench: the exchange benchmark: direct (A), two plain proxies (B), two gateways (C) and the
## crypto floor (F) under wrk, then scaling curves; headline ratios in bench/results/latest.json
## (12-14 minutes on 2 cores; BENCH_ARGS=--quick for about 3; bench/install-wrk.sh installs
## Debian's wrk where it is missing; see bench/README.md and docs/performance.md)
WRK ?= wrk
bench: $(STAMP)
	WRK=$(WRK) bench/install-wrk.sh
	$(BIN)/python -m bench exchange --wrk $(WRK) $(BENCH_ARGS)

## bench-audit: audit log benchmark, group commit vs one commit per record, proofs at 10^6
## (about 1.5 minutes on 2 cores; BENCH_ARGS=--quick for a smaller run; see bench/README.md)
bench-audit: $(STAMP)
	$(BIN)/python -m bench audit $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage .hypothesis
