"""Prompt and stop helpers both in-process engines share: chat template, context fit, stop strings, penalties."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from enclave.core.errors import InvalidRequest
from enclave.core.protocols import Generation, GenerationParams, Message
from enclave.core.settings import Settings
from enclave.engine.decoding import Penalties


class StopMatcher:
    """Releases text as it grows, holding back a tail that could still become a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]

    def split(self, text: str) -> tuple[str, bool]:
        """(text safe to release, whether a stop string was hit)."""
        hit = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            return text[:hit], True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return text[: len(text) - hold], False


def penalties_of(params: GenerationParams) -> Penalties:
    return Penalties(params.repetition_penalty, params.frequency_penalty, params.presence_penalty)


class PromptTools:
    """What both in-process engines share: the tokenizer, the chat template, stop tokens and the context fit."""

    settings: Settings
    tokenizer: Any = None
    _stop_ids: set[int]

    def _init_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        ids = {tokenizer.eos_token_id}
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                ids.add(tid)
        # The GGUF's metadata names <|im_start|> as EOS; a new turn starting is also the end of ours.
        self._stop_ids = {i for i in ids if i is not None}

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, len(text) // 4)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def chat_prompt(self, messages: Sequence[Message]) -> list[int]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        ids: list[int] = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        return ids

    def prompt_ids(self, prompt: Sequence[Message] | str, max_new: int) -> list[int]:
        """Chat messages or a raw, already templated prompt, as ids that leave room for the answer."""
        raw = (
            self.tokenizer.encode(prompt, add_special_tokens=False)
            if isinstance(prompt, str)
            else self.chat_prompt(prompt)
        )
        return self.fit(raw, max_new)

    def fit(self, ids: list[int], max_new: int) -> list[int]:
        budget = self.settings.models.context_tokens - max_new
        if budget < 16:
            raise InvalidRequest(f"max_tokens {max_new} leaves no room for the prompt")
        return ids[-budget:] if len(ids) > budget else ids  # keep the end: the question

    def stream_tokens(
        self,
        prompt: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        raise NotImplementedError

    async def stream(
        self,
        messages: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[str]:
        # aclosing: a client that stops reading cancels the generation now, not when the generator is collected.
        tokens: Any = self.stream_tokens(messages, params, adapter, result)
        async with contextlib.aclosing(tokens):
            async for text, _ in tokens:
                yield text
