"""`enclave tune dataset | train | eval` and `enclave model-server`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from enclave.core.errors import EnclaveError
from enclave.core.settings import Settings, offline_environment

tune_app = typer.Typer(help="QA datasets from documents, LoRA training and evaluation.", no_args_is_help=True)
console = Console(stderr=True)


def _settings() -> Settings:
    offline_environment()
    return Settings()


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
    )


def _fail(exc: EnclaveError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc.message}")
    return typer.Exit(2)


def dataset_path(settings: Settings, collection: str) -> Path:
    """Where `tune dataset --collection C` writes its pairs, and where `tune train --collection C` reads them."""
    return settings.data_path / "datasets" / f"{collection}.jsonl"


def chunk_records(settings: Settings, collection: str) -> list[Any]:
    from enclave.adapters.tuning.dataset import ChunkRecord
    from enclave.knowledge.store import KnowledgeBase

    kb = KnowledgeBase.from_settings(settings)
    return [
        ChunkRecord(id=c["id"], text=c["text"], title=c["title"], uri=c["uri"], section=c.get("section") or "")
        for c in kb.iter_chunks(collection)
    ]


@tune_app.command("dataset")
def dataset_cmd(
    collection: str = typer.Option(
        None,
        help="Collection whose chunks become QA pairs; with --from-feedback, also the feedback used: ratings of its "
        "answers and corrections of answers that used no collection.",
    ),
    out: Path = typer.Option(
        None, help="JSONL file (default: <data_dir>/datasets/<collection>.jsonl, or feedback.jsonl without one)."
    ),
    generator: str = typer.Option("rules", help="rules (no model) or llm (the served model writes the pairs)."),
    eval_share: float = typer.Option(0.2, min=0.05, max=0.5, help="Share of pairs held out for eval."),
    per_chunk: int = typer.Option(1, min=1, max=8, help="llm: questions the model writes per chunk."),
    vetted: bool = typer.Option(
        True, "--vet/--no-vet", help="Keep only pairs whose question finds its passage and whose answer it supports."
    ),
    from_feedback: bool = typer.Option(
        False,
        "--from-feedback",
        help="Add accepted corrections and up-rated document answers (see `enclave feedback`) as pairs.",
    ),
    merge: Path = typer.Option(
        None,
        "--merge",
        help="With --from-feedback: merge with the pairs of this JSONL (an earlier `tune dataset`) instead of "
        "generating the document pairs again.",
    ),
    since: str = typer.Option(None, "--since", help="Feedback rated on or after this ISO date or date-time (UTC)."),
    until: str = typer.Option(None, "--until", help="Feedback rated before this date-time, or on or before this date."),
) -> None:
    """Turn a collection's chunks, and people's feedback, into QA pairs with provenance and a train/eval split."""
    from enclave.adapters.tuning.dataset import save_pairs
    from enclave.adapters.tuning.feedback_data import merge_pairs, new_summary
    from enclave.knowledge.store import KnowledgeBase

    if generator not in ("rules", "llm"):
        raise _fail(EnclaveError(f"unknown generator '{generator}': rules or llm"))
    if not (collection or from_feedback):
        raise _fail(EnclaveError("give --collection, --from-feedback or both"))
    if merge and not from_feedback:
        raise _fail(EnclaveError("--merge adds feedback to an earlier dataset: give --from-feedback too"))
    settings = _settings()
    out = out or dataset_path(settings, collection or "feedback")
    summary = new_summary()
    try:
        kb = KnowledgeBase.from_settings(settings)
        with _progress() as bar:
            feedback = []
            if from_feedback:
                feedback = _feedback_pairs(settings, kb, collection, since, until, eval_share, bar, summary)
            if merge:
                documents = _merged_file(merge, summary)
            elif collection:
                documents, counts = _document_pairs(
                    settings, kb, collection, generator, eval_share, per_chunk, vetted, bar
                )
                summary["document"].update(counts)
            else:
                documents = []
        pairs = merge_pairs([feedback, documents], summary, kb.embedder.embed)
        if not pairs:
            raise EnclaveError(f"no QA pairs could be made ({_dropped(summary['document']) or 'nothing to use'})")
    except EnclaveError as exc:
        raise _fail(exc) from exc
    save_pairs(pairs, out)
    n_eval = sum(p.split == "eval" for p in pairs)
    if from_feedback:
        console.print(_summary_table(pairs, summary))
        console.print(f"{len(pairs)} pairs ({len(pairs) - n_eval} train, {n_eval} eval) → {out}")
    else:
        dropped = _dropped(summary["document"])
        console.print(
            f"{len(pairs)} pairs from {summary['document']['chunks']} chunks ({len(pairs) - n_eval} train, "
            f"{n_eval} eval) → {out}"
            + (f"; of {summary['document']['considered']}, dropped {dropped}" if dropped else "")
        )


def _document_pairs(
    settings: Settings,
    kb: Any,
    collection: str,
    generator: str,
    eval_share: float,
    per_chunk: int,
    vetted: bool,
    bar: Progress,
) -> tuple[list[Any], dict[str, int]]:
    """The collection's chunks as pairs (vetted unless told not to), and the counts: considered, chunks, drops."""
    from enclave.adapters.tuning.dataset import generate_pairs, generate_pairs_llm, vet
    from enclave.core.protocols import Principal

    chunks = chunk_records(settings, collection)
    if not chunks:
        raise EnclaveError(f"collection '{collection}' has no chunks: ingest documents first")
    if generator == "llm":
        import asyncio

        from enclave.engine.build import build_backend

        backend = build_backend(settings)
        asyncio.run(backend.aload())
        task = bar.add_task("writing pairs", total=len(chunks), info=settings.models.name)
        pairs = asyncio.run(
            generate_pairs_llm(
                backend,
                chunks,
                eval_share,
                progress=lambda i, n: bar.update(task, completed=i),
                per_chunk=per_chunk,
            )
        )
        backend.close()
    else:
        pairs = generate_pairs(chunks, eval_share)
    why = {"written": len(pairs), "kept": len(pairs)}
    if vetted and pairs:
        admin = Principal(name="tune", admin=True)
        task = bar.add_task("vetting pairs", total=len(pairs), info="retrieval + support + duplicates")
        pairs, why = vet(
            pairs,
            chunks,
            lambda q: kb.search(q, collection, admin, k=5),
            kb.embedder.embed,
            progress=lambda i, n: bar.update(task, completed=i),
        )
    counts = {k: v for k, v in why.items() if k not in ("written", "kept")}
    return pairs, {"considered": why["written"], "chunks": len(chunks), **counts}


