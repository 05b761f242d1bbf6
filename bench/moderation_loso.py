"""Leave-one-source-out evaluation of the input moderation: for each source of labelled text, a classifier trained
on every other source — its operating point chosen on those sources alone — judges that source's texts as the
served moderator does (its de-obfuscated readings, in parts, with the lexical checks beside it).

A random split of the same data scores near the ceiling and says little: a classifier learns its sources' style.
Only a source it never saw tells how it meets the next jailbreak family or the next team's ordinary questions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from enclave.core.settings import ModerationSettings
from enclave.core.stats import wilson
from enclave.moderation import FastModerator
from enclave.moderation.classifier import HarmClassifier
from enclave.moderation.embedding import EmbeddingClassifier, parts
from enclave.moderation.moderator import SHORT_WORDS
from enclave.moderation.normalize import readings

CACHE = Path.home() / ".cache" / "enclave" / "moderation-vectors"
# Benign texts a fold's operating point may flag, over its training sources held out in turn (see threshold_of).
BENIGN_FPR = 0.02
SHORT_FPR = 0.005  # short benign texts are chat messages: the product's own first questions among them
INNER_FOLDS = 4

Trainer = Callable[[Any, list[str]], EmbeddingClassifier]


class VectorCache:
    """The embedder's vectors of texts, kept on disk by their hash: every fold reads the same parts."""

    def __init__(self, embed: Callable[[list[str]], list[list[float]]], name: str) -> None:
        self.embed = embed
        self.path = CACHE / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.npz"
        self.known: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path) as z:
                self.known = dict(zip((str(k) for k in z["keys"]), z["vectors"], strict=True))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()

    def fill(self, texts: Sequence[str], label: str) -> None:
        todo = list(dict.fromkeys(t for t in texts if self.key(t) not in self.known))
        if not todo:
            return
        with Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        ) as bar:
            task = bar.add_task(label, total=len(todo))
            for start in range(0, len(todo), 64):
                batch = todo[start : start + 64]
                for t, v in zip(batch, self.embed(batch), strict=True):
                    self.known[self.key(t)] = np.asarray(v, dtype=np.float32)
                bar.advance(task, len(batch))
        CACHE.mkdir(parents=True, exist_ok=True)
        keys = list(self.known)
        np.savez(self.path, keys=np.array(keys), vectors=np.stack([self.known[k] for k in keys]))

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.fill(texts, "embedding")
        return [self.known[self.key(t)] for t in texts]  # type: ignore[misc]

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.known[self.key(t)] for t in texts])


def served_views(text: str) -> list[str]:
    """What the input moderator embeds of a message (FastModerator.views)."""
    return [p for reading in readings(text) for p in parts(reading)]


