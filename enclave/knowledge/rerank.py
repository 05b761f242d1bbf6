"""Reranking: Enclave's own cross-encoder reads the question beside each candidate passage and scores it.

The model is the shipped all-MiniLM-L6-v2's first layers with a scoring head, fine-tuned by
`python -m bench.reranker_train` on man pages no benchmark asks about; the package ships only what training
changed (`reranker/weights.safetensors`, 14 MB in fp16), and the word and position embeddings come from the MiniLM
package at load. Like the embedder, it runs in ONNX Runtime as int8, exported once into the model cache and
checked against PyTorch before it is used; each (question, passage) pair is its own pass, so nothing is padded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from enclave.core.errors import BackendUnavailable
from enclave.knowledge.embedder import (
    cached_export,
    default_model_dir,
    default_threads,
    int8_reduce_range,
    longest_first,
    one_thread_session,
    quantize_int8,
    source_fingerprint,
)
from enclave.knowledge.search import RRF_K

WEIGHTS_DIR = Path(__file__).parent / "reranker"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
EXPORT_VERSION = 1
# The embeddings the package's MiniLM provides and training leaves alone: never shipped twice.
FROZEN = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight")
# Checked at export: the int8 graph must order each question's passages as PyTorch does. Its logits drift (mean
# ~0.2, up to ~2 on passages far below the best: int8 activations), which does not change an order.
PROBES = (
    (
        "Which command copies files between hosts?",
        (
            "scp(1)\nscp copies files between hosts on a network. It uses ssh for data transfer.",
            "ssh-keygen(1)\nssh-keygen generates, manages and converts authentication keys for ssh.",
            "The parking garage opens at six in the morning.",
        ),
    ),
    (
        "Encode and decode the JSON format.",
        (
            "csv — CSV File Reading and Writing. Read and write tabular data in comma-separated form.",
            "json — JSON encoder and decoder. JSON is a lightweight data interchange format.",
            "pickle — Python object serialization, a binary protocol for Python objects.",
        ),
    ),
)
MAX_PROBE_ERROR = 0.75  # mean logits; beyond it the export is not used
log = logging.getLogger(__name__)


def passage_text(title: str, section: str, text: str) -> str:
    """What the reranker reads of a chunk: where it is from, then its text (the same at training and serving)."""
    head = f"{title} — {section}" if section and section != title else title
    return f"{head}\n{text}" if head else text


def shipped_config(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    path = weights_dir / CONFIG_FILE
    if not path.is_file() or not (weights_dir / WEIGHTS_FILE).is_file():
        raise BackendUnavailable(f"no reranker weights in {weights_dir}: run python -m bench.reranker_train")
    return dict(json.loads(path.read_text()))


@functools.cache
def shipped_margin(weights_dir: Path = WEIGHTS_DIR) -> float | None:
    """The margin the shipped weights were measured with (config.json: it keeps the right passage for 98% of the
    held-out training questions), or None when there are no weights or no margin."""
    try:
        return float(shipped_config(weights_dir)["margin"]["margin"])
    except (BackendUnavailable, KeyError, TypeError, ValueError, OSError):
        return None


def load_pair_tokenizer(model_dir: Path, max_tokens: int) -> Any:
    """MiniLM's tokenizer for a (question, passage) pair: the passage is cut to fit, never the question."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_tokens, strategy="only_second")
    return tok


def cross_encoder(model_dir: Path, layers: int) -> Any:
    """MiniLM's first `layers` layers, mean-pooled as the embedder pools, and a linear head: one logit a pair."""
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not used": the layers left out, on purpose

    class CrossEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.encoder = BertModel.from_pretrained(
                    str(model_dir), num_hidden_layers=layers, add_pooling_layer=False
                )
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return self.head(mean).squeeze(-1)

    return CrossEncoder()


def trained_state(model: Any) -> dict[str, Any]:
    """What training changed: every tensor but the frozen embeddings, in fp16 (half the bytes to ship)."""
    import torch

    return {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if k.removeprefix("encoder.") not in FROZEN
    }


