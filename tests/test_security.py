"""Keys, principals and tenants over real sockets: no one sees a document they may not read.

The server runs the echo backend in `prompt` mode, so an answer repeats everything the model was given:
a canary that reaches any prompt shows up in the answer, and the test sees it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import ROOT, Server

ADMIN, ALICE, BOB = "admin-key-0123456789", "alice-key-0123456789", "bob-key-0123456789"
TOPICS = ["travel expenses", "parental leave", "server passwords", "quarterly revenue", "office moves"]


def canary(tenant: str, i: int) -> str:
    return f"CANARY{tenant.upper()}{i}X{hashlib.sha256(f'{tenant}{i}'.encode()).hexdigest()[:10]}"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("tenants")
    keys = data / "keys.yaml"
    keys.write_text(
        "- name: ops\n"
        f"  key_sha256: {hashlib.sha256(ADMIN.encode()).hexdigest()}\n"
        "  admin: true\n"
        "- name: alice\n"
        f"  key: {ALICE}\n"
        "  collections: [tenant-a]\n"
        "- name: bob\n"
        f"  key_sha256: {hashlib.sha256(BOB.encode()).hexdigest()}\n"
        "  collections: [tenant-b]\n"
    )
    server = Server(
        data,
        env={
            "ENCLAVE_MODELS__BACKEND": "echo",
            "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "0",
            "ENCLAVE_MODELS__ECHO_SOURCE": "prompt",
            # The echo of the whole prompt is how these tests see what a model would: no leak to stop here.
            "ENCLAVE_MODERATION__POLICIES__PROMPT_LEAK": "allow",
            "ENCLAVE_MODELS__MAX_TOKENS": "1000",
            "ENCLAVE_AUTH__API_KEYS_FILE": str(keys),
            "ENCLAVE_AUTH__ALLOWED_ORIGINS": "https://chat.example.com",
            "ENCLAVE_ROUTER__RAG_MIN_SCORE": "0.0",  # answer from documents whenever anything is found
        },
        log_name="tenants",
    ).start()
    admin = {"authorization": f"Bearer {ADMIN}"}
    for tenant, coll in (("a", "tenant-a"), ("b", "tenant-b")):
        files = [
            (
                "files",
                (
                    f"{tenant}-{i}.md",
                    f"# {topic.title()} for tenant {tenant}\n\nThe {topic} policy reference code is "
                    f"{canary(tenant, i)}. Ask the {topic} team for details about {topic}.\n",
                    "text/markdown",
                ),
            )
            for i, topic in enumerate(TOPICS)
        ]
        r = server.post("/v1/documents", files=files, data={"collection": coll}, headers=admin)
        assert r.status_code == 200, r.text
    yield server
    server.stop()


def _h(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _ws_chat(server: Server, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with connect(server.ws_url, additional_headers=_h(key)) as ws:
        ws.send(json.dumps({"type": "chat", **body}))
        events = []
        while True:
            e = json.loads(ws.recv(timeout=60))
            events.append(e)
            if e["type"] in ("done", "error"):
                return events


def _sse_chat(server: Server, key: str, body: dict[str, Any]) -> str:
    with httpx.stream("POST", server.url + "/v1/chat/stream", json=body, headers=_h(key), timeout=60) as r:
        return r.read().decode()


def test_every_route_but_health_needs_a_key(tenants: Server) -> None:
    for path in ("/healthz", "/readyz"):
        assert tenants.get(path).status_code == 200
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/v1/collections"),
        ("GET", "/v1/conversations"),
        ("GET", "/v1/adapters"),
        ("GET", "/metrics"),
        ("POST", "/v1/search"),
        ("POST", "/v1/chat/stream"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/collections/tenant-a/documents"),
    ]:
        r = httpx.request(method, tenants.url + path, json={}, timeout=30)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        r = httpx.request(method, tenants.url + path, json={}, headers=_h("wrong-key-0000"), timeout=30)
        assert r.status_code == 401, (path, r.status_code)


def test_websocket_key_in_header_or_first_frame_never_the_url(tenants: Server) -> None:
    # In the first frame.
    with connect(tenants.ws_url) as ws:
        ws.send(json.dumps({"type": "auth", "api_key": ALICE}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "auth", "ok": True}
        ws.send(json.dumps({"type": "chat", "message": "hello there", "route": "base"}))
        last = None
        while last is None or last["type"] not in ("done", "error"):
            last = json.loads(ws.recv(timeout=30))
        assert last["type"] == "done"
    # In the URL: not accepted as a credential.
    with connect(tenants.ws_url + f"?api_key={ALICE}") as ws:
        ws.send(json.dumps({"type": "chat", "message": "hello", "route": "base"}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # A foreign Origin is refused even with a good key (at the handshake: 403), the allowlisted one is not.
    with pytest.raises(InvalidStatus) as refused:
        connect(tenants.ws_url, additional_headers={**_h(ALICE), "origin": "https://evil.example"})
    assert refused.value.response.status_code == 403
    with connect(tenants.ws_url, additional_headers={**_h(ALICE), "origin": "https://chat.example.com"}) as ws:
        ws.send(json.dumps({"type": "chat", "message": "hello", "route": "base"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "route"


def test_admin_scope(tenants: Server) -> None:
    files = [("files", ("x.md", "# x\n\nhello", "text/markdown"))]
    r = tenants.post("/v1/documents", files=files, data={"collection": "tenant-a"}, headers=_h(ALICE))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = httpx.delete(tenants.url + "/v1/collections/tenant-b", headers=_h(ALICE), timeout=30)
    assert r.status_code == 403
    r = tenants.post("/v1/adapters/x/load", headers=_h(BOB))
    assert r.status_code == 403
    r = tenants.get("/v1/collections", headers=_h(ADMIN))
    assert {c["name"] for c in r.json()["data"]} >= {"tenant-a", "tenant-b"}


def test_no_tenant_sees_another_tenants_documents(tenants: Server) -> None:
    """Canaries of every tenant, probed through listing, search, RAG sources and answers on every
    transport, with the other tenant's topics and even its canary strings as queries: zero leaks."""
    for me, key, mine, other in (("a", ALICE, "tenant-a", "b"), ("b", BOB, "tenant-b", "a")):
        theirs = f"tenant-{other}"
        foreign = [canary(other, i) for i in range(len(TOPICS))]
        own = [canary(me, i) for i in range(len(TOPICS))]
        seen: list[str] = []

        r = tenants.get("/v1/collections", headers=_h(key))
        assert [c["name"] for c in r.json()["data"]] == [mine]
        for path in (f"/v1/collections/{theirs}/documents", f"/v1/collections/{theirs}/documents/x"):
            r = tenants.get(path, headers=_h(key))
            assert r.status_code == 403, (path, r.text)
        r = tenants.post("/v1/search", json={"query": "policy", "collection": theirs}, headers=_h(key))
        assert r.status_code == 403
        # The probe may name the other tenant's canary prefix, never the secret part it looks for.
        queries = [f"What is the {t} policy reference code?" for t in TOPICS] + [c[:9] for c in foreign[:2]]
        for q in queries:
            r = tenants.post("/v1/search", json={"query": q, "collection": mine, "k": 10}, headers=_h(key))
            assert r.status_code == 200
            seen.append(r.text)
            # auto (searches every collection the caller may read), explicit rag, and a body that names
            # the other tenant's collection, over the WebSocket, SSE and the OpenAI API.
            events = _ws_chat(tenants, key, {"message": q})
            seen.append(json.dumps(events))
            assert events[0]["type"] == "route" and events[0]["route"] == "rag", events[0]
            assert all(
                s["uri"].startswith(f"upload/{me}-") for e in events if e["type"] == "sources" for s in e["sources"]
            )
            events = _ws_chat(tenants, key, {"message": q, "route": "rag", "collection": theirs})
            seen.append(json.dumps(events))
            assert events[-1]["type"] == "error" and events[-1]["code"] == "forbidden", events[-1]
            seen.append(_sse_chat(tenants, key, {"message": q}))
            sse = _sse_chat(tenants, key, {"message": q, "collection": theirs, "route": "rag"})
            seen.append(sse)
            r = tenants.post(
                "/v1/chat/completions",
                json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": q}]},
                headers=_h(key),
            )
            assert r.status_code == 200, r.text
            seen.append(r.text)
            r = tenants.post(
                "/v1/chat/completions",
                json={
                    "model": "smollm2-135m-instruct",
                    "messages": [{"role": "user", "content": q}],
                    "collection": theirs,
                    "route": "rag",
                },
                headers=_h(key),
            )
            seen.append(r.text)
        # The body cannot claim another principal's rights.
        r = tenants.post("/v1/chat/stream", json={"message": "hi", "principal": "ops"}, headers=_h(key))
        assert r.status_code == 400 and "principal" in r.text
        # Conversations are per principal.
        r = tenants.get("/v1/conversations", headers=_h(key))
        seen.append(r.text)
        blob = "\n".join(seen)
        assert not [c for c in foreign if c in blob], f"tenant {me} saw another tenant's canary"
        assert any(c in blob for c in own), "the probe must be able to see the tenant's own canaries"
    # The other tenant's conversations are not listed (or readable) by id either.
    alice_convs = tenants.get("/v1/conversations", headers=_h(ALICE)).json()["data"]
    bob_convs = {c["id"] for c in tenants.get("/v1/conversations", headers=_h(BOB)).json()["data"]}
    assert alice_convs and not ({c["id"] for c in alice_convs} & bob_convs)
    r = tenants.get(f"/v1/conversations/{alice_convs[0]['id']}", headers=_h(BOB))
    assert r.status_code == 404


