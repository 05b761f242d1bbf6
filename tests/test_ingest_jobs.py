"""Background ingest jobs: each file's state and reason over HTTP, admin keys only, and nothing lost across a stop."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.core.settings import Settings
from enclave.knowledge.inbox import Inbox
from enclave.knowledge.store import KnowledgeBase
from tests.conftest import Server

ADMIN, READER = "jobs-admin-key-0123456789", "jobs-reader-key-0123456789"
COOLING = "# Cooling loop\n\nThe Halvorsen cooling loop is serviced every 41 days by the facilities team.\n"
BADGES = "# Visitor badges\n\nVisitor badges are printed at the Quillon desk and expire at 18:30 the same day.\n"


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service on the echo backend (no model to load) with an admin key and a read-only key."""
    data = tmp_path_factory.mktemp("jobs")
    keys = data / "keys.yaml"
    keys.write_text(f"- name: ops\n  key: {ADMIN}\n  admin: true\n- name: reader\n  key: {READER}\n")
    s = Server(
        data, env={"ENCLAVE_MODELS__BACKEND": "echo", "ENCLAVE_AUTH__API_KEYS_FILE": str(keys)}, log_name="jobs"
    ).start()
    yield s
    s.stop()


def wait_done(server: Server, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Polls the job as the page does until it is done; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = server.get(f"/v1/ingest/{job_id}", headers=auth(ADMIN))
        assert r.status_code == 200, r.text
        if r.json()["state"] == "done":
            return r.json()  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not done in {timeout}s: {r.json()}")


def upload(server: Server, collection: str, files: list[tuple[str, bytes]], key: str = ADMIN) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return server.post("/v1/ingest", files=parts, data={"collection": collection}, headers=auth(key))


def test_a_job_reports_every_file_and_its_documents_are_listed_with_their_time(server: Server) -> None:
    before = time.time()
    r = upload(
        server,
        "handbook",
        [("guide/cooling.md", COOLING.encode()), ("guide/badges.md", BADGES.encode()), ("tool.exe", b"MZ\x90\x00")],
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["collection"] == "handbook" and job["id"].startswith("ing_")
    assert [(f["name"], f["size"]) for f in job["files"]] == [
        ("guide/cooling.md", len(COOLING.encode())),
        ("guide/badges.md", len(BADGES.encode())),
        ("tool.exe", 4),
    ]
    assert all(f["state"] in ("queued", "reading", "done", "error") for f in job["files"])

    done = wait_done(server, job["id"])
    files = {f["name"]: f for f in done["files"]}
    for name in ("guide/cooling.md", "guide/badges.md"):
        assert files[name]["state"] == "done" and files[name]["error"] == "", files[name]
        assert files[name]["chunks"] >= 1 and files[name]["documents"] == 1 and files[name]["stage"] == ""
    assert files["tool.exe"]["state"] == "error" and files["tool.exe"]["chunks"] == 0
    assert "unsupported file type '.exe'" in files["tool.exe"]["error"], files["tool.exe"]
    assert done["counts"] == {"queued": 0, "done": 2, "unchanged": 0, "error": 1}
    assert done["finished"] is not None and done["finished"] >= done["created"]
    assert job["id"] in [j["id"] for j in server.get("/v1/ingest", headers=auth(ADMIN)).json()["data"]]

    docs = server.get("/v1/collections/handbook/documents", headers=auth(ADMIN)).json()["data"]
    assert {d["uri"] for d in docs} == {"upload/guide/cooling.md", "upload/guide/badges.md"}
    for d in docs:
        assert before - 1 <= d["ingested_at"] <= time.time() + 1, d
        assert d["kind"] == "markdown" and d["parent"] is None and d["chunks"] >= 1
    found = server.post(
        "/v1/search",
        json={"query": "How often is the Halvorsen loop serviced?", "collection": "handbook", "k": 1},
        headers=auth(ADMIN),
    ).json()["results"]
    assert found[0]["uri"] == "upload/guide/cooling.md" and "41 days" in found[0]["snippet"]

    # The same files again are unchanged; a name that tries to climb out of the inbox is kept inside it.
    again = wait_done(
        server,
        upload(
            server, "handbook", [("guide/cooling.md", COOLING.encode()), ("../../etc/x.md", BADGES.encode())]
        ).json()["id"],
    )
    assert [(f["name"], f["state"]) for f in again["files"]] == [
        ("guide/cooling.md", "unchanged"),
        ("etc/x.md", "done"),
    ]
    assert again["counts"]["unchanged"] == 1


def test_only_an_admin_key_changes_the_knowledge_base(server: Server) -> None:
    job = wait_done(server, upload(server, "locked", [("keep.md", BADGES.encode())]).json()["id"])
    assert job["files"][0]["state"] == "done"
    refused = upload(server, "locked", [("more.md", COOLING.encode())], key=READER)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "forbidden" and "admin" in refused.json()["error"]["message"]
    assert server.get(f"/v1/ingest/{job['id']}", headers=auth(READER)).status_code == 403
    assert server.get("/v1/ingest", headers=auth(READER)).status_code == 403
    assert upload(server, "locked", [("more.md", COOLING.encode())], key="").status_code == 401
    assert server.get("/v1/ingest/ing_0000000000000000", headers=auth(ADMIN)).status_code == 404

    # The reader may read the list, not delete from it; the admin may.
    docs = server.get("/v1/collections/locked/documents", headers=auth(READER)).json()["data"]
    assert [d["uri"] for d in docs] == ["upload/keep.md"]
    path = f"/v1/collections/locked/documents/{docs[0]['id']}"
    assert httpx.delete(server.url + path, headers=auth(READER), timeout=30).status_code == 403
    assert httpx.delete(server.url + path, headers=auth(ADMIN), timeout=30).status_code == 204
    assert server.get("/v1/collections/locked/documents", headers=auth(READER)).json()["data"] == []


def test_accepted_files_are_ingested_after_a_stop_before_the_worker_ran(tmp_path: Path) -> None:
    kb = KnowledgeBase.from_settings(Settings(data_dir=str(tmp_path)))  # type: ignore[call-arg]
    root = tmp_path / "inbox"
    first = Inbox(root, kb)  # never started: the process "dies" right after answering 202
    job = first.accept(
        "durable", [("a.md", COOLING.encode()), ("b.md", BADGES.encode()), ("c.md", b"# C\n\nThird file.\n")]
    )
    folder = root / job.id
    assert sorted(p.name for p in folder.iterdir()) == ["00000", "00001", "00002", "job.json"]
    assert "durable" not in kb.collection_names()
    # As if the dead process had been reading a.md, and c.md's stored bytes were lost with the disk.
    manifest = json.loads((folder / "job.json").read_text())
    manifest["files"][0].update(state="reading", stage="embedding 1 chunks")
    (folder / "job.json").write_text(json.dumps(manifest))
    (folder / "00002").unlink()

    second = Inbox(root, kb)
    assert second.resume() == 2  # a.md (mid-read) and b.md wait; c.md is lost and says so
    second.start()
    try:
        deadline = time.monotonic() + 30
        while second.get(job.id).state != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.stop()
    files = {f.name: f for f in second.get(job.id).files}
    assert (files["a.md"].state, files["b.md"].state) == ("done", "done"), files
    assert files["c.md"].state == "error" and files["c.md"].error == "the stored upload was lost"
    assert {d["uri"] for d in kb.list_documents("durable")} == {"upload/a.md", "upload/b.md"}
    assert not folder.exists()  # a finished job leaves nothing behind
    # A third start finds nothing to do.
    assert Inbox(root, kb).resume() == 0
