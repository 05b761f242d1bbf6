"""`bench.inference --quick` runs end to end on the real small model and writes the JSON the README quotes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.inference import main
from tests.conftest import MODEL_CACHE

pytestmark = pytest.mark.slow


def test_quick_run_writes_every_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_MODELS__CACHE_DIR", str(MODEL_CACHE))
    out = tmp_path / "inference.json"
    result = main(["--quick", "--streams", "1,2", "--tokens", "8", "--questions", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["settings"]["quick"] is True
    single = data["single_stream"]
    rows = {"ours", "ours_shipped", "llama_shipped", "llama_engine_weights"}
    if data["engine"]["solo"]:  # a lone answer decodes on the shipped file: compared with the batching weights alone
        rows.add("ours_batching_weights")
    assert set(single) >= rows
    for row in rows:
        assert single[row]["decode_tokens_per_s"] > 0 and single[row]["tokens"][0] > 0
    assert single["ours_shipped"]["over_llama_shipped_decode"] > 0
    assert isinstance(single["target_met"], bool)
    levels = data["concurrency"]["levels"]
    assert [r["streams"] for r in levels] == [1, 2]
    for r in levels:
        for meth in ("ours", "llama_sequential", "raw_batched"):
            assert r[meth]["tokens_per_s"] > 0
        assert r["ours_over_raw_batched"] > 0
    ttft = data["rag_ttft"]["methods"]
    assert set(ttft) == {
        "ours_served",
        "ours_cold",
        "llama_shipped_fresh",
        "llama_engine_weights_fresh",
        "llama_engine_weights_prefix_kept",
    }
    assert all(m["ttft_p50_ms"] > 0 and m["prompt_tokens_mean"] > 100 for m in ttft.values())
    assert data["rag_ttft"]["prefill_ours_over_llama_shipped"] > 0
    bound = data["bandwidth_bound"]
    assert bound["bandwidth"]["best_gb_s"] > 0
    # The shipped file, and what the engine batches on; ours' decode is measured against the one it ran on.
    assert set(bound["files"]) == {"Q4_1", data["engine"]["format"].upper()}
    served = "Q4_1" if data["engine"]["solo"] else data["engine"]["format"].upper()
    assert bound["files"][served]["ours_share_of_bound"] > 0
    assert all(f["embedding_tied_to_output"] for f in bound["files"].values())  # SmolLM2 has no output.weight
    assert data["machine"]["cpu_count"] and data["machine"]["llama_cpp_python"]
    lookup = data["prompt_lookup"]
    assert lookup["off"]["lookup_tokens"] == 0 and lookup["off"]["drafted"] == 0 and lookup["on"]["lookup_tokens"] == 8
    assert lookup["on"]["decode_tokens_per_s_mean"] > 0 and lookup["off"]["decode_tokens_per_s_mean"] > 0
    assert lookup["on"]["accepted"] <= lookup["on"]["drafted"] and lookup["on_over_off"] > 0
    assert set(data["sections"]) == {"single_stream", "concurrency", "rag_ttft", "bandwidth_bound", "lookup"}
    assert result["seconds"] == data["seconds"]
