"""QA pairs worth training on: questions that name their subject, vetted against a real knowledge base.

The vetting runs on real Chroma and the real MiniLM embedder; the model-written pairs run on the real
default model through `enclave tune dataset --generator llm`, and through a scripted backend (a fake at the
backend seam) for the fallback rules, which a real model cannot be made to trigger on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from enclave.adapters.tuning.dataset import ChunkRecord, QAPair, generate_pairs, generate_pairs_llm, vet
from enclave.core.protocols import GenerationParams, Message, Principal
from enclave.core.settings import DEFAULT_BASE_MODEL, Settings
from enclave.knowledge.store import KnowledgeBase
from tests.conftest import FAST_BASE, MODEL_CACHE

ROOT = Path(__file__).resolve().parents[1]

CREATE_TABLE = (
    "CREATE TABLE defines a new table in the current database. The table is owned by the user who runs the "
    "command. Basic requirement is that the name differs from any other table, sequence, index or view in "
    "the same schema."
)
VACUUM = (
    "VACUUM reclaims storage occupied by dead tuples. Without it, deleted and updated rows keep taking space "
    "on disk. VACUUM ANALYZE also refreshes the planner's statistics for each table it processes."
)
LISTEN = (
    "LISTEN registers the current session as a listener on the notification channel. When NOTIFY is run on "
    "that channel, every listening session receives the payload."
)


def test_rule_questions_name_their_page_when_the_topic_does_not() -> None:
    chunks = [
        ChunkRecord("t1", "Synopsis\n" + CREATE_TABLE, "CREATE TABLE", "create_table.md", "Synopsis"),
        ChunkRecord("v1", "VACUUM options\n" + VACUUM, "VACUUM", "vacuum.md", "VACUUM options"),
    ]
    questions = {p.question for p in generate_pairs(chunks)}
    # The examples: "Explain synopsis." and "What is basic requirement?" said nothing of CREATE TABLE.
    assert "What does CREATE TABLE say about synopsis?" in questions
    assert "Explain synopsis in CREATE TABLE." in questions
    assert "What is Basic requirement in CREATE TABLE?" in questions
    # A topic that already names its page is not qualified twice.
    assert "Explain VACUUM options." in questions
    assert not any(q.endswith("in VACUUM.") for q in questions)


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeBase]:
    s = Settings(data_dir=str(tmp_path_factory.mktemp("kb")))  # type: ignore[call-arg]
    kb = KnowledgeBase.from_settings(s)
    for uri, title, body in [
        ("create_table.md", "CREATE TABLE", CREATE_TABLE),
        ("vacuum.md", "VACUUM", VACUUM),
        ("listen.md", "LISTEN", LISTEN),
    ]:
        kb.ingest_bytes(uri, f"# {title}\n\n{body}\n".encode(), "sql")
    yield kb


def _records(kb: KnowledgeBase) -> list[ChunkRecord]:
    return [
        ChunkRecord(id=c["id"], text=c["text"], title=c["title"], uri=c["uri"], section=c["section"])
        for c in kb.iter_chunks("sql")
    ]


def test_vetting_keeps_only_pairs_that_find_their_passage_and_are_supported_by_it(kb: KnowledgeBase) -> None:
    chunks = _records(kb)
    by_uri = {c.uri: c for c in chunks}
    vac, tab = by_uri["vacuum.md"], by_uri["create_table.md"]

    def pair(q: str, a: str, c: ChunkRecord) -> QAPair:
        return QAPair(q, a, c.id, c.uri, c.title, "test")

    pairs = [
        pair("What does VACUUM reclaim?", "VACUUM reclaims storage occupied by dead tuples.", vac),
        # Retrieves its page, but the answer is not what the page says.
        pair("What does VACUUM do to the planner?", "VACUUM encrypts every table with a key from the vault.", vac),
        # Its answer is on the VACUUM page, but the question finds LISTEN's page, not that one.
        pair("Which session receives a NOTIFY payload?", "Deleted and updated rows keep taking space.", vac),
        # The same question again, asked a little differently.
        pair("What does VACUUM reclaim ?", "VACUUM reclaims storage occupied by dead tuples.", vac),
        pair("Who owns a table made by CREATE TABLE?", "The table is owned by the user who runs the command.", tab),
    ]
    search_calls: list[str] = []

    def search(q: str) -> list[object]:
        search_calls.append(q)
        return list(kb.search(q, "sql", Principal(), k=1))

    steps: list[tuple[int, int]] = []
    kept, why = vet(pairs, chunks, search, kb.embedder.embed, progress=lambda i, n: steps.append((i, n)))
    assert [p.question for p in kept] == ["What does VACUUM reclaim?", "Who owns a table made by CREATE TABLE?"]
    assert why == {"written": 5, "kept": 2, "not_retrieved": 1, "unsupported": 1, "duplicate": 1}
    assert kept[0].checks["page_rank"] == 1 and kept[0].checks["support"] >= 0.5
    assert steps[-1] == (5, 5) and len(search_calls) == 5


class Scripted:
    """A backend that replies from a script, one reply per call (a fake at the backend seam)."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.prompts: list[list[Message]] = []

    async def stream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[str]:
        self.prompts.append(messages)
        yield self.replies[len(self.prompts) - 1]


