"""Conversations over HTTP: list, read (answers with the caller's ratings), delete — each caller sees only their own."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from enclave.api.routers.deps import get_state, principal
from enclave.core.errors import NotFound
from enclave.core.protocols import Principal

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


@router.get("")
async def list_conversations(request: Request, limit: int = 100, who: Principal = Depends(principal)) -> dict[str, Any]:
    store = get_state(request).store
    rows = await asyncio.to_thread(store.list_conversations, who.name, max(1, min(limit, 500)))
    return {"object": "list", "data": rows}


async def _owned(request: Request, conversation_id: str, who: Principal) -> dict[str, Any]:
    conv = await asyncio.to_thread(get_state(request).store.get_conversation, conversation_id)
    if conv is None or conv["principal"] != who.name:
        raise NotFound(f"unknown conversation '{conversation_id}'")
    return conv


@router.get("/{conversation_id}")
async def get_conversation(
    request: Request, conversation_id: str, who: Principal = Depends(principal)
) -> dict[str, Any]:
    conv = await _owned(request, conversation_id, who)
    conv.pop("principal", None)
    # Each answer with the caller's own rating of it (or null), so a reloaded page shows it.
    rated = await asyncio.to_thread(get_state(request).store.feedback_of_conversation, conversation_id, who.name)
    for m in conv["messages"]:
        if m["role"] == "assistant":
            m["feedback"] = rated.get(m["id"])
    return conv


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(request: Request, conversation_id: str, who: Principal = Depends(principal)) -> Response:
    await _owned(request, conversation_id, who)
    await asyncio.to_thread(get_state(request).store.delete_conversation, conversation_id)
    return Response(status_code=204)
