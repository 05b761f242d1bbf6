"""Shared request dependencies: the app state and the caller's principal."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from enclave.api.state import State
from enclave.core.errors import BackendUnavailable
from enclave.core.protocols import Principal


def get_state(request: Request) -> State:
    state: State = request.app.state.enclave
    return state


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
