"""Answer quality, per answer, on documents no one here wrote: `python -m bench.answers`.

Two corpora from Debian's packages, each its own collection:
- `pylib`: the Python 3.11 library reference (`python3.11-doc`). A module page's one-line synopsis (an HTML
  attribute, not page text) becomes "Which Python module should I use for this: <synopsis>?"; the answer
  must name the module and cite a passage of its page.
- `man`: the section 1 and 8 man pages of Debian's essential command-line packages (coreutils, util-linux,
  findutils, diffutils, grep, sed, tar, gzip, procps). A page's NAME line ("ls - list directory contents")
  becomes "Which command should I use for this: list directory contents?"; the answer must name the command
  and cite its page.
- unanswerable: Python questions asked of the `man` collection. The right answer says the documents do not
  say; naming a module there is an invention.

Every question goes through the real chat pipeline in process (moderation, `route: rag`, retrieval, the RAG
prompt, the engine, the output gate), greedy unless the settings say otherwise. Per answer: names the
expected entity; cites the expected page; sentences supported by a cited passage (`service/chat/grounding`);
degenerate (a repetition loop); seed 003's metric (MiniLM cosine to a reference answer, acceptable ≥ 0.5);
tokens, TTFT and tokens/s. Shares carry Wilson 95% intervals; `--against other.json` compares two runs
question by question with a paired bootstrap. Prints a table, writes JSON and a Markdown report with
histograms (`--report`). What is compared (model, prompt, decoding) comes from the settings, e.g.
`ENCLAVE_RAG__PROMPT=passages-in-system python -m bench.answers --label old-prompt`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.machine import cpu_model
from enclave.core.settings import Settings, offline_environment
from enclave.core.stats import wilson

if TYPE_CHECKING:
    from enclave.knowledge.store import KnowledgeBase

ROOT = Path(__file__).resolve().parents[1]
PYDOCS = Path("/usr/share/doc/python3.11/html/library")
MAN_PACKAGES = ("coreutils", "util-linux", "findutils", "diffutils", "grep", "sed", "tar", "gzip", "procps")
OUT = ROOT / "bench" / "results" / "answers.json"
DECODING = ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty", "loop_guard")
DECLINES = re.compile(
    r"(do(es)? not (say|mention|contain|cover|answer|provide|include)|don't (say|mention)|not (mentioned|covered|"
    r"stated|specified)|no (information|mention)|(could|can)( ?no|')t find|not find anything|won't guess|"
    r"is not in the (documents|passages)|no documents about)",
    re.I,
)


# -- the questions -----------------------------------------------------------------------------------
def _clean(description: str) -> str:
    return re.sub(r"\s*\(deprecated\)", "", description).strip().rstrip(".")


def python_questions(docs: Path) -> list[dict[str, Any]]:
    from bench.retrieval import questions

    return [
        {
            "id": f"pylib:{q['module']}",
            "corpus": "pylib",
            "question": f"Which Python module should I use for this: {_clean(q['query'])}?",
            "entity": q["module"],
            "uri": q["uri"],
            "reference": f"Use the {q['module']} module: {q['query']}",
        }
        for q in questions(docs)
    ]


def man_files() -> list[Path]:
    """The man pages the essential packages install (sections 1 and 8), from dpkg's own lists."""
    files: set[Path] = set()
    for pkg in MAN_PACKAGES:
        listing = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=False).stdout
        for line in listing.splitlines():
            if re.fullmatch(r"/usr/share/man/man[18]/[^/]+\.gz", line):
                files.add(Path(line))
    return sorted(f for f in files if f.is_file())


def man_corpus() -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """([(uri, Markdown)], questions); one question per page whose NAME line describes one command."""
    from bench.search_scale import man_markdown

    docs: list[tuple[str, str]] = []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in man_files():
        page = man_markdown(path)
        if page is None:
            continue
        uri, body, description = page
        docs.append((uri, body))
        command = path.name.removesuffix(".gz").rsplit(".", 1)[0]
        key = description.lower()
        if key in seen or len(description.split()) < 2 or not re.fullmatch(r"\w[\w.+-]*", command):
            continue  # two commands, one description: the question could not tell them apart
        seen.add(key)
        out.append(
            {
                "id": f"man:{command}",
                "corpus": "man",
                "question": f"Which command should I use for this: {_clean(description)}?",
                "entity": command,
                "uri": uri,
                "reference": f"Use the {command} command: {description}",
            }
        )
    return docs, out


