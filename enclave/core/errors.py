"""Enclave's one error tree; enclave/api/errors.py is the one place it becomes HTTP, WebSocket and TGI responses.

EnclaveError
├── InvalidRequest        invalid_request      400
├── Unauthorized          unauthorized         401
├── Forbidden             forbidden            403
├── NotFound              not_found            404
├── Overloaded            overloaded           429 (retry_after)
├── ModerationBlocked     moderation_blocked   400
├── BackendUnavailable    backend_unavailable  503
├── Timeout               timeout              504
└── InternalError         internal             500
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class EnclaveError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidRequest(EnclaveError):
    code, status = "invalid_request", 400


class Unauthorized(EnclaveError):
    code, status = "unauthorized", 401


class Forbidden(EnclaveError):
    code, status = "forbidden", 403


class NotFound(EnclaveError):
    code, status = "not_found", 404


class Overloaded(EnclaveError):
    code, status = "overloaded", 429


class ModerationBlocked(EnclaveError):
    code, status = "moderation_blocked", 400


class BackendUnavailable(EnclaveError):
    code, status = "backend_unavailable", 503


class Timeout(EnclaveError):
    code, status = "timeout", 504


class InternalError(EnclaveError):
    code, status = "internal", 500


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """A request's validation errors (pydantic's) in one line, the same on every transport: a field the request
    model does not declare is named as not supported (Enclave would otherwise have to ignore it)."""
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")  # FastAPI's prefix for the JSON body
        if err.get("type") == "extra_forbidden":
            parts.append(f"the field '{where}' is not supported")
        else:
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts)


def from_code(code: str, message: str) -> EnclaveError:
    """The error an `error` event with this code stands for (a non-streamed response raises it again)."""
    kinds: dict[str, type[EnclaveError]] = {k.code: k for k in EnclaveError.__subclasses__()}
    return kinds.get(code, InternalError)(message)


def as_enclave_error(exc: BaseException) -> EnclaveError:
    """Any exception as an EnclaveError; unknown ones never expose their text to a client."""
    if isinstance(exc, EnclaveError):
        return exc
    return InternalError("internal error")
