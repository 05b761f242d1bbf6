"""Feedback on answers: what a rating may hold, how many a key may give, and the review queue's filters — the
rules every transport (HTTP, WebSocket) and the CLI apply around the conversation store's feedback rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from enclave.chat.conversations import ConversationStore, FeedbackQuery
from enclave.chat.limits import KeyLimits
from enclave.chat.metrics import Metrics
from enclave.core.errors import InvalidRequest, NotFound
from enclave.core.protocols import Principal
from enclave.core.settings import LimitsSettings

RATINGS = ("up", "down")
REASONS = ("wrong", "not_in_documents", "incomplete", "harmful", "other")
REVIEW_STATES = ("none", "pending", "accepted", "rejected")
DECISIONS = ("accepted", "rejected")
MAX_PAGE = 1000

Rating = Literal["up", "down"]
Reason = Literal["wrong", "not_in_documents", "incomplete", "harmful", "other"]
Decision = Literal["accepted", "rejected"]


class FeedbackIn(BaseModel):
    """A rating as a client sends it (HTTP body; the WebSocket frame adds message_id)."""

    model_config = ConfigDict(extra="forbid")
    rating: Rating
    reason: Reason | None = None
    correction: str | None = Field(None, description="The answer as it should have been.")


class FeedbackFrame(FeedbackIn):
    message_id: str = Field(min_length=1, max_length=100)


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Decision
    note: str | None = None


def public(fb: dict[str, Any]) -> dict[str, Any]:
    """A rating as its author sees it: without the snapshot and the principal the review queue shows."""
    return {k: v for k, v in fb.items() if k not in ("snapshot", "principal")}


def checked_text(text: str | None, what: str, max_chars: int) -> str | None:
    """Free text trimmed, empty as None, refused over `max_chars`."""
    text = (text or "").strip()
    if len(text) > max_chars:
        raise InvalidRequest(f"the {what} is {len(text)} characters; the limit is {max_chars}")
    return text or None


def parse_when(text: str | None, what: str, end: bool = False) -> float | None:
    """An ISO date or date-time as epoch seconds (UTC unless it says otherwise). A bare date as `end` (until)
    means the end of that day, so `--until 2025-05-01` includes the first of May."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{what} '{text}' is not an ISO date (2025-05-01) or date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if end and len(text.strip()) == 10:
        when += timedelta(days=1)
    return when.timestamp()


def _one_of(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidRequest(f"{what} must be one of {', '.join(allowed)}, not '{value}'")
    return value


def feedback_query(
    rating: str | None = None,
    reason: str | None = None,
    route: str | None = None,
    collection: str | None = None,
    adapter: str | None = None,
    review_state: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> FeedbackQuery:
    """The review queue's filters, checked (InvalidRequest names the bad one)."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise InvalidRequest(f"limit must be 1 to {MAX_PAGE} and offset 0 or more")
    return FeedbackQuery(
        rating=_one_of(rating, RATINGS, "rating"),
        reason=_one_of(reason, REASONS, "reason"),
        route=route,
        collection=collection,
        adapter=adapter,
        review_state=_one_of(review_state, REVIEW_STATES, "review_state"),
        since=parse_when(since, "since"),
        until=parse_when(until, "until", end=True),
        limit=limit,
        offset=offset,
    )


class FeedbackService:
    """Ratings and reviews through the store, within the per-key rate limit, counted on /metrics."""

    def __init__(
        self, store: ConversationStore, metrics: Metrics, limits: LimitsSettings, redis_url: str | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_chars = limits.max_message_chars
        # A budget of its own (limits.requests_per_minute ratings a minute per key), never a stream slot.
        self.key_limits = KeyLimits(limits.model_copy(update={"max_streams_per_key": 0}), redis_url, scope="ratings")

    async def rate(self, who: Principal, message_id: str, body: FeedbackIn) -> dict[str, Any]:
        """Store `who`'s rating of an answer; the feedback as its author sees it."""
        await self.key_limits.acquire(who.name)
        correction = checked_text(body.correction, "correction", self.max_chars)
        fb = await asyncio.to_thread(self.store.rate, message_id, who.name, body.rating, body.reason, correction)
        snap = fb["snapshot"]
        labels = (fb["rating"], snap["route"] or "", snap["collection"] or "", snap["adapter"] or "")
        self.metrics.feedback.labels(*labels).inc()
        return public(fb)

    async def review(self, who: Principal, feedback_id: str, body: ReviewIn) -> dict[str, Any]:
        note = checked_text(body.note, "note", self.max_chars)
        fb = await asyncio.to_thread(self.store.review, feedback_id, body.decision, who.name, note)
        if fb is None:
            raise NotFound(f"unknown feedback '{feedback_id}'")
        return fb
