"""Feedback as training data: accepted corrections and up-rated document answers as QA pairs with provenance.

They are checked like the document pairs and merged with them, a person's correction first.

What becomes a pair, and how it is checked:
- an accepted correction (review state `accepted`, a corrected answer present): the rated turn's question and the
  correction. A reviewer has vouched for it, and it may hold what the documents do not (that is often why the
  answer was wrong), so it is kept either way; it is only marked: `checks["documents_support"]` says whether the
  passages its question retrieves support every sentence of it (None when there was no collection to ask).
- an up-rated document answer (rating `up`, route `rag`, citations checked and not declined, not rejected by a
  reviewer): the question and the answer as it was, without its citation marks. It must pass `vet`'s checks: the
  question retrieves one of the answer's source pages among the top 5, and every sentence is supported
  (`enclave.chat.grounding`) by the passages it was answered from, as the knowledge base holds them now.
Pending and rejected corrections, down-ratings without a correction, and up-rated answers of the adapter or
the base model (nothing to check them against) are not used; the summary counts them.

With a collection, the feedback used is the ratings of that collection's answers and the corrections of answers
that used no collection (the adapter's or base model's: what the adapter trained on it should have said).

Feedback pairs are split into train and eval by conversation, so an evaluation can hold a conversation out
whole. `merge_pairs` drops a question asked twice, keeping the pair of the first source in ORIGINS; the same
words once normalised for every pair, and near-duplicates (embedding cosine) against feedback pairs only, since
`vet` already drops near-duplicates among the document pairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from enclave.adapters.tuning.dataset import Embed, Progress, QAPair, split_of
from enclave.chat.conversations import ConversationStore
from enclave.chat.feedback import MAX_PAGE, feedback_query
from enclave.chat.grounding import Grounded, ground
from enclave.core.errors import InvalidRequest
from enclave.core.protocols import Chunk, Principal
from enclave.knowledge.store import KnowledgeBase

ORIGINS = ("correction", "rated_answer", "document")  # the order a duplicate question is kept in
NEAR_DUPLICATE = 0.95  # a question this close (embedding cosine) to a feedback pair's is the same question
SEARCH_K = 5  # as `enclave tune dataset` vets the document pairs

Summary = dict[str, Counter[str]]  # per origin: considered, kept, and why the others were dropped or not used

# Why a pair was dropped (counted in "considered"), in words for the summary.
DROPS = {
    "no_question": "no question before the answer",
    "no_citations": "no checked citations",
    "declined": "declined or caveated",
    "sources_gone": "its passages are gone",
    "not_retrieved": "question does not find its page",
    "unsupported": "answer not supported",
    "duplicate": "near-duplicate question",
    "duplicate_of_correction": "same question as a correction",
    "duplicate_of_rated_answer": "same question as a rated answer",
    "duplicate_of_document": "same question as a document pair",
}
# Feedback that is not used (not counted in "considered"), and what kept pairs are marked with.
NOTES = {
    "pending": "awaiting review",
    "rejected": "rejected by a reviewer",
    "no_correction": "down-rated without a correction",
    "not_from_documents": "answered by the adapter or base model",
    "documents_do_not_support": "kept, though the documents do not support them",
}

_CITATION = re.compile(r"\s*\[\d{1,2}(?:\s*,\s*\d{1,2})*\]")


def new_summary() -> Summary:
    return {origin: Counter() for origin in ORIGINS}


def origin_of(pair: QAPair) -> str:
    """A pair's source; a pair from a dataset made before provenance existed came from the documents."""
    return str(pair.provenance.get("source") or "document")


