"""`enclave model-server`: the small model and its adapters behind TGI's HTTP protocol.

/generate, /generate_stream, POST / (TGI's compat route, which the `text-generation` client
uses), /info and /health, with `parameters.adapter_id` choosing a LoRA adapter per request.
The chat service reaches it through its TGI backend, exactly as it would reach a real TGI.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from enclave.adapters.registry import AdapterRegistry
from enclave.api import errors
from enclave.api.auth import Authenticator
from enclave.core.errors import BackendUnavailable, EnclaveError, NotFound
from enclave.core.protocols import Generation, GenerationParams, LocalBackend
from enclave.core.settings import Settings, offline_environment
from enclave.engine.build import build_local_backend

log = logging.getLogger("enclave.model_server")

# TGI's finish reasons; the loop guard's "repetition" also goes out exactly as `enclave_finish_reason`.
_FINISH = {"stop": "eos_token", "length": "length", "repetition": "stop_sequence", "cancelled": "length"}


class TGIParameters(BaseModel):
    do_sample: bool = False
    max_new_tokens: int = Field(20, ge=1)
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, lt=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0)
    # Unset: this server's own defaults (models.*). presence_penalty is Enclave's addition to TGI's parameters.
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    details: bool = False
    return_full_text: bool = False
    adapter_id: str | None = None


class TGIRequest(BaseModel):
    inputs: str = Field(min_length=1)
    parameters: TGIParameters = Field(default_factory=TGIParameters)  # type: ignore[arg-type]
    stream: bool = False


class ModelServerState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: LocalBackend = build_local_backend(settings)
        self.auth = Authenticator(settings.auth)
        self.registry: AdapterRegistry | None = None
        self.follow: asyncio.Task[None] | None = None  # swaps in adapters promoted by another process
        self.ready = False

    async def load(self) -> None:
        await self.backend.aload()
        self.registry = AdapterRegistry(self.settings.adapters_path, self.backend, self.backend.base_sha256)
        for problem in await self.registry.load_all():
            log.warning("adapter skipped: %s", problem)
        self.follow = asyncio.create_task(self.registry.follow())
        self.ready = True


def _params(p: TGIParameters, settings: Settings) -> GenerationParams:
    sampling = p.do_sample or p.temperature is not None
    m = settings.models
    return GenerationParams(
        max_tokens=p.max_new_tokens,
        temperature=(p.temperature or 1.0) if sampling else 0.0,
        top_p=p.top_p or 1.0,
        stop=p.stop,
        seed=p.seed,
        repetition_penalty=m.repetition_penalty if p.repetition_penalty is None else p.repetition_penalty,
        frequency_penalty=m.frequency_penalty if p.frequency_penalty is None else p.frequency_penalty,
        presence_penalty=m.presence_penalty if p.presence_penalty is None else p.presence_penalty,
        loop_guard=m.loop_guard,
    )


def create_model_server(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    offline_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ModelServerState(settings)
        app.state.enclave = state
        await state.load()
        try:
            yield
        finally:
            if state.follow is not None:
                state.follow.cancel()
            state.backend.close()

    app = FastAPI(title="Enclave model server (TGI protocol)", lifespan=lifespan)

    errors.install(app, tgi=True)

    def state_of(request: Request) -> ModelServerState:
        st: ModelServerState = request.app.state.enclave
        st.auth.principal(st.auth.bearer(request.headers.get("authorization")))
        return st

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        st: ModelServerState = request.app.state.enclave
        return JSONResponse({}, status_code=200 if st.ready else 503)

    @app.get("/info")
    async def info(request: Request) -> dict[str, Any]:
        st = state_of(request)
        sha = st.backend.base_sha256
        return {
            "model_id": settings.models.name,
            "model_sha": sha,
            "model_dtype": st.backend.dtype,
            "model_device_type": "cpu",
            "max_input_tokens": settings.models.context_tokens - 1,
            "max_total_tokens": settings.models.context_tokens,
            "max_concurrent_requests": 1,
            "version": "enclave-0.1.0",
            "router": "enclave",
            "adapters": st.backend.list_adapters(),
        }

    async def generate_once(st: ModelServerState, req: TGIRequest) -> dict[str, Any]:
        result = Generation()
        text, tokens = "", []
        async for piece, tid in st.backend.stream_tokens(
            req.inputs, _params(req.parameters, settings), req.parameters.adapter_id, result
        ):
            text += piece
            tokens.append({"id": tid, "text": piece, "logprob": None, "special": False})
        full = req.inputs + text if req.parameters.return_full_text else text
        return {
            "generated_text": full,
            "details": {
                "finish_reason": _FINISH[result.finish_reason],
                "enclave_finish_reason": result.finish_reason,
                "generated_tokens": result.completion_tokens,
                "seed": req.parameters.seed,
                "prefill": [],
                "tokens": tokens,
            },
        }

    def stream_lines(st: ModelServerState, req: TGIRequest) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            result = Generation()
            text, held = "", None
            try:
                async for piece, tid in st.backend.stream_tokens(
                    req.inputs, _params(req.parameters, settings), req.parameters.adapter_id, result
                ):
                    if held is not None:  # one piece behind, so the last one can carry the summary
                        yield _event(held, None, None)
                    text += piece
                    held = {"id": tid, "text": piece, "logprob": None, "special": False}
            except EnclaveError as exc:
                yield f"data: {json.dumps(errors.tgi_stream_error(exc))}\n\n"
                return
            last = held or {"id": 0, "text": "", "logprob": None, "special": True}
            details = {
                "finish_reason": _FINISH[result.finish_reason],
                "enclave_finish_reason": result.finish_reason,
                "generated_tokens": result.completion_tokens,
                "seed": req.parameters.seed,
            }
            full = req.inputs + text if req.parameters.return_full_text else text
            yield _event(last, full, details)

        return StreamingResponse(lines(), media_type="text/event-stream")

    def checked(request: Request, req: TGIRequest) -> ModelServerState:
        st = state_of(request)
        if not st.ready:
            raise BackendUnavailable("the model is still loading")
        adapter = req.parameters.adapter_id
        if adapter is not None and adapter not in st.backend.list_adapters():
            raise NotFound(f"unknown adapter_id '{adapter}'")
        return st

    @app.post("/generate")
    async def generate(req: TGIRequest, request: Request) -> dict[str, Any]:
        return await generate_once(checked(request, req), req)

    @app.post("/generate_stream")
    async def generate_stream(req: TGIRequest, request: Request) -> StreamingResponse:
        return stream_lines(checked(request, req), req)

    @app.post("/", response_model=None)
    async def compat(req: TGIRequest, request: Request) -> StreamingResponse | list[dict[str, Any]]:
        st = checked(request, req)
        if req.stream:
            return stream_lines(st, req)
        return [await generate_once(st, req)]

    from enclave.api.routers import adapters_api

    app.include_router(adapters_api.router)
    return app


def _event(token: dict[str, Any], generated: str | None, details: dict[str, Any] | None) -> str:
    return f"data: {json.dumps({'token': token, 'generated_text': generated, 'details': details})}\n\n"
