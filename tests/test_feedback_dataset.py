"""Feedback becomes training data: accepted corrections and up-rated document answers, rated and reviewed through a
real conversation store (SQLite and PostgreSQL), checked against a real knowledge base (Chroma, MiniLM), merged
with document pairs; and `enclave tune dataset --from-feedback` on a SQLite file."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from enclave.adapters.tuning.dataset import ChunkRecord, generate_pairs, load_pairs, save_pairs, split_of
from enclave.adapters.tuning.feedback_data import feedback_pairs, merge_pairs, origin_of
from enclave.chat.conversations import SqlConversationStore
from enclave.core.settings import Settings
from enclave.knowledge.store import KnowledgeBase

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PAGES = {
    "create_table.md": (
        "CREATE TABLE",
        "CREATE TABLE defines a new table in the current database. The table is owned by the user who runs the "
        "command. Basic requirement is that the name differs from any other table, sequence, index or view in the "
        "same schema.",
    ),
    "vacuum.md": (
        "VACUUM",
        "VACUUM reclaims storage occupied by dead tuples. Without it, deleted and updated rows keep taking space on "
        "disk. VACUUM ANALYZE also refreshes the planner's statistics for each table it processes.",
    ),
    "listen.md": (
        "LISTEN",
        "LISTEN registers the current session as a listener on the notification channel. When NOTIFY is run on "
        "that channel, every listening session receives the payload.",
    ),
    "copy.md": (
        "COPY",
        "COPY moves data between tables and files. COPY FROM reads rows from a file into a table, and COPY TO "
        "writes a table's rows out to a file.",
    ),
    "grant.md": (
        "GRANT",
        "GRANT gives privileges on a database object to a role. A role without the SELECT privilege cannot read "
        "the table.",
    ),
    "index.md": (
        "CREATE INDEX",
        "CREATE INDEX builds an index on the given columns of a table. An index lets the planner find rows without "
        "reading the whole table.",
    ),
    "truncate.md": (
        "TRUNCATE",
        "TRUNCATE removes all rows from a set of tables quickly. It does not scan the tables, so it is faster than "
        "DELETE on large tables.",
    ),
    "explain.md": (
        "EXPLAIN",
        "EXPLAIN shows the execution plan the planner generates for a statement. EXPLAIN ANALYZE also runs the "
        "statement and reports the actual times.",
    ),
}
RIGHT = "VACUUM reclaims storage occupied by dead tuples."
OUTSIDE = "The database team runs VACUUM every Sunday night."  # what no document says


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def kb(data_dir: Path) -> KnowledgeBase:
    kb = KnowledgeBase.from_settings(Settings(data_dir=str(data_dir)))  # type: ignore[call-arg]
    for uri, (title, body) in PAGES.items():
        kb.ingest_bytes(uri, f"# {title}\n\n{body}\n".encode(), "sql")
    return kb


@pytest.fixture(scope="module")
def chunk_of(kb: KnowledgeBase) -> dict[str, dict[str, Any]]:
    """The collection's one chunk per page, by page."""
    return {c["uri"]: c for c in kb.iter_chunks("sql")}


