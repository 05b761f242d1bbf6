"""Fast unit tests at the seams: stop strings, the output gate, the store, settings, admission, router."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Literal

import pytest

from enclave.chat.admission import Admission
from enclave.chat.conversations import SqlConversationStore
from enclave.chat.gate import REDACTED, OutputGate
from enclave.chat.router import RetrievalSignals, SignalRouter
from enclave.chat.schema import ChatRequest
from enclave.core.errors import Overloaded
from enclave.core.protocols import Chunk, Verdict
from enclave.core.settings import RouterSettings, Settings
from enclave.engine.prompting import StopMatcher


def test_stop_matcher_holds_back_a_possible_stop() -> None:
    m = StopMatcher(["END", "\n\n"])
    assert m.split("hello EN") == ("hello ", False)
    assert m.split("hello END there") == ("hello ", True)
    assert m.split("a\n") == ("a", False)
    assert m.split("plain") == ("plain", False)


class RegexModerator:
    """A fake at the Moderator seam: blocks 'forbidden', redacts e-mail addresses."""

    async def check_many(self, texts: Any, stage: Literal["input", "output"], thorough: bool = True) -> list[Verdict]:
        return [await self.check(t, stage, thorough) for t in texts]

    async def check(self, text: str, stage: Literal["input", "output"], thorough: bool = True) -> Verdict:
        if "forbidden" in text:
            return Verdict("block", ["test"])
        spans = [m.span() for m in re.finditer(r"\S+@\S+\.\w+", text)]
        return Verdict("redact", ["pii"], spans) if spans else Verdict()


def run_gate(pieces: list[str], window: int = 3) -> tuple[str, OutputGate]:
    gate = OutputGate(RegexModerator(), window)
    out = [t for p in pieces for t in asyncio.run(gate.push(p))]
    if not gate.blocked:
        out += asyncio.run(gate.finish())
    return "".join(out), gate


def test_gate_never_releases_a_blocked_span() -> None:
    text, gate = run_gate(["this ", "is ", "fine ", "then ", "forb", "idden ", "stuff ", "more"])
    assert gate.blocked and "forb" not in text
    assert text == "this is "  # only what was checked with its window behind it


def test_gate_redacts_across_piece_boundaries() -> None:
    text, gate = run_gate(["mail ", "me ", "at ", "bob", "@exam", "ple.com ", "please ", "ok ", "bye"])
    assert gate.redacted and "bob" not in text and "@" not in text
    assert text == f"mail me at {REDACTED} please ok bye"


def test_gate_without_moderator_passes_through() -> None:
    gate = OutputGate(None, 8)
    assert asyncio.run(gate.push("a")) == ["a"] and asyncio.run(gate.finish()) == []


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SqlConversationStore:
    if request.param == "sqlite":
        return SqlConversationStore(f"sqlite:///{tmp_path / 'c.db'}")
    s = SqlConversationStore("postgresql+psycopg://root@127.0.0.1:5432/test")
    request.addfinalizer(s.close)
    return s


def test_store_contract(store: SqlConversationStore) -> None:
    cid = store.create_conversation("hello", principal="alice")
    store.add_message(cid, "user", "hi")
    mid = store.add_message(cid, "assistant", "", status="incomplete", route="base")
    store.update_message(mid, content="partial answer", status="cancelled", usage={"total_tokens": 3})
    conv = store.get_conversation(cid)
    assert conv is not None and conv["title"] == "hello" and conv["principal"] == "alice"
    assert [(m["role"], m["status"]) for m in conv["messages"]] == [
        ("user", "complete"),
        ("assistant", "cancelled"),
    ]
    assert conv["messages"][1]["usage"] == {"total_tokens": 3}
    assert store.history(cid) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "partial answer"},
    ]
    assert any(c["id"] == cid and c["message_count"] == 2 for c in store.list_conversations("alice"))
    assert all(c["id"] != cid for c in store.list_conversations("bob"))
    assert store.delete_conversation(cid) and store.get_conversation(cid) is None
    assert not store.delete_conversation(cid)


def test_settings_from_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "enclave.yaml"
    cfg.write_text("models:\n  max_tokens: 99\n  temperature: 0.5\nlimits:\n  max_queue: 3\n")
    monkeypatch.setenv("ENCLAVE_CONFIG", str(cfg))
    monkeypatch.setenv("ENCLAVE_MODELS__MAX_TOKENS", "42")
    monkeypatch.setenv("ENCLAVE_DATA_DIR", str(tmp_path / "d"))
    s = Settings()
    assert s.models.max_tokens == 42  # the environment wins over the file
    assert s.models.temperature == 0.5 and s.limits.max_queue == 3
    assert s.database_url == f"sqlite:///{tmp_path / 'd' / 'enclave.db'}"


async def test_admission_bounds_running_and_waiting() -> None:
    adm = Admission(concurrent=1, queue=1)
    a, b = adm.enter(), adm.enter()
    with pytest.raises(Overloaded):
        adm.enter()
    async with a:
        waiting = asyncio.create_task(b.__aenter__())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # b queues behind a
    await asyncio.wait_for(waiting, 1)
    b.release()
    assert adm.admitted == 0
    adm.enter().release()


def chunk(score: float, title: str = "Guide") -> Chunk:
    return Chunk(id=title, text="t", title=title, uri=f"{title}.md", score=score, metadata={"dense_score": score})


def test_router_explains_its_choice() -> None:
    router = SignalRouter(RouterSettings())
    docs = RetrievalSignals("docs", [chunk(0.7), chunk(0.3, "Other")])
    r = router.decide(ChatRequest(message="q"), docs, [])
    assert r.kind == "rag" and "Guide" in r.reason and r.scores["retrieval_top"] == 0.7
    weak = RetrievalSignals("docs", [chunk(0.1)])
    assert router.decide(ChatRequest(message="q"), weak, []).kind == "base"
    assert router.decide(ChatRequest(message="q", route="base"), docs, []).kind == "base"
    forced = router.decide(ChatRequest(message="q", adapter="hr"), docs, ["hr"])
    assert (forced.kind, forced.adapter) == ("adapter", "hr")


def test_engine_slot_policy_keeps_valuable_caches() -> None:
    from pathlib import Path

    from enclave.engine.llama_engine import MIN_PREFIX_REUSE, LlamaEngine

    engine = LlamaEngine(Path("unused.gguf"), slots=3)  # not started: the policy needs no model
    rag, pirate, empty = engine._slots
    system = list(range(100, 100 + 2 * MIN_PREFIX_REUSE))
    rag.tokens, rag.last_used = [1, 2, 3, *system, 7, 8], 5.0
    pirate.tokens, pirate.last_used = [1, 2, 3, 42, 43], 9.0
    # A long shared prefix wins: the slot keeps it.
    slot, keep = engine._pick_slot(engine._slots, [1, 2, 3, *system, 9], key=0)
    assert slot is rag and keep == 3 + len(system)
    # Three template tokens in common are not worth evicting a cache for: the empty slot is taken.
    slot, keep = engine._pick_slot(engine._slots, [1, 2, 3, 50, 51], key=0)
    assert slot is empty and keep == 0
    # With no empty slot, the least recently used one is evicted.
    empty.tokens, empty.last_used = [4, 5], 7.0
    slot, _ = engine._pick_slot(engine._slots, [1, 2, 3, 50, 51], key=0)
    assert slot is rag
    # A cache made with another adapter is never reused.
    slot, keep = engine._pick_slot(engine._slots, [1, 2, 3, *system, 9], key=1)
    assert keep == 0


def test_one_model_cache_whatever_the_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make setup`, `make run` (data/), a test server's own data dir and the benchmarks find the same models."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ENCLAVE_MODELS__CACHE_DIR", raising=False)
    one, other = Settings(data_dir=str(tmp_path / "a")), Settings(data_dir=str(tmp_path / "b"))
    assert one.model_cache_path == other.model_cache_path == tmp_path / "xdg" / "enclave" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert Settings().model_cache_path == Path.home() / ".cache" / "enclave" / "models"
    chosen = Settings(models={"cache_dir": str(tmp_path / "image")})  # type: ignore[arg-type]
    assert chosen.model_cache_path == tmp_path / "image"  # the image and the chart name theirs
