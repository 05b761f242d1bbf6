"""Per-query routing between RAG, an adapter and the base model, with a reason a person can read.

Signals: how well the best document matches (dense cosine, and its margin over the next one), how
close the query is to each adapter's training questions (cosine to the nearest one), and whether it
is small talk. An explicit route or adapter in the request always wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from enclave.chat.schema import ChatRequest
from enclave.core.protocols import Chunk, Route
from enclave.core.settings import RouterSettings

SMALL_TALK = re.compile(
    r"(?i)^\W*(?:hi|hello|hey|hiya|yo|good (?:morning|afternoon|evening|night)|thanks?(?: you)?|thank you|"
    r"thx|cheers|bye|goodbye|see you|ok(?:ay)?|cool|great|nice|how are you|how's it going|what's up|"
    r"who are you|what are you|what can you do|what is your name|tell me a joke|you're (?:great|funny|helpful)|"
    r"nice to meet you|lol|haha)\b[\w\s,!?.']{0,40}$"
)


def is_small_talk(text: str) -> bool:
    return bool(SMALL_TALK.match(text.strip()))


def domain_scores(query_vec: Sequence[float], domains: dict[str, Any]) -> dict[str, float]:
    """Per adapter: cosine of the query to the nearest of its training questions (unit vectors)."""
    import numpy as np

    q = np.asarray(query_vec, dtype=np.float32)
    return {name: float(np.max(np.asarray(vecs, dtype=np.float32) @ q)) for name, vecs in domains.items()}


@dataclass
class RetrievalSignals:
    """What a search of the caller's collection, the adapters' domains and the wording said about the query."""

    collection: str | None = None
    chunks: list[Chunk] = field(default_factory=list)
    error: str | None = None
    adapter_scores: dict[str, float] = field(default_factory=dict)
    small_talk: bool = False
    query: str = ""  # what was searched: the question, or a follow-up rewritten with its history

    @property
    def top(self) -> float:
        return max((float(c.metadata.get("dense_score", c.score)) for c in self.chunks), default=0.0)

    @property
    def margin(self) -> float:
        scores = sorted((float(c.metadata.get("dense_score", c.score)) for c in self.chunks), reverse=True)
        return scores[0] - scores[1] if len(scores) > 1 else (scores[0] if scores else 0.0)


class SignalRouter:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings

    def decide(self, request: ChatRequest, signals: RetrievalSignals, adapters: list[str]) -> Route:
        s = self.settings
        scores = {"retrieval_top": round(signals.top, 4), "retrieval_margin": round(signals.margin, 4)}
        for name, sim in signals.adapter_scores.items():
            scores[f"adapter:{name}"] = round(sim, 4)
        if request.route == "base":
            return Route("base", None, "the request asked for the base model", scores)
        if request.route == "rag":
            return Route("rag", None, f"the request asked for the documents in '{signals.collection}'", scores)
        if request.adapter or request.route == "adapter":
            chosen = request.adapter or (adapters[0] if len(adapters) == 1 else None)
            if chosen is None:
                return Route("base", None, "adapter route asked for, but no single adapter to pick", scores)
            return Route("adapter", chosen, f"the request named adapter '{chosen}'", scores)
        if request.raw:
            return Route("base", None, "a plain completion: the prompt goes to the model as it is", scores)
        if request.output_spec() is not None:
            return Route("base", None, "a structured answer (JSON or tool calls): the model answers", scores)
        if signals.small_talk:
            return Route("base", None, "small talk: the base model answers", scores)
        if signals.chunks and signals.top >= s.rag_min_score and signals.margin >= s.rag_min_margin:
            best = max(signals.chunks, key=lambda c: float(c.metadata.get("dense_score", c.score)))
            return Route(
                "rag",
                None,
                f"'{best.title}' in '{signals.collection}' matches the question "
                f"(similarity {signals.top:.2f} ≥ {s.rag_min_score:.2f})",
                scores,
            )
        if signals.adapter_scores:
            name, sim = max(signals.adapter_scores.items(), key=lambda kv: kv[1])
            if sim >= s.adapter_min_similarity:
                return Route(
                    "adapter",
                    name,
                    f"the question is close to what adapter '{name}' was trained on "
                    f"(similarity {sim:.2f} ≥ {s.adapter_min_similarity:.2f})",
                    scores,
                )
        if signals.error:
            why = signals.error
        elif signals.collection:
            why = f"no document matches well enough (best similarity {signals.top:.2f} < {s.rag_min_score:.2f})"
        else:
            why = "no knowledge base to search"
        if signals.adapter_scores:
            why += ", and no adapter's domain is close"
        return Route("base", None, f"{why}; answering from the base model", scores)
