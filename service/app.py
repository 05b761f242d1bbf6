"""The app factory: `create_app(settings)` builds everything in the lifespan, nothing at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import EnclaveError, validation_message
from service.settings import Settings, offline_environment
from service.state import State

log = logging.getLogger("enclave")
WEB_DIR = Path(__file__).parent / "web"


class BodyLimit:
    """Refuses a request body over the limit before the app reads it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                resp = JSONResponse(
                    {
                        "error": {
                            "code": "invalid_request",
                            "type": "invalid_request",
                            "message": f"request body over {self.limit} bytes",
                        }
                    },
                    status_code=413,
                )
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_response(exc: EnclaveError) -> JSONResponse:
    headers = {"Retry-After": str(int(exc.retry_after or 1))} if exc.code == "overloaded" else None
    return JSONResponse(
        {"error": {"code": exc.code, "type": exc.code, "message": exc.message}},
        status_code=exc.status,
        headers=headers,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    offline_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_path.mkdir(parents=True, exist_ok=True)
        state = State(settings)
        app.state.enclave = state
        loading = asyncio.create_task(state.load(retry=True))
        try:
            yield
        finally:
            await state.drain(timeout=settings.server.drain_seconds)
            loading.cancel()
            state.close()

    app = FastAPI(
        title="Enclave",
        version="0.1.0",
        description="On-prem streaming chat: RAG, LoRA adapters, routing and moderation.",
        lifespan=lifespan,
    )

    @app.exception_handler(EnclaveError)
    async def _enclave_error(_: Request, exc: EnclaveError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "code": "invalid_request",
                    "type": "invalid_request",
                    "message": validation_message(exc.errors()),
                }
            },
            status_code=400,
        )

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            {"error": {"code": "internal", "type": "internal", "message": "internal error"}}, status_code=500
        )

    from service.transports import (
        adapters_api,
        completions_api,
        conversations,
        documents,
        embeddings_api,
        health,
        openai_api,
        sse,
        ws,
    )

    app.include_router(health.router)
    app.include_router(ws.router)
    app.include_router(sse.router)
    app.include_router(openai_api.router)
    app.include_router(embeddings_api.router)
    app.include_router(completions_api.router)
    app.include_router(conversations.router)
    app.include_router(adapters_api.router)
    app.include_router(documents.router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")
    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes)
    return app
