"""Conversations survive a restart; SIGTERM lets an open stream finish before the process exits."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from tests.conftest import Server
from tests.test_transports import ws_events

# uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit too.
CLEAN_EXIT = (0, -signal.SIGTERM)


def test_conversation_survives_a_server_restart(tmp_path: Path) -> None:
    first = Server(tmp_path, log_name="first").start()
    try:
        with connect(first.ws_url) as ws:
            ws.send(json.dumps({"type": "chat", "message": "My name is Ada. Say hi.", "route": "base"}))
            done = ws_events(ws)[-1]
        assert done["type"] == "done"
    finally:
        assert first.stop() in CLEAN_EXIT
    second = Server(tmp_path, log_name="second").start()
    try:
        conv = second.get(f"/v1/conversations/{done['conversation_id']}").json()
        assert conv["messages"][0]["content"] == "My name is Ada. Say hi."
        assert conv["messages"][1]["status"] == "complete" and conv["messages"][1]["content"]
        # ...and the conversation goes on where it stopped.
        with connect(second.ws_url) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "chat",
                        "message": "What is my name?",
                        "conversation_id": done["conversation_id"],
                        "route": "base",
                    }
                )
            )
            again = ws_events(ws)
        assert again[-1]["type"] == "done"
        assert again[-1]["usage"]["prompt_tokens"] > done["usage"]["prompt_tokens"], "history was fed back"
    finally:
        second.stop()


def test_sigterm_drains_open_streams(tmp_path: Path) -> None:
    server = Server(
        tmp_path,
        env={
            "ENCLAVE_MODELS__BACKEND": "echo",
            "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "20",
            "ENCLAVE_MODELS__MAX_TOKENS": "100",
        },
    ).start()
    events: list[dict[str, Any]] = []

    def talk() -> None:
        with connect(server.ws_url) as ws:
            ws.send(json.dumps({"type": "chat", "message": " ".join(["word"] * 40)}))
            events.extend(ws_events(ws, timeout=30))

    t = threading.Thread(target=talk)
    t.start()
    time.sleep(0.6)  # the answer is streaming
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = None
    try:
        refused = server.get("/readyz").status_code
    except Exception:
        refused = "closed"  # the listener may already be gone: also refuses new work
    t.join(30)
    assert server.stop() in CLEAN_EXIT
    assert "Finished server process" in server.log()
    assert refused in (503, "closed")
    assert events and events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop"
    assert "".join(e["text"] for e in events if e["type"] == "token") == "echo: " + " ".join(["word"] * 40)
