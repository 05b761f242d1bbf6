"""A floor on what a user reads: ten questions over the sample documents, the real default model, the real pipeline.

Each question has one right answer in one sample document. Scored as bench/answers scores them: the answer
names the expected thing, cites (or is grounded to) its document, and never loops. The floors sit below
what the defaults reach here, so a change that makes answers worse fails `make test`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.answers import degenerate, names
from enclave.chat.grounding import UNVERIFIED_NOTICE
from enclave.core.settings import Settings
from tests.conftest import MODEL_CACHE

pytestmark = pytest.mark.slow

# (question, what the answer must name, the sample document that says it)
QUESTIONS = [
    ("How do I ingest documents into Enclave?", "enclave ingest", "03-knowledge-base.md"),
    ("Which environment variable sets the data directory?", "ENCLAVE_DATA_DIR", "01-getting-started.md"),
    ("Which embedding model does Enclave use?", "all-MiniLM-L6-v2", "01-getting-started.md"),
    ("Which model is the default base model?", "Qwen2.5-Coder-0.5B-Instruct", "01-getting-started.md"),
    ("Which command trains a LoRA adapter?", "enclave tune train", "04-adapters.md"),
    ("Which command starts the model server?", "enclave model-server", "04-adapters.md"),
    ("Which HTTP endpoint uploads documents?", "/v1/documents", "03-knowledge-base.md"),
    ("Which HTTP endpoint lists the adapters?", "/v1/adapters", "04-adapters.md"),
    ("What is the default chunk size in characters?", "800", "03-knowledge-base.md"),
    ("Which vector store does Enclave use?", "Chroma", "03-knowledge-base.md"),
]
# Five questions users asked that were answered wrong with confidence (issue 34): each must be answered right or
# declined (or shown as unverified with the passages quoted), never a made-up answer shown as if checked.
# (question, route, words of which a right answer names one; none: only a decline is right)
HONESTY = [
    ("Which transports does Enclave offer?", "rag", ("WebSocket", "SSE", "Server-sent", "OpenAI")),
    ("What command lists the collections and their documents?", "rag", ("enclave kb list",)),
    ("How are adapters evaluated?", "rag", ("enclave tune eval", "cosine")),
    ("Who is the CEO of our company?", "auto", ()),
    ("What is the office wifi password?", "auto", ()),
]
# The default model (SmolLM2-135M) named the right thing in 4 of these 10 on 2026-12-01: the floors catch a
# regression, they are not the targets (bench/answers holds those).
# On 2026-12-02: SmolLM2 6 right, 8 grounded; Qwen2.5-Coder-0.5B with its prompt (passages-with-example) 6 and 7.
# Per base: (right answers, answers grounded to their document) at least.
FLOORS = {"smollm2-135m-instruct": (3, 2), "qwen2.5-coder-0.5b-instruct": (4, 4)}


@pytest.fixture(scope="module", params=list(FLOORS))
def answers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    from enclave.api.auth import ANONYMOUS
    from enclave.api.state import State
    from enclave.chat.schema import ChatRequest

    data = tmp_path_factory.mktemp("quality")
    models = {"cache_dir": str(MODEL_CACHE), "temperature": 0.0, "base": request.param}
    settings = Settings(data_dir=str(data), models=models)  # type: ignore[arg-type]
    state = State(settings)

    async def run() -> list[dict[str, Any]]:
        await state.load()
        assert state.ready, state.load_error
        out = []
        for question, entity, doc in QUESTIONS:
            got: dict[str, Any] = {
                "question": question,
                "entity": entity,
                "doc": doc,
                "text": "",
                "sources": [],
                "base": request.param,
            }
            req = ChatRequest(message=question, route="rag", max_tokens=96)
            async for ev in state.pipeline.run(req, ANONYMOUS):
                if ev.type == "token":
                    got["text"] += ev.text
                elif ev.type == "sources":
                    got["sources"] = [Path(s.uri).name for s in ev.sources]
                elif ev.type == "citations":
                    got["citations"] = ev.model_dump()
                elif ev.type in ("done", "error"):
                    got["end"] = ev.model_dump()
            out.append(got)
        for question, route, right in HONESTY:
            got = {"question": question, "right": right, "text": "", "honesty": True, "base": request.param}
            async for ev in state.pipeline.run(ChatRequest(message=question, route=route, max_tokens=96), ANONYMOUS):
                if ev.type == "token":
                    got["text"] += ev.text
                elif ev.type == "citations":
                    got["citations"] = ev.model_dump()
                elif ev.type in ("done", "error"):
                    got["end"] = ev.model_dump()
            out.append(got)
        return out

    try:
        yield asyncio.run(run())
    finally:
        state.close()


def grounded_to(answer: dict[str, Any]) -> set[str]:
    """The documents the checked citations point at."""
    sentences = (answer.get("citations") or {}).get("sentences", [])
    return {answer["sources"][s["source"] - 1] for s in sentences if s["source"]}


def test_answers_name_the_right_thing_and_point_at_its_document(answers: list[dict[str, Any]]) -> None:
    answers = [a for a in answers if not a.get("honesty")]
    min_right, min_grounded = FLOORS[answers[0]["base"]]
    # a decline names nothing as the answer, whatever its quoted passages mention (as bench.answers scores it)
    right = [a for a in answers if names(a["text"], a["entity"]) and a["end"].get("documents") != "declined"]
    grounded = [a for a in answers if a["doc"] in grounded_to(a)]
    report = "\n".join(f"{a in right!s:5} {a['question']} -> {a['text'][:160]!r}" for a in answers)
    print(f"\n{answers[0]['base']}: {len(right)} right, {len(grounded)} grounded to their document")
    assert len(right) >= min_right, report
    assert len(grounded) >= min_grounded, report


def test_no_answer_loops_and_every_one_ends(answers: list[dict[str, Any]]) -> None:
    for a in answers:
        assert a["end"]["type"] == "done", (a["end"], a["text"])
        assert not degenerate(a["text"], a["end"]["finish_reason"]), a["text"]


def honest_outcome(a: dict[str, Any]) -> str:
    """right, declined, flagged (shown as unverified, the passages quoted after it) or fabricated."""
    text, end = a["text"], a["end"]
    if end.get("documents") == "declined":  # whatever its quoted passages name
        return "declined"
    if any(names(text, word) for word in a["right"]):
        return "right"
    if (a.get("citations") or {}).get("unverified") or UNVERIFIED_NOTICE in text:
        return "flagged"
    return "fabricated"


def test_questions_answered_wrong_with_confidence_before_are_now_right_or_declined(
    answers: list[dict[str, Any]],
) -> None:
    outcomes = [(honest_outcome(a), a["question"], a["text"][:200]) for a in answers if a.get("honesty")]
    print("\n" + "\n".join(f"{o:10} {q} -> {t!r}" for o, q, t in outcomes))
    assert len(outcomes) == len(HONESTY)
    assert all(o != "fabricated" for o, _, _ in outcomes), outcomes
    for o, q, _ in outcomes:
        if "our company" in q or "office wifi" in q:
            assert o == "declined", (q, o)
