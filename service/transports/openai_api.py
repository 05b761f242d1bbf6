"""OpenAI-compatible API: /v1/chat/completions (stream and not) and /v1/models.

The official `openai` client and LangChain's ChatOpenAI work unchanged. `model` is the base
model's name or an adapter's; Enclave's own events ride along in an `enclave` field that
OpenAI clients ignore. Extra request fields (extra_body): conversation_id, route, collection, and
repetition_penalty (as vLLM names it). finish_reason is OpenAI's ("stop" when the loop guard ended a
looping answer); the exact one ("repetition") is in the `enclave` field.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from service.chat.schema import ChatRequest
from service.errors import EnclaveError, InvalidRequest, NotFound
from service.events import DoneEvent, ErrorEvent, SourcesEvent, TokenEvent
from service.protocols import Message, Principal
from service.transports.deps import event_json, get_state, principal, require_ready

router = APIRouter(prefix="/v1", tags=["openai"])


class OAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[OAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    n: int = 1
    # Enclave extras
    conversation_id: str | None = None
    route: Literal["auto", "rag", "adapter", "base"] = "auto"
    collection: str | None = None
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)


def to_chat_request(body: CompletionRequest, base_model: str, adapters: list[str]) -> ChatRequest:
    if body.n != 1:
        raise InvalidRequest("only n=1 is supported")
    msgs = body.messages
    if msgs[-1].role != "user":
        raise InvalidRequest("the last message must have role 'user'")
    adapter = None
    if body.model != base_model:
        if body.model not in adapters:
            raise NotFound(f"the model '{body.model}' does not exist; see GET /v1/models")
        adapter = body.model
    system = "\n".join(m.text() for m in msgs[:-1] if m.role in ("system", "developer")) or None
    history = [Message(role=m.role, content=m.text()) for m in msgs[:-1] if m.role in ("user", "assistant")]
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return ChatRequest(
        message=msgs[-1].text(),
        conversation_id=body.conversation_id,
        route="adapter" if adapter else body.route,
        adapter=adapter,
        collection=body.collection,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        seed=body.seed,
        repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        history=history,
        system=system,
    )


@router.get("/models")
async def list_models(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    state = get_state(request)
    created = int(state.started)
    base = state.settings.models.name
    data = [{"id": base, "object": "model", "created": created, "owned_by": "enclave", "root": base}]
    data += [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "enclave",
            "root": base,
            "parent": base,
        }
        for name in state.backend.list_adapters()
    ]
    return {"object": "list", "data": data}


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: CompletionRequest, request: Request, who: Principal = Depends(principal)
) -> JSONResponse | StreamingResponse:
    state = get_state(request)
    require_ready(state)
    state.metrics.requests.labels("openai").inc()
    req = to_chat_request(body, state.settings.models.name, state.backend.list_adapters())
    state.pipeline.validate(req)
    ticket = await state.pipeline.admit(who)
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    events = state.pipeline.run(req, who, ticket=ticket)

    if not body.stream:
        text, extras, done = "", [], None
        async for event in events:
            if isinstance(event, TokenEvent):
                text += event.text
            elif isinstance(event, ErrorEvent):
                raise _as_error(event)
            elif isinstance(event, DoneEvent):
                done = event
            else:
                extras.append(event_json(event))
        assert done is not None
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": _finish(done.finish_reason),
                    }
                ],
                "usage": done.usage.model_dump(),
                "enclave": {
                    "conversation_id": done.conversation_id,
                    "message_id": done.message_id,
                    "finish_reason": done.finish_reason,
                    "events": extras,
                },
            }
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"

    async def lines() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        async for event in events:
            if isinstance(event, TokenEvent):
                yield chunk({"content": event.text})
            elif isinstance(event, DoneEvent):
                yield chunk({}, _finish(event.finish_reason), enclave=event_json(event))
                if include_usage:
                    usage = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": body.model,
                        "choices": [],
                        "usage": event.usage.model_dump(),
                    }
                    yield f"data: {json.dumps(usage)}\n\n"
            elif isinstance(event, ErrorEvent):
                err = {
                    "error": {"message": event.message, "type": event.code, "code": event.code},
                    "enclave": event_json(event),
                }
                yield f"data: {json.dumps(err)}\n\n"
            elif isinstance(event, SourcesEvent) or event.type in ("route", "moderation", "citations"):
                yield chunk({}, None, enclave=event_json(event))
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _finish(reason: str) -> str:
    """OpenAI's finish_reason: clients know only its values, so the loop guard's "repetition" is a "stop"."""
    return "length" if reason == "length" else "stop"


def _as_error(event: ErrorEvent) -> EnclaveError:
    from service import errors

    by_code = {cls.code: cls for cls in errors.EnclaveError.__subclasses__()}
    return by_code.get(event.code, errors.InternalError)(event.message)
