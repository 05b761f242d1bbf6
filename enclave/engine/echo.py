"""Deterministic echo backend: repeats the last user message word by word at a set rate.

For load-testing the service alone and for fast transport tests; never a stand-in for the model
in integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from enclave.core.errors import InvalidRequest, NotFound
from enclave.core.protocols import Generation, GenerationParams, Message
from enclave.core.settings import Settings


class EchoBackend:
    name = "echo"
    constrained = False
    loads_adapters = False
    base_sha256: str | None = None
    engine_status: dict[str, Any] | None = None

    def __init__(self, settings: Settings) -> None:
        self.rate = settings.models.echo_tokens_per_second
        self.source = settings.models.echo_source
        self.adapters: list[str] = []

    async def aload(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def health(self) -> bool:
        return True

    def list_adapters(self) -> list[str]:
        return list(self.adapters)

    async def add_adapter(self, name: str, path: Path) -> None:
        raise InvalidRequest("the echo backend cannot load adapters")

    async def remove_adapter(self, name: str) -> None:
        raise InvalidRequest("the echo backend cannot unload adapters")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def stream(
        self,
        messages: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[str]:
        if adapter is not None and adapter not in self.adapters:
            raise NotFound(f"unknown adapter '{adapter}'")
        result = result if result is not None else Generation()
        if isinstance(messages, str):  # a plain completion
            messages = [Message(role="user", content=messages)]
        if self.source == "prompt":
            text = " ".join(f"{m.role}: {m.content}" for m in messages)
        else:
            text = next((m.content for m in reversed(messages) if m.role == "user"), "")
        words = ("echo: " + text).split()
        result.prompt_tokens = sum(self.count_tokens(m.content) for m in messages)
        result.finish_reason = "length" if len(words) > params.max_tokens else "stop"
        for i, word in enumerate(words[: params.max_tokens]):
            if self.rate > 0:
                await asyncio.sleep(1.0 / self.rate)
            result.completion_tokens = i + 1
            yield word if i == 0 else " " + word
