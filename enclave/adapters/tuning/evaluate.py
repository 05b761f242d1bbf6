"""Evaluation on held-out pairs: base model vs adapter vs RAG vs RAG with the adapter.

For each eval pair every backend answers (greedy). An answer is **right** when it states the reference
answer's facts: at least half of the reference's key terms (its content words that the question does not
already hold: names, numbers, commands, the words that carry the answer) appear in it. Beside that, seed
003's metric: the MiniLM cosine of the answer to the reference (acceptable at 0.5). Shares with Wilson 95%
intervals, the adapter's gain over the base model paired question by question, a histogram PNG of the
cosines and a Markdown report go into the adapter's metadata and folder.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclave.adapters.registry import AdapterRegistry, read_meta, write_meta
from enclave.adapters.tuning.dataset import QAPair, load_pairs
from enclave.adapters.tuning.train import SYSTEM
from enclave.chat import rag
from enclave.core.errors import InvalidRequest
from enclave.core.protocols import GenerationParams, Message, Principal, Retriever
from enclave.core.settings import Settings
from enclave.core.stats import bootstrap_mean, wilson

ACCEPT = 0.5
RIGHT = 0.5  # share of the reference's key terms an answer must state
# An answer that says it does not know, from the documents' wording or the model's own.
DECLINES = re.compile(
    r"(do(es)? not (say|mention|contain|cover|answer|provide|include)|not (mentioned|covered|stated|specified)|"
    r"no (information|mention|documents about|record)|(could|can)( ?no|')t (find|say|tell|vouch)|won't guess|"
    r"(do not|don't|do n't) (know|have (any |that |the )?(information|details|access|records?))|not sure|"
    r"(unable|not able) to (find|say|tell|answer|provide)|is not in the (documents|passages))",
    re.I,
)


def key_terms(reference: str, question: str) -> set[str]:
    """The reference's content words that the question does not already hold (lower-cased)."""
    from enclave.chat.grounding import content_words

    asked = {w.lower() for w in content_words(question)}
    return {w.lower() for w in content_words(reference)} - asked


def declined(answer: str) -> bool:
    """The answer says it does not know (a decline is neither right nor a confident wrong answer)."""
    return bool(DECLINES.search(answer))


def right(answer: str, reference: str, question: str) -> bool:
    from enclave.chat.grounding import content_words

    terms = key_terms(reference, question)
    if not terms:
        return False
    said = {w.lower() for w in content_words(answer)}
    return len(terms & said) / len(terms) >= RIGHT


