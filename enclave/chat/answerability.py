"""Whether the retrieved passages hold the answer: answer, answer with a caveat, or decline — before any token.

The small model cannot tell (asked, it never declines when the page is missing and names a sibling instead), so
the system decides from its own signals: how well the best passage matches (dense cosine and its margin), whether
dense and BM25 search agree on the document, and above all how the question's key terms meet a passage's heading
(title, section, first line) and text. A key term is weighted by its rarity among the retrieved candidates: a term
that no candidate holds ("rmdir"'s "empty" when only `rm`'s page is left) weighs most, so a missing page shows as a
key term met nowhere. A logistic model over these features, fitted and cross-validated by `python -m
bench.answerability` on corpora no one here wrote (never on the questions `bench/answers` reports), gives the
probability that the documents answer; two thresholds chosen there split it into the three outcomes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from enclave.chat.focus import named_cell, says_cell
from enclave.chat.grounding import content_words
from enclave.core.protocols import Chunk

MODEL_FILE = Path(__file__).parent / "answerability.json"
Outcome = Literal["answer", "caveat", "decline"]

# Words that frame a question rather than say what it is about.
FRAME = frozenset(
    """which what who whom whose where why how should could would need want wants tool tools program programs
    command commands module modules function functions library libraries python package utility utilities
    setting settings option options way best please tell me find show give get make let lets i'd i'm im
    something anything thing things kind type right good correct exact name named called call answer question
    document documents docs passage passages say says said know""".split()
)
FEATURES = (
    "top_dense",  # best dense cosine of a candidate
    "margin",  # best minus second-best dense cosine, across documents
    "head_cover",  # weighted share of key terms in the best-covered candidate's title, section and first line
    "text_cover",  # the same over the candidate's whole text (heading included)
    "top_text_cover",  # text_cover of the best dense candidate
    "absent",  # weighted share of key terms that no candidate holds
    "agree",  # the best dense and the best BM25 candidate are one document
    "key_terms",  # how many key terms the question has (log)
    "lead_cover",  # the same over the line after a candidate's first (a man page's NAME line follows "Name")
)


def key_terms(question: str) -> list[str]:
    return sorted(w for w in content_words(question) if w not in FRAME and len(w) > 1)


def _stem(word: str) -> str:
    """A crude stem: no plural s, at most five letters ("lists" ~ "list", "encodes" ~ "encode")."""
    word = word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
    return word[:5]


def _vocab(text: str) -> set[str]:
    words = content_words(text)
    return words | {_stem(w) for w in words}


def _has(term: str, vocab: set[str]) -> bool:
    return term in vocab or _stem(term) in vocab


def heading(c: Chunk) -> str:
    """What a passage says it is about: its title, section and first line of text."""
    return " ".join((c.title, str(c.metadata.get("section") or ""), _lines(c)[0][:200] if _lines(c) else ""))


def lead(c: Chunk) -> str:
    """A passage's second line: where a page whose chunks start with their section's name ("Name") says what it
    is ("rmdir - remove empty directories")."""
    lines = _lines(c)
    return lines[1][:200] if len(lines) > 1 else ""


def _lines(c: Chunk) -> list[str]:
    return [ln.strip().lstrip("#").strip() for ln in c.text.strip().splitlines()[:3] if ln.strip()]


def _dense(c: Chunk) -> float:
    return float(c.metadata.get("dense_score", c.score))


def idf_of(chunks: Sequence[Chunk]) -> dict[str, float] | None:
    """The query terms' idf in the collection, as the search recorded it (None from a retriever that does not)."""
    for c in chunks:
        idf = c.metadata.get("query_idf")
        if isinstance(idf, dict) and idf:
            return idf
    return None


def _weights(terms: Sequence[str], vocabs: Sequence[set[str]], idf: dict[str, float] | None) -> dict[str, float]:
    """A key term's weight: its idf in the whole collection where the search gives it (a word every page has
    tells nothing), else its rarity among the candidates."""
    out = {}
    n = max(len(vocabs), 1)
    for t in terms:
        parts = [idf[p] for p in re.findall(r"[a-z0-9_]+", t) if idf and p in idf]
        if parts:
            out[t] = max(0.0, max(parts))
        else:
            out[t] = math.log((n + 1) / (sum(_has(t, v) for v in vocabs) + 0.5))
    return out


