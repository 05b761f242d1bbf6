"""Hostile input over real sockets: schemathesis drives every operation of `/openapi.json` with generated
requests, and hypothesis throws thousands of generated WebSocket frames at one server. Nothing may answer
with a server error, crash, or leave a traceback in the log; the server still chats afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Server


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("fuzz"),
        env={
            "ENCLAVE_MODELS__BACKEND": "echo",
            "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "0",
            "ENCLAVE_MODELS__MAX_TOKENS": "8",
            "ENCLAVE_LIMITS__MAX_QUEUE": "64",
        },
        log_name="fuzz",
    ).start()
    yield server
    log = server.log()
    server.stop()
    for marker in ("Traceback", "Exception in ASGI application", "Internal Server Error"):
        assert marker not in log, f"the fuzzed server logged {marker!r}:\n{log[-4000:]}"


def test_openapi_operations_never_answer_5xx(fuzz_server: Server) -> None:
    """Every operation, with valid and with invalid generated input (schemathesis' positive and negative
    modes), over the real socket; the only check is the one that matters here: no 5xx."""
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    calls = 0
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(checks=[not_a_server_error], timeout=60)

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (an operation without parameters): only valid calls exist.
                assert mode == GenerationMode.NEGATIVE, op.label
    assert calls >= 10 * len(operations)


# -- WebSocket frames ---------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=200)
_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
_chat_fields = st.fixed_dictionaries(
    {"type": st.sampled_from(["chat", "cancel", "auth", "ping", "nonsense", "", "CHAT"])},
    optional={
        "message": _scalars | st.text(min_size=1, max_size=3000),
        "conversation_id": _scalars | st.just("conv_missing"),
        "route": _scalars | st.sampled_from(["auto", "rag", "adapter", "base"]),
        "adapter": _scalars,
        "collection": _scalars | st.sampled_from(["docs", "../etc", "a" * 80]),
        "max_tokens": _scalars | st.integers(-5, 5000),
        "temperature": _scalars | st.floats(-3, 3),
        "top_p": _scalars,
        "stop": _json,
        "seed": _scalars,
        "api_key": _scalars,
        "extra": _json,
    },
)
_frames = (
    _chat_fields.map(json.dumps)
    | _json.map(json.dumps)
    | st.text(max_size=500)
    | st.binary(max_size=300)
    | st.just('{"type": "chat", "message": "' + "x" * 70_000 + '"}')
)


class _Socket:
    """One connection reused across examples; reopened when the server closed it (as it may, with a code)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.closes: list[int] = []

    def get(self) -> ClientConnection:
        if self.ws is None:
            self.ws = connect(self.url, max_size=None, open_timeout=30)
        return self.ws

    def probe(self, frame: str | bytes) -> None:
        """Send the frame, then a ping; the server must answer the ping (after whatever the frame caused)."""
        ws = self.get()
        try:
            ws.send(frame)
            ws.send(json.dumps({"type": "ping"}))
            while True:
                event = json.loads(ws.recv(timeout=30))
                assert event.get("type") in ("route", "sources", "token", "moderation", "done", "error", "auth", "pong")
                if event["type"] == "error":
                    assert event.get("code") != "internal", event
                if event["type"] == "pong":
                    return
                if event["type"] == "token" or event["type"] == "route":
                    continue
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            # Closing is a legitimate answer only for an oversized frame (1009) or a policy breach (1008)
            # or a binary frame the protocol does not take (1003).
            assert code in (1003, 1008, 1009), f"socket closed with {code} after {frame[:200]!r}"
            self.closes.append(code)
            self.ws = None


def test_thousands_of_generated_websocket_frames_crash_nothing(fuzz_server: Server) -> None:
    sock = _Socket(fuzz_server.ws_url)
    count = 0

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(frame=_frames)
    def run(frame: str | bytes) -> None:
        nonlocal count
        count += 1
        sock.probe(frame)

    run()
    assert count >= 2000
    # Still healthy, and still chatting on a fresh socket.
    assert fuzz_server.get("/healthz").status_code == 200
    with connect(fuzz_server.ws_url) as ws:
        ws.send(json.dumps({"type": "chat", "message": "still there?"}))
        last = None
        while last is None or last["type"] not in ("done", "error"):
            last = json.loads(ws.recv(timeout=30))
        assert last["type"] == "done"
