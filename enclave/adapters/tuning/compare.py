"""A candidate adapter against the one being served, on the same held-out questions, and the gate on the result.

Both answer every question greedily without documents (the adapter route); each answer is scored as `tune eval`
scores it — right when it states at least half of the reference's key terms, and its MiniLM cosine to the
reference — and is either right, a decline ("I don't know") or a wrong answer stated as fact. A question marked
`"answerable": false` is one no adapter should answer: only a decline is right there. The candidate's gain is the
mean of the per-question differences with a percentile-bootstrap 95% interval (paired: the same questions, so the
questions' own difficulty cancels). The gate promotes only when the lower bound of the interval of the right-answer
gain is above the margin, and the candidate does not state wrong answers more often (the lower bound of that
difference not above zero): a confident wrong answer costs more than a decline. An adapter that recorded what it
was taught is scored on what the chat would show: its answers checked against its pairs (chat/taught.py), each
shown answer resting on a pair it names. A JSON report and a plot of the per-question differences go beside the
candidate.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.adapters.registry import AdapterRegistry, read_meta
from enclave.adapters.tuning.evaluate import cosine_scores, declined, paired_gain, right, summarize
from enclave.adapters.tuning.train import SYSTEM
from enclave.core.errors import InvalidRequest
from enclave.core.files import atomic_write
from enclave.core.protocols import GenerationParams, Message
from enclave.core.settings import Settings
from enclave.core.stats import bootstrap_mean

MAX_QUESTIONS = 5000
MAX_LINE = 64_000  # characters in one line of a questions file
SIDES = ("candidate", "served")
REPORT_FILE = "gate_report.json"


@dataclass
class Question:
    question: str
    answer: str  # the reference
    answerable: bool = True  # False: nothing the adapter was taught answers it; only a decline is right


@dataclass
class Side:
    """One of the two adapters compared: its label in reports and its folder (None: the base model)."""

    label: str
    folder: Path | None
    version: str | None = None


def load_questions(path: Path, limit: int | None = None) -> list[Question]:
    """Held-out questions from JSONL: `{"question", "answer"}` per line, `"answerable": false` on a question only a
    decline answers rightly; a `tune dataset` file's train rows are skipped (only rows with split "eval", or none,
    are held out)."""
    if not path.is_file():
        raise InvalidRequest(f"{path}: questions file not found")
    out: list[Question] = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if len(raw) > MAX_LINE:
                raise InvalidRequest(f"{path}:{n}: a line of {len(raw)} bytes; the limit is {MAX_LINE}")
            if not raw.strip():
                continue
            row = _row(path, n, raw)
            if row.get("split", "eval") != "eval":
                continue
            out.append(Question(row["question"].strip(), row["answer"].strip(), row.get("answerable", True)))
            if len(out) > MAX_QUESTIONS:
                raise InvalidRequest(f"{path}: more than {MAX_QUESTIONS} held-out questions; use --limit")
    if not out:
        raise InvalidRequest(f"{path}: no held-out questions (rows with split 'eval', or without a split)")
    return out[:limit]


def _row(path: Path, n: int, raw: bytes) -> dict[str, Any]:
    try:
        row = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path}:{n}: not JSON: {exc}") from exc
    if not isinstance(row, dict):
        raise InvalidRequest(f"{path}:{n}: expected an object with 'question' and 'answer'")
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise InvalidRequest(f"{path}:{n}: '{key}' is missing or empty")
    if not isinstance(row.get("answerable", True), bool):
        raise InvalidRequest(f"{path}:{n}: 'answerable' must be true or false")
    return row


def answer_both(
    settings: Settings,
    sides: dict[str, Side],
    questions: list[Question],
    max_tokens: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[str]]:
    """Each side's greedy answer to each question, from the local model with that side's adapter (or none)."""
    from enclave.engine.build import build_local_backend

    backend = build_local_backend(settings)
    backend.load()
    try:
        registry = AdapterRegistry(settings.adapters_path, None, backend.base_sha256)
        for key, side in sides.items():
            if side.folder is not None:
                registry.check(side.folder, side.label)
                backend.add_adapter_blocking(key, side.folder)
        params = GenerationParams(max_tokens=max_tokens, temperature=0.0)

        async def run() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {k: [] for k in sides}
            for i, q in enumerate(questions):
                messages = [Message(role="system", content=SYSTEM), Message(role="user", content=q.question)]
                for key, side in sides.items():
                    adapter = key if side.folder is not None else None
                    out[key].append("".join([p async for p in backend.stream(messages, params, adapter)]))
                if progress:
                    progress(i + 1, len(questions))
            return out

        return asyncio.run(run())
    finally:
        backend.close()


def as_shown(side: Side, questions: list[Question], answers: list[str]) -> list[str]:
    """What a person would read: an adapter that recorded what it was taught has each answer checked against its
    pairs as the chat pipeline checks it (chat/taught.py), so a question no pair is about, or an answer no pair
    backs, reads as the pipeline's decline."""
    from enclave.chat import taught as taught_pairs

    taught = taught_pairs.read_taught(side.folder) if side.folder is not None else None
    if taught is None:
        return answers
    out = []
    for q, answer in zip(questions, answers, strict=True):
        about = taught.about(q.question)
        if not about:
            out.append(taught_pairs.NOT_TAUGHT)
        elif taught.backing(q.question, answer, about) is None:
            out.append(taught_pairs.not_backed_text(taught.pairs[about[0]]))
        else:
            out.append(answer)
    return out


