"""Decoding that cannot loop, shared by both in-process engines: repetition, frequency and presence penalties
on a row of logits (NumPy, pure), and a guard that ends an answer stuck repeating a short token sequence.

Semantics (the same in the llama.cpp and the transformers engine):
- repetition penalty (llama.cpp's and HF's CTRL penalty): every distinct token among the last REPEAT_LAST_N of
  prompt and answer has a positive logit divided by the penalty and a negative one multiplied by it; 1.0 is off;
- frequency and presence penalty (OpenAI's): logit -= count * frequency + (count > 0) * presence, with the
  counts of the tokens generated so far in this answer; 0 is off;
- the tokens that end an answer (end of turn, a new turn) are never penalized: the chat template puts them in
  every prompt's last tokens, and a penalty on them would only make answers run longer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The repetition penalty looks at this many of the latest tokens (llama.cpp's default, penalty_last_n).
REPEAT_LAST_N = 64

# The loop guard: the answer's tail is one sequence of at most LOOP_MAX_PERIOD tokens repeated back to back, at
# least LOOP_MIN_REPEATS whole times and over at least LOOP_MIN_TOKENS tokens. A list or
# table repeats its layout but not its contents (numbers, names and cells differ), so it is never periodic
# token for token; "- `git clone …`\n" (21 tokens) is caught at its third copy, "0000…" at its 48th token. What it
# does cut: a request for the same thing many times over (50 zeros, a matrix of identical rows).
LOOP_MAX_PERIOD = 32
LOOP_MIN_REPEATS = 3
LOOP_MIN_TOKENS = 48


@dataclass(frozen=True)
class Penalties:
    repetition: float = 1.0
    frequency: float = 0.0
    presence: float = 0.0
    last_n: int = REPEAT_LAST_N

    @property
    def active(self) -> bool:
        return self.repetition != 1.0 or self.frequency != 0.0 or self.presence != 0.0


def apply_penalties(
    logits: Any,
    recent: Iterable[int],
    counts: Mapping[int, int],
    p: Penalties,
    exempt: Collection[int] = (),
) -> Any:
    """A float32 copy of one row of `logits` with the penalties applied.

    `recent`: the tokens the repetition penalty looks at (the last `p.last_n` of prompt and answer; repeats are
    fine), `counts`: how often each token occurs in the answer so far, `exempt`: tokens never penalized.
    """
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    skip = np.fromiter(exempt, dtype=np.int64, count=len(exempt))
    return _penalize(logits, recent, ids, n, p, skip)


def _penalize(logits: Any, recent: Iterable[int], ids: Any, n: Any, p: Penalties, skip: Any) -> Any:
    """apply_penalties with the counts as two arrays (token ids, counts), as PenaltyState keeps them."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if p.repetition != 1.0:
        distinct = set(recent)
        if distinct:
            rep = np.fromiter(distinct, dtype=np.int64, count=len(distinct))
            v = out[rep]
            out[rep] = np.where(v > 0, v / np.float32(p.repetition), v * np.float32(p.repetition))
    if (p.frequency != 0.0 or p.presence != 0.0) and len(ids):
        out[ids] -= n * np.float32(p.frequency) + np.where(n > 0, np.float32(p.presence), np.float32(0))
    if len(skip):  # put them back as they were (cheaper than leaving them out above)
        out[skip] = np.asarray(logits, dtype=np.float32)[skip]
    return out


class PenaltyState:
    """What the penalties look at for one answer, kept as it grows: the latest tokens and the answer's counts
    (as arrays, so that a step costs the same however long the answer is).

    `apply(logits, ahead)` penalizes the logits of the position after `ahead` (tokens drafted past the ones
    pushed so far), so several drafted positions checked in one step are each penalized as if decoded one by one.
    """

    def __init__(self, p: Penalties, context: Sequence[int] = (), exempt: Collection[int] = ()) -> None:
        self.p = p
        self.recent: deque[int] = deque(context[-p.last_n :] if p.last_n > 0 else (), maxlen=max(p.last_n, 0))
        self.exempt = np.fromiter(sorted(set(exempt)), dtype=np.int64)
        self._at: dict[int, int] = {}  # token → its index in _ids and _n
        self._ids = np.zeros(64, dtype=np.int64)
        self._n = np.zeros(64, dtype=np.float32)

    @property
    def counts(self) -> dict[int, int]:
        return {tok: int(self._n[i]) for tok, i in self._at.items()}

    def push(self, tok: int) -> None:
        """`tok` is now part of the answer."""
        self.recent.append(tok)
        i = self._at.get(tok)
        if i is None:
            i = self._at[tok] = len(self._at)
            if i == len(self._ids):
                self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
                self._n = np.concatenate([self._n, np.zeros_like(self._n)])
            self._ids[i] = tok
        self._n[i] += 1

    def apply(self, logits: Any, ahead: Sequence[int] = ()) -> Any:
        k = len(self._at)
        recent: Iterable[int] = self.recent
        ids, n = self._ids[:k], self._n[:k]
        if ahead:
            last = self.p.last_n
            recent = [*self.recent, *ahead][-last:] if last > 0 else []
            n = n.copy()
            new: dict[int, int] = {}
            for tok in ahead:
                i = self._at.get(tok)
                if i is None:
                    new[tok] = new.get(tok, 0) + 1
                else:
                    n[i] += 1
            if new:
                ids = np.concatenate([ids, np.fromiter(new.keys(), dtype=np.int64, count=len(new))])
                n = np.concatenate([n, np.fromiter(new.values(), dtype=np.float32, count=len(new))])
        return _penalize(logits, recent, ids, n, self.p, self.exempt)


class LoopGuard:
    """Spots an answer stuck repeating: `push` says True for the token that makes its tail a loop."""

    def __init__(
        self,
        max_period: int = LOOP_MAX_PERIOD,
        min_repeats: int = LOOP_MIN_REPEATS,
        min_tokens: int = LOOP_MIN_TOKENS,
    ) -> None:
        self.max_period = max_period
        # The tail a period must cover, index p: three copies of a long sequence, min_tokens of a short one.
        self.need = [0] + [max(min_tokens, min_repeats * p) for p in range(1, max_period + 1)]
        self.last: deque[int] = deque(maxlen=max_period)  # the latest tokens, newest last
        # runs[p]: how many of the latest tokens each equal the token p before them (the tail then has period p
        # over runs[p] + p tokens).
        self.runs = [0] * (max_period + 1)

    def push(self, tok: int) -> bool:
        last, runs, need = self.last, self.runs, self.need
        looped = False
        n = len(last)
        for p in range(1, n + 1):
            if last[n - p] == tok:
                runs[p] += 1
                if runs[p] + p >= need[p]:
                    looped = True
            else:
                runs[p] = 0
        last.append(tok)
        return looped


def find_loop(tokens: Sequence[int], guard: LoopGuard | None = None) -> int | None:
    """The index of the token at which the guard would end this answer, or None (for tests and benchmarks)."""
    guard = guard or LoopGuard()
    return next((i for i, tok in enumerate(tokens) if guard.push(tok)), None)