def load_trained(model_dir: Path, weights_dir: Path = WEIGHTS_DIR) -> Any:
    """The shipped reranker in PyTorch fp32: MiniLM's embeddings with the trained layers and head."""
    import torch
    from safetensors.torch import load_file

    config = shipped_config(weights_dir)
    model = cross_encoder(model_dir, int(config["layers"]))
    state = {k: v.to(torch.float32) for k, v in load_file(str(weights_dir / WEIGHTS_FILE)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or {m.removeprefix("encoder.") for m in missing} - set(FROZEN):
        raise BackendUnavailable(f"the reranker weights do not fit {model_dir}: missing {missing}, extra {unexpected}")
    return model.eval()


# -- export: once per weights and runtime version, into the cache ------------------------------------------------
def ensure_onnx(model_dir: Path, cache_dir: Path, weights_dir: Path = WEIGHTS_DIR) -> Path:
    import onnxruntime

    meta: dict[str, Any] = {
        "format": EXPORT_VERSION,
        "source_sha256": source_fingerprint(model_dir),
        "weights_sha256": source_fingerprint(weights_dir),
        "onnxruntime": onnxruntime.__version__,
        "reduce_range": int8_reduce_range(),
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]

    def export(folder: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        meta["check"] = export_onnx(model_dir, weights_dir, folder / "model.onnx", bool(meta["reduce_range"]))
        check = meta["check"]
        if check["probe_error_mean"] > MAX_PROBE_ERROR or not check["probe_same_order"]:
            raise BackendUnavailable(
                f"the int8 reranker disagrees with PyTorch (mean error {check['probe_error_mean']:.2f}, same order "
                f"{bool(check['probe_same_order'])}): set rag.rerank=false"
            )
        meta["export_seconds"] = round(time.perf_counter() - t0, 2)
        return meta

    return cached_export(cache_dir / f"reranker-onnx-int8-{key}", export) / "model.onnx"


def export_onnx(model_dir: Path, weights_dir: Path, dest: Path, reduce_range: bool) -> dict[str, float]:
    """The cross-encoder as an int8 ONNX graph, and how it agrees with PyTorch on the probes: logit errors, and
    whether it orders each probe question's passages alike."""
    import numpy as np
    import onnxruntime as ort
    import torch

    model = load_trained(model_dir, weights_dir)
    config = shipped_config(weights_dir)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = torch.ones(1, 8, dtype=torch.long)
    fp32 = dest.with_name("fp32.onnx")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample, sample, torch.zeros_like(sample)),
            str(fp32),
            dynamo=False,
            input_names=names,
            output_names=["score"],
            dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "score": {0: "batch"}},
            opset_version=17,
        )
    quantize_int8(fp32, dest, model.encoder.config, reduce_range)
    fp32.unlink()
    session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    tok = load_pair_tokenizer(model_dir, int(config["max_tokens"]))
    errors, same_order = [], True
    for question, passages in PROBES:
        ref, got = [], []
        for passage in passages:
            enc = tok.encode(question, passage)
            ids, types = torch.tensor([enc.ids]), torch.tensor([enc.type_ids])
            with torch.inference_mode():
                ref.append(float(model(ids, torch.ones_like(ids), types)[0]))
            feed = {
                "input_ids": ids.numpy(),
                "attention_mask": np.ones_like(ids.numpy()),
                "token_type_ids": types.numpy(),
            }
            got.append(float(session.run(None, feed)[0][0]))
        errors += [abs(a - b) for a, b in zip(got, ref, strict=True)]
        same_order &= bool(np.argsort(got).tolist() == np.argsort(ref).tolist())
    return {
        "probe_error_max": round(max(errors), 4),
        "probe_error_mean": round(float(np.mean(errors)), 4),
        "probe_same_order": float(same_order),
    }


class Reranker:
    """`score(question, passages)`: one logit per passage, higher = answers it better. Loads on first use."""

    def __init__(self, model_dir: Path, cache_dir: Path, threads: int = 0, weights_dir: Path = WEIGHTS_DIR) -> None:
        self.model_dir = model_dir
        self.cache_dir = cache_dir
        self.weights_dir = weights_dir
        self.threads = threads or default_threads()
        self._lock = threading.Lock()
        self._session: Any = None
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Reranker:
        emb = settings.rag.embedding
        return cls(
            Path(emb.model_dir) if emb.model_dir else default_model_dir(),
            settings.model_cache_path / "embeddings",
            emb.threads,
        )

    @functools.cached_property
    def tokenizer(self) -> Any:
        return load_pair_tokenizer(self.model_dir, int(shipped_config(self.weights_dir)["max_tokens"]))

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = one_thread_session(ensure_onnx(self.model_dir, self.cache_dir, self.weights_dir))
                if self.threads > 1:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rerank")
            return self._session

    def warm(self) -> None:
        self.score("warm up", ["the reranker loads before the first question"])

    def score(self, question: str, passages: Sequence[str]) -> list[float]:
        import numpy as np

        if not passages:
            return []
        session = self._load()
        encoded = self.tokenizer.encode_batch([(question, p) for p in passages])

        def one(i: int) -> float:
            ids = np.asarray([encoded[i].ids], dtype=np.int64)
            types = np.asarray([encoded[i].type_ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
            return float(session.run(None, feed)[0][0])

        if self._pool is None or len(encoded) == 1:
            return [one(i) for i in range(len(encoded))]
        return longest_first(self._pool, one, [len(e.ids) for e in encoded])


def rerank_chunks(reranker: Reranker, question: str, chunks: Sequence[Any]) -> list[Any]:
    """The chunks ordered by reciprocal-rank fusion (k 60) of three votes: the dense and BM25 rankings (the hybrid
    search's own fused `score`) and the reranker's; each keeps its logit in `metadata["rerank_score"]`. One vote
    of three, not the last word: trained on man pages, the reranker alone ranks the Python reference's pages no
    better than the search (hit@1 0.826 vs 0.822), and it cannot read an exact identifier ("CANARYd002") that
    dense and BM25 both put first."""
    texts = [passage_text(c.title, str(c.metadata.get("section") or ""), c.text) for c in chunks]
    scores = reranker.score(question, texts)
    for chunk, s in zip(chunks, scores, strict=True):
        chunk.metadata["rerank_score"] = round(s, 4)
    by_score = sorted(range(len(chunks)), key=lambda i: -scores[i])
    rerank_rank = {i: r for r, i in enumerate(by_score)}
    fused = {i: float(chunks[i].score) + 1.0 / (RRF_K + rerank_rank[i] + 1) for i in range(len(chunks))}
    return [chunks[i] for i in sorted(range(len(chunks)), key=lambda i: (-fused[i], i))]