def own_questions(path: Path) -> list[dict[str, Any]]:
    """An operator's own questions, one JSON object per line: `question` and `collection` (required), `expect`
    (a word the right answer names), `source` (the URI of the document it should cite), `answer` (a reference
    answer, for seed 003's cosine), `unanswerable` (true: the right answer says the documents do not say)."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, collection = str(row["question"]), str(row["collection"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{n}: needs a JSON object with question and collection ({exc})") from exc
        out.append(
            {
                "id": f"own:{n}",
                "corpus": collection,
                "collection": collection,
                "question": question,
                "entity": str(row.get("expect") or ""),
                "uri": str(row.get("source") or ""),
                "reference": str(row.get("answer") or question),
                "unanswerable": bool(row.get("unanswerable")),
            }
        )
    if not out:
        raise SystemExit(f"{path} holds no questions")
    return out


def spread(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` items spaced evenly through the sorted list (the same ones every run)."""
    if n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


COMPANY = ROOT / "bench" / "data" / "company_questions.jsonl"


def company_questions(path: Path = COMPANY) -> list[dict[str, Any]]:
    """Questions about the organisation that no document answers, asked with the route left to Enclave."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {
            "id": f"company:{n}",
            "corpus": "company",
            "question": r["question"],
            "entity": "",
            "uri": "",
            "reference": r["question"],
            "unanswerable": True,
            "kind": "company",
            "route": "auto",
        }
        for n, r in enumerate(rows, 1)
    ]


def plan(
    py_qs: list[dict[str, Any]], man_qs: list[dict[str, Any]], per_corpus: int, near: int, off: int
) -> dict[str, Any]:
    """Which questions are asked, and which pages each collection lacks. Disjoint sets of questions:
    - answerable: `per_corpus` of each corpus, asked of `<corpus>-near`, which holds their pages;
    - near-domain unanswerable: `near` of each corpus, asked of the same `<corpus>-near`, which lacks their pages;
    - off-domain unanswerable: `off` Python questions asked of `man-near`;
    - calibration (bench/answerability fits the decision on these, never on the above): every other question, every
      second one's page removed from `<corpus>-cal`."""
    out: dict[str, Any] = {"answerable": [], "near": [], "off": [], "calibration": [], "removed": {}}
    for corpus, qs in (("pylib", py_qs), ("man", man_qs)):
        asked = spread(qs, per_corpus)
        ids = {q["id"] for q in asked}
        rest = [q for q in qs if q["id"] not in ids]
        gone = spread(rest, near)
        ids |= {q["id"] for q in gone}
        rest = [q for q in rest if q["id"] not in ids]
        if corpus == "pylib":
            offs = spread(rest, off)
            ids |= {q["id"] for q in offs}
            rest = [q for q in rest if q["id"] not in ids]
            out["off"] = [
                {**q, "id": "none:" + q["entity"], "unanswerable": True, "kind": "off", "collection": "man-near"}
                for q in offs
            ]
        out["answerable"] += [{**q, "collection": f"{corpus}-near", "kind": "answerable"} for q in asked]
        out["near"] += [
            {**q, "id": "near:" + q["id"], "unanswerable": True, "kind": "near", "collection": f"{corpus}-near"}
            for q in gone
        ]
        cal_removed = rest[1::2]
        removed = {q["uri"] for q in cal_removed}
        out["calibration"] += [
            {**q, "collection": f"{corpus}-cal", "answerable": q["uri"] not in removed} for q in rest
        ]
        out["removed"][f"{corpus}-near"] = sorted({q["uri"] for q in gone})
        out["removed"][f"{corpus}-cal"] = sorted(removed)
    return out


def copy_without(kb: KnowledgeBase, source: str, target: str, uris: list[str]) -> None:
    """`target`: a copy of collection `source` without the chunks of the documents at `uris` (vectors copied, not
    embedded again). Made once; an existing target is kept."""
    from enclave.knowledge.chroma import get_all

    if target in kb.collection_names():
        return
    src = kb._collection(source)
    got = get_all(src, ["documents", "metadatas", "embeddings"])
    drop = set(uris)
    keep = [i for i, m in enumerate(got["metadatas"]) if m.get("uri") not in drop]
    missing = drop - {m.get("uri") for m in got["metadatas"]}
    if missing:
        raise SystemExit(f"{source} lacks pages it should hold: {sorted(missing)[:3]}")
    dst = kb._collection(target, create=True)
    for a in range(0, len(keep), 2000):
        part = keep[a : a + 2000]
        dst.add(
            ids=[got["ids"][i] for i in part],
            documents=[got["documents"][i] for i in part],
            metadatas=[got["metadatas"][i] for i in part],
            embeddings=[got["embeddings"][i] for i in part],
        )
    kb._changed(target)


