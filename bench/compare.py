"""Base models side by side on the answer benchmark: `enclave models compare` (or `python -m bench.compare`).

Each model runs `bench.answers` in a process of its own (the same questions, the same knowledge base, its own
prompt shape from the catalogue), so its memory is its own: the peak RSS of that process is the pipeline's
(embedder, Chroma, engine and weights) while it answers. Prints one table, writes JSON (every model's
per-answer results beside it) and a PNG: shares with their 95% intervals, TTFT and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "compare.json"
# What the table and the plot show, as (label, corpus key, metric) read from bench.answers' summary.
SHARES = (
    ("right entity", "names_entity"),
    ("cites its page", "cites_page"),
    ("degenerate", "degenerate"),
)


def run_one(model: str, args: argparse.Namespace, folder: Path, console: Console) -> dict[str, Any]:
    """bench.answers for one model in a child process; its result with the child's peak RSS."""
    out = folder / f"{model}.json"
    cmd = [sys.executable, "-m", "bench.answers", "--label", model, "--out", str(out)]
    cmd += ["--per-corpus", str(args.per_corpus), "--unanswerable", str(args.unanswerable)]
    cmd += ["--max-tokens", str(args.max_tokens)]
    if args.questions:
        cmd += ["--questions", str(args.questions)]
    if args.data:
        cmd += ["--data", str(args.data)]
    env = {**os.environ, "ENCLAVE_MODELS__BASE": model}
    console.print(f"[bold]{model}[/bold]: {' '.join(cmd[1:])}")
    started = time.monotonic()
    child = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"bench.answers failed for {model} (exit {child.returncode})")
    result: dict[str, Any] = json.loads(out.read_text())
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)  # Linux reports KiB
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def rows_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and corpus: the shares with intervals, then the model's speed and memory."""
    rows = []
    for r in results:
        summary = r["summary"]
        for corpus, s in summary.items():
            if corpus in ("speed", "unanswerable"):
                continue
            rows.append({"model": r["label"], "corpus": corpus, "questions": s["questions"],
                         **{key: s[key] for _, key in SHARES}})
        if "unanswerable" in summary:
            u = summary["unanswerable"]
            rows.append({"model": r["label"], "corpus": "unanswerable", "questions": u["questions"],
                         "declined": u["declined"], "degenerate": u["degenerate"]})
    return rows


def cell(m: dict[str, Any] | None) -> str:
    if not m or m.get("share") is None:
        return "–"
    return f"{m['share']:.2f} [{m['ci95'][0]:.2f}–{m['ci95'][1]:.2f}]"


def print_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"models compare · {result['machine']['cpu']} · {result['machine']['cores']} cores")
    for col in ("model", "corpus", "n", "right entity", "cites its page", "declined", "degenerate"):
        table.add_column(col)
    for row in result["rows"]:
        table.add_row(row["model"], row["corpus"], str(row["questions"]), cell(row.get("names_entity")),
                      cell(row.get("cites_page")), cell(row.get("declined")), cell(row.get("degenerate")))
    console.print(table)
    speed = Table(title="speed and memory")
    for col in ("model", "TTFT p50 ms", "TTFT p95 ms", "answer p50 ms", "answer p95 ms", "prompt tokens",
                "peak RSS MB"):
        speed.add_column(col)
    for m in result["models"]:
        sp = m["speed"]
        speed.add_row(m["name"], str(sp["ttft_ms_p50"]), str(sp["ttft_ms_p95"]), str(sp.get("answer_ms_p50")),
                      str(sp.get("answer_ms_p95")), str(sp["prompt_tokens_mean"]), str(m["peak_rss_mb"]))
    console.print(speed)