class Turns:
    """Conversations made and rated through the store's own methods, deleted (with their feedback) afterwards."""

    def __init__(self, store: SqlConversationStore, chunk_of: dict[str, dict[str, Any]]) -> None:
        self.store, self.chunk_of = store, chunk_of
        self.conversations: list[str] = []

    def conversation(self, who: str) -> str:
        self.conversations.append(self.store.create_conversation("sql", principal=who))
        return self.conversations[-1]

    def answer(self, cid: str, question: str, answer: str, page: str | None = None, **fields: Any) -> str:
        """A question and its answer; with `page`, a document answer citing that page's chunk."""
        self.store.add_message(cid, "user", question)
        if page is not None:
            c = self.chunk_of.get(page, {"id": page, "title": page, "uri": page})
            source = {"id": c["id"], "title": c["title"], "uri": c["uri"], "snippet": answer, "score": 0.9}
            sentence = {"text": answer, "start": 0, "end": len(answer), "cited": [1], "source": 1, "support": 0.9}
            cites = {"sentences": [sentence], "unverified": False, "documents": "answered"}
            fields = {"route": "rag", "collection": "sql", "sources": [source], "citations": cites, **fields}
        return self.store.add_message(cid, "assistant", answer, **{"route": "base", **fields})

    def rated(self, who: str, question: str, answer: str, rating: str, page: str | None = None, **kw: Any) -> str:
        """A conversation of one turn, rated by its owner; the feedback's id."""
        mid = self.answer(self.conversation(who), question, answer, page, **kw.pop("fields", {}))
        return str(self.store.rate(mid, who, rating, **kw)["id"])


@pytest.fixture(params=["sqlite", "postgresql"])
def turns(request: pytest.FixtureRequest, tmp_path: Path, chunk_of: dict[str, dict[str, Any]]) -> Iterator[Turns]:
    store = SqlConversationStore(f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else PG)
    made = Turns(store, chunk_of)
    yield made
    for cid in made.conversations:
        store.delete_conversation(cid)
    store.close()


def _since() -> str:
    """Now, less a second: on the shared PostgreSQL database, only this test's ratings are read."""
    return (datetime.now(UTC) - timedelta(seconds=1)).isoformat()


def _feedback(t: Turns, who: str) -> dict[str, Any]:
    """Every case of the issue's rules; the ids the test checks, by name."""
    s = t.store
    ids: dict[str, Any] = {"conversation": t.conversation(who)}
    # One conversation, two accepted corrections: one the documents hold, one they do not (an adapter answer).
    wrong = t.answer(ids["conversation"], "What does VACUUM do exactly?", "VACUUM deletes old tables. [1]", "vacuum.md")
    ids["right"] = s.rate(wrong, who, "down", "wrong", RIGHT)["id"]
    s.review(ids["right"], "accepted", "ops", "as the VACUUM page says")
    outside = t.answer(
        ids["conversation"], "Who runs VACUUM at our company?", "Nobody.", route="adapter", adapter="sql-lora"
    )
    ids["outside"] = s.rate(outside, who, "down", "not_in_documents", OUTSIDE)["id"]
    s.review(ids["outside"], "accepted", "dba")
    rejected = t.rated(who, "How often should VACUUM run?", "Never.", "down", reason="wrong", correction="Daily.")
    s.review(rejected, "rejected", "ops", "it depends on the load")
    t.rated(who, "What does TRUNCATE do?", "It drops it.", "down", reason="wrong", correction="It empties tables.")
    incomplete = t.rated(who, "What does COPY do?", "It copies. [1]", "down", "copy.md", reason="incomplete")
    s.review(incomplete, "accepted", "ops")
    # Up-rated document answers: one passes the checks, the others fail one each.
    ids["owner"] = t.rated(
        who,
        "Who owns a table made by CREATE TABLE?",
        "The table is owned by the user who runs the command. [1]",
        "up",
        "create_table.md",
    )
    t.rated(who, "What does VACUUM do to the planner?", "VACUUM encrypts every table. [1]", "up", "vacuum.md")
    t.rated(who, "Which session receives a NOTIFY payload?", "Deleted rows keep taking space. [1]", "up", "vacuum.md")
    t.rated(who, "What does VACUUM clean?", "Dead tuples. [1]", "up", "chunk-since-removed")
    declined = {"sentences": [], "unverified": False, "documents": "declined"}
    t.rated(who, "Can a view be vacuumed?", "They do not say.", "up", "vacuum.md", fields={"citations": declined})
    t.rated(who, "What does VACUUM do exactly ?", RIGHT + " [1]", "up", "vacuum.md")  # the corrected question
    s.review(t.rated(who, "What does GRANT do?", "GRANT gives privileges. [1]", "up", "grant.md"), "rejected", "ops")
    t.rated(who, "What is a tuple?", "A row.", "up", fields={"route": "adapter", "adapter": "sql-lora"})
    t.rated(who, "What does COPY do?", "COPY moves data. [1]", "up", "copy.md", fields={"collection": "other"})
    return ids