class Documents:
    """What the checks ask the knowledge base: a question's top passages, and passages by id with their vectors."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.names = kb.collection_names()
        self.principal = Principal(name="tune", admin=True)

    def search(self, question: str, collection: str | None) -> list[Chunk]:
        if collection not in self.names:
            return []
        try:
            return self.kb.search(question, collection, self.principal, k=SEARCH_K)
        except InvalidRequest:  # a question longer than a search may be: it finds nothing
            return []

    def passages(self, collection: str | None, ids: list[str]) -> dict[str, tuple[str, Any]]:
        """The passages of `ids` still in `collection`: id -> (text, stored vector)."""
        if collection not in self.names or not ids:
            return {}
        got = self.kb.client.get_collection(collection).get(ids=ids, include=["documents", "embeddings"])
        vectors = got.get("embeddings")
        vectors = [None] * len(got["ids"]) if vectors is None else list(vectors)
        return {i: (t, v) for i, t, v in zip(got["ids"], got["documents"], vectors, strict=True) if t}

    def embed(self, texts: list[str]) -> Any:
        return self.kb.embedder.embed(texts)


def read_feedback(
    store: ConversationStore, since: str | None = None, until: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every rating rated (last changed) between `since` and `until`, with its snapshot, a page at a time."""
    query = feedback_query(since=since, until=until, limit=MAX_PAGE)
    while page := store.list_feedback(query):
        yield from page
        query.offset += len(page)


def use_of(fb: dict[str, Any]) -> str:
    """What a rating can become: "correction", "rated_answer", or the NOTES key saying why it is not used."""
    state, snap = fb["review"]["state"], fb["snapshot"]
    if fb["correction"]:
        return "correction" if state == "accepted" else state  # pending | rejected
    if state == "rejected":
        return "rejected"
    if fb["rating"] == "up":
        return "rated_answer" if snap["route"] == "rag" else "not_from_documents"
    return "no_correction"


def in_scope(fb: dict[str, Any], collection: str | None) -> bool:
    """With a collection: ratings of its answers, and corrections of answers that used none (adapter, base)."""
    where = fb["snapshot"]["collection"]
    return collection is None or where == collection or (where is None and bool(fb["correction"]))


def provenance(fb: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "source": source,
        "feedback_id": fb["id"],
        "conversation_id": fb["conversation_id"],
        "message_id": fb["message_id"],
        "reviewed_by": fb["review"]["by"],
        "rated_at": fb["updated_at"],
        "route": fb["snapshot"]["route"],
        "adapter": fb["snapshot"]["adapter"],
        "collection": fb["snapshot"]["collection"],
    }


def all_supported(grounded: list[Grounded]) -> bool:
    return bool(grounded) and all(g.supported for g in grounded)


def weakest(grounded: list[Grounded]) -> float:
    return round(min((max(g.support, default=0.0) for g in grounded), default=0.0), 3)


def correction_pair(fb: dict[str, Any], docs: Documents, collection: str | None, eval_share: float) -> QAPair:
    """An accepted correction as a pair, marked with whether the passages its question retrieves support it."""
    snap = fb["snapshot"]
    question, answer = snap["question"].strip(), fb["correction"].strip()
    hits = docs.search(question, snap["collection"] or collection)
    checks: dict[str, Any] = {"documents_support": None}
    chunk_id, uri, title = "", "", ""
    if snap["sources"]:
        chunk_id, uri, title = (snap["sources"][0].get(k) or "" for k in ("id", "uri", "title"))
    if hits:
        grounded = ground(answer, [h.text for h in hits], docs.embed, [h.embedding for h in hits])
        best = hits[Counter(g.best for g in grounded).most_common(1)[0][0] - 1] if grounded else hits[0]
        chunk_id, uri, title = best.id, best.uri, best.title
        checks = {"documents_support": all_supported(grounded), "support": weakest(grounded)}
    split = split_of(fb["conversation_id"], eval_share)
    return QAPair(question, answer, chunk_id, uri, title, "correction", split, checks, provenance(fb, "correction"))


def rated_pair(fb: dict[str, Any], docs: Documents, eval_share: float) -> QAPair | str:
    """An up-rated document answer as a pair if it passes the checks, else the DROPS key saying why not."""
    snap = fb["snapshot"]
    cites = snap["citations"] or {}
    if cites.get("documents") in ("declined", "caveat") or cites.get("general_knowledge"):
        return "declined"
    if not cites.get("sentences") or cites.get("unverified"):
        return "no_citations"
    sources = [s for s in snap["sources"] if s.get("id")]
    passages = docs.passages(snap["collection"], [s["id"] for s in sources])
    if not passages:
        return "sources_gone"
    question, answer = snap["question"].strip(), _CITATION.sub("", snap["answer"]).strip()
    pages = {s.get("uri") for s in sources}
    hits = docs.search(question, snap["collection"])
    page_rank = next((n for n, h in enumerate(hits, 1) if h.uri in pages), None)
    if page_rank is None:
        return "not_retrieved"
    ids = list(passages)
    grounded = ground(answer, [passages[i][0] for i in ids], docs.embed, [passages[i][1] for i in ids])
    if not all_supported(grounded):
        return "unsupported"
    best = ids[Counter(g.best for g in grounded).most_common(1)[0][0] - 1]
    source = next(s for s in sources if s["id"] == best)
    checks = {"page_rank": page_rank, "support": weakest(grounded)}
    split = split_of(fb["conversation_id"], eval_share)
    return QAPair(
        question,
        answer,
        best,
        source.get("uri") or "",
        source.get("title") or "",
        "rated_answer",
        split,
        checks,
        provenance(fb, "rated_answer"),
    )


