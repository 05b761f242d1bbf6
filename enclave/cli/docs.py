"""`enclave ingest PATH... --collection C`, `enclave sync SOURCE --collection C` and `enclave kb list | delete`."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enclave.core.errors import EnclaveError
from enclave.core.settings import Settings, offline_environment

if TYPE_CHECKING:
    from enclave.knowledge.store import IngestReport, KnowledgeBase
    from enclave.knowledge.sync import Source

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
    _summary(collection, report)
    if _all_skipped(report):
        raise typer.Exit(1)


def _summary(collection: str, report: IngestReport, when: str = "") -> None:
    console.print(
        f"{when}{collection}: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed, {len(report.skipped)} skipped; "
        f"{report.chunks} chunks written"
    )
    for why in report.skipped:
        console.print(f"  [yellow]skipped[/yellow] {why}")
    if report.kinds:
        table = Table("kind", "files", "skipped", "chunks", "reading s", "embedding s", title="by kind of file")
        for kind, row in sorted(report.kinds.items(), key=lambda kv: -kv[1]["files"]):
            table.add_row(
                kind,
                str(int(row["files"])),
                str(int(row["skipped"])),
                str(int(row["chunks"])),
                f"{row['read_s']:.1f}",
                f"{row['embed_s']:.1f}",
            )
        console.print(table)


def _all_skipped(report: IngestReport) -> bool:
    return bool(report.skipped) and not (report.added or report.updated or report.unchanged)


def sync_command(
    source: str = typer.Argument(..., help="A folder, or s3://bucket/prefix in an S3-compatible store."),
    collection: str = typer.Option(..., help="The collection kept in step with the source."),
    watch: bool = typer.Option(False, "--watch", help="Keep running: sync again on every change until Ctrl-C."),
    poll: bool = typer.Option(
        False, "--poll", help="Watch a folder by polling (network mounts: inotify sees no remote change)."
    ),
    interval: float = typer.Option(
        60.0, min=0.1, help="Seconds between passes when polling (a bucket, --poll), and between full passes."
    ),
    endpoint_url: str = typer.Option(
        None, help="Endpoint of an S3-compatible store (MinIO, Ceph…); default AWS_ENDPOINT_URL, else AWS."
    ),
    region: str = typer.Option(None, help="S3 region; default AWS_REGION, AWS_DEFAULT_REGION or the profile's."),
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Let a source that lists no file at all remove every document of it."
    ),
) -> None:
    """Keep a collection in step with a folder or a bucket: new and changed files are ingested, deleted ones
    removed, unchanged ones not even read. S3 credentials come from the AWS environment or profile."""
    from enclave.knowledge.store import KnowledgeBase
    from enclave.knowledge.sync import FolderSource, SyncError, open_source
    from enclave.knowledge.sync import watch as watch_source

    try:
        KnowledgeBase.check_collection(collection)
        src = open_source(source, endpoint_url, region)
    except (SyncError, EnclaveError) as exc:
        console.print(f"[red]error:[/red] {getattr(exc, 'message', exc)}")
        raise typer.Exit(2) from exc
    offline_environment()
    settings = Settings()
    kb = KnowledgeBase.from_settings(settings)
    state_dir = settings.data_path / "sync"
    with _stop_on_signals() as stop:
        if not watch:
            try:
                report = _sync_pass(kb, src, collection, state_dir, stop, allow_empty, transient=False)
            except (SyncError, EnclaveError) as exc:
                console.print(f"[red]error:[/red] {getattr(exc, 'message', exc)}")
                raise typer.Exit(2) from exc
            _summary(collection, report)
            if stop.is_set():
                console.print("stopped before the end: the next run goes on where this one stopped")
                raise typer.Exit(130)
            if _all_skipped(report):
                raise typer.Exit(1)
            return
        how = "watching" if isinstance(src, FolderSource) and not poll else f"polling every {interval:g} s"
        console.print(f"{how}: {src.prefix} into '{collection}' (Ctrl-C stops)")
        last: list[list[str]] = []  # the last pass's skips: a pass that changes nothing is not printed

        def run() -> None:
            when = time.strftime("[%H:%M:%S] ")
            try:
                report = _sync_pass(kb, src, collection, state_dir, stop, allow_empty, transient=True)
            except (SyncError, EnclaveError) as exc:
                console.print(f"{when}[red]error:[/red] {getattr(exc, 'message', exc)}")
                return
            skipped = sorted(report.skipped)
            if not last or report.added or report.updated or report.removed or skipped != last[0]:
                _summary(collection, report, when)
            last[:] = [skipped]

        watch_source(src, run, stop, interval, poll, ignore=[settings.data_path])
    console.print("stopped")


def _sync_pass(
    kb: KnowledgeBase,
    src: Source,
    collection: str,
    state_dir: Path,
    stop: threading.Event,
    allow_empty: bool,
    transient: bool,
) -> IngestReport:
    from enclave.knowledge.sync import sync_once

    with Progress(
        TextColumn("[bold]sync"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[file]}"),
        console=console,
        transient=transient,
    ) as bar:
        task = bar.add_task("sync", total=None, file="")

        def tick(name: str, done: int, total: int) -> None:
            uri, _, stage = name.partition(": ")
            shown = Path(uri).name + (f" — {stage}" if stage else "") if uri else ""
            bar.update(task, completed=done, total=total, file=shown)

        return sync_once(kb, src, collection, tick, state_dir, stop=stop, allow_empty=allow_empty)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM (Kubernetes stopping the pod): the pass ends after its current file and
    the watch ends. A second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handle)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def formats_command() -> None:
    """The file formats Enclave reads, and which library reads each."""
    from enclave.knowledge.loaders import formats

    table = Table("suffixes", "kind", "read by")
    by_kind: dict[str, list[dict[str, str]]] = {}
    for f in formats():
        by_kind.setdefault(f["kind"], []).append(f)
    for kind, rows in by_kind.items():
        table.add_row(" ".join(r["suffix"] for r in rows), kind, rows[0]["library"])
    Console().print(table)


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
