"""Server-sent events: POST /v1/chat/stream answers with `event: <type>` / `data: <json>` lines."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from enclave.api.routers.deps import event_json, get_state, principal, require_ready
from enclave.chat.schema import ChatRequest
from enclave.core.protocols import Principal

router = APIRouter(tags=["chat"])


@router.post(
    "/v1/chat/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "route, sources, token…, done|error"}},
)
async def chat_stream(body: ChatRequest, request: Request, who: Principal = Depends(principal)) -> StreamingResponse:
    state = get_state(request)
    require_ready(state)
    state.metrics.requests.labels("sse").inc()
    state.pipeline.validate(body)  # bad input is a 4xx before any stream starts
    ticket = await state.pipeline.admit(who)  # a full queue or a key over its limits is a 429 at once

    async def lines() -> AsyncIterator[str]:
        async for event in state.pipeline.run(body, who, ticket=ticket):
            yield f"event: {event.type}\ndata: {json.dumps(event_json(event))}\n\n"

    return StreamingResponse(
        lines(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