@dataclass
class Decision:
    outcome: Outcome
    probability: float
    features: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def features(question: str, chunks: Sequence[Chunk]) -> dict[str, float]:
    terms = key_terms(question)
    out = dict.fromkeys(FEATURES, 0.0)
    if not chunks:
        out["absent"] = 1.0
        out["key_terms"] = math.log1p(len(terms))
        return out
    texts = [_vocab(heading(c) + " " + c.text) for c in chunks]
    heads = [_vocab(heading(c)) for c in chunks]
    n = len(chunks)
    weights = _weights(terms, texts, idf_of(chunks))
    total = sum(weights.values()) or 1.0

    def cover(vocab: set[str]) -> float:
        return sum(w for t, w in weights.items() if _has(t, vocab)) / total if terms else 1.0

    dense = sorted(((_dense(c), c.metadata.get("doc_id") or c.uri) for c in chunks), reverse=True)
    best_doc = dense[0][1]
    second = next((s for s, d in dense[1:] if d != best_doc), dense[-1][0] if len(dense) > 1 else 0.0)
    best_dense = max(range(n), key=lambda i: _dense(chunks[i]))
    best_bm25 = max(range(n), key=lambda i: float(chunks[i].metadata.get("bm25_score", 0.0)))
    doc = [c.metadata.get("doc_id") or c.uri for c in chunks]
    out.update(
        top_dense=dense[0][0],
        margin=dense[0][0] - second,
        head_cover=max(cover(h) for h in heads),
        text_cover=max(cover(v) for v in texts),
        top_text_cover=cover(texts[best_dense]),
        absent=sum(w for t, w in weights.items() if not any(_has(t, v) for v in texts)) / total if terms else 0.0,
        agree=float(doc[best_dense] == doc[best_bm25]),
        key_terms=math.log1p(len(terms)),
        lead_cover=max(cover(_vocab(lead(c))) for c in chunks),
    )
    return {k: round(v, 4) for k, v in out.items()}


