"""Shared request dependencies: the app state, its knowledge base and adapter registry, and the caller's principal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from enclave.adapters.registry import AdapterRegistry
from enclave.api.state import State
from enclave.core.errors import BackendUnavailable
from enclave.core.protocols import Principal

if TYPE_CHECKING:
    from enclave.knowledge.inbox import Inbox
    from enclave.knowledge.store import KnowledgeBase


def get_state(request: Request) -> State:
    state: State = request.app.state.enclave
    return state


def kb_of(request: Request) -> KnowledgeBase:
    """The knowledge base; BackendUnavailable (503) until the app has opened it."""
    kb = get_state(request).kb
    if kb is None:
        raise BackendUnavailable("the knowledge base is not ready yet")
    return kb


def inbox_of(request: Request) -> Inbox:
    """The upload queue; BackendUnavailable (503) until the knowledge base is open."""
    inbox = get_state(request).inbox
    if inbox is None:
        raise BackendUnavailable("the knowledge base is not ready yet")
    return inbox


def registry_of(request: Request) -> AdapterRegistry:
    """The adapter registry; BackendUnavailable (503) until loaded. The app and the model server both mount the
    adapters router, and each state holds a registry: `registry: AdapterRegistry | None`."""
    registry: AdapterRegistry | None = request.app.state.enclave.registry
    if registry is None:
        raise BackendUnavailable("the adapter registry is not ready yet")
    return registry


def principal(request: Request) -> Principal:
    state = get_state(request)
    key = state.auth.bearer(request.headers.get("authorization")) or request.headers.get("x-api-key")
    return state.auth.principal(key)


def require_ready(state: State) -> None:
    if not state.ready:
        why = "shutting down" if state.draining else "still loading the model"
        raise BackendUnavailable(f"the server is {why}; retry shortly")


def event_json(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = event.model_dump(mode="json")
    if data.get("type") == "error":  # ids are only present when a turn was stored
        data = {k: v for k, v in data.items() if v is not None}
    elif data.get("type") == "done" and data.get("logprobs") is None:  # present only when asked for
        data.pop("logprobs", None)
    return data
