"""WebSocket chat at /v1/chat/ws: JSON frames in, one JSON frame per event out; the socket stays open.

Client frames: {"type":"auth","api_key"} (first, when keys are configured), {"type":"chat",...},
{"type":"cancel"}, {"type":"ping"}, and {"type":"feedback","message_id","rating","reason"?,"correction"?}
(allowed while an answer streams). Bad frames get an `error` event; the socket keeps working.

A feedback frame is answered by {"type":"feedback","feedback":{...}} or by an `error` event that carries
"frame":"feedback" and the message_id it was about: it is not the end of a streaming answer, and it never
closes the socket (not even `overloaded`, a rating flood: the answer streaming on the socket goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from enclave.api.errors import WS_CLOSE_CODES, ws_close_code, ws_event
from enclave.api.routers.deps import event_json, require_ready
from enclave.chat.feedback import FeedbackFrame
from enclave.chat.schema import ChatRequest
from enclave.core.errors import EnclaveError, Unauthorized, as_enclave_error, validation_message
from enclave.core.protocols import Principal

log = logging.getLogger("enclave")
router = APIRouter()
UNAUTHORIZED = WS_CLOSE_CODES["unauthorized"]


class Session:
    """One socket: at most one answer streams at a time, and `cancel` or a disconnect stops it."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.state = ws.app.state.enclave
        self.principal: Principal | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel = asyncio.Event()
        self.send_lock = asyncio.Lock()

    async def send(self, data: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(data))

    def origin_allowed(self) -> bool:
        origin = self.ws.headers.get("origin")
        if origin is None:  # not a browser
            return True
        allowed = self.state.auth.origins
        if allowed:
            return origin in allowed
        host = self.ws.headers.get("host", "")
        return origin.split("://", 1)[-1] == host

    async def serve(self) -> None:
        if not self.origin_allowed():
            await self.ws.close(code=1008, reason="origin not allowed")
            return
        await self.ws.accept()
        auth = self.state.auth
        header_key = auth.bearer(self.ws.headers.get("authorization")) or self.ws.headers.get("x-api-key")
        if not auth.enabled or header_key:
            try:
                self.principal = auth.principal(header_key)
            except EnclaveError as exc:
                await self.send(ws_event(exc.code, exc.message))
                await self.ws.close(code=UNAUTHORIZED, reason="unauthorized")
                return
        limit = self.state.settings.limits.max_ws_frame_bytes
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:  # a binary frame
                    size = len(message.get("bytes") or b"")
                    if size > limit:
                        await self.ws.close(code=1009, reason="frame too big")
                        return
                    await self.send(ws_event("invalid_request", "binary frames are not accepted: send JSON as text"))
                    continue
                if len(text.encode()) > limit:
                    await self.send(ws_event("invalid_request", f"frame over {limit} bytes"))
                    await self.ws.close(code=1009, reason="frame too big")
                    return
                if not await self.handle(text):
                    return
        except WebSocketDisconnect:
            pass
        except RuntimeError:  # receive on a socket the peer already closed
            pass
        finally:
            if self.task is not None and not self.task.done():
                self.cancel.set()
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.task

    async def handle(self, text: str) -> bool:
        """Handle one frame; False when the socket was closed."""
        try:
            frame = json.loads(text)
        except json.JSONDecodeError as exc:
            await self.send(ws_event("invalid_request", f"frame is not valid JSON: {exc.msg}"))
            return True
        if not isinstance(frame, dict):
            await self.send(ws_event("invalid_request", "frame must be a JSON object with a 'type'"))
            return True
        kind = frame.pop("type", None)
        if kind == "ping":
            await self.send({"type": "pong"})
            return True
        if kind == "auth":
            try:
                self.principal = self.state.auth.principal(frame.get("api_key"))
                await self.send({"type": "auth", "ok": True})
                return True
            except Unauthorized as exc:
                await self.send(ws_event(exc.code, exc.message))
                await self.ws.close(code=UNAUTHORIZED, reason="unauthorized")
                return False
        if kind == "cancel":
            if self.task is not None and not self.task.done():
                self.cancel.set()
            else:
                await self.send(ws_event("invalid_request", "nothing to cancel"))
            return True
        if kind not in ("chat", "feedback"):
            await self.send(
                ws_event(
                    "invalid_request", f"unknown frame type {kind!r}; expected chat, feedback, cancel, auth or ping"
                )
            )
            return True
        if self.principal is None:
            await self.send(ws_event("unauthorized", 'send {"type":"auth","api_key":...} first'))
            await self.ws.close(code=UNAUTHORIZED, reason="unauthorized")
            return False
        if kind == "feedback":
            await self.rate(frame)
            return True
        if self.task is not None and not self.task.done():
            await self.send(ws_event("invalid_request", "an answer is still streaming; send cancel first"))
            return True
        try:
            req = ChatRequest.model_validate(frame)
            require_ready(self.state)
            self.state.pipeline.validate(req)
            ticket = await self.state.pipeline.admit(self.principal)
        except ValidationError as exc:
            await self.send(ws_event("invalid_request", validation_message(exc.errors())))
            return True
        except EnclaveError as exc:
            await self.send(ws_event(exc.code, exc.message))
            close = ws_close_code(exc.code)
            if close is not None:
                await self.ws.close(code=close, reason=exc.message[:100])
                return False
            return True
        self.state.metrics.requests.labels("websocket").inc()
        self.cancel = asyncio.Event()
        self.task = asyncio.create_task(self.answer(req, ticket))
        return True

    async def rate(self, frame: dict[str, Any]) -> None:
        """A feedback frame: the stored rating, or an error event marked as the feedback frame's."""
        assert self.principal is not None
        try:
            body = FeedbackFrame.model_validate(frame)
            fb = await self.state.feedback.rate(self.principal, body.message_id, body)
        except ValidationError as exc:
            await self.send(self.feedback_error("invalid_request", validation_message(exc.errors()), frame))
        except Exception as exc:
            if not isinstance(exc, EnclaveError):
                log.exception("feedback failed")
            err = as_enclave_error(exc)
            await self.send(self.feedback_error(err.code, err.message, frame))
        else:
            await self.send({"type": "feedback", "feedback": fb})

    @staticmethod
    def feedback_error(code: str, message: str, frame: dict[str, Any]) -> dict[str, Any]:
        event = ws_event(code, message) | {"frame": "feedback"}
        if isinstance(frame.get("message_id"), str):
            event["message_id"] = frame["message_id"][:100]
        return event

    async def answer(self, req: ChatRequest, ticket: Any) -> None:
        assert self.principal is not None
        run = self.state.pipeline.run(req, self.principal, cancel=self.cancel, ticket=ticket)
        try:
            async for event in run:
                await self.send(event_json(event))
        except (WebSocketDisconnect, RuntimeError):
            self.cancel.set()
        finally:
            await run.aclose()


@router.websocket("/v1/chat/ws")
async def chat_ws(ws: WebSocket) -> None:
    await Session(ws).serve()
