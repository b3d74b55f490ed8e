# docker-image-exporter — developer entry points. `make run` and `make test` set themselves up.
# Another Python in its own venv: make pytest PYTHON=python3.13 VENV=.venv-3.13
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= examples/config.yaml
IMAGE ?= docker-image-exporter:dev
BASE_IMAGE ?= python:3.12-slim
OFFLINE ?= 0
PYTEST_ARGS ?=

.PHONY: test-fleet run test unit lint typecheck pytest test-deps venv runtime-venv bench bench-events bench-listener bench-auth-flood image test-engines clean dashboards helm-assets

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The runtime dependencies only: what `make run` needs (seconds, not the test tools' minute and 75 MB).
$(BIN)/.installed-runtime: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Everything the tests, linters and generators need (the `test` extra), on top of the runtime.
$(BIN)/.installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# What `make bench` runs: the runtime and pytest (the harness it shares with the tests skips through it).
$(BIN)/.installed-bench: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e . 'pytest>=8'
	touch $@

venv: $(BIN)/.installed
runtime-venv: $(BIN)/.installed-runtime

## run: the exporter against the local engine (DOCKER_HOST or the default socket), remediation off
run: runtime-venv
	$(BIN)/docker-image-exporter --config.file $(CONFIG)

## test: system packages (as root on Debian), venv, ruff, mypy, pytest
test: test-deps venv lint typecheck pytest

## unit: the fast loop for every edit: ruff, mypy, import contracts and the pure tests (no engine, no system packages)
unit: venv lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

test-deps:
	@scripts/install-test-deps.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest -ra $(PYTEST_ARGS)

## dashboards: regenerate the alert and fleet recording rules, dashboards/*.json (they share thresholds) and the Helm chart's copies
dashboards: venv
	$(BIN)/python -m alerts.render
	$(BIN)/python -m alerts.recording
	$(BIN)/python -m dashboards.generate
	$(MAKE) helm-assets

## helm-assets: regenerate docs/config.schema.json, copy it, the dashboards and the rules into the chart
## (Helm reads only files inside it); tests fail on drift
helm-assets: venv
	$(BIN)/python -m exporter.config.schema
	$(BIN)/python scripts/sync-helm-assets.py

## bench: issue 14 and 23 figures on a private engine (BENCH_PROFILE=1k|10k|30k|smoke; run under nice -n 19); results in benchmarks/results/
bench: $(BIN)/.installed-bench
	@scripts/install-test-deps.sh bench
	$(BIN)/python -m benchmarks.run

## bench-events: change -> render and RSS over 1,000 changes at 10k/30k synthetic images, uncapped (no engine needed)
bench-events: venv
	$(BIN)/python -m benchmarks.events_synthetic

## bench-listener: /metrics latency while a slowloris client holds 1,100 connections (no engine needed)
bench-listener: venv
	$(BIN)/python -m benchmarks.listener

## bench-auth-flood: a verified scraper's /metrics while 600 connections send wrong basic-auth passwords (no engine needed)
bench-auth-flood: venv
	$(BIN)/python -m benchmarks.auth_flood

## image: the container image (OFFLINE=1 builds with no network inside the build)
image:
	scripts/build-image.sh "$(IMAGE)" "$(BASE_IMAGE)" "$(OFFLINE)"

## test-fleet: FLEET_HOSTS (default 50) exporters on private engines behind one Prometheus and two clustered
## Alertmanagers, disk pressure on FLEET_PRESSED (10) of them; ~15 min, root; not part of `make test`
test-fleet: test-deps venv
	nice -n 10 $(BIN)/pytest -p no:cacheprovider -s -ra tests/fleet/scenario.py $(PYTEST_ARGS)

## test-engines: the engine-backed suite against every engine in the matrix
test-engines: test-deps venv
	$(BIN)/python -m tests.harness.matrix

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache exporter/_build.py
