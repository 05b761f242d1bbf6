"""The embedder alone, on ~100-token chunks, in each runtime: `python -m bench.embedding`.

Ingestion speed is mostly the embedder's: this times all-MiniLM-L6-v2 in PyTorch fp32 (the reference),
ONNX Runtime fp32 (the default) and ONNX Runtime int8 on the same chunks, made by Enclave's own chunker at
500 characters (~100 MiniLM tokens) from the sample documents and, where Debian's `python3.11-doc` is
installed, the Python library reference. Each runtime embeds the chunks in batches as ingestion does; its
vectors are compared with the reference's (cosine). Retrieval quality with each runtime is
`bench.retrieval`'s job. Prints a table and writes `bench/results/embedding.json`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.machine import cpu_model
from enclave.core.settings import Settings, offline_environment

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "embedding.json"
SOURCES = [ROOT / "enclave" / "knowledge" / "sample_docs", Path("/usr/share/doc/python3.11/html/library")]
BACKENDS = ("torch", "onnx", "onnx-int8")
TARGET_CHUNKS_PER_S = 100


def chunks(n: int, chunk_size: int) -> list[str]:
    """The first `n` chunks Enclave's chunker makes of the sources (sorted files, so every run is the same)."""
    from enclave.knowledge.chunking import chunk_document
    from enclave.knowledge.loaders import LoadError, kind_of, load

    out: list[str] = []
    for root in SOURCES:
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and kind_of(p.name)):
            try:
                doc = load(path.name, path.read_bytes())
            except LoadError:
                continue
            out += [text for text, _ in chunk_document(doc, chunk_size, chunk_size // 10)]
            if len(out) >= n:
                return out[:n]
    return out


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=1024, help="chunks to embed (default 1024)")
    ap.add_argument("--chunk-size", type=int, default=500, help="characters per chunk (500 ≈ 100 MiniLM tokens)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per runtime; the median is reported")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="runtimes to time, comma-separated")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    offline_environment()
    console = Console()

    import numpy as np

    from enclave.knowledge.embedder import Embedder, load_tokenizer

    settings = Settings()
    emb = settings.rag.embedding
    model_dir = Path(emb.model_dir) if emb.model_dir else None
    texts = chunks(args.chunks, args.chunk_size)
    if not texts:
        raise SystemExit("no documents to chunk")
    probe = Embedder.from_settings(settings)
    tokens = [len(e.ids) for e in load_tokenizer(probe.model_dir).encode_batch(texts)]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: dict[str, dict[str, Any]] = {}
    vectors: dict[str, Any] = {}
    for backend in backends:
        embedder = Embedder(
            model_dir or probe.model_dir,
            emb.batch_size,
            backend,
            settings.model_cache_path / "embeddings",
            emb.threads,  # type: ignore[arg-type]
        )
        t0 = time.perf_counter()
        embedder.embed(texts[:8])  # load (and export, the first time) before the clock starts
        load_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = []
            for start in range(0, len(texts), emb.batch_size):  # as ingestion hands them over
                out += embedder.embed(texts[start : start + emb.batch_size])
            times.append(time.perf_counter() - t0)
        vectors[backend] = np.asarray(out, dtype=np.float32)
        secs = statistics.median(times)
        rows[backend] = {
            "threads": embedder.threads,
            "load_seconds": round(load_s, 2),
            "seconds": [round(t, 3) for t in times],
            "chunks_per_s": round(len(texts) / secs, 1),
            "tokens_per_s": round(sum(tokens) / secs),
        }
    ref = vectors.get("torch")
    for backend, row in rows.items():
        if ref is not None:
            cos = np.sum(vectors[backend] * ref, axis=1)  # unit vectors
            row["cosine_to_torch_mean"] = round(float(cos.mean()), 5)
            row["cosine_to_torch_min"] = round(float(cos.min()), 5)
        if "torch" in rows:
            row["speedup_over_torch"] = round(row["chunks_per_s"] / rows["torch"]["chunks_per_s"], 2)

    table = Table(
        title=f"embedder alone: {len(texts)} chunks of {statistics.mean(tokens):.0f} tokens on average "
        f"(median {statistics.median(tokens):.0f}), batches of {emb.batch_size}, median of {args.repeats}"
    )
    for col in ("runtime", "threads", "chunks/s", "tokens/s", "× torch", "cosine to torch (mean / min)"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for backend, row in rows.items():
        cos = (
            f"{row['cosine_to_torch_mean']:.4f} / {row['cosine_to_torch_min']:.4f}"
            if "cosine_to_torch_mean" in row
            else ""
        )
        table.add_row(
            backend + (" (default)" if backend == emb.backend else ""),
            str(row["threads"]),
            f"{row['chunks_per_s']}",
            f"{row['tokens_per_s']:,}",
            f"{row.get('speedup_over_torch', '')}×" if "speedup_over_torch" in row else "",
            cos,
        )
    console.print(table)
    default = rows.get(emb.backend)
    met = default is not None and default["chunks_per_s"] >= TARGET_CHUNKS_PER_S
    console.print(
        f"target: the default runtime ({emb.backend}) ≥ {TARGET_CHUNKS_PER_S} chunks/s — {'met' if met else 'not met'}"
    )

    result = {
        "chunks": len(texts),
        "chunk_size_chars": args.chunk_size,
        "tokens_mean": round(statistics.mean(tokens), 1),
        "tokens_median": statistics.median(tokens),
        "batch_size": emb.batch_size,
        "repeats": args.repeats,
        "default_backend": emb.backend,
        "backends": rows,
        "target": f"default runtime ≥ {TARGET_CHUNKS_PER_S} chunks/s of ~100 tokens",
        "target_met": met if default is not None else None,
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": _version("onnxruntime"),
            "torch": _version("torch"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