def prepare(runner: Runner, console: Console, per_corpus: int, near: int, off: int) -> dict[str, Any]:
    """The two corpora ingested, the question plan, and the collections without their removed pages."""
    man_docs, man_qs = man_corpus()
    py_qs = python_questions(PYDOCS)
    ingest(runner, "pylib", [(str(p.resolve()), p.read_bytes()) for p in sorted(PYDOCS.glob("*.html"))], console)
    ingest(runner, "man", [(uri, body.encode()) for uri, body in man_docs], console)
    planned = plan(py_qs, man_qs, per_corpus, near, off)
    for target, uris in planned["removed"].items():
        copy_without(runner.kb, target.split("-")[0], target, uris)
    return planned


# -- scoring -----------------------------------------------------------------------------------------
def names(answer: str, entity: str) -> bool:
    """The entity as a word of its own (`json`, `json.dumps`, not `jsonschema`), case-sensitive."""
    if not entity:
        return False
    return re.search(rf"(?<![\w.-]){re.escape(entity)}(?![\w-])", answer) is not None


def degenerate(answer: str, finish_reason: str) -> bool:
    """A repetition loop: the engine said so, or the answer's tail repeats one short stretch of words."""
    if finish_reason == "repetition":
        return True
    words = answer.split()
    tail = words[-60:]
    for period in range(1, 13):
        reps = 1
        while (reps + 1) * period <= len(tail) and tail[-(reps + 1) * period : -reps * period] == tail[-period:]:
            reps += 1
        if reps >= 3 and reps * period >= 12:
            return True
    four = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return len(words) >= 24 and len(set(four)) < 0.5 * len(four)


def paired(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """Mean difference (ours - theirs) per metric over the questions both asked, with a bootstrap 95% interval."""
    import numpy as np

    common = sorted(set(ours) & set(theirs))
    if not common:
        raise ValueError("the two runs share no question")
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(common), size=(10_000, len(common)))
    out: dict[str, Any] = {"questions": len(common)}
    for metric in metrics:
        pairs = [(ours[q].get(metric), theirs[q].get(metric)) for q in common]
        diff = np.array([float(a) - float(b) for a, b in pairs if a is not None and b is not None])
        if diff.size == 0:
            continue
        means = diff[picks[:, : diff.size] % diff.size].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[metric] = {
            "difference": round(float(diff.mean()), 3),
            "ci95": [round(float(low), 3), round(float(high), 3)],
            "within_noise": bool(low <= 0 <= high),
        }
    return out


# -- running -----------------------------------------------------------------------------------------
class Runner:
    """The pipeline in this process, with the knowledge base the corpora were ingested into."""

    def __init__(self, settings: Settings) -> None:
        from enclave.api.state import State

        self.state = State(settings)

    @property
    def kb(self) -> KnowledgeBase:
        """The knowledge base, which `start` opened."""
        assert self.state.kb is not None, "Runner.start loads the knowledge base"
        return self.state.kb

    async def start(self) -> None:
        await self.state.load()
        if not self.state.ready:
            raise SystemExit(f"could not load: {self.state.load_error}")

    def passages(self, collection: str, ids: list[str]) -> list[str]:
        if not ids:
            return []
        got = self.kb._collection(collection).get(ids=ids, include=["documents"])
        by_id = dict(zip(got["ids"], got["documents"], strict=True))
        return [by_id.get(i, "") for i in ids]

    async def ask(self, q: dict[str, Any], collection: str | None, max_tokens: int) -> dict[str, Any]:
        from enclave.api.auth import ANONYMOUS
        from enclave.chat.schema import ChatRequest

        route = q.get("route", "rag")
        req = ChatRequest(message=q["question"], route=route, collection=collection, max_tokens=max_tokens)
        registry = self.state.pipeline.metrics.registry
        grounded_before = registry.get_sample_value("enclave_grounding_seconds_sum") or 0.0
        t0 = time.perf_counter()
        ttft: float | None = None
        text, sources, done, error, citations, routed = "", [], {}, None, None, {}
        async for ev in self.state.pipeline.run(req, ANONYMOUS):
            kind = ev.type
            if kind == "route":
                routed = ev.model_dump()
            elif kind == "token":
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text += ev.text  # type: ignore[union-attr]
            elif kind == "sources":
                sources = [s.model_dump() for s in ev.sources]  # type: ignore[union-attr]
            elif kind == "citations":
                citations = ev.model_dump()
            elif kind == "done":
                done = ev.model_dump()
            elif kind == "error":
                error = ev.model_dump()
        elapsed = time.perf_counter() - t0
        # What the pipeline's own check took (it reuses the passages' stored vectors).
        grounding_s = (registry.get_sample_value("enclave_grounding_seconds_sum") or 0.0) - grounded_before
        usage = done.get("usage", {})
        tokens = int(usage.get("completion_tokens", 0))
        decode_s = elapsed - (ttft or 0.0)
        from enclave.chat.grounding import UNVERIFIED_NOTICE
        from enclave.chat.rag import GENERAL_LABEL

        text, _, general = text.partition("\n\n" + GENERAL_LABEL)
        model_text, _, quoted = text.partition("\n\n" + UNVERIFIED_NOTICE)
        return {
            "answer": model_text,
            "general": general.strip(),
            "route": routed.get("route"),
            "answerable_p": (routed.get("scores") or {}).get("answerable"),
            "documents": done.get("documents"),
            "quoted_instead": bool(quoted),
            "pipeline_citations": citations,
            "grounding_ms": round(1000 * grounding_s, 2) if citations else None,
            "sources": sources,
            "finish_reason": done.get("finish_reason") or (error or {}).get("code"),
            "tokens": tokens,
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "ttft_ms": round(1000 * ttft, 1) if ttft is not None else None,
            "answer_ms": round(1000 * elapsed, 1),  # question sent to `done`: what the person waits for the whole
            # Tokens after the first released one over the time after it: the moderation hold-back releases a
            # short answer's tokens in a burst, so this overstates the engine's own decode rate on short answers.
            "tokens_per_s": round(tokens / decode_s, 1) if tokens > 1 and decode_s > 0 else None,
        }


