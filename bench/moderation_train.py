"""Trains the embedding moderation classifier: `python -m bench.moderation_train`.

Reads the shipped labelled set (`enclave/moderation/data/train.jsonl`) and the public training split
(`enclave/moderation/data/public/train.jsonl`, built by `python -m bench.moderation_data`), embeds every
part of every text with the service's own embedder, trains a linear head with a benign margin (`fit_margin`),
chooses its operating points with the training sources held out by groups (`bench.moderation_loso.thresholds_of`;
the public evaluation split is never seen), and writes the weights the moderator ships with
(`enclave/moderation/data/embedding_classifier.npz`). Benign texts include hard negatives (`hard_negatives.jsonl`,
`python -m bench.moderation_negatives`) and the questions
Enclave's own answer benchmark asked of the Python reference and the man pages (`bench/results/answers*.json`):
what its users ask is technical, and "kill a process" must stay an ordinary question.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from enclave.core.settings import Settings
from enclave.moderation.classifier import load_rows
from enclave.moderation.embedding import WEIGHTS, EmbeddingClassifier

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ROOT / "enclave" / "moderation" / "data" / "public"
# Parts of one training text at most: a long jailbreak template would otherwise outweigh many short requests.
TRAIN_PARTS = 4


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


HARD_NEGATIVES = ROOT / "enclave" / "moderation" / "data" / "hard_negatives.jsonl"


def hard_negatives() -> list[dict[str, str]]:
    """Benign texts full of the words attacks use (`python -m bench.moderation_negatives`)."""
    if not HARD_NEGATIVES.is_file():
        return []
    rows = [json.loads(line) for line in HARD_NEGATIVES.read_text().splitlines() if line.strip()]
    return [{"text": r["text"], "label": r["label"], "source": r["source"]} for r in rows]


def training_rows() -> list[dict[str, str]]:
    own = [{"text": q, "label": "benign", "source": "enclave/bench-answers"} for q in own_questions()]
    own += [{"text": q, "label": "benign", "source": "enclave/router"} for q in router_queries()]
    docs = [{"text": t, "label": "benign", "source": "python-docs/sentences"} for t in doc_sentences()]
    shipped = [{**r, "source": "enclave"} for r in load_rows("train")]
    return shipped + own + docs + hard_negatives() + public_rows("train")


# The benign margin (Prompt Guard 2's recipe): besides cross-entropy, a benign text is pushed until its log-odds of
# harm is below -MARGIN, so ordinary prompts sit far from the boundary rather than just on its safe side.
MARGIN = 2.0
MARGIN_WEIGHT = 0.2


def fit_margin(
    vectors: Any,
    labels: list[str],
    margin: float = MARGIN,
    weight: float = MARGIN_WEIGHT,
    decay: float = 1e-4,
    steps: int = 300,
    hidden: int = 0,
) -> EmbeddingClassifier:
    """A class-balanced softmax head over `vectors` (linear, or with a `hidden`-unit ReLU layer), trained with the
    benign margin (full batch, Adam)."""
    import torch

    classes = sorted(set(labels))
    y = torch.tensor([classes.index(lab) for lab in labels])
    x = torch.tensor(np.asarray(vectors, dtype=np.float32))
    counts = torch.bincount(y, minlength=len(classes)).float()
    class_weight = counts.sum() / (len(classes) * counts.clamp(min=1))
    benign = classes.index("benign")
    harmful = torch.tensor([j for j in range(len(classes)) if j != benign])
    rows = torch.nonzero(y == benign).flatten()
    g = torch.Generator().manual_seed(0)
    width = hidden or x.shape[1]
    w = (torch.randn(width, len(classes), generator=g) * 0.01).requires_grad_()
    b = torch.zeros(len(classes), requires_grad=True)
    params = [w, b]
    if hidden:
        w1 = (torch.randn(x.shape[1], hidden, generator=g) * (2 / x.shape[1]) ** 0.5).requires_grad_()
        b1 = torch.zeros(hidden, requires_grad=True)
        params += [w1, b1]
    opt = torch.optim.Adam(params, lr=0.05 if not hidden else 0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few thousand rows by 384: threads cost more than they give
    try:
        for _ in range(steps):
            opt.zero_grad()
            h = torch.relu(x @ w1 + b1) if hidden else x
            logits = h @ w + b
            loss = torch.nn.functional.cross_entropy(logits, y, weight=class_weight)
            if weight and len(rows):
                mine = logits.index_select(0, rows)
                odds = torch.logsumexp(mine.index_select(1, harmful), dim=1) - mine[:, benign]
                loss = loss + weight * torch.relu(odds + margin).pow(2).mean()
            loss = loss + decay * w.pow(2).sum()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return EmbeddingClassifier(
        labels=classes,
        coef=w.detach().numpy().astype(np.float32),
        intercept=b.detach().numpy().astype(np.float32),
        hidden=w1.detach().numpy().astype(np.float32) if hidden else None,
        hidden_bias=b1.detach().numpy().astype(np.float32) if hidden else None,
    )


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.moderation_loso import VectorCache, corpus, thresholds_of

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--margin", type=float, default=MARGIN, help="benign log-odds of harm pushed below -margin")
    ap.add_argument("--margin-weight", type=float, default=MARGIN_WEIGHT, help="0: plain cross-entropy")
    args = ap.parse_args(argv)
    console = Console()
    rows = training_rows()
    emb = embedder()
    cache = VectorCache(emb.embed, f"{emb.name}/{emb.backend}")
    t0 = time.perf_counter()
    data = corpus(rows, cache, lambda text: windows(text, most=TRAIN_PARTS))
    embed_s = time.perf_counter() - t0

    def train(vectors: Any, labels: list[str]) -> EmbeddingClassifier:
        return fit_margin(vectors, labels, args.margin, args.margin_weight)

    everything = np.ones(len(rows), dtype=bool)
    threshold, short = thresholds_of(train, data, everything)
    final = train(*data.of(everything))
    final.threshold, final.short_threshold = threshold, short
    sources = Counter(r["source"] for r in rows)
    final.meta = {
        "trained_on": {"rows": len(rows), "parts": len(data.windows), "sources": dict(sorted(sources.items()))},
        "embedder": f"{emb.name}/{emb.backend}",
        "recipe": {"head": "linear softmax", "margin": args.margin, "margin_weight": args.margin_weight},
        "operating_points": {"threshold": round(threshold, 4), "short_threshold": round(short, 4)},
        "embed_seconds": round(embed_s, 1),
    }
    final.save(args.out)
    table = Table(title=f"trained on {len(rows)} texts ({len(data.windows)} parts) from {len(sources)} sources")
    for col in ("source", "texts"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source, n in sorted(sources.items()):
        table.add_row(source, str(n))
    console.print(table)
    console.print(
        f"operating points, chosen with the training sources held out in {4} groups: probability of harm ≥ "
        f"{threshold:.3f}; a short message's injection ≥ {short:.3f}; wrote {args.out}"
    )
    return final.meta


if __name__ == "__main__":
    main()
