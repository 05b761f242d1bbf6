"""What an adapter was taught, and whether an answer of it rests on that.

An adapter trained on a few dozen corrections answers their paraphrases — and, in the same confident words, the
same question about something no one taught it ("the payroll team is on floor three": the legal team's floor).
So an adapter keeps its training pairs (`taught.jsonl`), and an answer from it is shown only when a pair backs
it: the pair's question is about what was asked (its distinguishing words — those few other pairs' questions
share — are in the question, and most of its weighted words are), and the pair's answer states what the answer
claims (at least half of the answer's words that the question did not already say, every name, number or
identifier it gives, and none of the distinctive words of another pair's answer). A question no pair is about is
declined before any token; an answer no matched pair backs is declined with the closest pair quoted.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.chat.answerability import FRAME
from enclave.chat.grounding import content_words

TAUGHT_FILE = "taught.jsonl"
MAX_PAIRS = 50_000
ABOUT = 0.6  # weighted share of a pair question's words the asked question must hold
BACKED = 0.5  # share of the answer's claims the pair must state
RARE_SHARE = 0.02  # a word in at most this share of the questions (at least one) distinguishes a pair

NOT_TAUGHT = (
    "Nothing I was taught answers this, so I won't guess. If you know the answer, rate this reply 👎 and write it "
    "in: once a reviewer accepts it, the next adapter learns it."
)
NOT_BACKED = "I can't vouch for the answer I came up with: it is not what I was taught. The closest thing I was taught:"


@dataclass(frozen=True)
class TaughtPair:
    question: str
    answer: str
    kind: str = "document"  # document | correction | rated answer
    reviewed_by: str | None = None
    source: str | None = None

    def ref(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "kind": self.kind,
            "reviewed_by": self.reviewed_by,
            "source": self.source,
        }


def not_backed_text(closest: TaughtPair) -> str:
    """The decline of an answer no pair backs, with the pair the question is about, quoted."""
    return f"{NOT_BACKED}\n\n> {closest.question}\n>\n> {closest.answer}"


def terms(text: str) -> set[str]:
    """A text's content words less the question frame, crudely stemmed ("incidents" ~ "incident")."""
    out = set()
    for w in content_words(text):
        if w in FRAME or len(w) < 2:
            continue
        w = w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        out.add(w[:6])
    return out


_TOKEN = re.compile(r"[#@]?[\w][\w\-'’.]*")


def named(text: str) -> set[str]:
    """The terms of the things a text names: capitalised words (but "The", "It" …), words with a digit, #channels,
    hyphenated or dotted identifiers. An answer must not name what its pair does not ("Jack Okafor" for "Tomasz
    Okafor")."""
    words = [
        w
        for w in _TOKEN.findall(text)
        if (w[0].isupper() and content_words(w))
        or any(c.isdigit() for c in w)
        or w[0] in "#@"
        or "-" in w.strip("-.")
        or "." in w.strip(".")
    ]
    return terms(" ".join(words))


class Taught:
    """An adapter's training pairs, indexed by their questions' words."""

    def __init__(self, pairs: list[TaughtPair]) -> None:
        self.pairs = pairs
        self.q_terms = [terms(p.question) for p in pairs]
        self.a_terms = [terms(p.answer) for p in pairs]
        n = len(pairs)
        df = Counter(t for ts in self.q_terms for t in ts)
        self.idf = {t: math.log((n + 1) / (c + 1)) + 1.0 for t, c in df.items()}
        rare = max(1, int(RARE_SHARE * n))
        self.rare = [{t for t in ts if df[t] <= rare} for ts in self.q_terms]
        a_df = Counter(t for ts in self.a_terms for t in ts)
        # The distinctive words of the answers (a name, a number, a code name): one in an answer that its own pair
        # does not state is a fact borrowed from another pair ("Ingrid Delacroix": two leads made one).
        self.distinctive = {t for t, c in a_df.items() if c <= rare}

    def about(self, question: str) -> list[int]:
        """The pairs whose question is about what was asked, best first."""
        asked = terms(question)
        scored = []
        for i, ts in enumerate(self.q_terms):
            if not ts or not self.rare[i] <= asked:
                continue
            total = sum(self.idf[t] for t in ts)
            held = sum(self.idf[t] for t in ts if t in asked) / total
            if held >= ABOUT:
                scored.append((held, i))
        return [i for _, i in sorted(scored, reverse=True)]

    def backing(self, question: str, answer: str, candidates: list[int]) -> int | None:
        """The first candidate pair whose answer states what `answer` claims; None when none does."""
        claims = terms(answer) - terms(question)
        if not claims:
            return None  # the answer only repeats the question
        names = claims & named(answer)
        for i in candidates:
            said = self.a_terms[i] | self.q_terms[i]
            hits = len(claims & said)
            borrowed = (claims - said) & self.distinctive
            if hits and hits / len(claims) >= BACKED and not borrowed and names <= said:
                return i
        return None


def read_taught(folder: Path) -> Taught | None:
    """The adapter's pairs from `folder/taught.jsonl`; None when it recorded none (adapters trained before it)."""
    path = folder / TAUGHT_FILE
    if not path.is_file():
        return None
    pairs = []
    with path.open("rb") as f:
        for raw in f:
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict) and isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
                text = {k: v if isinstance(v := row.get(k), str) else None for k in ("kind", "reviewed_by", "source")}
                pairs.append(
                    TaughtPair(
                        row["question"], row["answer"], text["kind"] or "document", text["reviewed_by"], text["source"]
                    )
                )
            if len(pairs) >= MAX_PAIRS:
                break
    return Taught(pairs) if pairs else None


def taught_rows(pairs: list[Any]) -> str:
    """`taught.jsonl` for QA pairs (tune dataset's QAPair): question, answer, kind, reviewer, source."""
    lines = []
    for p in pairs[:MAX_PAIRS]:
        prov = getattr(p, "provenance", None) or {}
        row = {
            "question": p.question,
            "answer": p.answer,
            "kind": prov.get("source") or "document",
            "reviewed_by": prov.get("reviewed_by"),
            "source": getattr(p, "source", None) or None,
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)
