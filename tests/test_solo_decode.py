"""A lone answer decodes on the shipped quantized weights; a batch on the re-encoded ones; the KV cache moves.

`models.solo_decode` keeps the shipped GGUF beside the engine's batching weights (bf16 or Q8_0). These tests
run the real small model: the answer that runs alone uses the second context, a request that joins mid-answer
moves it back into the batch without losing a token of context, the finished answer's cache returns for the
next turn's prefix, and a second context that cannot take the cache is refused at start, not mid-answer.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from enclave.core.protocols import Message
from enclave.engine.kv_transfer import restream
from tests.test_engine import SYSTEM, ask, collect, settings_for


def test_restream_rewrites_the_stream_count_and_keeps_the_sequence_block() -> None:
    block = struct.pack("<I", 3) + b"cells and their K and V rows"
    head = struct.pack("<IiI", 0xABCD, 5, 8)
    # Sequence 5 of a cache with one stream per sequence: five empty streams, its block, two empty streams.
    data = head + bytes(4 * 5) + block + bytes(4 * 2)
    one = restream(data, 1)
    assert one == struct.pack("<IiI", 0xABCD, 5, 1) + block
    back = restream(one, 8)
    assert back == struct.pack("<IiI", 0xABCD, 5, 8) + block + bytes(4 * 7)
    assert restream(back, 8) == back
    empty = head + bytes(4 * 8)  # a sequence with no cells
    assert restream(empty, 1) == struct.pack("<IiI", 0xABCD, 5, 1) + bytes(4)
    with pytest.raises(ValueError, match="more than one stream"):
        restream(head + block + block + bytes(4 * 6), 1)


@pytest.fixture(scope="module")
def solo() -> Iterator[Any]:
    from enclave.engine.build import build_local_backend

    b = build_local_backend(settings_for("llama_cpp", parallel=4, engine_format="q8_0"))
    b.load()
    yield b
    b.close()


@pytest.mark.slow
async def test_a_lone_answer_decodes_on_the_shipped_weights(solo: Any) -> None:
    engine = solo.engine
    assert solo.engine_status["format"] == "q8_0" and solo.engine_status.get("solo") == "original"
    assert engine.solo_status is None
    steps0, solo0 = engine.stats["steps"], engine.stats["solo_steps"]
    text, r = await collect(solo, ask("What is the capital of France? Answer in one word."), max_tokens=24)
    assert "Paris" in text and r.finish_reason == "stop"
    steps, alone = engine.stats["steps"] - steps0, engine.stats["solo_steps"] - solo0
    # The prompt and the first token on the batching weights, every later token on the shipped ones.
    assert alone >= 1 and steps - alone == 1, (steps, alone)
    assert engine.load() == {"running": 0, "waiting": 0}


@pytest.mark.slow
async def test_a_question_asked_again_gets_the_same_answer(solo: Any) -> None:
    """Cold (the whole prompt read) and warm (all but its last token from the prefix cache) start alike."""
    messages = [SYSTEM, *ask("Name three colours of the rainbow.")[1:]]
    cold, _ = await collect(solo, messages, max_tokens=20)
    warm, _ = await collect(solo, messages, max_tokens=20)
    assert cold.strip() and cold == warm


@pytest.mark.slow
async def test_a_request_joining_mid_answer_moves_it_into_the_batch(solo: Any) -> None:
    engine = solo.engine
    story = ask("Write a long story about a lighthouse keeper.")
    alone, _ = await collect(solo, story, max_tokens=48)
    copies0, moves_solo0 = engine.stats["kv_copies"], engine.stats["solo_steps"]
    first = asyncio.ensure_future(collect(solo, story, max_tokens=48))
    while engine.stats["solo_steps"] - moves_solo0 < 8:  # the first answer is decoding on the shipped weights
        await asyncio.sleep(0.01)
    second, r2 = await collect(solo, ask("What is the capital of France? Answer in one word."), max_tokens=24)
    text, r1 = await first
    assert "Paris" in second and r2.finish_reason == "stop"
    assert r1.completion_tokens == 48
    # The first answer kept its context across the move: it goes on as it began (the batching weights may
    # round a near tie the other way later, so only its first part is compared with the answer it gave alone).
    assert text[:40] == alone[:40], (text, alone)
    # Out to the solo context, back into the batch, out again once alone, and back at the end.
    assert engine.stats["kv_copies"] - copies0 >= 3


@pytest.mark.slow
async def test_the_finished_answer_is_in_the_prefix_cache_for_the_next_turn(solo: Any) -> None:
    engine = solo.engine
    first = [SYSTEM, *ask("Describe a lighthouse in two sentences.")[1:]]
    answer, r = await collect(solo, first, max_tokens=40)
    assert engine.stats["solo_steps"] > 0
    follow = [*first, Message(role="assistant", content=answer), *ask("And who keeps it?")[1:]]
    cached0 = engine.stats["prefix_tokens"]
    text, _ = await collect(solo, follow, max_tokens=8)
    assert text
    # The prompt of the first turn and the answer decoded on the solo weights both come from the main cache.
    assert engine.stats["prefix_tokens"] - cached0 >= r.prompt_tokens + r.completion_tokens - 2


@pytest.mark.slow
def test_a_second_context_that_cannot_take_the_cache_is_refused_at_start() -> None:
    """Another model's GGUF as the solo weights fails the start-up check: lone answers stay on the main ones."""
    from enclave.engine.llama_engine import EngineRequest, Finish, LlamaEngine, Sampling
    from enclave.engine.llamacpp import engine_weights

    _, weights = engine_weights(settings_for("llama_cpp", engine_format="q8_0"))
    other, _ = engine_weights(settings_for("llama_cpp", base="qwen2.5-coder-0.5b-instruct", engine_format="original"))
    engine = LlamaEngine(weights, slots=2, context_tokens=256, solo_path=other)
    engine.start()
    try:
        assert engine.solo_status and "vocabularies" in engine.solo_status
        got: list[Any] = []
        engine.submit(EngineRequest(ids=[1, 2, 3, 4], sampling=Sampling(max_tokens=4), adapter=None, emit=got.append))
        deadline = time.monotonic() + 30
        while not (got and isinstance(got[-1], Finish)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got and isinstance(got[-1], Finish), got
        assert engine.stats["solo_steps"] == 0
    finally:
        engine.close()
