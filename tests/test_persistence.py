"""Conversations survive a restart; SIGTERM lets an open stream finish before the process exits."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_from_before_citations_gains_the_column_and_keeps_its_turns(tmp_path: Path, backend: str) -> None:
    """An existing store, made before `citations` was a column, opens, keeps its messages and stores citations."""
    import sqlalchemy as sa

    from enclave.chat.conversations import SqlConversationStore

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        name = f"enclave_migrate_{os.getpid()}"
        admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    old = SqlConversationStore(url)
    cid = old.create_conversation("before")
    mid = old.add_message(cid, "assistant", "an answer [1].", sources=[{"id": "a"}])
    with old.engine.begin() as c:  # the table as it was: no citations column
        c.execute(sa.text("ALTER TABLE messages DROP COLUMN citations"))
    old.close()
    store = SqlConversationStore(url)
    try:
        conv = store.get_conversation(cid)
        assert conv is not None and conv["messages"][0]["content"] == "an answer [1]."
        assert conv["messages"][0]["citations"] is None
        citations = {"sentences": [{"text": "an answer [1].", "source": 1}], "unverified": False}
        store.update_message(mid, citations=citations)
        assert store.get_conversation(cid)["messages"][0]["citations"]["sentences"][0]["source"] == 1  # type: ignore[index]
    finally:
        store.close()
        if backend == "postgresql":
            with admin.connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
