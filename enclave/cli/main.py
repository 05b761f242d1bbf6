"""The `enclave` command: serve, ask, chat, warmup — and the knowledge base and tuning commands."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import typer

from enclave.core.settings import Settings, offline_environment

app = typer.Typer(help="Enclave: on-prem streaming chat.", no_args_is_help=True, add_completion=False)


@app.callback()
def _before_any_command() -> None:
    """Enclave: on-prem streaming chat."""
    from enclave.core.cpu import select_llama_library

    select_llama_library()  # the image ships several llama.cpp builds: load the best this CPU runs


def _settings() -> Settings:
    offline_environment()
    return Settings()


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default: server.host)."),
    port: int = typer.Option(None, help="Port to bind (default: server.port)."),
    log_level: str = typer.Option("info"),
) -> None:
    """Serve the chat API and page."""
    from enclave.api.app import create_app
    from enclave.api.server import configure_logging, run

    settings = _settings()
    configure_logging(log_level)
    run(create_app(settings), settings, host or settings.server.host, port or settings.server.port, log_level)


@app.command()
def warmup() -> None:
    """Convert the base model into the model cache and load the embedder and reranker, so starts are fast."""
    import importlib.util

    from enclave.engine.modelfiles import load_model

    settings = _settings()
    _, _, path = load_model(settings)
    typer.echo(f"model cache: {path}")
    if settings.models.engine != "transformers" and importlib.util.find_spec("llama_cpp") is not None:
        from enclave.engine.llamacpp import choose_weights

        _, weights, fmt, _ = choose_weights(settings)
        typer.echo(f"llama.cpp weights ({fmt}, checked): {weights}")
    from enclave.knowledge.embedder import Embedder

    Embedder.from_settings(settings).embed(["warm up"])
    typer.echo("embedder: ok")
    if settings.rag.rerank:
        from enclave.knowledge.rerank import Reranker

        Reranker.from_settings(settings).warm()
        typer.echo("reranker: ok")


@app.command("engine-check")
def engine_check() -> None:
    """Decode with every weight format the llama.cpp engine may pick, each in a child process; a table.

    Exits 1 when no format runs (the build cannot serve on this CPU), 0 otherwise, naming every failure.
    """
    from rich.console import Console
    from rich.table import Table

    from enclave.core.cpu import isa_summary
    from enclave.engine.llamacpp import check_format, format_order, smoke_checks
    from enclave.engine.modelfiles import converted_model_dir
    from enclave.engine.smoke import explain, llama_library_dir

    settings = _settings()
    gguf, _ = converted_model_dir(settings)
    checks = smoke_checks(settings)
    table = Table(title=f"llama.cpp engine check: {gguf.name} · CPU {isa_summary()} · {llama_library_dir()}")
    for col in ("format", "result", "detail", "seconds"):
        table.add_column(col)
    failures = []
    order = format_order(settings)
    for fmt in order:
        _, result = check_format(settings, gguf, fmt, checks)
        table.add_row(fmt, "ok" if result.ok else "FAILED", result.detail, f"{result.seconds:.1f}")
        if not result.ok:
            failures.append(explain(fmt, result))
    Console().print(table)
    for problem in failures:
        typer.echo(f"warning: {problem}", err=True)
    if len(failures) == len(order):
        raise typer.Exit(1)


async def _remote_events(url: str, body: dict[str, Any], api_key: str | None) -> AsyncIterator[dict[str, Any]]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("POST", url.rstrip("/") + "/v1/chat/stream", json=body, headers=headers) as resp,
    ):
        if resp.status_code != 200:
            err = json.loads(await resp.aread()).get("error", {})
            yield {"type": "error", "code": err.get("code", "internal"), "message": err.get("message", "")}
            return
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


class _Local:
    """The pipeline in this process, for `ask` and `chat` without a server."""

    def __init__(self) -> None:
        from enclave.api.state import State

        self.state = State(_settings())

    async def start(self) -> None:
        await self.state.load()
        if not self.state.ready:
            raise typer.Exit(f"could not load: {self.state.load_error}")  # type: ignore[arg-type]

    async def events(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        from enclave.api.auth import ANONYMOUS
        from enclave.chat.schema import ChatRequest

        async for event in self.state.pipeline.run(ChatRequest(**body), ANONYMOUS):
            yield event.model_dump(mode="json")


async def _print_answer(events: AsyncIterator[dict[str, Any]], out: Callable[[str], None]) -> dict[str, Any]:
    sources: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    async for ev in events:
        kind = ev["type"]
        if kind == "route":
            out(f"[route: {ev['route']}{' ' + ev['adapter'] if ev.get('adapter') else ''} — {ev['reason']}]\n")
        elif kind == "sources":
            sources = ev["sources"]
        elif kind == "token":
            out(ev["text"])
        elif kind == "moderation":
            out(f"\n[moderation {ev['stage']}: {ev['action']} {', '.join(ev['categories'])}]")
        elif kind in ("done", "error"):
            final = ev
    out("\n")
    for i, s in enumerate(sources, 1):
        out(f"  [{i}] {s['title']} — {s['uri']} (score {s['score']:.3f})\n")
    if final.get("type") == "error":
        out(f"error ({final['code']}): {final['message']}\n")
    return final


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question."),
    url: str = typer.Option(None, envvar="ENCLAVE_URL", help="Ask a running server instead of loading here."),
    api_key: str = typer.Option(None, envvar="ENCLAVE_API_KEY"),
    route: str = typer.Option("auto", help="auto, rag, adapter or base."),
    collection: str = typer.Option(None),
    adapter: str = typer.Option(None),
    max_tokens: int = typer.Option(None),
) -> None:
    """Print a streamed answer and its sources."""
    body = {
        k: v
        for k, v in {
            "message": question,
            "route": route,
            "collection": collection,
            "adapter": adapter,
            "max_tokens": max_tokens,
        }.items()
        if v is not None
    }

    async def main() -> dict[str, Any]:
        if url:
            return await _print_answer(_remote_events(url, body, api_key), _out)
        local = _Local()
        await local.start()
        try:
            return await _print_answer(local.events(body), _out)
        finally:
            local.state.close()

    final = asyncio.run(main())
    raise typer.Exit(0 if final.get("type") == "done" else 1)


@app.command()
def chat(
    url: str = typer.Option(None, envvar="ENCLAVE_URL", help="Chat with a running server."),
    api_key: str = typer.Option(None, envvar="ENCLAVE_API_KEY"),
) -> None:
    """Interactive terminal chat (empty line or Ctrl-D to quit)."""

    async def main() -> None:
        local = None if url else _Local()
        if local:
            await local.start()
        conversation: str | None = None
        try:
            while True:
                try:
                    line = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    break
                if not line.strip():
                    break
                body: dict[str, Any] = {"message": line}
                if conversation:
                    body["conversation_id"] = conversation
                events = local.events(body) if local else _remote_events(url, body, api_key)
                _out("enclave> ")
                final = await _print_answer(events, _out)
                conversation = final.get("conversation_id") or conversation
        finally:
            if local:
                local.state.close()

    asyncio.run(main())


models_app = typer.Typer(help="Base models.", no_args_is_help=True)
app.add_typer(models_app, name="models", help="The base models Enclave can serve, and the one it serves.")


@models_app.command("list")
def models_list() -> None:
    """The catalogue of base models shipped in PyPI packages: installed or not, and which one is configured."""
    from rich.console import Console
    from rich.table import Table

    from enclave.engine.catalog import CATALOG, install_hint, installed

    settings = _settings()
    table = Table(title="Base models (models.base)")
    for col in ("name", "parameters", "family", "installed", "configured", "note"):
        table.add_column(col, no_wrap=col == "name")
    for m in CATALOG.values():
        configured = "yes" if m.name == settings.models.base and not settings.models.gguf_dir else ""
        here = installed(m, settings.model_cache_path)
        table.add_row(m.name, m.parameters, m.family, "yes" if here else "no", configured, m.note)
    Console().print(table)
    for m in CATALOG.values():
        if not installed(m, settings.model_cache_path):
            typer.echo(f"to install {m.name}: {install_hint(m)}")
    if settings.models.gguf_dir:
        typer.echo(f"configured: the operator's own GGUF in {settings.models.gguf_dir} (models.gguf_dir)")


@models_app.command("path")
def models_path() -> None:
    """The configured base model's GGUF file (assembled from its parts and checked, the first time)."""
    from enclave.engine.modelfiles import base_gguf

    typer.echo(str(base_gguf(_settings())))


