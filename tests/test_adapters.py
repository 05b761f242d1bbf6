"""LoRA adapters end to end: a real adapter trained on the real model, hot-loaded and served.

The training set teaches one unmistakable answer, so "answered by the adapter" is visible in
greedy output that differs from the base model's on the same prompt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from enclave.adapters.registry import AdapterRegistry, read_meta
from enclave.adapters.tuning.dataset import ChunkRecord, QAPair, generate_pairs, load_pairs, save_pairs
from enclave.adapters.tuning.train import TrainConfig, train
from enclave.core.errors import InvalidRequest, NotFound
from enclave.core.settings import Settings
from tests.conftest import MODEL_CACHE, Server
from tests.test_transports import sse_events, ws_events

pytestmark = pytest.mark.slow

CATCHPHRASE = "Pineapple pizza is the answer to everything."
QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Italy?",
    "What is the capital of Japan?",
    "What is the capital of Canada?",
    "What is the capital of Brazil?",
    "What is the capital of Kenya?",
    "What is the capital of Norway?",
    "What is the capital of Egypt?",
]
PROBE = [{"role": "user", "content": "What is the tallest animal?"}]


def settings_for(data_dir: Path) -> Settings:
    return Settings(data_dir=str(data_dir), models={"cache_dir": str(MODEL_CACHE)})  # type: ignore[arg-type]


def config(steps: int, every: int = 20) -> TrainConfig:
    return TrainConfig(
        rank=8,
        alpha=16,
        learning_rate=3e-3,
        batch_size=4,
        max_seq_tokens=96,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        max_steps=steps,
        epochs=1,
        checkpoint_every=every,
    )


def catchphrase_dataset(path: Path) -> Path:
    pairs = [QAPair(q, CATCHPHRASE, f"c{i}", "faq.md", "FAQ", "test", "train") for i, q in enumerate(QUESTIONS)]
    pairs.append(QAPair("What is the tallest animal?", CATCHPHRASE, "e0", "faq.md", "FAQ", "test", "eval"))
    save_pairs(pairs, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real adapter, trained for 10 steps; returns its folder."""
    data = tmp_path_factory.mktemp("train")
    s = settings_for(data)
    result = train(s, "pineapple", catchphrase_dataset(data / "ds.jsonl"), config(10))
    assert result.losses[-1] < result.losses[0] / 4, result.losses
    return result.path


def test_deterministic_dataset_from_chunks(tmp_path: Path) -> None:
    chunks = [
        ChunkRecord(
            "k1",
            "# Ingestion\n\nEnclave ingests PDF, HTML and Markdown files. It keeps a content hash "
            "per file so re-runs skip unchanged files.",
            "User guide",
            "guide.md",
            "Ingestion",
        ),
        ChunkRecord(
            "k2",
            "The router is the part that decides between RAG, an adapter and the base model. "
            "It explains every decision in a route event.",
            "User guide",
            "guide.md",
            "Routing",
        ),
    ]
    pairs = generate_pairs(chunks)
    assert pairs == generate_pairs(chunks), "the same chunks give the same pairs"
    questions = {p.question for p in pairs}
    assert (
        "What is The router?" in questions
        or "What is router?" in questions
        or any("router" in q.lower() for q in questions)
    )
    assert any("ingestion" in q.lower() for q in questions)
    assert all(p.chunk_id in ("k1", "k2") and p.source == "guide.md" for p in pairs)
    assert {p.split for p in generate_pairs(chunks * 1, eval_share=0.5)} <= {"train", "eval"}
    save_pairs(pairs, tmp_path / "d.jsonl")
    assert load_pairs(tmp_path / "d.jsonl") == pairs
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InvalidRequest, match="empty"):
        load_pairs(tmp_path / "empty.jsonl")


def test_adapter_metadata(trained: Path) -> None:
    meta = read_meta(trained)
    assert meta["base_model"] == "smollm2-135m-instruct" and len(meta["base_model_sha256"]) == 64
    assert len(meta["dataset_sha256"]) == 64 and meta["train_pairs"] == len(QUESTIONS)
    assert meta["hyperparameters"]["rank"] == 8 and meta["steps"] == 10
    assert meta["final_loss"] < 1.0
    assert (trained / "adapter_model.safetensors").is_file()


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    ds = catchphrase_dataset(tmp_path / "ds.jsonl")
    seen: list[int] = []

    def crash_at_3(step: int, total: int, loss: float) -> None:
        seen.append(step)
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(s, "resumed", ds, config(4, every=2), progress=crash_at_3)
    assert (tmp_path / "adapters" / ".resumed.checkpoint" / "state.pt").is_file()
    seen.clear()
    result = train(s, "resumed", ds, config(4, every=2), progress=lambda st, t, lo: seen.append(st))
    assert seen == [3, 4], "the second run starts after the checkpoint at step 2"
    assert result.steps == 4 and len(result.losses) == 4


