"""The in-process backend on llama.cpp: many requests decode together, adapters per request.

The shipped Q4_1 GGUF is re-encoded once into the model cache — as bf16 where the CPU multiplies bf16
natively (a batch of eight sequences then costs about three single steps, and prefill is fastest), else
as Q8_0; both hold Q4_1's values almost exactly; peft adapters are converted once to GGUF
LoRA files beside their weights. Generation runs on `LlamaEngine`'s thread; this class is the
asyncio face of it and applies stop strings.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from enclave.core.errors import BackendUnavailable, InvalidRequest, NotFound
from enclave.core.protocols import Generation, GenerationParams, Message, TokenLogprob
from enclave.core.settings import Settings
from enclave.engine.catalog import file_sha256
from enclave.engine.grammar import GrammarMask, gbnf_of
from enclave.engine.llama_engine import EngineRequest, Finish, LlamaEngine, Sampling, convert_weights
from enclave.engine.modelfiles import converted_model_dir, load_tokenizer
from enclave.engine.prompting import PromptTools, StopMatcher, penalties_of
from enclave.engine.smoke import SmokeChecks, SmokeResult, explain

log = logging.getLogger(__name__)

_DONE = object()


class _Mailbox:
    """Hands the engine thread's items to asyncio queues on one loop, with one wake-up per burst.

    A step yields a token for each running request; waking the loop once per token would cost the engine
    thread a GIL hand-over (the loop's self-pipe write) for each of them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Any], Any]] = []

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        with self._lock:
            self._items.append((queue, item))
            if len(self._items) > 1:  # a wake-up is already on its way
                return
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody is listening, so the engine cancels the request
            with self._lock:
                self._items.clear()
            raise

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)


def cpu_has_native_bf16() -> bool:
    """Whether llama.cpp multiplies bf16 natively here: compiled in (AVX512-BF16, AMX, Arm BF16) and on this CPU.

    ggml reports both at once: a feature shows as 1 only if the build has it and the CPU runs it.
    """
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace").replace(" ", "")
    return any(f"{name}=1" in info for name in ("AVX512_BF16", "AMX_BF16", "SVE_BF16", "BF16"))


def engine_format(settings: Settings) -> str:
    fmt = settings.models.engine_format
    if fmt == "auto":
        fmt = "bf16" if cpu_has_native_bf16() else "q8_0"
    return fmt


def format_order(settings: Settings) -> list[str]:
    """The format asked for (auto: the CPU's best), then the others in the order the engine falls back to."""
    first = engine_format(settings)
    best = "bf16" if cpu_has_native_bf16() else "q8_0"
    return list(dict.fromkeys([first, best, "q8_0", "f16", "original"]))


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def weights_path(settings: Settings, gguf: Path, fmt: str) -> Path:
    """Where the engine's copy of `gguf` in `fmt` lives (the GGUF itself for original); not made here."""
    if fmt == "original":
        return gguf
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    name = f"{gguf.stem}-{key}.{fmt}.gguf"
    target = settings.model_cache_path / name
    if not target.is_file() and not _writable(settings.model_cache_path):
        # A read-only baked cache (the image) made for another CPU: convert into the data volume instead.
        target = settings.data_path / "models" / name
    return target


def engine_weights(settings: Settings, fmt: str | None = None) -> tuple[Path, Path]:
    """(the shipped GGUF, the file the engine runs): the re-encoded copy, made on first use."""
    gguf, _ = converted_model_dir(settings)
    fmt = fmt or engine_format(settings)
    target = weights_path(settings, gguf, fmt)
    if fmt == "original":
        return gguf, gguf
    return gguf, convert_weights(gguf, target, fmt, settings.models.threads or (os.cpu_count() or 1))


def smoke_checks(settings: Settings) -> SmokeChecks:
    folder = settings.model_cache_path if _writable(settings.model_cache_path) else settings.data_path / "models"
    return SmokeChecks(folder / "engine-checks.json")


def check_format(settings: Settings, gguf: Path, fmt: str, checks: SmokeChecks) -> tuple[Path, SmokeResult]:
    """(the file the engine would run in `fmt`, whether it decodes): re-encoded and decoded in a child."""
    target = weights_path(settings, gguf, fmt)
    threads = settings.models.threads or (os.cpu_count() or 1)
    if fmt == "original":
        return target, checks.check(target, threads=threads)
    return target, checks.check(target, threads=threads, convert_from=gguf, fmt=fmt)


