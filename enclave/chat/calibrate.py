"""Fit the router's thresholds on a labelled set of queries, and say how well they route.

A labelled row is ``{"query": ..., "route": "rag"|"adapter"|"base", "adapter"?: name}``. Each query's
signals are gathered once, exactly as the chat pipeline gathers them (hybrid search of the collection,
cosine to the nearest training question of each adapter, the small-talk test); then every combination of thresholds on
a grid is scored at once with numpy, and the best one is taken from the middle of its plateau rather than
its edge, so that one more query does not flip it. Accuracy is also cross-validated (fit on four fifths,
score the fifth), which is the figure to trust: the in-sample accuracy of fitted thresholds flatters them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enclave.chat.router import RetrievalSignals, SignalRouter, domain_scores, is_small_talk
from enclave.chat.schema import ChatRequest
from enclave.core.errors import InvalidRequest
from enclave.core.protocols import Principal, Retriever
from enclave.core.settings import RouterSettings

DATA = Path(__file__).parent / "router_data"
SHIPPED_LABELS = DATA / "labels.jsonl"
SHIPPED_DOMAINS = DATA / "domains.json"
ROUTES = ("rag", "adapter", "base")

# The grid searched. Cosine similarities of MiniLM live in [-1, 1]; useful thresholds in [0.1, 0.9].
RAG_GRID = np.round(np.arange(0.10, 0.90, 0.01), 2)
MARGIN_GRID = np.round(np.arange(0.0, 0.11, 0.01), 2)
ADAPTER_GRID = np.round(np.arange(0.10, 0.95, 0.01), 2)


@dataclass(frozen=True)
class Labelled:
    query: str
    route: str
    adapter: str | None = None

    @property
    def target(self) -> tuple[str, str | None]:
        return (self.route, self.adapter)


@dataclass
class Sample:
    label: Labelled
    signals: RetrievalSignals

    @property
    def best_adapter(self) -> tuple[str | None, float]:
        if not self.signals.adapter_scores:
            return None, -1.0
        name, sim = max(self.signals.adapter_scores.items(), key=lambda kv: kv[1])
        return name, sim


@dataclass
class Report:
    thresholds: dict[str, float]
    accuracy: float
    confusion: dict[str, dict[str, int]]
    misrouted: list[dict[str, Any]] = field(default_factory=list)


def load_labels(path: Path) -> list[Labelled]:
    """Read and check a labelled set; a bad line is named, not skipped."""
    if not path.is_file():
        raise InvalidRequest(f"labels file not found: {path}")
    rows: list[Labelled] = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}:{no}: not JSON ({exc.msg})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("query"), str) or not raw["query"].strip():
            raise InvalidRequest(f'{path}:{no}: expected {{"query": "...", "route": "rag|adapter|base"}}')
        route = raw.get("route")
        if route not in ROUTES:
            raise InvalidRequest(f"{path}:{no}: route must be one of {', '.join(ROUTES)}, not {route!r}")
        adapter = raw.get("adapter")
        if route == "adapter" and not adapter:
            raise InvalidRequest(f"{path}:{no}: an adapter row names its adapter")
        rows.append(Labelled(raw["query"], route, adapter if route == "adapter" else None))
    if not rows:
        raise InvalidRequest(f"{path}: no labelled queries")
    return rows


def domain_vectors(questions: dict[str, list[str]], embed: Callable[[list[str]], list[list[float]]]) -> dict[str, Any]:
    """Each adapter's training questions embedded, as `enclave tune train` records them for a real adapter."""
    return {name: np.asarray(embed(qs), dtype=np.float32) for name, qs in questions.items()}


