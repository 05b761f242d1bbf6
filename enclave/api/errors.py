"""The one place an EnclaveError becomes what a client reads: HTTP JSON (OpenAI's shape), a WebSocket event
and close code, and the TGI protocol of the model server.

| code                | HTTP | TGI | WebSocket                       |
|---------------------|------|-----|---------------------------------|
| invalid_request     | 400  | 422 | event only, the socket stays open |
| unauthorized        | 401  | 401 | event, close 1008               |
| forbidden           | 403  | 403 | event, close 1008               |
| not_found           | 404  | 422 | event only                      |
| overloaded          | 429 (Retry-After) | 429 | event, close 1013 |
| moderation_blocked  | 400  | 422 | event only                      |
| backend_unavailable | 503  | 503 | event only                      |
| timeout             | 504  | 504 | event only                      |
| internal            | 500  | 500 | event, close 1011               |
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from enclave.core.errors import EnclaveError, InternalError, InvalidRequest, validation_message
from enclave.core.events import ErrorEvent

log = logging.getLogger("enclave")

# A WebSocket error with one of these codes ends the connection; any other leaves it open for the next frame.
WS_CLOSE_CODES = {"overloaded": 1013, "unauthorized": 1008, "forbidden": 1008, "internal": 1011}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of an HTTP error (the OpenAI client reads `message`; `code` says which of ours it is)."""
    return {"error": {"code": code, "type": code, "message": message}}


def error_response(exc: EnclaveError, status: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(int(exc.retry_after or 1))} if exc.code == "overloaded" else None
    return JSONResponse(error_body(exc.code, exc.message), status_code=status or exc.status, headers=headers)


def too_large(limit: int) -> JSONResponse:
    return error_response(InvalidRequest(f"request body over {limit} bytes"), status=413)


def ws_event(code: str, message: str) -> dict[str, Any]:
    """An `error` event as the WebSocket sends it."""
    return ErrorEvent(code=code, message=message).model_dump(mode="json", exclude_none=True)  # type: ignore[arg-type]


def ws_close_code(code: str) -> int | None:
    """The close code an error of this code ends a WebSocket with (None: the socket stays open)."""
    return WS_CLOSE_CODES.get(code)


def tgi_response(exc: EnclaveError) -> JSONResponse:
    """TGI's error shape: `{"error", "error_type"}`; what TGI calls validation (422) covers our 400 and 404."""
    status, kind = (422, "validation") if exc.status in (400, 404) else (exc.status, exc.code)
    return JSONResponse({"error": exc.message, "error_type": kind}, status_code=status)


def tgi_stream_error(exc: EnclaveError) -> dict[str, str]:
    """The last server-sent event of a TGI stream that failed after it started."""
    return {"error": exc.message, "error_type": exc.code}


def install(app: FastAPI, *, tgi: bool = False) -> None:
    """Every error the app raises answered in its protocol's shape: ours (OpenAI's) or, with `tgi`, TGI's.
    An exception that is not an EnclaveError is logged and answered `internal`, its text never shown."""
    respond = tgi_response if tgi else error_response

    @app.exception_handler(EnclaveError)
    async def _enclave_error(_: Request, exc: EnclaveError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(InvalidRequest(validation_message(exc.errors())))

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return respond(InternalError("internal error"))
