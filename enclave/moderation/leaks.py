"""Prompt-leak detection for the output gate: an answer that repeats the system prompt or Enclave's instructions.

Word overlap with a persona prompt alone is no test: a model introducing itself ("I'm Enclave, a helpful assistant
running inside the company's own network") shares eleven words with the default system prompt. So a leak is
(a) the prompt's opening words, verbatim ("You are Enclave, a helpful assistant"), which a self-introduction in
the first person never says, or (b) a long run of consecutive words of what follows the prompt's first sentence
(its instructions), or of Enclave's own RAG instructions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"\w+")
_FIRST_SENTENCE = re.compile(r"^.*?[.!?](?:\s|$)", re.S)

# Opening words that must appear verbatim, and the run of consecutive instruction words that makes a leak.
OPENING_WORDS = 6
RUN_WORDS = 10


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class LeakCheck:
    """Says whether an answer (so far) repeats any of the protected prompts."""

    def __init__(self, prompts: Iterable[str]) -> None:
        self.openings: set[tuple[str, ...]] = set()
        self.runs: set[tuple[str, ...]] = set()
        for prompt in prompts:
            words = _words(prompt)
            if len(words) >= OPENING_WORDS:
                self.openings.add(tuple(words[:OPENING_WORDS]))
            first = _FIRST_SENTENCE.match(prompt.strip())
            rest = _words(prompt.strip()[first.end() :] if first else "")
            self.runs.update(tuple(rest[i : i + RUN_WORDS]) for i in range(len(rest) - RUN_WORDS + 1))

    def __bool__(self) -> bool:
        return bool(self.openings or self.runs)

    def leaked(self, text: str) -> bool:
        words = _words(text)
        for n, grams in ((OPENING_WORDS, self.openings), (RUN_WORDS, self.runs)):
            if grams and any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1)):
                return True
        return False
