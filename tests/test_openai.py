"""The OpenAI-compatible API through the official `openai` client and LangChain, unchanged, on the default model.

Structured output (JSON schema, any JSON object, tool calls) is enforced by llama.cpp's grammar sampler, so
these answers must parse every time; what the model puts inside them is its own (checked where a 0.5B model
is reliably right).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel

from enclave.core.settings import DEFAULT_BASE_MODEL
from tests.conftest import Server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
MULTIPLY = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service on the default base model (the one users get), with the sample documents."""
    server = Server(
        tmp_path_factory.mktemp("openai"),
        env={"ENCLAVE_MODELS__BASE": DEFAULT_BASE_MODEL, "ENCLAVE_MODELS__MAX_TOKENS": "160"},
        log_name="openai",
    ).start()
    yield server
    server.stop()


def client(server: Server) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def ask(**kw: Any) -> dict[str, Any]:
    return {"model": DEFAULT_BASE_MODEL, "temperature": 0, **kw}


def test_json_schema_answers_validate_streamed_and_not(qwen: Server) -> None:
    c = client(qwen)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    msgs = [{"role": "user", "content": "Alice Smith is 31 years old. Give her name and age."}]
    resp = c.chat.completions.create(**ask(messages=msgs, response_format=fmt))
    data = json.loads(resp.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int), data
    assert data == {"name": "Alice Smith", "age": 31}, data
    assert resp.choices[0].finish_reason == "stop"
    # Streamed: the pieces join into the same kind of JSON.
    pieces = [
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(**ask(messages=msgs, response_format=fmt, stream=True))
        if ch.choices
    ]
    assert len([p for p in pieces if p]) >= 2
    assert json.loads("".join(pieces)) == data
    # json_object: any JSON object, even where the model would rather write prose.
    # (A short question: an object the model would write at length is cut at max_tokens like any answer.)
    paris = [{"role": "user", "content": "What is the capital of France? Say it in a few words."}]
    obj = c.chat.completions.create(**ask(messages=paris, response_format={"type": "json_object"}, max_tokens=200))
    assert obj.choices[0].finish_reason == "stop", obj.choices[0].message.content
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_a_schema_on_the_websocket_and_sse_transports(qwen: Server) -> None:
    from websockets.sync.client import connect

    from tests.test_transports import sse_events, ws_events

    body = {"message": "Bob is 45. Give his name and age.", "schema": PERSON, "temperature": 0}
    with httpx.stream("POST", qwen.url + "/v1/chat/stream", json=body, timeout=120) as r:
        events = sse_events(r)
    assert events[0]["route"] == "base" and "structured" in events[0]["reason"]
    text = "".join(e["text"] for e in events if e["type"] == "token")
    assert json.loads(text) == {"name": "Bob", "age": 45}
    with connect(qwen.ws_url) as ws:
        ws.send(json.dumps({"type": "chat", **body, "schema": {}, "logprobs": 2}))  # {}: any JSON object
        events = ws_events(ws)
    text = "".join(e["text"] for e in events if e["type"] == "token")
    assert isinstance(json.loads(text), dict)
    # logprobs on these transports: in `done`, one per token of the answer, each with its alternatives.
    scored = events[-1]["logprobs"]
    assert "".join(t["token"] for t in scored) == text and all(len(t["top_logprobs"]) == 2 for t in scored)


