"""In-process generation with the small GGUF model: the shared prompt tools and the transformers engine.

`build_local_backend` (in `enclave/engine/build.py`) picks the engine: llama.cpp with continuous batching
(`llamacpp.py`) when llama-cpp-python is installed, else transformers, where one worker thread owns the model, so
generations run one at a time and never block the event loop; tokens cross into asyncio through
a queue, and a closed stream stops its generation within one decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from enclave.core.errors import BackendUnavailable, InvalidRequest, NotFound
from enclave.core.files import atomic_path
from enclave.core.protocols import Generation, GenerationParams, Message
from enclave.core.settings import Settings
from enclave.engine.catalog import CATALOG, file_sha256, locate
from enclave.engine.decoding import LoopGuard, Penalties, PenaltyState

log = logging.getLogger(__name__)

_DONE = object()


def base_gguf(settings: Settings) -> Path:
    """The GGUF file of the base model: the operator's own (models.gguf_dir), or one from the catalogue."""
    m = settings.models
    if m.gguf_dir:
        given = Path(m.gguf_dir).expanduser()
        if given.is_file():
            return given
        if m.gguf_file:
            path = given / m.gguf_file
            if not path.is_file():
                raise BackendUnavailable(f"model file not found: {path}")
            return path
        found = sorted(given.glob("*.gguf")) if given.is_dir() else []
        if len(found) != 1:
            what = ", ".join(f.name for f in found) or "no .gguf file"
            raise BackendUnavailable(f"models.gguf_dir {given} holds {what}: set models.gguf_file to one GGUF file")
        return found[0]
    model = CATALOG.get(m.base)
    if model is None:
        raise BackendUnavailable(f"unknown base model {m.base!r}; the catalogue has: {', '.join(CATALOG)}")
    return locate(model, settings.model_cache_path)


def converted_model_dir(settings: Settings) -> tuple[Path, Path]:
    """(gguf path, cache folder) — the cache key covers the file and the transformers version."""
    import transformers

    gguf = base_gguf(settings)
    stat = gguf.stat()
    key = hashlib.sha256(
        f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{transformers.__version__}".encode()
    ).hexdigest()[:16]
    return gguf, settings.model_cache_path / f"{gguf.stem}-{key}"


SOURCE_FILE = "enclave-source.json"


def base_model_sha256(model_dir: Path) -> str:
    """The GGUF's hash, recorded at conversion: adapters name the exact base they were trained on."""
    return str(json.loads((model_dir / SOURCE_FILE).read_text())["sha256"])


def load_model(settings: Settings) -> tuple[Any, Any, Path]:
    """Load tokenizer and model; the first load converts the GGUF (~30 s), later loads take a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, cache = converted_model_dir(settings)
    if (cache / "config.json").is_file() and (cache / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cache)
        model = AutoModelForCausalLM.from_pretrained(cache)
    else:
        log.info("converting %s once into %s", gguf.name, cache)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        shutil.rmtree(cache, ignore_errors=True)  # what an interrupted conversion of an older version left
        # A folder of this process's own: two processes converting at once never write into the same one, and
        # the first to finish wins.
        with atomic_path(cache, directory=True, overwrite=False) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf), "sha256": file_sha256(gguf)}))
    model.eval()
    return tokenizer, model, cache


def load_tokenizer(settings: Settings) -> Any:
    """Only the tokenizer (for chat templates in front of a remote server)."""
    from transformers import AutoTokenizer

    gguf, cache = converted_model_dir(settings)
    if (cache / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(cache)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


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


class TransformersBackend(PromptTools):
    """GenerationBackend over transformers in this process, with peft LoRA adapters hot-loaded.

    Adapter loads and unloads run on the same single worker thread as generation, so a swap
    never races a generation in flight. The fallback where llama-cpp-python is not installed.
    """

    name = "local"
    constrained = False

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
        await asyncio.get_running_loop().run_in_executor(self._executor, self._add_adapter, name, path)

    async def remove_adapter(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._remove_adapter, name)

    def _add_adapter(self, name: str, path: Path) -> None:
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
    async def stream_tokens(  # type: ignore[override]
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
