"""Conversation store: SQLite by default, PostgreSQL (or any SQLAlchemy URL) for several replicas.

Every turn is written when it starts (the assistant row as `incomplete`) and updated as it streams,
so an acknowledged message survives a crash and a cut-off answer stays visible as such.

Feedback on an answer is one row per (message, principal): a later rating replaces the earlier one. Each row
keeps a snapshot of the turn as it was when rated (the question before it, the answer, route, adapter,
collection, sources, citations), so the review queue and an export never depend on the conversation staying
as it was. Review states: `pending` for a down-rating or any rating with a correction (a person checks it
before it teaches anything), `none` for a plain up-rating, then `accepted` or `rejected` once reviewed.
Re-rating with a different rating, reason or correction starts the review again; the same rating keeps it.
Deleting a conversation deletes its feedback.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from enclave.core.errors import InvalidRequest, NotFound

MessageStatus = Literal["complete", "incomplete", "cancelled", "error", "blocked"]

metadata = MetaData()

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("principal", String(200), nullable=False, default="anonymous"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False, index=True),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column(
        "conversation_id",
        String(40),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False, default=""),
    Column("status", String(16), nullable=False, default="complete"),
    Column("route", String(16)),
    Column("adapter", String(200)),
    Column("sources", JSON),
    Column("citations", JSON),
    Column("finish_reason", String(16)),
    Column("usage", JSON),
    Column("moderation", JSON),
    Column("error", JSON),
    Column("collection", String(200)),  # the collection a document answer came from
    Column("created_at", Float, nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("message_id", String(40), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("conversation_id", String(40), nullable=False, index=True),
    Column("principal", String(200), nullable=False),
    Column("rating", String(8), nullable=False),
    Column("reason", String(32)),
    Column("correction", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False, index=True),
    Column("review_state", String(16), nullable=False),
    Column("reviewed_by", String(200)),
    Column("reviewed_at", Float),
    Column("review_note", Text),
    # The turn as it was when rated.
    Column("question", Text),
    Column("answer", Text),
    Column("route", String(16)),
    Column("adapter", String(200)),
    Column("collection", String(200)),
    Column("sources", JSON),
    Column("citations", JSON),
    UniqueConstraint("message_id", "principal", name="uq_feedback_message_principal"),
)
# The databases whose INSERT … ON CONFLICT DO UPDATE replaces a rating in one statement.
_UPSERTS: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
_REVIEW = ("review_state", "reviewed_by", "reviewed_at", "review_note")
_KEY = ("id", "message_id", "conversation_id", "principal", "created_at")


@dataclass
class FeedbackQuery:
    """Which ratings to list; None matches anything. `since`/`until` bound updated_at (epoch seconds);
    `adapter` "" matches ratings of answers without an adapter."""

    rating: str | None = None
    reason: str | None = None
    route: str | None = None
    collection: str | None = None
    adapter: str | None = None
    review_state: str | None = None
    since: float | None = None
    until: float | None = None
    principal: str | None = None
    limit: int = 100
    offset: int = 0


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class ConversationStore(Protocol):
    def create_conversation(self, title: str, principal: str = "anonymous") -> str: ...
    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None: ...
    def list_conversations(self, principal: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...
    def delete_conversation(self, conversation_id: str) -> bool: ...
    def add_message(self, conversation_id: str, role: str, content: str, **fields: Any) -> str: ...
    def update_message(self, message_id: str, **fields: Any) -> None: ...
    def history(self, conversation_id: str) -> list[dict[str, Any]]: ...
    def rate(
        self, message_id: str, principal: str, rating: str, reason: str | None = None, correction: str | None = None
    ) -> dict[str, Any]: ...
    def get_feedback(self, message_id: str, principal: str) -> dict[str, Any] | None: ...
    def delete_feedback(self, message_id: str, principal: str) -> bool: ...
    def feedback_of_conversation(self, conversation_id: str, principal: str) -> dict[str, dict[str, Any]]: ...
    def list_feedback(self, query: FeedbackQuery) -> list[dict[str, Any]]: ...
    def count_feedback(self, query: FeedbackQuery) -> int: ...
    def review(self, feedback_id: str, decision: str, by: str, note: str | None = None) -> dict[str, Any] | None: ...
    def close(self) -> None: ...


class SqlConversationStore:
    """ConversationStore over SQLAlchemy Core; the URL decides SQLite or PostgreSQL."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})

            @event.listens_for(self.engine, "connect")
            def _pragmas(conn: Any, _record: Any) -> None:
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the streaming writer
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a database was created (create_all makes only missing tables), as nullable."""
        from sqlalchemy import inspect, text

        have = {c["name"] for c in inspect(self.engine).get_columns("messages")}
        with self.engine.begin() as c:
            for column in messages.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    c.execute(text(f'ALTER TABLE messages ADD COLUMN "{column.name}" {kind}'))

    def close(self) -> None:
        self.engine.dispose()

    def create_conversation(self, title: str, principal: str = "anonymous") -> str:
        cid = new_id("conv")
        now = time.time()
        with self.engine.begin() as c:
            c.execute(
                insert(conversations).values(
                    id=cid,
                    title=title[:200] or "New chat",
                    principal=principal,
                    created_at=now,
                    updated_at=now,
                )
            )
        return cid

    def _conversation_row(self, row: Any, count: int | None = None) -> dict[str, Any]:
        out = {
            "id": row.id,
            "title": row.title,
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
        }
        if count is not None:
            out["message_count"] = count
        return out

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(select(conversations).where(conversations.c.id == conversation_id)).first()
            if row is None:
                return None
            msgs = c.execute(
                select(messages).where(messages.c.conversation_id == conversation_id).order_by(messages.c.seq)
            ).all()
        out = self._conversation_row(row)
        out["principal"] = row.principal
        out["messages"] = [
            {
                "id": m.id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "route": m.route,
                "adapter": m.adapter,
                "sources": m.sources or [],
                "citations": m.citations,
                "finish_reason": m.finish_reason,
                "usage": m.usage,
                "moderation": m.moderation,
                "error": m.error,
                "collection": m.collection,
                "created_at": _iso(m.created_at),
            }
            for m in msgs
        ]
        return out

    def list_conversations(self, principal: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        counts = (
            select(messages.c.conversation_id, func.count().label("n")).group_by(messages.c.conversation_id).subquery()
        )
        q = (
            select(conversations, func.coalesce(counts.c.n, 0).label("n"))
            .outerjoin(counts, counts.c.conversation_id == conversations.c.id)
            .order_by(conversations.c.updated_at.desc())
            .limit(limit)
        )
        if principal is not None:
            q = q.where(conversations.c.principal == principal)
        with self.engine.connect() as c:
            return [self._conversation_row(r, r.n) for r in c.execute(q).all()]

    def delete_conversation(self, conversation_id: str) -> bool:
        with self.engine.begin() as c:
            c.execute(delete(feedback).where(feedback.c.conversation_id == conversation_id))
            c.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
            res = c.execute(delete(conversations).where(conversations.c.id == conversation_id))
        return bool(res.rowcount)

    def add_message(self, conversation_id: str, role: str, content: str, **fields: Any) -> str:
        mid = new_id("msg")
        now = time.time()
        with self.engine.begin() as c:
            seq = c.execute(
                select(func.coalesce(func.max(messages.c.seq), 0)).where(messages.c.conversation_id == conversation_id)
            ).scalar_one()
            c.execute(
                insert(messages).values(
                    id=mid,
                    conversation_id=conversation_id,
                    seq=seq + 1,
                    role=role,
                    content=content,
                    created_at=now,
                    status=fields.pop("status", "complete"),
                    **fields,
                )
            )
            c.execute(update(conversations).where(conversations.c.id == conversation_id).values(updated_at=now))
        return mid

    def update_message(self, message_id: str, **fields: Any) -> None:
        with self.engine.begin() as c:
            c.execute(update(messages).where(messages.c.id == message_id).values(**fields))

    def history(self, conversation_id: str) -> list[dict[str, Any]]:
        """Earlier turns worth feeding back to the model: no blocked or empty ones."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(messages.c.role, messages.c.content, messages.c.status)
                .where(messages.c.conversation_id == conversation_id)
                .order_by(messages.c.seq)
            ).all()
        return [
            {"role": r.role, "content": r.content} for r in rows if r.content and r.status not in ("blocked", "error")
        ]

    # -- feedback ----------------------------------------------------------------------------
    def rate(
        self, message_id: str, principal: str, rating: str, reason: str | None = None, correction: str | None = None
    ) -> dict[str, Any]:
        """Store `principal`'s rating of an answer (replacing theirs), with the turn as it is now; the feedback
        with its snapshot. NotFound for an unknown message or someone else's; InvalidRequest for a message that
        is not a finished answer."""
        now = time.time()
        with self.engine.begin() as c:
            values = {
                **self._snapshot(c, message_id, principal),
                "id": new_id("fb"),
                "principal": principal,
                "rating": rating,
                "reason": reason,
                "correction": correction,
                "created_at": now,
                "updated_at": now,
                "review_state": "pending" if rating == "down" or correction else "none",
                "reviewed_by": None,
                "reviewed_at": None,
                "review_note": None,
            }
            if self.engine.dialect.name in _UPSERTS:
                self._upsert(c, values)
            else:
                self._upsert_portable(c, values)
            row = c.execute(self._feedback_of(message_id, principal)).first()
        assert row is not None
        return _feedback_out(row, snapshot=True)

    def _snapshot(self, c: Connection, message_id: str, principal: str) -> dict[str, Any]:
        """The rated turn's fields; raises when `principal` may not rate this message."""
        m = c.execute(
            select(messages, conversations.c.principal.label("owner"))
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(messages.c.id == message_id)
        ).first()
        if m is None or m.owner != principal:  # someone else's message is as unknown as a missing one
            raise NotFound(f"unknown message '{message_id}'")
        if m.role != "assistant":
            raise InvalidRequest("only an answer can be rated, not a question")
        if m.status == "incomplete":
            raise InvalidRequest("this answer is still streaming (or was cut off before it was stored)")
        if not (m.content or "").strip():
            raise InvalidRequest("this answer is empty: there is nothing to rate")
        question = c.execute(
            select(messages.c.content)
            .where(
                messages.c.conversation_id == m.conversation_id,
                messages.c.role == "user",
                messages.c.seq < m.seq,
            )
            .order_by(messages.c.seq.desc())
            .limit(1)
        ).scalar()
        return {
            "message_id": m.id,
            "conversation_id": m.conversation_id,
            "question": question,
            "answer": m.content,
            "route": m.route,
            "adapter": m.adapter,
            "collection": m.collection,
            "sources": m.sources or [],
            "citations": m.citations,
        }

    def _upsert(self, c: Connection, values: dict[str, Any]) -> None:
        """One statement: insert, or replace the rating of the same (message, principal). Its review is kept
        when nothing the reviewer saw changed."""
        ins: Any = _UPSERTS[self.engine.dialect.name](feedback).values(**values)
        new = ins.excluded
        same = and_(
            feedback.c.rating == new.rating,
            feedback.c.reason.is_not_distinct_from(new.reason),
            feedback.c.correction.is_not_distinct_from(new.correction),
        )
        changes: dict[str, Any] = {k: new[k] for k in values if k not in _KEY and k not in _REVIEW}
        changes.update({k: case((same, feedback.c[k]), else_=new[k]) for k in _REVIEW})
        c.execute(ins.on_conflict_do_update(index_elements=["message_id", "principal"], set_=changes))

    def _upsert_portable(self, c: Connection, values: dict[str, Any]) -> None:
        """The same for a database without ON CONFLICT: update the row if there is one, else insert it."""
        old = c.execute(self._feedback_of(values["message_id"], values["principal"])).first()
        if old is None:
            c.execute(insert(feedback).values(**values))
            return
        same = (old.rating, old.reason, old.correction) == (values["rating"], values["reason"], values["correction"])
        changes = {k: v for k, v in values.items() if k not in _KEY and not (same and k in _REVIEW)}
        c.execute(update(feedback).where(feedback.c.id == old.id).values(**changes))

    @staticmethod
    def _feedback_of(message_id: str, principal: str) -> Any:
        return select(feedback).where(feedback.c.message_id == message_id, feedback.c.principal == principal)

    def get_feedback(self, message_id: str, principal: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(self._feedback_of(message_id, principal)).first()
        return None if row is None else _feedback_out(row)

    def delete_feedback(self, message_id: str, principal: str) -> bool:
        with self.engine.begin() as c:
            res = c.execute(
                delete(feedback).where(feedback.c.message_id == message_id, feedback.c.principal == principal)
            )
        return bool(res.rowcount)

    def feedback_of_conversation(self, conversation_id: str, principal: str) -> dict[str, dict[str, Any]]:
        """`principal`'s ratings in a conversation, by message id."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(feedback).where(feedback.c.conversation_id == conversation_id, feedback.c.principal == principal)
            ).all()
        return {r.message_id: _feedback_out(r) for r in rows}

    def list_feedback(self, query: FeedbackQuery) -> list[dict[str, Any]]:
        """Ratings matching `query`, newest first, each with its snapshot and who gave it."""
        q = (
            select(feedback)
            .where(*_conditions(query))
            .order_by(feedback.c.updated_at.desc(), feedback.c.id)
            .limit(query.limit)
            .offset(query.offset)
        )
        with self.engine.connect() as c:
            return [_feedback_out(r, snapshot=True) for r in c.execute(q).all()]

    def count_feedback(self, query: FeedbackQuery) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(feedback).where(*_conditions(query))).scalar_one())

    def review(self, feedback_id: str, decision: str, by: str, note: str | None = None) -> dict[str, Any] | None:
        """Record a reviewer's decision (accepted or rejected) on a rating; None when there is no such rating."""
        with self.engine.begin() as c:
            res = c.execute(
                update(feedback)
                .where(feedback.c.id == feedback_id)
                .values(review_state=decision, reviewed_by=by, reviewed_at=time.time(), review_note=note)
            )
            if not res.rowcount:
                return None
            row = c.execute(select(feedback).where(feedback.c.id == feedback_id)).first()
        return _feedback_out(row, snapshot=True)


def _conditions(query: FeedbackQuery) -> list[Any]:
    f = feedback.c
    exact = {
        "rating": query.rating,
        "reason": query.reason,
        "route": query.route,
        "collection": query.collection,
        "review_state": query.review_state,
        "principal": query.principal,
    }
    out: list[Any] = [f[k] == v for k, v in exact.items() if v is not None]
    if query.adapter is not None:
        out.append(f.adapter.is_(None) if query.adapter == "" else f.adapter == query.adapter)
    if query.since is not None:
        out.append(f.updated_at >= query.since)
    if query.until is not None:
        out.append(f.updated_at < query.until)
    return out


def _feedback_out(row: Any, snapshot: bool = False) -> dict[str, Any]:
    """A rating as the API shows it; with `snapshot`, also who gave it and the turn as it was (review queue)."""
    out: dict[str, Any] = {
        "id": row.id,
        "message_id": row.message_id,
        "conversation_id": row.conversation_id,
        "rating": row.rating,
        "reason": row.reason,
        "correction": row.correction,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "review": {
            "state": row.review_state,
            "by": row.reviewed_by,
            "at": None if row.reviewed_at is None else _iso(row.reviewed_at),
            "note": row.review_note,
        },
    }
    if snapshot:
        out["principal"] = row.principal
        out["snapshot"] = {
            "question": row.question,
            "answer": row.answer,
            "route": row.route,
            "adapter": row.adapter,
            "collection": row.collection,
            "sources": row.sources or [],
            "citations": row.citations,
        }
    return out
