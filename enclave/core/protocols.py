"""The seams between Enclave's parts: narrow Protocols owned by the code that uses them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ToolSpec(BaseModel):
    """A function the model may call: its name, what it does, and its arguments' JSON schema."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


# How a tool call is written in an answer (the format Qwen2.5 is trained on), around {"name": …, "arguments": {…}}.
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


class OutputSpec(BaseModel):
    """The shape an answer must have, enforced while sampling (a backend with `constrained` set).

    kind "json": one JSON value matching `json_schema` (None: any JSON object). kind "tools": calls to
    `tools` as `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks; with tool_choice "auto" the
    model may answer in plain text instead, "required" makes it call one, a tool's name makes it call that one.
    """

    kind: Literal["json", "tools"]
    json_schema: dict[str, Any] | None = None
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True


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
    # Added to a token's logit before sampling (OpenAI's logit_bias: -100 bans a token, 100 forces it).
    logit_bias: dict[int, float] = Field(default_factory=dict)
    output: OutputSpec | None = None
    # Report each answer token's log-probability and this many most likely alternatives (None: off).
    logprobs: int | None = Field(None, ge=0, le=20)


FinishReason = Literal["stop", "length", "repetition", "cancelled"]


@dataclass
class Generation:
    """What a finished stream reports besides its tokens (filled in by the backend as it goes).

    finish_reason "repetition": the loop guard ended an answer that was stuck repeating itself.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"
    # With params.logprobs: one entry per token of the answer as streamed (after stop strings are cut).
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One answer token as the model scored it: its text, bytes and log-probability (of the model's own
    distribution, before penalties, biases and grammars), and the most likely alternatives at that place."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[tuple[str, tuple[int, ...], float], ...] = ()


@runtime_checkable
class GenerationBackend(Protocol):
    """A model that writes answers, over its whole life: loaded once (`aload`), asked for answers (`stream`),
    probed (`health`), given adapters where it runs them itself (`loads_adapters`), and closed.

    Every backend in enclave/engine satisfies it (build.py assigns each to a variable of this type).
    """

    name: str
    # Whether it honours GenerationParams.output, .logit_bias and .logprobs (the pipeline refuses them
    # otherwise): they need a sampler of the backend's own.
    constrained: bool
    # Whether `add_adapter` and `remove_adapter` load adapters into this process's model. False: the backend
    # serves only the adapters its server has (or none), and those two raise InvalidRequest.
    loads_adapters: bool

    async def aload(self) -> None:
        """Load the model (or reach its server); raises when it cannot, and may be called again after that."""
        ...

    def close(self) -> None: ...

    async def health(self) -> bool: ...

    @property
    def base_sha256(self) -> str | None:
        """The sha256 of the base model's file, which adapters must name (None: unknown here)."""
        ...

    @property
    def engine_status(self) -> dict[str, Any] | None:
        """What /readyz reports of the engine: the llama.cpp weight format, asked for and running (None: none)."""
        ...

    def list_adapters(self) -> list[str]: ...

    async def add_adapter(self, name: str, path: Path) -> None:
        """Load the peft adapter in folder `path` under `name` (only where `loads_adapters`)."""
        ...

    async def remove_adapter(self, name: str) -> None: ...

    def stream(
        self,
        messages: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[str]:
        """Yield text pieces; fill `result` with token counts and the finish reason. A str is a raw prompt,
        sent to the model as it is (no chat template): plain completions."""
        ...

    def count_tokens(self, text: str) -> int: ...


class LocalBackend(GenerationBackend, Protocol):
    """An engine running the model in this process (llama.cpp or transformers): what the model server serves."""

    @property
    def dtype(self) -> str:
        """The weights the engine runs ("bf16", "q8_0", "float32", …), for the model server's /info."""
        ...

    def stream_tokens(
        self,
        prompt: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        """`stream`'s pieces, each with the id of the last token it ends with (-1: none yet)."""
        ...

    def load(self) -> None:
        """`aload` for a caller with no event loop (the CLI's evaluation, benchmarks)."""
        ...

    def add_adapter_blocking(self, name: str, path: Path) -> None:
        """`add_adapter` for a caller with no event loop."""
        ...


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
    # The embedding classifier's probability that the text is harmful, where it read it (None: it did not).
    harm: float | None = None


class Moderator(Protocol):
    """Called on the event loop for every message, retrieved passage and growing answer: a check that
    waits (a guard model) or computes for long (an embedder) awaits; one that only matches returns at once.
    `thorough` False: the cheap checks only (the output gate asks for the thorough one once per hold-back
    window, so every piece it releases was read by it)."""

    async def check(
        self, text: str, stage: Literal["input", "output", "context"], thorough: bool = True
    ) -> Verdict: ...

    async def check_many(
        self, texts: Sequence[str], stage: Literal["input", "output", "context"], thorough: bool = True
    ) -> list[Verdict]:
        """One verdict per text, checked together (the sentences of retrieved passages)."""
        ...


@dataclass
class Route:
    kind: Literal["rag", "adapter", "base"]
    adapter: str | None
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