def plot(result: dict[str, Any], path: Path) -> None:
    """Grouped bars per corpus (a bar per model, 95% interval whiskers), and TTFT / tokens/s per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m["name"] for m in result["models"]]
    panels = [(label, key) for label, key in SHARES[:2]] + [("declined (unanswerable)", "declined")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.8))
    for ax, (label, key) in zip(axes, panels, strict=False):
        corpora = sorted({r["corpus"] for r in result["rows"] if r.get(key) and r[key].get("share") is not None})
        width = 0.8 / max(1, len(models))
        for i, name in enumerate(models):
            xs, ys, lo, hi = [], [], [], []
            for j, corpus in enumerate(corpora):
                m = next((r[key] for r in result["rows"] if r["model"] == name and r["corpus"] == corpus), None)
                if not m or m.get("share") is None:
                    continue
                xs.append(j + (i - (len(models) - 1) / 2) * width)
                ys.append(m["share"])
                lo.append(m["share"] - m["ci95"][0])
                hi.append(m["ci95"][1] - m["share"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
        ax.set_xticks(range(len(corpora)), corpora)
        ax.set_ylim(0, 1.05)
        ax.set_title(label)
    ax = axes[-1]
    ttft = [m["speed"]["ttft_ms_p50"] or 0 for m in result["models"]]
    bars = ax.bar(range(len(models)), [t / 1000 for t in ttft], color="#888")
    for bar, m in zip(bars, result["models"], strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{m['peak_rss_mb']} MB", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(range(len(models)), [n.split("-instruct")[0] for n in models], rotation=15, fontsize=8)
    ax.set_ylabel("TTFT p50 (s), bars")
    twin = ax.twinx()
    twin.plot(range(len(models)), [(m["speed"].get("answer_ms_p50") or 0) / 1000 for m in result["models"]], "o-",
              color="C3")
    twin.set_ylabel("whole answer p50 (s)", color="C3")
    ax.set_title("speed (bar labels: peak RSS)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"models compare — {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def rescore(out: Path, png: Path, console: Console) -> dict[str, Any]:
    """The summaries of an earlier comparison recomputed from its per-answer files (after a scoring change)."""
    from bench.answers import summarize

    result: dict[str, Any] = json.loads(out.read_text())
    runs = []
    for m in result["models"]:
        run: dict[str, Any] = json.loads(Path(m["answers"]).read_text())
        run["summary"] = summarize(run["answers"])
        Path(m["answers"]).write_text(json.dumps(run, indent=1))
        m["speed"] = run["summary"]["speed"]
        runs.append(run)
    result["rows"] = rows_of(runs)
    out.write_text(json.dumps(result, indent=1))
    plot(result, png)
    print_table(result, console)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from enclave.engine.catalog import CATALOG

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CATALOG), help="comma-separated catalogue names")
    ap.add_argument("--per-corpus", type=int, default=20)
    ap.add_argument("--unanswerable", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--questions", type=Path, help="your own questions (see bench.answers --questions)")
    ap.add_argument("--data", type=Path, help="data dir of the knowledge base asked (default: bench.answers')")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plot", type=Path, help="PNG (default: beside --out)")
    ap.add_argument("--rescore", action="store_true", help="re-summarize --out's answers and redraw; run nothing")
    args = ap.parse_args(argv)
    console = Console()
    if args.rescore:
        return rescore(args.out, args.plot or args.out.with_suffix(".png"), console)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; the catalogue has {sorted(CATALOG)}")
    folder = args.out.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    results = [run_one(name, args, folder, console) for name in names]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "questions": str(args.questions) if args.questions else "bench.answers corpora",
        "models": [
            {
                "name": r["label"],
                "file": r["model"],
                "prompt": r["prompt"],
                "speed": r["summary"]["speed"],
                "peak_rss_mb": r["peak_rss_mb"],
                "wall_s": r["wall_s"],
                "answers": str(folder / f"{r['label']}.json"),
            }
            for r in results
        ],
        "rows": rows_of(results),
    }
    args.out.write_text(json.dumps(result, indent=1))
    png = args.plot or args.out.with_suffix(".png")
    plot(result, png)
    print_table(result, console)
    console.print(f"→ {args.out}, {png}")
    return result


if __name__ == "__main__":
    main()
