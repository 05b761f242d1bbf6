"""Trains the embedding moderation classifier: `python -m bench.moderation_train`.

Reads the shipped labelled set (`enclave/moderation/data/train.jsonl`) and the public training split
(`enclave/moderation/data/public/train.jsonl`, built by `python -m bench.moderation_data`), embeds every
part of every text with the service's own embedder, chooses the operating point by 5-fold cross-validation on the
training data only (the public evaluation split is never seen), and writes the weights the moderator ships with
(`enclave/moderation/data/embedding_classifier.npz`). The operating point: the lowest probability of harm that
flags at most 2% of the benign training texts held out in cross-validation. Benign texts include the questions
Enclave's own answer benchmark asked of the Python reference and the man pages (`bench/results/answers*.json`):
what its users ask is technical, and "kill a process" must stay an ordinary question.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from enclave.core.settings import Settings
from enclave.moderation.classifier import load_rows
from enclave.moderation.embedding import WEIGHTS, EmbeddingClassifier, fit, parts

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ROOT / "enclave" / "moderation" / "data" / "public"
# Parts of one training text at most: a long jailbreak template would otherwise outweigh many short requests.
TRAIN_PARTS = 4
# The benign share the operating point may flag in cross-validation: the target on ordinary prompts is 2%.
BENIGN_FPR = 0.02


def public_rows(split: str) -> list[dict[str, str]]:
    path = PUBLIC / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def own_questions() -> list[str]:
    """The questions bench.answers asked of the Python reference and the man pages (benign, technical)."""
    seen: dict[str, None] = {}
    for path in sorted((ROOT / "bench" / "results").glob("answers*.json")):
        for a in json.loads(path.read_text()).get("answers", []):
            if isinstance(a, dict) and isinstance(a.get("question"), str):
                seen.setdefault(a["question"], None)
    return list(seen)


# Sentences of documentation, as retrieved passages are read sentence by sentence: without them the classifier
# took "A client sends a chat frame with the message" for an injection (jailbreaks talk about chats and answers).
PYDOCS = Path("/usr/share/doc/python3.11/html/library")
DOC_SENTENCES = 1500


def doc_sentences(n: int = DOC_SENTENCES) -> list[str]:
    """Sentences of the Python library reference (Debian's python3.11-doc, `make pydocs`), a seeded sample."""
    import random

    from lxml import html

    from enclave.moderation.sentences import sentences

    if not PYDOCS.is_dir():
        raise SystemExit(f"{PYDOCS} is missing: `make pydocs` installs the Python documentation")
    out: list[str] = []
    for page in sorted(PYDOCS.glob("*.html")):
        body = html.parse(str(page)).getroot().find_class("body")
        for p in body[0].iter("p") if body else []:
            text = " ".join(p.text_content().split())
            out += [text[a:b] for a, b in sentences(text) if 40 <= b - a <= 300]
    return random.Random(0).sample(out, min(n, len(out)))


def router_queries() -> list[str]:
    """The router's labelled queries (questions about the documents, an adapter's domain, small talk): all benign."""
    path = ROOT / "enclave" / "chat" / "router_data" / "labels.jsonl"
    return [json.loads(line)["query"] for line in path.read_text().splitlines() if line.strip()]


def training_rows() -> list[dict[str, str]]:
    own = [{"text": q, "label": "benign", "source": "enclave/bench-answers"} for q in own_questions()]
    own += [{"text": q, "label": "benign", "source": "enclave/router"} for q in router_queries()]
    docs = [{"text": t, "label": "benign", "source": "python-docs/sentences"} for t in doc_sentences()]
    return [{**r, "source": "enclave"} for r in load_rows("train")] + own + docs + public_rows("train")


def embedder() -> Any:
    from enclave.knowledge.embedder import Embedder

    return Embedder.from_settings(Settings())


def windows(text: str, words: int = 48, overlap: int = 8, most: int = TRAIN_PARTS) -> list[str]:
    """A training text in overlapping windows of words, its first and last ones: a long jailbreak is learnt by
    stretches of its own prose (in runs of a few sentences, the moderator's parts, much of it reads as anything)."""
    tokens = text.split()
    if len(tokens) <= words:
        return [text]
    out = [" ".join(tokens[i : i + words]) for i in range(0, len(tokens) - overlap, words - overlap)]
    return out if len(out) <= most else out[: most // 2] + out[-(most - most // 2) :]


def embed_parts(texts: list[str], embed: Any, most: int, label: str, split: Any = parts) -> tuple[Any, list[int]]:
    """The vectors of every part of every text (as `split` cuts them), and which text each part came from."""
    pieces: list[str] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        for p in split(text, most=most):
            pieces.append(p)
            owner.append(i)
    out: list[list[float]] = []
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(pieces))
        for start in range(0, len(pieces), 64):
            out += embed(pieces[start : start + 64])
            bar.advance(task, min(64, len(pieces) - start))
    return np.asarray(out, dtype=np.float32), owner


def per_text_harm(clf: EmbeddingClassifier, vectors: Any, owner: list[int], n: int) -> tuple[Any, list[str]]:
    """Each text's probability of harm and its category, as the moderator reads them (the harm of its parts)."""
    rows: list[list[int]] = [[] for _ in range(n)]
    for row, i in enumerate(owner):
        rows[i].append(row)
    judged = [clf.harm(vectors[r]) for r in rows]
    return np.asarray([h for h, _ in judged]), [label for _, label in judged]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--c", type=float, default=4.0, help="inverse regularisation of the logistic regression")
    args = ap.parse_args(argv)
    console = Console()
    rows = training_rows()
    texts = [r["text"] for r in rows]
    labels = [r["label"] for r in rows]
    emb = embedder()
    t0 = time.perf_counter()
    vectors, owner = embed_parts(texts, emb.embed, TRAIN_PARTS, "embedding the training texts", windows)
    embed_s = time.perf_counter() - t0
    part_labels = [labels[i] for i in owner]
    # Cross-validation by text (all parts of a text in one fold), for the operating point.
    rng = np.random.default_rng(0)
    fold_of = rng.integers(0, 5, size=len(rows))
    cv_score = np.zeros(len(rows))
    cv_label = ["benign"] * len(rows)
    owner_arr = np.asarray(owner)
    for k in range(5):
        train_parts = fold_of[owner_arr] != k
        clf = fit(vectors[train_parts], [lbl for lbl, m in zip(part_labels, train_parts, strict=True) if m], args.c)
        held = np.flatnonzero(fold_of == k)
        held_parts = np.flatnonzero(np.isin(owner_arr, held))
        remap = {int(t): j for j, t in enumerate(held)}
        score, label = per_text_harm(clf, vectors[held_parts], [remap[owner[i]] for i in held_parts], len(held))
        cv_score[held] = score
        for j, t in enumerate(held):
            cv_label[t] = label[j]
    benign = np.asarray([lbl == "benign" for lbl in labels])
    threshold = max(0.5, float(np.quantile(cv_score[benign], 1.0 - BENIGN_FPR)))
    flagged = cv_score >= threshold
    cv: dict[str, Any] = {"threshold": round(threshold, 4), "benign_fpr": float(flagged[benign].mean())}
    per: dict[str, Any] = {}
    for cat in sorted(set(labels) - {"benign"}):
        mask = np.asarray([lbl == cat for lbl in labels])
        per[cat] = {
            "n": int(mask.sum()),
            "flagged": float(flagged[mask].mean()),
            "right_category": float(np.mean([cv_label[i] == cat for i in np.flatnonzero(mask & flagged)] or [False])),
        }
    cv["categories"] = per
    final = fit(vectors, part_labels, args.c)
    final.threshold = threshold
    final.meta = {
        "trained_on": {"rows": len(rows), "parts": len(part_labels), "sources": sorted({r["source"] for r in rows})},
        "embedder": f"{emb.name}/{emb.backend}",
        "c": args.c,
        "cross_validation": cv,
        "embed_seconds": round(embed_s, 1),
    }
    final.save(args.out)
    table = Table(title=f"5-fold cross-validation on the training data ({len(rows)} texts, {len(part_labels)} parts)")
    for col in ("category", "texts", "flagged", "right category"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, v in per.items():
        table.add_row(cat, str(v["n"]), f"{v['flagged']:.2f}", f"{v['right_category']:.2f}")
    table.add_row("benign (false positives)", str(int(benign.sum())), f"{cv['benign_fpr']:.3f}", "")
    console.print(table)
    console.print(f"operating point: probability of harm ≥ {threshold:.3f}; wrote {args.out}")
    return final.meta


if __name__ == "__main__":
    main()
