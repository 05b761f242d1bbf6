"""Harm categories from sentence embeddings: a softmax head over the MiniLM vectors Enclave already computes, trained
offline on public labelled data with a benign margin (`python -m bench.moderation_train`) and shipped as weights.

A message is read in parts (MiniLM reads 256 tokens), so a harmful request at the end of a long jailbreak counts
as much as one at its start.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enclave.moderation.sentences import sentences

DATA = Path(__file__).parent / "data"
WEIGHTS = DATA / "embedding_classifier.npz"

# A text of up to this many words is read whole; a longer one in runs of sentences of about half as many: a
# request of a dozen words at the end of a long message must weigh in its part, not drown in its padding.
PART_WORDS = 48
# Parts read per message at most: an 8,000-character message is ~50 parts; beyond, the first and last ones.
MAX_PARTS = 48

Embed = Callable[[list[str]], list[list[float]]]


def parts(text: str, words: int = PART_WORDS, most: int = MAX_PARTS) -> list[str]:
    """`text` as the classifier reads it: whole when it has at most `words` words; else in runs of whole sentences
    of about `words` / 2 words each (a sentence longer than that in windows of words), so that a request of a
    dozen words after pages of padding is a part of its own rather than a quarter of one."""
    if len(text.split()) <= words:
        return [text]
    size = max(8, words // 2)
    pieces: list[str] = []
    for a, b in sentences(text):
        tokens = text[a:b].split()
        pieces += [" ".join(tokens[i : i + size]) for i in range(0, len(tokens), size)]
    out: list[str] = []
    run: list[str] = []
    for piece in pieces:
        if run and len(" ".join([*run, piece]).split()) > size:
            out.append(" ".join(run))
            run = []
        run.append(piece)
    if run:
        out.append(" ".join(run))
    if len(out) > most:  # keep both ends: an attack sits before or after its padding
        out = out[: most // 2] + out[-(most - most // 2) :]
    return out


@dataclass
class EmbeddingClassifier:
    """Per-label probabilities for embedded texts; `threshold` is the operating point chosen when it was trained."""

    labels: list[str]
    coef: Any  # (dimension, labels), float32
    intercept: Any  # (labels,), float32
    threshold: float = 0.5
    meta: dict[str, Any] = field(default_factory=dict)
    # A short chat message is an injection by these embeddings alone only at this probability or more (chosen on
    # the short benign texts of the training sources); None: never (the lexical checks alone judge it).
    short_threshold: float | None = None
    # An optional hidden layer before the softmax: (dimension, hidden) and (hidden,), ReLU.
    hidden: Any = None
    hidden_bias: Any = None

    @property
    def benign(self) -> int:
        return self.labels.index("benign")

    def probabilities(self, vectors: Any) -> Any:
        x = np.asarray(vectors, dtype=np.float32)
        if self.hidden is not None:
            x = np.maximum(x @ self.hidden + self.hidden_bias, 0.0)
        logits = x @ self.coef + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def harm(self, vectors: Any, ignore: Sequence[str] = ()) -> tuple[float, str]:
        """The highest probability of harm over `vectors` (parts and readings of one text), and its category;
        the categories in `ignore` count as no harm."""
        p = self.probabilities(vectors)
        left = [j for j, lab in enumerate(self.labels) if lab != "benign" and lab not in ignore]
        harmful = p[:, left].sum(axis=1)
        i = int(np.argmax(harmful))
        return float(harmful[i]), self.labels[left[int(np.argmax(p[i, left]))]]

    def save(self, path: Path = WEIGHTS) -> None:
        np.savez_compressed(
            path,
            coef=self.coef.astype(np.float32),
            intercept=self.intercept.astype(np.float32),
            labels=np.array(self.labels),
            threshold=np.array(self.threshold, dtype=np.float64),
            short_threshold=np.array(np.nan if self.short_threshold is None else self.short_threshold),
            **({} if self.hidden is None else {"hidden": self.hidden, "hidden_bias": self.hidden_bias}),
            meta=np.array(json.dumps(self.meta)),
        )

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> EmbeddingClassifier | None:
        """The shipped weights, or None where they are missing (the lexical classifier then works alone)."""
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            short = float(z["short_threshold"]) if "short_threshold" in z.files else float("nan")
            return cls(
                labels=[str(x) for x in z["labels"]],
                coef=z["coef"].astype(np.float32),
                intercept=z["intercept"].astype(np.float32),
                threshold=float(z["threshold"]),
                meta=json.loads(str(z["meta"])),
                short_threshold=None if np.isnan(short) else short,
                hidden=z["hidden"].astype(np.float32) if "hidden" in z.files else None,
                hidden_bias=z["hidden_bias"].astype(np.float32) if "hidden" in z.files else None,
            )
