"""`enclave adapters list | promote | rollback | history` and `enclave tune compare`: the gate before serving."""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from enclave.core.errors import EnclaveError, InvalidRequest, NotFound
from enclave.core.settings import Settings, offline_environment

adapters_app = typer.Typer(help="Served adapters: promote a better one, roll back, the log.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()

QUESTIONS = typer.Option(
    None, "--questions", help="Held-out questions, JSONL of {question, answer} (default: the candidate's eval pairs)."
)
LIMIT = typer.Option(None, "--limit", min=1, help="Only the first N questions.")
MAX_TOKENS = typer.Option(64, "--max-tokens", min=8, help="Answer length.")


def _settings() -> Settings:
    offline_environment()
    return Settings()


def actor() -> str:
    """Who is acting: the login (a container user may have none) at this host (a Job's pod name)."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return f"{login}@{socket.gethostname()}"


def _fail(exc: EnclaveError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc.message}")
    return typer.Exit(2)


def candidate_side(settings: Settings, name: str) -> Any:
    """The working copy `enclave tune train --name NAME` wrote: what a promotion of NAME would serve."""
    from enclave.adapters.registry import check_name
    from enclave.adapters.tuning.compare import Side

    folder = settings.adapters_path / check_name(name)
    if not folder.is_dir():
        raise NotFound(f"no adapter '{name}' in {settings.adapters_path}: train one with enclave tune train --name")
    return Side(f"{name} (candidate)", folder)


def served_side(settings: Settings, name: str) -> Any:
    """What NAME serves now: its promoted version, or the base model before its first promotion."""
    from enclave.adapters.served import ServedRecord
    from enclave.adapters.tuning.compare import Side

    entry = ServedRecord(settings.adapters_path).read().get(name)
    if entry is None:
        return Side("base model", None)
    folder = ServedRecord(settings.adapters_path).version_folder(name, entry["version"])
    return Side(f"{name} {entry['version']} (served)", folder, entry["version"])


def against_side(settings: Settings, candidate: str, against: str | None) -> Any:
    from enclave.adapters.registry import AdapterRegistry
    from enclave.adapters.tuning.compare import Side

    if against is None:
        return served_side(settings, candidate)
    if against == "base":
        return Side("base model", None)
    if against == candidate:
        return served_side(settings, candidate)
    registry = AdapterRegistry(settings.adapters_path, None, None)
    folder = registry.serving_folder(against)
    if not folder.is_dir():
        raise NotFound(f"unknown adapter '{against}'")
    return Side(against, folder, registry.served.read().get(against, {}).get("version"))


def questions_of(candidate: Any, questions: Path | None) -> Path:
    if questions is not None:
        return questions
    from enclave.adapters.registry import read_meta

    dataset = read_meta(candidate.folder).get("dataset")
    if not dataset:
        raise InvalidRequest(f"{candidate.label} records no dataset: give --questions")
    return Path(dataset)


def run_compare(
    settings: Settings, candidate: Any, served: Any, questions: Path, margin: float, limit: int | None, max_tokens: int
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from enclave.adapters.tuning.compare import compare
    from enclave.knowledge.embedder import Embedder

    embed = Embedder.from_settings(settings).embed
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task(f"{candidate.label} vs {served.label}", total=None)
        return compare(
            settings,
            candidate,
            served,
            questions,
            embed,
            margin=margin,
            limit=limit,
            max_tokens=max_tokens,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )


def print_report(report: dict[str, Any], written: list[Path]) -> None:
    table = Table(title=f"{report['n']} held-out questions, {report['model']}, greedy, {report['max_tokens']} tokens")
    for col in ("", "right [95% CI]", "declined", "wrong, stated as fact", "cosine mean", "cosine ≥ 0.5"):
        table.add_column(col)
    for key in ("candidate", "served"):
        m, label = report["sides"][key], report[key]["label"]
        ci = m["right_ci95"]
        table.add_row(
            label,
            f"{m['right']:.0%} [{ci[0]:.0%}–{ci[1]:.0%}]",
            f"{m['declined']:.0%}",
            f"{m['wrong']:.0%}",
            f"{m['mean']:.3f}",
            f"{m['share_at_or_above_0.5']:.0%}",
        )
    right, wrong, cos = report["paired"]["right"], report["paired"]["wrong"], report["paired"]["cosine"]
    table.add_row(
        "candidate − served, paired",
        f"{right['difference']:+.1%} [{right['ci95'][0]:+.1%}, {right['ci95'][1]:+.1%}]",
        "",
        f"{wrong['difference']:+.1%} [{wrong['ci95'][0]:+.1%}, {wrong['ci95'][1]:+.1%}]",
        f"{cos['difference']:+.3f} [{cos['ci95'][0]:+.3f}, {cos['ci95'][1]:+.3f}]",
        "",
    )
    out.print(table)
    for path in written:
        console.print(f"report: {path}")


def figures_of(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the log keeps of a comparison: the shares, the paired gains, the questions and the report's path."""
    return {
        "questions": report["n"],
        "questions_sha256": report["questions"]["sha256"],
        "against": report["served"]["label"],
        "right": {k: report["sides"][k]["right"] for k in ("candidate", "served")},
        "right_gain": report["paired"]["right"],
        "wrong_gain": report["paired"]["wrong"],
        "cosine_gain": report["paired"]["cosine"],
        "report": str(path),
    }


def compare_and_write(
    settings: Settings,
    candidate: Any,
    served: Any,
    questions: Path | None,
    margin: float,
    limit: int | None,
    max_tokens: int,
    report_path: Path | None,
) -> tuple[dict[str, Any], Path]:
    from enclave.adapters.tuning.compare import REPORT_FILE, write_report

    report = run_compare(settings, candidate, served, questions_of(candidate, questions), margin, limit, max_tokens)
    path = report_path or candidate.folder / REPORT_FILE
    png = write_report(report, path)
    print_report(report, [path, *([png] if png else [])])
    return report, path


def compare_cmd(
    candidate: str = typer.Argument(..., help="The adapter to compare (its working copy)."),
    against: str = typer.Option(
        None, "--against", help="An adapter name, or 'base' (default: the version served under the candidate's name)."
    ),
    questions: Path = QUESTIONS,
    margin: float = typer.Option(0.0, "--margin", min=-1.0, max=1.0, help="The gain the gate would ask for."),
    limit: int = LIMIT,
    max_tokens: int = MAX_TOKENS,
    report: Path = typer.Option(None, "--out", help="JSON report (default: <candidate>/gate_report.json)."),
) -> None:
    """Both adapters on the same held-out questions: right answers and cosine, the paired gain and its interval."""
    settings = _settings()
    try:
        cand = candidate_side(settings, candidate)
        result, _ = compare_and_write(
            settings, cand, against_side(settings, candidate, against), questions, margin, limit, max_tokens, report
        )
    except EnclaveError as exc:
        raise _fail(exc) from exc
    verdict = "would promote" if result["gate"]["promote"] else "would refuse"
    out.print(f"the gate {verdict}: {result['gate']['reason']}")


@adapters_app.command("list")
def list_cmd() -> None:
    """Adapters on disk, and for each promoted one the version served and those kept to roll back to."""
    from enclave.adapters.registry import AdapterRegistry

    table = Table()
    for col in ("name", "served", "since", "by", "roll back to", "created", "problem"):
        table.add_column(col)
    for a in AdapterRegistry(_settings().adapters_path, None, None).available():
        s = a["served"] or {}
        table.add_row(
            a["name"],
            s.get("version", "working copy"),
            s.get("since", ""),
            s.get("by") or "",
            ", ".join(s.get("previous", [])),
            a["created_at"] or "",
            a["problem"] or "",
        )
    out.print(table)


@adapters_app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., help="The adapter whose working copy (from enclave tune train) is the candidate."),
    questions: Path = QUESTIONS,
    margin: float = typer.Option(
        0.0, "--margin", min=-1.0, max=1.0, help="Promote only if the right-answer gain's interval is above this."
    ),
    force: bool = typer.Option(False, "--force", help="Promote without the comparison (logged as forced)."),
    limit: int = LIMIT,
    max_tokens: int = MAX_TOKENS,
) -> None:
    """Compare the candidate with what NAME serves; serve it only if it answers better by more than the margin."""
    from enclave.adapters.served import ServedRecord

    settings = _settings()
    record = ServedRecord(settings.adapters_path)
    who = actor()
    try:
        candidate = candidate_side(settings, name)
        if force:
            check_base(settings, candidate)
            logged = record.promote(name, candidate.folder, {"by": who, "forced": True, "figures": None})
        else:
            served = served_side(settings, name)
            report, path = compare_and_write(settings, candidate, served, questions, margin, limit, max_tokens, None)
            event = {"by": who, "forced": False, "margin": margin, "figures": figures_of(report, path)}
            if not report["gate"]["promote"]:
                record.log({**event, "action": "refuse", "name": name, "against": served.version})
                out.print(f"[red]refused[/red]: {report['gate']['reason']}; {name} keeps serving {served.label}")
                raise typer.Exit(1)
            logged = record.promote(name, candidate.folder, event, expect=served.version)
            out.print(f"[green]better[/green]: {report['gate']['reason']}")
    except EnclaveError as exc:
        raise _fail(exc) from exc
    was = logged["replaced"] or "its working copy"
    out.print(f"promoted: {name} serves {logged['version']} (was {was}); servers swap it in within seconds")


