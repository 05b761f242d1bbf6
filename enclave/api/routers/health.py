"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from enclave.api.routers.deps import get_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = get_state(request)
    body = {
        "ready": state.ready,
        "backend": state.backend.name,
        "knowledge_base": state.kb is not None,
        "draining": state.draining,
        "error": state.load_error,
        # The llama.cpp engine: which weight format runs, which was asked for, and what failed its check.
        "engine": state.backend.engine_status,
    }
    return JSONResponse(body, status_code=200 if state.ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = get_state(request)
    state.auth.principal(state.auth.bearer(request.headers.get("authorization")))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
