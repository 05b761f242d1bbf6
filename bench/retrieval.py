"""Retrieval quality and speed on a corpus no one here wrote: `python -m bench.retrieval`.

The corpus is the Python 3.11 library reference from Debian's `python3.11-doc` (HTML). Each module page
declares a one-line synopsis (`<h1><a title="json: Encode and decode the JSON format.">`); that synopsis
is the query and the module's page is the one relevant answer. The synopsis lives in an attribute, not in
the page text, so the query is not a verbatim quote of what is indexed.

Ranked chunks are collapsed to pages (first appearance wins) and scored with hit@1, hit@5, MRR and
nDCG@10, for dense, BM25 and hybrid (RRF) search, and `rerank`: hybrid search's top 12 reordered by the
reciprocal-rank fusion of its order and that of Enclave's own reranker, with its paired difference to hybrid;
search latency p50/p95/p99 and ingestion chunks/s.
Prints a table and writes `bench/results/retrieval.json`, with each question's rank per mode, so that two
runs can be compared question by question: `--against other.json` reports the paired difference in nDCG@10
and hit@5 with a bootstrap 95% interval. An interval that holds 0 is "within noise".
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import platform
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.machine import cpu_model
from enclave.core.protocols import Principal
from enclave.core.settings import Settings, offline_environment
from enclave.core.stats import bootstrap_mean

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path("/usr/share/doc/python3.11/html/library")
OUT = ROOT / "bench" / "results" / "retrieval.json"
COLLECTION = "pydocs"
_SYNOPSIS = re.compile(r'<h1><a class="reference internal" href="#module-[\w.]+" title="([\w.]+): ([^"]+)"')


def questions(docs: Path) -> list[dict[str, str]]:
    out = []
    for page in sorted(docs.glob("*.html")):
        m = _SYNOPSIS.search(page.read_text(encoding="utf-8", errors="replace"))
        if m and len(m.group(2).split()) >= 2:
            out.append({"module": m.group(1), "query": html.unescape(m.group(2)).strip(), "uri": str(page.resolve())})
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


def paired(ours: dict[str, int | None], theirs: dict[str, int | None], resamples: int = 10_000) -> dict[str, Any]:
    """This run against another over the questions both asked: the mean difference (ours - theirs) of nDCG@10,
    hit@1, hit@5 and MRR, each with a percentile-bootstrap 95% interval over questions, and how many questions each
    side ranked better."""
    common = sorted(set(ours) & set(theirs))
    if not common:
        raise ValueError("the two runs share no question")
    out: dict[str, Any] = {"questions": len(common)}
    for metric in ("ndcg@10", "hit@1", "hit@5", "mrr"):
        mean, low, high = bootstrap_mean(
            [score_rank(ours[m])[metric] - score_rank(theirs[m])[metric] for m in common], resamples
        )
        out[metric] = {
            "difference": round(mean, 4),
            "ci95": [round(low, 4), round(high, 4)],
            "within_noise": bool(low <= 0 <= high),
        }
    better = sum((ours[m] or 10**6) < (theirs[m] or 10**6) for m in common)
    worse = sum((ours[m] or 10**6) > (theirs[m] or 10**6) for m in common)
    out["ranked_better"], out["ranked_worse"] = better, worse
    return out


def score_rank(rank: int | None) -> dict[str, float]:
    """A question's scores from the rank of its one relevant page (None: not in the results)."""
    return {
        "hit@1": float(rank == 1),
        "hit@5": float(rank is not None and rank <= 5),
        "mrr": 1.0 / rank if rank else 0.0,
        "ndcg@10": 1.0 / math.log2(rank + 1) if rank and rank <= 10 else 0.0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=DOCS, help="folder of the library reference HTML")
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench-retrieval", help="bench data dir")
    ap.add_argument("--fresh", action="store_true", help="re-ingest even if the index is there")
    ap.add_argument(
        "--backend", choices=["onnx", "onnx-int8", "torch"], default=None, help="embedding runtime (default: settings)"
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--against", type=Path, help="another run's JSON: compare the two question by question")
    args = ap.parse_args(argv)
    against = json.loads(args.against.read_text()) if args.against else None
    console = Console()
    if not args.docs.is_dir():
        raise SystemExit(f"{args.docs} not found: install Debian's python3.11-doc (apt-get install python3.11-doc)")
    offline_environment()
    if args.fresh and args.data.exists():
        shutil.rmtree(args.data)
    os.environ["ENCLAVE_DATA_DIR"] = str(args.data)
    from enclave.knowledge.store import KnowledgeBase

    settings = Settings(data_dir=str(args.data))
    if args.backend:
        settings.rag.embedding.backend = args.backend
    kb = KnowledgeBase.from_settings(settings)
    files = sorted(args.docs.glob("*.html"))
    # Load the embedder (and export it, the first time) before the clock starts: ingestion alone is timed.
    t0 = time.perf_counter()
    kb.embedder.embed(["warm up"])
    embedder_load_s = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("ingest", total=len(files))
        report = kb.ingest_paths([args.docs], COLLECTION, progress=lambda _n, d, t: bar.update(task, completed=d))
    ingest_s = time.perf_counter() - t0
    written = report.chunks
    total_chunks = kb._collection(COLLECTION).count()

    qs = questions(args.docs)
    principal = Principal(name="bench")
    kb.search("warm up", COLLECTION, principal, k=5)  # builds the BM25 index once, outside the timings
    results: dict[str, Any] = {}
    modes = ("dense", "bm25", "hybrid") + (("rerank",) if kb.reranker is not None else ())
    if kb.reranker is not None:
        kb.reranker.warm()  # loaded (and exported, the first time) before the clock starts
    for mode in modes:
        per: list[dict[str, float]] = []
        lat: list[float] = []
        ranks: dict[str, int | None] = {}
        for q in qs:
            t = time.perf_counter()
            chunks = kb.search(
                q["query"],
                COLLECTION,
                principal,
                k=50,
                mode="hybrid" if mode == "rerank" else mode,  # type: ignore[arg-type]
                rerank=mode == "rerank",
            )
            lat.append((time.perf_counter() - t) * 1000)
            pages: list[str] = []
            for c in chunks:
                if c.uri not in pages:
                    pages.append(c.uri)
            ranks[q["module"]] = pages.index(q["uri"]) + 1 if q["uri"] in pages else None
            per.append(score_rank(ranks[q["module"]]))
        results[mode] = {
            **{m: statistics.fmean(p[m] for p in per) for m in per[0]},
            "latency_p50_ms": _pct(lat, 0.5),
            "latency_p95_ms": _pct(lat, 0.95),
            "latency_p99_ms": _pct(lat, 0.99),
            "ranks": ranks,
        }
    out: dict[str, Any] = {
        "corpus": f"{args.docs} ({len(files)} pages, {total_chunks} chunks)",
        "questions": len(qs),
        "chunk_size": settings.rag.chunk_size,
        "chunk_overlap": settings.rag.chunk_overlap,
        "ingest": {
            "seconds": round(ingest_s, 2),
            "chunks_written": written,
            "chunks_per_s": round(written / ingest_s, 1) if written else None,
            "note": "chunks_per_s is null when the index was already built (run with --fresh to measure it)",
        },
        "embedding": {
            "backend": kb.embedder.backend,
            "threads": kb.embedder.threads,
            "load_seconds": round(embedder_load_s, 2),
            "note": "load_seconds includes the one-off ONNX export when the model cache was empty",
        },
        "modes": results,
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }
    table = Table(
        title=f"retrieval on the Python 3.11 library reference: {len(qs)} synopsis queries, {total_chunks} chunks"
    )
    for col in ("mode", "hit@1", "hit@5", "MRR", "nDCG@10", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, r in results.items():
        table.add_row(
            mode,
            f"{r['hit@1']:.3f}",
            f"{r['hit@5']:.3f}",
            f"{r['mrr']:.3f}",
            f"{r['ndcg@10']:.3f}",
            f"{r['latency_p50_ms']:.1f}",
            f"{r['latency_p95_ms']:.1f}",
            f"{r['latency_p99_ms']:.1f}",
        )
    console.print(table)
    if "rerank" in results:
        p = paired(results["rerank"]["ranks"], results["hybrid"]["ranks"])
        out["rerank_vs_hybrid"] = p
        versus = Table(title="reranked minus hybrid, question by question (95% bootstrap intervals)")
        for col in ("measure", "difference", "95% interval"):
            versus.add_column(col, justify="left" if col == "measure" else "right")
        for metric in ("hit@1", "mrr", "hit@5", "ndcg@10"):
            m = p[metric]
            versus.add_row(
                metric,
                f"{m['difference']:+.4f}",
                f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]" + ("" if m["within_noise"] else " *"),
            )
        console.print(versus)
        console.print(f"questions ranked better / worse by the reranker: {p['ranked_better']} / {p['ranked_worse']}")
    if against is not None:
        out["against"] = {"run": str(args.against), "embedding": against.get("embedding", {}).get("backend")}
        versus = Table(title=f"against {args.against.name} ({out['against']['embedding']}): this run minus that one")
        for col in ("mode", "questions", "nDCG@10 diff", "95% interval", "hit@5 diff", "95% interval", "better/worse"):
            versus.add_column(col, justify="left" if col == "mode" else "right")
        for mode in results:
            if "ranks" not in against.get("modes", {}).get(mode, {}):
                continue
            p = paired(results[mode]["ranks"], against["modes"][mode]["ranks"])
            out["against"][mode] = p
            n, h = p["ndcg@10"], p["hit@5"]
            versus.add_row(
                mode,
                str(p["questions"]),
                f"{n['difference']:+.4f}",
                f"[{n['ci95'][0]:+.3f}, {n['ci95'][1]:+.3f}]" + ("" if n["within_noise"] else " *"),
                f"{h['difference']:+.4f}",
                f"[{h['ci95'][0]:+.3f}, {h['ci95'][1]:+.3f}]" + ("" if h["within_noise"] else " *"),
                f"{p['ranked_better']}/{p['ranked_worse']}",
            )
        console.print(versus)
        console.print("* the interval excludes 0: a difference beyond noise")
    if written:
        console.print(
            f"ingestion: {written} chunks in {ingest_s:.1f} s = {written / ingest_s:.1f} chunks/s "
            f"(embedding: {kb.embedder.backend}, {kb.embedder.threads} threads)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