def choose_weights(settings: Settings, checks: SmokeChecks | None = None) -> tuple[Path, Path, str, list[str]]:
    """(GGUF, weights, format, problems): the first format in `format_order` whose check decodes in a child.

    Re-encoding and the first decode both happen in the child, so a build that cannot run a format costs a
    log line, not the server. Raises BackendUnavailable, naming every cause, when no format runs.
    """
    gguf, _ = converted_model_dir(settings)
    checks = checks or smoke_checks(settings)
    problems: list[str] = []
    for fmt in format_order(settings):
        target, result = check_format(settings, gguf, fmt, checks)
        if result.ok:
            log.info("llama.cpp engine check passed for %s weights: %s", fmt, result.detail)
            return gguf, target, fmt, problems
        problems.append(explain(fmt, result))
        log.error("%s", problems[-1])
    raise BackendUnavailable("no weight format runs on this llama.cpp build: " + " | ".join(problems))


class LlamaCppBackend(PromptTools):
    name = "local"
    constrained = True  # the engine's own sampler: output grammars, logit_bias and logprobs
    loads_adapters = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: LlamaEngine | None = None
        self.base_gguf: Path | None = None
        self.model_dir: Path | None = None  # no transformers conversion on this path
        self._base_sha: str | None = None
        self._stop_ids: set[int] = set()
        self._adapter_lock = threading.Lock()
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self._checks = smoke_checks(settings)
        # What /readyz shows: the format asked for, the one running, and why they differ.
        self.engine_status: dict[str, Any] = {"requested": settings.models.engine_format, "format": None}

    # -- life cycle -------------------------------------------------------------------------
    def load(self) -> None:
        m = self.settings.models
        self.base_gguf, weights, fmt, problems = choose_weights(self.settings, self._checks)
        self.engine_status = {"requested": m.engine_format, "format": fmt, "problems": problems}
        if problems:
            log.warning("llama.cpp engine: serving %s weights; formats that failed their check: %d", fmt, len(problems))
        self._init_tokenizer(load_tokenizer(self.settings))
        self._base_sha = file_sha256(self.base_gguf)
        solo = self._solo_weights(fmt)
        engine = LlamaEngine(
            weights,
            slots=m.parallel,
            context_tokens=m.context_tokens,
            threads=m.threads,
            batch_tokens=m.batch_tokens,
            flash_attention=m.flash_attention,
            unified_kv=m.unified_kv,
            lookup_tokens=m.lookup_tokens,
            solo_path=solo,
        )
        engine.start()
        self.engine = engine
        if solo is not None and engine.solo_status is None:
            self.engine_status["solo"] = "original"
        elif engine.solo_status is not None:
            self.engine_status["solo_problem"] = engine.solo_status
        log.info(
            "llama.cpp engine: %s, %d slots of %d tokens, %d threads%s",
            weights.name,
            engine.n_slots,
            engine.context_tokens,
            engine.threads,
            f"; a lone answer decodes on {solo.name}" if self.engine_status.get("solo") and solo else "",
        )

    def _solo_weights(self, fmt: str) -> Path | None:
        """The shipped GGUF, for lone answers beside batching weights in `fmt` (if it decodes in a child too)."""
        assert self.base_gguf is not None
        if not self.settings.models.solo_decode or fmt == "original":
            return None
        target, result = check_format(self.settings, self.base_gguf, "original", self._checks)
        if result.ok:
            return target
        self.engine_status["solo_problem"] = explain("original", result)
        log.warning("llama.cpp engine: lone answers decode on %s weights: %s", fmt, self.engine_status["solo_problem"])
        return None

    async def aload(self) -> None:
        await asyncio.to_thread(self.load)

    @property
    def base_sha256(self) -> str | None:
        return self._base_sha

    @property
    def dtype(self) -> str:
        """The weights the engine runs (the model server's /info reports it)."""
        fmt = self.engine_status["format"] or engine_format(self.settings)
        return "q4_1" if fmt == "original" else str(fmt)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    async def health(self) -> bool:
        return self.engine is not None

    def list_adapters(self) -> list[str]:
        return self.engine.adapters() if self.engine else []

    # -- adapters ---------------------------------------------------------------------------------
    def add_adapter_blocking(self, name: str, path: Path) -> None:
        from enclave.engine.gguf_lora import ensure_gguf_adapter

        if self.engine is None or self.base_gguf is None:
            raise BackendUnavailable("the model is still loading")
        with self._adapter_lock:  # two loads of one folder must not convert it at the same time
            gguf = ensure_gguf_adapter(path, self.base_gguf)
        self.engine.add_adapter(name, gguf)

    async def add_adapter(self, name: str, path: Path) -> None:
        await asyncio.to_thread(self.add_adapter_blocking, name, path)

    async def remove_adapter(self, name: str) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.remove_adapter, name)

    # -- generation ---------------------------------------------------------------------------------
    @staticmethod
    def _logit_bias(engine: LlamaEngine, params: GenerationParams) -> dict[int, float]:
        n_vocab = engine.n_vocab
        bad = [t for t in params.logit_bias if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequest(f"logit_bias names token {bad[0]}, outside this model's vocabulary of {n_vocab}")
        return dict(params.logit_bias)

    @staticmethod
    def _grammar(engine: LlamaEngine, params: GenerationParams) -> GrammarMask | None:
        """The output grammar for `params.output`, parsed here so a bad one is the caller's 400."""
        if params.output is None:
            return None
        try:
            return engine.grammar(gbnf_of(params.output))
        except ValueError as exc:
            raise InvalidRequest(f"the output format cannot be enforced: {exc}") from exc

    async def stream_tokens(
        self,
        prompt: Sequence[Message] | str,
        params: GenerationParams,
        adapter: str | None = None,
        result: Generation | None = None,
    ) -> AsyncIterator[tuple[str, int]]:
        """(text, last token id) pieces for chat messages or a raw, already templated prompt."""
        engine = self.engine
        if engine is None:
            raise BackendUnavailable("the model is still loading")
        if adapter is not None and adapter not in engine.adapters():
            raise NotFound(f"unknown adapter '{adapter}'")
        result = result if result is not None else Generation()
        ids = self.prompt_ids(prompt, params.max_tokens)
        result.prompt_tokens = len(ids)
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            self._mailboxes = {lp: mb for lp, mb in self._mailboxes.items() if not lp.is_closed()}
            mailbox = self._mailboxes[loop] = _Mailbox(loop)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        req = EngineRequest(
            ids=ids,
            sampling=Sampling(
                params.max_tokens,
                params.temperature,
                params.top_p,
                params.seed,
                penalties=penalties_of(params),
                loop_guard=params.loop_guard,
                logit_bias=self._logit_bias(engine, params),
                grammar=self._grammar(engine, params),
                logprobs=params.logprobs,
            ),
            adapter=adapter,
            emit=lambda item: mailbox.post(queue, item),
            stop_ids=frozenset(self._stop_ids),
        )
        engine.submit(req)
        matcher = StopMatcher(params.stop)
        text, sent, last = "", 0, -1
        finished = False
        scored: list[tuple[int, TokenLogprob]] = []  # (where the token's text starts in `text`, its logprob)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, TokenLogprob):
                    scored.append((len(text), item))
                    continue
                if isinstance(item, Finish):
                    finished = True
                    result.completion_tokens = item.completion_tokens
                    result.finish_reason = item.reason  # type: ignore[assignment]
                    break
                if isinstance(item, LookupError):
                    raise NotFound(str(item.args[0]))
                if isinstance(item, BaseException):
                    raise BackendUnavailable(f"generation failed: {item}") from item
                piece, tok = item
                last = tok if tok >= 0 else last
                text += piece
                result.completion_tokens += 1 if tok >= 0 else 0
                safe, hit = matcher.split(text)
                if len(safe) > sent:
                    yield safe[sent:], last
                    sent = len(safe)
                if hit:
                    finished = True
                    result.finish_reason = "stop"
                    return
            # The held-back tail never became a stop string: release it.
            if len(text) > sent:
                yield text[sent:], last
                sent = len(text)
        finally:
            req.cancel()
            if not finished:
                result.finish_reason = "cancelled"
            if params.logprobs is not None:  # the tokens whose text was streamed (a stop string's are not)
                result.logprobs = [lp for start, lp in scored if start < sent]