def interval(diff: list[float]) -> dict[str, Any]:
    mean, low, high = bootstrap_mean(diff)
    return {"difference": round(mean, 4), "ci95": [round(low, 4), round(high, 4)]}


def score(
    questions: list[Question], answers: dict[str, list[str]], embed: Callable[[list[str]], Any]
) -> dict[str, Any]:
    """Per question and side: right, declined, wrong (stated as fact) and cosine; per side their summary; the paired
    differences with intervals."""
    refs = [q.answer for q in questions]
    verdicts = {k: [verdict(a, q) for a, q in zip(answers[k], questions, strict=True)] for k in SIDES}
    rights = {k: [v == "right" for v in verdicts[k]] for k in SIDES}
    wrongs = {k: [v == "wrong" for v in verdicts[k]] for k in SIDES}
    cosines = {k: cosine_scores(embed, answers[k], refs) for k in SIDES}
    per_question = [
        {
            "question": q.question,
            "reference": q.answer,
            "answerable": q.answerable,
            **{
                k: {
                    "answer": answers[k][i],
                    "right": rights[k][i],
                    "verdict": verdicts[k][i],
                    "cosine": round(cosines[k][i], 4),
                }
                for k in SIDES
            },
        }
        for i, q in enumerate(questions)
    ]
    cos_diff = [c - s for c, s in zip(cosines["candidate"], cosines["served"], strict=True)]
    sides = {}
    for k in SIDES:
        n = len(questions)
        shares = {v: round(sum(x == v for x in verdicts[k]) / n, 4) for v in ("declined", "wrong")}
        sides[k] = summarize(cosines[k], rights[k]) | shares
    return {
        "n": len(questions),
        "sides": sides,
        "paired": {
            "right": paired_gain(rights["candidate"], rights["served"]),
            "wrong": paired_gain(wrongs["candidate"], wrongs["served"]),
            "cosine": interval(cos_diff),
        },
        "per_question": per_question,
    }


def verdict(answer: str, q: Question) -> str:
    """right, declined or wrong (a wrong answer stated as if it were known)."""
    said_no = declined(answer)
    if not q.answerable:
        return "right" if said_no else "wrong"
    if right(answer, q.answer, q.question):
        return "right"
    return "declined" if said_no else "wrong"


def decide(scores: dict[str, Any], margin: float) -> dict[str, Any]:
    """Promote only if the lower bound of the paired right-answer gain's 95% interval is above `margin` and the
    candidate does not state wrong answers more often (the lower bound of that difference not above zero)."""
    gain = scores["paired"]["right"]
    low, high = gain["ci95"]
    figures = f"right answers {gain['difference']:+.1%} [{low:+.1%}, {high:+.1%}] over {scores['n']} questions"
    if low <= margin:
        return {"promote": False, "margin": margin, "reason": f"{figures}: the lower bound is not above {margin:+.1%}"}
    wrong = scores["paired"].get("wrong")
    if wrong and wrong["ci95"][0] > 0:
        w_low, w_high = wrong["ci95"]
        more = f"wrong answers stated as fact {wrong['difference']:+.1%} [{w_low:+.1%}, {w_high:+.1%}]"
        return {"promote": False, "margin": margin, "reason": f"{figures}, but {more}: more often wrong"}
    return {"promote": True, "margin": margin, "reason": f"{figures}: the lower bound is above {margin:+.1%}"}