def load_domains(path: Path) -> dict[str, list[str]]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def gather(
    labels: Sequence[Labelled],
    *,
    retriever: Retriever | None,
    collection: str | None,
    embed: Callable[[list[str]], list[list[float]]],
    domains: dict[str, Any],
    k: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """The signals the pipeline would see for each labelled query under `route: auto`."""
    principal = Principal(name="calibration")
    qvecs = embed([lab.query for lab in labels]) if domains else None
    samples = []
    for i, lab in enumerate(labels):
        sig = RetrievalSignals(small_talk=is_small_talk(lab.query))
        if not sig.small_talk:
            if qvecs is not None:
                sig.adapter_scores = domain_scores(qvecs[i], domains)
            if retriever is not None and collection:
                sig.collection = collection
                sig.chunks = retriever.search(lab.query, collection, principal, k)
        samples.append(Sample(lab, sig))
        if progress:
            progress(i + 1, len(labels))
    return samples


def evaluate(settings: RouterSettings, samples: Sequence[Sample]) -> Report:
    """Route every sample with these thresholds, as the running server would."""
    router = SignalRouter(settings)
    auto = ChatRequest(message="-")
    confusion = {a: dict.fromkeys(ROUTES, 0) for a in ROUTES}
    misrouted = []
    right = 0
    for s in samples:
        r = router.decide(auto, s.signals, list(s.signals.adapter_scores))
        confusion[s.label.route][r.kind] += 1
        if (r.kind, r.adapter) == s.label.target:
            right += 1
        else:
            misrouted.append(
                {
                    "query": s.label.query,
                    "expected": s.label.route + (f":{s.label.adapter}" if s.label.adapter else ""),
                    "got": r.kind + (f":{r.adapter}" if r.adapter else ""),
                    "reason": r.reason,
                }
            )
    return Report(_thresholds(settings), right / max(len(samples), 1), confusion, misrouted)


def _thresholds(s: RouterSettings) -> dict[str, float]:
    return {
        "rag_min_score": s.rag_min_score,
        "rag_min_margin": s.rag_min_margin,
        "adapter_min_similarity": s.adapter_min_similarity,
    }


def _correct_grid(samples: Sequence[Sample]) -> np.ndarray:
    """Correct decisions per (rag threshold, margin, adapter threshold, sample), the router's rules in numpy."""
    top = np.array([s.signals.top if s.signals.chunks else -np.inf for s in samples])
    margin = np.array([s.signals.margin for s in samples])
    best = [s.best_adapter for s in samples]
    asim = np.array([sim for _, sim in best])
    talk = np.array([s.signals.small_talk for s in samples])
    want_rag = np.array([s.label.route == "rag" for s in samples])
    want_base = np.array([s.label.route == "base" for s in samples])
    # Routing to the adapter is right only when it is the labelled adapter.
    adapter_right = np.array(
        [s.label.route == "adapter" and name == s.label.adapter for s, (name, _) in zip(samples, best, strict=True)]
    )
    rag = (
        (~talk)[None, None, :]
        & (top[None, None, :] >= RAG_GRID[:, None, None])
        & (margin[None, None, :] >= MARGIN_GRID[None, :, None])
    )  # (R, M, N)
    adapter = (~talk)[None, :] & (asim[None, :] >= ADAPTER_GRID[:, None])  # (A, N)
    rag4 = rag[:, :, None, :]
    adapter4 = adapter[None, None, :, :]
    correct = np.where(rag4, want_rag, np.where(adapter4, adapter_right, want_base))
    return np.asarray(correct)


def fit(samples: Sequence[Sample], like: RouterSettings | None = None) -> RouterSettings:
    """The thresholds with the best accuracy, from the middle of the best plateau."""
    if not samples:
        raise InvalidRequest("nothing to fit on")
    acc = _correct_grid(samples).mean(axis=-1)  # (R, M, A)
    # Among the equally good points take the one deepest inside their region: erode the region one grid
    # step at a time (the grid's edges do not erode it) and keep the last points standing.
    region = acc >= acc.max()
    while True:
        padded = np.pad(region, 1, mode="edge")
        inner = np.ones_like(region)
        for dr in range(3):
            for dm in range(3):
                for da in range(3):
                    inner &= padded[dr : dr + acc.shape[0], dm : dm + acc.shape[1], da : da + acc.shape[2]]
        if not inner.any() or (inner == region).all():
            break
        region = inner
    points = np.argwhere(region)
    centre = points.mean(axis=0)
    r, m, a = points[int(np.argmin(((points - centre) ** 2).sum(axis=1)))]
    base = like or RouterSettings()
    return base.model_copy(
        update={
            "rag_min_score": float(RAG_GRID[r]),
            "rag_min_margin": float(MARGIN_GRID[m]),
            "adapter_min_similarity": float(ADAPTER_GRID[a]),
        }
    )


def cross_validate(samples: Sequence[Sample], folds: int = 5, seed: int = 0) -> float:
    """Accuracy on queries the thresholds were not fitted on."""
    idx = list(range(len(samples)))
    random.Random(seed).shuffle(idx)
    right = 0
    for f in range(folds):
        test = set(idx[f::folds])
        train = [samples[i] for i in idx if i not in test]
        fitted = fit(train)
        right += round(evaluate(fitted, [samples[i] for i in test]).accuracy * len(test))
    return right / max(len(samples), 1)
