"""The router's calibration: the labelled-set reader, the threshold fit, and `enclave router calibrate`
end to end on the real knowledge base and embedder with the shipped labelled set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enclave.chat import calibrate as cal
from enclave.chat.router import RetrievalSignals, domain_scores, is_small_talk
from enclave.core.errors import InvalidRequest
from enclave.core.protocols import Chunk
from enclave.core.settings import RouterSettings


def _chunk(score: float) -> Chunk:
    return Chunk(id=f"c{score}", text="t", title="T", uri="u", score=score, metadata={"dense_score": score})


def _sample(route: str, top: float | None, adapter_sim: float | None, adapter: str | None = None) -> cal.Sample:
    sig = RetrievalSignals(collection="docs", chunks=[_chunk(top), _chunk(top - 0.05)] if top is not None else [])
    if adapter_sim is not None:
        sig.adapter_scores = {"hr": adapter_sim}
    return cal.Sample(cal.Labelled("q", route, adapter), sig)


def test_labels_reader_names_the_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "labels.jsonl"
    f.write_text('{"query": "a", "route": "rag"}\n{"query": "b", "route": "elsewhere"}\n')
    with pytest.raises(InvalidRequest, match=r"labels.jsonl:2: route must be one of rag, adapter, base"):
        cal.load_labels(f)
    f.write_text('{"query": "a", "route": "rag"}\nnot json\n')
    with pytest.raises(InvalidRequest, match=r":2: not JSON"):
        cal.load_labels(f)
    f.write_text('{"query": "a", "route": "adapter"}\n')
    with pytest.raises(InvalidRequest, match="names its adapter"):
        cal.load_labels(f)
    with pytest.raises(InvalidRequest, match="not found"):
        cal.load_labels(tmp_path / "missing.jsonl")
    assert len(cal.load_labels(cal.SHIPPED_LABELS)) >= 90


def test_fit_lands_inside_the_gap_and_evaluate_counts() -> None:
    samples = (
        [_sample("rag", t, 0.2) for t in (0.45, 0.5, 0.6, 0.7)]
        + [_sample("adapter", 0.1, s, "hr") for s in (0.6, 0.7, 0.8)]
        + [_sample("base", t, s) for t, s in ((0.2, 0.3), (0.25, 0.1), (0.1, 0.35))]
    )
    fitted = cal.fit(samples)
    # Separable: rag tops >= 0.45 vs others <= 0.25; adapter sims >= 0.6 vs base <= 0.35. The fit sits
    # strictly inside both gaps, not on an edge.
    assert 0.25 < fitted.rag_min_score <= 0.45
    assert 0.35 < fitted.adapter_min_similarity <= 0.6
    report = cal.evaluate(fitted, samples)
    assert report.accuracy == 1.0 and report.misrouted == []
    assert report.confusion == {
        "rag": {"rag": 4, "adapter": 0, "base": 0},
        "adapter": {"rag": 0, "adapter": 3, "base": 0},
        "base": {"rag": 0, "adapter": 0, "base": 3},
    }
    strict = RouterSettings(rag_min_score=0.9, adapter_min_similarity=0.9)
    worse = cal.evaluate(strict, samples)
    assert worse.confusion["rag"]["base"] == 4 and worse.confusion["adapter"]["base"] == 3
    assert worse.accuracy == pytest.approx(3 / 10)
    assert worse.misrouted[0]["expected"] == "rag" and worse.misrouted[0]["got"] == "base"


def test_small_talk_and_domain_scores() -> None:
    assert is_small_talk("Hello!") and is_small_talk("thanks a lot") and is_small_talk("Who are you?")
    assert not is_small_talk("How do I ingest documents?")
    assert not is_small_talk("hello, how do I configure the chroma server url for a cluster deployment today?")
    scores = domain_scores([1.0, 0.0], {"a": [[0.0, 1.0], [0.6, 0.8]], "b": [[-1.0, 0.0]]})
    assert scores == {"a": pytest.approx(0.6), "b": pytest.approx(-1.0)}


@pytest.mark.slow
def test_calibrate_command_on_the_shipped_set(tmp_path: Path) -> None:
    env = {**os.environ, "ENCLAVE_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    out, report = tmp_path / "router.yaml", tmp_path / "router.json"
    proc = subprocess.run(
        [sys.executable, "-m", "enclave.cli.main", "router", "calibrate", "--write", str(out), "--report", str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "confusion" in proc.stdout and "cross-validated" in proc.stdout
    result = json.loads(report.read_text())
    assert result["queries"] >= 90 and result["adapters"] == ["hr"]
    # The shipped defaults meet the target on the shipped set, and fitting does not make them worse;
    # the cross-validated figure is the honest one.
    assert result["current"]["accuracy"] >= 0.95, result["current"]["misrouted"]
    assert result["fitted"]["accuracy"] >= result["current"]["accuracy"]
    assert result["cross_validated_accuracy"] >= 0.9
    # Every labelled route is predicted at least once, and the matrix adds up.
    conf = result["fitted"]["confusion"]
    assert sum(sum(row.values()) for row in conf.values()) == result["queries"]
    assert all(conf[r][r] > 0 for r in ("rag", "adapter", "base"))
    # The written file is a settings file the service reads.
    fitted = yaml.safe_load(out.read_text())["router"]
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from enclave.core.settings import Settings; print(Settings().router.model_dump_json())",
        ],
        env={**env, "ENCLAVE_CONFIG": str(out)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(check.stdout) == fitted
