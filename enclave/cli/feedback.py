"""`enclave feedback list | export | review`: the review queue of ratings on the configured conversation store."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from enclave.chat.conversations import FeedbackQuery, SqlConversationStore
from enclave.chat.feedback import DECISIONS, MAX_PAGE, checked_text, feedback_query
from enclave.core.errors import EnclaveError
from enclave.core.settings import Settings, offline_environment

feedback_app = typer.Typer(help="Ratings of answers: list, export, review.", no_args_is_help=True)
err = Console(stderr=True)

RATING = typer.Option(None, "--rating", help="up or down.")
REASON = typer.Option(None, "--reason", help="wrong, not_in_documents, incomplete, harmful or other.")
ROUTE = typer.Option(None, "--route", help="rag, adapter or base.")
COLLECTION = typer.Option(None, "--collection", help="The collection a document answer came from.")
ADAPTER = typer.Option(None, "--adapter", help="The adapter that answered ('' for none).")
STATE = typer.Option(None, "--review-state", help="none, pending, accepted or rejected.")
SINCE = typer.Option(None, "--since", help="Rated on or after this ISO date or date-time (UTC).")
UNTIL = typer.Option(None, "--until", help="Rated before this date-time, or on or before this date.")


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a name
        return "unknown"


@contextmanager
def _store() -> Iterator[SqlConversationStore]:
    offline_environment()
    store = SqlConversationStore(Settings().database_url)
    try:
        yield store
    finally:
        store.close()


def _query(**filters: Any) -> FeedbackQuery:
    try:
        return feedback_query(**filters)
    except EnclaveError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


def _cut(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


@feedback_app.command("list")
def list_command(
    rating: str = RATING,
    reason: str = REASON,
    route: str = ROUTE,
    collection: str = COLLECTION,
    adapter: str = ADAPTER,
    review_state: str = STATE,
    since: str = SINCE,
    until: str = UNTIL,
    limit: int = typer.Option(50, min=1, max=MAX_PAGE),
    offset: int = typer.Option(0, min=0),
) -> None:
    """The ratings matching the filters, newest first, as a table."""
    query = _query(**locals())
    with _store() as store:
        rows, total = store.list_feedback(query), store.count_feedback(query)
    table = Table(title=f"feedback: {len(rows)} of {total} (from {offset + 1 if rows else 0})")
    for col in ("id", "rated", "by", "rating", "reason", "route", "collection", "adapter", "review"):
        table.add_column(col, no_wrap=True)
    table.add_column("question")
    table.add_column("correction")
    for fb in rows:
        snap = fb["snapshot"]
        table.add_row(
            fb["id"],
            fb["updated_at"][:16].replace("T", " "),
            fb["principal"],
            fb["rating"],
            fb["reason"] or "",
            snap["route"] or "",
            snap["collection"] or "",
            snap["adapter"] or "",
            fb["review"]["state"],
            _cut(snap["question"], 60),
            _cut(fb["correction"], 60),
        )
    Console().print(table)


@feedback_app.command("export")
def export_command(
    out: Path = typer.Option(..., "--out", help="JSONL file: one rating a line, with its snapshot and review."),
    rating: str = RATING,
    reason: str = REASON,
    route: str = ROUTE,
    collection: str = COLLECTION,
    adapter: str = ADAPTER,
    review_state: str = STATE,
    since: str = SINCE,
    until: str = UNTIL,
) -> None:
    """Every rating matching the filters as JSONL, read a page at a time."""
    filters = {k: v for k, v in locals().items() if k != "out"}
    query = _query(**filters, limit=MAX_PAGE)
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with _store() as store, out.open("w", encoding="utf-8") as f:
        while page := store.list_feedback(query):
            for fb in page:
                f.write(json.dumps(fb, ensure_ascii=False) + "\n")
            written += len(page)
            query.offset += len(page)
    err.print(f"{written} ratings written to {out}")


@feedback_app.command("review")
def review_command(
    feedback_id: str = typer.Argument(..., help="The rating's id (fb_…), as `enclave feedback list` shows it."),
    decision: str = typer.Argument(..., help="accepted or rejected."),
    note: str = typer.Option(None, "--note", help="Why, for whoever reads the review."),
    by: str = typer.Option(None, "--by", help="The reviewer's name (default: cli:<login>)."),
) -> None:
    """Accept or reject a rating and its correction; the decision, reviewer and time are recorded."""
    if decision not in DECISIONS:
        err.print(f"[red]decision must be accepted or rejected, not '{decision}'[/red]")
        raise typer.Exit(2)
    try:
        text = checked_text(note, "note", Settings().limits.max_message_chars)
    except EnclaveError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    with _store() as store:
        fb = store.review(feedback_id, decision, by or f"cli:{_login()}", text)
    if fb is None:
        err.print(f"[red]unknown feedback '{feedback_id}'[/red]")
        raise typer.Exit(1)
    typer.echo(f"{fb['id']}: {fb['review']['state']} by {fb['review']['by']} at {fb['review']['at']}")