@dataclass(frozen=True)
class Model:
    """The fitted logistic model and its two thresholds (probability the documents answer)."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    decline_below: float
    caveat_below: float
    meta: dict[str, Any] = field(default_factory=dict)

    def probability(self, feats: dict[str, float]) -> float:
        terms = zip(self.names, self.mean, self.scale, self.coef, strict=True)
        z = self.intercept + sum(c * (feats.get(n, 0.0) - m) / s for n, m, s, c in terms)
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.names),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "decline_below": self.decline_below,
            "caveat_below": self.caveat_below,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Model:
        return cls(
            tuple(raw["features"]),
            tuple(raw["mean"]),
            tuple(raw["scale"]),
            tuple(raw["coef"]),
            float(raw["intercept"]),
            float(raw["decline_below"]),
            float(raw["caveat_below"]),
            dict(raw.get("meta") or {}),
        )


@cache
def shipped() -> Model:
    return Model.from_json(json.loads(MODEL_FILE.read_text()))


_WHY = {
    "absent": "a key term of the question is in none of the passages",
    "head_cover": "no passage is about what the question names",
    "top_dense": "the passages match the question only loosely",
}


def decide(
    question: str,
    chunks: Sequence[Chunk],
    model: Model | None = None,
    decline_below: float | None = None,
    caveat_below: float | None = None,
) -> Decision:
    """The outcome for a question and its retrieved candidates (all of them, before the prompt's cut)."""
    model = model or shipped()
    feats = features(question, chunks)
    p = model.probability(feats)
    low = model.decline_below if decline_below is None else decline_below
    high = model.caveat_below if caveat_below is None else caveat_below
    outcome: Outcome = "decline" if p < low else "caveat" if p < high else "answer"
    if outcome == "decline" and any(named_cell(question, c.text) for c in chunks[:3]):
        # A table row holds the value the question quotes and the column it names: worth a held, checked answer.
        why = f"a table row holds the value the question names (answerable {p:.2f})"
        return Decision("caveat", round(p, 4), feats, why)
    if outcome == "answer":
        reason = f"the passages hold the question's key terms (answerable {p:.2f})"
    else:
        worst = "absent" if feats["absent"] > 0.3 else "head_cover" if feats["head_cover"] < 0.5 else "top_dense"
        reason = f"{_WHY[worst]} (answerable {p:.2f})"
    return Decision(outcome, round(p, 4), feats, reason)


_CODE = re.compile(r"`([^`\n]{1,80})`")


def named_things(sentence: str) -> list[str]:
    """What a sentence names as the answer: code spans, else dotted or option-like identifiers."""
    found = [m.strip() for m in _CODE.findall(sentence) if m.strip()]
    if found:
        return found
    return re.findall(r"(?<![\w.])(?:[A-Za-z_]\w*\.[A-Za-z_][\w.]*|--?[a-z][\w-]+|[A-Z][A-Z0-9]*_[A-Z0-9_]+)", sentence)


# A sentence's passage must hold at least this weighted share of the question's key terms to count as answering it.
ON_QUESTION = 0.5


def term_weights(question: str, passages: Sequence[str], idf: dict[str, float] | None = None) -> dict[str, float]:
    """The question's key terms, each weighted as `features` weighs them."""
    return _weights(key_terms(question), [_vocab(p) for p in passages], idf)


# A question that asks for a named thing ("Which command…", "What module should I use…").
ASKS_FOR_A_NAME = re.compile(
    r"\b(?:which|what)\b(?:\W+\w+){0,3}?\W+(?:commands?|modules?|functions?|settings?|options?|variables?|endpoints?|"
    r"tools?|programs?|utilit(?:y|ies)|librar(?:y|ies)|packages?|class(?:es)?|methods?|flags?|models?)\b",
    re.I,
)


def page_name(title: str) -> str | None:
    """The name a page is about, from its title's first word when that is an identifier ("tee.1" → tee,
    "pickletools — Tools for pickle developers" → pickletools); None for a title in words ("The knowledge base")."""
    m = re.match(r"\s*([A-Za-z_][\w.-]*?)(?:\.\d\w*)?(?=\s*(?:—|–|- |:|$))", title)
    return m.group(1) if m else None


def answer_note(question: str, sentence: str, passage: str, weights: dict[str, float], title: str = "") -> str | None:
    """Why a sentence, though its passage may share its words, does not answer the question from that passage;
    None when it does. `passage` is the cited passage with its heading (title, section) in front; `title` its
    title alone."""
    asked_cell = named_cell(question, passage)
    if asked_cell is not None:  # a table row the question names: the answer is its cell, or it is not the answer
        column, cell = asked_cell
        return None if says_cell(sentence, cell) else f"its passage's row gives the {column} as `{cell}`"
    said = content_words(sentence)
    have = _vocab(passage)
    asked = {_stem(w) for w in content_words(question)}
    things = named_things(sentence)
    for thing in things:
        if thing.lower() not in passage.lower():
            return f"names `{thing}`, which its passage does not mention"
    name = page_name(title)
    if (
        ASKS_FOR_A_NAME.search(question)
        and not things
        and not (name and re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", sentence))
    ):
        # Asked for a command or module, a sentence that names none (a description copied from some page) says
        # nothing the reader can act on, and is often another page's.
        return "names no command, module or setting, which the question asks for"
    new = [w for w in said if _stem(w) not in asked and _has(w, have)]
    if not new and not things:
        return "restates the question instead of answering it"
    total = sum(weights.values())
    if total > 0:
        met = sum(w for t, w in weights.items() if _has(t, have)) / total
        if met < ON_QUESTION:
            return "its passage is about something other than what the question asks"
    return None


def closest_sentences(question: str, chunk: Chunk, weights: dict[str, float], chars: int = 240) -> str:
    """The part of a passage that comes closest to the question: its sentence holding most of the question's
    weighted key terms (the next ones added while they fit), not merely its first characters."""
    from enclave.chat.grounding import split_sentences

    text = " ".join(chunk.text.split())
    found = [s.text for s in split_sentences(text)] or [text]
    total = sum(weights.values()) or 1.0
    scores = [sum(w for t, w in weights.items() if _has(t, _vocab(s))) / total for s in found]
    best = max(range(len(found)), key=lambda i: (scores[i], -i))
    picked = found[best]
    for nxt in found[best + 1 :]:
        if len(picked) + 1 + len(nxt) > chars:
            break
        picked += " " + nxt
    if len(picked) > chars:
        picked = picked[:chars].rsplit(" ", 1)[0] + " …"
    return ("… " if best else "") + picked
