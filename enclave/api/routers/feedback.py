"""Feedback over HTTP: rate an answer, read or withdraw one's own rating; the review queue for admins.

A caller rates only answers in their own conversations (someone else's message is as unknown as a missing one,
404). Every rating response carries `Server-Timing: feedback;dur=<ms>`, the time the server spent on it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from enclave.api.routers.deps import get_state, principal
from enclave.chat.feedback import FeedbackIn, Rating, Reason, ReviewIn, feedback_query
from enclave.core.errors import Forbidden, NotFound
from enclave.core.protocols import Principal

router = APIRouter(tags=["feedback"])


def _admin(who: Principal) -> None:
    if not who.admin:
        raise Forbidden("the feedback review queue needs an admin key")


@router.post("/v1/messages/{message_id}/feedback")
async def rate(
    message_id: str, body: FeedbackIn, request: Request, who: Principal = Depends(principal)
) -> JSONResponse:
    """Rate an answer (up/down, a reason, a correction); a later rating replaces the earlier one."""
    started = time.perf_counter()
    fb = await get_state(request).feedback.rate(who, message_id, body)
    took = (time.perf_counter() - started) * 1000
    return JSONResponse(fb, headers={"Server-Timing": f"feedback;dur={took:.2f}"})


@router.get("/v1/messages/{message_id}/feedback")
async def get_rating(message_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    fb = await asyncio.to_thread(get_state(request).store.get_feedback, message_id, who.name)
    if fb is None:
        raise NotFound(f"no rating of message '{message_id}'")
    return fb


@router.delete("/v1/messages/{message_id}/feedback", status_code=204)
async def delete_rating(message_id: str, request: Request, who: Principal = Depends(principal)) -> Response:
    if not await asyncio.to_thread(get_state(request).store.delete_feedback, message_id, who.name):
        raise NotFound(f"no rating of message '{message_id}'")
    return Response(status_code=204)


@router.get("/v1/feedback")
async def list_feedback(
    request: Request,
    rating: Rating | None = None,
    reason: Reason | None = None,
    route: str | None = None,
    collection: str | None = None,
    adapter: str | None = None,
    review_state: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
    offset: int = 0,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Every principal's ratings, newest first, each with the turn as it was (admin)."""
    _admin(who)
    query = feedback_query(
        rating, reason, route, collection, adapter, review_state, since, until, limit=limit, offset=offset
    )
    store = get_state(request).store
    rows = await asyncio.to_thread(store.list_feedback, query)
    total = await asyncio.to_thread(store.count_feedback, query)
    return {"object": "list", "data": rows, "total": total, "limit": query.limit, "offset": query.offset}


@router.post("/v1/feedback/{feedback_id}/review")
async def review(
    feedback_id: str, body: ReviewIn, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    """Accept or reject a rating (and its correction) before it may teach anything (admin)."""
    _admin(who)
    return await get_state(request).feedback.review(who, feedback_id, body)
