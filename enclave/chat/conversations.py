"""Conversation store: SQLite by default, PostgreSQL (or any SQLAlchemy URL) for several replicas.

Every turn is written when it starts (the assistant row as `incomplete`) and updated as it streams,
so an acknowledged message survives a crash and a cut-off answer stays visible as such.
"""

from __future__ import annotations

import time
import uuid
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
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

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
    Column("created_at", Float, nullable=False),
)


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
