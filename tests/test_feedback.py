"""Feedback on answers: the store on SQLite and PostgreSQL, the API and WebSocket frame of a real server with API
keys, /metrics, and the `enclave feedback` commands on a real SQLite file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner
from websockets.sync.client import connect

from enclave.chat import conversations as conversations_module
from enclave.chat.conversations import FeedbackQuery, SqlConversationStore
from enclave.chat.feedback import feedback_query, parse_when
from enclave.core.errors import InvalidRequest, NotFound
from tests.conftest import Server

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CITATIONS = {"sentences": [{"text": "Leave is 30 days.", "source": 1, "support": 0.9}], "unverified": False}


# -- the store -------------------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlConversationStore]:
    s = SqlConversationStore(f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else PG)
    yield s
    s.close()


def _turns(store: SqlConversationStore, who: str, **answer: Any) -> tuple[str, str, str]:
    """A conversation of two turns; (conversation id, the second question's id, the second answer's id)."""
    cid = store.create_conversation("leave", principal=who)
    store.add_message(cid, "user", "How long is parental leave?")
    store.add_message(cid, "assistant", "It is 30 days.", route="base")
    qid = store.add_message(cid, "user", "And for adoption?")
    fields = {"route": "rag", "collection": "handbook", "sources": [{"id": "s1", "title": "HR"}], **answer}
    aid = store.add_message(cid, "assistant", "Leave is 30 days.", citations=CITATIONS, **fields)
    return cid, qid, aid


def _rows(store: SqlConversationStore, message_id: str) -> int:
    with store.engine.connect() as c:
        table = conversations_module.feedback
        return int(c.execute(sa.select(sa.func.count()).where(table.c.message_id == message_id)).scalar_one())


def test_a_later_rating_replaces_the_earlier_and_resets_a_changed_review(store: SqlConversationStore) -> None:
    who = f"alice-{uuid.uuid4().hex[:8]}"
    _, _, mid = _turns(store, who)
    first = store.rate(mid, who, "down", "wrong", "Adoption leave is 20 days.")
    assert first["review"] == {"state": "pending", "by": None, "at": None, "note": None}
    assert (first["rating"], first["reason"], first["correction"]) == ("down", "wrong", "Adoption leave is 20 days.")
    reviewed = store.review(first["id"], "accepted", "ops", "checked with HR")
    assert reviewed is not None and reviewed["review"]["state"] == "accepted" and reviewed["review"]["at"]
    same = store.rate(mid, who, "down", "wrong", "Adoption leave is 20 days.")
    assert same["review"]["state"] == "accepted", "the same rating again keeps its review"
    time.sleep(0.01)
    changed = store.rate(mid, who, "up")
    assert changed["id"] == first["id"] and changed["created_at"] == first["created_at"]
    assert changed["updated_at"] > first["updated_at"]
    assert (changed["rating"], changed["reason"], changed["correction"]) == ("up", None, None)
    assert changed["review"] == {"state": "none", "by": None, "at": None, "note": None}
    assert _rows(store, mid) == 1
    assert store.rate(mid, who, "up", correction="Say 20 days.")["review"]["state"] == "pending"
    assert _rows(store, mid) == 1
    other = f"bob-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotFound):
        store.rate(mid, other, "down")
    assert store.get_feedback(mid, other) is None and _rows(store, mid) == 1


def test_the_snapshot_is_the_turn_as_it_was_rated(store: SqlConversationStore) -> None:
    who = f"alice-{uuid.uuid4().hex[:8]}"
    cid, _, mid = _turns(store, who, adapter="hr-lora")
    fb = store.rate(mid, who, "down", "incomplete")
    store.update_message(mid, content="changed later", sources=[])
    [row] = store.list_feedback(FeedbackQuery(principal=who))
    assert row["id"] == fb["id"] and row["principal"] == who and row["conversation_id"] == cid
    assert row["snapshot"] == {
        "question": "And for adoption?",
        "answer": "Leave is 30 days.",
        "route": "rag",
        "adapter": "hr-lora",
        "collection": "handbook",
        "sources": [{"id": "s1", "title": "HR"}],
        "citations": CITATIONS,
    }
    own = store.feedback_of_conversation(cid, who)
    assert list(own) == [mid] and "snapshot" not in own[mid]
    assert store.feedback_of_conversation(cid, "someone-else") == {}


def test_only_a_finished_answer_of_ones_own_conversation_can_be_rated(store: SqlConversationStore) -> None:
    who = f"alice-{uuid.uuid4().hex[:8]}"
    cid, qid, _ = _turns(store, who)
    streaming = store.add_message(cid, "assistant", "", status="incomplete", route="base")
    failed = store.add_message(cid, "assistant", "", status="error", route="base")
    cases = [
        ("msg_doesnotexist", NotFound, "unknown message"),
        (qid, InvalidRequest, "only an answer"),
        (streaming, InvalidRequest, "still streaming"),
        (failed, InvalidRequest, "empty"),
    ]
    for message_id, error, needle in cases:
        with pytest.raises(error, match=needle):
            store.rate(message_id, who, "down")
    assert store.count_feedback(FeedbackQuery(principal=who)) == 0


def test_the_review_queue_filters_pages_and_records_reviews(store: SqlConversationStore) -> None:
    who = f"alice-{uuid.uuid4().hex[:8]}"
    ids = {}
    given: list[tuple[str, dict[str, Any], str, str | None]] = [
        ("rag-down", {"route": "rag", "collection": "handbook"}, "down", "not_in_documents"),
        ("rag-up", {"route": "rag", "collection": "wiki"}, "up", None),
        ("adapter-down", {"route": "adapter", "adapter": "hr-lora", "collection": None}, "down", "wrong"),
        ("base-down", {"route": "base", "collection": None, "sources": []}, "down", "harmful"),
    ]
    for name, answer, rating, reason in given:
        _, _, mid = _turns(store, who, **answer)
        ids[name] = store.rate(mid, who, rating, reason)["id"]
        time.sleep(0.01)

    def found(**filters: Any) -> set[str]:
        rows = store.list_feedback(FeedbackQuery(principal=who, **filters))
        assert store.count_feedback(FeedbackQuery(principal=who, **filters)) == len(rows)
        return {next(k for k, v in ids.items() if v == r["id"]) for r in rows}

    assert found() == set(ids)
    assert found(rating="down") == {"rag-down", "adapter-down", "base-down"}
    assert found(reason="wrong") == {"adapter-down"}
    assert found(route="rag") == {"rag-down", "rag-up"}
    assert found(collection="wiki") == {"rag-up"}
    assert found(adapter="hr-lora") == {"adapter-down"}
    assert found(adapter="") == {"rag-down", "rag-up", "base-down"}
    assert found(review_state="none") == {"rag-up"}
    newest = store.list_feedback(FeedbackQuery(principal=who, limit=2))
    assert [r["id"] for r in newest] == [ids["base-down"], ids["adapter-down"]]
    assert [r["id"] for r in store.list_feedback(FeedbackQuery(principal=who, limit=2, offset=2))] == [
        ids["rag-up"],
        ids["rag-down"],
    ]
    assert found(since=time.time() + 60) == set() and found(until=time.time() + 60) == set(ids)

    reviewed = store.review(ids["base-down"], "rejected", "ops", "the answer was right")
    assert reviewed is not None
    assert reviewed["review"]["state"] == "rejected" and reviewed["review"]["by"] == "ops"
    assert reviewed["review"]["note"] == "the answer was right"
    assert found(review_state="rejected") == {"base-down"}
    assert found(review_state="pending") == {"rag-down", "adapter-down"}
    assert store.review("fb_doesnotexist", "accepted", "ops") is None


def test_deleting_a_conversation_deletes_its_feedback(store: SqlConversationStore) -> None:
    who = f"alice-{uuid.uuid4().hex[:8]}"
    cid, _, mid = _turns(store, who)
    store.rate(mid, who, "down", "other", "it is 20 days")
    assert store.delete_conversation(cid)
    assert store.get_feedback(mid, who) is None and _rows(store, mid) == 0
    assert not store.delete_feedback(mid, who)


def test_a_database_without_on_conflict_replaces_a_rating_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable path (update, else insert) keeps the same rules: one row, review kept only if unchanged."""
    monkeypatch.setattr(conversations_module, "_UPSERTS", {})
    store = SqlConversationStore(f"sqlite:///{tmp_path / 'c.db'}")
    _, _, mid = _turns(store, "alice")
    first = store.rate(mid, "alice", "down", "wrong", "20 days")
    store.review(first["id"], "accepted", "ops")
    assert store.rate(mid, "alice", "down", "wrong", "20 days")["review"]["state"] == "accepted"
    again = store.rate(mid, "alice", "up")
    assert again["id"] == first["id"] and again["review"]["state"] == "none" and _rows(store, mid) == 1
    assert again["created_at"] == first["created_at"]
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_from_before_feedback_gains_the_table_and_the_collection_column(
    tmp_path: Path, backend: str
) -> None:
    admin = None
    url = f"sqlite:///{tmp_path / 'old.db'}"
    if backend == "postgresql":
        name = f"enclave_feedback_{os.getpid()}"
        admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        url = PG.rsplit("/", 1)[0] + f"/{name}"
    old = SqlConversationStore(url)
    cid = old.create_conversation("before", principal="alice")
    old.add_message(cid, "user", "What is the leave?")
    mid = old.add_message(cid, "assistant", "30 days.", route="rag")
    with old.engine.begin() as c:  # the database as it was before feedback
        c.execute(sa.text("DROP TABLE feedback"))
        c.execute(sa.text("ALTER TABLE messages DROP COLUMN collection"))
    old.close()
    store = SqlConversationStore(url)
    try:
        assert {"feedback"} <= set(sa.inspect(store.engine).get_table_names())
        fb = store.rate(mid, "alice", "down", "incomplete")
        assert fb["snapshot"]["question"] == "What is the leave?" and fb["snapshot"]["collection"] is None
        assert store.get_conversation(cid)["messages"][1]["content"] == "30 days."  # type: ignore[index]
    finally:
        store.close()
        if admin is not None:
            with admin.connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))


