"""Writes the moderation's hard negatives — benign texts full of the words attacks use:
`python -m bench.moderation_negatives` → `enclave/moderation/data/hard_negatives.jsonl`.

Two benign sources, each its own `source` (so leave-one-source-out evaluation holds each out in turn):
- `enclave/trigger-questions`: questions written by Enclave's own model (the embedded default) around trigger
  words, InjecGuard's "MOF" recipe: the words a classifier over-weights are the words attacks use far more often
  than benign texts do (log-odds over the training data), kept where ordinary documentation uses them too (the
  Python library reference), plus the technical phrases an injection filter is known to trip on ("kill a
  process", "execute a query", "ignore whitespace", "override a setting", "act as" a role in a config);
- `enclave/writing-requests`: long requests to draft a document (a story, a report, a plan), written by the same
  model: long instructions to a model are what jailbreak templates are made of, and without them every long writing
  task read as one;
- `man/trigger-sentences`: sentences of this machine's man pages that hold such a word — real documentation no
  one here wrote.
The file is committed; rebuilding it on another machine (other man pages, another CPU's sampling) writes a
similar, not the same, file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from enclave.moderation.classifier import load_rows

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "enclave" / "moderation" / "data" / "hard_negatives.jsonl"
SEED = 31

# Phrases an injection filter trips on in ordinary technical work (the list, and their kin).
PHRASES = [
    "kill a process",
    "execute a query",
    "ignore whitespace",
    "override a setting",
    "act as",
    "terminate the worker",
    "bypass the cache",
    "inject a dependency",
    "exploit",
    "attack surface",
    "root access",
    "sudo",
    "disable the filter",
    "developer mode",
    "system prompt",
    "previous instructions",
    "pretend",
    "role",
    "unrestricted",
    "jailbreak",
    "payload",
    "shell command",
    "drop table",
    "fork bomb",
    "kill switch",
    "purge",
    "dump the memory",
    "forget",
    "reveal",
    "secret",
    "password",
    "token",
    "no restrictions",
    "respond only with",
    "from now on",
]
_WORD = re.compile(r"[a-z][a-z'-]{2,}")
_STOP = set(
    "the and for you your are that this with from not but can will have what how all any its our was were has "
    "into about their them they then than there these those which while who whom also just like only more most "
    "other some such very been being would could should must may might shall".split()
)


def trigger_words(n: int = 30) -> list[str]:
    """The words attacks use far more than benign texts (smoothed log-odds over the training data) that ordinary
    documentation uses too: what a classifier learns to over-weight."""
    from bench.moderation_train import doc_sentences, public_rows

    rows = load_rows("train") + public_rows("train")
    attack: Counter[str] = Counter()
    benign: Counter[str] = Counter()
    for r in rows:
        words = set(_WORD.findall(r["text"].lower())) - _STOP
        (benign if r["label"] == "benign" else attack).update(words)
    docs: Counter[str] = Counter(w for s in doc_sentences() for w in set(_WORD.findall(s.lower())))
    na, nb = sum(attack.values()), sum(benign.values())
    odds = {
        w: math.log((attack[w] + 1) / na) - math.log((benign[w] + 1) / nb)
        for w in attack
        if attack[w] >= 8 and docs[w] >= 3
    }
    return sorted(odds, key=lambda w: -odds[w])[:n]


PROMPT = (
    "Write {k} different questions that a software engineer, a system administrator or an office worker could ask "
    'an internal documentation assistant at work, each using the words "{w}" in an ordinary, harmless sense. '
    "Vary them: some short, some long, some about code, some about tools or office work. One question per line, "
    "no numbering, nothing else."
)


KINDS = [
    "short story",
    "incident report",
    "project plan",
    "marketing email",
    "product description",
    "policy document",
    "speech",
    "blog post",
    "lesson plan",
    "screenplay scene",
    "research summary",
    "job advert",
    "press release",
    "user manual section",
    "poem",
]
TOPICS = ["a villain's revenge", "a data breach", "a security audit", "a heist film", "a war veteran", "a hacker"]
WRITING = (
    "Write a request of 3 to 5 sentences that a user could send to an AI writing assistant, asking it to draft a "
    "{kind} about {topic}: give the audience, the tone, the length and what to include or avoid. Write only the "
    "request itself, in the user's words."
)


def _clean(line: str, word: str) -> str | None:
    text = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip('"').strip()
    if not 5 <= len(text.split()) <= 40 or word.split()[0].lower() not in text.lower():
        return None
    return text


async def written(words: list[str], per_word: int, console: Console) -> list[dict[str, str]]:
    from enclave.core.protocols import GenerationParams, Message
    from enclave.core.settings import Settings
    from enclave.engine.build import build_backend

    settings = Settings()
    backend = build_backend(settings)
    await backend.aload()  # type: ignore[attr-defined]
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    try:
        with Progress(
            TextColumn("[bold]writing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("words", total=len(words))
            for i, word in enumerate(words):
                params = GenerationParams(max_tokens=45 * per_word, temperature=0.8, seed=SEED + i)
                text = "".join(
                    [
                        p
                        async for p in backend.stream(
                            [Message(role="user", content=PROMPT.format(k=per_word, w=word))], params, None
                        )
                    ]
                )
                for line in text.splitlines():
                    q = _clean(line, word)
                    if q and q.lower() not in seen:
                        seen.add(q.lower())
                        out.append({"text": q, "label": "benign", "source": "enclave/trigger-questions", "word": word})
                bar.advance(task)
        rng = random.Random(SEED)
        pairs = [(k, rng.choice(TOPICS)) for k in KINDS for _ in range(2)]
        with Progress(
            TextColumn("[bold]writing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("requests", total=len(pairs))
            for i, (kind, topic) in enumerate(pairs):
                params = GenerationParams(max_tokens=160, temperature=0.8, seed=SEED + 1000 + i)
                prompt = WRITING.format(kind=kind, topic=topic)
                msg = [Message(role="user", content=prompt)]
                text = " ".join("".join([p async for p in backend.stream(msg, params, None)]).split()).strip('"')
                if len(text.split()) >= 20:
                    out.append({"text": text, "label": "benign", "source": "enclave/writing-requests", "word": kind})
                bar.advance(task)
    finally:
        backend.close()  # type: ignore[attr-defined]
    return out


def man_sentences(words: list[str], n: int) -> list[dict[str, str]]:
    """Sentences of this machine's man pages that hold one of `words` (whole words), a seeded sample."""
    from bench.search_scale import man_markdown, man_pages
    from enclave.moderation.sentences import sentences

    rx = re.compile(r"(?i)\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")
    found: list[dict[str, str]] = []
    for page in man_pages(Path("/usr/share/man")):
        md = man_markdown(page)
        if md is None:
            continue
        for para in md[1].split("\n\n"):
            if para.startswith("#"):
                continue
            for a, b in sentences(para):
                s = " ".join(para[a:b].split())
                m = rx.search(s)
                if m and 40 <= len(s) <= 300:
                    found.append({"text": s, "label": "benign", "source": "man/trigger-sentences", "word": m[0]})
    rng = random.Random(SEED)
    rng.shuffle(found)
    per: Counter[str] = Counter()
    out: list[dict[str, str]] = []
    for row in found:  # at most 12 per word, so "token" and "password" do not fill the sample
        if per[row["word"].lower()] < 12 and len(out) < n:
            per[row["word"].lower()] += 1
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-word", type=int, default=5)
    ap.add_argument("--man", type=int, default=400, help="man-page sentences to keep")
    args = ap.parse_args(argv)
    console = Console()
    learned = trigger_words()
    console.print(f"trigger words from the data: {', '.join(learned)}")
    words = list(dict.fromkeys([*PHRASES, *learned]))
    rows = asyncio.run(written(words, args.per_word, console))
    rows += man_sentences([w for w in words if " " not in w], args.man)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    by = Counter(r["source"] for r in rows)
    console.print(f"wrote {len(rows)} rows to {OUT.relative_to(ROOT)}: {dict(by)}")
    return {"words": words, "rows": dict(by)}


if __name__ == "__main__":
    main()
