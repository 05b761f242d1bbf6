"""Per-query routing between RAG, an adapter and the base model, with a reason a person can read."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.chat.schema import ChatRequest
from service.protocols import Chunk, Route
from service.settings import RouterSettings


@dataclass
class RetrievalSignals:
    """What a search of the caller's collection said about the query."""

    collection: str | None = None
    chunks: list[Chunk] = field(default_factory=list)
    error: str | None = None

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
        scores = {"retrieval_top": round(signals.top, 4), "retrieval_margin": round(signals.margin, 4)}
        if request.route == "base":
            return Route("base", None, "the request asked for the base model", scores)
        if request.route == "rag":
            return Route("rag", None, f"the request asked for the documents in '{signals.collection}'", scores)
        if request.adapter or request.route == "adapter":
            name = request.adapter or (adapters[0] if len(adapters) == 1 else None)
            if name is None:
                return Route("base", None, "adapter route asked for, but no single adapter to pick", scores)
            return Route("adapter", name, f"the request named adapter '{name}'", scores)
        if (
            signals.chunks
            and signals.top >= self.settings.rag_min_score
            and (signals.margin >= self.settings.rag_min_margin)
        ):
            best = max(signals.chunks, key=lambda c: float(c.metadata.get("dense_score", c.score)))
            return Route(
                "rag",
                None,
                f"'{best.title}' in '{signals.collection}' matches the question "
                f"(similarity {signals.top:.2f} ≥ {self.settings.rag_min_score:.2f})",
                scores,
            )
        why = (
            f"no document matches well enough (best similarity {signals.top:.2f} < {self.settings.rag_min_score:.2f})"
            if signals.collection
            else "no knowledge base to search"
        )
        if signals.error:
            why = signals.error
        return Route("base", None, f"{why}; answering from the base model", scores)
