"""QA pairs from a collection's chunks, as JSONL with provenance and a train/eval split.

Two generators. `rules` needs no model: headings become questions answered by their section's key
sentences, definitions ("X is …") become "What is X?", and every question names its page when its
topic alone would not say what it is about ("What does CREATE TABLE say about synopsis?", not "Explain
synopsis."). `llm` has the served model write a question that names its subject, and its answer, from
each passage, falling back to the rules where the model's reply is unusable. Either way `vet` keeps a
pair only if its question retrieves its own passage, its answer is supported by that passage, and it
is not a near-duplicate of a pair already kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from enclave.core.errors import InvalidRequest
from enclave.core.files import atomic_write
from enclave.core.protocols import GenerationBackend, GenerationParams, Message


@dataclass
class QAPair:
    question: str
    answer: str
    chunk_id: str
    source: str
    title: str
    kind: str
    split: str = "train"
    checks: dict[str, Any] = field(default_factory=dict)  # what `vet` measured: rank of the passage, support
    # Where the pair came from (feedback_data): {"source": "document" | "correction" | "rated_answer", and for
    # feedback its feedback, conversation and message ids and reviewer}; empty in datasets made before it.
    provenance: dict[str, Any] = field(default_factory=dict)


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
        title = clean(c.title).strip(" :")
        if section and section.lower() != title.lower():
            answer = " ".join(sents[:2])
            topic = _ARTICLE.sub(lambda m: m.group(1).lower() + " ", section)
            topic = topic if topic[:2].isupper() else topic[0].lower() + topic[1:]
            where = about(topic, title)
            add(f"What does {title or 'the documentation'} say about {topic}?", answer, c, "heading")
            add(f"Explain {topic}{where}.", answer, c, "heading")
        for i, s in enumerate(sents):
            m = _DEFINITION.match(s)
            if not m:
                # "VACUUM reclaims storage …" on the VACUUM page: the page's subject, then what it does.
                if title and i == 0 and re.match(rf"{re.escape(title)} [a-z]+s\b", s):
                    add(f"What does {title} do?", " ".join(sents[:2]), c, "definition")
                continue
            subj = m.group("subj").strip("` ")
            words = subj.lower().split()
            if _PRONOUNS.intersection(words) or words[0] in _PREPOSITIONS:
                continue
            verb = m.group("verb")
            answer = " ".join(sents[i : i + 2])
            where = about(subj, title)
            if verb in ("is", "are", "means"):
                add(f"What {'are' if verb == 'are' else 'is'} {subj}{where}?", answer, c, "definition")
            else:
                add(f"What does {subj} do{where}?", answer, c, "definition")
    return sorted(pairs.values(), key=lambda p: (p.source, p.chunk_id, p.question))


def about(topic: str, title: str) -> str:
    """ " in <title>" when the topic does not already say which page it is about, else ""."""
    if not title:
        return ""
    t_words, topic_words = set(_WORDS.findall(title.lower())), set(_WORDS.findall(topic.lower()))
    return "" if t_words & topic_words - _GENERIC else f" in {title}"


_WORDS = re.compile(r"[a-z0-9_][\w.\-]*")
_GENERIC = {"the", "a", "an", "of", "and", "or", "to", "in", "for", "on", "with", "guide", "page", "documentation"}
_ARTICLE = re.compile(r"^(The|A|An) ")
_PREPOSITIONS = {"on", "in", "at", "for", "when", "if", "with", "from", "by", "after", "before", "every"}
_PRONOUNS = {"it", "this", "that", "they", "these", "those", "there", "he", "she", "we", "you", "which"}

_QA = re.compile(r"Q\d*:\s*(?P<q>.+?)\s*\n\s*A\d*:\s*(?P<a>.+?)(?=\n\s*Q\d*:|\Z)", re.S)


def writer_prompt(n: int) -> str:
    what = "one question" if n == 1 else f"{n} different questions"
    return (
        f"You write {what} that a colleague would ask, answered by the passage, with the answer. Each question "
        "must name its subject (the command, module, option or feature) so that it makes sense without the "
        "passage. Each answer uses only what the passage says, in one or two sentences. Reply exactly as:\n"
        + "\n".join(["Q: <question>\nA: <answer>"] * n)
    )


WRITER = writer_prompt(1)
Progress = Callable[[int, int], None]


async def generate_pairs_llm(
    backend: GenerationBackend,
    chunks: Iterable[ChunkRecord],
    eval_share: float = 0.2,
    progress: Progress | None = None,
    fallback: bool = True,
    per_chunk: int = 1,
) -> list[QAPair]:
    """Pairs written by the model, up to `per_chunk` per chunk (`kind` "llm"); a chunk whose reply holds no
    usable pair gets the rules' pairs instead (`kind` "heading"/"definition") when `fallback`."""
    chunks = list(chunks)
    out = []
    system = writer_prompt(per_chunk)
    for i, c in enumerate(chunks):
        where = f'From the page "{c.title}"' + (f', section "{c.section}"' if c.section else "") + ":\n\n"
        prompt = [Message(role="system", content=system), Message(role="user", content=where + c.text[:1500])]
        params = GenerationParams(max_tokens=120 * per_chunk, temperature=0)
        text = "".join([p async for p in backend.stream(prompt, params)])
        written = []
        for m in _QA.finditer(text):
            q, a = " ".join(m.group("q").split()), " ".join(m.group("a").split())
            if q.endswith("?") and 12 <= len(q) <= 200 and len(a) > 20:
                written.append(QAPair(q, a, c.id, c.uri, c.title, "llm", split_of(q, eval_share)))
        out += written[:per_chunk]
        if not written and fallback:
            out += generate_pairs([c], eval_share)
        if progress:
            progress(i + 1, len(chunks))
    return out


