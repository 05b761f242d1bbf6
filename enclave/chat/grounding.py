"""Which passage supports each sentence of a document answer: embedding similarity plus word overlap.

A sentence's support by a passage is the mean of two cheap signals, each in [0, 1]: the cosine of their
MiniLM embeddings (the vectors Enclave already computes for search) and the share of the sentence's
content words that the passage contains. The citations a sentence carries ("... [2]", "[1, 3]") are read
from its text; the best-supporting passage is the one it should cite.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Embed = Callable[[list[str]], list[list[float]]]

# A sentence at or above this support is taken as said by the passage (chosen on bench/answers' answers).
SUPPORTED = 0.5

_CITE = re.compile(r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])(?:\s*\[\d{1,2}(?:\s*,\s*\d{1,2})*\])*\s+(?=[A-Z0-9`\"'(\[])")
_WORD = re.compile(r"[A-Za-z_][\w.\-]*[\w]|\d+")
_STOP = frozenset(
    """a an and are as at be by can do does for from has have how i if in into is it its of on or that the this
    to use used uses using was what when which with you your will would should may also than then there these
    those they them their one more most other such only so not no yes all any each both via per out up we our""".split()
)


@dataclass
class Sentence:
    text: str
    start: int
    end: int
    cited: list[int] = field(default_factory=list)  # 1-based passage numbers written in the sentence


@dataclass
class Grounded:
    sentence: Sentence
    support: list[float]  # per passage
    best: int  # 1-based number of the best-supporting passage, 0 if there are no passages

    @property
    def cited_support(self) -> float:
        """The support of the best passage the sentence cites (0 when it cites none that exists)."""
        vals = [self.support[n - 1] for n in self.sentence.cited if 0 < n <= len(self.support)]
        return max(vals, default=0.0)

    @property
    def supported(self) -> bool:
        """Some passage says it (whether or not the sentence cites that one)."""
        return bool(self.support) and max(self.support) >= SUPPORTED

    @property
    def supported_by_citation(self) -> bool:
        return self.cited_support >= SUPPORTED


def citations_in(text: str) -> list[int]:
    return [int(n) for group in _CITE.findall(text) for n in group.split(",")]


def split_sentences(text: str) -> list[Sentence]:
    """Sentences with their character spans; a citation after the full stop stays with its sentence."""
    out: list[Sentence] = []
    pos = 0

    def add(start: int, end: int) -> None:
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append(Sentence(piece.strip(), start + lead, start + lead + len(piece.strip()), citations_in(piece)))

    for m in _SENTENCE_END.finditer(text):
        add(pos, m.start() + len(m.group(0).rstrip()))
        pos = m.end()
    add(pos, len(text))
    return out


def content_words(text: str) -> set[str]:
    return {w.lower().strip(".-") for w in _WORD.findall(_CITE.sub(" ", text))} - _STOP - {""}


def _vocabulary(passage: str) -> tuple[set[str], set[str]]:
    """A passage's content words, and the stems (first 5 letters) of its longer ones."""
    have = content_words(passage)
    return have, {w[:5] for w in have if len(w) > 5}


def _overlap(words: set[str], vocabulary: tuple[set[str], set[str]]) -> float:
    # A word counts if the passage has it, or its stem (the first 5 letters of longer words: "encodes" ~ "encode").
    have, stems = vocabulary
    hits = sum(1 for w in words if w in have or (len(w) > 5 and w[:5] in stems))
    return hits / len(words) if words else 0.0


def lexical_support(sentence: str, passage: str) -> float:
    return _overlap(content_words(sentence), _vocabulary(passage))


def ground(
    answer: str, passages: Sequence[str], embed: Embed, passage_vectors: Sequence[Any] | None = None
) -> list[Grounded]:
    """Every sentence of `answer` scored against every passage. `passage_vectors`: the passages' embeddings as the
    knowledge base holds them (then only the sentences are embedded: most of the cost); else all are embedded."""
    sentences = split_sentences(answer)
    if not sentences:
        return []
    if not passages:
        return [Grounded(s, [], 0) for s in sentences]
    texts = [_CITE.sub("", s.text) for s in sentences]
    stored = list(passage_vectors or [])
    if len(stored) == len(passages) and all(v is not None for v in stored):
        vecs = np.vstack([np.asarray(embed(texts), dtype=np.float32), np.asarray(stored, dtype=np.float32)])
    else:
        vecs = np.asarray(embed(texts + list(passages)), dtype=np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
    cos = vecs[: len(sentences)] @ vecs[len(sentences) :].T
    vocabularies = [_vocabulary(p) for p in passages]  # once per passage, not once per sentence
    out = []
    for i, s in enumerate(sentences):
        words = content_words(s.text)
        support = [
            round(0.5 * max(0.0, float(cos[i, j])) + 0.5 * _overlap(words, vocab), 4)
            for j, vocab in enumerate(vocabularies)
        ]
        out.append(Grounded(s, support, int(np.argmax(support)) + 1))
    return out


# A document answer whose sentences are mostly unsupported is not shown as if it were checked.
UNVERIFIED_SHARE = 0.5
UNVERIFIED_NOTICE = "I could not verify this answer against the documents. What they say:"


def citations(grounded: Sequence[Grounded]) -> list[dict[str, object]]:
    """Per sentence: the passage that supports it (`source`, 1-based) and how well, or `unsupported`.

    A sentence citing a passage that supports it keeps it; one citing none, or the wrong one, gets the best
    supporting passage instead (`corrected`); one that no passage supports is `unsupported`.
    """
    out: list[dict[str, object]] = []
    for g in grounded:
        s = g.sentence
        if g.supported_by_citation:
            source, support = (
                max((n for n in s.cited if 0 < n <= len(g.support)), key=lambda n: g.support[n - 1]),
                g.cited_support,
            )
        elif g.supported:
            source, support = g.best, g.support[g.best - 1]
        else:
            source, support = None, max(g.support, default=0.0)
        out.append(
            {
                "text": s.text,
                "start": s.start,
                "end": s.end,
                "cited": s.cited,
                "source": source,
                "support": round(float(support), 3),
                "unsupported": source is None,
                "corrected": source is not None and source not in s.cited,
            }
        )
    return out


def quoted_passages(passages: Sequence[tuple[str, str]], limit: int = 2, chars: int = 300) -> str:
    """What to show instead of an answer that could not be verified: the top passages, quoted with their numbers."""
    lines = ["\n\n" + UNVERIFIED_NOTICE]
    for n, (title, text) in enumerate(passages[:limit], 1):
        snippet = " ".join(text.split())
        snippet = snippet[:chars].rsplit(" ", 1)[0] + " …" if len(snippet) > chars else snippet
        lines.append(f"\n> {snippet} [{n}] ({title})")
    return "".join(lines)
