"""Generation speed of the llama.cpp engine beside llama.cpp itself, on the same GGUF: `python -m bench.inference`.

One run, four sections, each printed as a table and written to `bench/results/inference.json`:

1. single-stream decode tokens/s (greedy, a prompt that makes the model write at length): our backend as
   served (a lone answer on the shipped weights, `models.solo_decode`), with the batching weights only, and
   on the shipped file alone, vs llama-cpp-python's `Llama` on the shipped file (e.g. Q4_K_M) and on the
   file the engine batches on (bf16 or Q8_0);
2. aggregate tokens/s at 1, 4 and 8 concurrent streams (distinct prompts): our backend vs `Llama` serving
   them one after another (a single-sequence API, as its server does) and vs a raw batched-decode loop on
   llama.cpp's low-level API with the engine's context parameters and no scheduler (what ours costs);
3. time to first token (prefill) for ~600-token RAG prompts built from the sample documents with
   `rag_messages`: ours as served (prefix cache on) and cold, vs `Llama` evaluating the whole prompt afresh;
4. single-stream decode as a share of the memory-bandwidth bound (bytes of weights read per token).

Every model is warmed up once, and the methods take turns within a section (one at a time, never two
computing at once); each section closes what it opened. Timings mean something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.machine import cpu_model
from enclave.core.protocols import Chunk, Generation, GenerationParams, Message
from enclave.core.settings import Settings, offline_environment

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "inference.json"
DOCS = ROOT / "enclave" / "knowledge" / "sample_docs"

TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "a robot that wants to learn to paint",
    "two rival bakers in a small mountain village",
    "a girl who can talk to the wind",
    "an old sailor's last voyage",
    "a detective solving a mystery on a night train",
    "a dragon who is afraid of fire",
    "a boy who builds a rocket in his garden",
    "a library where the books come alive at night",
    "a farmer and a talking crow",
    "a musician who loses her voice",
    "the first family to live on Mars",
    "a clockmaker who can stop time",
    "a cat that becomes mayor of a town",
    "a knight who hates fighting",
    "a scientist who shrinks herself by accident",
]
PLACES = [
    "",
    " in winter",
    " set in the desert",
    " on a distant island",
    " in a busy city",
    " long ago",
    " in the far future",
    " told by a child",
]

QUESTIONS = [
    "How do I ingest a folder of files into a collection?",
    "What is the default chunk size and overlap, and how are documents chunked?",
    "How does hybrid search combine dense search and BM25?",
    "How do I train a fine-tuned adapter and evaluate it?",
    "How does the router decide between the documents, an adapter and the base model?",
    "How does moderation check answers while they stream?",
    "How do I deploy Enclave on Kubernetes with the Helm chart?",
    "Which events does the chat API send over WebSocket and server-sent events?",
    "How do I install Enclave and ask my first question?",
    "How do API keys and authentication work?",
    "What limits apply to requests and how are conversations stored?",
]
WARMUP_QUESTION = "What are the system requirements?"
_STOPWORDS = set(
    "a an and are as at be by can do does for from how i in is it my of on or the to what which with".split()
)


# -- helpers ----------------------------------------------------------------------------------------------
def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _r(x: float, nd: int = 1) -> float | None:
    return None if x != x else round(x, nd)  # NaN → null in the JSON


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import llama_cpp

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": _version("llama_cpp_python"),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "gguf": _version("gguf"),
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
    }


def _cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall, busy CPU seconds of the whole machine, stolen seconds, this process's CPU seconds)."""
    import resource

    tick = os.sysconf("SC_CLK_TCK")
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        f = [0] * 8
    f += [0] * (8 - len(f))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    busy = sum(f) - f[3] - f[4]  # user nice system idle iowait irq softirq steal: all but idle and iowait
    return time.perf_counter(), busy / tick, f[7] / tick, ru.ru_utime + ru.ru_stime


def _cpu_usage(since: tuple[float, float, float, float]) -> dict[str, float]:
    """How much of the machine others took meanwhile: the check that a timing was taken on a quiet machine."""
    now = _cpu_snapshot()
    wall, busy, steal, own = (b - a for a, b in zip(since, now, strict=True))
    capacity = max(wall, 1e-9) * (os.cpu_count() or 1)
    return {
        "seconds": round(wall, 1),
        "own_share": round(own / capacity, 3),
        "others_share": round(max(0.0, busy - own) / capacity, 3),
        "steal_share": round(steal / capacity, 3),
    }


