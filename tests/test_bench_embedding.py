"""`bench.embedding` times every embedding runtime on the same chunks and checks their vectors against PyTorch's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.embedding import chunks, main
from tests.conftest import MODEL_CACHE

pytestmark = pytest.mark.slow


def test_chunks_are_about_a_hundred_tokens_and_repeatable() -> None:
    a, b = chunks(40, 500), chunks(40, 500)
    assert a == b and len(a) == 40
    assert all(len(t) <= 500 + 120 for t in a)  # the chunker's size plus a heading


def test_quick_run_compares_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_MODELS__CACHE_DIR", str(MODEL_CACHE))
    out = tmp_path / "embedding.json"
    result = main(["--chunks", "24", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["backends"]
    assert set(rows) == {"torch", "onnx", "onnx-int8"}
    assert all(r["chunks_per_s"] > 0 and r["tokens_per_s"] > 0 for r in rows.values())
    assert rows["onnx"]["cosine_to_torch_min"] > 0.9999  # the same model, another runtime
    assert 0.98 < rows["onnx-int8"]["cosine_to_torch_min"] < 1.0  # quantized: close, not equal
    assert 60 < result["tokens_mean"] < 200
    assert result["target_met"] in (True, False)
