"""OpenAI-compatible API: /v1/chat/completions (stream and not, JSON output, tool calls) and /v1/models.

The official `openai` client and LangChain's ChatOpenAI work unchanged. `model` is the base
model's name or an adapter's; Enclave's own events ride along in an `enclave` field that
OpenAI clients ignore. Extra request fields (extra_body): conversation_id, route, collection, and
repetition_penalty (as vLLM names it). finish_reason is OpenAI's ("stop" when the loop guard ended a
looping answer); the exact one ("repetition") is in the `enclave` field. The request fields are in
openai_schema.py: what is not there is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from enclave.api.routers.deps import event_json, get_state, principal, require_ready
from enclave.api.routers.openai_schema import CompletionRequest, to_chat_request
from enclave.chat import structured
from enclave.chat.schema import ChatRequest
from enclave.core.errors import EnclaveError, InvalidRequest, from_code
from enclave.core.events import DoneEvent, ErrorEvent, SourcesEvent, TokenEvent
from enclave.core.protocols import TOOL_OPEN, OutputSpec, Principal

router = APIRouter(prefix="/v1", tags=["openai"])


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
    if state.kb is not None:  # the embedder, for /v1/embeddings
        data.append({"id": state.kb.embedder.name, "object": "model", "created": created, "owned_by": "enclave"})
    return {"object": "list", "data": data}


# Choices one request may ask for (n): each is an answer of its own, decoded beside the others.
MAX_CHOICES = 8


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: CompletionRequest, request: Request, who: Principal = Depends(principal)
) -> JSONResponse | StreamingResponse:
    state = get_state(request)
    require_ready(state)
    state.metrics.requests.labels("openai").inc()
    req = to_chat_request(body, state.settings.models.name, state.backend.list_adapters())
    if body.n > 1 and req.conversation_id:
        raise InvalidRequest("n > 1 cannot continue a conversation (each choice would be its next turn)")
    events = await started_choices(state, [req], body.n, who)
    spec = req.output_spec()
    reply = Reply("chatcmpl-" + uuid.uuid4().hex[:24], int(time.time()), body.model)

    if not body.stream:
        texts = [""] * body.n
        extras: list[list[dict[str, Any]]] = [[] for _ in range(body.n)]
        dones: list[DoneEvent | None] = [None] * body.n
        async with contextlib.aclosing(events):
            async for i, event in events:
                if isinstance(event, TokenEvent):
                    texts[i] += event.text
                elif isinstance(event, ErrorEvent):
                    raise from_code(event.code, event.message)
                elif isinstance(event, DoneEvent):
                    dones[i] = event
                else:
                    extras[i].append(event_json(event))
        finished = [d for d in dones if d is not None]
        assert len(finished) == body.n
        choices = []
        for i, (text, done) in enumerate(zip(texts, finished, strict=True)):
            message, finish = _message(text, spec, done)
            choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": _logprobs(done)})
        enclave = [
            {
                "conversation_id": d.conversation_id,
                "message_id": d.message_id,
                "finish_reason": d.finish_reason,
                "documents": d.documents,
                "general_knowledge": d.general_knowledge,
                "events": extras[i],
            }
            for i, d in enumerate(finished)
        ]
        return JSONResponse(
            {
                **reply.head("chat.completion"),
                "choices": choices,
                "usage": usage_of(finished, body.n),
                "enclave": enclave[0] if body.n == 1 else {"choices": enclave},
            }
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def lines() -> AsyncIterator[str]:
        streams = [_ChoiceStream(i, spec) for i in range(body.n)]
        dones: list[DoneEvent] = []
        for st in streams:
            yield reply.chunk(st.index, {"role": "assistant", "content": ""})
        async for i, event in events:
            st = streams[i]
            if isinstance(event, TokenEvent):
                delta = st.push(event.text)
                if delta:
                    yield reply.chunk(i, delta)
            elif isinstance(event, DoneEvent):
                dones.append(event)
                delta, finish = st.finish(event)
                if delta:
                    yield reply.chunk(i, delta)
                yield reply.chunk(i, {}, finish, logprobs=_logprobs(event), enclave=event_json(event))
            elif isinstance(event, ErrorEvent):
                err = {
                    "error": {"message": event.message, "type": event.code, "code": event.code},
                    "enclave": event_json(event),
                }
                yield f"data: {json.dumps(err)}\n\n"
            elif isinstance(event, SourcesEvent) or event.type in ("route", "moderation", "citations"):
                yield reply.chunk(i, {}, None, enclave=event_json(event))
        if include_usage and dones:
            usage = {**reply.head("chat.completion.chunk"), "choices": [], "usage": usage_of(dones, body.n)}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class Reply:
    """The fields every response and chunk of one completion shares."""

    def __init__(self, cid: str, created: int, model: str) -> None:
        self.cid, self.created, self.model = cid, created, model

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.cid, "object": kind, "created": self.created, "model": self.model}

    def chunk(
        self,
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        data = {
            **self.head("chat.completion.chunk"),
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"


class _ChoiceStream:
    """One choice's deltas. With tools, an answer that starts with a tool call is held back and sent as
    `tool_calls` once it is complete (its arguments then always parse); plain text streams as it comes."""

    def __init__(self, index: int, spec: OutputSpec | None) -> None:
        self.index = index
        self.tools = spec is not None and spec.kind == "tools"
        self.calling: bool | None = None if self.tools else False  # None: not known yet
        self.held = ""

    def push(self, text: str) -> dict[str, Any] | None:
        if self.calling is False:
            return {"content": text}
        self.held += text
        if self.calling is None:
            start = self.held.lstrip()
            if start.startswith(TOOL_OPEN):
                self.calling = True
            elif start and not TOOL_OPEN.startswith(start):
                self.calling = False
                text, self.held = self.held, ""
                return {"content": text}
        return None

    def finish(self, done: DoneEvent) -> tuple[dict[str, Any] | None, str]:
        calls = structured.tool_calls_of(self.held) if self.calling is not False else []
        if calls:
            return {"tool_calls": [c.openai(index=k) for k, c in enumerate(calls)]}, "tool_calls"
        delta = {"content": self.held} if self.held else None
        return delta, _finish(done.finish_reason)


def _message(text: str, spec: OutputSpec | None, done: DoneEvent) -> tuple[dict[str, Any], str]:
    """A whole answer as OpenAI's message and finish_reason: tool calls when it made some."""
    calls = structured.tool_calls_of(text) if spec is not None and spec.kind == "tools" else []
    if calls:
        return {"role": "assistant", "content": None, "tool_calls": [c.openai() for c in calls]}, "tool_calls"
    return {"role": "assistant", "content": text}, _finish(done.finish_reason)