def story(k: int) -> list[Message]:
    """The k-th distinct prompt that makes the model write at length."""
    topic, place = TOPICS[k % len(TOPICS)], PLACES[(k // len(TOPICS)) % len(PLACES)]
    return [Message(role="user", content=f"Write a long story about {topic}{place}.")]


# -- one generation, timed -----------------------------------------------------------------------------------
@dataclass
class Run:
    tokens: int  # completion tokens (what a stream produced, even if it stopped early)
    prompt_tokens: int
    ttft_s: float  # start → first token
    decode_s: float  # first token → last token
    wall_s: float  # start → last token
    decode_tokens: int  # tokens after the first
    cached_tokens: int = 0
    ids: list[int] | None = None

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def e2e_tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")


async def ours(backend: Any, prompt: Sequence[Message] | str, max_tokens: int) -> Run:
    result = Generation()
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    ids: list[int] = []
    t0 = time.perf_counter()
    first = last = t0
    at_first = 0
    async for _text, tok in backend.stream_tokens(prompt, params, adapter=None, result=result):
        now = time.perf_counter()
        if not ids:
            first, at_first = now, result.completion_tokens
        last = now
        ids.append(tok)
    n = result.completion_tokens
    if not ids:
        return Run(n, result.prompt_tokens, float("nan"), 0.0, time.perf_counter() - t0, 0, ids=ids)
    # A piece normally carries one token; only then are the ids the exact sequence.
    return Run(
        n, result.prompt_tokens, first - t0, last - first, last - t0, n - at_first, ids=ids if len(ids) == n else None
    )


def llama_run(llm: Any, ids: list[int], max_tokens: int, stop: Callable[[int], bool], fresh: bool = True) -> Run:
    """Greedy generation with `Llama.generate` on prompt ids; `fresh` evaluates the whole prompt (reset)."""
    if fresh:
        llm.reset()  # n_tokens = 0: generate() skips its own prefix matching and evaluates everything
    # What generate() will find in its KV cache: the common prefix with the previous prompt.
    cached = 0 if fresh else _common_prefix([int(t) for t in llm.input_ids[: llm.n_tokens]], ids) or 0
    out: list[int] = []
    t0 = time.perf_counter()
    first = last = t0
    gen = llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
    try:
        for tok in gen:
            now = time.perf_counter()
            if stop(tok):
                break
            if not out:
                first = now
            last = now
            out.append(int(tok))
            if len(out) >= max_tokens:
                break
    finally:
        gen.close()
    if not out:
        return Run(0, len(ids), float("nan"), 0.0, time.perf_counter() - t0, 0, cached, out)
    return Run(len(out), len(ids), first - t0, last - first, last - t0, len(out) - 1, cached, out)


def _stopper(llm: Any, stop_ids: set[int]) -> Callable[[int], bool]:
    """The engine's end of answer: its stop ids or any end-of-generation token of the vocabulary."""
    import llama_cpp

    lib: Any = llama_cpp
    vocab = llm._model.vocab
    return lambda tok: tok in stop_ids or bool(lib.llama_vocab_is_eog(vocab, tok))


def _common_prefix(a: Sequence[int] | None, b: Sequence[int] | None) -> int | None:
    if a is None or b is None:
        return None
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# -- llama.cpp's batched decode with no scheduler ------------------------------------------------------------
class RawBatched:
    """All prompts prefilled in batches, then one token per sequence per llama_decode, greedy-sampled natively.

    Same model file and context parameters as `LlamaEngine.start`; no admission, no prefix cache, no text
    decoding, no callbacks, no asyncio: the ceiling the engine's scheduler is measured against.
    """

    def __init__(
        self,
        path: Path,
        *,
        slots: int,
        context_tokens: int,
        threads: int,
        batch_tokens: int,
        flash_attention: bool,
        unified_kv: bool,
    ) -> None:
        from enclave.engine.llama_engine import open_context

        self.lib, self.model, self.ctx = open_context(
            path,
            slots=slots,
            context_tokens=context_tokens,
            threads=threads,
            batch_tokens=batch_tokens,
            flash_attention=flash_attention,
            unified_kv=unified_kv,
        )
        lib = self.lib
        self.slots = slots
        self.batch_tokens = batch_tokens
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(batch_tokens + slots, 0, 1)
        self.sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(self.sampler, lib.llama_sampler_init_greedy())

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for n, (seq, pos, tok, logits) in enumerate(entries):
            b.token[n] = tok
            b.pos[n] = pos
            b.n_seq_id[n] = 1
            b.seq_id[n][0] = seq
            b.logits[n] = 1 if logits else 0
        b.n_tokens = len(entries)
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed (code {rc})")

    def run(self, prompts: list[list[int]], max_tokens: int, stop_ids: set[int]) -> tuple[list[list[int]], float]:
        """(tokens per sequence, wall seconds from the first prefill to the last token)."""
        lib = self.lib
        if len(prompts) > self.slots:
            raise ValueError(f"{len(prompts)} prompts for {self.slots} sequences")
        lib.llama_memory_clear(self.mem, True)
        out: list[list[int]] = [[] for _ in prompts]
        pos = [len(p) for p in prompts]
        last = [0] * len(prompts)
        active: set[int] = set()

        def take(seq: int, i: int) -> None:
            tok = int(lib.llama_sampler_sample(self.sampler, self.ctx, i))
            if tok in stop_ids or lib.llama_vocab_is_eog(self.vocab, tok):
                active.discard(seq)
                return
            out[seq].append(tok)
            last[seq] = tok
            if len(out[seq]) >= max_tokens:
                active.discard(seq)
            else:
                active.add(seq)

        t0 = time.perf_counter()
        flat = [(s, j, tok, j == len(p) - 1) for s, p in enumerate(prompts) for j, tok in enumerate(p)]
        for start in range(0, len(flat), self.batch_tokens):
            chunk = flat[start : start + self.batch_tokens]
            self._decode(chunk)
            for i, (s, _pos, _tok, logits) in enumerate(chunk):
                if logits:
                    take(s, i)
        while active:
            seqs = sorted(active)
            self._decode([(s, pos[s], last[s], True) for s in seqs])
            for i, s in enumerate(seqs):
                pos[s] += 1
                take(s, i)
        return out, time.perf_counter() - t0

    def close(self) -> None:
        lib = self.lib
        if self.sampler is not None:
            lib.llama_sampler_free(self.sampler)
            self.sampler = None
        if self.batch is not None:
            lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lib.llama_model_free(self.model)
            self.model = None


# -- RAG prompts from the sample documents -----------------------------------------------------------------
def _words(text: str) -> list[str]:
    import re

    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS]


def sample_chunks(settings: Settings) -> list[Chunk]:
    """The sample documents chunked as ingestion chunks them (by section, then by size), without Chroma."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from enclave.knowledge.loaders import load

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=settings.rag.chunk_size,
        chunk_overlap=settings.rag.chunk_overlap,
        separators=["\n\n", "\n", ". ", " ", ""],
    )
    chunks = []
    for path in sorted(DOCS.glob("*.md")):
        doc = load(path.name, path.read_bytes())
        for s in doc.sections:
            for i, piece in enumerate(splitter.split_text(s.text)):
                text = f"{s.heading}\n{piece}" if s.heading and not piece.startswith(s.heading) else piece
                chunks.append(
                    Chunk(
                        id=f"{path.stem}:{s.heading}:{i}",
                        text=text,
                        title=doc.title,
                        uri=str(path),
                        score=0.0,
                        metadata={"section": s.heading},
                    )
                )
    return chunks


def rag_prompt(
    question: str, chunks: list[Chunk], count: Callable[[list[Message]], int], target_tokens: int
) -> tuple[list[Message], int]:
    """The best-matching chunks (word overlap, idf-weighted) added until the prompt reaches target_tokens."""
    import math

    from enclave.chat.rag import rag_messages

    docs = [set(_words(c.text)) for c in chunks]
    idf = {w: math.log(len(docs) / sum(w in d for d in docs)) + 1 for d in docs for w in d}
    q = set(_words(question))
    scored = sorted(range(len(chunks)), key=lambda i: (-sum(idf[w] for w in q & docs[i]), i))
    picked: list[Chunk] = []
    msgs = rag_messages(question, picked)
    for i in scored:
        c = chunks[i]
        picked.append(Chunk(c.id, c.text, c.title, c.uri, round(sum(idf[w] for w in q & docs[i]), 3), c.metadata))
        msgs = rag_messages(question, picked)
        if count(msgs) >= target_tokens:
            break
    return msgs, len(picked)


# -- memory bandwidth and bytes per token ------------------------------------------------------------------
def read_bandwidth(nbytes: int, threads: int, repeats: int) -> dict[str, Any]:
    """Best-of-N read bandwidth: numpy sums over an array far larger than any cache, on 1 and on N threads."""
    import numpy as np

    a = np.ones(nbytes // 4, dtype=np.float32)  # written once, so every page is resident
    single = []
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        single.append(time.perf_counter() - t)
    parts = np.array_split(a, threads)
    multi = []
    with ThreadPoolExecutor(threads) as pool:  # numpy's reductions release the GIL
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(np.sum, parts))
            multi.append(time.perf_counter() - t)
    gb1, gbn = a.nbytes / min(single) / 1e9, a.nbytes / min(multi) / 1e9
    del a, parts
    return {
        "array_bytes": nbytes,
        "repeats": repeats,
        "threads": threads,
        "single_thread_gb_s": round(gb1, 2),
        "threads_gb_s": round(gbn, 2),
        "best_gb_s": round(max(gb1, gbn), 2),
    }


def weight_bytes(path: Path) -> dict[str, Any]:
    """Bytes read per decoded token: every tensor once, except an untied token embedding (one row per token)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}
    total = sum(int(t.n_bytes) for t in r.tensors)
    tied = "output.weight" not in tensors
    embd = tensors.get("token_embd.weight")
    per_token = total
    if embd is not None and not tied:  # only one row of the embedding is gathered
        rows = int(embd.shape[-1])
        per_token = total - int(embd.n_bytes) + int(embd.n_bytes) // rows

    def meta(key: str) -> int | None:
        f = r.fields.get(key)
        return int(f.parts[-1][0]) if f is not None else None

    arch = "llama"
    af = r.fields.get("general.architecture")
    if af is not None:
        arch = bytes(af.parts[-1]).decode()
    layers, heads = meta(f"{arch}.block_count"), meta(f"{arch}.attention.head_count")
    kv_heads, width = meta(f"{arch}.attention.head_count_kv"), meta(f"{arch}.embedding_length")
    kv_per_pos = 2 * layers * kv_heads * (width // heads) * 2 if layers and heads and kv_heads and width else 0
    return {
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "tensor_bytes": total,
        "embedding_tied_to_output": tied,
        "weight_bytes_per_token": per_token,
        "kv_bytes_per_position_f16": kv_per_pos,
    }


# -- the benchmark -------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace, parallel: int) -> Settings:
    models: dict[str, Any] = {"engine": "llama_cpp", "parallel": parallel, "threads": args.threads}
    return Settings(models=models)  # type: ignore[arg-type]


def quant_name(path: Path) -> str:
    """The weight format a GGUF's name gives ("…Instruct.Q4_K_M.gguf" → "Q4_K_M"), else its suffix."""
    import re

    m = re.search(r"[.-]((?:I?Q\d\w*)|F16|BF16|F32)$", path.stem, re.IGNORECASE)
    return m.group(1).upper() if m else path.stem.rsplit(".", 1)[-1]


def _load_backend(settings: Settings) -> Any:  # Any: the benchmarks read the loaded engine's stats
    from enclave.engine.build import build_local_backend
    from enclave.engine.llamacpp import LlamaCppBackend

    backend = build_local_backend(settings)
    if not isinstance(backend, LlamaCppBackend):
        raise SystemExit("the local backend is not the llama.cpp engine: is llama-cpp-python installed?")
    backend.load()
    return backend


def _llama(path: Path, threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)


async def single_section(
    args: argparse.Namespace, settings: Settings, files: dict[str, Path], prompts: Any, console: Console
) -> dict[str, Any]:
    from enclave.engine.llamacpp import engine_format

    backend = _load_backend(settings)
    # The engine on the shipped file alone too (the same GGUF as "Llama shipped", so that ratio is the engine's
    # own), and on its batching weights alone (what a lone answer ran on before `solo_decode`).
    backends = {"ours": backend}
    if engine_format(settings) != "original":
        shipped = settings.model_copy(deep=True)
        shipped.models.engine_format = "original"
        backends["ours_shipped"] = _load_backend(shipped)
        if not backend.engine_status.get("solo"):
            args.served = args.fmt  # solo_decode off, or its check failed
        else:
            batching = settings.model_copy(deep=True)
            batching.models.solo_decode = False
            backends["ours_batching_weights"] = _load_backend(batching)
    stop_ids = set(backend._stop_ids)  # the engine's own stop set, so every method ends where it does
    llms = {k: _llama(p, args.threads_used) for k, p in files.items()}
    try:
        stops = {k: _stopper(llm, stop_ids) for k, llm in llms.items()}
        warm = story(next(prompts))
        warm_ids = backend.prompt_ids(warm, args.tokens)
        for b in backends.values():
            await ours(b, warm, min(16, args.tokens))
        for k, llm in llms.items():
            llama_run(llm, warm_ids, min(16, args.tokens), stops[k])
        runs: dict[str, list[Run]] = {**{k: [] for k in backends}, **{k: [] for k in llms}}
        methods = list(runs)
        for r in range(args.repeats):
            msgs = story(next(prompts))
            ids = backend.prompt_ids(msgs, args.tokens)
            for m in methods[r % len(methods) :] + methods[: r % len(methods)]:  # take turns at going first
                if m in backends:
                    runs[m].append(await ours(backends[m], msgs, args.tokens))
                else:
                    runs[m].append(llama_run(llms[m], ids, args.tokens, stops[m]))
    finally:
        for llm in llms.values():
            llm.close()
        for b in backends.values():
            b.close()

    def summary(rs: list[Run]) -> dict[str, Any]:
        return {
            "runs": len(rs),
            "prompt_tokens": rs[0].prompt_tokens,
            "tokens": [x.tokens for x in rs],
            "ttft_ms": _r(_median([x.ttft_s * 1000 for x in rs])),
            "decode_tokens_per_s": _r(_median([x.decode_tps for x in rs])),
            "e2e_tokens_per_s": _r(_median([x.e2e_tps for x in rs])),
        }

    out: dict[str, Any] = {k: summary(v) for k, v in runs.items()}
    same = [_common_prefix(a.ids, b.ids) for a, b in zip(runs["ours"], runs["llama_shipped"], strict=True)]
    out["greedy_tokens_identical_to_llama_shipped"] = same
    labels = {
        "ours": f"ours as served ({args.served})",
        "ours_batching_weights": f"ours on {args.fmt} only (solo_decode off)",
        "ours_shipped": f"ours on {args.shipped} only (engine_format original)",
        "llama_shipped": f"Llama {args.shipped} (shipped)",
        "llama_engine_weights": f"Llama {args.fmt} (ours' batching weights)",
    }
    table = Table(title=f"1. single-stream greedy decode, {args.tokens} tokens, median of {args.repeats}")
    for col in (
        "",
        "prompt tok",
        "tokens",
        "TTFT ms",
        "decode tok/s",
        "end-to-end tok/s",
        "ours ÷ this (decode)",
        "ours ÷ this (e2e)",
    ):
        table.add_column(col, justify="left" if not col else "right")
    o = out["ours"]
    for k, s in out.items():
        if k not in labels:
            continue
        s["ours_over_this_decode"] = _r(_ratio(o["decode_tokens_per_s"] or 0, s["decode_tokens_per_s"] or 0), 2)
        s["ours_over_this_e2e"] = _r(_ratio(o["e2e_tokens_per_s"] or 0, s["e2e_tokens_per_s"] or 0), 2)
        table.add_row(
            labels[k],
            str(s["prompt_tokens"]),
            "/".join(map(str, s["tokens"])),
            f"{s['ttft_ms']}",
            f"{s['decode_tokens_per_s']}",
            f"{s['e2e_tokens_per_s']}",
            "" if k == "ours" else f"{s['ours_over_this_decode']}×",
            "" if k == "ours" else f"{s['ours_over_this_e2e']}×",
        )
    if "ours_shipped" in out:
        q = out["ours_shipped"]
        q["over_llama_shipped_decode"] = _r(
            _ratio(q["decode_tokens_per_s"] or 0, out["llama_shipped"]["decode_tokens_per_s"] or 0), 2
        )
    out["target"] = f"ours as served ≥ 1.0× Llama on the shipped {args.shipped} (decode)"
    out["target_met"] = (out["llama_shipped"]["ours_over_this_decode"] or 0) >= 1.0
    console.print(table)
    if "ours_shipped" in out:
        console.print(
            f"the engine on the shipped {args.shipped} file alone decodes at "
            f"{out['ours_shipped']['over_llama_shipped_decode']}× llama.cpp's own speed on it."
        )
    console.print(
        f"greedy tokens identical to llama.cpp {args.shipped} for the first {same} tokens of each run "
        "(batched kernels may round differently; a late divergence is expected). Ours' TTFT can reuse the chat "
        "template's default system prompt from its prefix cache; Llama's evaluates the whole prompt (reset)."
    )
    return out


async def concurrency_section(
    args: argparse.Namespace, settings: Settings, q8: Path, prompts: Any, console: Console
) -> dict[str, Any]:
    backend = _load_backend(settings)
    stop_ids = set(backend._stop_ids)
    m = settings.models
    llm = _llama(q8, args.threads_used)
    raw = RawBatched(
        q8,
        slots=m.parallel,
        context_tokens=m.context_tokens,
        threads=args.threads_used,
        batch_tokens=m.batch_tokens,
        flash_attention=m.flash_attention,
        unified_kv=m.unified_kv,
    )
    rows: list[dict[str, Any]] = []
    try:
        stop = _stopper(llm, stop_ids)
        warm = [story(next(prompts)) for _ in range(2)]
        warm_ids = [backend.prompt_ids(w, args.tokens) for w in warm]
        await asyncio.gather(*(ours(backend, w, min(16, args.tokens)) for w in warm))
        llama_run(llm, warm_ids[0], min(16, args.tokens), stop)
        raw.run(warm_ids, min(16, args.tokens), stop_ids)
        for n in args.stream_levels:
            agg: dict[str, list[tuple[int, float]]] = {"ours": [], "llama_sequential": [], "raw_batched": []}
            order = list(agg)
            for r in range(args.repeats):
                msgs = [story(next(prompts)) for _ in range(n)]
                ids = [backend.prompt_ids(x, args.tokens) for x in msgs]
                for meth in order[r % 3 :] + order[: r % 3]:
                    if meth == "ours":
                        t0 = time.perf_counter()
                        got = await asyncio.gather(*(ours(backend, x, args.tokens) for x in msgs))
                        agg[meth].append((sum(g.tokens for g in got), time.perf_counter() - t0))
                    elif meth == "llama_sequential":
                        t0 = time.perf_counter()
                        seq = [llama_run(llm, x, args.tokens, stop) for x in ids]
                        agg[meth].append((sum(g.tokens for g in seq), time.perf_counter() - t0))
                    else:
                        outs, wall = raw.run(ids, args.tokens, stop_ids)
                        agg[meth].append((sum(len(o) for o in outs), wall))
            row: dict[str, Any] = {"streams": n}
            for meth, vals in agg.items():
                row[meth] = {
                    "tokens": [v[0] for v in vals],
                    "seconds": [round(v[1], 3) for v in vals],
                    "tokens_per_s": _r(_median([v[0] / v[1] for v in vals])),
                }
            rows.append(row)
    finally:
        raw.close()
        llm.close()
        backend.close()
        stats = dict(backend.engine.stats) if backend.engine is not None else {}

    base = next((r["ours"]["tokens_per_s"] for r in rows if r["streams"] == 1), None)
    table = Table(
        title=f"2. aggregate tokens/s, concurrent streams × {args.tokens} tokens, distinct prompts, "
        f"median of {args.repeats} (ours as served; Llama and the raw loop on {args.fmt})"
    )
    for col in (
        "streams",
        "ours tok/s",
        "× ours single",
        "Llama one after another",
        "ours ÷ that",
        "raw batched llama.cpp",
        "ours ÷ raw",
        "tokens ours/seq/raw",
    ):
        table.add_column(col, justify="right")
    for row in rows:
        o, s, w = (
            row["ours"]["tokens_per_s"] or 0,
            row["llama_sequential"]["tokens_per_s"] or 0,
            row["raw_batched"]["tokens_per_s"] or 0,
        )
        row["ours_over_ours_single"] = _r(_ratio(o, base or 0), 2)
        row["ours_over_llama_sequential"] = _r(_ratio(o, s), 2)
        row["ours_over_raw_batched"] = _r(_ratio(o, w), 2)
        toks = "/".join(str(round(_median(row[k]["tokens"]))) for k in ("ours", "llama_sequential", "raw_batched"))
        table.add_row(
            str(row["streams"]),
            f"{o}",
            f"{row['ours_over_ours_single']}×",
            f"{s}",
            f"{row['ours_over_llama_sequential']}×",
            f"{w}",
            f"{row['ours_over_raw_batched']}×",
            toks,
        )
    console.print(table)
    top = max(args.stream_levels)
    at_top = next(r for r in rows if r["streams"] == top)
    return {
        "levels": rows,
        "ours_single_stream_tokens_per_s": base,
        "target": f"ours at {top} streams ≥ 3× ours at 1",
        "target_met": (at_top["ours_over_ours_single"] or 0) >= 3 if base else None,
        "engine_stats": stats,
        "note": "tokens/s = completion tokens of all streams / wall time from the first submit to the last "
        "token, prefill included, for every method",
    }


async def ttft_section(
    args: argparse.Namespace, settings: Settings, files: dict[str, Path], console: Console
) -> dict[str, Any]:
    backend = _load_backend(settings)
    stop_ids = set(backend._stop_ids)
    llms = {k: _llama(p, args.threads_used) for k, p in files.items()}
    kept = _llama(files["llama_engine_weights"], args.threads_used)  # keeps its KV between prompts, like its server
    engine = backend.engine
    results: dict[str, list[Run]] = {
        "ours_served": [],
        "ours_cold": [],
        **{f"{k}_fresh": [] for k in llms},
        "llama_engine_weights_prefix_kept": [],
    }
    chunks = sample_chunks(settings)

    def count(msgs: list[Message]) -> int:
        return len(backend.prompt_ids(msgs, 1))

    prompt_ms: list[float] = []
    picked: list[int] = []
    try:
        stops = {k: _stopper(llm, stop_ids) for k, llm in llms.items()}
        stop_kept = _stopper(kept, stop_ids)
        # Warm-up on a shorter RAG prompt: the code paths and buffers, not a cache entry for the questions.
        warm, _ = rag_prompt(WARMUP_QUESTION, chunks, count, min(200, args.rag_tokens))
        warm_ids = backend.prompt_ids(warm, 1)
        await ours(backend, warm, 1)
        for k, llm in llms.items():
            llama_run(llm, warm_ids, 1, stops[k])
        llama_run(kept, warm_ids, 1, stop_kept, fresh=False)

        async def ours_timed(name: str, prompt: list[Message]) -> None:
            before = engine.stats.get("prefix_tokens", 0)
            run = await ours(backend, prompt, 1)
            run.cached_tokens = engine.stats.get("prefix_tokens", 0) - before
            results[name].append(run)

        prompts = []
        for q in QUESTIONS[: args.questions]:
            msgs, n_chunks = rag_prompt(q, chunks, count, args.rag_tokens)
            picked.append(n_chunks)
            t = time.perf_counter()
            ids = backend.prompt_ids(msgs, 1)
            prompt_ms.append((time.perf_counter() - t) * 1000)
            prompts.append(msgs)
            await ours_timed("ours_served", msgs)
            for k, llm in llms.items():
                results[f"{k}_fresh"].append(llama_run(llm, ids, 1, stops[k]))
            results["llama_engine_weights_prefix_kept"].append(llama_run(kept, ids, 1, stop_kept, fresh=False))
        # Cold in a second pass: the engine puts a request in the free slot with the longest common prefix, even a
        # template-only one, so a cold request between two served ones would evict the cached system prompt.
        for msgs in prompts:
            tag = f"(request {uuid.uuid4().hex[:8]}) "  # nothing beyond the template's first tokens is cached
            await ours_timed("ours_cold", [Message(role=msgs[0].role, content=tag + msgs[0].content), *msgs[1:]])
        stats = dict(engine.stats)
    finally:
        kept.close()
        for llm in llms.values():
            llm.close()
        backend.close()

    labels = {
        "ours_served": "ours, as served (prefix cache)",
        "ours_cold": "ours, cold (unique system prompt)",
        "llama_shipped_fresh": f"Llama {args.shipped}, fresh (reset)",
        "llama_engine_weights_fresh": f"Llama {args.fmt}, fresh (reset)",
        "llama_engine_weights_prefix_kept": f"Llama {args.fmt}, previous prompt kept",
    }
    out: dict[str, Any] = {}
    table = Table(
        title=f"3. time to first token, {len(prompt_ms)} RAG prompts from the sample docs, one at a time "
        "(target ≤ 1000 ms p50)"
    )
    for col in ("", "prompt tok (mean)", "cached tok (mean)", "p50 ms", "p95 ms", "mean ms", "prefill tok/s"):
        table.add_column(col, justify="left" if not col else "right")
    for k, rs in results.items():
        ms = [x.ttft_s * 1000 for x in rs]
        ptoks = statistics.fmean(x.prompt_tokens for x in rs)
        cached = statistics.fmean(x.cached_tokens for x in rs)
        out[k] = {
            "label": labels[k],
            "prompt_tokens_mean": round(ptoks, 1),
            "cached_tokens_mean": round(cached, 1),
            "ttft_p50_ms": _r(_pct(ms, 0.5)),
            "ttft_p95_ms": _r(_pct(ms, 0.95)),
            "ttft_mean_ms": _r(statistics.fmean(ms)),
            "prefill_tokens_per_s": _r(statistics.fmean((x.prompt_tokens - x.cached_tokens) / x.ttft_s for x in rs)),
        }
        s = out[k]
        table.add_row(
            labels[k],
            f"{s['prompt_tokens_mean']:.0f}",
            f"{s['cached_tokens_mean']:.0f}",
            f"{s['ttft_p50_ms']}",
            f"{s['ttft_p95_ms']}",
            f"{s['ttft_mean_ms']}",
            f"{s['prefill_tokens_per_s']}",
        )
    console.print(table)
    console.print(
        f"chunks per prompt: {min(picked)}–{max(picked)}; templating + tokenizing a prompt (inside ours' "
        f"TTFT, not the baselines'): {_median(prompt_ms):.1f} ms median"
    )
    p50 = out["ours_served"]["ttft_p50_ms"]
    cold = out["ours_cold"]["prefill_tokens_per_s"] or 0
    theirs = out["llama_shipped_fresh"]["prefill_tokens_per_s"] or 0
    console.print(
        f"prefill: ours cold {cold} tokens/s, {_ratio(cold, theirs):.2f}× llama.cpp on the shipped {args.shipped} "
        f"({theirs}); ours reads prompts on {args.fmt}"
    )
    return {
        "prefill_ours_over_llama_shipped": _r(_ratio(cold, theirs), 2),
        "prefill_target_met": cold >= theirs,
        "questions": QUESTIONS[: args.questions],
        "chunks_per_prompt": picked,
        "methods": out,
        "tokenize_ms_median": _r(_median(prompt_ms), 2),
        "target": "ours (as served) TTFT p50 ≤ 1000 ms",
        "target_met": p50 is not None and p50 <= 1000,
        "engine_stats": stats,
        "note": "TTFT = start of the call → first token (max_tokens 1); ours includes templating and tokenizing; "
        "Llama gets the same prompt ids; 'fresh' calls llm.reset() first so the whole prompt is evaluated",
    }


async def lookup_section(args: argparse.Namespace, settings: Settings, console: Console) -> dict[str, Any]:
    """RAG answers one at a time, greedy, with prompt lookup off and on (`models.lookup_tokens`), taking turns."""
    backend = _load_backend(settings)
    engine = backend.engine
    chunks = sample_chunks(settings)

    def count(msgs: list[Message]) -> int:
        return len(backend.prompt_ids(msgs, 1))

    runs: dict[int, list[Run]] = {0: [], args.lookup: []}
    counters: dict[int, dict[str, int]] = {k: {"steps": 0, "drafted": 0, "accepted": 0} for k in runs}
    try:
        warm, _ = rag_prompt(WARMUP_QUESTION, chunks, count, min(200, args.rag_tokens))
        await ours(backend, warm, 16)
        for i, q in enumerate(QUESTIONS[: args.questions]):
            msgs, _ = rag_prompt(q, chunks, count, args.rag_tokens)
            for k in list(runs)[i % 2 :] + list(runs)[: i % 2]:
                engine.lookup_tokens = k
                before = dict(engine.stats)
                runs[k].append(await ours(backend, msgs, args.tokens))
                for key in counters[k]:
                    counters[k][key] += engine.stats[key] - before[key]
    finally:
        backend.close()
    off, on = runs[0], runs[args.lookup]
    same = sum(a.ids is not None and a.ids == b.ids for a, b in zip(off, on, strict=True))
    out: dict[str, Any] = {}
    table = Table(
        title=f"5. prompt lookup: {len(off)} RAG answers of up to {args.tokens} tokens, one at a time, greedy, "
        f"lookup off and on (up to {args.lookup} drafts), taking turns"
    )
    for col in ("lookup", "decode tok/s (mean)", "median", "steps", "drafted", "accepted"):
        table.add_column(col, justify="left" if col == "lookup" else "right")
    for k, rs in runs.items():
        tps = [r.decode_tps for r in rs]
        c = counters[k]
        out["on" if k else "off"] = {
            "lookup_tokens": k,
            "decode_tokens_per_s_mean": _r(statistics.fmean(tps)),
            "decode_tokens_per_s_median": _r(_median(tps)),
            "decode_tokens_per_s": [_r(x) for x in tps],
            **c,
        }
        table.add_row(
            f"{k}" if k else "off", f"{statistics.fmean(tps):.1f}", f"{_median(tps):.1f}", *(str(c[x]) for x in c)
        )
    console.print(table)
    ratio = round(_ratio(out["on"]["decode_tokens_per_s_mean"], out["off"]["decode_tokens_per_s_mean"]), 2)
    accepted = out["on"]["accepted"] / out["on"]["drafted"] if out["on"]["drafted"] else 0.0
    console.print(
        f"lookup on ÷ off: {ratio:.2f}× decode; the model agreed with {accepted:.0%} of the drafts; {same} of "
        f"{len(off)} greedy answers identical (a step of several tokens rounds like a batch; tests/test_engine.py "
        "checks that answers part only at a near tie)"
    )
    return {**out, "on_over_off": ratio, "accepted_share": round(accepted, 3), "identical_answers": same}


def bandwidth_section(
    args: argparse.Namespace, files: dict[str, Path], single: dict[str, Any], console: Console
) -> dict[str, Any]:
    bw = read_bandwidth(args.bandwidth_mib << 20, args.threads_used, args.bandwidth_repeats)
    ours_decode = single["ours"]["decode_tokens_per_s"] or float("nan")
    # A lone answer decodes on the shipped file when solo_decode is on, else on the batching weights.
    ours_file = "llama_shipped" if args.served == args.shipped else "llama_engine_weights"
    context = single["ours"]["prompt_tokens"] + args.tokens / 2  # mean positions attended per decoded token
    rows = {}
    table = Table(
        title=f"4. single-stream decode vs the memory-bandwidth bound ({bw['best_gb_s']} GB/s read, best "
        f"of {bw['repeats']}: 1 thread {bw['single_thread_gb_s']}, "
        f"{bw['threads']} threads {bw['threads_gb_s']})"
    )
    for col in (
        "weights",
        "MB read / token",
        "+ KV MB",
        "bound tok/s",
        "ours decode",
        "ours share",
        "llama.cpp decode",
        "llama.cpp share",
    ):
        table.add_column(col, justify="left" if col == "weights" else "right")
    for k, path in files.items():
        w = weight_bytes(path)
        kv = w["kv_bytes_per_position_f16"] * context
        per_token = w["weight_bytes_per_token"] + kv
        bound = bw["best_gb_s"] * 1e9 / per_token
        theirs = single[k]["decode_tokens_per_s"] or float("nan")
        fmt = args.shipped if k == "llama_shipped" else args.fmt
        mine = ours_decode if k == ours_file else float("nan")
        rows[fmt] = {
            **w,
            "kv_bytes_per_token_estimate": round(kv),
            "bound_tokens_per_s": _r(bound),
            "ours_decode_tokens_per_s": _r(mine),
            "ours_share_of_bound": _r(mine / bound, 3),
            "llama_decode_tokens_per_s": _r(theirs),
            "llama_share_of_bound": _r(theirs / bound, 3),
        }
        r = rows[fmt]
        table.add_row(
            f"{fmt} ({path.name})",
            f"{w['weight_bytes_per_token'] / 1e6:.1f}",
            f"{kv / 1e6:.1f}",
            f"{r['bound_tokens_per_s']}",
            f"{r['ours_decode_tokens_per_s'] or '—'}",
            f"{r['ours_share_of_bound']:.0%}" if r["ours_share_of_bound"] else "—",
            f"{r['llama_decode_tokens_per_s']}",
            f"{(r['llama_share_of_bound'] or 0):.0%}",
        )
    console.print(table)
    console.print(
        f"ours decodes a lone answer on {args.served}. The embedding is tied to the output matrix, so it is read "
        "whole every token. A "
        "share above 100% means part of the weights stayed in the CPU caches."
    )
    return {"bandwidth": bw, "files": rows, "mean_context_positions": context}


async def _bench(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from enclave.engine.llamacpp import engine_format, engine_weights

    parallel = max(Settings().models.parallel, max(args.stream_levels))
    settings = _settings(args, parallel)
    shipped, engine_file = engine_weights(settings)
    files = {"llama_shipped": shipped, "llama_engine_weights": engine_file}
    # "llama_engine_weights": llama.cpp on the very file the engine batches on (bf16 or Q8_0, as this CPU calls for).
    args.shipped = quant_name(shipped)
    args.fmt = args.shipped if engine_format(settings) == "original" else engine_format(settings).upper()
    # What a lone answer decodes on as served: the shipped file beside the batching weights (models.solo_decode).
    args.served = args.shipped if settings.models.solo_decode else args.fmt
    prompts = itertools.count()
    busy: dict[str, Any] = {}
    snap = _cpu_snapshot()
    single = await single_section(args, settings, files, prompts, console)
    busy["single_stream"], snap = _cpu_usage(snap), _cpu_snapshot()
    conc = await concurrency_section(args, settings, engine_file, prompts, console)
    busy["concurrency"], snap = _cpu_usage(snap), _cpu_snapshot()
    ttft = await ttft_section(args, settings, files, console)
    busy["rag_ttft"], snap = _cpu_usage(snap), _cpu_snapshot()
    bound = bandwidth_section(args, files, single, console)
    busy["bandwidth_bound"], snap = _cpu_usage(snap), _cpu_snapshot()
    lookup = await lookup_section(args, settings, console) if args.lookup else None
    busy["lookup"] = _cpu_usage(snap)
    m = settings.models
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "engine": {
            "weights": str(engine_file),
            "shipped": str(shipped),
            "format": engine_format(settings),
            "shipped_format": args.shipped,
            "solo": args.served != args.fmt,  # a lone answer decodes on the shipped file (models.solo_decode)
            "parallel": m.parallel,
            "context_tokens": m.context_tokens,
            "batch_tokens": m.batch_tokens,
            "flash_attention": m.flash_attention,
            "unified_kv": m.unified_kv,
            "threads": args.threads_used,
        },
        "single_stream": single,
        "concurrency": conc,
        "rag_ttft": ttft,
        "bandwidth_bound": bound,
        "prompt_lookup": lookup,
        "sections": busy,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run well under a minute: fewer tokens, streams, "
        "questions and repeats (timings are not comparable to a full run)",
    )
    ap.add_argument("--streams", default=None, help="concurrency levels (default 1,4,8; quick 1,4)")
    ap.add_argument("--tokens", type=int, default=None, help="max tokens per answer (default 128; quick 32)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for every method; 0: one per core")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per method and level (default 3; quick 1)")
    ap.add_argument(
        "--questions",
        type=int,
        default=None,
        help=f"RAG questions for TTFT, at most {len(QUESTIONS)} (default 10; quick 2)",
    )
    ap.add_argument(
        "--rag-tokens", type=int, default=None, help="target length of the RAG prompts (default 600; quick 300)"
    )
    ap.add_argument(
        "--bandwidth-mib", type=int, default=None, help="array read for bandwidth (default 1024; quick 256)"
    )
    ap.add_argument(
        "--lookup", type=int, default=8, help="prompt-lookup drafts for section 5 (default 8; 0 skips the section)"
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    q = args.quick
    args.streams = args.streams or ("1,4" if q else "1,4,8")
    args.stream_levels = sorted({int(x) for x in args.streams.split(",")})
    args.tokens = args.tokens or (32 if q else 128)
    args.repeats = args.repeats or (1 if q else 3)
    args.questions = min(len(QUESTIONS), args.questions or (2 if q else 10))
    args.rag_tokens = args.rag_tokens or (300 if q else 600)
    args.bandwidth_mib = args.bandwidth_mib or (256 if q else 1024)
    args.bandwidth_repeats = 3 if q else 7
    args.threads_used = args.threads or os.cpu_count() or 1
    console = Console()
    offline_environment()

    load_before = os.getloadavg()
    snap = _cpu_snapshot()
    out = asyncio.run(_bench(args, console))
    usage = _cpu_usage(snap)
    out["machine"] = {**machine_info(), "loadavg_before": [round(x, 2) for x in load_before]}
    out["seconds"] = usage["seconds"]
    out["cpu_used_by_others"] = usage["others_share"]
    worst = max(s["others_share"] for s in out["sections"].values())
    console.print(
        "CPU taken by other processes: "
        + ", ".join(f"{k} {v['others_share']:.0%} ({v['seconds']} s)" for k, v in out["sections"].items())
    )
    if worst > 0.1:
        out["warning"] = (
            f"other processes used up to {worst:.0%} of the CPUs during a section (steal included): "
            "these timings are not meaningful; run again on a quiet machine"
        )
        console.print(f"[yellow]{out['warning']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    console.print(f"wrote {args.out} in {out['seconds']} s")
    return out


if __name__ == "__main__":
    main()