def test_filters_are_checked_and_dates_read() -> None:
    assert parse_when("2025-05-01", "since") == 1746057600.0
    assert parse_when("2025-05-01", "until", end=True) == 1746057600.0 + 86400
    assert parse_when("2025-05-01T12:00:00+02:00", "since") == 1746093600.0
    assert parse_when("2025-05-01T10:00:00Z", "since") == 1746093600.0
    cases: list[tuple[dict[str, Any], str]] = [
        ({"since": "yesterday"}, "not an ISO date"),
        ({"rating": "meh"}, "rating must be one of up, down"),
        ({"reason": "rude"}, "reason must be one of"),
        ({"review_state": "done"}, "review_state must be one of"),
        ({"limit": 0}, "limit must be"),
    ]
    for bad, needle in cases:
        with pytest.raises(InvalidRequest, match=needle):
            feedback_query(**bad)


# -- the API of a real server with API keys -------------------------------------------------------------------
ADMIN, ALICE, BOB, CAROL = (f"{n}-key-0123456789" for n in ("ops", "alice", "bob", "carol"))
RPM = 40


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("feedback")
    keys = data / "keys.yaml"
    keys.write_text(
        f"- name: ops\n  key_sha256: {hashlib.sha256(ADMIN.encode()).hexdigest()}\n  admin: true\n"
        + "".join(f"- name: {n}\n  key: {k}\n" for n, k in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)))
    )
    server = Server(
        data,
        env={
            "ENCLAVE_MODELS__BACKEND": "echo",
            "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "0",
            "ENCLAVE_AUTH__API_KEYS_FILE": str(keys),
            "ENCLAVE_ROUTER__RAG_MIN_SCORE": "0.0",  # answer from documents whenever anything is found
            "ENCLAVE_LIMITS__REQUESTS_PER_MINUTE": str(RPM),
        },
        log_name="feedback",
    ).start()
    doc = "# Parental leave\n\nParental leave is 30 days at full pay. Ask the HR team about adoption leave.\n"
    r = server.post(
        "/v1/documents",
        files=[("files", ("leave.md", doc, "text/markdown"))],
        data={"collection": "handbook"},
        headers=_h(ADMIN),
    )
    assert r.status_code == 200, r.text
    yield server
    server.stop()


