"""The seams between Enclave's parts: narrow Protocols owned by the code that uses them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerationParams(BaseModel):
    """How to decode one answer. The penalties and the loop guard are off here: the pipeline (and the model
    server) fill in the configured defaults (`models.*`) for what a request leaves unset."""

    max_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 0.95
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    loop_guard: bool = False


FinishReason = Literal["stop", "length", "repetition", "cancelled"]


@dataclass
class Generation:
    """What a finished stream reports besides its tokens (filled in by the backend as it goes).

    finish_reason "repetition": the loop guard ended an answer that was stuck repeating itself.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"


@runtime_checkable
class GenerationBackend(Protocol):
    name: str

    def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[str]:
        """Yield text pieces; fill `result` with token counts and the finish reason."""
        ...

    async def health(self) -> bool: ...

    def list_adapters(self) -> list[str]: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class Principal:
    """Who is asking: which collections they may read (None = all) and whether they are admin."""

    name: str = "anonymous"
    collections: frozenset[str] | None = None
    admin: bool = True

    def may_read(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


@dataclass
class Chunk:
    id: str
    text: str
    title: str
    uri: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    # The vector the knowledge base holds for `text`, when the retriever has it (grounding reuses it).
    embedding: Any = None


class Retriever(Protocol):
    def search(self, query: str, collection: str, principal: Principal, k: int) -> list[Chunk]: ...


@dataclass
class Verdict:
    action: Literal["allow", "redact", "block"] = "allow"
    categories: list[str] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    redacted: str | None = None


class Moderator(Protocol):
    """Called on the event loop for every message, retrieved passage and growing answer: a check that
    waits (a guard model) awaits; one that only computes returns at once."""

    async def check(self, text: str, stage: Literal["input", "output", "context"]) -> Verdict: ...


@dataclass
class Route:
    kind: Literal["rag", "adapter", "base"]
    adapter: str | None
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