def score(q: dict[str, Any], got: dict[str, Any], passages: list[str], embed: Any) -> dict[str, Any]:
    from enclave.chat.grounding import SUPPORTED, citations_in, ground

    answer = got["answer"]
    cited = [n for n in citations_in(answer) if 0 < n <= len(got["sources"])]
    cited_uris = {got["sources"][n - 1]["uri"] for n in cited}
    grounded = ground(answer, passages, embed) if answer.strip() else []
    checked = len((got.get("pipeline_citations") or {}).get("sentences", []))
    vec = embed([answer or " ", q["reference"]])
    cosine = sum(a * b for a, b in zip(vec[0], vec[1], strict=True))
    row = {
        **q,
        **got,
        "retrieved_page": any(s["uri"] == q["uri"] for s in got["sources"]),
        # None: the question says nothing to check this against (an operator's question without `expect`/`source`).
        # A decline names nothing as the answer, whatever its quoted passages mention.
        "names_entity": (names(answer, q["entity"]) and got.get("documents") != "declined") if q["entity"] else None,
        "cites_page": q["uri"] in cited_uris if q["uri"] else None,
        "cites_any": bool(cited),
        "sentences": len(grounded),
        "supported_sentences": sum(g.supported_by_citation for g in grounded),
        "unsupported_share": (
            round(sum(not g.supported_by_citation for g in grounded) / len(grounded), 3) if grounded else None
        ),
        "support": [round(g.cited_support, 3) for g in grounded],
        "degenerate": degenerate(answer, str(got["finish_reason"])),
        "cosine": round(float(cosine), 4),
        "declined": got.get("documents") == "declined"
        or (bool(DECLINES.search(answer)) and not (q["entity"] and names(answer, q["entity"]))),
        "general_right": names(got.get("general", ""), q["entity"]) if q["entity"] and got.get("general") else None,
        "support_threshold": SUPPORTED,
        # What the pipeline's check cost per sentence it checked.
        "grounding_ms_per_sentence": (
            round(got["grounding_ms"] / checked, 2) if checked and got.get("grounding_ms") is not None else None
        ),
    }
    row["outcome"] = outcome(row)
    return row


def outcome(row: dict[str, Any]) -> str:
    """What the person reads, in one word. Answerable: right, declined (a false decline), flagged (shown as not
    verified, the passages quoted) or wrong. Unanswerable: declined, right (named the expected thing from another
    page), flagged, or fabricated (anything else said as an answer, as if the documents said it)."""
    if row.get("names_entity"):
        return "right"
    if row["declined"]:
        return "declined"
    if row.get("quoted_instead"):
        return "flagged"  # shown under "I could not verify this answer", the passages quoted after it
    return "fabricated" if row.get("unanswerable") else "wrong"


