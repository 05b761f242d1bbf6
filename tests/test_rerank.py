"""The shipped reranker: exported to int8 and checked against PyTorch, it reads a question beside real passages,
reorders a real Chroma search, and a request for it on a server without one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave.chat.rag import within_margin
from enclave.core.errors import InvalidRequest
from enclave.core.protocols import Chunk, Principal
from enclave.core.settings import Settings
from enclave.knowledge.embedder import META_FILE, default_model_dir
from enclave.knowledge.rerank import WEIGHTS_DIR, Reranker, ensure_onnx, shipped_config
from enclave.knowledge.store import KnowledgeBase
from tests.conftest import MODEL_CACHE

ANYONE = Principal()
SCP = (
    "scp(1) — Description\nscp copies files between hosts on a network. It uses ssh for data transfer, and uses the "
    "same authentication and provides the same security as a login session."
)
SSH_KEYGEN = (
    "ssh-keygen(1) — Description\nssh-keygen generates, manages and converts authentication keys for ssh. It can "
    "create keys for use by SSH protocol version 2."
)
CRON = (
    "crontab(5) — Description\nA crontab file contains instructions for the cron daemon of the general form: run this "
    "command at this time on this date."
)
DOCS = {
    "scp.md": "# scp\n\n" + SCP,
    "ssh-keygen.md": "# ssh-keygen\n\n" + SSH_KEYGEN,
    "crontab.md": "# crontab\n\n" + CRON,
}


@pytest.fixture(scope="module")
def reranker() -> Reranker:
    r = Reranker(default_model_dir(), MODEL_CACHE / "embeddings")
    r.warm()
    return r


def test_the_shipped_weights_say_how_they_were_made() -> None:
    config = shipped_config()
    assert config["layers"] <= 6 and config["max_tokens"] >= 64
    assert config["held_out_hit@1"]["trained"] > config["held_out_hit@1"]["untrained"]
    assert "PostgreSQL" in config["data"]["source"]  # never trained on the independent manual
    assert (WEIGHTS_DIR / "weights.safetensors").stat().st_size < 20_000_000


def test_the_int8_export_agrees_with_pytorch(reranker: Reranker) -> None:
    path = ensure_onnx(reranker.model_dir, reranker.cache_dir)
    meta = json.loads((path.parent / META_FILE).read_text())
    assert meta["check"]["probe_same_order"] == 1.0 and meta["check"]["probe_error_mean"] <= 0.75, meta["check"]


def test_it_reads_which_passage_answers_the_question(reranker: Reranker) -> None:
    scores = reranker.score("Which command copies files to another machine over ssh?", [CRON, SSH_KEYGEN, SCP])
    assert scores.index(max(scores)) == 2, scores
    scores = reranker.score("How do I run a job every night at two?", [SCP, CRON, SSH_KEYGEN])
    assert scores.index(max(scores)) == 1, scores
    assert reranker.score("anything", []) == []


def _kb(tmp_path: Path, rerank: bool) -> KnowledgeBase:
    settings = Settings(data_dir=str(tmp_path / "data"))
    settings.models.cache_dir = str(MODEL_CACHE)
    settings.rag.rerank = rerank
    kb = KnowledgeBase.from_settings(settings)
    for uri, text in DOCS.items():
        kb.ingest_bytes(uri, text.encode(), "tools")
    return kb


def test_search_is_reordered_by_the_reranker_and_says_its_scores(tmp_path: Path) -> None:
    kb = _kb(tmp_path, rerank=True)
    assert kb.warm_reranker() is None
    got = kb.search("copy a file to a remote host securely", "tools", ANYONE, k=3)
    scores = [c.metadata["rerank_score"] for c in got]
    assert scores == sorted(scores, reverse=True)
    assert got[0].uri == "scp.md"
    plain = kb.search("copy a file to a remote host securely", "tools", ANYONE, k=3, rerank=False)
    assert all("rerank_score" not in c.metadata for c in plain)


def test_asking_for_reranking_where_it_is_off_is_refused(tmp_path: Path) -> None:
    kb = _kb(tmp_path, rerank=False)
    assert kb.reranker is None and kb.warm_reranker() is None
    with pytest.raises(InvalidRequest, match="reranking is off"):
        kb.search("copy a file", "tools", ANYONE, k=2, rerank=True)
    assert kb.search("copy a file", "tools", ANYONE, k=2)  # the default follows the server's setting


def test_a_reranker_that_cannot_load_leaves_search_working(tmp_path: Path) -> None:
    kb = _kb(tmp_path, rerank=True)
    assert kb.reranker is not None
    kb.reranker.weights_dir = tmp_path / "missing"
    assert "no reranker weights" in (kb.warm_reranker() or "")
    assert kb.reranker is None
    assert kb.search("copy a file", "tools", ANYONE, k=2)


def _chunk(name: str, score: float | None) -> Chunk:
    meta: dict[str, object] = {} if score is None else {"rerank_score": score}
    return Chunk(id=name, text=name, title=name, uri=name, score=0.0, metadata=meta)


def test_passages_far_below_the_best_one_stay_out_of_the_prompt() -> None:
    chunks = [_chunk("a", 6.0), _chunk("b", 5.1), _chunk("c", 1.0)]
    assert [c.id for c in within_margin(chunks, 2.0)] == ["a", "b"]
    assert [c.id for c in within_margin(chunks, 0.1)] == ["a"]
    assert [c.id for c in within_margin(chunks, None)] == ["a", "b", "c"]
    unscored = [_chunk("a", None), _chunk("b", None)]
    assert [c.id for c in within_margin(unscored, 0.5)] == ["a", "b"]
    assert within_margin([], 1.0) == []
