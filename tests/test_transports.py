"""The three transports over real sockets, against the echo backend and the real small model."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import Server


def ws_events(ws: Any, timeout: float = 120) -> list[dict[str, Any]]:
    """Frames until the one final `done` or `error`."""
    events = []
    while True:
        ev = json.loads(ws.recv(timeout=timeout))
        events.append(ev)
        if ev["type"] in ("done", "error"):
            return events


def sse_events(resp: httpx.Response) -> list[dict[str, Any]]:
    events, kind = [], None
    for line in resp.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == kind
            events.append(data)
    return events


def assert_complete_stream(events: list[dict[str, Any]]) -> str:
    kinds = [e["type"] for e in events]
    assert kinds[0] == "route", kinds
    assert kinds.count("done") + kinds.count("error") == 1 and kinds[-1] == "done", events[-1]
    text = "".join(e["text"] for e in events if e["type"] == "token")
    assert text.strip(), "the answer is empty"
    done = events[-1]
    assert done["conversation_id"].startswith("conv_") and done["message_id"].startswith("msg_")
    assert done["usage"]["completion_tokens"] > 0
    assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
    return text


def test_websocket_streams_and_keeps_the_conversation(server: Server) -> None:
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "chat", "message": "Describe the colours of the sky at sunset in two sentences."}))
        first = ws_events(ws)
        text = assert_complete_stream(first)
        # Past the moderation hold-back window (8 tokens) the answer streams piece by piece.
        assert sum(e["type"] == "token" for e in first) >= 2, "tokens should stream one by one"
        cid = first[-1]["conversation_id"]
        # The socket stays open for the next message of the same conversation.
        ws.send(json.dumps({"type": "chat", "message": "And at night?", "conversation_id": cid}))
        second = ws_events(ws)
        assert_complete_stream(second)
        assert second[-1]["conversation_id"] == cid
    conv = server.get(f"/v1/conversations/{cid}").json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][1]["content"] == text
    assert all(m["status"] == "complete" for m in conv["messages"])


def test_sse_stream(server: Server) -> None:
    with httpx.stream("POST", server.url + "/v1/chat/stream", json={"message": "Say hello."}, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert_complete_stream(events)


def test_openai_client_stream_and_not(server: Server) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    models = [m.id for m in client.models.list()]
    assert "smollm2-135m-instruct" in models
    resp = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
        max_tokens=12,
    )
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert 0 < resp.usage.completion_tokens <= 12  # type: ignore[union-attr]
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Count from one to twenty in words, separated by commas."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 2 and "".join(pieces).strip()
    assert usage is not None and usage.completion_tokens > 0


def test_openai_errors_are_openai_shaped(echo_server: Server) -> None:
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=echo_server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": " "}])
    with pytest.raises(openai.BadRequestError, match="last message"):
        client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "assistant", "content": "hi"}])


def test_langchain_chat_openai(live_server: Server) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=live_server.url + "/v1",
        api_key="unused",
        model="smollm2-135m-instruct",  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,  # type: ignore[call-arg]
    )
    assert llm.invoke("What is the capital of France?").content
    streamed = "".join(str(c.content) for c in llm.stream("Name a fruit."))
    assert streamed.strip()


def test_cancel_mid_stream_stops_generation(live_server: Server) -> None:
    with connect(live_server.ws_url) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "message": "Write a long story about a dragon.",
                    "max_tokens": 400,
                    "route": "base",
                }
            )
        )
        events: list[dict[str, Any]] = []
        while sum(e["type"] == "token" for e in events) < 3:
            events.append(json.loads(ws.recv(timeout=120)))
        sent = time.monotonic()
        ws.send(json.dumps({"type": "cancel"}))
        rest = ws_events(ws, timeout=30)
        stopped_in = time.monotonic() - sent
        final = rest[-1]
        assert final["type"] == "done" and final["finish_reason"] == "cancelled"
        assert final["usage"]["completion_tokens"] < 100
        assert stopped_in < 5
        # The socket still answers afterwards.
        ws.send(json.dumps({"type": "chat", "message": "Hi", "route": "base"}))
        assert ws_events(ws)[-1]["type"] == "done"
    conv = live_server.get(f"/v1/conversations/{final['conversation_id']}").json()
    assert conv["messages"][1]["status"] == "cancelled"
    assert conv["messages"][1]["content"] == "".join(e["text"] for e in events + rest if e["type"] == "token")


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"type": "shout"}), "unknown frame type"),
        (json.dumps({"type": "chat", "message": ""}), "empty"),
        (json.dumps({"type": "chat", "message": "x" * 9000}), "limit"),
        (json.dumps({"type": "chat", "message": "hi", "route": "sideways"}), "route"),
        (json.dumps({"type": "chat", "message": "hi", "bogus": 1}), "bogus"),
        (
            json.dumps({"type": "chat", "message": "hi", "conversation_id": "conv_nope"}),
            "unknown conversation",
        ),
        (json.dumps({"type": "chat", "message": "hi", "adapter": "ghost"}), "unknown adapter"),
        (json.dumps({"type": "cancel"}), "nothing to cancel"),
    ],
)
def test_websocket_bad_frames_get_an_error_and_the_socket_survives(
    echo_server: Server, frame: str, needle: str
) -> None:
    with connect(echo_server.ws_url) as ws:
        ws.send(frame)
        ev = ws_events(ws, timeout=10)[-1]
        assert ev["type"] == "error" and ev["code"] in ("invalid_request", "not_found"), ev
        assert needle in ev["message"]
        ws.send(json.dumps({"type": "chat", "message": "still there?"}))
        assert ws_events(ws, timeout=10)[-1]["type"] == "done"


def test_oversized_ws_frame_closes_with_1009(echo_server: Server) -> None:
    with connect(echo_server.ws_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "chat", "message": "y" * 70_000}))
        with pytest.raises(Exception) as info:
            while True:
                ws.recv(timeout=10)
        assert "1009" in str(info.value)


def test_http_bad_input_is_4xx_json(echo_server: Server) -> None:
    bad = echo_server.post("/v1/chat/stream", content=b"{oops", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    long = echo_server.post("/v1/chat/stream", json={"message": "z" * 9000})
    assert long.status_code == 400 and "limit" in long.json()["error"]["message"]
    huge = echo_server.post(
        "/v1/chat/stream",
        content=b"{" + b" " * 1_100_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    missing = echo_server.get("/v1/conversations/conv_missing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert echo_server.get("/healthz").json() == {"status": "ok"}


def test_conversation_api_lists_reads_and_deletes(echo_server: Server) -> None:
    with httpx.stream("POST", echo_server.url + "/v1/chat/stream", json={"message": "remember me"}) as r:
        cid = sse_events(r)[-1]["conversation_id"]
    listed = echo_server.get("/v1/conversations").json()["data"]
    row = next(c for c in listed if c["id"] == cid)
    assert row["title"] == "remember me" and row["message_count"] == 2
    assert httpx.delete(echo_server.url + f"/v1/conversations/{cid}").status_code == 204
    assert echo_server.get(f"/v1/conversations/{cid}").status_code == 404


def test_metrics_count_requests_and_tokens(echo_server: Server) -> None:
    with httpx.stream("POST", echo_server.url + "/v1/chat/stream", json={"message": "count this"}) as r:
        sse_events(r)
    text = echo_server.get("/metrics").text
    for name in (
        "enclave_chat_requests_total",
        "enclave_time_to_first_token_seconds_bucket",
        "enclave_tokens_per_second_bucket",
        "enclave_active_streams",
        "enclave_route_decisions_total",
    ):
        assert name in text
    assert 'enclave_chat_requests_total{transport="sse"}' in text


# SmolLM2-135M answers this greedy with one line over and over (tests/test_engine.py).
LOOPING = "Give me the full list of git subcommands."


def test_openai_frequency_and_presence_penalties_are_honoured(live_server: Server) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0)
    ask: dict[str, Any] = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}],
        "max_tokens": 24,
        "temperature": 0,
    }
    plain = client.chat.completions.create(**ask).choices[0].message.content
    assert plain == client.chat.completions.create(**ask).choices[0].message.content  # greedy: the same again
    for penalty in ({"frequency_penalty": 1.5}, {"presence_penalty": 1.5}):
        penalized = client.chat.completions.create(**ask, **penalty).choices[0].message.content
        assert penalized and penalized != plain, (penalty, plain)


def test_penalties_out_of_range_are_refused_on_every_transport(echo_server: Server) -> None:
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=echo_server.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    for bad, name in (
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -2.1}, "presence_penalty"),
        ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ):
        with pytest.raises(openai.BadRequestError, match=name):
            client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, **bad)  # type: ignore[call-overload]
    ok = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, frequency_penalty=-2, presence_penalty=2
    )
    assert ok.choices[0].message.content
    sse = echo_server.post("/v1/chat/stream", json={"message": "hi", "frequency_penalty": 3})
    assert sse.status_code == 400 and "frequency_penalty" in sse.json()["error"]["message"]
    with connect(echo_server.ws_url) as ws:
        ws.send(json.dumps({"type": "chat", "message": "hi", "repetition_penalty": 2.5}))
        ev = ws_events(ws, timeout=10)[-1]
        assert ev["type"] == "error" and ev["code"] == "invalid_request" and "repetition_penalty" in ev["message"]


def test_a_looping_answer_ends_with_repetition_on_every_transport(live_server: Server) -> None:
    """The loop guard's finish_reason: as is in WebSocket and SSE `done` events and in the stored turn; OpenAI
    clients get "stop" (a value they know) and the exact reason in the `enclave` field."""
    from openai import OpenAI

    # No repetition penalty (the default would keep this answer out of its loop): the guard must end it.
    body = {"message": LOOPING, "max_tokens": 96, "temperature": 0, "repetition_penalty": 1.0}
    with httpx.stream("POST", live_server.url + "/v1/chat/stream", json=body, timeout=120) as r:
        events = sse_events(r)
    done = events[-1]
    assert done["type"] == "done" and done["finish_reason"] == "repetition", done
    assert done["usage"]["completion_tokens"] < 96
    text = assert_complete_stream(events)
    assert text.count("git clone") >= 2
    turn = live_server.get(f"/v1/conversations/{done['conversation_id']}").json()["messages"][1]
    assert turn["finish_reason"] == "repetition" and turn["content"] == text
    with connect(live_server.ws_url) as ws:
        ws.send(json.dumps({"type": "chat", **body}))
        assert ws_events(ws)[-1]["finish_reason"] == "repetition"

    client = OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0)
    ask: dict[str, Any] = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": LOOPING}],
        "max_tokens": 96,
        "temperature": 0,
        "extra_body": {"repetition_penalty": 1.0},
    }
    resp = client.chat.completions.create(**ask)
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.model_extra or {})["enclave"]["finish_reason"] == "repetition"
    last = [c for c in client.chat.completions.create(**ask, stream=True) if c.choices and c.choices[0].finish_reason]
    assert last[-1].choices[0].finish_reason == "stop"
    assert (last[-1].model_extra or {})["enclave"]["finish_reason"] == "repetition"


def test_a_declined_answer_says_so_on_every_transport_and_in_the_stored_turn(echo_server: Server) -> None:
    """A question about the organisation that no document answers: the same decline, marked `documents:
    declined`, on WebSocket, SSE and the OpenAI API (its `enclave` field), and kept with the turn."""
    from openai import OpenAI

    question = "Who is the CEO of our company?"
    with connect(echo_server.ws_url) as ws:
        ws.send(json.dumps({"type": "chat", "message": question}))
        events = ws_events(ws)
    with httpx.stream("POST", echo_server.url + "/v1/chat/stream", json={"message": question}, timeout=60) as r:
        sse = sse_events(r)
    for stream in (events, sse):
        done = stream[-1]
        text = "".join(e["text"] for e in stream if e["type"] == "token")
        assert done["type"] == "done" and done["documents"] == "declined" and not done["general_knowledge"], done
        assert "won't guess" in text or "do not answer this" in text, text
    turn = echo_server.get(f"/v1/conversations/{events[-1]['conversation_id']}").json()["messages"][1]
    assert turn["citations"]["documents"] == "declined"

    client = OpenAI(base_url=echo_server.url + "/v1", api_key="unused", max_retries=0)
    ask: dict[str, Any] = {
        "model": client.models.list().data[0].id,
        "messages": [{"role": "user", "content": question}],
    }
    resp = client.chat.completions.create(**ask)
    assert (resp.model_extra or {})["enclave"]["documents"] == "declined"
    assert "won't guess" in (resp.choices[0].message.content or "") or "do not answer" in (
        resp.choices[0].message.content or ""
    )
    last = [c for c in client.chat.completions.create(**ask, stream=True) if c.choices and c.choices[0].finish_reason]
    assert (last[-1].model_extra or {})["enclave"]["documents"] == "declined"
