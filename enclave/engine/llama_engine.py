"""Continuous batching on llama.cpp: one model, one context, many sequences, LoRA adapters per request.

A scheduler thread owns the llama.cpp context. Every step it admits waiting requests into free
sequence slots — reusing the longest prefix a slot still holds in its KV cache (system prompt,
conversation so far) — then decodes one batch for one adapter group: the next token of every
running sequence plus chunks of new prompts, and samples every sequence from one read of the logits.
An answer running alone also feeds drafts found by prompt lookup and keeps those the model agrees with,
and, given `solo_path` (the shipped quantized GGUF beside a re-encoded copy that batches well), decodes on
those weights in a second, one-sequence context: a lone step then reads 2-3 times fewer bytes. Its KV cache
moves between the contexts when a batch forms or ends (`kv_transfer`); prompts are always read by the main one.
Nothing here knows asyncio; results leave through each request's `emit` callback.

Every ctypes call gives up the GIL and must win it back from the thread that serves the clients, which
can take a whole switch interval (5 ms) when that thread is busy: so a step makes two calls
(`llama_decode`, `llama_get_logits`), samples in NumPy and caches each token's text.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enclave.core.files import atomic_path
from enclave.core.protocols import TokenLogprob
from enclave.engine.decoding import LoopGuard, Penalties, PenaltyState
from enclave.engine.grammar import GrammarMask
from enclave.engine.kv_transfer import copy_seq

log = logging.getLogger(__name__)

# ggml prints every tensor it loads to stderr; keep only its warnings and errors (level 3 and 4 of ggml_log_level).
_LOG_CB: Any = None


def _quiet_llama(llama_cpp: Any) -> None:
    global _LOG_CB
    if _LOG_CB is not None:
        return

    @llama_cpp.llama_log_callback
    def _cb(level: int, text: bytes, _user: Any) -> None:
        # "n_ctx_seq > n_ctx_train": a shared KV cache spans all slots, but no sequence may outgrow its own share.
        # "control-looking token": a note on the GGUF's token types that llama.cpp corrects itself.
        if level in (3, 4) and text and b"n_ctx_seq" not in text and b"control-looking token" not in text:
            log.warning("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

    _LOG_CB = _cb
    llama_cpp.llama_log_set(_LOG_CB, ctypes.c_void_p(0))


def convert_weights(src: Path, dst: Path, ftype: str, threads: int) -> Path:
    """Re-encode the GGUF once (e.g. Q4_1 → Q8_0, which prefills twice as fast on x86); atomic, race-safe."""
    import llama_cpp

    if dst.is_file():
        return dst
    kinds = {
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
        "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    }
    _quiet_llama(llama_cpp)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = kinds[ftype]
    params.allow_requantize = True
    params.nthread = threads
    t0 = time.perf_counter()
    with atomic_path(dst) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not re-encode {src.name} as {ftype} (code {rc})")
    log.info("re-encoded %s as %s in %.1f s", src.name, ftype, time.perf_counter() - t0)
    return dst


def open_context(
    model_path: Path,
    *,
    slots: int,
    context_tokens: int,
    threads: int,
    batch_tokens: int,
    flash_attention: bool,
    unified_kv: bool = False,
) -> tuple[Any, Any, Any]:
    """(llama_cpp module, model, context) on the CPU: `slots` sequences of `context_tokens` each.

    With one cache per sequence, attention reads only a sequence's own cells, but llama.cpp batches only
    runs of consecutive sequence ids (`split_equal`): decoding sequences 0, 2, 4 and 6 costs four passes
    over the weights, so the engine keeps running sequences consecutive. A unified cache batches any mix in
    one pass, but every query scans every used cell, idle slots' cached prefixes included (~15% of a step
    for 8 sequences of ~300 tokens). No sequence may outgrow `context_tokens`, so a shared cache cannot run out.
    """
    import llama_cpp as lib

    _quiet_llama(lib)
    lib.llama_backend_init()
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lib.llama_model_load_from_file(str(model_path).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {model_path}")
    cparams = lib.llama_context_default_params()
    cparams.n_ctx = context_tokens * slots
    cparams.n_batch = batch_tokens
    cparams.n_ubatch = batch_tokens
    cparams.n_seq_max = slots
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.kv_unified = unified_kv
    cparams.flash_attn_type = (
        lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    cparams.no_perf = True
    ctx = lib.llama_init_from_model(model, cparams)
    if not ctx:
        lib.llama_model_free(model)
        raise RuntimeError("llama.cpp could not create a context")
    return lib, model, ctx


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    penalties: Penalties = field(default_factory=Penalties)
    loop_guard: bool = False  # end the answer ("repetition") once it is stuck repeating (decoding.LoopGuard)
    logit_bias: dict[int, float] = field(default_factory=dict)  # added to a token's logit before sampling
    grammar: GrammarMask | None = None  # the output grammar every token must fit (owned: closed at the end)
    logprobs: int | None = None  # emit each token's TokenLogprob, with this many alternatives (None: off)


# Tokens this much less likely than the best one (e^-27 ≈ 2e-12; under 1e-7 together) are never drawn.
_NEGLIGIBLE_LOGIT = 27.0


class TokenSampler:
    """Greedy (the first highest logit, as llama.cpp's greedy sampler) or temperature + top-p with a seed.

    `penalize` gives the logits to sample from — penalties, logit_bias and the output grammar applied — and
    `accept` records each token of the answer; with none of them the logits are sampled as they are.
    """

    def __init__(self, s: Sampling, prompt: Sequence[int] = (), exempt: frozenset[int] = frozenset()) -> None:
        self.greedy = s.temperature <= 0
        self.temperature = s.temperature
        self.top_p = s.top_p
        self.rng = np.random.default_rng(s.seed if s.seed is not None else time.time_ns())
        self.penalties = PenaltyState(s.penalties, prompt, exempt) if s.penalties.active else None
        self.grammar = s.grammar
        self.bias: tuple[Any, Any] | None = None
        if s.logit_bias:
            self.bias = (
                np.fromiter(s.logit_bias.keys(), dtype=np.int64, count=len(s.logit_bias)),
                np.fromiter(s.logit_bias.values(), dtype=np.float32, count=len(s.logit_bias)),
            )

    def penalize(self, logits: Any, ahead: Sequence[int] = ()) -> Any:
        """The logits of the position after the accepted tokens and then `ahead` (never with a grammar)."""
        out = logits if self.penalties is None else self.penalties.apply(logits, ahead)
        if self.bias is not None:
            out = out.copy() if out is logits else out
            out[self.bias[0]] += self.bias[1]
        return out if self.grammar is None else self.grammar.mask(out)

    def accept(self, tok: int) -> None:
        if self.penalties is not None:
            self.penalties.push(tok)
        if self.grammar is not None:
            self.grammar.accept(tok)

    def sample(self, logits: Any) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        cand, p = self._distribution(logits)
        return int(cand[self._draw(p)])

    def verify(self, logits: Any, draft: int) -> int:
        """The next token when `draft` was guessed for it, distributed exactly as `sample` would draw it.

        Greedy: the best token (the draft stands if it is that one). Otherwise speculative sampling with a
        guess that is certain: the draft is kept with the probability the model gives it, and else a token
        is drawn from the model's distribution without the draft (renormalized), which together is the
        model's distribution itself.
        """
        if self.greedy:
            return self.sample(logits)
        cand, p = self._distribution(logits)
        at = np.flatnonzero(cand == draft)
        if at.size:
            p_draft = p[at[0]] / p.sum()
            if self.rng.random() < p_draft:
                return draft
            p = p.copy()
            p[at[0]] = 0.0
        return int(cand[self._draw(p)])

    def _distribution(self, logits: Any) -> tuple[Any, Any]:
        """Candidate tokens, most likely first, and their unnormalized probabilities after temperature and top-p."""
        z = logits / np.float32(self.temperature)
        best = z.max()
        cand = np.flatnonzero(z > best - _NEGLIGIBLE_LOGIT)
        p = np.exp(z[cand] - best, dtype=np.float64)
        order = np.argsort(-p, kind="stable")
        cand, p = cand[order], p[order]
        if self.top_p < 1.0:  # the smallest head whose mass reaches top_p
            cum = np.cumsum(p)
            keep = int(np.searchsorted(cum, self.top_p * cum[-1])) + 1
            cand, p = cand[:keep], p[:keep]
        return cand, p

    def _draw(self, p: Any) -> int:
        cum = np.cumsum(p)
        pick = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
        return min(pick, len(p) - 1)


# Prompt lookup drafts what followed the latest earlier occurrence of the answer's last 3 tokens (2 matched too
# often by chance: on RAG answers the model agreed with 31% of such drafts, against 58% with 3), starting with 2
# drafts and adding 2 after each step the model agreed with all of them (one fewer when it did not).
LOOKUP_NGRAM = 3
LOOKUP_START = 2


@dataclass
class Finish:
    """The last thing a request emits (unless it emits an exception)."""

    reason: str  # "stop", "length", "repetition" (the loop guard), "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass
class EngineRequest:
    """One generation. `emit` receives (text, token id) pieces, each after its TokenLogprob when the sampling
    asks for them, then one Finish or one exception."""

    ids: list[int]
    sampling: Sampling
    adapter: str | None
    emit: Callable[[Any], object]
    stop_ids: frozenset[int] = frozenset()
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Scheduler state, owned by the engine thread.
    slot: Slot | None = None
    lora: _Adapter | None = None  # the loaded adapter it runs with (kept alive until it finishes)
    pending: list[int] = field(default_factory=list)
    n_out: int = 0
    cached: int = 0
    sampler: TokenSampler | None = None
    guard: LoopGuard | None = None
    decoder: Any = None
    # Prompt lookup: where the token after each LOOKUP_NGRAM-gram of the tokens so far last was, how far that is
    # indexed, and how many drafts to try next.
    ngrams: dict[tuple[int, ...], int] = field(default_factory=dict)
    indexed: int = 0
    lookup_len: int = LOOKUP_START

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def adapter_key(self) -> int:
        """Which KV caches it may share and which requests it may batch with: 0 for the base model."""
        return self.lora.key if self.lora is not None else 0


@dataclass
class Slot:
    """A llama.cpp sequence id and the tokens its KV cache holds (valid for one adapter)."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    main_len: int = 0  # how many of `tokens` the main context's cache holds (the rest only the solo context's)
    adapter_key: int = 0
    req: EngineRequest | None = None
    last_used: float = 0.0


@dataclass
class _Adapter:
    key: int
    ptr: Any
    users: int = 0


# A cached prefix shorter than this (a chat template's first tokens) does not decide which slot a request takes.
MIN_PREFIX_REUSE = 32


def _close_enough(a: Any, b: Any, what: str) -> None:
    """Raise unless next-token distributions `a` and `b` (logits) are the same model's: KL(a || b) < 0.5 nats."""
    pa = np.exp(a - a.max(), dtype=np.float64)
    pb = np.exp(b - b.max(), dtype=np.float64)
    pa, pb = pa / pa.sum(), pb / pb.sum()
    kl = float(np.sum(pa * (np.log(pa + 1e-30) - np.log(pb + 1e-30))))
    if not kl < 0.5:
        raise ValueError(f"{what}: the next-token distributions differ (KL {kl:.2f} nats)")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class LlamaEngine:
    """Thread-safe front: `submit`, `add_adapter`, `remove_adapter`; everything else runs on the engine thread."""

    def __init__(
        self,
        model_path: Path,
        *,
        slots: int = 8,
        context_tokens: int = 2048,
        threads: int = 0,
        batch_tokens: int = 512,
        flash_attention: bool = True,
        unified_kv: bool = False,
        lookup_tokens: int = 0,
        solo_path: Path | None = None,
    ) -> None:
        self.model_path = model_path
        self.solo_path = solo_path
        self.n_slots = max(1, slots)
        self.context_tokens = context_tokens
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.batch_tokens = batch_tokens
        self.flash_attention = flash_attention
        self.unified_kv = unified_kv
        self.lookup_tokens = max(0, lookup_tokens)
        self._lib: Any = None
        self.model: Any = None
        self.ctx: Any = None
        self.vocab: Any = None
        self._mem: Any = None
        self._batch: Any = None
        self._slots = [Slot(seq=i) for i in range(self.n_slots)]
        self._adapters: dict[str, _Adapter] = {}
        self._retired: list[_Adapter] = []
        self._keys = itertools.count(1)
        self._inbox: deque[Any] = deque()
        self._wake = threading.Condition()
        self._waiting: deque[EngineRequest] = deque()
        self._running: list[EngineRequest] = []
        self._rr = 0  # round robin over adapter groups
        self._applied: _Adapter | None = None  # the adapter set on the context now
        self._pieces: dict[int, tuple[bytes, bool]] = {}  # token → (its bytes, ends generation)
        self._n_vocab = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        # The solo context (quantized weights, one sequence) and whose KV it holds, up to how many tokens.
        self._solo: tuple[Any, Any, Any] | None = None  # (model, context, memory)
        self._solo_req: EngineRequest | None = None
        self._solo_len = 0
        self.solo_status: str | None = None  # why lone answers do not decode on the solo weights, if they don't
        self.stats = {
            "steps": 0,
            "batched_tokens": 0,
            "prefix_hits": 0,
            "prefix_tokens": 0,
            "moves": 0,
            "drafted": 0,  # prompt-lookup tokens fed for verification
            "accepted": 0,  # of those, the ones the model agreed with
            "solo_steps": 0,  # steps decoded on the solo weights
            "kv_copies": 0,  # sequences moved between the two contexts
        }

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._lib, self.model, self.ctx = lib, model, ctx = open_context(
            self.model_path,
            slots=self.n_slots,
            context_tokens=self.context_tokens,
            threads=self.threads,
            batch_tokens=self.batch_tokens,
            flash_attention=self.flash_attention,
            unified_kv=self.unified_kv,
        )
        self.vocab = lib.llama_model_get_vocab(model)
        self._n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self._mem = lib.llama_get_memory(ctx)
        self._batch = lib.llama_batch_init(self.batch_tokens + self.n_slots, 0, 1)
        if self.solo_path is not None:
            self._open_solo(self.solo_path)
        self._thread = threading.Thread(target=self._loop, name="enclave-llama", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        lib = self._lib
        if lib is None:
            return
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            lib.llama_free(self.ctx)
            self.ctx = None
        self._close_solo()
        for a in [*self._adapters.values(), *self._retired]:
            with contextlib.suppress(Exception):
                lib.llama_adapter_lora_free(a.ptr)
        self._adapters.clear()
        if self.model:
            lib.llama_model_free(self.model)
            self.model = None

    # -- the thread-safe front --------------------------------------------------------------------------
    def submit(self, req: EngineRequest) -> EngineRequest:
        self._post(("submit", req))
        return req

    def add_adapter(self, name: str, gguf_path: Path) -> None:
        """Load a GGUF LoRA adapter (blocking); a loaded adapter of the same name is replaced."""
        self._call("add", name, gguf_path)

    def remove_adapter(self, name: str) -> None:
        self._call("remove", name)

    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def grammar(self, gbnf: str) -> GrammarMask:
        """A grammar mask over this model's vocabulary (any thread; a request's sampling then owns it)."""
        return GrammarMask(self._lib, self.vocab, gbnf, self._n_vocab)

    def load(self) -> dict[str, int]:
        """What the engine holds right now (for metrics and tests)."""
        return {"running": len(self._running), "waiting": len(self._waiting) + len(self._inbox)}

    def _post(self, item: Any) -> None:
        with self._wake:
            self._inbox.append(item)
            self._wake.notify()

    def _call(self, *command: Any) -> None:
        done = threading.Event()
        box: list[BaseException] = []
        self._post(("call", command, done, box))
        if not done.wait(120):
            raise TimeoutError("the llama.cpp engine did not answer")
        if box:
            raise box[0]

    # -- the engine thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._inbox and not self._running and not self._waiting and not self._stopping:
                    self._wake.wait(0.5)
                if self._stopping:
                    break
                inbox = list(self._inbox)
                self._inbox.clear()
            for item in inbox:
                self._handle(item)
            try:
                self._step()
            except Exception as exc:  # a failing decode fails the requests in flight, never the thread
                log.exception("llama.cpp step failed")
                for req in list(self._running):
                    self._finish(req, exc)
        for req in [*self._running, *self._waiting]:
            self._finish(req, RuntimeError("the engine is shutting down"))

    def _handle(self, item: Any) -> None:
        if item[0] == "submit":
            self._waiting.append(item[1])
            return
        _, command, done, box = item
        try:
            if command[0] == "add":
                self._do_add(command[1], command[2])
            else:
                self._do_remove(command[1])
        except BaseException as exc:
            box.append(exc)
        finally:
            done.set()

    def _do_add(self, name: str, path: Path) -> None:
        ptr = self._lib.llama_adapter_lora_init(self.model, str(path).encode())
        if not ptr:
            raise ValueError(f"llama.cpp refused the adapter file {path.name} (wrong base model or corrupt)")
        if name in self._adapters:
            self._do_remove(name)
        self._adapters[name] = _Adapter(key=next(self._keys), ptr=ptr)

    def _do_remove(self, name: str) -> None:
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            return
        for slot in self._slots:  # its KV is worthless to anyone else
            if slot.adapter_key == adapter.key and slot.req is None:
                slot.tokens = []
        self._retired.append(adapter)
        self._free_retired()

    def _free_retired(self) -> None:
        for a in [a for a in self._retired if a.users == 0]:
            self._retired.remove(a)
            self._set_adapter(None)
            self._lib.llama_adapter_lora_free(a.ptr)

    def _set_adapter(self, adapter: _Adapter | None) -> None:
        if adapter is self._applied:
            return
        self._applied = adapter
        lib = self._lib
        if adapter is None:
            lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            arr = (lib.llama_adapter_lora_p_ctypes * 1)(adapter.ptr)
            scales = (ctypes.c_float * 1)(1.0)
            lib.llama_set_adapters_lora(self.ctx, arr, 1, scales)

    # -- the solo context: a lone answer decodes on the quantized weights ---------------------------------
    def _open_solo(self, path: Path) -> None:
        """Open the one-sequence context on `path` and check a sequence's round trip; else decode without it."""
        try:
            _, model, ctx = open_context(
                path,
                slots=1,
                context_tokens=self.context_tokens,
                threads=self.threads,
                batch_tokens=max(64, self.lookup_tokens + 1),
                flash_attention=self.flash_attention,
            )
        except RuntimeError as exc:
            self._drop_solo(str(exc))
            return
        self._solo = (model, ctx, self._lib.llama_get_memory(ctx))
        try:
            self._check_solo()
        except Exception as exc:  # any failure only costs the faster lone answer
            self._drop_solo(f"a sequence's cache did not survive the move between the two contexts: {exc}")

    def _drop_solo(self, why: str) -> None:
        """Decode lone answers on the main weights from now on (the main cache holds every sequence), saying why."""
        self.solo_status = why
        log.warning("llama.cpp engine: lone answers decode on %s: %s", self.model_path.name, why)
        self._close_solo()
        self._solo_req, self._solo_len = None, 0

    def _check_solo(self) -> None:
        """A prompt read by the main context, continued by the solo one, and back: each next-token distribution
        must be the other context's (KL < 0.5 nats; a misplaced cache gives ~8)."""
        lib = self._lib
        model, ctx, mem = self._solo  # type: ignore[misc]
        if lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)) != self._n_vocab:
            raise ValueError("the two GGUF files have different vocabularies")
        text = b"Enclave answers questions from the documents of the company that runs it, and cites them."
        arr = (ctypes.c_int32 * 64)()
        n = lib.llama_tokenize(self.vocab, text, len(text), arr, len(arr), True, False)
        ids = list(arr[: max(0, n)])
        if len(ids) < 8:
            raise ValueError("the check prompt did not tokenize")
        try:
            self._decode_one(self.ctx, 0, ids[:-2], 0)
            copy_seq(lib, self.ctx, 0, ctx, 0, 1)
            main = self._decode_one(self.ctx, 0, ids[-2:-1], len(ids) - 2)
            alone = self._decode_one(ctx, 0, ids[-2:-1], len(ids) - 2)
            _close_enough(main, alone, "main → solo")
            copy_seq(lib, ctx, 0, self.ctx, 0, self._main_streams)
            main = self._decode_one(self.ctx, 0, ids[-1:], len(ids) - 1)
            alone = self._decode_one(ctx, 0, ids[-1:], len(ids) - 1)
            _close_enough(alone, main, "solo → main")
        finally:
            lib.llama_memory_seq_rm(self._mem, 0, -1, -1)
            lib.llama_memory_seq_rm(mem, 0, -1, -1)

    def _decode_one(self, ctx: Any, seq: int, ids: list[int], pos0: int) -> Any:
        """Feed `ids` to `seq` of `ctx` from position `pos0`; a copy of the last token's logits."""
        b = self._batch
        for j, tok in enumerate(ids):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, pos0 + j, 1, 0
            b.seq_id[j][0] = seq
        b.logits[len(ids) - 1] = 1
        b.n_tokens = len(ids)
        if self._lib.llama_decode(ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(ctx, -1), shape=(self._n_vocab,)).copy()

    def _close_solo(self) -> None:
        if self._solo is not None:
            model, ctx, _ = self._solo
            self._solo = None
            self._lib.llama_free(ctx)
            self._lib.llama_model_free(model)

    @property
    def _main_streams(self) -> int:
        """How many KV streams the main context has: one per sequence, or one shared."""
        return 1 if self.unified_kv else self.n_slots

    def _solo_candidate(self) -> EngineRequest | None:
        """The answer to decode on the solo weights this step: one running alone, no adapter, its first token out.

        The first token always comes from the main weights, whether the prompt was read whole or all but its last
        token came from the prefix cache, so that a question asked again starts its answer the same way.
        """
        if self._solo is None or len(self._running) != 1:
            return None
        req = self._running[0]
        return req if req.lora is None and req.n_out > 0 and len(req.pending) == 1 and req.slot is not None else None

    def _to_solo(self, req: EngineRequest) -> None:
        slot = req.slot
        assert slot is not None and self._solo is not None
        if self._solo_req is req and self._solo_len == len(slot.tokens):
            return
        # Every token is in the main cache here: it read the prompt, or took the tokens back (`_from_solo`).
        copy_seq(self._lib, self.ctx, slot.seq, self._solo[1], 0, 1)
        self._solo_req, self._solo_len = req, len(slot.tokens)
        self.stats["kv_copies"] += 1

    def _from_solo(self) -> None:
        req = self._solo_req
        slot = req.slot if req is not None else None
        if slot is not None and self._solo is not None and slot.main_len < len(slot.tokens):
            copy_seq(self._lib, self._solo[1], 0, self.ctx, slot.seq, self._main_streams)
            slot.main_len = len(slot.tokens)
            self.stats["kv_copies"] += 1

    def _leave_solo(self, req: EngineRequest, keep: bool) -> None:
        """`req` ends: its tokens go back to the main cache (else the main cache keeps what it holds)."""
        slot = req.slot
        assert slot is not None
        try:
            if keep:
                self._from_solo()
        except RuntimeError:  # llama.cpp empties a sequence it could not restore
            log.warning("llama.cpp engine: an answer's cache could not move back; the next turn reads it again")
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            slot.main_len = 0
        del slot.tokens[slot.main_len :]
        self._solo_req, self._solo_len = None, 0

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self._slots if s.req is None]
            if not free:
                return
            req = self._waiting.popleft()
            if req.cancelled.is_set():
                self._release(req)
                self._emit_end(req, "cancelled")
                continue
            adapter = None
            if req.adapter is not None:
                adapter = self._adapters.get(req.adapter)
                if adapter is None:
                    self._release(req)
                    self._emit(req, LookupError(f"unknown adapter '{req.adapter}'"))
                    continue
            key = adapter.key if adapter else 0
            best, keep = self._pick_slot(free, req.ids, key)
            keep = min(keep, len(req.ids) - 1)  # at least one token must be fed to get logits
            if not self._lib.llama_memory_seq_rm(self._mem, best.seq, keep, -1):
                self._lib.llama_memory_seq_rm(self._mem, best.seq, -1, -1)
                keep = 0
            best.tokens = best.tokens[:keep]
            best.main_len = keep
            best.adapter_key = key
            best.req = req
            req.slot = best
            req.lora = adapter
            req.cached = keep
            if keep:
                self.stats["prefix_hits"] += 1
                self.stats["prefix_tokens"] += keep
            req.pending = list(req.ids[keep:])
            req.sampler = TokenSampler(req.sampling, req.ids, req.stop_ids)
            # A grammar bounds its own output (JSON may repeat its keys), so the loop guard stays out of it.
            req.guard = LoopGuard() if req.sampling.loop_guard and req.sampling.grammar is None else None
            req.decoder = codecs.getincrementaldecoder("utf-8")("replace")
            if adapter is not None:
                adapter.users += 1
            self._running.append(req)

    def _pick_slot(self, free: list[Slot], ids: list[int], key: int) -> tuple[Slot, int]:
        """The free slot to run `ids` in, and how many of its cached tokens it keeps.

        A slot whose cache shares a real prefix (system prompt, conversation) is reused, the one that loses the
        least of its cache beyond the match first; a match of a few chat-template tokens is not worth evicting
        another slot's cache for, so then an empty slot, or else the least recently used one, is taken. Among
        equals, the slot next to the running answers of the same adapter wins (a group with none running
        starts as far as it can from the others), so that each group stays batchable without a move.
        """
        own = [s.seq for s in self._slots if s.req is not None and s.adapter_key == key]
        others = [s.seq for s in self._slots if s.req is not None and s.adapter_key != key]

        def distance(slot: Slot) -> int:
            if own:
                return min(abs(slot.seq - b) for b in own)
            if others:
                return -min(abs(slot.seq - b) for b in others)
            return slot.seq

        matches = [(common_prefix(s.tokens, ids) if s.adapter_key == key else 0, s) for s in free]
        best_len, best = max(matches, key=lambda m: (m[0], m[0] - len(m[1].tokens), -distance(m[1]), -m[1].last_used))
        if best_len < MIN_PREFIX_REUSE:
            best_len, best = min(matches, key=lambda m: (len(m[1].tokens) > 0, m[1].last_used, distance(m[1])))
        return best, best_len

    def _compact(self) -> None:
        """Give each adapter group's running sequences consecutive slots, moving few (per-sequence caches only).

        llama.cpp batches sequences with per-sequence caches only in runs of consecutive ids: answers running
        in slots 0, 3 and 5 would cost three passes over the weights each step. Moving a sequence copies its
        slot's cache buffers (~47 MB for 2,048 tokens, a few ms) once; the extra pass is saved every step.
        A group moves only into free slots; when none fits, it takes more than one pass until one does.
        """
        if self.unified_kv:
            return
        groups: dict[int, set[int]] = {}
        for slot in self._slots:
            if slot.req is not None:
                groups.setdefault(slot.adapter_key, set()).add(slot.seq)
        if all(max(g) - min(g) + 1 == len(g) for g in groups.values()):
            return
        placed: set[int] = set()
        for key in sorted(groups, key=lambda k: (-len(groups[k]), k)):  # the largest group loses most to a split
            seqs = groups[key]  # unchanged so far: earlier groups moved only into free slots
            others = {s.seq for s in self._slots if s.req is not None} - seqs  # where earlier groups are now
            k = len(seqs)
            windows = [set(range(a, a + k)) for a in range(self.n_slots - k + 1)]
            windows = [w for w in windows if not w & (others | placed)]
            if not windows:
                continue
            window = max(windows, key=lambda w: len(w & seqs))  # the first of the best: fewest moves
            for src, dst in zip(sorted(seqs - window, reverse=True), sorted(window - seqs), strict=True):
                self._move(self._slots[src], self._slots[dst])
            placed |= window

    def _move(self, src: Slot, dst: Slot) -> None:
        lib, mem = self._lib, self._mem
        lib.llama_memory_seq_rm(mem, dst.seq, -1, -1)
        lib.llama_memory_seq_cp(mem, src.seq, dst.seq, -1, -1)  # whole buffers, copied before the next decode
        lib.llama_memory_seq_rm(mem, src.seq, -1, -1)
        dst.tokens, dst.adapter_key, dst.req, dst.last_used = src.tokens, src.adapter_key, src.req, src.last_used
        dst.main_len = src.main_len
        src.tokens, src.main_len, src.adapter_key, src.req = [], 0, 0, None
        assert dst.req is not None
        dst.req.slot = dst
        self.stats["moves"] += 1

    def _step(self) -> None:
        for req in [r for r in self._running if r.cancelled.is_set()]:
            self._finish(req, "cancelled")
        self._admit()
        if not self._running:
            return
        solo = self._solo_candidate()
        if solo is not None:  # decode it on the quantized weights: its KV goes there first if it is not there yet
            try:
                self._to_solo(solo)
            except RuntimeError as exc:  # the main cache still holds it all: go on there, without the solo context
                self._drop_solo(f"a sequence's cache could not move to the solo context: {exc}")
                solo = None
        if solo is not None:
            group = [solo]
            ctx, mem = self._solo[1], self._solo[2]  # type: ignore[index]
        else:
            self._from_solo()  # the main context must hold every token of an answer that ran alone
            self._compact()
            # One adapter group per step (llama.cpp applies adapters to a whole context), round robin between groups.
            groups = sorted({r.adapter_key for r in self._running})
            self._rr = (self._rr + 1) % len(groups)
            key = groups[self._rr]
            group = [r for r in self._running if r.adapter_key == key]
            self._set_adapter(group[0].lora)
            ctx, mem = self.ctx, self._mem

        b = self._batch
        n = 0
        budget = self.batch_tokens
        # Prompt lookup only for a lone answer: llama.cpp splits a batch whose sequences bring unequal numbers of
        # tokens into several passes, so drafts beside other answers would cost them more than they save.
        lookup = self.lookup_tokens > 0 and len(self._running) == 1
        # In batch order, as llama.cpp lays out their logits: each request with the tokens drafted for it.
        outputs: list[tuple[EngineRequest, list[int]]] = []
        # Decoding sequences first (one token each), then prompt chunks with what is left of the budget.
        for req in sorted(group, key=lambda r: (len(r.pending) > 1, r.slot.seq if r.slot else 0)):
            if budget <= 0:
                break
            slot = req.slot
            assert slot is not None
            plain = req.sampling.grammar is None  # a grammar judges one token at a time: no drafts
            drafts = self._draft(req, slot, budget - 1) if lookup and plain and len(req.pending) == 1 else []
            take = (req.pending[:budget] if len(req.pending) > 1 else req.pending) + drafts
            pos0 = len(slot.tokens)
            seq = 0 if solo is not None else slot.seq
            for j, tok in enumerate(take):
                b.token[n] = tok
                b.pos[n] = pos0 + j
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                b.logits[n] = 0
                n += 1
            budget -= len(take)
            slot.tokens.extend(take)
            del req.pending[: len(take) - len(drafts)]
            if not req.pending:  # its last known token is in: sample the next one (and check the drafts)
                for j in range(n - 1 - len(drafts), n):
                    b.logits[j] = 1
                outputs.append((req, drafts))
        b.n_tokens = n
        rc = self._lib.llama_decode(ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed (code {rc})")
        self.stats["steps"] += 1
        self.stats["batched_tokens"] += n
        if solo is not None:
            self.stats["solo_steps"] += 1
            self._solo_len = len(solo.slot.tokens)  # type: ignore[union-attr]
        else:
            for req in group:
                if req.slot is not None:
                    req.slot.main_len = len(req.slot.tokens)
        if not outputs:
            return
        # The rows of the tokens marked for logits, in batch order: one call for all of them.
        rows = sum(1 + len(d) for _, d in outputs)
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits(ctx), shape=(rows, self._n_vocab))
        row = 0
        for req, drafts in outputs:
            sampler, slot = req.sampler, req.slot  # both stay set until a token is taken below
            assert sampler is not None and slot is not None
            # The model's tokens after the last known one: one per draft it agreed with, then one more. Penalties
            # at a drafted position count the drafts before it, as if the answer had been decoded one by one.
            picks: list[int] = []
            for i, draft in enumerate(drafts):
                picks.append(sampler.verify(sampler.penalize(logits[row + i], picks), draft))
                if picks[-1] != draft:
                    break
            else:
                picks.append(sampler.sample(sampler.penalize(logits[row + len(drafts)], picks)))
            row0, row = row, row + 1 + len(drafts)  # pick k was sampled from row row0 + k
            if drafts:
                agreed = len(picks) - 1
                self.stats["drafted"] += len(drafts)
                self.stats["accepted"] += agreed
                grow = agreed == len(drafts)
                req.lookup_len = min(self.lookup_tokens, req.lookup_len + 2) if grow else max(1, req.lookup_len - 1)
                # The cache's tokens up to the last draft the model agreed with (the drafts are its last tokens).
                keep = len(slot.tokens) - len(drafts) + agreed
                if len(slot.tokens) > keep:  # before any token leaves: the slot is consistent when it finishes
                    self._lib.llama_memory_seq_rm(mem, 0 if solo is not None else slot.seq, keep, -1)
                    del slot.tokens[keep:]
                    slot.main_len = min(slot.main_len, keep)
                    self._solo_len = min(self._solo_len, keep)
            n_top = req.sampling.logprobs
            for k, tok in enumerate(picks):
                lp = None if n_top is None else self._logprob(logits[row0 + k], tok, n_top)
                self._take(req, tok, lp)
                if req.sampler is None:  # finished (stop token or length)
                    break

    def _draft(self, req: EngineRequest, slot: Slot, room: int) -> list[int]:
        """Prompt lookup: the tokens that followed the latest earlier occurrence of the answer's last few tokens
        in its own prompt and answer (RAG answers quote their sources), up to `lookup_tokens` of them."""
        room = min(room, req.lookup_len, self.lookup_tokens, req.sampling.max_tokens - req.n_out - 1)
        if room <= 0:
            return []
        history = slot.tokens + req.pending
        index, n = req.ngrams, LOOKUP_NGRAM
        for i in range(max(0, req.indexed - n + 1), len(history) - n):  # every n-gram whose next token is known
            index[tuple(history[i : i + n])] = i + n
        req.indexed = len(history) - 1
        at = index.get(tuple(history[-n:]))
        return history[at : at + room] if at is not None else []

    def _piece(self, tok: int) -> tuple[bytes, bool]:
        cached = self._pieces.get(tok)
        if cached is None:
            lib = self._lib
            buf = ctypes.create_string_buffer(64)
            size = lib.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
            if size < 0:
                buf = ctypes.create_string_buffer(-size)
                size = lib.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
            cached = self._pieces[tok] = (buf.raw[:size], bool(lib.llama_vocab_is_eog(self.vocab, tok)))
        return cached

    def _logprob(self, logits: Any, tok: int, n_top: int) -> TokenLogprob:
        """`tok`'s log-probability under the model's own distribution (`logits` raw), and the `n_top` likeliest."""
        x = np.asarray(logits, dtype=np.float64)
        m = float(x.max())
        norm = m + float(np.log(np.exp(x - m).sum()))
        top: tuple[tuple[str, tuple[int, ...], float], ...] = ()
        if n_top > 0:
            best = np.argpartition(-x, n_top)[:n_top]
            best = best[np.argsort(-x[best], kind="stable")]
            top = tuple(self._described(int(t), float(x[t]) - norm) for t in best)
        return TokenLogprob(*self._described(tok, float(x[tok]) - norm), top=top)

    def _described(self, tok: int, logprob: float) -> tuple[str, tuple[int, ...], float]:
        raw = self._piece(tok)[0]
        return raw.decode("utf-8", errors="replace"), tuple(raw), logprob

    def _take(self, req: EngineRequest, tok: int, logprob: TokenLogprob | None = None) -> None:
        piece, eog = self._piece(tok)
        if eog or tok in req.stop_ids:
            self._finish(req, "stop")
            return
        if req.guard is not None and req.guard.push(tok):  # the answer is looping: this token and all after go
            self._finish(req, "repetition")
            return
        req.n_out += 1
        if logprob is not None:
            self._emit(req, logprob)
        text = req.decoder.decode(piece)
        self._emit(req, (text, tok))
        if req.n_out >= req.sampling.max_tokens:
            self._finish(req, "length")
            return
        assert req.sampler is not None
        req.sampler.accept(tok)
        req.pending = [tok]

    def _emit(self, req: EngineRequest, item: Any) -> None:
        """Hand an item to the request's consumer; a consumer that is gone cancels its request, never the engine."""
        try:
            req.emit(item)
        except Exception:
            log.debug("a consumer went away; cancelling its request", exc_info=True)
            req.cancelled.set()

    def _emit_end(self, req: EngineRequest, reason: str) -> None:
        self._emit(req, Finish(reason, len(req.ids), req.n_out, req.cached))

    @staticmethod
    def _release(req: EngineRequest) -> None:
        """Free what a request owns in llama.cpp besides its slot: its grammar."""
        if req.sampling.grammar is not None:
            req.sampling.grammar.close()

    def _finish(self, req: EngineRequest, outcome: str | BaseException) -> None:
        if req in self._running:
            self._running.remove(req)
        req.sampler = None
        self._release(req)
        slot = req.slot
        if slot is not None:
            if self._solo_req is req:  # the answer ran alone: its cache goes back for the next turn to reuse
                self._leave_solo(req, keep=not isinstance(outcome, BaseException))
            slot.req = None
            slot.last_used = time.monotonic()
            if isinstance(outcome, BaseException):  # the cache may hold a half-written batch
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                slot.tokens = []
                slot.main_len = 0
            req.slot = None
        if req.lora is not None:
            req.lora.users -= 1
            self._free_retired()
        if isinstance(outcome, BaseException):
            self._emit(req, outcome)
        else:
            if req.decoder is not None:
                tail = req.decoder.decode(b"", final=True)
                if tail:
                    self._emit(req, (tail, -1))
            self._emit_end(req, outcome)