def _after_check(items: list[dict[str, Any]]) -> dict[str, Any]:
    flags = [
        bool(c["unsupported"])
        for r in items
        if not r.get("quoted_instead")  # an unverified answer is not shown as checked: its passages are quoted
        for c in (r.get("pipeline_citations") or {}).get("sentences", [])
    ]
    k, n = sum(flags), len(flags)
    return {"share": round(k / n, 3) if n else None, "k": k, "n": n, "ci95": wilson(k, n)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    answerable = [r for r in rows if not r.get("unanswerable")]
    unanswerable = [r for r in rows if r.get("unanswerable")]

    def share(items: list[dict[str, Any]], key: str) -> dict[str, Any]:
        items = [r for r in items if r[key] is not None]  # rows with nothing to check this against
        k = sum(bool(r[key]) for r in items)
        n = len(items)
        return {"share": round(k / n, 3) if n else None, "k": k, "n": n, "ci95": wilson(k, n)}

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        s = sorted(values)
        return round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)], 1)

    out: dict[str, Any] = {}
    for corpus in sorted({r["corpus"] for r in answerable}):
        items = [r for r in answerable if r["corpus"] == corpus]
        sentences = sum(r["sentences"] for r in items)
        unsupported = sum(r["sentences"] - r["supported_sentences"] for r in items)
        out[corpus] = {
            "questions": len(items),
            "retrieved_page": share(items, "retrieved_page"),
            "names_entity": share(items, "names_entity"),
            "cites_page": share(items, "cites_page"),
            "degenerate": share(items, "degenerate"),
            "cosine_acceptable": share([{**r, "ok": r["cosine"] >= 0.5} for r in items], "ok"),
            "unsupported_sentences": {
                "share": round(unsupported / sentences, 3) if sentences else None,
                "k": unsupported,
                "n": sentences,
                "ci95": wilson(unsupported, sentences),
            },
            # After Enclave's check: a sentence the pipeline's `citations` event ties to no passage.
            "unsupported_after_check": _after_check(items),
            "tokens_mean": round(statistics.fmean(r["tokens"] for r in items), 1),
            # The answers shown as "could not verify" with the passages quoted, and how many of them were right.
            "quoted_instead": share(items, "quoted_instead"),
            "quoted_but_right": share([r for r in items if r["quoted_instead"]], "names_entity"),
            "false_declines": share([{**r, "x": outcome(r) == "declined"} for r in items], "x"),
            "outcomes": {o: sum(outcome(r) == o for r in items) for o in ("right", "declined", "flagged", "wrong")},
        }
    if unanswerable:
        out["unanswerable"] = {
            "questions": len(unanswerable),
            "declined": share(unanswerable, "declined"),
            "named_a_module": share(
                [{**r, "x": names(r["answer"], r["entity"]) if r["entity"] else None} for r in unanswerable], "x"
            ),
            "degenerate": share(unanswerable, "degenerate"),
        }
    # Honesty, per kind of unanswerable question: declined, right anyway, fabricated.
    for kind in ("near", "off", "company"):
        items = [{**r, "o": outcome(r)} for r in unanswerable if r.get("kind") == kind]
        if items:
            out[f"honesty_{kind}"] = {
                "questions": len(items),
                **{
                    o: share([{**r, "x": r["o"] == o} for r in items], "x")
                    for o in ("declined", "right", "flagged", "fabricated")
                },
                "honest": share([{**r, "x": r["o"] in ("declined", "right")} for r in items], "x"),
                "general_right": share([r for r in items if r.get("general_right") is not None], "general_right"),
            }
    ttft = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
    tps = [r["tokens_per_s"] for r in rows if r["tokens_per_s"] is not None]
    whole = [float(w) for w in (r.get("answer_ms") or _answer_ms(r) for r in rows) if w is not None]
    ground_ms = [r["grounding_ms_per_sentence"] for r in rows if r.get("grounding_ms_per_sentence") is not None]
    out["speed"] = {
        "ttft_ms_p50": pct(ttft, 0.5),
        "ttft_ms_p95": pct(ttft, 0.95),
        "tokens_per_s_p50": pct(tps, 0.5),
        "answer_ms_p50": pct(whole, 0.5),
        "answer_ms_p95": pct(whole, 0.95),
        "grounding_ms_per_sentence_p50": pct(ground_ms, 0.5),
        "grounding_ms_per_sentence_p95": pct(ground_ms, 0.95),
        "prompt_tokens_mean": round(statistics.fmean(r["prompt_tokens"] for r in rows), 1) if rows else None,
    }
    return out