Search = Callable[[str], Sequence[Any]]  # a question -> the retrieved chunks (objects with .id and .uri)
Embed = Callable[[list[str]], Any]


def vet(
    pairs: list[QAPair],
    chunks: Iterable[ChunkRecord],
    search: Search,
    embed: Embed,
    duplicate: float = 0.92,
    progress: Progress | None = None,
) -> tuple[list[QAPair], dict[str, int]]:
    """The pairs worth training on, and why the others were dropped. A pair is kept when its question
    retrieves its own chunk (or another of its page) among the top results, every sentence of its answer is
    supported by its chunk (`enclave.chat.grounding`), and its question is not within `duplicate` cosine of
    a question already kept."""
    import numpy as np

    from enclave.chat.grounding import ground

    text_of = {c.id: c.text for c in chunks}
    kept: list[QAPair] = []
    kept_vecs: list[Any] = []
    passage_vecs: dict[str, Any] = {}
    why = {"written": len(pairs), "kept": 0, "not_retrieved": 0, "unsupported": 0, "duplicate": 0}
    for i, p in enumerate(pairs):
        if progress:
            progress(i + 1, len(pairs))
        hits = list(search(p.question))
        rank = next((n for n, h in enumerate(hits, 1) if h.id == p.chunk_id), None)
        page_rank = next((n for n, h in enumerate(hits, 1) if h.uri == p.source), None)
        if page_rank is None:
            why["not_retrieved"] += 1
            continue
        passage = text_of.get(p.chunk_id, "")
        if p.chunk_id not in passage_vecs:  # several pairs come from one chunk: embed it once
            passage_vecs[p.chunk_id] = embed([passage])[0]
        grounded = ground(p.answer, [passage], embed, [passage_vecs[p.chunk_id]])
        support = min((max(g.support) for g in grounded), default=0.0)
        if not grounded or not all(g.supported for g in grounded):
            why["unsupported"] += 1
            continue
        vec = np.asarray(embed([p.question])[0], dtype=np.float32)
        vec /= max(float(np.linalg.norm(vec)), 1e-9)
        if kept_vecs and float(np.max(np.vstack(kept_vecs) @ vec)) >= duplicate:
            why["duplicate"] += 1
            continue
        p.checks = {"chunk_rank": rank, "page_rank": page_rank, "support": round(support, 3)}
        kept.append(p)
        kept_vecs.append(vec)
    why["kept"] = len(kept)
    return kept, why


def save_pairs(pairs: list[QAPair], path: Path) -> None:
    atomic_write(path, "".join(json.dumps(asdict(p)) + "\n" for p in pairs))


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