@models_app.command("compare")
def models_compare(
    models: str = typer.Option(None, help="Comma-separated catalogue names (default: every installed one)."),
    questions: Path = typer.Option(
        None, help="Your own questions, JSONL: question, collection, expect, source, answer, unanswerable."
    ),
    data: Path = typer.Option(None, help="Data dir of the knowledge base asked (with --questions: data_dir)."),
    per_corpus: int = typer.Option(20, min=1, help="Questions per benchmark corpus (without --questions)."),
    unanswerable: int = typer.Option(10, min=0, help="Unanswerable benchmark questions (without --questions)."),
    max_tokens: int = typer.Option(128, min=8),
    out: Path = typer.Option(None, help="JSON result (default: bench/results/compare.json); a PNG goes beside it."),
) -> None:
    """Base models side by side on the answer benchmark or your own questions: right answers, citations, loops,
    TTFT, tokens/s and memory, as a table and a plot."""
    from bench.compare import main
    from enclave.engine.catalog import CATALOG, installed

    names = models or ",".join(m.name for m in CATALOG.values() if installed(m))
    argv = ["--models", names, "--per-corpus", str(per_corpus), "--unanswerable", str(unanswerable)]
    argv += ["--max-tokens", str(max_tokens)]
    if questions:
        argv += ["--questions", str(questions), "--data", str(data or _settings().data_path)]
    elif data:
        argv += ["--data", str(data)]
    if out:
        argv += ["--out", str(out)]
    main(argv)


