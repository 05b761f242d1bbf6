"""The llama.cpp build on this machine's CPU: every weight format decodes; one that cannot never kills the server.

Each weight format the engine may pick is decoded here, on whatever CPU runs the suite (AVX2, AVX-512, AMX),
with no fallback allowed; a format that fails its start-up check makes the engine fall back and say so; a
model file no format can run is an error at start-up, on /readyz, while the process keeps serving.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.core.cpu import X86_NEVER, cmake_args, variant_for
from enclave.core.protocols import GenerationParams, Message
from enclave.core.settings import Settings
from enclave.engine.llamacpp import LlamaCppBackend, weights_path
from enclave.engine.modelfiles import converted_model_dir
from enclave.engine.smoke import SmokeChecks, run_check
from tests.conftest import MODEL_CACHE, Server

FORMATS = ["auto", "bf16", "q8_0", "original"]
HELLO = {"model": Settings().models.name, "messages": [{"role": "user", "content": "Hi"}]}


# -- the build's options (no model needed) ------------------------------------------------------------------


def test_the_build_names_each_instruction_set_and_never_amx() -> None:
    amx_cpu = frozenset(
        "sse4_2 avx f16c fma bmi2 avx2 avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi "
        "avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16".split()
    )
    args = cmake_args(amx_cpu, x86=True)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX512_BF16=ON" in args and "-DGGML_AVX2=ON" in args
    assert all(f"-D{o}=OFF" in args for o in X86_NEVER)
    zen3 = frozenset("sse4_2 avx f16c fma bmi2 avx2".split())
    args = cmake_args(zen3, x86=True)
    assert "-DGGML_AVX2=ON" in args and "-DGGML_AVX512=OFF" in args and "-DGGML_AVX512_BF16=OFF" in args
    # A CPU with AVX-512F but not all five of ggml's AVX512 set gets none of it.
    assert "-DGGML_AVX512=OFF" in cmake_args(zen3 | {"avx512f"}, x86=True)
    assert variant_for(amx_cpu) == "x86-64-v4-bf16" and variant_for(zen3) == "x86-64-v3"
    assert variant_for(frozenset({"sse4_2"})) is None


# -- a child's death is reported, not shared ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGILL, signal.SIGSEGV])
def test_a_check_whose_child_dies_of_a_signal_says_which(tmp_path: Path, sig: signal.Signals) -> None:
    die = [sys.executable, "-c", f"import os, signal; os.kill(os.getpid(), signal.{sig.name})"]
    result = run_check(tmp_path / "w.gguf", command=die)
    assert not result.ok and sig.name in result.detail


def test_a_check_that_hangs_is_given_up(tmp_path: Path) -> None:
    result = run_check(tmp_path / "w.gguf", command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert not result.ok and "no answer within" in result.detail


# -- the real build, every format, on this CPU --------------------------------------------------------------------

@pytest.mark.slow
def test_every_weight_format_decodes_on_this_cpu(tmp_path: Path) -> None:
    """Strict: on a good build every format passes; a fresh record, so nothing is taken from an earlier run."""
    settings = Settings(models={"cache_dir": str(MODEL_CACHE)})  # type: ignore[arg-type]
    gguf, _ = converted_model_dir(settings)
    checks = SmokeChecks(tmp_path / "checks.json")
    for fmt in ("bf16", "q8_0", "f16", "original"):
        target = weights_path(settings, gguf, fmt)
        convert: dict[str, Any] = {} if fmt == "original" else {"convert_from": gguf, "fmt": fmt}
        result = checks.check(target, threads=2, **convert)
        assert result.ok, f"{fmt}: {result.detail}"
        assert "decoded" in result.detail
    again = checks.check(gguf, threads=2)  # a pass is remembered
    assert again.ok and "checked before" in again.detail


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
async def test_the_engine_answers_on_every_format_without_falling_back(fmt: str) -> None:
    models = {"cache_dir": str(MODEL_CACHE), "engine_format": fmt, "parallel": 2}
    settings = Settings(models=models)  # type: ignore[arg-type]
    backend = LlamaCppBackend(settings)
    await backend.aload()
    try:
        status = backend.engine_status
        assert status["problems"] == [], status
        assert fmt == "auto" or status["format"] == fmt
        messages = [Message(role="user", content="What is the capital of France?")]
        text = "".join([p async for p in backend.stream(messages, GenerationParams(max_tokens=12, temperature=0))])
        assert sum(c.isalpha() for c in text) >= 3, text
    finally:
        backend.close()


def _wait_ready(server: Server, timeout: float = 300) -> dict[str, Any]:
    """Starts the server and polls /readyz until it is ready or reports a load error."""
    server.start_process()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
        try:
            r = server.get("/readyz")
        except httpx.HTTPError:
            time.sleep(0.3)
            continue
        body: dict[str, Any] = r.json()
        if r.status_code == 200 or body.get("error"):
            return body
        time.sleep(0.3)
    raise AssertionError(f"no answer from /readyz in {timeout}s: {server.log()[-3000:]}")


@pytest.mark.slow
def test_a_format_that_fails_its_check_is_replaced_and_readyz_says_which(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    shared = Settings(models={"cache_dir": str(MODEL_CACHE)})  # type: ignore[arg-type]
    mine = Settings(models={"cache_dir": str(cache), "engine_format": "q8_0"})  # type: ignore[arg-type]
    gguf, _ = converted_model_dir(mine)
    # The q8_0 file a build cannot run: a copy of the real one cut off inside its tensor data.
    good = weights_path(shared, gguf, "q8_0")
    if not good.is_file():
        assert run_check(good, convert_from=gguf, fmt="q8_0", threads=2).ok
    broken = weights_path(mine, gguf, "q8_0")
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    env = {"ENCLAVE_MODELS__CACHE_DIR": str(cache), "ENCLAVE_MODELS__ENGINE_FORMAT": "q8_0"}
    server = Server(tmp_path / "data", env=env)
    try:
        body = _wait_ready(server)
        assert body["ready"], body
        engine = body["engine"]
        assert engine["requested"] == "q8_0" and engine["format"] != "q8_0"
        assert any("q8_0" in p and "CPU:" in p for p in engine["problems"])
        r = server.post("/v1/chat/completions", json=HELLO)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
        assert "cannot run the q8_0 weights" in server.log()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_model_no_format_can_run_is_a_start_up_error_and_the_server_stays_up(tmp_path: Path) -> None:
    models = tmp_path / "gguf"
    models.mkdir()
    shipped, _ = converted_model_dir(Settings())
    bad = models / "Broken.gguf"
    bad.write_bytes(shipped.read_bytes()[: 4 << 20])  # a real header, the tensors cut off
    server = Server(
        tmp_path / "data",
        env={
            "ENCLAVE_MODELS__GGUF_DIR": str(models),
            "ENCLAVE_MODELS__GGUF_FILE": bad.name,
            "ENCLAVE_MODELS__CACHE_DIR": str(tmp_path / "cache"),
        },
    )
    try:
        body = _wait_ready(server)
        assert not body["ready"]
        assert "no weight format runs" in body["error"] and "original" in body["error"]
        assert server.get("/healthz").status_code == 200
        r = server.post("/v1/chat/completions", json=HELLO)
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
