"""Adapter registry over HTTP: list, hot-load and unload LoRA adapters (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from enclave.api.routers.deps import get_state, principal
from enclave.core.errors import BackendUnavailable, Forbidden
from enclave.core.protocols import Principal

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


def _registry(request: Request) -> Any:
    registry = get_state(request).registry
    if registry is None:
        raise BackendUnavailable("the adapter registry is not ready yet")
    return registry


def _admin(who: Principal) -> None:
    if not who.admin:
        raise Forbidden("managing adapters needs an admin key")


@router.get("")
async def list_adapters(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"object": "list", "data": _registry(request).available()}


@router.post("/{name}/load")
async def load_adapter(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    _admin(who)
    entry: dict[str, Any] = await _registry(request).load(name)
    return entry


@router.delete("/{name}", status_code=204)
async def unload_adapter(name: str, request: Request, who: Principal = Depends(principal)) -> Response:
    _admin(who)
    await _registry(request).unload(name)
    return Response(status_code=204)