def test_new_key_command_prints_a_usable_entry(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "enclave.cli.main", "auth", "new-key", "--name", "hr-bot", "--collections", "hr,docs"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    key = proc.stderr.split("key (shown once): ", 1)[1].split()[0]
    (tmp_path / "keys.yaml").write_text(proc.stdout)
    assert key not in proc.stdout  # only the digest is stored
    from enclave.api.auth import Authenticator
    from enclave.core.settings import AuthSettings

    who = Authenticator(AuthSettings(api_keys_file=str(tmp_path / "keys.yaml"))).principal(key)
    assert who.name == "hr-bot" and who.collections == frozenset({"hr", "docs"}) and not who.admin
    assert who.may_read("hr") and not who.may_read("finance")


def _limited_server(data: Path, who: str, key: str, extra: dict[str, str]) -> Server:
    keys = data / "keys.yaml"
    data.mkdir(parents=True, exist_ok=True)
    keys.write_text(f"- name: {who}\n  key: {key}\n")
    return Server(
        data,
        env={
            "ENCLAVE_MODELS__BACKEND": "echo",
            "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "20",
            "ENCLAVE_AUTH__API_KEYS_FILE": str(keys),
            "ENCLAVE_LIMITS__MAX_QUEUE": "50",
            **extra,
        },
        log_name=f"limits-{who}",
    )


def test_per_key_rate_limit_and_concurrent_streams(tmp_path: Path) -> None:
    key = "limited-key-0123456789"
    server = _limited_server(
        tmp_path,
        "limited",
        key,
        {"ENCLAVE_LIMITS__REQUESTS_PER_MINUTE": "3", "ENCLAVE_LIMITS__MAX_STREAMS_PER_KEY": "1"},
    ).start()
    try:
        body = {"message": " ".join(["word"] * 80), "route": "base", "max_tokens": 80}  # 4 s at 20 tokens/s
        # A second stream of the same key while one is open: 429 at once, before any stream starts.
        with connect(server.ws_url, additional_headers=_h(key)) as ws:
            ws.send(json.dumps({"type": "chat", **body}))
            assert json.loads(ws.recv(timeout=30))["type"] == "route"
            r = server.post("/v1/chat/stream", json=body, headers=_h(key))
            assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded", r.text
            assert "streaming" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 1
            while json.loads(ws.recv(timeout=30))["type"] not in ("done", "error"):
                pass
        # A refused request does not count: the second and third are allowed, the fourth in the minute is not.
        for _ in range(2):
            r = server.post("/v1/chat/stream", json=body, headers=_h(key))
            assert r.status_code == 200 and "event: done" in r.text
        r = server.post("/v1/chat/stream", json=body, headers=_h(key))
        assert r.status_code == 429 and "per minute" in r.json()["error"]["message"], r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # The WebSocket says the same by closing with 1013 (try again later).
        with connect(server.ws_url, additional_headers=_h(key)) as ws:
            ws.send(json.dumps({"type": "chat", **body}))
            assert json.loads(ws.recv(timeout=30))["code"] == "overloaded"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    finally:
        server.stop()


def test_limits_are_shared_across_replicas_through_redis(tmp_path: Path) -> None:
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/0"
    redis.Redis.from_url(url).ping()  # Redis runs on every machine here, CI's included: fail, don't skip
    who = f"replicated-{uuid.uuid4().hex[:8]}"  # a fresh name: counters of other runs do not interfere
    key = "replica-key-0123456789"
    extra = {"ENCLAVE_STORAGE__REDIS_URL": url, "ENCLAVE_LIMITS__REQUESTS_PER_MINUTE": "4"}
    a = _limited_server(tmp_path / "a", who, key, extra).start()
    b = _limited_server(tmp_path / "b", who, key, extra).start()
    try:
        body = {"message": "hi there", "route": "base"}
        codes = [s.post("/v1/chat/stream", json=body, headers=_h(key)).status_code for s in (a, b, a, b)]
        assert codes == [200, 200, 200, 200]
        # Each replica alone has seen two requests; together the key has used its four.
        for s in (a, b):
            r = s.post("/v1/chat/stream", json=body, headers=_h(key))
            assert r.status_code == 429 and "per minute" in r.text, r.text
    finally:
        a.stop()
        b.stop()