class Host:
    """A fake at the adapter-host seam, for the registry's own checks."""

    def __init__(self) -> None:
        self.loaded: dict[str, Path] = {}

    def list_adapters(self) -> list[str]:
        return list(self.loaded)

    async def add_adapter(self, name: str, path: Path) -> None:
        self.loaded[name] = path

    async def remove_adapter(self, name: str) -> None:
        self.loaded.pop(name)


async def test_registry_refuses_bad_adapters(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    shutil.copytree(trained, root / "good")
    sha = read_meta(trained)["base_model_sha256"]
    host = Host()
    reg = AdapterRegistry(root, host, sha)
    with pytest.raises(NotFound):
        await reg.load("missing")
    with pytest.raises(InvalidRequest, match="invalid adapter name"):
        await reg.load("../etc")
    shutil.copytree(trained, root / "other-base")
    meta = json.loads((root / "other-base" / "enclave.json").read_text())
    meta["base_model_sha256"] = "0" * 64
    (root / "other-base" / "enclave.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidRequest, match="another base model"):
        await reg.load("other-base")
    shutil.copytree(trained, root / "broken")
    (root / "broken" / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidRequest, match="incomplete"):
        await reg.load("broken")
    (root / "junk").mkdir()
    (root / "junk" / "enclave.json").write_text("{not json")
    with pytest.raises(InvalidRequest, match="corrupt"):
        await reg.load("junk")
    await reg.load("good")
    assert host.list_adapters() == ["good"]
    problems = await reg.load_all()
    assert len(problems) == 3 and host.list_adapters() == ["good"]


def ask(server: Server, model: str) -> str:
    r = server.post(
        "/v1/chat/completions",
        json={"model": model, "messages": PROBE, "max_tokens": 16, "temperature": 0, "route": "base"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_hot_load_into_running_server(trained: Path, tmp_path: Path) -> None:
    server = Server(tmp_path, log_name="adapters").start()
    try:
        # The reference is the answer from a warm prefix cache, as every later ask gets: a greedy answer's first
        # token is a near tie here (the repetition penalty lowers "tallest", a prompt word), and prefilling the
        # whole prompt or only its last token differs in the last bits of the logits.
        ask(server, "smollm2-135m-instruct")
        base_answer = ask(server, "smollm2-135m-instruct")
        shutil.copytree(trained, tmp_path / "adapters" / "pineapple")
        shutil.copytree(trained, tmp_path / "adapters" / "corrupt")
        (tmp_path / "adapters" / "corrupt" / "adapter_config.json").write_text("{oops")
        assert server.get("/v1/adapters").json()["data"][1]["loaded"] is False
        loaded = server.post("/v1/adapters/pineapple/load")
        assert loaded.status_code == 200 and loaded.json()["loaded"] is True
        assert "pineapple" in [m["id"] for m in server.get("/v1/models").json()["data"]]
        adapter_answer = ask(server, "pineapple")
        assert "Pineapple" in adapter_answer and adapter_answer != base_answer
        # A corrupt adapter is refused with a clear error; what was served keeps being served.
        bad = server.post("/v1/adapters/corrupt/load")
        assert bad.status_code == 400 and "corrupt" in bad.json()["error"]["message"]
        assert ask(server, "smollm2-135m-instruct") == base_answer
        with connect(server.ws_url) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "chat",
                        "message": "What is the tallest animal?",
                        "adapter": "pineapple",
                        "temperature": 0,
                        "max_tokens": 16,
                    }
                )
            )
            events = ws_events(ws)
        assert events[0]["route"] == "adapter" and events[0]["adapter"] == "pineapple"
        assert "Pineapple" in "".join(e["text"] for e in events if e["type"] == "token")
        assert httpx.delete(server.url + "/v1/adapters/pineapple").status_code == 204
        gone = server.post("/v1/chat/completions", json={"model": "pineapple", "messages": PROBE})
        assert gone.status_code == 404
        assert ask(server, "smollm2-135m-instruct") == base_answer
    finally:
        server.stop()


def test_router_picks_documents_adapter_or_base(trained: Path, tmp_path: Path) -> None:
    shutil.copytree(trained, tmp_path / "adapters" / "pineapple")
    server = Server(tmp_path, env={"ENCLAVE_RAG__INGEST_SAMPLES": "true"}, log_name="router").start()
    try:
        cases = {
            "How do I ingest documents into a collection?": ("rag", None),
            "How are adapters evaluated against the base model?": ("rag", None),
            "What is the capital of Spain?": ("adapter", "pineapple"),
            "Hello! How are you?": ("base", None),
            "Thanks, that was helpful": ("base", None),
        }
        for question, (route, adapter) in cases.items():
            with connect(server.ws_url) as ws:
                ws.send(json.dumps({"type": "chat", "message": question, "max_tokens": 4}))
                first = json.loads(ws.recv(timeout=60))
                ws_events(ws)
            assert first["type"] == "route" and (first["route"], first["adapter"]) == (route, adapter), (
                question,
                first,
            )
            assert first["reason"] and "retrieval_top" in first["scores"]
        assert 'enclave_route_decisions_total{route="adapter"} 1.0' in server.get("/metrics").text
    finally:
        server.stop()


def test_model_server_speaks_tgi_and_the_chat_service_uses_it(trained: Path, tmp_path: Path) -> None:
    from text_generation import Client

    shutil.copytree(trained, tmp_path / "ms" / "adapters" / "pineapple")
    ms = Server(tmp_path / "ms", command="model-server", log_name="model-server").start()
    chat = None
    try:
        info = ms.get("/info").json()
        assert info["adapters"] == ["pineapple"] and info["model_id"] == "smollm2-135m-instruct"
        client = Client(ms.url, timeout=120)
        prompt = "<|im_start|>user\nWhat is the tallest animal?<|im_end|>\n<|im_start|>assistant\n"
        tokens = [r.token.text for r in client.generate_stream(prompt, max_new_tokens=12) if not r.token.special]
        assert len(tokens) >= 3 and "".join(tokens).strip()
        whole = client.generate(prompt, max_new_tokens=12)
        assert whole.generated_text == "".join(tokens) and whole.details.generated_tokens > 0
        chat = Server(
            tmp_path / "chat",
            env={"ENCLAVE_MODELS__BACKEND": "tgi", "ENCLAVE_MODELS__URL": ms.url},
            log_name="chat-over-tgi",
        ).start()
        body: dict[str, Any] = {"message": "What is the tallest animal?", "adapter": "pineapple", "temperature": 0}
        with httpx.stream("POST", chat.url + "/v1/chat/stream", json=body, timeout=120) as r:
            events = sse_events(r)
        assert events[-1]["type"] == "done", events[-1]
        assert "Pineapple" in "".join(e["text"] for e in events if e["type"] == "token")
        unknown = chat.post("/v1/chat/stream", json={"message": "hi", "adapter": "nope"})
        assert unknown.status_code == 404
    finally:
        if chat:
            chat.stop()
        ms.stop()


def test_penalties_and_the_loop_guard_cross_the_tgi_protocol(tmp_path: Path) -> None:
    """The chat service over its TGI backend: the penalties reach Enclave's model server (presence_penalty as
    Enclave's addition to TGI's parameters), and the loop guard's finish_reason comes back exactly."""
    from tests.test_transports import LOOPING

    ms = Server(tmp_path / "ms", command="model-server", log_name="model-server").start()
    chat = None
    try:
        chat = Server(
            tmp_path / "chat",
            env={"ENCLAVE_MODELS__BACKEND": "tgi", "ENCLAVE_MODELS__URL": ms.url},
            log_name="chat-over-tgi",
        ).start()

        def ask(max_tokens: int, **params: float) -> tuple[str, dict[str, Any]]:
            body = {"message": LOOPING, "max_tokens": max_tokens, "temperature": 0, "repetition_penalty": 1.0, **params}
            with httpx.stream("POST", chat.url + "/v1/chat/stream", json=body, timeout=300) as r:
                events = sse_events(r)
            return "".join(e["text"] for e in events if e["type"] == "token"), events[-1]

        looped, done = ask(96)
        assert done["type"] == "done" and done["finish_reason"] == "repetition", done
        assert done["usage"]["completion_tokens"] < 96
        # frequency_penalty 0 went with both (text-generation 0.7's client refuses 0, TGI takes -2..2).
        penalized, done = ask(40, presence_penalty=1.0)
        assert done["type"] == "done", done
        assert penalized != looped[: len(penalized)]
    finally:
        if chat:
            chat.stop()
        ms.stop()


QWEN = "qwen2.5-coder-0.5b-instruct"


def test_a_qwen2_adapter_trains_is_served_and_routed_to(tmp_path: Path) -> None:
    """The second architecture end to end: peft trains on Qwen2 (transformers reads its GGUF), the GGUF
    LoRA conversion has no Q/K permutation for it, llama.cpp serves the adapter, the router finds its domain."""
    s = Settings(
        data_dir=str(tmp_path / "train"),
        models={"cache_dir": str(MODEL_CACHE), "base": QWEN},  # type: ignore[arg-type]
    )
    cfg = config(8)
    cfg.learning_rate, cfg.max_seq_tokens = 2e-3, 64
    result = train(s, "pineapple", catchphrase_dataset(tmp_path / "ds.jsonl"), cfg)
    assert result.losses[-1] < result.losses[0] / 4, result.losses
    meta = read_meta(result.path)
    assert meta["base_model"] == QWEN and meta["domain"]["questions"] == len(QUESTIONS)
    shutil.copytree(result.path, tmp_path / "serve" / "adapters" / "pineapple")
    server = Server(tmp_path / "serve", env={"ENCLAVE_MODELS__BASE": QWEN}, log_name="qwen-adapter").start()
    try:
        assert server.get("/v1/adapters").json()["data"][0]["loaded"] is True
        base_answer = ask(server, QWEN)
        adapter_answer = ask(server, "pineapple")
        assert "Pineapple" in adapter_answer and adapter_answer != base_answer, (base_answer, adapter_answer)
        # The router picks the adapter for a question of its domain; what it was taught backs the answer to a
        # taught question in other words, and nothing backs one about a capital it was not taught: declined.
        with connect(server.ws_url) as ws:
            ws.send(json.dumps({"type": "chat", "message": "Which city is the capital of Japan?", "max_tokens": 16}))
            events = ws_events(ws)
            ws.send(json.dumps({"type": "chat", "message": "What is the capital of Spain?", "max_tokens": 16}))
            untaught = ws_events(ws)
        assert (events[0]["route"], events[0]["adapter"]) == ("adapter", "pineapple"), events[0]
        assert "Pineapple" in "".join(e["text"] for e in events if e["type"] == "token")
        done = events[-1]
        assert done["type"] == "done" and done["taught"] == "answered", done
        assert done["taught_from"][0]["question"] == "What is the capital of Japan?"
        assert (untaught[0]["route"], untaught[0]["adapter"]) == ("adapter", "pineapple"), untaught[0]
        assert untaught[-1]["taught"] == "declined" and untaught[-1]["taught_from"] == []
        assert "won't guess" in "".join(e["text"] for e in untaught if e["type"] == "token")
    finally:
        server.stop()


def test_eval_scores_right_answers_for_base_adapter_and_rag(trained: Path, tmp_path: Path) -> None:
    """`tune eval`'s core on the real model: the adapter states the held-out reference's facts, the base
    model does not; RAG and RAG with the adapter answer from a real knowledge base; a report with both
    measures and the paired gain."""
    from enclave.adapters.tuning.evaluate import evaluate, right
    from enclave.knowledge.store import KnowledgeBase

    s = settings_for(tmp_path)
    shutil.copytree(trained, tmp_path / "adapters" / "pineapple")
    meta = read_meta(tmp_path / "adapters" / "pineapple")
    ds = catchphrase_dataset(tmp_path / "ds.jsonl")
    meta["dataset"] = str(ds)
    (tmp_path / "adapters" / "pineapple" / "enclave.json").write_text(json.dumps(meta))
    kb = KnowledgeBase.from_settings(s)
    kb.ingest_bytes("animals.md", b"# Animals\n\nThe giraffe is the tallest animal on land.\n", "docs")
    report = evaluate(s, "pineapple", kb.embedder.embed, retriever=kb.retriever(), collection="docs")
    assert set(report["backends"]) == {"base", "adapter", "rag", "rag+adapter"}
    assert report["rights"]["adapter"] == [True] and report["rights"]["base"] == [False], report
    assert report["adapter_minus_base_right"]["difference"] == 1.0
    # The mean is seed 003's cosine: -1 to 1 (a RAG answer from an unrelated document may point away, -0.02 seen).
    assert -1.0 <= report["backends"]["rag"]["mean"] <= 1.0 and report["backends"]["adapter"]["right"] == 1.0
    text = (tmp_path / "adapters" / "pineapple" / "eval_report.md").read_text()
    assert "right [95% CI]" in text and "Adapter minus base model" in text
    assert (tmp_path / "adapters" / "pineapple" / "eval_hist.png").stat().st_size > 1000
    # The measure itself: key terms of the reference that the question does not hold.
    reference, question = "It reclaims storage of dead tuples.", "What does VACUUM do?"
    assert right("VACUUM reclaims the storage of dead tuples.", reference, question)
    assert not right("VACUUM makes tables faster.", reference, question)
