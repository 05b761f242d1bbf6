"""Adapter registry over HTTP: list, hot-load and unload LoRA adapters (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from enclave.api.routers.deps import principal, registry_of
from enclave.core.errors import Forbidden
from enclave.core.protocols import Principal

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


def _admin(who: Principal) -> None:
    if not who.admin:
        raise Forbidden("managing adapters needs an admin key")


@router.get("")
async def list_adapters(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"object": "list", "data": registry_of(request).available()}


@router.post("/{name}/load")
async def load_adapter(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    _admin(who)
    return await registry_of(request).load(name)


@router.delete("/{name}", status_code=204)
async def unload_adapter(name: str, request: Request, who: Principal = Depends(principal)) -> Response:
    _admin(who)
    await registry_of(request).unload(name)
    return Response(status_code=204)
