"""The first start's log on a machine with nothing cached: what a person needs (model, engine, weights, embedder,
collections) and none of the libraries' chatter (the int8 quantizer's lines, progress bars, probe requests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FAST_BASE, Server


@pytest.mark.slow
def test_the_first_start_says_what_runs_and_nothing_else(tmp_path: Path) -> None:
    server = Server(
        tmp_path / "data",
        env={"ENCLAVE_MODELS__CACHE_DIR": str(tmp_path / "cache"), "ENCLAVE_RAG__INGEST_SAMPLES": "true"},
        log_name="first-start",
    ).start()
    try:
        for _ in range(3):
            assert server.get("/readyz").status_code == 200
    finally:
        server.stop()
    log = server.log()
    ready = [line for line in log.splitlines() if "enclave ready:" in line]
    assert len(ready) == 1, log
    line = ready[0]
    assert f"model {FAST_BASE} on llama.cpp (" in line and " weights" in line
    assert "embedder all-MiniLM-L6-v2/onnx-int8" in line  # exported on this start, into the empty cache
    assert "collections docs (5 documents)" in line and "moderation on" in line
    assert "exporting" in log  # the one-off export is announced, once
    for chatter in ("Quantization parameters", "Ignore MatMul", "pre-processing", "Batches", "GET /readyz", "legacy"):
        assert chatter not in log, chatter
    assert len(log.splitlines()) <= 16, log