def _answer_ms(r: dict[str, Any]) -> float | None:
    """The whole answer's time of a run recorded before `answer_ms` was: TTFT plus the streaming after it."""
    if r.get("ttft_ms") is None:
        return None
    return float(r["ttft_ms"]) + (1000 * r["tokens"] / r["tokens_per_s"] if r.get("tokens_per_s") else 0.0)


def ingest(runner: Runner, corpus: str, docs: list[tuple[str, bytes]], console: Console) -> None:
    kb = runner.kb
    existing = kb._collection(corpus, create=True).count()
    if existing:
        return
    with Progress(
        TextColumn(f"[bold]ingest {corpus}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task(corpus, total=len(docs))
        for uri, data in docs:
            kb.ingest_bytes(uri, data, corpus)
            bar.advance(task)


def honesty_curve(result: dict[str, Any], png: Path) -> Path | None:
    """The decision's operating curve on the questions asked: for every threshold on the probability that the
    documents answer, the answerable questions it would decline against the near-domain unanswerable ones it would
    leave honest (declined before generation, or answered and then declined or right); the shipped point marked."""
    rows = [r for r in result["answers"] if r.get("answerable_p") is not None]
    ans = [r for r in rows if r.get("kind") == "answerable"]
    near = [r for r in rows if r.get("kind") == "near"]
    if not ans or not near:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    for t in [i / 100 for i in range(101)]:
        fd = sum(r["answerable_p"] < t or r["outcome"] == "declined" for r in ans) / len(ans)
        honest = sum(r["answerable_p"] < t or r["outcome"] in ("declined", "right") for r in near) / len(near)
        pts.append((fd, honest))
    now_fd = sum(r["outcome"] == "declined" for r in ans) / len(ans)
    now_h = sum(r["outcome"] in ("declined", "right") for r in near) / len(near)
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    ax.plot([a for a, _ in pts], [b for _, b in pts], label="declining below a threshold on the decision")
    ax.plot([now_fd], [now_h], "o", color="C3", label="as served")
    ax.axvline(0.05, color="#999", ls=":", lw=1)
    ax.axhline(0.90, color="#999", ls=":", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"answerable questions declined ({len(ans)})")
    ax.set_ylabel(f"near-domain unanswerable left honest ({len(near)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"bench.answers — {result['label']}: honesty vs false declines")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def honesty(result: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """Each kind of unanswerable question with its summary (None when the run asked none)."""
    return [(kind, result["summary"].get(f"honesty_{kind}")) for kind in ("near", "off", "company")]


def cell(m: dict[str, Any]) -> str:
    return f"{m['share']:.2f} [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]" if m["share"] is not None else "–"


def report_md(result: dict[str, Any], path: Path) -> None:
    """A Markdown page with the summary table and histograms of support and cosine (PNG beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["answers"] if not r.get("unanswerable")]
    png = path.with_suffix(".png")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].hist([s for r in rows for s in r["support"]], bins=20, range=(0, 1), color="#4a7")
    axes[0].axvline(rows[0]["support_threshold"] if rows else 0.5, color="k", ls="--")
    axes[0].set_title("support of each sentence by its cited passage")
    axes[1].hist([r["cosine"] for r in rows], bins=20, range=(0, 1), color="#47a")
    axes[1].axvline(0.5, color="k", ls="--")
    axes[1].set_title("seed 003: cosine to the reference answer")
    axes[2].hist([r["tokens"] for r in rows], bins=20, color="#a74")
    axes[2].set_title("answer length (tokens)")
    fig.suptitle(f"bench.answers — {result['label']} — {result['model']}")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    lines = [
        f"# bench.answers: {result['label']}",
        "",
        f"{result['model']}, prompt `{result['prompt']}`, decoding {json.dumps(result['decoding'])}; "
        f"{result['machine']['cpu']}, {result['date']}.",
        "",
        "| corpus | questions | right entity | cites its page | degenerate | unsupported sentences (own citations) "
        "| unsupported after Enclave's check | passages quoted instead | cosine ≥ 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for corpus, s in result["summary"].items():
        if corpus in ("speed", "unanswerable") or corpus.startswith("honesty_"):
            continue

        def cell(m: dict[str, Any]) -> str:
            return f"{m['share']:.2f} [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]" if m["share"] is not None else "–"

        lines.append(
            f"| {corpus} | {s['questions']} | {cell(s['names_entity'])} | {cell(s['cites_page'])} | "
            f"{cell(s['degenerate'])} | {cell(s['unsupported_sentences'])} | {cell(s['unsupported_after_check'])} | "
            f"{cell(s['quoted_instead'])} | {cell(s['cosine_acceptable'])} |"
        )
    if "unanswerable" in result["summary"]:
        u = result["summary"]["unanswerable"]
        named = u["named_a_module"]["share"]
        lines += [
            "",
            f"Unanswerable: declined {u['declined']['share']:.2f} of {u['questions']}"
            + (f" (named a module anyway: {named:.2f})." if named is not None else "."),
        ]
    lines += [
        "",
        "| unanswerable | questions | honest (declined or right) | declined | right anyway | flagged unverified "
        "| fabricated |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, h in honesty(result):
        if h:
            lines.append(
                f"| {kind} | {h['questions']} | {cell(h['honest'])} | {cell(h['declined'])} | {cell(h['right'])} | "
                f"{cell(h['flagged'])} | {cell(h['fabricated'])} |"
            )
    for corpus, s in result["summary"].items():
        if isinstance(s, dict) and "false_declines" in s:
            lines.append(f"\n{corpus}: false declines {cell(s['false_declines'])}.")
    curve_png = honesty_curve(result, path.with_name(path.stem + "_curve.png"))
    if curve_png:
        lines += ["", f"![operating curve]({curve_png.name})"]
    sp = result["summary"]["speed"]
    lines += [
        "",
        f"TTFT p50 {sp['ttft_ms_p50']} ms, p95 {sp['ttft_ms_p95']} ms; decode p50 {sp['tokens_per_s_p50']} tokens/s; "
        f"prompts of {sp['prompt_tokens_mean']} tokens on average; grounding {sp.get('grounding_ms_per_sentence_p50')} "
        f"ms per sentence p50, {sp.get('grounding_ms_per_sentence_p95')} p95.",
        "",
        f"![histograms]({png.name})",
        "",
    ]
    if result.get("against"):
        lines += ["## Against " + result["against"]["label"], "", "```", json.dumps(result["against"], indent=1), "```"]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench-answers", help="bench data dir")
    ap.add_argument("--fresh", action="store_true", help="re-ingest the corpora")
    ap.add_argument("--per-corpus", type=int, default=60, help="questions per corpus")
    ap.add_argument("--unanswerable", type=int, default=30, help="off-domain: Python questions asked of the man pages")
    ap.add_argument("--near", type=int, default=20, help="near-domain per corpus: asked without their page")
    ap.add_argument("--company", type=int, default=20, help="questions about the organisation (route auto)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--label", default="default")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", type=Path, help="Markdown report (a PNG of histograms goes beside it)")
    ap.add_argument("--against", type=Path, help="another run's JSON: compare question by question")
    ap.add_argument("--rescore", type=Path, help="recompute the summary (and --report) of a run's JSON, then stop")
    ap.add_argument(
        "--questions",
        type=Path,
        help="your own questions (JSONL: question, collection, expect, source, answer, unanswerable), asked of the "
        "knowledge base in --data (default: the configured data_dir) instead of the two corpora",
    )
    args = ap.parse_args(argv)
    console = Console()
    if args.rescore:
        earlier: dict[str, Any] = json.loads(args.rescore.read_text())
        earlier["summary"] = summarize(earlier["answers"])
        args.rescore.write_text(json.dumps(earlier, indent=1))
        print_table(earlier, console)
        if args.report:
            report_md(earlier, args.report)
        return earlier
    if args.questions:
        own = own_questions(args.questions)
        if args.data == ap.get_default("data"):
            args.data = Settings().data_path
    elif not PYDOCS.is_dir():
        raise SystemExit(f"{PYDOCS} not found: install Debian's python3.11-doc (make pydocs)")
    offline_environment()
    if args.fresh and args.data.exists() and not args.questions:
        shutil.rmtree(args.data)
    os.environ["ENCLAVE_DATA_DIR"] = str(args.data)
    settings = Settings(data_dir=str(args.data))
    settings.rag.ingest_samples = False
    if os.environ.get("ENCLAVE_MODELS__TEMPERATURE") is None:
        settings.models.temperature = 0.0  # greedy: the same answers every run, unless asked otherwise
    runner = Runner(settings)
    asyncio.run(runner.start())

    if args.questions:
        asked, unanswerable = [q for q in own if not q["unanswerable"]], [q for q in own if q["unanswerable"]]
    else:
        planned = prepare(runner, console, args.per_corpus, args.near, args.unanswerable)
        asked = planned["answerable"]
        unanswerable = planned["near"] + planned["off"] + company_questions()[: args.company]
    embed = runner.kb.embedder.embed
    # Each answer is appended here as it is scored, so a run that stops resumes where it was (same label).
    partial = args.out.with_suffix(".partial.jsonl")
    done_before: dict[str, dict[str, Any]] = {}
    if partial.is_file():
        for line in partial.read_text().splitlines():
            row = json.loads(line)
            if row.get("label") == args.label:
                done_before[row["id"]] = row["row"]
    rows: list[dict[str, Any]] = []

    async def run_all() -> None:
        with Progress(
            TextColumn("[bold]answers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("answers", total=len(asked) + len(unanswerable))
            for q in [*asked, *unanswerable]:
                if q["id"] in done_before:
                    rows.append(done_before[q["id"]])
                    bar.advance(task)
                    continue
                collection = q.get("collection")
                got = await runner.ask(q, collection, args.max_tokens)
                # A question with the route left to Enclave may be answered from any collection: not scored for support.
                passages = runner.passages(collection, [s["id"] for s in got["sources"]]) if collection else []
                rows.append(score(q, got, passages, embed))
                with partial.open("a") as f:
                    f.write(json.dumps({"label": args.label, "id": q["id"], "row": rows[-1]}) + "\n")
                bar.advance(task)

    asyncio.run(run_all())
    from enclave.chat.rag import rag_prompt_of
    from enclave.engine.modelfiles import base_gguf

    m = settings.models
    result: dict[str, Any] = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "model": f"{m.name} ({base_gguf(settings).name})",
        "engine": runner.state.backend.engine_status,
        "prompt": rag_prompt_of(settings),
        "retrieval": {
            "rerank": runner.kb.reranker is not None,
            "rerank_margin": settings.rag.rerank_margin,
            "top_k": settings.rag.top_k,
        },
        "decoding": {k: v for k, v in m.model_dump().items() if k in DECODING},
        "max_tokens": args.max_tokens,
        "summary": summarize(rows),
        "answers": rows,
    }
    if args.against:
        other = json.loads(args.against.read_text())
        metrics = ["names_entity", "cites_page", "degenerate", "unsupported_share", "cosine", "declined"]
        mine = {r["id"]: r for r in rows}
        theirs = {r["id"]: r for r in other["answers"]}
        result["against"] = {"label": other["label"], **paired(mine, theirs, metrics)}
    runner.state.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    partial.unlink(missing_ok=True)
    print_table(result, console)
    if args.report:
        report_md(result, args.report)
    return result


def print_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"bench.answers: {result['label']} · {result['model']} · prompt {result['prompt']}")
    cols = ("corpus", "n", "right entity", "cites its page", "degenerate", "unsupported sent.", "after check", "quoted")
    for col in (*cols, "cosine≥0.5"):
        table.add_column(col)

    def cell(m: dict[str, Any]) -> str:
        return "–" if m["share"] is None else f"{m['share']:.2f} [{m['ci95'][0]:.2f}–{m['ci95'][1]:.2f}]"

    for corpus, s in result["summary"].items():
        if corpus in ("speed", "unanswerable") or corpus.startswith("honesty_"):
            continue
        table.add_row(
            corpus,
            str(s["questions"]),
            cell(s["names_entity"]),
            cell(s["cites_page"]),
            cell(s["degenerate"]),
            cell(s["unsupported_sentences"]),
            cell(s["unsupported_after_check"]),
            cell(s["quoted_instead"]),
            cell(s["cosine_acceptable"]),
        )
    console.print(table)
    if "unanswerable" in result["summary"]:
        u = result["summary"]["unanswerable"]
        console.print(f"unanswerable: declined {cell(u['declined'])}, named a module {cell(u['named_a_module'])}")
    for kind, h in honesty(result):
        if h:
            console.print(
                f"{kind}-domain unanswerable ({h['questions']}): honest {cell(h['honest'])} — declined "
                f"{cell(h['declined'])}, right anyway {cell(h['right'])}, flagged {cell(h['flagged'])}, "
                f"fabricated {cell(h['fabricated'])}"
                + (f"; general knowledge right {cell(h['general_right'])}" if h["general_right"]["n"] else "")
            )
    for corpus, s in result["summary"].items():
        if isinstance(s, dict) and "false_declines" in s:
            console.print(f"{corpus}: false declines {cell(s['false_declines'])}")
    console.print(f"speed: {result['summary']['speed']}")
    if result.get("against"):
        console.print(f"against {result['against']['label']}: {json.dumps(result['against'])}")


if __name__ == "__main__":
    main()
