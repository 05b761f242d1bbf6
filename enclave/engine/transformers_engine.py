"""The transformers engine: in-process generation one request at a time, the fallback without llama.cpp.

`build_local_backend` (in `enclave/engine/build.py`) picks the engine: llama.cpp with continuous batching
(`llamacpp.py`) when llama-cpp-python is installed, else this one, where one worker thread owns the model, so
generations run one at a time and never block the event loop; tokens cross into asyncio through
a queue, and a closed stream stops its generation within one decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from enclave.core.errors import BackendUnavailable, NotFound
from enclave.core.protocols import Generation, GenerationParams, Message
from enclave.core.settings import Settings
from enclave.engine.decoding import LoopGuard, PenaltyState
from enclave.engine.modelfiles import base_model_sha256, load_model
from enclave.engine.prompting import PromptTools, StopMatcher, penalties_of

_DONE = object()


class TransformersBackend(PromptTools):
    """GenerationBackend over transformers in this process, with peft LoRA adapters hot-loaded.

    Adapter loads and unloads run on the same single worker thread as generation, so a swap
    never races a generation in flight. The fallback where llama-cpp-python is not installed.
    """

    name = "local"
    constrained = False
    loads_adapters = True
    dtype = "float32"  # transformers dequantizes the GGUF to float32
    engine_status: dict[str, Any] | None = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Any = None
        self.model_dir: Path | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enclave-gen")
        self._stop_ids: set[int] = set()
        self._adapters: dict[str, Path] = {}

    # -- life cycle -------------------------------------------------------------------------
    def load(self) -> None:
        import torch

        if self.settings.models.threads > 0:
            torch.set_num_threads(self.settings.models.threads)
        tokenizer, self.model, self.model_dir = load_model(self.settings)
        self._init_tokenizer(tokenizer)

    @property
    def base_sha256(self) -> str | None:
        return base_model_sha256(self.model_dir) if self.model_dir is not None else None

    async def aload(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def health(self) -> bool:
        return self.model is not None

    def list_adapters(self) -> list[str]:
        return sorted(self._adapters)

    # -- adapters -----------------------------------------------------------------------------
    async def add_adapter(self, name: str, path: Path) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.add_adapter_blocking, name, path)

    async def remove_adapter(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._remove_adapter, name)

    def add_adapter_blocking(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if self.model is None:
            raise BackendUnavailable("the model is still loading")
        if name in self._adapters:
            self._remove_adapter(name)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.eval()
        self._adapters[name] = path

    def _remove_adapter(self, name: str) -> None:
        if name not in self._adapters:
            return
        del self._adapters[name]
        if not self._adapters:  # back to the plain base model: no LoRA layers left in the way
            self.model = self.model.unload()
        else:
            if self.model.active_adapter == name:
                self.model.set_adapter(next(iter(self._adapters)))
            self.model.delete_adapter(name)

    # -- generation -------------------------------------------------------------------------
    async def stream_tokens(
        self,
        prompt: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        """(text, last token id) pieces for chat messages or a raw, already templated prompt."""
        if self.model is None:
            raise BackendUnavailable("the model is still loading")
        if adapter is not None and adapter not in self._adapters:
            raise NotFound(f"unknown adapter '{adapter}'")
        result = result if result is not None else Generation()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(prompt, params, adapter, result, put, cancel)
            except BaseException as exc:
                put(exc)
            finally:
                put(_DONE)

        loop.run_in_executor(self._executor, work)
        finished = False
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            if not finished:
                result.finish_reason = "cancelled"

    def _adapter_context(self, adapter: str | None) -> Any:
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _generate(
        self,
        prompt: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None,
        result: Generation,
        put: Callable[[Any], None],
        cancel: threading.Event,
    ) -> None:
        import torch

        if cancel.is_set():
            result.finish_reason = "cancelled"
            return
        if adapter is not None and adapter not in self._adapters:  # unloaded while queued
            raise NotFound(f"unknown adapter '{adapter}'")
        ids = self.prompt_ids(prompt, params.max_tokens)
        result.prompt_tokens = len(ids)
        seed = params.seed if params.seed is not None else time.time_ns() % 2**31
        gen = torch.Generator().manual_seed(seed)
        matcher = StopMatcher(params.stop)
        # The same penalties and loop guard as the llama.cpp engine's (enclave/engine/decoding.py).
        penalties = penalties_of(params)
        state = PenaltyState(penalties, ids, self._stop_ids) if penalties.active else None
        guard = LoopGuard() if params.loop_guard else None
        out_ids: list[int] = []
        sent = 0
        result.finish_reason = "length"
        with torch.inference_mode(), self._adapter_context(adapter):
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            for _ in range(params.max_tokens):
                if cancel.is_set():
                    result.finish_reason = "cancelled"
                    return
                logits = out.logits[0, -1, :].float()
                if state is not None:
                    logits = torch.from_numpy(state.apply(logits.numpy()))
                token = _sample(logits, params.temperature, params.top_p, gen)
                if token in self._stop_ids:
                    result.finish_reason = "stop"
                    break
                if guard is not None and guard.push(token):  # looping: this token and all after it go
                    result.finish_reason = "repetition"
                    break
                if state is not None:
                    state.push(token)
                out_ids.append(token)
                result.completion_tokens = len(out_ids)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    safe, hit = matcher.split(text)
                    if len(safe) > sent:
                        put((safe[sent:], token))
                        sent = len(safe)
                    if hit:
                        result.finish_reason = "stop"
                        return
                out = self.model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        # The held-back tail never became a stop string: release it.
        text = self.tokenizer.decode(out_ids, skip_special_tokens=True).rstrip("\ufffd")
        if len(text) > sent:
            put((text[sent:], out_ids[-1]))


def _sample(logits: Any, temperature: float, top_p: float, gen: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=gen)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=gen))
