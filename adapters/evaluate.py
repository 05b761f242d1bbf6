"""Evaluation: base model vs adapter vs RAG on held-out pairs, by embedding cosine to the reference.

For each eval pair every backend answers (greedy); the MiniLM embedder scores each answer against
the reference answer. Mean, median and the share at or above the 0.5 acceptance line go into the
adapter's metadata, with a histogram PNG per backend and a Markdown report.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.dataset import QAPair, load_pairs
from adapters.registry import AdapterRegistry, read_meta, write_meta
from adapters.train import SYSTEM
from service.chat import rag
from service.errors import InvalidRequest
from service.protocols import GenerationParams, Message, Principal, Retriever
from service.settings import Settings

ACCEPT = 0.5


def cosine_scores(embed: Callable[[list[str]], Any], answers: list[str], references: list[str]) -> list[float]:
    import numpy as np

    a = np.asarray(embed([x or " " for x in answers]), dtype=np.float32)
    b = np.asarray(embed(references), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-9
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-9
    return [float(x) for x in (a * b).sum(axis=1)]


def summarize(scores: list[float]) -> dict[str, float]:
    return {
        "n": len(scores),
        "mean": round(statistics.fmean(scores), 4),
        "median": round(statistics.median(scores), 4),
        "share_at_or_above_0.5": round(sum(s >= ACCEPT for s in scores) / len(scores), 4),
    }


def histogram(scores: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.2), sharey=True, squeeze=False)
    bins = [i / 20 for i in range(-4, 21)]
    for ax, (name, vals) in zip(axes[0], scores.items(), strict=True):
        ax.hist(vals, bins=bins, color="#4a7bd0", edgecolor="white")
        ax.axvline(ACCEPT, color="#d0554a", linestyle="--", label="acceptance 0.5")
        ax.set_title(f"{name}: mean {statistics.fmean(vals):.2f}")
        ax.set_xlabel("cosine similarity to reference")
    axes[0][0].set_ylabel("answers")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(
    settings: Settings,
    name: str,
    embed: Callable[[list[str]], Any],
    retriever: Retriever | None = None,
    collection: str | None = None,
    dataset: Path | None = None,
    limit: int | None = None,
    max_tokens: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    from service.backends.local import build_local_backend

    backend = build_local_backend(settings)
    backend.load()
    registry = AdapterRegistry(settings.adapters_path, backend, backend.base_sha256)
    folder = registry.validate(name)
    meta = read_meta(folder)
    dataset = dataset or Path(meta["dataset"])
    pairs: list[QAPair] = [p for p in load_pairs(dataset) if p.split == "eval"][:limit]
    if not pairs:
        raise InvalidRequest(f"{dataset} has no eval pairs")
    backend._add_adapter(name, folder)
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    principal = Principal()
    coll = collection or settings.rag.default_collection

    async def answer(messages: list[Message], adapter: str | None) -> str:
        return "".join([p async for p in backend.stream(messages, params, adapter)])

    async def run_all() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"base": [], "adapter": [], "rag": []}
        for i, pair in enumerate(pairs):
            plain = [Message(role="system", content=SYSTEM), Message(role="user", content=pair.question)]
            out["base"].append(await answer(plain, None))
            out["adapter"].append(await answer(plain, name))
            if retriever is not None:
                chunks = await asyncio.to_thread(retriever.search, pair.question, coll, principal, settings.rag.top_k)
                out["rag"].append(await answer(rag.rag_messages(pair.question, chunks), None))
            if progress:
                progress(i + 1, len(pairs))
        return out

    started = time.time()
    answers = asyncio.run(run_all())
    backend.close()
    refs = [p.answer for p in pairs]
    scores = {k: cosine_scores(embed, v, refs) for k, v in answers.items() if v}
    report = {
        "adapter": name,
        "dataset": str(dataset),
        "pairs": len(pairs),
        "max_tokens": max_tokens,
        "seconds": round(time.time() - started, 1),
        "backends": {k: summarize(v) for k, v in scores.items()},
    }
    histogram(scores, folder / "eval_hist.png")
    (folder / "eval_report.md").write_text(markdown_report(report, pairs, answers, scores))
    meta["eval"] = report
    write_meta(folder, meta)
    return report


def markdown_report(
    report: dict[str, Any], pairs: list[QAPair], answers: dict[str, list[str]], scores: dict[str, list[float]]
) -> str:
    lines = [
        f"# Evaluation of adapter `{report['adapter']}`",
        "",
        f"{report['pairs']} held-out pairs from `{report['dataset']}`; greedy answers of at most "
        f"{report['max_tokens']} tokens; cosine similarity to the reference answer with all-MiniLM-L6-v2.",
        "",
        "| backend | mean | median | share ≥ 0.5 |",
        "|---|---|---|---|",
    ]
    for k, s in report["backends"].items():
        lines.append(f"| {k} | {s['mean']:.3f} | {s['median']:.3f} | {s['share_at_or_above_0.5']:.0%} |")
    lines += ["", "![histograms](eval_hist.png)", "", "## Examples", ""]
    for i, pair in enumerate(pairs[:5]):
        lines.append(f"**Q:** {pair.question}  \n**Reference:** {pair.answer}")
        for k in scores:
            lines.append(f"- *{k}* ({scores[k][i]:.2f}): {answers[k][i].strip()[:300]}")
        lines.append("")
    return "\n".join(lines)