def feedback_pairs(
    store: ConversationStore,
    kb: KnowledgeBase,
    since: str | None = None,
    until: str | None = None,
    collection: str | None = None,
    eval_share: float = 0.2,
    progress: Progress | None = None,
) -> tuple[list[QAPair], Summary]:
    """Accepted corrections and up-rated document answers in `store` as checked QA pairs, and the summary."""
    summary = new_summary()
    docs = Documents(kb)
    used: list[tuple[str, dict[str, Any]]] = []
    for fb in read_feedback(store, since, until):
        if not in_scope(fb, collection):
            continue
        use = use_of(fb)
        if use in ORIGINS:
            used.append((use, fb))
        else:
            summary["rated_answer" if fb["rating"] == "up" and not fb["correction"] else "correction"][use] += 1
    pairs: list[QAPair] = []
    for i, (use, fb) in enumerate(used, 1):
        summary[use]["considered"] += 1
        if not (fb["snapshot"]["question"] or "").strip():
            summary[use]["no_question"] += 1
        elif use == "correction":
            pairs.append(correction_pair(fb, docs, collection, eval_share))
        elif isinstance(made := rated_pair(fb, docs, eval_share), QAPair):
            pairs.append(made)
        else:
            summary[use][made] += 1
        if progress:
            progress(i, len(used))
    return pairs, summary


def normalised(question: str) -> str:
    """A question's words, lower-case, without punctuation: the same question asked with other spacing or marks."""
    return " ".join(re.findall(r"\w+", question.lower()))


def merge_pairs(
    groups: Iterable[list[QAPair]],
    summary: Summary,
    embed: Embed | None = None,
    near: float = NEAR_DUPLICATE,
) -> list[QAPair]:
    """One dataset from several: of pairs asking the same question (the same once normalised, or, with `embed`,
    within `near` cosine of a feedback pair's question), only the first in ORIGINS order is kept (within an
    origin, the first given). Counts the dropped in `summary`, sets each origin's "kept" and the corrections marked
    as not supported by the documents."""
    pairs = [p for group in groups for p in group]
    for p in pairs:
        p.provenance = p.provenance or {"source": "document"}
    pairs.sort(key=lambda p: ORIGINS.index(origin_of(p)))  # stable: the order given within an origin
    vectors = _unit_vectors(embed, pairs) if embed and any(origin_of(p) != "document" for p in pairs) else None
    kept: list[QAPair] = []
    seen: dict[str, str] = {}
    near_rows: list[int] = []  # feedback pairs kept: the ones a question may be a near-duplicate of
    for i, p in enumerate(pairs):
        key, origin = normalised(p.question), origin_of(p)
        twin = seen.get(key)
        if twin is None and vectors is not None and near_rows:
            cos = vectors[near_rows] @ vectors[i]
            if float(cos.max()) >= near:
                twin = origin_of(pairs[near_rows[int(cos.argmax())]])
        if twin is not None:
            summary[origin][f"duplicate_of_{twin}"] += 1
            continue
        seen[key] = origin
        kept.append(p)
        if origin != "document":
            near_rows.append(i)
    for origin in ORIGINS:
        summary[origin]["kept"] = sum(origin_of(p) == origin for p in kept)
    marked = [p for p in kept if origin_of(p) == "correction" and p.checks.get("documents_support") is False]
    summary["correction"]["documents_do_not_support"] = len(marked)
    return kept


def _unit_vectors(embed: Callable[[list[str]], Any], pairs: list[QAPair]) -> Any:
    vecs = np.asarray(embed([p.question for p in pairs]), dtype=np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
