"""Fit the answerability decision (enclave/chat/answerability.py); its operating curve: `python -m bench.answerability`.

Calibration questions come from the two corpora of bench/answers (the Python library reference, the man pages) but
never from the questions bench/answers reports: `bench.answers.plan` sets them apart, and every second one has its
page removed from the `<corpus>-cal` collection. For each question the real retriever returns the candidates the
chat pipeline would see; their features are labelled answerable (page present) or not. A logistic regression is
scored leave-one-corpus-out (fit on one corpus, tested on the other) and 5-fold; the thresholds are chosen on the
cross-validated probabilities: `decline_below` keeps false declines of answerable questions at most
`--max-false-declines`, `caveat_below` sends to the held, checked path every question below which at most
`--max-unanswerable-answered` of the unanswerable ones would be answered unchecked. The model is then fitted on all
calibration questions and written to enclave/chat/answerability.json; a table, JSON and a PNG of the curves go to
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from bench.answers import PYDOCS, ROOT, Runner, prepare
from bench.machine import cpu_model
from enclave.chat.answerability import FEATURES, MODEL_FILE, Model, decide, features
from enclave.core.settings import Settings, offline_environment

OUT = ROOT / "bench" / "results" / "answerability.json"
# The shipped model's features. Also computed, and left out: `absent` and `key_terms` (their coefficients came out
# against their own single-feature direction, a sign of collinearity) and `lead_cover` (strong on the man pages,
# noise on the library reference: with it the model scored worse on the corpus it was not fitted on).
SHIPPED = ("top_dense", "margin", "head_cover", "text_cover", "top_text_cover", "agree")


def gather(runner: Runner, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from enclave.api.auth import ANONYMOUS

    depth = max(runner.state.settings.rag.top_k * 2, 8)  # as the pipeline searches
    out = []
    with Progress(TextColumn("[bold]features"), BarColumn(), MofNCompleteColumn()) as bar:
        task = bar.add_task("features", total=len(rows))
        for q in rows:
            chunks = runner.kb.search(q["question"], q["collection"], ANONYMOUS, depth)
            t0 = time.perf_counter()
            feats = features(q["question"], chunks)
            ms = 1000 * (time.perf_counter() - t0)
            out.append({**q, "features": feats, "feature_ms": ms, "chunks": chunks})
            bar.advance(task)
    return out


USED: tuple[str, ...] = FEATURES  # the features the fitted model uses (--features)
C = 1.0  # inverse regularisation strength of the logistic model (--c)


def matrix(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[r["features"][f] for f in USED] for r in rows], dtype=np.float64)
    y = np.array([bool(r["answerable"]) for r in rows])
    return x, y


def fit(x: np.ndarray, y: np.ndarray) -> Model:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=C, max_iter=2000).fit((x - mean) / scale, y)
    return Model(USED, tuple(mean), tuple(scale), tuple(lr.coef_[0]), float(lr.intercept_[0]), 0.0, 0.0)


def predict(model: Model, x: np.ndarray) -> np.ndarray:
    return np.array([model.probability(dict(zip(USED, row, strict=True))) for row in x])


def cross_validated(rows: list[dict[str, Any]], folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities: 5-fold (seeded), and leave-one-corpus-out."""
    x, y = matrix(rows)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))
    kfold = np.zeros(len(rows))
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        kfold[test] = predict(fit(x[train], y[train]), x[test])
    corpus = np.array([r["corpus"] for r in rows])
    loco = np.zeros(len(rows))
    for name in set(corpus):
        test, train = corpus == name, corpus != name
        loco[test] = predict(fit(x[train], y[train]), x[test])
    return kfold, loco


def auc(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y], p[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    )


def thresholds(p: np.ndarray, y: np.ndarray, max_false_declines: float, max_answered: float) -> tuple[float, float]:
    """decline_below: the highest threshold whose false declines (answerable below it) stay within the limit;
    caveat_below: the lowest one at which at most `max_answered` of the unanswerable are at or above it."""
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 2)
    fd = np.array([(p[y] < t).mean() for t in grid])
    answered = np.array([(p[~y] >= t).mean() for t in grid])
    low = float(grid[fd <= max_false_declines].max())
    high = float(grid[answered <= max_answered].min()) if (answered <= max_answered).any() else 1.0
    return low, max(low, high)