def _h(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _chat(server: Server, key: str, message: str, **extra: Any) -> dict[str, Any]:
    """One answer over SSE; its `done` event."""
    body = {"message": message, **extra}
    with httpx.stream("POST", server.url + "/v1/chat/stream", json=body, headers=_h(key), timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "done", events[-1]
    return events[-1]  # type: ignore[no-any-return]


def _rate(server: Server, key: str, message_id: str, **body: Any) -> httpx.Response:
    return server.post(f"/v1/messages/{message_id}/feedback", json=body, headers=_h(key))


def _error(r: httpx.Response, status: int, code: str, needle: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code and needle in r.json()["error"]["message"], r.text


def test_rate_rerate_read_back_in_the_conversation_and_withdraw(app: Server) -> None:
    done = _chat(app, ALICE, "How long is parental leave?", collection="handbook")
    mid, cid = done["message_id"], done["conversation_id"]
    r = _rate(app, ALICE, mid, rating="down", reason="incomplete", correction="30 days at full pay.")
    assert r.status_code == 200, r.text
    fb = r.json()
    assert re.fullmatch(r"feedback;dur=[0-9.]+", r.headers["server-timing"])
    assert set(fb) == {"id", "message_id", "conversation_id", "rating", "reason", "correction", "created_at"} | {
        "updated_at",
        "review",
    }
    assert (fb["message_id"], fb["conversation_id"], fb["rating"], fb["reason"]) == (mid, cid, "down", "incomplete")
    assert fb["review"] == {"state": "pending", "by": None, "at": None, "note": None}
    assert app.get(f"/v1/messages/{mid}/feedback", headers=_h(ALICE)).json() == fb
    again = _rate(app, ALICE, mid, rating="up").json()
    assert again["id"] == fb["id"] and again["rating"] == "up" and again["correction"] is None
    conv = app.get(f"/v1/conversations/{cid}", headers=_h(ALICE)).json()
    user, answer = conv["messages"]
    assert "feedback" not in user and answer["feedback"] == again
    assert answer["collection"] == "handbook"
    assert httpx.delete(app.url + f"/v1/messages/{mid}/feedback", headers=_h(ALICE)).status_code == 204
    _error(app.get(f"/v1/messages/{mid}/feedback", headers=_h(ALICE)), 404, "not_found", "no rating")
    _error(httpx.delete(app.url + f"/v1/messages/{mid}/feedback", headers=_h(ALICE)), 404, "not_found", "no rating")
    assert app.get(f"/v1/conversations/{cid}", headers=_h(ALICE)).json()["messages"][1]["feedback"] is None


def test_someone_elses_or_an_unknown_message_is_not_found(app: Server) -> None:
    done = _chat(app, ALICE, "What is the travel policy?")
    mid = done["message_id"]
    assert _rate(app, ALICE, mid, rating="down", reason="wrong").status_code == 200
    for key in (BOB, ADMIN):  # not even an admin rates, or reads, someone else's answer
        _error(_rate(app, key, mid, rating="up"), 404, "not_found", f"unknown message '{mid}'")
        _error(app.get(f"/v1/messages/{mid}/feedback", headers=_h(key)), 404, "not_found", "no rating")
    _error(_rate(app, BOB, "msg_doesnotexist", rating="up"), 404, "not_found", "unknown message 'msg_doesnotexist'")
    assert app.get(f"/v1/messages/{mid}/feedback", headers=_h(ALICE)).json()["rating"] == "down"
    question = app.get(f"/v1/conversations/{done['conversation_id']}", headers=_h(ALICE)).json()["messages"][0]
    _error(_rate(app, ALICE, question["id"], rating="up"), 400, "invalid_request", "only an answer")
    _error(httpx.post(app.url + f"/v1/messages/{mid}/feedback", json={"rating": "up"}), 401, "unauthorized", "key")


def test_bad_ratings_get_a_clear_400(app: Server) -> None:
    mid = _chat(app, BOB, "Where is the office?")["message_id"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rating": "up", "correction": "x" * 8001}, "correction is 8001 characters; the limit is 8000"),
        ({"rating": "down", "reason": "rude"}, "reason: Input should be 'wrong', 'not_in_documents'"),
        ({"rating": "meh"}, "rating: Input should be 'up' or 'down'"),
        ({"reason": "wrong"}, "rating: Field required"),
        ({"rating": "up", "stars": 5}, "the field 'stars' is not supported"),
    ]
    for body, needle in cases:
        _error(_rate(app, BOB, mid, **body), 400, "invalid_request", needle)
    assert app.get(f"/v1/messages/{mid}/feedback", headers=_h(BOB)).status_code == 404, "nothing was stored"


def test_admins_list_and_review_the_queue_others_may_not(app: Server) -> None:
    done = _chat(app, BOB, "How long is parental leave?", collection="handbook")
    fb = _rate(app, BOB, done["message_id"], rating="down", reason="not_in_documents", correction="45 days").json()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    listed = app.get(
        "/v1/feedback",
        params={"rating": "down", "route": "rag", "collection": "handbook", "review_state": "pending", "since": today},
        headers=_h(ADMIN),
    ).json()
    row = next(r for r in listed["data"] if r["id"] == fb["id"])
    assert listed["total"] >= 1 and row["principal"] == "bob" and row["correction"] == "45 days"
    snap = row["snapshot"]
    assert snap["question"] == "How long is parental leave?" and snap["route"] == "rag"
    assert snap["collection"] == "handbook" and snap["adapter"] is None and snap["sources"]
    assert snap["answer"] and "citations" in snap
    later = app.get("/v1/feedback", params={"since": "2999-01-01"}, headers=_h(ADMIN)).json()
    assert later["data"] == [] and later["total"] == 0
    _error(app.get("/v1/feedback", params={"since": "soon"}, headers=_h(ADMIN)), 400, "invalid_request", "ISO")
    _error(app.get("/v1/feedback", params={"rating": "meh"}, headers=_h(ADMIN)), 400, "invalid_request", "rating")
    for key in (ALICE, BOB):
        _error(app.get("/v1/feedback", headers=_h(key)), 403, "forbidden", "admin")
        r = app.post(f"/v1/feedback/{fb['id']}/review", json={"decision": "accepted"}, headers=_h(key))
        _error(r, 403, "forbidden", "admin")
    r = app.post(
        f"/v1/feedback/{fb['id']}/review", json={"decision": "accepted", "note": "HR says 45"}, headers=_h(ADMIN)
    )
    assert r.status_code == 200, r.text
    assert r.json()["review"]["state"] == "accepted" and r.json()["review"]["by"] == "ops"
    assert r.json()["review"]["note"] == "HR says 45" and r.json()["review"]["at"]
    own = app.get(f"/v1/messages/{done['message_id']}/feedback", headers=_h(BOB)).json()
    assert own["review"]["state"] == "accepted"
    bad = app.post(f"/v1/feedback/{fb['id']}/review", json={"decision": "maybe"}, headers=_h(ADMIN))
    _error(bad, 400, "invalid_request", "decision")
    missing = app.post("/v1/feedback/fb_nothere/review", json={"decision": "rejected"}, headers=_h(ADMIN))
    _error(missing, 404, "not_found", "unknown feedback 'fb_nothere'")


def _counter(server: Server, **labels: str) -> float:
    text = server.get("/metrics", headers=_h(ADMIN)).text
    want = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
    for line in text.splitlines():
        if line.startswith("enclave_feedback_total{" + want + "}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_ratings_per_route_collection_and_adapter(app: Server) -> None:
    done = _chat(app, BOB, "Is parental leave paid?", collection="handbook")
    labels = {"rating": "up", "route": "rag", "collection": "handbook", "adapter": ""}
    before = _counter(app, **labels)
    assert _rate(app, BOB, done["message_id"], rating="up").status_code == 200
    assert _counter(app, **labels) == before + 1
    down = {**labels, "rating": "down"}
    before_down = _counter(app, **down)
    assert _rate(app, BOB, done["message_id"], rating="down", reason="wrong").status_code == 200
    assert _counter(app, **down) == before_down + 1 and _counter(app, **labels) == before + 1


def _recv(ws: Any) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=30))  # type: ignore[no-any-return]


def test_websocket_feedback_frame_and_error_frames_keep_the_socket(app: Server) -> None:
    with connect(app.ws_url, additional_headers=_h(ALICE)) as ws:
        ws.send(json.dumps({"type": "chat", "message": "Who approves leave?"}))
        while (done := _recv(ws))["type"] not in ("done", "error"):
            pass
        assert done["type"] == "done"
        mid = done["message_id"]
        ws.send(json.dumps({"type": "feedback", "message_id": mid, "rating": "down", "reason": "other"}))
        reply = _recv(ws)
        assert reply["type"] == "feedback" and reply["feedback"]["message_id"] == mid
        assert reply["feedback"]["rating"] == "down" and reply["feedback"]["review"]["state"] == "pending"
        for frame, code, needle in [
            ({"message_id": mid, "rating": "down", "reason": "rude"}, "invalid_request", "reason"),
            ({"message_id": mid, "rating": "up", "correction": "y" * 8001}, "invalid_request", "limit is 8000"),
            ({"message_id": "msg_nothere", "rating": "up"}, "not_found", "unknown message"),
            ({"rating": "up"}, "invalid_request", "message_id: Field required"),
        ]:
            ws.send(json.dumps({"type": "feedback", **frame}))
            err = _recv(ws)
            assert err["type"] == "error" and err["code"] == code and needle in err["message"], err
            assert err["frame"] == "feedback" and err.get("message_id") == frame.get("message_id")
        ws.send(json.dumps({"type": "ping"}))
        assert _recv(ws) == {"type": "pong"}
    rated = app.get(f"/v1/messages/{mid}/feedback", headers=_h(ALICE)).json()
    assert rated["id"] == reply["feedback"]["id"] and rated["reason"] == "other"
    with connect(app.ws_url, additional_headers=_h(BOB)) as ws:  # someone else's answer, over the socket too
        ws.send(json.dumps({"type": "feedback", "message_id": mid, "rating": "up"}))
        assert _recv(ws)["code"] == "not_found"


def test_a_flood_of_ratings_is_refused_per_key_and_nothing_is_stored_twice(app: Server) -> None:
    mid = _chat(app, CAROL, "Where do I send invoices?")["message_id"]
    codes = [_rate(app, CAROL, mid, rating="up" if i % 2 else "down").status_code for i in range(RPM)]
    assert codes == [200] * RPM
    _error(_rate(app, CAROL, mid, rating="up"), 429, "overloaded", f"rate limit: {RPM} ratings per minute")
    with connect(app.ws_url, additional_headers=_h(CAROL)) as ws:  # over the socket: an error, the socket stays
        ws.send(json.dumps({"type": "feedback", "message_id": mid, "rating": "up"}))
        assert _recv(ws)["code"] == "overloaded"
        ws.send(json.dumps({"type": "ping"}))
        assert _recv(ws) == {"type": "pong"}
    assert _chat(app, CAROL, "Chats have a budget of their own")["type"] == "done"
    listed = app.get("/v1/feedback", params={"limit": 1000}, headers=_h(ADMIN)).json()["data"]
    assert [r["rating"] for r in listed if r["message_id"] == mid] == ["up"]
    other = _chat(app, BOB, "Another key is not limited by carol's")["message_id"]
    assert _rate(app, BOB, other, rating="up").status_code == 200


# -- the CLI on a real SQLite file ----------------------------------------------------------------------------
def test_cli_lists_exports_and_reviews(tmp_path: Path) -> None:
    from enclave.cli.main import app as cli

    data = tmp_path / "data"
    store = SqlConversationStore(f"sqlite:///{data / 'enclave.db'}")
    _, _, a = _turns(store, "alice")
    _, _, b = _turns(store, "bob", route="adapter", adapter="hr-lora", collection=None)
    down = store.rate(a, "alice", "down", "wrong", "Adoption leave is 20 days.")
    up = store.rate(b, "bob", "up")
    store.close()
    env = {"ENCLAVE_DATA_DIR": str(data), "COLUMNS": "250"}
    runner = CliRunner()

    listed = runner.invoke(cli, ["feedback", "list", "--rating", "down"], env=env)
    assert listed.exit_code == 0, listed.output
    assert down["id"] in listed.output and up["id"] not in listed.output and "1 of 1" in listed.output
    assert "Adoption leave is 20 days." in listed.output and "handbook" in listed.output

    out = tmp_path / "export" / "feedback.jsonl"
    exported = runner.invoke(cli, ["feedback", "export", "--out", str(out)], env=env)
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"] for r in lines} == {down["id"], up["id"]}
    by_id = {r["id"]: r for r in lines}
    assert by_id[down["id"]]["snapshot"]["question"] == "And for adoption?"
    assert by_id[up["id"]]["snapshot"]["adapter"] == "hr-lora" and by_id[up["id"]]["principal"] == "bob"
    only = runner.invoke(cli, ["feedback", "export", "--out", str(out), "--route", "adapter"], env=env)
    assert only.exit_code == 0 and [json.loads(x)["id"] for x in out.read_text().splitlines()] == [up["id"]]

    reviewed = runner.invoke(cli, ["feedback", "review", down["id"], "accepted", "--note", "HR agrees"], env=env)
    assert reviewed.exit_code == 0, reviewed.output
    assert f"{down['id']}: accepted by cli:" in reviewed.output
    store = SqlConversationStore(f"sqlite:///{data / 'enclave.db'}")
    [row] = store.list_feedback(FeedbackQuery(review_state="accepted"))
    assert row["id"] == down["id"] and row["review"]["note"] == "HR agrees" and row["review"]["by"].startswith("cli:")
    store.close()
    pending = runner.invoke(cli, ["feedback", "list", "--review-state", "pending"], env=env)
    assert "0 of 0" in pending.output

    assert runner.invoke(cli, ["feedback", "review", "fb_nothere", "accepted"], env=env).exit_code == 1
    assert runner.invoke(cli, ["feedback", "review", down["id"], "maybe"], env=env).exit_code == 2
    bad = runner.invoke(cli, ["feedback", "list", "--since", "last week"], env=env)
    assert bad.exit_code == 2 and "not an ISO date" in bad.output