def check_base(settings: Settings, candidate: Any) -> None:
    """A forced promotion still refuses an incomplete adapter or one trained on another base model."""
    from enclave.adapters.registry import AdapterRegistry
    from enclave.engine.catalog import file_sha256
    from enclave.engine.modelfiles import base_gguf

    registry = AdapterRegistry(settings.adapters_path, None, file_sha256(base_gguf(settings)))
    registry.check(candidate.folder, candidate.label)


@adapters_app.command("rollback")
def rollback_cmd(
    name: str = typer.Argument(None, help="The adapter to roll back (may be left out when only one is promoted)."),
) -> None:
    """Serve again the version that the served one replaced."""
    from enclave.adapters.served import ServedRecord

    record = ServedRecord(_settings().adapters_path)
    try:
        if name is None:
            promoted = sorted(record.read())
            if len(promoted) != 1:
                raise InvalidRequest(f"name the adapter to roll back: {', '.join(promoted) or 'none is promoted'}")
            name = promoted[0]
        logged = record.rollback(name, {"by": actor()})
    except EnclaveError as exc:
        raise _fail(exc) from exc
    out.print(f"rolled back: {name} serves {logged['version']} again (was {logged['replaced']})")


@adapters_app.command("history")
def history_cmd(
    name: str = typer.Argument(None, help="Only this adapter."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line, as logged."),
) -> None:
    """Every promotion, refusal and rollback, oldest first, with its figures, who and when."""
    from enclave.adapters.served import ServedRecord

    events = ServedRecord(_settings().adapters_path).history(name)
    if as_json:
        for e in events:
            print(json.dumps(e, sort_keys=True))
        return
    table = Table()
    for col in ("when", "action", "adapter", "version", "was served", "right gain [95% CI]", "margin", "by"):
        table.add_column(col)
    for e in events:
        table.add_row(
            e.get("at", ""),
            e.get("action", "") + (" (forced)" if e.get("forced") else ""),
            e.get("name", ""),
            e.get("version") or "",
            e.get("replaced") or e.get("against") or "",
            gain_text(e.get("figures")),
            "" if e.get("margin") is None else f"{e['margin']:+.1%}",
            e.get("by") or "",
        )
    out.print(table)


def gain_text(figures: dict[str, Any] | None) -> str:
    if not figures:
        return ""
    g = figures["right_gain"]
    return f"{g['difference']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}] (n={figures['questions']})"
