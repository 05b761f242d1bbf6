"""The app factory: `create_app(settings)` builds everything in the lifespan, nothing at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave.api import errors
from enclave.api.state import State
from enclave.core.settings import Settings, offline_environment

log = logging.getLogger("enclave")
WEB_DIR = Path(__file__).parent / "web"


class BodyLimit:
    """Refuses a request body over the limit before the app reads it."""

    UPLOADS = ("/v1/documents", "/v1/ingest")  # document uploads have their own limit (ingest.max_upload_bytes)

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.upload_limit if scope["path"] in self.UPLOADS else self.limit
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await errors.too_large(limit)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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

    errors.install(app)

    from enclave.api.routers import (
        adapters_api,
        completions_api,
        conversations,
        documents,
        embeddings_api,
        feedback,
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
    app.include_router(feedback.router)
    app.include_router(adapters_api.router)
    app.include_router(documents.router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")
    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes, upload_limit=settings.ingest.max_upload_bytes)
    return app