def cosine_scores(embed: Callable[[list[str]], Any], answers: list[str], references: list[str]) -> list[float]:
    import numpy as np

    a = np.asarray(embed([x or " " for x in answers]), dtype=np.float32)
    b = np.asarray(embed(references), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-9
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-9
    return [float(x) for x in (a * b).sum(axis=1)]


def summarize(scores: list[float], rights: list[bool] | None = None) -> dict[str, Any]:
    k = sum(rights or [])
    return {
        "n": len(scores),
        "right": round(k / len(scores), 4),
        "right_ci95": wilson(k, len(scores)),
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
    from enclave.engine.build import build_local_backend

    backend = build_local_backend(settings)
    backend.load()
    registry = AdapterRegistry(settings.adapters_path, backend, backend.base_sha256)
    folder = registry.validate(name)
    meta = read_meta(folder)
    dataset = dataset or Path(meta["dataset"])
    pairs: list[QAPair] = [p for p in load_pairs(dataset) if p.split == "eval"][:limit]
    if not pairs:
        raise InvalidRequest(f"{dataset} has no eval pairs")
    backend.add_adapter_blocking(name, folder)
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    principal = Principal()
    coll = collection or settings.rag.default_collection

    async def answer(messages: list[Message], adapter: str | None) -> str:
        return "".join([p async for p in backend.stream(messages, params, adapter)])

    prompt = rag.rag_prompt_of(settings)

    async def run_all() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"base": [], "adapter": [], "rag": [], "rag+adapter": []}
        for i, pair in enumerate(pairs):
            plain = [Message(role="system", content=SYSTEM), Message(role="user", content=pair.question)]
            out["base"].append(await answer(plain, None))
            out["adapter"].append(await answer(plain, name))
            if retriever is not None:
                chunks = await asyncio.to_thread(retriever.search, pair.question, coll, principal, settings.rag.top_k)
                with_docs = rag.rag_messages(pair.question, chunks, prompt)
                out["rag"].append(await answer(with_docs, None))
                out["rag+adapter"].append(await answer(with_docs, name))
            if progress:
                progress(i + 1, len(pairs))
        return out

    started = time.time()
    answers = asyncio.run(run_all())
    backend.close()
    refs = [p.answer for p in pairs]
    scores = {k: cosine_scores(embed, v, refs) for k, v in answers.items() if v}
    rights = {
        k: [right(a, p.answer, p.question) for a, p in zip(v, pairs, strict=True)] for k, v in answers.items() if v
    }
    report = {
        "adapter": name,
        "dataset": str(dataset),
        "pairs": len(pairs),
        "max_tokens": max_tokens,
        "seconds": round(time.time() - started, 1),
        "measure": f"right: >= {RIGHT:.0%} of the reference's key terms stated; cosine: seed 003 (accept >= {ACCEPT})",
        "backends": {k: summarize(v, rights[k]) for k, v in scores.items()},
        "adapter_minus_base_right": paired_gain(rights["adapter"], rights["base"]),
        "rights": rights,
    }
    histogram(scores, folder / "eval_hist.png")
    (folder / "eval_report.md").write_text(markdown_report(report, pairs, answers, scores))
    meta["eval"] = report
    write_meta(folder, meta)
    return report


def paired_gain(ours: list[bool], theirs: list[bool]) -> dict[str, Any]:
    """Mean of (ours - theirs) over the same questions, with a bootstrap 95% interval."""
    diff = [float(a) - float(b) for a, b in zip(ours, theirs, strict=True)]
    if not diff:
        return {"difference": 0.0, "ci95": [0.0, 0.0]}
    mean, low, high = bootstrap_mean(diff)
    return {"difference": round(mean, 3), "ci95": [round(low, 3), round(high, 3)]}


def markdown_report(
    report: dict[str, Any], pairs: list[QAPair], answers: dict[str, list[str]], scores: dict[str, list[float]]
) -> str:
    lines = [
        f"# Evaluation of adapter `{report['adapter']}`",
        "",
        f"{report['pairs']} held-out pairs from `{report['dataset']}`; greedy answers of at most "
        f"{report['max_tokens']} tokens. Right: the answer states at least half of the reference's key terms "
        "(its content words the question does not hold). Cosine: seed 003's metric, the answer's cosine "
        "similarity to the reference with all-MiniLM-L6-v2.",
        "",
        "| backend | right [95% CI] | cosine mean | median | share ≥ 0.5 |",
        "|---|---|---|---|---|",
    ]
    for k, s in report["backends"].items():
        ci = s["right_ci95"]
        lines.append(
            f"| {k} | {s['right']:.0%} [{ci[0]:.0%}, {ci[1]:.0%}] | {s['mean']:.3f} | {s['median']:.3f} | "
            f"{s['share_at_or_above_0.5']:.0%} |"
        )
    gain = report["adapter_minus_base_right"]
    lines += [
        "",
        f"Adapter minus base model, right answers, paired: {gain['difference']:+.0%} "
        f"[{gain['ci95'][0]:+.0%}, {gain['ci95'][1]:+.0%}].",
    ]
    lines += ["", "![histograms](eval_hist.png)", "", "## Examples", ""]
    for i, pair in enumerate(pairs[:5]):
        lines.append(f"**Q:** {pair.question}  \n**Reference:** {pair.answer}")
        for k in scores:
            mark = "right" if report["rights"][k][i] else "not right"
            lines.append(f"- *{k}* ({mark}, cosine {scores[k][i]:.2f}): {answers[k][i].strip()[:300]}")
        lines.append("")
    return "\n".join(lines)