def test_model_written_pairs_fall_back_to_the_rules_where_the_reply_is_unusable() -> None:
    chunks = [
        ChunkRecord("v1", VACUUM, "VACUUM", "vacuum.md", "Storage"),
        ChunkRecord("t1", CREATE_TABLE, "CREATE TABLE", "create_table.md", "Synopsis"),
    ]
    backend = Scripted(["Q: What does VACUUM reclaim?\nA: Storage occupied by dead tuples.", "I cannot help."])
    seen: list[int] = []
    pairs = asyncio.run(generate_pairs_llm(backend, chunks, progress=lambda i, n: seen.append(i)))  # type: ignore[arg-type]
    assert pairs[0].question == "What does VACUUM reclaim?" and pairs[0].kind == "llm"
    assert {p.kind for p in pairs[1:]} <= {"heading", "definition"} and pairs[1:], "the rules filled in"
    assert all(p.chunk_id == "t1" for p in pairs[1:])
    assert seen == [1, 2]
    # The model is told the page and section, so its question can name them.
    assert 'From the page "VACUUM", section "Storage"' in backend.prompts[0][1].content


@pytest.mark.slow
def test_tune_dataset_with_the_model_writing_the_pairs(tmp_path: Path) -> None:
    """`enclave tune dataset --generator llm` on the default model: pairs written, vetted, saved, reported."""
    env = {
        **os.environ,
        "ENCLAVE_DATA_DIR": str(tmp_path),
        "ENCLAVE_MODELS__CACHE_DIR": str(MODEL_CACHE),
        "ENCLAVE_MODELS__BASE": DEFAULT_BASE_MODEL,  # the pairs are written by the default model, as users get
        "HF_HUB_OFFLINE": "1",
    }
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, title, body in [("vacuum.md", "VACUUM", VACUUM), ("listen.md", "LISTEN", LISTEN)]:
        (docs / name).write_text(f"# {title}\n\n{body}\n")
    enclave = [sys.executable, "-m", "enclave.cli.main"]
    subprocess.run([*enclave, "ingest", str(docs), "--collection", "sql"], env=env, check=True, cwd=ROOT)
    run = subprocess.run(
        [*enclave, "tune", "dataset", "--collection", "sql", "--generator", "llm"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in (tmp_path / "datasets" / "sql.jsonl").read_text().splitlines()]
    assert rows and all(r["question"].endswith("?") or r["kind"] != "llm" for r in rows)
    # The default model writes usable questions here (the rules' fallback is for replies it cannot parse),
    # and each names its subject.
    llm = [r for r in rows if r["kind"] == "llm"]
    assert llm and all("VACUUM" in r["question"] or "LISTEN" in r["question"] for r in llm), llm
    assert all(r["checks"]["page_rank"] >= 1 and r["checks"]["support"] >= 0.5 for r in rows), rows
    assert "pairs from 2 chunks" in run.stderr
    # `tune train --collection` reads what `tune dataset --collection` wrote (it used to look for docs.jsonl).
    train = subprocess.run(
        [*enclave, "tune", "train", "--name", "sqlguide", "--collection", "sql", "--max-steps", "1"],
        env={**env, "ENCLAVE_MODELS__BASE": FAST_BASE},  # what is tested here is where it reads; fast model
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "adapters" / "sqlguide" / "adapter_config.json").is_file()