def test_accepted_corrections_and_checked_answers_become_pairs_with_provenance(
    turns: Turns, kb: KnowledgeBase, tmp_path: Path
) -> None:
    since, who = _since(), f"alice-{uuid.uuid4().hex[:8]}"
    ids = _feedback(turns, who)
    pairs, summary = feedback_pairs(turns.store, kb, since=since, collection="sql")
    by_id = {p.provenance["feedback_id"]: p for p in pairs}
    assert {p.question for p in pairs} == {
        "What does VACUUM do exactly?",
        "Who runs VACUUM at our company?",
        "Who owns a table made by CREATE TABLE?",
        "What does VACUUM do exactly ?",
    }
    right, outside, owner = by_id[ids["right"]], by_id[ids["outside"]], by_id[ids["owner"]]
    assert (right.answer, right.kind, right.source) == (RIGHT, "correction", "vacuum.md")
    assert right.provenance == {
        "source": "correction",
        "feedback_id": ids["right"],
        "conversation_id": ids["conversation"],
        "message_id": right.provenance["message_id"],
        "reviewed_by": "ops",
        "rated_at": right.provenance["rated_at"],
        "route": "rag",
        "adapter": None,
        "collection": "sql",
    }
    assert right.checks["documents_support"] is True and right.checks["support"] >= 0.5
    # A person's word the documents do not hold is kept, and marked as such.
    assert outside.answer == OUTSIDE and outside.checks["documents_support"] is False
    assert outside.provenance["reviewed_by"] == "dba" and outside.provenance["adapter"] == "sql-lora"
    # Held out by conversation: both corrections of one conversation fall in the same split.
    assert right.split == outside.split == split_of(ids["conversation"], 0.2)
    # The up-rated answer as it was, without its citation marks, checked like a document pair.
    assert owner.answer == "The table is owned by the user who runs the command."
    assert owner.chunk_id == turns.chunk_of["create_table.md"]["id"] and owner.kind == "rated_answer"
    assert owner.checks["page_rank"] == 1 and owner.checks["support"] >= 0.5
    assert owner.provenance["source"] == "rated_answer" and owner.provenance["reviewed_by"] is None
    assert summary["correction"] == {"considered": 2, "pending": 1, "rejected": 1, "no_correction": 1}
    assert summary["rated_answer"] == {
        "considered": 6,
        "unsupported": 1,
        "not_retrieved": 1,
        "sources_gone": 1,
        "declined": 1,
        "rejected": 1,
    }

    # Merged with document pairs read back from JSONL: the person's correction wins over the same question asked
    # by the rated answer (same words) and by the rules' "What does VACUUM do?" (cosine 0.97).
    chunks = [ChunkRecord(c["id"], c["text"], c["title"], c["uri"], c["section"]) for c in kb.iter_chunks("sql")]
    save_pairs(generate_pairs(chunks), tmp_path / "documents.jsonl")
    documents = load_pairs(tmp_path / "documents.jsonl")
    merged = merge_pairs([pairs, documents], summary, kb.embedder.embed)
    questions = [p.question for p in merged]
    assert "What does VACUUM do?" not in questions and "What does VACUUM do exactly ?" not in questions
    assert [origin_of(p) for p in merged[:3]] == ["correction", "correction", "rated_answer"]
    assert set(questions[:3]) == {"What does VACUUM do exactly?", "Who runs VACUUM at our company?", owner.question}
    assert {origin_of(p) for p in merged[3:]} == {"document"} and len(merged) == 3 + len(documents) - 1
    assert all(p.provenance == {"source": "document"} for p in merged[3:])
    assert summary["rated_answer"]["duplicate_of_correction"] == 1 and summary["rated_answer"]["kept"] == 1
    assert summary["document"] == {"duplicate_of_correction": 1, "kept": len(documents) - 1}
    assert summary["correction"]["kept"] == 2 and summary["correction"]["documents_do_not_support"] == 1

    # Without a collection: every rating, and a correction of an answer that used none is not checked at all.
    unscoped, summary = feedback_pairs(turns.store, kb, since=since)
    assert next(p for p in unscoped if p.answer == OUTSIDE).checks == {"documents_support": None}
    assert summary["rated_answer"]["sources_gone"] == 2, "the answer from a collection the knowledge base lacks"
    assert summary["rated_answer"]["not_from_documents"] == 1, "the up-rated adapter answer: nothing to check"