@dataclass
class Corpus:
    """Every labelled text, the training windows of each (as the trainer cuts them), and their vectors."""

    rows: list[dict[str, str]]
    windows: list[str]
    owner: np.ndarray  # row of each window
    vectors: np.ndarray  # of each window

    @property
    def sources(self) -> list[str]:
        return sorted({r["source"] for r in self.rows})

    def of(self, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The windows' vectors and labels of `rows` (a boolean mask over rows)."""
        mask = rows[self.owner]
        return self.vectors[mask], [self.rows[int(i)]["label"] for i in self.owner[mask]]

    def scores(self, clf: EmbeddingClassifier, rows: np.ndarray) -> np.ndarray:
        """Each of `rows`' probability of harm (the highest over its windows)."""
        idx = np.flatnonzero(rows)
        p = clf.probabilities(self.vectors[rows[self.owner]])
        harmful = 1.0 - p[:, clf.benign]
        which = self.owner[rows[self.owner]]
        out = np.zeros(len(self.rows))
        np.maximum.at(out, which, harmful)
        return out[idx]


def corpus(rows: list[dict[str, str]], cache: VectorCache, split: Callable[[str], list[str]]) -> Corpus:
    windows: list[str] = []
    owner: list[int] = []
    for i, r in enumerate(rows):
        for w in split(r["text"]):
            windows.append(w)
            owner.append(i)
    cache.fill(windows, "embedding training windows")
    return Corpus(rows, windows, np.asarray(owner), cache.matrix(windows))


def thresholds_of(
    train: Trainer, data: Corpus, rows: np.ndarray, fpr: float = BENIGN_FPR, short_fpr: float = SHORT_FPR
) -> tuple[float, float]:
    """The operating points for a classifier trained on `rows`: their sources split into INNER_FOLDS groups, each
    scored by a classifier trained on the others; the lowest probability of harm that flags at most `fpr` of the
    benign texts so held out (never below 0.5), and at most `short_fpr` of the short ones (chat messages of under
    SHORT_WORDS words, never below the first). Chosen by source, as it is judged."""
    sources = sorted({data.rows[int(i)]["source"] for i in np.flatnonzero(rows)})
    group = {s: k % INNER_FOLDS for k, s in enumerate(sorted(sources, key=lambda s: hashlib.sha1(s.encode()).digest()))}
    of_row = np.asarray([group.get(r["source"], -1) for r in data.rows])
    benign = np.asarray([r["label"] == "benign" for r in data.rows])
    short = np.asarray([len(r["text"].split()) < SHORT_WORDS for r in data.rows])
    scores: list[np.ndarray] = []
    short_scores: list[np.ndarray] = []
    for k in range(INNER_FOLDS):
        test_rows = rows & (of_row == k) & benign
        if not test_rows.any():
            continue
        clf = train(*data.of(rows & (of_row != k)))
        held = data.scores(clf, test_rows)
        scores.append(held)
        short_scores.append(held[short[test_rows]])
    general = max(0.5, float(np.quantile(np.concatenate(scores), 1.0 - fpr)))
    return general, max(general, float(np.quantile(np.concatenate(short_scores), 1.0 - short_fpr)))


def leave_one_out(
    train: Trainer,
    data: Corpus,
    cache: VectorCache,
    settings: ModerationSettings | None = None,
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per source: blocked as served and by the embedding classifier alone, each text's probability of harm, and
    the fold's operating point."""
    settings = settings or ModerationSettings()
    lexical = HarmClassifier()
    out: dict[str, Any] = {}
    todo = list(sources or data.sources)
    with Progress(
        TextColumn("[bold]leave one source out"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task("sources", total=len(todo))
        for source in todo:
            held = np.asarray([r["source"] == source for r in data.rows])
            clf = train(*data.of(~held))
            clf.threshold, clf.short_threshold = thresholds_of(train, data, ~held)
            mod = FastModerator(settings, classifier=lexical, embed=cache, embedding=clf)
            texts = [r["text"] for r in data.rows if r["source"] == source]
            cache.fill([v for t in texts for v in served_views(t)], f"embedding {source}")
            verdicts = mod.verdicts(texts, "input")
            labels = [r["label"] for r in data.rows if r["source"] == source]
            out[source] = {
                "labels": labels,
                "served": [v.action == "block" for v in verdicts],
                "categories": [v.categories for v in verdicts],
                "score": [float(x) for x in data.scores(clf, held)],
                "threshold": clf.threshold,
                "short_threshold": clf.short_threshold,
            }
            bar.advance(task)
    return out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per source and pooled: attacks blocked and benign blocked (served; embedding alone), with Wilson intervals."""

    def share(flags: list[bool]) -> dict[str, Any]:
        k, n = sum(flags), len(flags)
        return {"n": n, "blocked": k, "share": k / n if n else 0.0, "wilson": wilson(k, n)}

    per: dict[str, Any] = {}
    pooled: dict[str, dict[str, list[bool]]] = {"attacks": {"served": [], "alone": []}, "benign": {"served": []}}
    pooled["benign"]["alone"] = []
    for source, r in result.items():
        row: dict[str, Any] = {"threshold": r["threshold"]}
        for kind, want in (("attacks", lambda lab: lab != "benign"), ("benign", lambda lab: lab == "benign")):
            idx = [i for i, lab in enumerate(r["labels"]) if want(lab)]
            if not idx:
                continue
            served = [r["served"][i] for i in idx]
            alone = [r["score"][i] >= r["threshold"] for i in idx]
            row[kind] = {"served": share(served), "alone": share(alone)}
            pooled[kind]["served"] += served
            pooled[kind]["alone"] += alone
        per[source] = row
    return {
        "sources": per,
        "pooled": {kind: {k: share(v) for k, v in d.items()} for kind, d in pooled.items()},
    }