def describe(side: Side) -> dict[str, Any]:
    if side.folder is None:
        return {"label": side.label, "version": None}
    meta = read_meta(side.folder)
    keep = ("name", "created_at", "dataset", "dataset_sha256", "train_pairs", "steps", "final_loss")
    return {"label": side.label, "version": side.version, "folder": str(side.folder)} | {k: meta.get(k) for k in keep}


def compare(
    settings: Settings,
    candidate: Side,
    served: Side,
    questions_file: Path,
    embed: Callable[[list[str]], Any],
    margin: float = 0.0,
    limit: int | None = None,
    max_tokens: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The whole comparison: answers, scores, the gate's verdict, and the report's context."""
    questions = load_questions(questions_file, limit)
    started = time.time()
    raw = answer_both(settings, {"candidate": candidate, "served": served}, questions, max_tokens, progress)
    answers = {k: as_shown(side, questions, raw[k]) for k, side in (("candidate", candidate), ("served", served))}
    report = {
        "candidate": describe(candidate),
        "served": describe(served),
        "questions": {"file": str(questions_file), "sha256": hashlib.sha256(questions_file.read_bytes()).hexdigest()},
        "model": settings.models.name,
        "max_tokens": max_tokens,
        "machine": {"cpus": os.cpu_count()},
        "measure": "right: >= half of the reference's key terms stated (tune eval's check); cosine: MiniLM",
        **score(questions, answers, embed),
    }
    report["seconds"] = round(time.time() - started, 1)
    report["gate"] = decide(report, margin)
    return report


def write_report(report: dict[str, Any], path: Path) -> Path | None:
    """The JSON report at `path`, and its plot beside it (None when matplotlib is not installed)."""
    atomic_write(path, json.dumps(report, indent=2) + "\n")
    png = path.with_suffix(".png")
    try:
        plot(report, png)
    except ImportError:
        return None
    return png


def plot(report: dict[str, Any], path: Path) -> None:
    """Per question, candidate minus served cosine, coloured by whether the right answer was gained or lost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = sorted(report["per_question"], key=lambda r: r["candidate"]["cosine"] - r["served"]["cosine"])
    diffs = [r["candidate"]["cosine"] - r["served"]["cosine"] for r in rows]
    change = [int(r["candidate"]["right"]) - int(r["served"]["right"]) for r in rows]
    palette = {1: "#3a9a5b", -1: "#d0554a", 0: "#9aa3ad"}
    fig, ax = plt.subplots(figsize=(max(6.4, 0.12 * len(rows) + 3), 3.8))
    ax.bar(range(len(rows)), diffs, color=[palette[c] for c in change], width=0.85)
    cos = report["paired"]["cosine"]
    ax.axhspan(*cos["ci95"], color="#4a7bd0", alpha=0.15)
    ax.axhline(statistics.fmean(diffs), color="#4a7bd0", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.6)
    gain = report["paired"]["right"]
    ax.set_title(
        f"{report['candidate']['label']} vs {report['served']['label']}: right {gain['difference']:+.0%} "
        f"[{gain['ci95'][0]:+.0%}, {gain['ci95'][1]:+.0%}]",
        fontsize=10,
    )
    ax.set_xlabel(f"{len(rows)} held-out questions, sorted")
    ax.set_ylabel("cosine, candidate − served")
    ax.set_xticks([])
    keys = [
        Patch(color=palette[1], label="right only with the candidate"),
        Patch(color=palette[-1], label="right only with the served one"),
        Patch(color=palette[0], label="right with both or neither"),
        Patch(color="#4a7bd0", alpha=0.3, label="mean cosine gain, 95% interval"),
    ]
    ax.legend(handles=keys, loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
