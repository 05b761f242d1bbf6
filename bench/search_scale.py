"""Search at 100,000 chunks: `python -m bench.search_scale`.

The corpus is real text on this machine, ingested through Enclave's own knowledge base (loaders, chunker,
embedder, Chroma) at ~100-token chunks (`--chunk-size 500` characters): every HTML page of Debian's
`python3.11-doc`, then English man pages (roff turned into Markdown, one section per `.SH`) in name
order until the collection holds `--chunks` chunks, leaving out pages that share a third of their paragraphs
with pages already in (generated families such as a cloud SDK's thousands of commands would otherwise put
the same chunk in thousands of times). The first run builds it (about ten minutes on two
cores, most of it embedding) and keeps it under `--data`; later runs reuse it and take a minute or two.

Queries are real one-line descriptions no chunk quotes verbatim: each module's synopsis from the library
reference (as in `bench.retrieval`) and each man page's NAME line ("list directory contents").
Reported: p50/p90/p99 latency of `KnowledgeBase.search` in dense, BM25 and hybrid mode (what `/v1/search`
and RAG run), the parts of a query (query embedding, Chroma HNSW, BM25), the one-off BM25 index build,
and HNSW recall@10 (and at the search depth) against exact brute-force search over the very vectors Chroma
holds. Prints a table and writes `bench/results/search_scale.json`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import re
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.machine import cpu_model
from enclave.core.protocols import Principal
from enclave.core.settings import Settings, offline_environment

ROOT = Path(__file__).resolve().parents[1]
PYDOCS = Path("/usr/share/doc/python3.11/html")
MAN = Path("/usr/share/man")
OUT = ROOT / "bench" / "results" / "search_scale.json"
COLLECTION = "scale"
_SKIP_PAGES = re.compile(r"^(genindex.*|search|py-modindex|contents|download)\.html$")
_SKIP_DIRS = {"_sources", "_static", "_images", "_downloads"}


# -- corpus ------------------------------------------------------------------------------------------
def python_pages(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.html")
        if not _SKIP_PAGES.match(p.name) and not _SKIP_DIRS & set(p.relative_to(root).parts)
    )


_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_SPECIAL = {r"\-": "-", r"\(em": "—", r"\(en": "–", r"\(aq": "'", r"\(dq": '"', r"\(lq": '"', r"\(rq": '"'}
_ESCAPE = re.compile(r"\\(\(..|\*\(..|\*\[[^\]]*\]|\*.|[&/,|^~0:%c]|e)")
_TEXT_MACROS = {".B", ".I", ".BR", ".RB", ".IR", ".RI", ".BI", ".IB", ".SM", ".SB"}


def man_markdown(page: Path) -> tuple[str, str, str] | None:
    """(uri, Markdown, NAME description) of a gzipped roff man page, or None for a stub or a link."""
    try:
        roff = gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace")
    except (OSError, EOFError):
        return None
    if roff.lstrip().startswith(".so "):
        return None
    name = page.name.removesuffix(".gz")
    out = [f"# {name}"]
    para: list[str] = []
    section = ""
    description = ""

    def text_of(s: str) -> str:
        for k, v in _SPECIAL.items():
            s = s.replace(k, v)
        s = _ESCAPE.sub("", _FONT.sub("", s))
        return s.replace("\\\\", "\\").replace('"', "").strip() if s.startswith('"') else s.replace("\\\\", "\\")

    for line in roff.splitlines():
        if line.startswith(('.\\"', "'\\\"")) or line in (".", "'"):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line.partition(" ")
            if macro in (".SH", ".SS"):
                out.append(" ".join(para))
                para = []
                section = text_of(rest).strip('"').strip()
                out.append(("## " if macro == ".SH" else "### ") + section.title())
            elif macro in _TEXT_MACROS and rest:
                para.append(text_of(rest.replace('"', "")))
            elif macro in (".PP", ".P", ".LP", ".TP", ".IP", ".sp", ".br"):
                out.append(" ".join(para))
                para = []
            continue
        text = text_of(line)
        para.append(text)
        if section.upper() == "NAME" and not description and " - " in text:
            description = text.split(" - ", 1)[1].strip()
    out.append(" ".join(para))
    body = "\n\n".join(p for p in out if p.strip())
    if len(body) < 300 or not description:
        return None
    return f"man:{page.parent.name}/{name}.md", body, description


def man_pages(root: Path) -> Iterator[Path]:
    for section in sorted(root.glob("man[1-8]")):
        yield from sorted(section.glob("*.gz"))


def build(kb: Any, target: int, console: Console) -> dict[str, Any]:
    """Ingest until the collection holds `target` chunks; rerunning skips what is already in."""
    from bench.retrieval import questions

    queries = [q["query"] for q in questions(PYDOCS / "library")]
    pages = python_pages(PYDOCS)
    written = 0
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]build"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("chunks", total=target)

        def count() -> int:
            return int(kb._collection(COLLECTION, create=True).count())

        for page in pages:
            written += kb.ingest_bytes(str(page), page.read_bytes(), COLLECTION).chunks
            bar.update(task, completed=min(target, count()))
        man_queries: list[str] = []
        seen: set[int] = set()
        skipped = 0
        total = count()
        for page in man_pages(MAN):
            if total >= target:
                break
            got = man_markdown(page)
            if got is None:
                continue
            uri, body, description = got
            # Families of generated pages (thousands of cloud-SDK commands) repeat the same paragraphs
            # thousands of times; a page sharing a third of its paragraphs with earlier ones is left out.
            paras = {hash(p) for p in body.split("\n\n") if len(p) > 80}
            if paras and len(paras & seen) >= len(paras) / 3:
                skipped += 1
                continue
            seen |= paras
            report = kb.ingest_bytes(uri, body.encode(), COLLECTION)
            written += report.chunks
            total += report.chunks
            if len(description.split()) >= 3:
                man_queries.append(description)
            bar.update(task, completed=min(target, total))
    seconds = time.perf_counter() - t0
    return {
        "queries": list(dict.fromkeys(queries + man_queries)),
        "embedding_backend": kb.embedder.backend,
        "python_pages": len(pages),
        "man_pages_skipped_as_repetitive": skipped,
        "chunks_written": written,
        "seconds": round(seconds, 1),
        "chunks_per_s": round(written / seconds, 1) if written else None,
    }


# -- measurements ------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(ms, 0.5), 2),
        "p90_ms": round(pct(ms, 0.9), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t) * 1000


def stored_vectors(col: Any, page: int = 20_000) -> tuple[list[str], Any, list[str]]:
    """Every id, vector and text, a page at a time (one `get` of 100k rows overflows SQLite's variables)."""
    import numpy as np

    ids: list[str] = []
    vecs: list[Any] = []
    docs: list[str] = []
    for offset in range(0, col.count(), page):
        got = col.get(include=["embeddings", "documents"], limit=page, offset=offset)
        ids += got["ids"]
        vecs.append(np.asarray(got["embeddings"], dtype=np.float32))
        docs += got["documents"]
    return ids, np.concatenate(vecs), docs


def recall(kb: Any, queries: list[str], depths: list[int]) -> dict[str, Any]:
    """HNSW (Chroma's own query) against exact search over the same stored vectors. `recall@k` counts the
    exact top-k ids found; `recall@k_ties` also accepts a chunk as near as the k-th (duplicates tie)."""
    import numpy as np

    col = kb._collection(COLLECTION)
    ids, mat, docs = stored_vectors(col)
    row = {cid: i for i, cid in enumerate(ids)}
    out: dict[str, list[float]] = {}
    for q in queries:
        qv = np.asarray(kb.embedder.embed([q])[0], dtype=np.float32)
        sims = mat @ qv
        res = col.query(query_embeddings=[qv.tolist()], n_results=max(depths), include=[])
        ann = list(res["ids"][0])
        for d in depths:
            exact = np.argpartition(-sims, d - 1)[:d]
            kth = float(sims[exact].min()) - 1e-5
            out.setdefault(f"recall@{d}", []).append(len({ids[i] for i in exact} & set(ann[:d])) / d)
            out.setdefault(f"recall@{d}_ties", []).append(sum(sims[row[c]] >= kth for c in ann[:d]) / d)
    return {
        **{k: round(statistics.fmean(v), 4) for k, v in out.items()},
        "distinct_texts": len(set(docs)),
        "vectors": len(ids),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench-search-scale", help="bench data dir")
    ap.add_argument("--chunks", type=int, default=100_000, help="collection size to build")
    ap.add_argument("--chunk-size", type=int, default=500, help="characters per chunk (~100 MiniLM tokens)")
    ap.add_argument("--queries", type=int, default=400, help="queries timed per mode")
    ap.add_argument("--k", type=int, default=4, help="chunks per search (RAG's default top_k)")
    ap.add_argument("--ef-search", type=int, default=None, help="set the collection's HNSW ef_search first")
    ap.add_argument("--fresh", action="store_true", help="rebuild the collection")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    console = Console()
    if not PYDOCS.is_dir():
        raise SystemExit(f"{PYDOCS} not found: install Debian's python3.11-doc (apt-get install python3.11-doc)")
    offline_environment()
    if args.fresh and args.data.exists():
        shutil.rmtree(args.data)
    os.environ["ENCLAVE_DATA_DIR"] = str(args.data)
    from enclave.knowledge.store import KnowledgeBase

    load_before = os.getloadavg()
    settings = Settings(data_dir=str(args.data), rag={"chunk_size": args.chunk_size, "chunk_overlap": 50})
    kb = KnowledgeBase.from_settings(settings)
    state_file = args.data / "build.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state.get("target") != args.chunks or state.get("chunk_size") != args.chunk_size:
        state = {"target": args.chunks, "chunk_size": args.chunk_size, **build(kb, args.chunks, console)}
        state_file.write_text(json.dumps(state))
    col = kb._collection(COLLECTION)
    if args.ef_search:
        col.modify(configuration={"hnsw": {"ef_search": args.ef_search}})
    total = col.count()
    queries = state["queries"]
    step = max(1, len(queries) // args.queries)
    queries = queries[::step][: args.queries]
    principal = Principal(name="bench")

    # The BM25 index is built on the first search after a start or a change; time it once, apart.
    _, bm25_build_ms = timed(kb.search, "warm up", COLLECTION, principal, k=args.k, mode="bm25")
    for q in queries[:10]:
        kb.search(q, COLLECTION, principal, k=args.k)
    modes: dict[str, Any] = {}
    for mode in ("dense", "bm25", "hybrid"):
        lat = [timed(kb.search, q, COLLECTION, principal, k=args.k, mode=mode)[1] for q in queries]
        modes[mode] = summary(lat)
    depth = max(args.k * 4, 30)
    parts: dict[str, list[float]] = {"query embedding": [], "chroma hnsw": [], "bm25": []}
    bm25 = kb._bm25_for(COLLECTION, col)
    for q in queries:
        vec, ms = timed(kb.embedder.embed, [q])
        parts["query embedding"].append(ms)
        parts["chroma hnsw"].append(timed(col.query, query_embeddings=vec, n_results=depth, include=[])[1])
        parts["bm25"].append(timed(bm25.top, q, depth)[1])
    rec = recall(kb, queries, [10, depth])
    config = col.configuration_json.get("hnsw") if hasattr(col, "configuration_json") else None
    out = {
        "corpus": {
            "chunks": total,
            "chunk_size": args.chunk_size,
            "sources": f"{state['python_pages']} pages of {PYDOCS}, then man pages from {MAN} in name order",
            "build": {k: state.get(k) for k in ("seconds", "chunks_written", "chunks_per_s", "embedding_backend")},
        },
        "queries": len(queries),
        "k": args.k,
        "search_depth": depth,
        "query_embedding_backend": kb.embedder.backend,
        "hnsw": config,
        "modes": modes,
        "parts": {k: summary(v) for k, v in parts.items()},
        "bm25_index_build_ms": round(bm25_build_ms, 1),
        "recall": rec,
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
    }
    table = Table(title=f"search at {total:,} chunks: {len(queries)} queries, k={args.k}, depth {depth}")
    for c in ("what", "p50 ms", "p90 ms", "p99 ms", "mean ms"):
        table.add_column(c, justify="left" if c == "what" else "right")
    for name, r in [*((f"search {m}", r) for m, r in modes.items()), *out["parts"].items()]:
        table.add_row(name, *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")))
    console.print(table)
    console.print(
        "HNSW recall against exact search: "
        + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("recall"))
        + f" ({rec['distinct_texts']:,} distinct texts)"
        + f"; hnsw {config}; BM25 index build {bm25_build_ms / 1000:.1f} s (once per start or change)"
    )
    b = state
    if b.get("chunks_written"):
        console.print(f"build: {b['chunks_written']} chunks in {b['seconds']} s = {b['chunks_per_s']} chunks/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
