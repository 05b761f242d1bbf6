"""Faults over real sockets: a client that vanishes, a model server that dies mid-answer, and more
requests than the server takes."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Server
from tests.test_transports import ws_events

pytestmark = pytest.mark.slow

LONG = {"type": "chat", "message": "Write a long story about a dragon.", "max_tokens": 400, "route": "base"}


def _first_token_s(server: Server) -> float:
    with connect(server.ws_url) as ws:
        sent = time.monotonic()
        ws.send(json.dumps({"type": "chat", "message": "Say hi.", "max_tokens": 4, "route": "base"}))
        while json.loads(ws.recv(timeout=120))["type"] != "token":
            pass
        took = time.monotonic() - sent
        ws_events(ws)
    return took


def test_disconnect_stops_generation_within_a_second(live_server: Server) -> None:
    baseline = _first_token_s(live_server)
    ws = connect(live_server.ws_url)
    ws.send(json.dumps(LONG))
    events: list[dict[str, Any]] = []
    while sum(e["type"] == "token" for e in events) < 3:
        events.append(json.loads(ws.recv(timeout=120)))
    ws.close()  # the client goes away mid-answer, without a cancel
    time.sleep(1.0)
    # The model is free again one second later: had the abandoned answer kept decoding (400 tokens, tens
    # of seconds here), the next request would queue behind it.
    after = _first_token_s(live_server)
    assert after < baseline + 1.0, (baseline, after)
    said = "".join(e["text"] for e in events if e["type"] == "token")
    stored = []
    for c in live_server.get("/v1/conversations").json()["data"]:
        conv = live_server.get(f"/v1/conversations/{c['id']}").json()
        stored += [m for m in conv["messages"] if m["role"] == "assistant" and m["status"] == "cancelled"]
    assert any(m["content"].startswith(said) and len(m["content"]) < 2000 for m in stored), stored


def test_model_server_dying_mid_answer_is_an_error_event_and_a_stored_partial_turn(tmp_path: Path) -> None:
    models = Server(tmp_path / "models", command="model-server", log_name="model-server").start()
    api = Server(
        tmp_path / "api",
        env={"ENCLAVE_MODELS__BACKEND": "tgi", "ENCLAVE_MODELS__URL": models.url, "ENCLAVE_MODELS__MAX_TOKENS": "400"},
        log_name="api",
    ).start()
    try:
        with connect(api.ws_url) as ws:
            ws.send(json.dumps(LONG))
            events: list[dict[str, Any]] = []
            while sum(e["type"] == "token" for e in events) < 3:
                events.append(json.loads(ws.recv(timeout=120)))
            assert models.proc is not None
            killed = time.monotonic()
            models.proc.send_signal(signal.SIGKILL)
            rest = ws_events(ws, timeout=30)
            took = time.monotonic() - killed
        final = rest[-1]
        assert final["type"] == "error" and final["code"] in ("backend_unavailable", "backend_error"), final
        assert took < 5, f"the error took {took:.1f} s"
        assert [e["type"] for e in rest].count("error") == 1 and not any(e["type"] == "done" for e in rest)
        conv = api.get(f"/v1/conversations/{final['conversation_id']}").json()
        answer = conv["messages"][-1]
        said = "".join(e["text"] for e in events + rest if e["type"] == "token")
        assert answer["role"] == "assistant" and answer["status"] == "error" and answer["content"] == said
        assert said, "part of the answer had streamed before the failure"
        # The API itself is fine and says so.
        assert api.get("/healthz").status_code == 200
    finally:
        api.stop()
        models.stop()


def test_overload_is_429_and_websocket_1013(tmp_path: Path) -> None:
    server = Server(
        tmp_path,
        env={
            "ENCLAVE_MODELS__BACKEND": "echo",
            "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "10",
            "ENCLAVE_LIMITS__MAX_CONCURRENT_GENERATIONS": "1",
            "ENCLAVE_LIMITS__MAX_QUEUE": "1",
        },
        log_name="overload",
    ).start()
    body = {"message": " ".join(["word"] * 40), "route": "base"}  # 4 s per answer
    holders = []
    try:
        started = threading.Barrier(3)

        def hold() -> None:
            with connect(server.ws_url) as ws:
                ws.send(json.dumps({"type": "chat", **body}))
                started.wait(timeout=30)
                ws_events(ws, timeout=60)

        for _ in range(2):  # one generating, one queued: the server is full
            t = threading.Thread(target=hold)
            t.start()
            holders.append(t)
        started.wait(timeout=30)
        time.sleep(0.3)
        t0 = time.monotonic()
        r = server.post("/v1/chat/stream", json=body)
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1 and time.monotonic() - t0 < 1.0  # at once, not after a wait
        r = server.post(
            "/v1/chat/completions",
            json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 429 and "retry-after" in r.headers
        with connect(server.ws_url) as ws:
            ws.send(json.dumps({"type": "chat", **body}))
            assert json.loads(ws.recv(timeout=10))["code"] == "overloaded"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        for t in holders:
            t.join(60)
        # Once the queue drains, the server takes work again.
        assert server.post("/v1/chat/stream", json=body).status_code == 200
    finally:
        server.stop()