def test_tool_calls_required_named_and_auto(qwen: Server) -> None:
    c = client(qwen)
    weather = [{"role": "user", "content": "What is the weather in Oslo?"}]
    resp = c.chat.completions.create(**ask(messages=weather, tools=[WEATHER, MULTIPLY], tool_choice="required"))
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Oslo"
    # A named function is the one called, whatever the question.
    named = c.chat.completions.create(
        **ask(
            messages=weather,
            tools=[WEATHER, MULTIPLY],
            tool_choice={"type": "function", "function": {"name": "multiply"}},
        )
    )
    args = json.loads(named.choices[0].message.tool_calls[0].function.arguments)
    assert named.choices[0].message.tool_calls[0].function.name == "multiply"
    assert isinstance(args["a"], int) and isinstance(args["b"], int)
    # auto: a call when a tool answers the question, plain text when none does.
    product = c.chat.completions.create(
        **ask(messages=[{"role": "user", "content": "What is 37 times 41?"}], tools=[WEATHER, MULTIPLY])
    )
    assert json.loads(product.choices[0].message.tool_calls[0].function.arguments) == {"a": 37, "b": 41}
    hello = c.chat.completions.create(
        **ask(messages=[{"role": "user", "content": "Write a haiku about autumn."}], tools=[WEATHER, MULTIPLY])
    )
    assert hello.choices[0].message.tool_calls is None and hello.choices[0].message.content.strip()
    # none: the tools are not offered at all.
    plain = c.chat.completions.create(**ask(messages=weather, tools=[WEATHER], tool_choice="none"))
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_tool_call_parses_and_the_result_goes_back(qwen: Server) -> None:
    c = client(qwen)
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for ch in c.chat.completions.create(**ask(messages=msgs, tools=[WEATHER], tool_choice="required", stream=True)):
        if not ch.choices:
            continue
        for d in ch.choices[0].delta.tool_calls or []:
            got = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            got["id"] += d.id or ""
            got["name"] += (d.function.name or "") if d.function else ""
            got["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"])["city"] == "Paris"
    # The agent loop: the call and its result go back; the model answers from the result.
    msgs += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": calls[0]["id"], "type": "function", "function": {k: calls[0][k] for k in ("name", "arguments")}}
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature_c": 17, "sky": "light rain"}'},
    ]
    answer = c.chat.completions.create(**ask(messages=msgs, tools=[WEATHER]))
    text = answer.choices[0].message.content or ""
    assert "17" in text or "rain" in text.lower(), text


def test_sampling_fields_are_honoured(qwen: Server) -> None:
    c = client(qwen)
    q = [{"role": "user", "content": "Name three colours of the rainbow, separated by commas."}]
    base = c.chat.completions.create(**ask(messages=q, max_completion_tokens=12))
    assert base.usage.completion_tokens <= 12
    text = base.choices[0].message.content
    # stop: the answer ends before the stop string, which is not shown.
    first_word = text.split(",")[0]
    stopped = c.chat.completions.create(**ask(messages=q, stop=[","]))
    assert stopped.choices[0].message.content == first_word and "," not in stopped.choices[0].message.content
    # seed: the same seed draws the same answer at temperature 1; n choices come back, each its own.
    sampled = {**ask(messages=q, max_tokens=16), "temperature": 1.0, "seed": 7}
    a = c.chat.completions.create(**sampled).choices[0].message.content
    assert a == c.chat.completions.create(**sampled).choices[0].message.content
    several = c.chat.completions.create(**{**sampled, "n": 3})
    assert [ch.index for ch in several.choices] == [0, 1, 2]
    assert several.choices[0].message.content == a  # choice 0 draws with the seed itself
    assert len({ch.message.content for ch in several.choices}) >= 2
    assert several.usage.completion_tokens == sum(
        c.chat.completions.create(**{**sampled, "seed": 7 + i}).usage.completion_tokens for i in range(3)
    )
    # logit_bias: a banned token never appears (here the first token of the greedy answer).
    tok = _first_token(qwen, text)
    banned = c.chat.completions.create(**ask(messages=q, max_tokens=12, logit_bias={str(tok): -100}))
    assert banned.choices[0].message.content != text
    # stream_options.include_usage: the last chunk before [DONE] carries the usage.
    chunks = list(
        c.chat.completions.create(**ask(messages=q, max_tokens=8, stream=True, stream_options={"include_usage": True}))
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def _first_token(server: Server, text: str) -> int:
    """The id of the first token of `text` in the served model's vocabulary."""
    from enclave.core.settings import Settings
    from enclave.engine.modelfiles import load_tokenizer

    settings = Settings(models={"base": DEFAULT_BASE_MODEL, "cache_dir": str(server.env["ENCLAVE_MODELS__CACHE_DIR"])})
    ids = load_tokenizer(settings).encode(text, add_special_tokens=False)
    return int(ids[0])


def test_unsupported_fields_are_refused_by_name(qwen: Server) -> None:
    import openai

    c = client(qwen)
    q = [{"role": "user", "content": "hi"}]
    for extra, name in (
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"user": "alice"}, "user"),
        ({"extra_body": {"guided_regex": "a+"}}, "guided_regex"),
        ({"n": 9}, "n"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"1": 300}}, "logit_bias"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
    ):
        with pytest.raises(openai.BadRequestError, match=name):
            c.chat.completions.create(**ask(messages=q, **extra))
    bad = httpx.post(qwen.url + "/v1/chat/completions", json={**ask(messages=q), "functions": []}, timeout=30)
    assert bad.status_code == 400 and "'functions' is not supported" in bad.json()["error"]["message"]
    for extra, name in (
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"n": 5, "prompt": ["a", "b"]}, "choices"),
        ({"prompt": [1, 2, 3]}, "prompt"),
    ):
        with pytest.raises(openai.BadRequestError, match=name):
            c.completions.create(**{"model": DEFAULT_BASE_MODEL, "prompt": "Hello", **extra})


