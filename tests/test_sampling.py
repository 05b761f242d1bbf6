"""The engine's sampler (NumPy, one logits read per step) and its hand-over to asyncio, without a model."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest

from enclave.engine.llama_engine import Sampling, TokenSampler
from enclave.engine.llamacpp import _Mailbox


def test_greedy_takes_the_first_highest_logit() -> None:
    logits = np.array([0.5, 3.0, -1.0, 3.0], dtype=np.float32)
    assert TokenSampler(Sampling(max_tokens=1, temperature=0.0)).sample(logits) == 1


def test_a_seed_repeats_the_draw_and_the_draws_follow_the_softmax() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2, 1e-9], dtype=np.float32))
    draws = [TokenSampler(Sampling(1, temperature=1.0, seed=7)).sample(logits) for _ in range(3)]
    assert len(set(draws)) == 1
    s = TokenSampler(Sampling(1, temperature=1.0, seed=1))
    counts = Counter(s.sample(logits) for _ in range(4000))
    assert set(counts) <= {0, 1, 2}
    for tok, p in ((0, 0.5), (1, 0.3), (2, 0.2)):
        assert abs(counts[tok] / 4000 - p) < 0.04


def test_top_p_keeps_the_smallest_head_reaching_it() -> None:
    logits = np.log(np.array([0.6, 0.25, 0.1, 0.05], dtype=np.float32))
    s = TokenSampler(Sampling(1, temperature=1.0, top_p=0.8, seed=3))
    assert {s.sample(logits) for _ in range(500)} == {0, 1}
    # A low temperature sharpens before the cut: only the best token is left.
    cold = TokenSampler(Sampling(1, temperature=0.05, top_p=0.9, seed=3))
    assert {cold.sample(logits) for _ in range(200)} == {0}


def test_a_large_vocabulary_row_is_sampled_from_its_head() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(49_152).astype(np.float32)
    logits[123] = 40.0
    assert TokenSampler(Sampling(1, temperature=0.2, top_p=0.95, seed=0)).sample(logits) == 123


@pytest.mark.parametrize("draft", [0, 1, 2, 3])
def test_checking_a_drafted_token_draws_from_the_same_distribution(draft: int) -> None:
    """Prompt lookup guesses the next token; `verify` keeps the guess with the probability the model gives it and
    else draws from the rest, so the answer's distribution is the sampler's own, whatever was guessed (token 3
    is cut by top-p: a guess the sampler could never draw is never kept)."""
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    n = 20_000
    s = TokenSampler(Sampling(1, temperature=1.0, top_p=0.9, seed=11))
    checked = Counter(s.verify(logits, draft) for _ in range(n))
    assert set(checked) <= {0, 1, 2}
    for tok, p in ((0, 0.5 / 0.95), (1, 0.3 / 0.95), (2, 0.15 / 0.95)):
        assert abs(checked[tok] / n - p) < 0.015, (draft, checked)
    greedy = TokenSampler(Sampling(1, temperature=0.0))
    assert greedy.verify(logits, draft) == 0  # greedy: the best token, guessed or not


async def test_mailbox_delivers_in_order_with_one_wake_up_per_burst() -> None:
    loop = asyncio.get_running_loop()
    box = _Mailbox(loop)
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(), asyncio.Queue()]
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counting(cb: Any, *args: Any) -> Any:
        nonlocal wakeups
        wakeups += 1
        return real(cb, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:

        def engine_step() -> None:  # what one engine step does: a token for every running request
            for i in range(5):
                for q in queues:
                    box.post(q, i)

        t = threading.Thread(target=engine_step)
        t.start()
        t.join()
        got = [[await q.get() for _ in range(5)] for q in queues]
    finally:
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
    assert got == [[0, 1, 2, 3, 4]] * 2
    assert wakeups == 1


def test_mailbox_of_a_closed_loop_refuses_so_the_engine_cancels() -> None:
    loop = asyncio.new_event_loop()
    box = _Mailbox(loop)
    q: asyncio.Queue[Any] = asyncio.Queue()
    loop.close()
    with pytest.raises(RuntimeError):
        box.post(q, "token")
    with pytest.raises(RuntimeError):  # and again: nothing was left half-scheduled
        box.post(q, "token")