def _feedback_pairs(
    settings: Settings,
    kb: Any,
    collection: str | None,
    since: str | None,
    until: str | None,
    eval_share: float,
    bar: Progress,
    summary: dict[str, Any],
) -> list[Any]:
    """The feedback's pairs from the configured conversation store; its counts added to `summary`."""
    from enclave.adapters.tuning.feedback_data import feedback_pairs
    from enclave.chat.conversations import SqlConversationStore

    store = SqlConversationStore(settings.database_url)
    try:
        task = bar.add_task("checking feedback", total=None, info="retrieval + support")
        pairs, counts = feedback_pairs(
            store,
            kb,
            since,
            until,
            collection,
            eval_share,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    finally:
        store.close()
    for origin, counter in counts.items():
        summary[origin].update(counter)
    return pairs


def _merged_file(path: Path, summary: dict[str, Any]) -> list[Any]:
    """The pairs of an earlier dataset, counted as considered by where they came from."""
    from enclave.adapters.tuning.dataset import load_pairs
    from enclave.adapters.tuning.feedback_data import origin_of

    pairs = load_pairs(path)
    for p in pairs:
        summary[origin_of(p)]["considered"] += 1
    return pairs


def _dropped(counts: Any, sep: str = ", ") -> str:
    from enclave.adapters.tuning.feedback_data import DROPS

    return sep.join(f"{counts[k]} {words}" for k, words in DROPS.items() if counts.get(k))


def _summary_table(pairs: list[Any], summary: dict[str, Any]) -> Any:
    """Per source: how many pairs were considered and kept, in which split, and why the others were not."""
    from rich.table import Table

    from enclave.adapters.tuning.feedback_data import NOTES, ORIGINS, origin_of

    table = Table(title="QA pairs by source")
    for col in ("source", "considered", "kept", "train", "eval", "dropped", "not used / marked"):
        table.add_column(col)
    for origin in ORIGINS:
        counts = summary[origin]
        mine = [p for p in pairs if origin_of(p) == origin]
        n_eval = sum(p.split == "eval" for p in mine)
        notes = "\n".join(f"{counts[k]} {words}" for k, words in NOTES.items() if counts.get(k))
        table.add_row(
            origin.replace("_", " "),
            str(counts["considered"]),
            str(len(mine)),
            str(len(mine) - n_eval),
            str(n_eval),
            _dropped(counts, "\n") or "-",
            notes or "-",
        )
    return table


@tune_app.command("train")
def train_cmd(
    name: str = typer.Option(..., help="Adapter name (how requests select it)."),
    collection: str = typer.Option(None, help="Train on `tune dataset --collection`'s pairs of this collection."),
    dataset: Path = typer.Option(None, help="JSONL from `tune dataset` (default: the collection's, see --collection)."),
    max_steps: int = typer.Option(None, min=1, help="Stop after this many optimizer steps."),
    epochs: float = typer.Option(3.0, min=0.1, help="Passes over the training pairs (when no --max-steps)."),
    fresh: bool = typer.Option(False, help="Ignore a checkpoint of an earlier, interrupted run."),
) -> None:
    """Train a LoRA adapter on the base model, with a progress bar and resumable checkpoints."""
    from enclave.adapters.tuning.train import config_from_settings, train

    settings = _settings()
    if dataset and collection:
        raise _fail(EnclaveError("give --collection or --dataset, not both"))
    dataset = dataset or dataset_path(settings, collection or settings.rag.default_collection)
    config = config_from_settings(settings, max_steps, epochs)
    with _progress() as bar:
        task = bar.add_task(f"training {name}", total=None, info="")

        def tick(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {loss:.3f}")

        try:
            result = train(settings, name, dataset, config, progress=tick, resume=not fresh)
        except EnclaveError as exc:
            raise _fail(exc) from exc
    console.print(
        f"adapter '{name}': {result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.3f}"
        f" → {result.path}"
    )


@tune_app.command("eval")
def eval_cmd(
    name: str = typer.Option(..., help="Adapter to evaluate."),
    collection: str = typer.Option(None, help="Collection for the RAG answers (default: rag.default_collection)."),
    limit: int = typer.Option(None, min=1, help="Evaluate only the first N held-out pairs."),
    max_tokens: int = typer.Option(64, min=8, help="Answer length per backend."),
) -> None:
    """Base vs adapter vs RAG on the held-out pairs: scores, histograms and a report."""
    from enclave.adapters.tuning.evaluate import evaluate
    from enclave.knowledge.embedder import Embedder
    from enclave.knowledge.store import KnowledgeBase

    settings = _settings()
    kb = KnowledgeBase.from_settings(settings)
    embedder = Embedder.from_settings(settings)
    with _progress() as bar:
        task = bar.add_task(f"evaluating {name}", total=None, info="")
        try:
            report = evaluate(
                settings,
                name,
                embedder.embed,
                retriever=kb.retriever(),
                collection=collection,
                limit=limit,
                max_tokens=max_tokens,
                progress=lambda i, n: bar.update(task, completed=i, total=n),
            )
        except EnclaveError as exc:
            raise _fail(exc) from exc
    from rich.table import Table

    table = Table(title=f"adapter {name}: {report['pairs']} held-out questions")
    for col in ("backend", "right [95% CI]", "cosine mean", "cosine ≥ 0.5"):
        table.add_column(col)
    for backend, m in report["backends"].items():
        ci = m["right_ci95"]
        table.add_row(
            backend,
            f"{m['right']:.0%} [{ci[0]:.0%}–{ci[1]:.0%}]",
            f"{m['mean']:.3f}",
            f"{m['share_at_or_above_0.5']:.0%}",
        )
    console.print(table)
    gain = report["adapter_minus_base_right"]
    low, high = gain["ci95"]
    console.print(f"adapter − base, right answers: {gain['difference']:+.0%} [{low:+.0%}, {high:+.0%}]")
    console.print(f"report: {settings.adapters_path / name / 'eval_report.md'}")


def model_server_cmd(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8080, help="Port to bind."),
    log_level: str = typer.Option("info"),
) -> None:
    """Serve the base model and its adapters over TGI's protocol."""
    import uvicorn

    from enclave.api.model_server import create_model_server

    uvicorn.run(create_model_server(_settings()), host=host, port=port, log_level=log_level)
