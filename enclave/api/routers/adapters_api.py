"""Adapter registry over HTTP: list, hot-load and unload LoRA adapters, and the gate's decisions (admin)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from enclave.api.routers.deps import principal, registry_of
from enclave.core.errors import Forbidden, InvalidRequest
from enclave.core.protocols import Principal

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


def _admin(who: Principal) -> None:
    if not who.admin:
        raise Forbidden("managing adapters needs an admin key")


@router.get("")
async def list_adapters(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"object": "list", "data": registry_of(request).available()}


@router.get("/history")
async def history(
    request: Request, name: str | None = None, limit: int = 20, who: Principal = Depends(principal)
) -> dict[str, Any]:
    """The promotions, refusals and rollbacks the gate logged, newest first, with their figures (admin)."""
    _admin(who)
    if not 1 <= limit <= 500:
        raise InvalidRequest("limit must be between 1 and 500")
    events = await asyncio.to_thread(registry_of(request).served.history, name)
    return {"object": "list", "data": events[::-1][:limit], "total": len(events)}


@router.post("/{name}/load")
async def load_adapter(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    _admin(who)
    return await registry_of(request).load(name)


@router.delete("/{name}", status_code=204)
async def unload_adapter(name: str, request: Request, who: Principal = Depends(principal)) -> Response:
    _admin(who)
    await registry_of(request).unload(name)
    return Response(status_code=204)