def test_logprobs_come_from_the_engine_streamed_and_not(qwen: Server) -> None:
    c = client(qwen)
    q = [{"role": "user", "content": "What is the capital of France? One word."}]
    # Without penalties the greedy token is the likeliest of the model's own distribution.
    plain = {"extra_body": {"repetition_penalty": 1.0}}
    resp = c.chat.completions.create(**ask(messages=q, max_tokens=8, logprobs=True, top_logprobs=3, **plain))
    choice = resp.choices[0]
    content = choice.logprobs.content
    assert len(content) == resp.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.token == t.top_logprobs[0].token and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    assert "Paris" in choice.message.content and sum(np.exp(a.logprob) for a in content[0].top_logprobs) <= 1.0 + 1e-6
    # logprobs alone: each token's own, no alternatives; streamed: the chunks' entries join to the same.
    alone = c.chat.completions.create(**ask(messages=q, max_tokens=8, logprobs=True, **plain))
    assert [t.token for t in alone.choices[0].logprobs.content] == [t.token for t in content]
    assert all(t.top_logprobs == [] for t in alone.choices[0].logprobs.content)
    streamed = [
        t
        for ch in c.chat.completions.create(**ask(messages=q, max_tokens=8, logprobs=True, stream=True, **plain))
        if ch.choices and ch.choices[0].logprobs
        for t in ch.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    # A prompt served from the KV cache rounds differently from a cold one (-0.0919 against -0.0922, seen).
    assert all(abs(a.logprob - b.logprob) < 0.01 for a, b in zip(streamed, content, strict=True))
    # Not asked for: none.
    assert c.chat.completions.create(**ask(messages=q, max_tokens=4)).choices[0].logprobs is None


def test_plain_completions_with_the_sync_and_async_clients(qwen: Server) -> None:
    import asyncio

    from openai import AsyncOpenAI

    c = client(qwen)
    prompt = "The capital of France is"
    plain = {"extra_body": {"repetition_penalty": 1.0}}
    one = c.completions.create(model=DEFAULT_BASE_MODEL, prompt=prompt, max_tokens=4, temperature=0, **plain)
    assert one.object == "text_completion" and "Paris" in one.choices[0].text, one
    assert one.usage.prompt_tokens == 5 and one.choices[0].finish_reason in ("stop", "length")
    # echo, several prompts with n choices each, and the legacy logprobs object.
    many = c.completions.create(
        model=DEFAULT_BASE_MODEL,
        prompt=[prompt, "2 + 2 ="],
        max_tokens=4,
        temperature=0,
        n=2,
        echo=True,
        **plain,
    )
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text.startswith(prompt) and many.choices[2].text.startswith("2 + 2 =")
    assert "Paris" in many.choices[0].text[len(prompt) :] and "4" in many.choices[3].text[len("2 + 2 =") :]
    scored = c.completions.create(
        model=DEFAULT_BASE_MODEL, prompt=prompt, max_tokens=4, temperature=0, logprobs=2, **plain
    )
    lp = scored.choices[0].logprobs
    assert "".join(lp.tokens) == scored.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    assert all(len(alt) == 2 and tok in alt for tok, alt in zip(lp.tokens, lp.top_logprobs, strict=True))
    assert lp.text_offset[0] == 0
    # The async client, streaming and not.

    async def go() -> tuple[str, str, str]:
        ac = AsyncOpenAI(base_url=qwen.url + "/v1", api_key="unused", max_retries=0)
        done = await ac.completions.create(
            model=DEFAULT_BASE_MODEL, prompt=prompt, max_tokens=4, temperature=0, **plain
        )
        pieces = [
            ch.choices[0].text
            async for ch in await ac.completions.create(
                model=DEFAULT_BASE_MODEL, prompt=prompt, max_tokens=4, temperature=0, stream=True, **plain
            )
            if ch.choices
        ]
        chat = await ac.chat.completions.create(
            **ask(messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True)
        )
        said = "".join([ch.choices[0].delta.content or "" async for ch in chat if ch.choices])
        await ac.close()
        return done.choices[0].text, "".join(pieces), said

    done, streamed, said = asyncio.run(go())
    # (Greedy, but a warm KV cache may part from a cold one at a near tie: compared by what they say.)
    assert "Paris" in done and "Paris" in streamed and said.strip()


def test_langchain_structured_output_tools_and_embeddings(qwen: Server) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    class Person(BaseModel):
        name: str
        age: int

    llm = ChatOpenAI(base_url=qwen.url + "/v1", api_key="unused", model=DEFAULT_BASE_MODEL, temperature=0)  # type: ignore[arg-type,call-arg]
    person = llm.with_structured_output(Person).invoke("Carol Jones is 52 years old. Extract the person.")
    assert isinstance(person, Person) and person.age == 52 and "Carol" in person.name

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    msg = llm.bind_tools([multiply], tool_choice="multiply").invoke("What is 6 times 7?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "multiply"  # type: ignore[attr-defined]
    assert msg.tool_calls[0]["args"] == {"a": 6, "b": 7}  # type: ignore[attr-defined]
    emb = OpenAIEmbeddings(
        base_url=qwen.url + "/v1",
        api_key="unused",
        model="all-MiniLM-L6-v2",
        check_embedding_ctx_length=False,  # type: ignore[arg-type]
    )
    vecs = emb.embed_documents(["How do I reset my password?", "Password reset steps", "Quarterly sales figures"])
    q = emb.embed_query("resetting a password")
    v = np.array(vecs)
    assert v.shape == (3, 384)
    sims = v @ np.array(q)
    assert sims[0] > sims[2] and sims[1] > sims[2]


def test_embeddings_with_the_openai_client(qwen: Server) -> None:
    import openai

    c = client(qwen)
    assert "all-MiniLM-L6-v2" in [m.id for m in c.models.list()]
    texts = ["The cat sat on the mat.", "A cat is sitting on a rug.", "Interest rates rose in March."]
    # The client asks for base64 by default and decodes it; float on request.
    b64 = c.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    floats = c.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    a = np.array([d.embedding for d in b64.data])
    b = np.array([d.embedding for d in floats.data])
    assert a.shape == (3, 384) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3)
    assert a[0] @ a[1] > a[0] @ a[2]
    assert b64.usage.prompt_tokens > 3 and b64.model == "all-MiniLM-L6-v2"
    single = c.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    assert np.allclose(single.data[0].embedding, b[0], atol=1e-5)
    with pytest.raises(openai.NotFoundError, match="all-MiniLM-L6-v2"):
        c.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError, match="longer than"):
        c.embeddings.create(model="all-MiniLM-L6-v2", input=["fine", "word " * 400])
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        c.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=256)
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        c.embeddings.create(model="all-MiniLM-L6-v2", input=[[1, 2, 3]])


def test_structured_output_is_refused_where_the_engine_cannot_enforce_it(echo_server: Server) -> None:
    import openai

    c = client(echo_server)
    q = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match=r"llama\.cpp"):
        c.chat.completions.create(model="smollm2-135m-instruct", messages=q, response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match=r"llama\.cpp"):
        c.chat.completions.create(model="smollm2-135m-instruct", messages=q, tools=[WEATHER])
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        c.chat.completions.create(model="smollm2-135m-instruct", messages=q, logit_bias={"5": 10})
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        c.chat.completions.create(model="smollm2-135m-instruct", messages=q, logprobs=True)
    # A plain completion on a backend without a sampler of its own still works (no logprobs asked).
    text = c.completions.create(model="smollm2-135m-instruct", prompt="hello there", max_tokens=5).choices[0].text
    assert "hello there" in text
