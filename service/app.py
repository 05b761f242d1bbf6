"""The app factory: `create_app(settings)` builds everything in the lifespan, nothing at import time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import Authenticator
from service.backends import build_backend
from service.chat.pipeline import ChatPipeline
from service.errors import EnclaveError
from service.limits import KeyLimits
from service.metrics import Metrics
from service.settings import Settings, offline_environment
from service.store import SqlConversationStore

log = logging.getLogger("enclave")
WEB_DIR = Path(__file__).parent / "web"


class State:
    """Everything the lifespan builds; transports reach it through request.app.state.enclave."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.auth = Authenticator(settings.auth)
        self.store = SqlConversationStore(settings.database_url)
        self.backend: Any = build_backend(settings)
        self.kb: Any = None
        self.registry: Any = None
        self.pipeline = ChatPipeline(settings, self.backend, self.store, self.metrics)
        if self.auth.enabled:
            self.pipeline.key_limits = KeyLimits(settings.limits, settings.storage.redis_url)
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self._loaded: set[str] = set()
        self.started = time.time()

    async def load(self, retry: bool = False) -> None:
        """Load the model and the knowledge base; /readyz turns true when both are up.

        With `retry` (the server) a failure is retried with backoff until it works or the process drains:
        a Chroma server or model server that is not up yet must not leave a pod unready for ever. Each
        part is loaded once; a retry resumes where the last attempt failed.
        """
        delay = 1.0
        while True:
            try:
                await self._load_parts()
            except Exception as exc:  # readiness stays false and says why
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.exception("enclave failed to load%s", f"; retrying in {delay:.0f} s" if retry else "")
                if not retry or self.draining:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.load_error = None
            self.ready = not self.draining
            log.info("enclave ready: backend=%s", self.backend.name)
            return

    async def _load_parts(self) -> None:
        if "backend" not in self._loaded:
            await self.backend.aload()
            self._loaded.add("backend")
        if self.registry is None:
            await self._open_registry()
        if self.kb is None:
            self.kb = await asyncio.to_thread(self._open_kb)
            if self.kb is not None:
                self.pipeline.retriever = self.kb.retriever()
                self.pipeline.collections = self.kb.collection_names
                self.pipeline.embed = self.kb.embedder.embed
        if self.settings.moderation.enabled and self.pipeline.moderator is None:
            from service.moderation import build_moderator

            # After the knowledge base: the embedding classifier reads the vectors of its embedder.
            self.pipeline.moderator = await asyncio.to_thread(
                build_moderator, self.settings.moderation, self.backend, self.pipeline.embed
            )
        self.pipeline.domains = self.registry.domains

    async def _open_registry(self) -> None:
        from adapters.registry import AdapterRegistry

        host = self.backend if hasattr(self.backend, "add_adapter") else None
        base_sha = getattr(self.backend, "base_sha256", None)
        self.registry = AdapterRegistry(self.settings.adapters_path, host, base_sha)
        if host is not None and self.settings.adapters.autoload:
            for problem in await self.registry.load_all():
                log.warning("adapter skipped: %s", problem)

    def _open_kb(self) -> Any:
        try:
            from ingest.kb import KnowledgeBase
        except ImportError:
            log.warning("knowledge base unavailable: the ingest package is not installed")
            return None
        kb = KnowledgeBase.from_settings(self.settings)
        if self.settings.rag.ingest_samples:
            from ingest.samples import ensure_samples

            ensure_samples(kb, self.settings.rag.default_collection)
        return kb

    async def drain(self, timeout: float) -> None:
        """Readiness off, new work refused, open streams given `timeout` seconds to finish."""
        self.ready = False
        self.draining = True
        self.pipeline.admission.closed = True
        deadline = time.monotonic() + timeout
        while self.pipeline.admission.admitted > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def close(self) -> None:
        self.backend.close()
        self.store.close()


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
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            if err.get("type") == "extra_forbidden":  # a field Enclave would otherwise have to ignore
                parts.append(f"the field '{where}' is not supported")
            else:
                parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(
            {"error": {"code": "invalid_request", "type": "invalid_request", "message": "; ".join(parts)}},
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