def curve(p: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, false declines of answerable, unanswerable declined) over thresholds."""
    return [(float(t), float((p[y] < t).mean()), float((p[~y] < t).mean())) for t in np.linspace(0, 1, 101)]


def plot(
    curves: dict[str, list[tuple[float, float, float]]], marks: dict[str, tuple[float, float]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for label, pts in curves.items():
        ax.plot([a for _, a, _ in pts], [b for _, _, b in pts], label=label)
    for label, (a, b) in marks.items():
        ax.plot([a], [b], "o", label=label)
    ax.set_xlabel("answerable questions declined (false declines)")
    ax.set_ylabel("unanswerable questions declined before generation")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axvline(0.05, color="#999", ls=":", lw=1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Answerability: operating curve (page removed vs present)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench-answers", help="bench data dir (shared)")
    ap.add_argument("--per-corpus", type=int, default=60)
    ap.add_argument("--near", type=int, default=20)
    ap.add_argument("--unanswerable", type=int, default=30)
    ap.add_argument("--max-false-declines", type=float, default=0.03)
    ap.add_argument("--max-unanswerable-answered", type=float, default=0.10)
    ap.add_argument("--write", action="store_true", help=f"write the fitted model to {MODEL_FILE}")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--features",
        default=",".join(SHIPPED),
        help=f"the features the model uses, comma-separated (of: {', '.join(FEATURES)})",
    )
    ap.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength of the logistic model")
    ap.add_argument("--rows", type=Path, help="refit from the features an earlier run saved (no knowledge base)")
    args = ap.parse_args(argv)
    global USED, C
    USED, C = tuple(f for f in args.features.split(",") if f), args.c
    if set(USED) - set(FEATURES):
        raise SystemExit(f"unknown features: {sorted(set(USED) - set(FEATURES))}")
    runner = None
    if args.rows:
        rows = json.loads(args.rows.read_text())["rows"]
    else:
        if not PYDOCS.is_dir():
            raise SystemExit(f"{PYDOCS} not found: install Debian's python3.11-doc (make pydocs)")
        offline_environment()
        os.environ["ENCLAVE_DATA_DIR"] = str(args.data)
        settings = Settings(data_dir=str(args.data))
        settings.rag.ingest_samples = False
        settings.models.base = "smollm2-135m-instruct"  # no generation here: the smallest model loads fastest
        runner = Runner(settings)
        import asyncio

        asyncio.run(runner.start())
        planned = prepare(runner, Console(), args.per_corpus, args.near, args.unanswerable)
        rows = gather(runner, planned["calibration"])
    x, y = matrix(rows)
    kfold, loco = cross_validated(rows)
    low, high = thresholds(kfold, y, args.max_false_declines, args.max_unanswerable_answered)
    full = fit(x, y)
    model = Model(
        full.names,
        full.mean,
        full.scale,
        full.coef,
        full.intercept,
        low,
        high,
        {
            "fitted": time.strftime("%Y-%m-%d"),
            "by": "python -m bench.answerability --write",
            "questions": len(rows),
            "answerable": int(y.sum()),
            "auc_5fold": round(auc(kfold, y), 3),
            "auc_leave_one_corpus_out": round(auc(loco, y), 3),
        },
    )
    single = {f: auc(x[:, i], y) for i, f in enumerate(USED)}

    # The outcome shares of the cross-validated probabilities at the chosen thresholds.
    def shares(p: np.ndarray) -> dict[str, float]:
        return {
            "answerable_declined": round(float((p[y] < low).mean()), 3),
            "answerable_caveat": round(float(((p[y] >= low) & (p[y] < high)).mean()), 3),
            "unanswerable_declined": round(float((p[~y] < low).mean()), 3),
            "unanswerable_caveat": round(float(((p[~y] >= low) & (p[~y] < high)).mean()), 3),
            "unanswerable_answered": round(float((p[~y] >= high).mean()), 3),
        }

    timing = [r["feature_ms"] for r in rows if "feature_ms" in r] or [0.0]
    decide_ms = []
    for r in [r for r in rows if "chunks" in r][:200]:
        t0 = time.perf_counter()
        decide(r["question"], r["chunks"], model)
        decide_ms.append(1000 * (time.perf_counter() - t0))
    decide_ms = decide_ms or [0.0]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "model": model.to_json(),
        "single_feature_auc": {k: round(v, 3) for k, v in single.items()},
        "at_thresholds_5fold": shares(kfold),
        "at_thresholds_leave_one_corpus_out": shares(loco),
        "decide_ms": {
            "p50": round(statistics.median(decide_ms), 3),
            "p95": round(float(np.percentile(decide_ms, 95)), 3),
            "features_p95": round(float(np.percentile(timing, 95)), 3),
        },
        "curve_5fold": curve(kfold, y),
        "curve_leave_one_corpus_out": curve(loco, y),
        "curve_top_dense_only": curve(np.array([r["features"]["top_dense"] for r in rows]), y),
        "rows": [
            {"id": r["id"], "corpus": r["corpus"], "answerable": r["answerable"], "features": r["features"]}
            for r in rows
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(
        {
            "logistic, 5-fold": result["curve_5fold"],
            "logistic, leave one corpus out": result["curve_leave_one_corpus_out"],
            "best dense score alone": result["curve_top_dense_only"],
        },
        {
            f"decline below {low:.2f} (5-fold)": (
                shares(kfold)["answerable_declined"],
                shares(kfold)["unanswerable_declined"],
            )
        },
        args.out.with_suffix(".png"),
    )
    if args.write:
        MODEL_FILE.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    table = Table(title=f"answerability: {len(rows)} calibration questions ({int(y.sum())} answerable) · {cpu_model()}")
    table.add_column("what")
    table.add_column("value")
    table.add_row(
        "AUC 5-fold / leave one corpus out", f"{model.meta['auc_5fold']} / {model.meta['auc_leave_one_corpus_out']}"
    )
    for f, v in single.items():
        table.add_row(f"AUC of {f} alone", f"{v:.3f}")
    table.add_row("thresholds: decline below / caveat below", f"{low:.2f} / {high:.2f}")
    for k, v in shares(kfold).items():
        table.add_row(f"5-fold: {k}", f"{v:.3f}")
    for k, v in shares(loco).items():
        table.add_row(f"leave one corpus out: {k}", f"{v:.3f}")
    table.add_row("decide() ms p50 / p95", f"{result['decide_ms']['p50']} / {result['decide_ms']['p95']}")
    Console().print(table)
    if runner is not None:
        runner.state.close()
    return result


if __name__ == "__main__":
    main()
