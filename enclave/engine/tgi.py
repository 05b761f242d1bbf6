"""Generation through any server speaking TGI's protocol, with the `text-generation` client.

Enclave's own model server speaks it, and so does Hugging Face TGI with multi-LoRA. The chat
template is applied here (TGI's /generate takes a prompt), with the base model's tokenizer.
repetition_penalty and frequency_penalty are TGI's own parameters; presence_penalty is not, so only
Enclave's model server is sent one (a stock TGI would drop it unseen: that is an error here instead).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import field_validator
from text_generation import AsyncClient
from text_generation.errors import parse_error
from text_generation.types import Parameters, Request, StreamResponse

from enclave.core.errors import BackendUnavailable, InvalidRequest, NotFound
from enclave.core.protocols import Generation, GenerationParams, Message
from enclave.core.settings import Settings


class AdapterParameters(Parameters):
    """TGI's parameters plus `adapter_id`, which TGI servers with LoRA accept and 0.7's client lacks, and
    `presence_penalty`, which only Enclave's model server takes."""

    adapter_id: str | None = None
    presence_penalty: float | None = None

    @field_validator("frequency_penalty")
    @classmethod
    def valid_frequency_penalty(cls, v: float | None) -> float | None:
        return v  # TGI takes -2..2 (0 is off); 0.7's client refuses anything not above 0


class AdapterClient(AsyncClient):
    async def generate_stream_adapter(
        self, prompt: str, parameters: AdapterParameters
    ) -> AsyncIterator[tuple[StreamResponse, str | None]]:
        """Each streamed token, with the exact finish reason Enclave's model server adds to the last one
        (TGI's three values have no word for the loop guard's "repetition")."""
        request = Request(inputs=prompt, stream=True, parameters=parameters)
        body = request.model_dump()
        body["parameters"]["adapter_id"] = parameters.adapter_id
        if parameters.presence_penalty is not None:
            body["parameters"]["presence_penalty"] = parameters.presence_penalty
        async with (
            httpx.AsyncClient(headers=self.headers, timeout=self.timeout.total) as http,
            http.stream("POST", self.base_url, json=body) as resp,
        ):
            if resp.status_code != 200:
                raise parse_error(resp.status_code, (await resp.aread()) and resp.json())
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    payload = json.loads(line[5:])
                    if "error" in payload:
                        raise parse_error(resp.status_code, payload)
                    yield StreamResponse(**payload), (payload.get("details") or {}).get("enclave_finish_reason")


class TGIBackend:
    name = "tgi"
    constrained = False
    loads_adapters = False  # the model server loads them; this backend lists what it serves
    base_sha256: str | None = None
    engine_status: dict[str, Any] | None = None

    def __init__(self, settings: Settings) -> None:
        if not settings.models.url:
            raise ValueError("models.url must name the TGI-protocol server for the tgi backend")
        self.settings = settings
        self.url = settings.models.url.rstrip("/")
        headers = {"Authorization": f"Bearer {settings.models.api_key}"} if settings.models.api_key else None
        self.client = AdapterClient(self.url, headers=headers, timeout=int(settings.models.request_timeout_s))
        self.tokenizer: Any = None
        self._adapters: list[str] = []
        self._adapters_at = 0.0
        self._enclave = False  # the server is Enclave's own model server (which takes presence_penalty)

    async def aload(self) -> None:
        import asyncio

        from enclave.engine.modelfiles import load_tokenizer

        self.tokenizer = await asyncio.to_thread(load_tokenizer, self.settings)
        await self._refresh(force=True)

    def close(self) -> None:
        return None

    async def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._adapters_at < 5:
            return
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                info = (await http.get(self.url + "/info")).json()
            self._adapters = list(info.get("adapters") or [])
            self._enclave = info.get("router") == "enclave"
            self._adapters_at = time.monotonic()
        except (httpx.HTTPError, ValueError) as exc:
            if force:
                raise BackendUnavailable(f"the model server at {self.url} does not answer: {exc}") from exc

    async def health(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                return (await http.get(self.url + "/health")).status_code == 200
        except httpx.HTTPError:
            return False

    def list_adapters(self) -> list[str]:
        return list(self._adapters)

    async def add_adapter(self, name: str, path: Path) -> None:
        raise InvalidRequest(f"the tgi backend cannot load adapters: load them on the model server at {self.url}")

    async def remove_adapter(self, name: str) -> None:
        raise InvalidRequest(f"the tgi backend cannot unload adapters: unload them on the model server at {self.url}")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if self.tokenizer else len(text) // 4

    async def stream(
        self,
        messages: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[str]:
        from text_generation import errors as tgi_errors

        await self._refresh()
        result = result if result is not None else Generation()
        if isinstance(messages, str):  # a plain completion
            prompt = messages
        else:
            chat = [{"role": m.role, "content": m.content} for m in messages]
            prompt = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        result.prompt_tokens = self.count_tokens(prompt)
        sampling = params.temperature > 0
        if params.presence_penalty and not self._enclave:
            raise InvalidRequest("presence_penalty is not part of TGI's protocol; this model server cannot apply it")
        parameters = AdapterParameters(
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling and params.top_p < 1 else None,
            stop=params.stop,
            seed=params.seed,
            details=True,
            adapter_id=adapter,
            # Always sent, off included: Enclave's model server would otherwise apply its own defaults.
            repetition_penalty=params.repetition_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty if self._enclave else None,
        )
        result.finish_reason = "cancelled"
        try:
            async for resp, exact in self.client.generate_stream_adapter(prompt, parameters):
                if not resp.token.special and resp.token.text:
                    result.completion_tokens += 1
                    yield resp.token.text
                if resp.details is not None:
                    result.completion_tokens = resp.details.generated_tokens
                    result.finish_reason = "length" if resp.details.finish_reason.value == "length" else "stop"
                    if exact == "repetition":
                        result.finish_reason = "repetition"
        except tgi_errors.ValidationError as exc:
            if "adapter" in str(exc):
                raise NotFound(str(exc)) from exc
            raise InvalidRequest(str(exc)) from exc
        except (tgi_errors.UnknownError, tgi_errors.OverloadedError, httpx.HTTPError) as exc:
            raise BackendUnavailable(f"the model server failed: {exc}") from exc
