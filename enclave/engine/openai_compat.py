"""Generation through an OpenAI-compatible server (vLLM with --enable-lora): the adapter is the model name.

frequency_penalty and presence_penalty are OpenAI's own; repetition_penalty goes as vLLM's extra parameter,
only when it is on (a server that does not know it may refuse it, rather than ignore it unseen).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from enclave.core.errors import BackendUnavailable, InvalidRequest, NotFound
from enclave.core.protocols import Generation, GenerationParams, Message
from enclave.core.settings import Settings


class OpenAIBackend:
    name = "openai"
    constrained = False
    loads_adapters = False  # the server serves its adapters as models (vLLM's --lora-modules)
    base_sha256: str | None = None
    engine_status: dict[str, Any] | None = None

    def __init__(self, settings: Settings) -> None:
        from openai import AsyncOpenAI

        if not settings.models.url:
            raise ValueError("models.url must name the OpenAI-compatible server for the openai backend")
        self.settings = settings
        self.client = AsyncOpenAI(
            base_url=settings.models.url,
            api_key=settings.models.api_key or "unused",
            timeout=settings.models.request_timeout_s,
            max_retries=0,
        )
        self._adapters: list[str] = []
        self._at = 0.0

    async def aload(self) -> None:
        await self._refresh(force=True)

    def close(self) -> None:
        return None

    async def _refresh(self, force: bool = False) -> None:
        import openai

        if not force and time.monotonic() - self._at < 5:
            return
        try:
            models = [m.id async for m in self.client.models.list()]
        except openai.APIError as exc:
            if force:
                raise BackendUnavailable(f"the model server does not answer: {exc}") from exc
            return
        self._adapters = [m for m in models if m != self.settings.models.name]
        self._at = time.monotonic()

    async def health(self) -> bool:
        try:
            await self._refresh(force=True)
            return True
        except BackendUnavailable:
            return False

    def list_adapters(self) -> list[str]:
        return list(self._adapters)

    async def add_adapter(self, name: str, path: Path) -> None:
        raise InvalidRequest("the openai backend cannot load adapters: its server serves them as models")

    async def remove_adapter(self, name: str) -> None:
        raise InvalidRequest("the openai backend cannot unload adapters: its server serves them as models")

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # the server counts exactly; this only budgets history

    async def stream(
        self,
        messages: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[str]:
        import openai

        await self._refresh()
        result = result if result is not None else Generation()
        extra: dict[str, Any] = {"seed": params.seed} if params.seed is not None else {}
        if params.repetition_penalty != 1.0:
            extra["extra_body"] = {"repetition_penalty": params.repetition_penalty}
        common: dict[str, Any] = {
            "model": adapter or self.settings.models.name,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "frequency_penalty": params.frequency_penalty,
            "presence_penalty": params.presence_penalty,
            "stop": params.stop or None,
            "stream": True,
            "stream_options": {"include_usage": True},
            **extra,
        }
        try:
            if isinstance(messages, str):  # a plain completion: the server's /v1/completions
                stream = await self.client.completions.create(prompt=messages, **common)
            else:
                chat: Any = [{"role": m.role, "content": m.content} for m in messages]
                stream = await self.client.chat.completions.create(messages=chat, **common)
            result.finish_reason = "cancelled"
            async for chunk in stream:
                if chunk.usage:
                    result.prompt_tokens = chunk.usage.prompt_tokens
                    result.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    text = choice.text if isinstance(messages, str) else choice.delta.content
                    if text:
                        yield text
                    if choice.finish_reason:
                        result.finish_reason = "length" if choice.finish_reason == "length" else "stop"
        except openai.NotFoundError as exc:
            raise NotFound(f"the model server has no model '{adapter}'") from exc
        except openai.APIError as exc:
            raise BackendUnavailable(f"the model server failed: {exc}") from exc
