"""Decoding that cannot loop, without a model: the penalties against a hand computation, their state as the
answer grows (drafted positions included), and the loop guard on real loops and on text that only looks regular."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enclave.engine.decoding import (
    LOOP_MAX_PERIOD,
    LOOP_MIN_REPEATS,
    LOOP_MIN_TOKENS,
    Penalties,
    PenaltyState,
    apply_penalties,
    find_loop,
)
from enclave.engine.llama_engine import Sampling, TokenSampler


def test_penalties_match_a_hand_computation() -> None:
    logits = np.array([2.0, -1.0, 0.5, 3.0, 1.0, -0.5], dtype=np.float32)
    recent = [0, 1, 1, 3, 0]  # the window: tokens 0, 1 and 3 (3 ends a turn: exempt)
    counts = {0: 2, 2: 1, 5: 3}  # the answer so far
    p = Penalties(repetition=2.0, frequency=0.5, presence=0.25)
    out = apply_penalties(logits, recent, counts, p, exempt={3})
    # token 0: 2.0 / 2 (repetition, positive) - (2 * 0.5 + 0.25) = -0.25
    # token 1: -1.0 * 2 (repetition, negative) = -2.0
    # token 2: 0.5 - (1 * 0.5 + 0.25) = -0.25
    # token 3: exempt, 3.0; token 4: untouched, 1.0
    # token 5: -0.5 - (3 * 0.5 + 0.25) = -2.25
    assert out.tolist() == pytest.approx([-0.25, -2.0, -0.25, 3.0, 1.0, -2.25])
    assert out.dtype == np.float32
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0, 1.0, -0.5]  # a copy: the engine's logits buffer stays as it was
    # Off is off: nothing changes, whatever the history.
    assert apply_penalties(logits, recent, counts, Penalties()).tolist() == logits.tolist()
    assert not Penalties().active and Penalties(presence=-0.1).active


def test_penalty_state_keeps_the_last_n_tokens_and_the_answers_counts() -> None:
    p = Penalties(repetition=1.5, frequency=0.2, presence=0.1, last_n=4)
    prompt = [7, 8, 9, 10, 11]
    state = PenaltyState(p, prompt, exempt={99})
    rng = np.random.default_rng(0)
    answer: list[int] = []
    # A few by hand, then more distinct tokens than the state first has room for.
    for tok in [11, 12, 11, 99, 13, 7, *rng.integers(0, 300, 200).tolist()]:
        logits = rng.standard_normal(300).astype(np.float32)
        history = prompt + answer
        expected = apply_penalties(logits, history[-4:], {t: answer.count(t) for t in set(answer)}, p, exempt={99})
        assert np.array_equal(state.apply(logits), expected)
        state.push(tok)
        answer.append(tok)
    assert state.counts == {t: answer.count(t) for t in set(answer)}


def test_a_drafted_position_is_penalized_as_if_decoded_one_by_one() -> None:
    """Prompt lookup checks several drafted positions in one step: the penalty at each counts the drafts
    before it, exactly as a state that had accepted them would."""
    p = Penalties(repetition=1.3, frequency=0.4, presence=0.2, last_n=6)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    logits = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    for ahead in ([], [9], [9, 2], [9, 2, 9, 30, 31, 32, 33]):
        state = PenaltyState(p, prompt, exempt={0})
        state.push(5)
        stepped = PenaltyState(p, prompt, exempt={0})
        stepped.push(5)
        for tok in ahead:
            stepped.push(tok)
        assert np.array_equal(state.apply(logits, ahead), stepped.apply(logits)), ahead
        assert state.counts == {5: 1}  # looking ahead records nothing


def test_a_sampler_without_penalties_samples_the_logits_as_they_are() -> None:
    logits = np.array([0.5, 0.9, 0.3], dtype=np.float32)
    plain = TokenSampler(Sampling(1))
    assert plain.penalties is None and plain.penalize(logits, [1, 1]) is logits
    # With a presence penalty, a greedy sampler turns away from the token it just used.
    s = TokenSampler(Sampling(1, penalties=Penalties(presence=1.0)), prompt=[0, 2])
    assert s.sample(s.penalize(logits)) == 1
    s.accept(1)
    assert s.penalize(logits).tolist() == pytest.approx([0.5, -0.1, 0.3])
    assert s.sample(s.penalize(logits)) == 0


# -- the loop guard --------------------------------------------------------------------------------------


def test_the_guard_fires_where_a_loop_first_covers_its_thresholds() -> None:
    rng = np.random.default_rng(2)
    prefix = list(range(1000, 1010))  # tokens that occur nowhere else
    for period in range(1, LOOP_MAX_PERIOD + 1):
        block = [int(t) for t in rng.choice(500, size=period, replace=False)]
        tokens = prefix + block * 200
        need = max(LOOP_MIN_TOKENS, LOOP_MIN_REPEATS * period)
        # The tail is periodic from the end of the prefix: it covers `need` tokens at index len(prefix) + need - 1.
        assert find_loop(tokens) == len(prefix) + need - 1, period
    longer = [int(t) for t in rng.choice(500, size=LOOP_MAX_PERIOD + 1, replace=False)]
    assert find_loop(prefix + longer * 10) is None  # beyond the longest period the guard looks for


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[Any]:
    from enclave.core.settings import Settings
    from enclave.engine.modelfiles import load_tokenizer
    from tests.conftest import MODEL_CACHE

    yield load_tokenizer(Settings(models={"cache_dir": str(MODEL_CACHE)}))  # type: ignore[arg-type]


REAL_LOOPS = {
    # The loops, and the ones SmolLM2-135M falls into greedy (tests/test_engine.py).
    "flags": "Use the command: `enclave --list --skip-all --skip-all-files" + " --skip-all-documents" * 30,
    "sentence": "It is a device that is used to manage the internet. " * 8,
    "list item": "Here are the subcommands:\n\n" + "- `git clone https://github.com/your-username/your-repo.git`\n" * 6,
    "digits": "print(list(range(1" + "0" * 120,
}

REGULAR_TEXT = {
    "numbered list": "\n".join(
        f"{i}. Step {i}: run `enclave ingest docs/part{i}` and read its log." for i in range(31)
    ),
    "table": "| name | size | kind |\n|------|------|------|\n"
    + "\n".join(f"| file{i}.md | {i * 37 % 1000} KB | {'text' if i % 3 else 'pdf'} |" for i in range(1, 26)),
    "code": "\n".join(
        f"def handler_{name}(request):\n    return dispatch(request, '{name}', retries={i})\n"
        for i, name in enumerate(["create", "read", "update", "delete", "list", "watch", "patch", "copy"])
    ),
    "config": "\n".join(f"  - name: worker-{i}\n    replicas: {i % 4 + 1}\n    port: {8000 + i}" for i in range(20)),
    "prose": "The router decides where each question goes. It compares the question with the documents, "
    "then with the questions each adapter was trained on, and falls back to the base model. "
    "Each decision carries its scores, so that an operator can see why it was made. " * 2,
    "ascii grid": "".join(
        f"+-----+-----+-----+-----+\n| {i:>3} | {i * i:>3} | {'yes' if i % 2 else 'no':>3} | {i % 7:>3} |\n"
        for i in range(1, 16)
    )
    + "+-----+-----+-----+-----+\n",
}


@pytest.mark.parametrize("name", REAL_LOOPS)
def test_real_loops_are_flagged(tokenizer: Any, name: str) -> None:
    ids = tokenizer.encode(REAL_LOOPS[name], add_special_tokens=False)
    at = find_loop(ids)
    assert at is not None, name
    assert at >= LOOP_MIN_TOKENS - 1 and at < len(ids) - 1  # not before the threshold, and well before the end


@pytest.mark.parametrize("name", REGULAR_TEXT)
def test_lists_tables_and_code_are_not_flagged(tokenizer: Any, name: str) -> None:
    ids = tokenizer.encode(REGULAR_TEXT[name], add_special_tokens=False)
    assert len(ids) > LOOP_MIN_TOKENS
    assert find_loop(ids) is None, (name, tokenizer.decode(ids[: (find_loop(ids) or 0) + 1][-80:]))


# -- the engine's step, with a stand-in for llama.cpp ------------------------------------------------------


class ToyLlama:
    """Just enough of llama.cpp's C API for the engine's scheduler, over a toy model whose next-token logits are
    a function of the sequence so far, bit for bit the same whichever step computes them: prompt lookup's answers
    can then be compared with one-by-one decoding exactly (the real model's batched kernels round differently)."""

    EOG = 11

    def __init__(self, n_vocab: int = 12) -> None:
        self.n_vocab = n_vocab
        self.seqs: dict[int, list[int]] = {}
        self.out = np.zeros((1, n_vocab), dtype=np.float32)

    def model(self, tokens: list[int]) -> Any:
        logits = np.full(self.n_vocab, -4.0, dtype=np.float32)
        logits[(tokens[-1] + 1) % 2] = 3.0  # 0 1 0 1 …: a loop, until the penalties break it
        logits[2 + len(tokens) % 8] = 2.0  # the runner-up changes along the way
        logits[self.EOG] = 0.5 if len(tokens) > 40 else -8.0
        return logits

    def llama_memory_seq_rm(self, _mem: Any, seq: int, p0: int, _p1: int) -> bool:
        del self.seqs.setdefault(seq, [])[max(p0, 0) :]
        return True

    def llama_decode(self, _ctx: Any, b: Any) -> int:
        rows = []
        for i in range(b.n_tokens):
            tokens = self.seqs.setdefault(b.seq_id[i][0], [])
            assert len(tokens) == b.pos[i]
            tokens.append(b.token[i])
            if b.logits[i]:
                rows.append(self.model(tokens))
        self.out = np.ascontiguousarray(rows, dtype=np.float32)
        return 0

    def llama_get_logits(self, _ctx: Any) -> Any:
        import ctypes

        return self.out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def llama_token_to_piece(self, _vocab: Any, tok: int, buf: Any, _n: int, _lstrip: int, _special: bool) -> int:
        import ctypes

        piece = f"<{tok}>".encode()
        ctypes.memmove(buf, piece, len(piece))
        return len(piece)

    def llama_vocab_is_eog(self, _vocab: Any, tok: int) -> bool:
        return tok == self.EOG


def toy_answer(sampling: Sampling, lookup: int) -> tuple[list[int], str, dict[str, int]]:
    got, stats = toy_items(sampling, lookup)
    return [item[1] for item in got[:-1] if isinstance(item, tuple)], got[-1].reason, stats


def toy_items(sampling: Sampling, lookup: int) -> tuple[list[Any], dict[str, int]]:
    """Everything the engine emits for one toy answer, the Finish last."""
    from types import SimpleNamespace

    from enclave.engine.llama_engine import EngineRequest, Finish, LlamaEngine

    toy = ToyLlama()
    engine = LlamaEngine(Path("toy.gguf"), slots=1, batch_tokens=64, lookup_tokens=lookup)
    size = 64 + 1
    engine._lib, engine.ctx, engine._mem, engine._n_vocab = toy, object(), object(), toy.n_vocab
    engine._batch = SimpleNamespace(
        token=[0] * size, pos=[0] * size, n_seq_id=[0] * size, seq_id=[[0] for _ in range(size)], logits=[0] * size
    )
    got: list[Any] = []
    prompt = [5, 0, 1, 0, 1, 0, 1, 0]  # the loop is in the prompt: lookup drafts it from the first step
    engine._waiting.append(EngineRequest(ids=prompt, sampling=sampling, adapter=None, emit=got.append))
    while not got or not isinstance(got[-1], Finish):
        engine._step()
    return got, engine.stats


@pytest.mark.parametrize(
    "penalties",
    [
        Penalties(),
        # The next four give other answers with lookup if a drafted position is penalized without the drafts
        # before it (checked): with them the counts and the window are off by the drafts.
        Penalties(frequency=0.2),
        Penalties(frequency=0.1, presence=0.5),
        Penalties(repetition=1.6, last_n=8),
        Penalties(repetition=1.2, frequency=0.2, presence=0.1),
        Penalties(presence=1.5),
    ],
)
def test_prompt_lookup_answers_as_one_by_one_decoding_with_penalties(penalties: Penalties) -> None:
    sampling = Sampling(max_tokens=48, penalties=penalties)
    one_by_one, reason, _ = toy_answer(sampling, lookup=0)
    looked_up, reason_lookup, stats = toy_answer(sampling, lookup=8)
    assert looked_up == one_by_one and reason_lookup == reason
    assert stats["accepted"] > 0  # several tokens were checked in one step
    if penalties.active:  # and the penalties did change the answer
        assert one_by_one != toy_answer(Sampling(max_tokens=48), lookup=0)[0]


def test_the_loop_guard_ends_the_engines_answer_before_the_looping_token() -> None:
    looped, reason, _ = toy_answer(Sampling(max_tokens=48), lookup=8)
    assert reason == "length" and looped[:8] == [1, 0, 1, 0, 1, 0, 1, 0]
    guarded, reason, _ = toy_answer(Sampling(max_tokens=48, loop_guard=True), lookup=8)
    assert reason == "repetition"
    assert guarded == looped[: find_loop(looped)]  # everything before the token that made it a loop, none after


def test_logprobs_are_the_models_own_and_the_same_with_prompt_lookup() -> None:
    from enclave.core.protocols import TokenLogprob

    sampling = Sampling(max_tokens=24, penalties=Penalties(frequency=0.2), logprobs=2)
    one_by_one, _ = toy_items(sampling, lookup=0)
    looked_up, stats = toy_items(sampling, lookup=8)
    assert stats["accepted"] > 0
    assert looked_up[:-1] == one_by_one[:-1]  # the same tokens with the same scores, drafted or not
    # Each token comes after its TokenLogprob, which scores that very token.
    pairs = [(a, b) for a, b in itertools.pairwise(one_by_one) if isinstance(a, TokenLogprob)]
    assert len(pairs) == 24
    toy = ToyLlama()
    seq = [5, 0, 1, 0, 1, 0, 1, 0]
    for lp, (text, tok) in pairs:
        assert lp.token == text == f"<{tok}>" and lp.bytes == tuple(text.encode())
        raw = toy.model(seq).astype(np.float64)  # before the penalty, which does change some of these picks
        expect = raw - (raw.max() + np.log(np.exp(raw - raw.max()).sum()))
        assert lp.logprob == pytest.approx(expect[tok])
        assert [t for t, _, _ in lp.top] == [f"<{t}>" for t in np.argsort(-raw, kind="stable")[:2]]
        seq.append(tok)
