"""`enclave ingest PATH... --collection C` and `enclave kb list | delete`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enclave.core.errors import EnclaveError
from enclave.core.settings import Settings, offline_environment

console = Console(stderr=True)
kb_app = typer.Typer(help="List and delete knowledge-base documents.", no_args_is_help=True)


def _kb() -> object:
    offline_environment()
    from enclave.knowledge.store import KnowledgeBase

    return KnowledgeBase.from_settings(Settings())


def ingest_command(
    paths: list[Path] = typer.Argument(..., help="Files and folders (recursive)."),
    collection: str = typer.Option("docs", help="Collection to ingest into."),
) -> None:
    """Ingest PDF, HTML, Markdown and text files; unchanged files are skipped, deleted ones removed."""
    from enclave.knowledge.store import KnowledgeBase

    kb = _kb()
    assert isinstance(kb, KnowledgeBase)
    with Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[file]}"),
        console=console,
    ) as bar:
        task = bar.add_task("ingest", total=None, file="")

        def tick(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, file=Path(name).name if name else "")

        try:
            report = kb.ingest_paths(paths, collection, progress=tick)
        except EnclaveError as exc:
            console.print(f"[red]error:[/red] {exc.message}")
            raise typer.Exit(2) from exc
    console.print(
        f"{collection}: {len(report.added)} added, {len(report.updated)} updated, {len(report.unchanged)} unchanged, "
        f"{len(report.removed)} removed, {len(report.skipped)} skipped; {report.chunks} chunks written"
    )
    for why in report.skipped:
        console.print(f"  [yellow]skipped[/yellow] {why}")
    if report.skipped and not (report.added or report.updated or report.unchanged):
        raise typer.Exit(1)


@kb_app.command("list")
def kb_list(collection: str = typer.Option(None, help="List this collection's documents.")) -> None:
    """Collections with their document counts, or one collection's documents."""
    from enclave.knowledge.store import KnowledgeBase

    kb = _kb()
    assert isinstance(kb, KnowledgeBase)
    try:
        if collection:
            table = Table("id", "title", "uri", "chunks")
            for d in kb.list_documents(collection):
                table.add_row(str(d["id"]), str(d["title"]), str(d["uri"]), str(d["chunks"]))
        else:
            table = Table("collection", "documents", "chunks")
            for c in kb.list_collections():
                table.add_row(c["name"], str(c["documents"]), str(c["chunks"]))
    except EnclaveError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    Console().print(table)


@kb_app.command("delete")
def kb_delete(
    collection: str = typer.Option(..., help="The collection."),
    document: str = typer.Option(None, help="A document id; without it the whole collection goes."),
) -> None:
    """Delete a document, or a whole collection."""
    from enclave.knowledge.store import KnowledgeBase

    kb = _kb()
    assert isinstance(kb, KnowledgeBase)
    try:
        if document:
            kb.delete_document(collection, document)
        else:
            kb.delete_collection(collection)
    except EnclaveError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    console.print(f"deleted {document or 'collection ' + collection}")