def _logprobs(done: DoneEvent) -> dict[str, Any] | None:
    """OpenAI's choice.logprobs: every token of the answer (streamed: all in the last chunk)."""
    if done.logprobs is None:
        return None
    return {"content": [lp.model_dump() for lp in done.logprobs], "refusal": None}


async def started_choices(
    state: Any, reqs: list[ChatRequest], n: int, who: Principal
) -> AsyncGenerator[tuple[int, Any], None]:
    """Validates and admits n runs of each request (all or none), then merges their events as (choice, event):
    choice k * n + j is request k's j-th. Choice j > 0 draws with seed + j, so that with a seed the n choices
    are reproducible and not all the same."""
    if n > MAX_CHOICES:
        raise InvalidRequest(f"n is {n}; at most {MAX_CHOICES} choices per request")
    if len(reqs) * n > MAX_CHOICES:
        raise InvalidRequest(f"{len(reqs)} prompts × n {n} is over the {MAX_CHOICES} choices one request may ask for")
    for req in reqs:
        state.pipeline.validate(req)
    tickets = []
    try:
        for _ in range(len(reqs) * n):
            tickets.append(await state.pipeline.admit(who))
    except EnclaveError:
        for t in tickets:
            t.release()
        raise
    runs = [
        state.pipeline.run(
            req if j == 0 or req.seed is None else req.model_copy(update={"seed": req.seed + j}), who, ticket=ticket
        )
        for (req, j), ticket in zip([(r, j) for r in reqs for j in range(n)], tickets, strict=True)
    ]
    return merged(runs)


def usage_of(dones: list[DoneEvent], n: int = 1) -> dict[str, int]:
    """Each prompt once, every choice's tokens (as OpenAI counts n > 1): the n choices of a prompt share it."""
    prompt = sum(d.usage.prompt_tokens for d in dones) // n
    completion = sum(d.usage.completion_tokens for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def merged(runs: list[AsyncIterator[Any]]) -> AsyncGenerator[tuple[int, Any], None]:
    """(choice index, event) from every run as they come; one run is read directly."""
    if len(runs) == 1:
        async for event in runs[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    end = object()

    async def pump(i: int, run: AsyncIterator[Any]) -> None:
        try:
            async for event in run:
                await queue.put((i, event))
        finally:
            await queue.put((i, end))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(runs)]
    try:
        left = len(tasks)
        while left:
            i, event = await queue.get()
            if event is end:
                left -= 1
            else:
                yield i, event
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _finish(reason: str) -> str:
    """OpenAI's finish_reason: clients know only its values, so the loop guard's "repetition" is a "stop"."""
    return "length" if reason == "length" else "stop"
