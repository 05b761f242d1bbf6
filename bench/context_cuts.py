"""How much ordinary documentation the context check cuts as instructions to the model: `python -m bench.context_cuts`.

Ingests the bundled sample documents and the Python 3.11 library reference (Debian's `python3.11-doc`, `make
pydocs`) into a throwaway knowledge base under `.cache/`, reads every chunk back, splits it into sentences as the
chat pipeline does (`enclave.moderation.sentences`) and has the served moderator judge them as context in batches:
a sentence blocked as prompt_injection is one the pipeline would cut. No sentence of either corpus is an
instruction to the model, so every cut is a wrong one. Reports per corpus the chunks, sentences and sentences cut,
with the share's Wilson 95% interval, and, beside it, the planted instructions of bench.moderation that are cut
(recall). Prints a table and writes `bench/results/context_cuts.json` (with the first wrongly cut sentences).

`--tune` measures, on other documentation (the rest of the Python documentation: tutorial, HOWTOs, FAQ, language
reference, "using", "extending"; and the man pages of Debian's essential packages), the share cut for each value
of the bar a sentence that does not speak to the model must reach (moderator.CONTEXT_UNADDRESSED, chosen there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.machine import cpu_model
from bench.moderation import planted_cuts
from enclave.core.protocols import Moderator, Verdict
from enclave.core.settings import Settings, offline_environment
from enclave.core.stats import wilson
from enclave.knowledge.samples import SAMPLES
from enclave.moderation.sentences import sentences

ROOT = Path(__file__).resolve().parents[1]
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
PYDOCS = PYTHON_DOCS / "library"
OUT = ROOT / "bench" / "results" / "context_cuts.json"
# The rest of the Python documentation, for --tune (never the library reference the default run reports on).
TUNING_PYTHON = ("tutorial", "howto", "faq", "reference", "using", "extending")
TUNING_BARS = (0.9, 0.95, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999)
# Sentences per moderator call: the pipeline sends one request's passages at once (a few dozen sentences); larger
# batches only amortise the thread hop, the verdicts are the same.
BATCH = 256
LISTED = 200  # wrongly cut sentences kept in the JSON, per corpus


def is_cut(v: Verdict) -> bool:
    """What ChatPipeline._without_injections cuts out of a passage."""
    return v.action == "block" and "prompt_injection" in v.categories


def judge(moderator: Moderator, texts: list[str]) -> list[Verdict]:
    return asyncio.run(moderator.check_many(texts, "context"))


def _bar(label: str, console: Console) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def ingest(kb: Any, name: str, docs: list[tuple[str, bytes]], console: Console) -> None:
    """(uri, bytes) into collection `name`; documents already there unchanged are skipped by the store."""
    with _bar(f"ingest {name}", console) as bar:
        task = bar.add_task(name, total=len(docs))
        for uri, data in docs:
            kb.ingest_bytes(uri, data, name)
            bar.advance(task)


def files(folders: Iterable[Path], pattern: str) -> list[tuple[str, bytes]]:
    return [(str(f.resolve()), f.read_bytes()) for d in folders for f in sorted(d.glob(pattern)) if f.is_file()]


def man_pages() -> list[tuple[str, bytes]]:
    """The man pages bench.answers asks about (sections 1 and 8 of Debian's essential packages), as Markdown."""
    from bench.answers import man_files
    from bench.search_scale import man_markdown

    pages = [man_markdown(path) for path in man_files()]
    return [(uri, body.encode()) for uri, body, _ in filter(None, pages)]


Judged = list[tuple[dict[str, Any], str, Verdict]]  # (chunk, sentence, verdict)


def judged(moderator: Moderator, kb: Any, name: str, console: Console) -> tuple[int, Judged]:
    """The chunks of collection `name`, and each of their sentences with its verdict as context."""
    chunks = list(kb.iter_chunks(name))
    todo = [(c, c["text"][a:b]) for c in chunks for a, b in sentences(c["text"])]
    out: Judged = []
    with _bar(f"judge {name}", console) as bar:
        task = bar.add_task(name, total=len(todo))
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            out += [(c, t, v) for (c, t), v in zip(batch, judge(moderator, [t for _, t in batch]), strict=True)]
            bar.advance(task, len(batch))
    return len(chunks), out


def report(moderator: Moderator, kb: Any, corpora: dict[str, str], console: Console) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, source in corpora.items():
        t0 = time.perf_counter()
        chunks, verdicts = judged(moderator, kb, name, console)
        cut = [
            # harm is None when the lexical checks decided alone (the embeddings were not read)
            {"uri": c["uri"], "chunk": c["id"], "sentence": t, "by": "lexical" if v.harm is None else "embedding"}
            for c, t, v in verdicts
            if is_cut(v)
        ]
        n, k = len(verdicts), len(cut)
        out[name] = {
            "source": source,
            "chunks": chunks,
            "sentences": n,
            "cut": k,
            "share": k / n if n else 0.0,
            "wilson": wilson(k, n, 6),
            "cut_by": {by: sum(c["by"] == by for c in cut) for by in ("lexical", "embedding")},
            "seconds": round(time.perf_counter() - t0, 1),
            "wrongly_cut": cut[:LISTED],
        }
    table = Table(title="context check: sentences of ordinary documentation cut as instructions to the model")
    for col in ("corpus", "chunks", "sentences", "cut", "share cut [95% interval]", "lexical / embeddings"):
        table.add_column(col, justify="left" if col == "corpus" else "right")
    for name, c in out.items():
        low, high = c["wilson"]
        share = f"{c['share']:.2%} [{low:.2%}–{high:.2%}]"
        by = f"{c['cut_by']['lexical']} / {c['cut_by']['embedding']}"
        table.add_row(name, str(c["chunks"]), str(c["sentences"]), str(c["cut"]), share, by)
    console.print(table)
    return out


def tune(moderator: Moderator, kb: Any, console: Console) -> dict[str, Any]:
    """The share of the tuning corpora's sentences cut for each bar of moderator.context_unaddressed. Two passes:
    with the bar out of reach (what is cut whatever it is) and at the context bar (what it may add: a sentence cut
    there and not in the first pass is cut at a bar b when the embeddings' probability of harm reaches b)."""
    from enclave.moderation import FastModerator

    assert isinstance(moderator, FastModerator), "--tune needs the fast moderator (no guard model)"
    ingest(kb, "pyother", files([PYTHON_DOCS / d for d in TUNING_PYTHON], "*.html"), console)
    ingest(kb, "man", man_pages(), console)
    passes = []
    for bar in (2.0, 0.0):
        moderator.context_unaddressed = bar
        passes.append([v for name in ("pyother", "man") for _, _, v in judged(moderator, kb, name, console)[1]])
    never, low = passes
    n = len(never)
    rows: dict[str, dict[str, Any]] = {}
    for b in TUNING_BARS:
        k = sum(is_cut(a) or (is_cut(z) and (z.harm or 0.0) >= b) for a, z in zip(never, low, strict=True))
        rows[str(b)] = {"cut": k, "share": k / n, "wilson": wilson(k, n, 6)}
    table = Table(title=f"--tune: {n} sentences of other documentation (Python tutorial, HOWTOs…, man pages)")
    for col in ("bar without the words", "cut", "share cut [95% interval]"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, str(r["cut"]), f"{r['share']:.3%} [{r['wilson'][0]:.3%}–{r['wilson'][1]:.3%}]")
    console.print(table)
    return {"sentences": n, "bars": rows, "python": [str(PYTHON_DOCS / d) for d in TUNING_PYTHON]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench-context-cuts", help="bench data dir")
    ap.add_argument("--fresh", action="store_true", help="re-ingest even if the index is there")
    ap.add_argument("--tune", action="store_true", help="the share cut per bar on other documentation, instead")
    ap.add_argument("--out", type=Path, help=f"JSON written (default {OUT.relative_to(ROOT)}; with --tune, none)")
    args = ap.parse_args(argv)
    console = Console()
    if not PYDOCS.is_dir():
        raise SystemExit(f"{PYDOCS} not found: install Debian's python3.11-doc (make pydocs)")
    offline_environment()
    if args.fresh and args.data.exists():
        shutil.rmtree(args.data)
    from enclave.knowledge.store import KnowledgeBase
    from enclave.moderation import build_moderator

    settings = Settings(data_dir=str(args.data))
    kb = KnowledgeBase.from_settings(settings)
    # As the service builds it (enclave.api.state): over the knowledge base's embedder.
    moderator = build_moderator(settings.moderation, None, kb.embedder.embed)
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    result: dict[str, Any]
    if args.tune:
        result = {"tuning": tune(moderator, kb, console), "machine": machine}
    else:
        ingest(kb, "samples", files([SAMPLES], "*.md"), console)
        ingest(kb, "pydocs", files([PYDOCS], "*.html"), console)
        corpora = report(moderator, kb, {"samples": str(SAMPLES), "pydocs": str(PYDOCS)}, console)
        planted = planted_cuts(lambda texts: judge(moderator, texts))
        p = planted
        console.print(
            f"planted instructions cut: {p['cut']}/{p['planted_sentences']} "
            f"{wilson(p['cut'], p['planted_sentences'])}; ordinary sentences beside them cut: "
            f"{p['wrongly_cut']}/{p['clean_sentences']}"
        )
        result = {
            "corpora": corpora,
            "planted": planted,
            "moderation": settings.moderation.model_dump(mode="json"),
            "chunk_size": settings.rag.chunk_size,
            "chunk_overlap": settings.rag.chunk_overlap,
            "embedder": f"{kb.embedder.backend}, {kb.embedder.threads} threads",
            "machine": machine,
        }
    out = args.out or (None if args.tune else OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
