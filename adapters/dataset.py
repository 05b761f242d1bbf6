"""QA pairs from a collection's chunks, as JSONL with provenance and a train/eval split.

The default generator needs no model: headings become questions answered by their section's
key sentences, and definitions ("X is …") become "What is X?". The LLM generator asks any
configured backend to write pairs, for a bigger on-prem model that writes better ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.errors import InvalidRequest
from service.protocols import GenerationBackend, GenerationParams, Message


@dataclass
class QAPair:
    question: str
    answer: str
    chunk_id: str
    source: str
    title: str
    kind: str
    split: str = "train"


@dataclass
class ChunkRecord:
    id: str
    text: str
    title: str
    uri: str
    section: str = ""


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
_MARKUP = re.compile(r"(^#+\s*|^\s*[-*+]\s+|^\s*\d+\.\s+|\*\*|__|`|\[(?P<txt>[^\]]*)\]\([^)]*\))", re.M)
_DEFINITION = re.compile(
    r"^(?:The |An? )?(?P<subj>(?!The |An? )[A-Za-z`][\w`\-/ ]{1,40}?)"
    r" (?P<verb>is|are|means|stores|keeps|runs|lets you|answers) (?P<rest>.{12,})$"
)


def clean(text: str) -> str:
    text = _MARKUP.sub(lambda m: m.group("txt") or "", text)
    return " ".join(text.split())


def sentences(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        if block.lstrip().startswith("```"):
            continue  # code is no answer to a spoken question
        flat = clean(block)
        out += [s.strip() for s in _SENTENCE.split(flat) if len(s.strip()) > 20]
    return out


def split_of(question: str, eval_share: float) -> str:
    h = int(hashlib.sha256(question.lower().encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < eval_share else "train"


def generate_pairs(chunks: Iterable[ChunkRecord], eval_share: float = 0.2) -> list[QAPair]:
    """Deterministic pairs: the same chunks always give the same pairs and split."""
    pairs: dict[str, QAPair] = {}

    def add(q: str, a: str, c: ChunkRecord, kind: str) -> None:
        key = q.lower()
        if key not in pairs and len(a) > 20:
            pairs[key] = QAPair(q, a, c.id, c.uri, c.title, kind, split_of(q, eval_share))

    for c in chunks:
        text = c.text
        if c.section and text.startswith(c.section + "\n"):  # the index puts the heading first
            text = text[len(c.section) + 1 :]
        sents = sentences(text)
        if not sents:
            continue
        section = clean(c.section).strip(" :") if c.section else ""
        if section and section.lower() != c.title.lower():
            answer = " ".join(sents[:2])
            topic = _ARTICLE.sub(lambda m: m.group(1).lower() + " ", section)
            topic = topic if topic[:2].isupper() else topic[0].lower() + topic[1:]
            add(f"What does the guide say about {topic}?", answer, c, "heading")
            add(f"Explain {topic}.", answer, c, "heading")
        for i, s in enumerate(sents):
            m = _DEFINITION.match(s)
            if not m:
                continue
            subj = m.group("subj").strip("` ")
            words = subj.lower().split()
            if _PRONOUNS.intersection(words) or words[0] in _PREPOSITIONS:
                continue
            verb = m.group("verb")
            answer = " ".join(sents[i : i + 2])
            if verb in ("is", "are", "means"):
                add(f"What {'are' if verb == 'are' else 'is'} {subj}?", answer, c, "definition")
            else:
                add(f"What does {subj} do?", answer, c, "definition")
    return sorted(pairs.values(), key=lambda p: (p.source, p.chunk_id, p.question))


_ARTICLE = re.compile(r"^(The|A|An) ")
_PREPOSITIONS = {"on", "in", "at", "for", "when", "if", "with", "from", "by", "after", "before", "every"}
_PRONOUNS = {"it", "this", "that", "they", "these", "those", "there", "he", "she", "we", "you", "which"}

_QA = re.compile(r"Q:\s*(?P<q>.+?)\s*A:\s*(?P<a>.+)", re.S)


async def generate_pairs_llm(
    backend: GenerationBackend, chunks: Iterable[ChunkRecord], eval_share: float = 0.2
) -> list[QAPair]:
    """Pairs written by a model through any backend: one question and answer per chunk."""
    out = []
    for c in chunks:
        prompt = [
            Message(
                role="system",
                content="You write one question a reader would ask about a passage, "
                "and its answer from the passage. Reply exactly as:\nQ: <question>\nA: <answer>",
            ),
            Message(role="user", content=c.text[:1500]),
        ]
        text = "".join([p async for p in backend.stream(prompt, GenerationParams(max_tokens=120, temperature=0))])
        m = _QA.search(text)
        if m and m.group("q").strip().endswith("?"):
            q, a = m.group("q").strip(), " ".join(m.group("a").split())
            out.append(QAPair(q, a, c.id, c.uri, c.title, "llm", split_of(q, eval_share)))
    return out


def save_pairs(pairs: list[QAPair], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(asdict(p)) + "\n" for p in pairs))
    tmp.replace(path)


def load_pairs(path: Path) -> list[QAPair]:
    if not path.is_file():
        raise InvalidRequest(f"dataset not found: {path}")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row: dict[str, Any] = json.loads(line)
            pairs.append(QAPair(**row))
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidRequest(f"{path}:{n}: not a QA pair: {exc}") from exc
    if not pairs:
        raise InvalidRequest(f"dataset {path} is empty")
    return pairs