auth_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(auth_app, name="auth", help="API keys: make one for the keys file.")


@auth_app.command("new-key")
def auth_new_key(
    name: str = typer.Option(..., help="Who the key is for (conversations are kept per name)."),
    collections: str = typer.Option(None, help="Comma-separated collections it may read; default: all."),
    admin: bool = typer.Option(False, help="May ingest documents and manage adapters."),
) -> None:
    """Print a new random API key (give it to its user) and the keys-file entry that stores only its digest."""
    import hashlib
    import secrets

    import yaml

    key = "enc-" + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest()}
    if collections:
        entry["collections"] = [c.strip() for c in collections.split(",") if c.strip()]
    entry["admin"] = admin
    typer.echo(f"key (shown once): {key}", err=True)
    typer.echo(yaml.safe_dump([entry], sort_keys=False), nl=False)


router_app = typer.Typer(help="Fit and check the query router.", no_args_is_help=True)
app.add_typer(router_app, name="router", help="Fit and check the query router's thresholds.")


@router_app.command("calibrate")
def router_calibrate(
    labels: Path = typer.Option(None, help="JSONL of {query, route, adapter?}; default: the shipped set."),
    domains: Path = typer.Option(
        None,
        help="JSON {adapter: [training questions]} for adapters not in the registry; default with the "
        "shipped set: its demonstration domain.",
    ),
    collection: str = typer.Option(None, help="Collection searched (default: rag.default_collection)."),
    write: Path = typer.Option(None, help="Write the fitted thresholds here as a YAML settings file."),
    report: Path = typer.Option(None, help="Write accuracy, confusion matrix and misrouted queries as JSON."),
) -> None:
    """Gather the router's signals for a labelled set, fit the thresholds, print accuracy and confusion."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from enclave.chat import calibrate as cal
    from enclave.core.errors import EnclaveError
    from enclave.knowledge.samples import ensure_samples
    from enclave.knowledge.store import KnowledgeBase

    console = Console()
    settings = _settings()
    try:
        rows = cal.load_labels(labels or cal.SHIPPED_LABELS)
        kb = KnowledgeBase.from_settings(settings)
        coll = collection or settings.rag.default_collection
        if settings.rag.ingest_samples:
            ensure_samples(kb, coll)
        questions = cal.load_domains(domains) if domains else {}
        if labels is None and domains is None:
            questions = cal.load_domains(cal.SHIPPED_DOMAINS)
        centroids = cal.domain_vectors(questions, kb.embedder.embed)
        centroids.update(_registered_domains(settings, exclude=set(centroids)))
        with Progress(TextColumn("[bold]signals"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
            task = bar.add_task("signals", total=len(rows))
            samples = cal.gather(
                rows,
                retriever=kb if coll in kb.collection_names() else None,
                collection=coll,
                embed=kb.embedder.embed,
                domains=centroids,
                k=max(settings.rag.top_k * 2, 8),
                progress=lambda done, _total: bar.update(task, completed=done),
            )
    except EnclaveError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    current = cal.evaluate(settings.router, samples)
    fitted_settings = cal.fit(samples, settings.router)
    fitted = cal.evaluate(fitted_settings, samples)
    cv = cal.cross_validate(samples)

    table = Table(title=f"router on {len(samples)} labelled queries ({coll}, adapters: {', '.join(centroids) or '-'})")
    table.add_column("threshold")
    table.add_column("current", justify="right")
    table.add_column("fitted", justify="right")
    for key, value in current.thresholds.items():
        table.add_row(key, f"{value:.2f}", f"{fitted.thresholds[key]:.2f}")
    table.add_row("accuracy", f"{current.accuracy:.1%}", f"{fitted.accuracy:.1%}")
    table.add_row("accuracy, 5-fold cross-validated", "", f"{cv:.1%}")
    console.print(table)
    matrix = Table(title="confusion (fitted): rows labelled, columns routed")
    matrix.add_column("")
    for r in cal.ROUTES:
        matrix.add_column(r, justify="right")
    for r in cal.ROUTES:
        matrix.add_row(r, *(str(fitted.confusion[r][c]) for c in cal.ROUTES))
    console.print(matrix)
    for m in fitted.misrouted[:15]:
        console.print(f"  [yellow]{m['expected']} -> {m['got']}[/yellow] {m['query']}  ({m['reason']})")
    if write:
        import yaml

        write.write_text(yaml.safe_dump({"router": fitted.thresholds}, sort_keys=False))
        console.print(f"wrote {write} (use it with ENCLAVE_CONFIG={write})")
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            json.dumps(
                {
                    "queries": len(samples),
                    "collection": coll,
                    "adapters": list(centroids),
                    "current": vars(current),
                    "fitted": vars(fitted),
                    "cross_validated_accuracy": cv,
                },
                indent=2,
            )
        )


def _registered_domains(settings: Settings, exclude: set[str]) -> dict[str, Any]:
    """The domains `enclave tune train` recorded for the adapters in the data directory."""
    from enclave.adapters.registry import read_domain

    out = {}
    root = settings.data_path / "adapters"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        vecs = read_domain(folder)
        if vecs is not None and folder.name not in exclude:
            out[folder.name] = vecs
    return out


def _register_parts() -> None:
    """The commands of the knowledge base and of tuning, which live beside the parts they drive."""
    from enclave.cli.adapters import adapters_app, compare_cmd
    from enclave.cli.docs import formats_command, ingest_command, kb_app, sync_command
    from enclave.cli.feedback import feedback_app
    from enclave.cli.tune import model_server_cmd, tune_app

    app.command("ingest")(ingest_command)
    app.command("sync")(sync_command)
    app.command("formats")(formats_command)
    app.add_typer(kb_app, name="kb", help="List and delete knowledge-base documents.")
    tune_app.command("compare")(compare_cmd)
    app.add_typer(tune_app, name="tune", help="Datasets, LoRA training and evaluation.")
    app.add_typer(adapters_app, name="adapters", help="Served adapters: promote a better one, roll back, the log.")
    app.add_typer(feedback_app, name="feedback", help="Ratings of answers: list, export and review them.")
    app.command("model-server")(model_server_cmd)


_register_parts()

if __name__ == "__main__":
    app()