def test_cli_writes_the_merged_dataset_and_says_what_it_kept(
    data_dir: Path, kb: KnowledgeBase, chunk_of: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from enclave.cli.main import app as cli

    url = f"sqlite:///{tmp_path / 'enclave.db'}"
    turns = Turns(SqlConversationStore(url), chunk_of)
    ids = _feedback(turns, "alice")
    turns.store.close()
    env = {"ENCLAVE_DATA_DIR": str(data_dir), "ENCLAVE_STORAGE__DATABASE_URL": url, "COLUMNS": "250"}
    runner = CliRunner()
    first = tmp_path / "out" / "sql.jsonl"

    both = ["tune", "dataset", "--collection", "sql", "--from-feedback", "--out", str(first)]
    run = runner.invoke(cli, both, env=env)
    assert run.exit_code == 0, run.output
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    sources = [r["provenance"]["source"] for r in rows]
    assert sources.count("correction") == 2 and sources.count("rated_answer") == 1 and "document" in sources
    assert {r["provenance"]["feedback_id"] for r in rows if r["provenance"]["source"] == "correction"} == {
        ids["right"],
        ids["outside"],
    }
    assert "What does VACUUM do?" not in {r["question"] for r in rows}, "the correction replaced the rules' pair"
    for words in ("same question as a correction", "awaiting review", "rejected by a reviewer", "answer not supported"):
        assert words in run.output, run.output
    assert "1 kept, though the documents do not support them" in run.output
    assert f"{len(rows)} pairs" in run.output

    # An earlier dataset merged with the feedback again: nothing doubles, the fresh feedback pairs replace the old.
    second = tmp_path / "out" / "merged.jsonl"
    again = ["tune", "dataset", "--from-feedback", "--merge", str(first), "--out", str(second)]
    run = runner.invoke(cli, again, env=env)
    assert run.exit_code == 0, run.output
    merged = [json.loads(line) for line in second.read_text().splitlines()]
    assert sorted(r["question"] for r in merged) == sorted(r["question"] for r in rows)
    assert [r["provenance"]["source"] for r in merged].count("correction") == 2

    # Without --from-feedback, as before: the document pairs alone, each saying where it came from.
    alone = tmp_path / "out" / "documents.jsonl"
    run = runner.invoke(cli, ["tune", "dataset", "--collection", "sql", "--out", str(alone)], env=env)
    assert run.exit_code == 0 and "11 pairs from 8 chunks" in run.output, run.output
    assert {json.dumps(json.loads(line)["provenance"]) for line in alone.read_text().splitlines()} == {
        '{"source": "document"}'
    }

    for args, needle in [
        (["tune", "dataset"], "give --collection, --from-feedback or both"),
        (["tune", "dataset", "--collection", "sql", "--merge", str(first)], "give --from-feedback too"),
        (["tune", "dataset", "--from-feedback", "--since", "last week"], "not an ISO date"),
    ]:
        bad = runner.invoke(cli, args, env=env)
        assert bad.exit_code == 2 and needle in bad.output, bad.output
