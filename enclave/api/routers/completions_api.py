"""OpenAI's legacy /v1/completions: plain prompts, no chat template, through the same pipeline.

Input and output moderation, limits and the store apply as to a chat; the prompt goes to the model (or the
adapter `model` names) as it is, never to the documents. The request's fields are in openai_schema.py.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from enclave.api.routers.deps import event_json, get_state, principal, require_ready
from enclave.api.routers.openai_api import Reply, started_choices, usage_of
from enclave.api.routers.openai_schema import TextCompletionRequest, to_completion_requests
from enclave.core.errors import from_code
from enclave.core.events import DoneEvent, ErrorEvent, TokenEvent
from enclave.core.protocols import Principal

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/completions", response_model=None)
async def completions(
    body: TextCompletionRequest, request: Request, who: Principal = Depends(principal)
) -> JSONResponse | StreamingResponse:
    state = get_state(request)
    require_ready(state)
    state.metrics.requests.labels("openai").inc()
    reqs = to_completion_requests(body, state.settings.models.name, state.backend.list_adapters())
    events = await started_choices(state, reqs, body.n, who)
    head = Reply("cmpl-" + uuid.uuid4().hex[:24], int(time.time()), body.model).head("text_completion")
    prompts = [r.message for r in reqs]

    def echoed(i: int) -> str:
        return prompts[i // body.n] if body.echo else ""

    if not body.stream:
        texts = [echoed(i) for i in range(len(prompts) * body.n)]
        dones: dict[int, DoneEvent] = {}
        async with contextlib.aclosing(events):
            async for i, event in events:
                if isinstance(event, TokenEvent):
                    texts[i] += event.text
                elif isinstance(event, ErrorEvent):
                    raise from_code(event.code, event.message)
                elif isinstance(event, DoneEvent):
                    dones[i] = event
        choices = [
            {"index": i, "text": text, "logprobs": _logprobs(dones[i]), "finish_reason": _finish(dones[i])}
            for i, text in enumerate(texts)
        ]
        return JSONResponse({**head, "choices": choices, "usage": usage_of(list(dones.values()), body.n)})

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(index: int, text: str, finish: str | None = None, **extra: Any) -> str:
        choice = {"index": index, "text": text, "logprobs": extra.pop("logprobs", None), "finish_reason": finish}
        return f"data: {json.dumps({**head, 'choices': [choice], **extra})}\n\n"

    async def lines() -> AsyncIterator[str]:
        dones: list[DoneEvent] = []
        for i in range(len(prompts) * body.n):
            if body.echo:
                yield chunk(i, echoed(i))
        async for i, event in events:
            if isinstance(event, TokenEvent):
                yield chunk(i, event.text)
            elif isinstance(event, DoneEvent):
                dones.append(event)
                yield chunk(i, "", _finish(event), logprobs=_logprobs(event), enclave=event_json(event))
            elif isinstance(event, ErrorEvent):
                err = {"error": {"message": event.message, "type": event.code, "code": event.code}}
                yield f"data: {json.dumps({**err, 'enclave': event_json(event)})}\n\n"
            else:  # route, moderation: Enclave's own events, in the field OpenAI clients ignore
                yield chunk(i, "", None, enclave=event_json(event))
        if include_usage and dones:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage_of(dones, body.n)})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _finish(done: DoneEvent) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _logprobs(done: DoneEvent) -> dict[str, Any] | None:
    """The legacy logprobs object: tokens, their logprobs, the alternatives as {token: logprob}, text offsets."""
    if done.logprobs is None:
        return None
    offsets, at = [], 0
    for lp in done.logprobs:
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in done.logprobs],
        "token_logprobs": [lp.logprob for lp in done.logprobs],
        "top_logprobs": [{a.token: a.logprob for a in lp.top_logprobs} for lp in done.logprobs],
        "text_offset": offsets,
    }
