"""The knowledge base on real files, a real Chroma and the real MiniLM embedder; RAG over a real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from enclave.core.errors import Forbidden, InvalidRequest, NotFound
from enclave.core.protocols import Principal
from enclave.core.settings import Settings
from enclave.knowledge.loaders import LoadError, ReadLimits, load
from enclave.knowledge.loaders.base import rows_to_sections
from enclave.knowledge.samples import ensure_samples
from enclave.knowledge.store import KnowledgeBase
from tests.conftest import Server
from tests.test_transports import ws_events

ANYONE = Principal()


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (xref offsets computed)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        page_no, content_no = len(objs) + 1, len(objs) + 2
        kids.append(f"{page_no} 0 R")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_no} 0 R "
            f"/Resources << /Font << /F1 {len(pages) * 2 + 3} 0 R >> >> >>"
        )
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    objs.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


HTML = """<html><head><title>Cafeteria menu</title><script>var secret = "tracking pixel";</script></head>
<body><nav>Home | About | Navigation junk</nav><main><h1>Cafeteria menu</h1>
<h2>Monday</h2><p>On Monday the cafeteria serves lentil soup with rye bread.</p>
<h2>Friday</h2><p>On Friday the cafeteria serves grilled salmon with dill potatoes.</p></main>
<footer>Copyright footer text</footer></body></html>"""

MARKDOWN = """# Travel policy

## Booking flights
Employees book flights through the travel desk at least fourteen days ahead.

## Hotels
The nightly hotel limit is 180 euros in Berlin and 150 euros elsewhere.
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "sub").mkdir()
    (d / "handbook.pdf").write_bytes(
        make_pdf(
            [
                "The parking garage opens at six in the morning.",
                "Visitors must register at the front desk on level two.",
            ]
        )
    )
    (d / "menu.html").write_text(HTML)
    (d / "travel.md").write_text(MARKDOWN)
    (d / "sub" / "wifi.txt").write_text("Guest wifi\nThe guest wifi password rotates every Monday at noon.")
    (d / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    return d


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeBase]:
    s = Settings(data_dir=str(tmp_path_factory.mktemp("kb")))  # type: ignore[call-arg]
    yield KnowledgeBase.from_settings(s)


def test_html_is_read_as_a_browser_reads_it() -> None:
    """Generated pages are often not valid HTML: a <p> holding a list or another <p> (Sphinx does both) is
    closed where a browser closes it, so its text is indexed once, not once per level of nesting."""
    page = """<?xml version="1.0" encoding="utf-8"?>
<html><head><title> Stable   ABI </title></head><body>
<div class="sphinxsidebar">Quick search</div><div class="related" role="navigation">next | previous</div>
<div role="main"><h2>Contents<a class="headerlink">¶</a></h2>
<p class="availability">Availability: not WASI.<p>This module does not work on WebAssembly.</p></p>
<p><ul><li><p>PyAIter_Check()</p></li><li>PyArg_Parse() <!-- a comment --> &amp; friends</li></ul></p>
<template><p>never shown</p></template><dl><dt>x</dt><dd><p>inside a definition</p></dd></dl></div>
<div class="footer">Copyright</div></body></html>"""
    doc = load("stable.html", page.encode())
    assert doc.title == "Stable ABI" and [s.heading for s in doc.sections] == ["Contents"]
    assert doc.sections[0].text.splitlines() == [
        "Availability: not WASI.",
        "This module does not work on WebAssembly.",
        "PyAIter_Check()",
        "PyArg_Parse() & friends",
        "x",
        "inside a definition",
    ]
    with pytest.raises(LoadError, match="no text found"):
        load("empty.html", b"  \n")


def test_rows_to_sections_writes_records_or_markdown_in_pieces_that_stand_alone() -> None:
    header = ["Type code", "C  Type", ""]  # a blank name is numbered; a row may be wider than the header
    rows = [["'b'", "signed char", "1"], ["'B'", "", "1"], ["'u'", "wchar_t\nwide"], ["'q'", "a | b", "8", "C99"]]
    (records,) = rows_to_sections(rows, header, "array", ReadLimits(), page=7)  # records, the default
    assert (records.heading, records.page) == ("array", 7)
    assert records.text.split("\n") == [
        "Columns: Type code | C Type | column 3 | column 4",
        "",
        "Type code: 'b'; C Type: signed char; column 3: 1",
        "Type code: 'B'; column 3: 1",  # an empty cell is left out
        "Type code: 'u'; C Type: wchar_t wide",  # a line break in a cell is a space
        "Type code: 'q'; C Type: a | b; column 3: 8; column 4: C99",
    ]
    (markdown,) = rows_to_sections(rows, header, "array", ReadLimits(table_style="markdown"))
    assert markdown.page is None
    assert markdown.text.split("\n") == [
        "| Type code | C Type |  |  |",
        "|---|---|---|---|",
        "| 'b' | signed char | 1 |  |",
        "| 'B' |  | 1 |  |",
        "| 'u' | wchar_t wide |  |  |",
        "| 'q' | a \\| b | 8 | C99 |",
    ]
    assert rows_to_sections([], [], "empty", ReadLimits()) == []


@pytest.mark.parametrize("style", ["records", "markdown"])
def test_rows_to_sections_pieces_keep_within_section_chars_unless_one_row_is_longer(style: str) -> None:
    rows = [[f"key {i}", "" if i % 5 == 0 else f"value {i}", "x" * 300 if i == 20 else ""] for i in range(40)]
    rows[30] = ["", "", ""]  # a row of empty cells is still a line: sheets.py counts a piece's rows by its lines
    pieces = rows_to_sections(rows, ["Key", "Value", "Note"], "t", ReadLimits(section_chars=200, table_style=style))
    assert len(pieces) > 5
    for p in pieces:
        assert len(p.text) <= 200 or p.text.count("\n") == 2  # over the size only as a single row
    top = pieces[0].text.split("\n")[:2]
    assert all(p.text.split("\n")[:2] == top for p in pieces)  # every piece under the columns' two lines
    assert [line for p in pieces for line in p.text.split("\n")[2:]] == [
        line
        for p in rows_to_sections(
            rows, ["Key", "Value", "Note"], "t", ReadLimits(section_chars=10**6, table_style=style)
        )
        for line in p.text.split("\n")[2:]
    ]  # every row once and in order, however the table is cut
    assert sum(p.text.count("\n") - 1 for p in pieces) == 40
    assert [len(p.text) > 200 for p in pieces].count(True) == 1  # the 300-character row, alone


def test_loaders_keep_structure(corpus: Path) -> None:
    pdf = load("handbook.pdf", (corpus / "handbook.pdf").read_bytes())
    assert [s.page for s in pdf.sections] == [1, 2] and "parking garage" in pdf.sections[0].text
    html = load("menu.html", HTML.encode())
    assert html.title == "Cafeteria menu" and [s.heading for s in html.sections] == ["Monday", "Friday"]
    assert "tracking" not in html.text and "Navigation junk" not in html.text and "footer" not in html.text
    md = load("travel.md", MARKDOWN.encode())
    assert md.title == "Travel policy" and [s.heading for s in md.sections] == ["Booking flights", "Hotels"]
    with pytest.raises(LoadError, match=r"broken\.pdf"):
        load("broken.pdf", b"%PDF-1.4 nope")
    with pytest.raises(LoadError, match="unsupported"):
        load("x.xyz", b"\x89PNG")


def test_ingest_every_format_and_search_finds_the_right_file(kb: KnowledgeBase, corpus: Path) -> None:
    report = kb.ingest_paths([corpus], "tests")
    assert len(report.added) == 4, report
    assert any("broken.pdf" in s for s in report.skipped) and any("image.png" in s for s in report.skipped)
    # The summary by kind: files read and refused, chunks written, and where the time went.
    assert report.kinds["pdf"]["files"] == 1 and report.kinds["pdf"]["skipped"] == 1
    assert report.kinds["image"] == {**report.kinds["image"], "files": 0, "skipped": 1, "chunks": 0}
    assert sum(k["chunks"] for k in report.kinds.values()) == report.chunks
    assert all(k["read_s"] > 0 for k in report.kinds.values())
    cases = {
        "When does the parking garage open?": "handbook.pdf",
        "What does the cafeteria serve on Friday?": "menu.html",
        "What is the hotel limit in Berlin?": "travel.md",
        "How often does the guest wifi password change?": "wifi.txt",
    }
    for query, expected in cases.items():
        for mode in ("dense", "bm25", "hybrid"):
            top = kb.search(query, "tests", ANYONE, 3, mode=mode)  # type: ignore[arg-type]
            assert top and top[0].uri.endswith(expected), (mode, query, [c.uri for c in top])
    hit = kb.search("hotel limit Berlin", "tests", ANYONE, 1)[0]
    assert hit.metadata["section"] == "Hotels" and hit.metadata["dense_score"] > 0.3
    page = kb.search("register visitors front desk", "tests", ANYONE, 1)[0]
    assert page.metadata["page"] == 2


def test_reingest_skips_updates_and_removes(kb: KnowledgeBase, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\nAlpha facts about aardvarks.")
    (tmp_path / "b.md").write_text("# B\nBravo facts about badgers.")
    first = kb.ingest_paths([tmp_path], "reingest")
    assert len(first.added) == 2
    again = kb.ingest_paths([tmp_path], "reingest")
    assert len(again.unchanged) == 2 and again.chunks == 0
    (tmp_path / "a.md").write_text("# A\nAlpha facts about armadillos now.")
    (tmp_path / "b.md").unlink()
    third = kb.ingest_paths([tmp_path], "reingest")
    assert [Path(u).name for u in third.updated] == ["a.md"] and [Path(u).name for u in third.removed] == ["b.md"]
    docs = kb.list_documents("reingest")
    assert len(docs) == 1 and docs[0]["chunks"] == 1
    assert "armadillos" in kb.search("armadillo", "reingest", ANYONE, 1)[0].text
    kb.delete_document("reingest", str(docs[0]["id"]))
    assert kb.list_documents("reingest") == []


def test_a_version_written_in_part_is_completed_and_new_chunks_are_added(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crash left (the first chunks of a version) is finished on the next ingest. New chunks go in with
    Chroma's add: its upsert links vectors into the HNSW graph far worse (bench/search_scale.py's corpus,
    same vectors and order: recall@10 0.85 against 0.97); only chunks already there are upserted."""
    body = "# Guide\n\n" + "\n\n".join(f"Paragraph {i} about the parking rules of building {i}." * 4 for i in range(12))
    full = kb.ingest_bytes("guide.md", body.encode(), "partial")
    assert full.chunks >= 3
    col = kb._collection("partial")
    ids = sorted(col.get()["ids"], key=lambda c: int(c.rsplit(":", 1)[1]))
    col.delete(ids=ids[2:])  # as if the process died after writing the first two chunks
    calls: dict[str, list[str]] = {"add": [], "upsert": []}
    real_add, real_upsert = col.add, col.upsert

    def spy(name: str, real):  # type: ignore[no-untyped-def]
        def call(**kw):  # type: ignore[no-untyped-def]
            calls[name] += kw["ids"]
            return real(**kw)

        return call

    monkeypatch.setattr(kb, "_collection", lambda name, create=False: col)
    monkeypatch.setattr(col, "add", spy("add", real_add))
    monkeypatch.setattr(col, "upsert", spy("upsert", real_upsert))
    again = kb.ingest_bytes("guide.md", body.encode(), "partial")
    assert again.chunks == full.chunks and again.added == ["guide.md"]
    assert calls == {"add": ids[2:], "upsert": ids[:2]}
    got = col.get(include=["documents"])
    assert sorted(got["ids"]) == sorted(ids) and all(got["documents"])
    assert kb.ingest_bytes("guide.md", body.encode(), "partial").unchanged == ["guide.md"]


def test_search_errors(kb: KnowledgeBase) -> None:
    with pytest.raises(NotFound):
        kb.search("anything", "no-such-collection", ANYONE, 3)
    with pytest.raises(InvalidRequest, match="empty"):
        kb.search("  ", "tests", ANYONE, 3)
    with pytest.raises(InvalidRequest, match="limit"):
        kb.search("x" * 5000, "tests", ANYONE, 3)
    with pytest.raises(Forbidden):
        kb.search("anything", "tests", Principal("bob", frozenset({"other"})), 3)
    with pytest.raises(InvalidRequest, match="invalid collection"):
        kb.ingest_bytes("x.md", b"# x\nhello", "bad name!")


def test_samples_are_ingested_once(kb: KnowledgeBase) -> None:
    report = ensure_samples(kb, "guide")
    assert report is not None and len(report.added) >= 5
    assert ensure_samples(kb, "guide") is None
    top = kb.search("How do I ingest documents?", "guide", ANYONE, 1)[0]
    assert top.uri.endswith("03-knowledge-base.md")


@pytest.mark.slow
def test_http_knowledge_base_and_rag_over_websocket(live_server: Server, corpus: Path) -> None:
    files = [("files", (name, (corpus / name).read_bytes())) for name in ("travel.md", "menu.html", "broken.pdf")]
    up = live_server.post("/v1/documents", files=files, data={"collection": "policies"})
    assert up.status_code == 200, up.text
    assert sorted(up.json()["added"]) == ["upload/menu.html", "upload/travel.md"]
    assert any("broken.pdf" in s for s in up.json()["skipped"])
    cols = {c["name"]: c for c in live_server.get("/v1/collections").json()["data"]}
    assert cols["policies"]["documents"] == 2
    docs = live_server.get("/v1/collections/policies/documents").json()["data"]
    assert {d["uri"] for d in docs} == {"upload/menu.html", "upload/travel.md"}
    found = live_server.post("/v1/search", json={"query": "hotel limit in Berlin", "collection": "policies", "k": 2})
    assert found.json()["results"][0]["uri"] == "upload/travel.md"
    # The server reranks by default and says each result's score; a request may ask for the hybrid order alone.
    assert all(r["rerank_score"] is not None for r in found.json()["results"])
    plain = live_server.post(
        "/v1/search", json={"query": "hotel limit in Berlin", "collection": "policies", "k": 2, "rerank": False}
    )
    assert plain.status_code == 200 and all(r["rerank_score"] is None for r in plain.json()["results"])
    assert live_server.post("/v1/search", json={"query": "x", "collection": "nope"}).status_code == 404
    assert live_server.post("/v1/search", json={"query": "", "collection": "policies"}).status_code == 400
    assert live_server.post("/v1/search", json={"query": "q" * 3000, "collection": "policies"}).status_code == 400

    with connect(live_server.ws_url) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "message": "What is the nightly hotel limit in Berlin?",
                    "collection": "policies",
                    "max_tokens": 40,
                }
            )
        )
        events = ws_events(ws)
    kinds = [e["type"] for e in events]
    assert events[0]["type"] == "route" and events[0]["route"] == "rag", events[0]
    assert kinds.index("sources") < kinds.index("token"), "sources go out before the first token"
    sources = next(e for e in events if e["type"] == "sources")["sources"]
    assert sources[0]["uri"] == "upload/travel.md" and "180" in sources[0]["snippet"]
    assert events[-1]["type"] == "done"
    conv = live_server.get(f"/v1/conversations/{events[-1]['conversation_id']}").json()
    assert conv["messages"][1]["route"] == "rag" and conv["messages"][1]["sources"][0]["uri"] == "upload/travel.md"

    # A question the documents can't answer, forced onto them: the answer says so instead of inventing.
    with connect(live_server.ws_url) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "message": "Who won the 1954 football world cup?",
                    "route": "rag",
                    "collection": "policies",
                }
            )
        )
        events = ws_events(ws)
    text = "".join(e["text"] for e in events if e["type"] == "token")
    done = events[-1]
    assert "do not answer this" in text and done["type"] == "done" and done["documents"] == "declined"
    # what may follow is the model's own knowledge, and then it says so
    assert ("General knowledge, not from your documents:" in text) == done["general_knowledge"]

    assert httpx.delete(f"{live_server.url}/v1/collections/policies/documents/{docs[0]['id']}").status_code == 204
    assert len(live_server.get("/v1/collections/policies/documents").json()["data"]) == 1


def test_whole_collection_reads_page_past_sqlite_variable_limit(tmp_path: Path) -> None:
    """33,000 chunks: one unpaged `get` with metadatas fails in Chroma with 'too many SQL variables' (32,766)."""
    kb = KnowledgeBase.from_settings(Settings(data_dir=str(tmp_path)))  # type: ignore[call-arg]
    # A sparse HNSW graph: building the real one for 33k vectors takes minutes and is not what is tested here.
    col = kb.client.create_collection("big", metadata={"hnsw:space": "cosine", "hnsw:M": 4, "hnsw:construction_ef": 8})
    n, per_doc = 33_000, 100
    vectors = np.random.default_rng(0).standard_normal((n, kb.embedder.dimension), dtype=np.float32)
    for start in range(0, n, 5_000):
        rows = range(start, min(n, start + 5_000))
        col.add(
            ids=[f"c{i}" for i in rows],
            embeddings=vectors[rows.start : rows.stop],
            documents=[f"chunk {i} word{i % 50}" for i in rows],
            metadatas=[
                {
                    "doc_id": f"d{i // per_doc}",
                    "title": f"Doc {i // per_doc}",
                    "uri": f"file:///docs/{i // per_doc:05d}.md",
                    "content_hash": f"h{i // per_doc}",
                    "chunk_index": i % per_doc,
                }
                for i in rows
            ],
        )
    docs = kb.list_documents("big")
    assert len(docs) == n // per_doc and {d["chunks"] for d in docs} == {per_doc}
    assert [c["id"] for c in kb.iter_chunks("big")][:3] == ["c0", "c1", "c2"]
    assert sum(1 for _ in kb.iter_chunks("big")) == n
    hits = kb.search("word7", "big", ANYONE, k=3, mode="bm25")
    assert hits and all(h.text.endswith("word7") for h in hits)
    assert kb.list_collections() == [{"name": "big", "documents": n // per_doc, "chunks": n}]


def test_a_collection_records_the_embedding_runtime_that_wrote_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from enclave.knowledge.store import EMBEDDING_KEY
    from tests.conftest import MODEL_CACHE

    def kb_with(backend: str) -> KnowledgeBase:
        return KnowledgeBase.from_settings(
            Settings(  # type: ignore[call-arg]
                data_dir=str(tmp_path), models={"cache_dir": str(MODEL_CACHE)}, rag={"embedding": {"backend": backend}}
            )
        )

    writer = kb_with("onnx-int8")
    writer.ingest_bytes("file:///menu.md", b"# Menu\n\nThe cafeteria serves lentil soup on Mondays.", "runtime")
    assert writer._collection("runtime").metadata[EMBEDDING_KEY] == "all-MiniLM-L6-v2/onnx-int8"
    reader = kb_with("onnx")
    with caplog.at_level("WARNING", logger="enclave.knowledge.store"):
        assert writer.search("lentil soup", "runtime", ANYONE, k=1)
        assert not [r for r in caplog.records if "re-ingest" in r.message]
        for _ in range(2):
            assert reader.search("lentil soup", "runtime", ANYONE, k=1)  # still answers, with a warning once
    warned = [r.getMessage() for r in caplog.records if "re-ingest" in r.getMessage()]
    assert len(warned) == 1 and "onnx-int8" in warned[0] and "all-MiniLM-L6-v2/onnx" in warned[0]


def test_every_registered_format_has_its_reader_and_a_named_library() -> None:
    import importlib

    from enclave.knowledge.loaders import LIBRARIES, READERS, formats

    for suffix, (kind, where) in READERS.items():
        module, function = where.split(":")
        reader = getattr(importlib.import_module(f"enclave.knowledge.loaders.{module}"), function)
        assert callable(reader), suffix
        assert kind in LIBRARIES, kind
    assert {f["suffix"] for f in formats()} == set(READERS)


def test_an_attachment_titled_by_its_name_is_titled_by_its_own_name() -> None:
    doc = load("upload/mail_1.eml#report-q3.md", b"Quarterly numbers are in.")
    assert doc.title == "report-q3"
    assert load("upload/mail.eml#notes.md", b"# C# style guide\n\nUse var.").title == "C# style guide"


def _mail(subject: str, attachment: tuple[str, bytes] | None) -> bytes:
    from email.message import EmailMessage

    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "ops@example.org", "team@example.org", subject
    m.set_content(f"{subject}: the notes are attached.")
    if attachment:
        m.add_attachment(attachment[1], maintype="text", subtype="markdown", filename=attachment[0])
    return bytes(m)


def test_a_mails_attachment_lives_and_goes_with_the_mail(kb: KnowledgeBase, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    mail = folder / "standup.eml"
    mail.write_bytes(_mail("Standup", ("notes.md", b"# Notes\n\nThe Velmora rollout moves to Thursday.")))
    first = kb.ingest_paths([folder], "mails")
    uris = {str(d["uri"]) for d in kb.list_documents("mails")}
    assert uris == {str(mail.resolve()), f"{mail.resolve()}#notes.md"} and not first.removed, first
    again = kb.ingest_paths([folder], "mails")  # the attachment is no file of the folder: it stays
    assert not again.removed and {str(d["uri"]) for d in kb.list_documents("mails")} == uris, again
    mail.write_bytes(_mail("Standup, revised", None))  # the new version has no attachment: it goes
    revised = kb.ingest_paths([folder], "mails")
    assert revised.removed == [f"{mail.resolve()}#notes.md"], revised
    mail.write_bytes(_mail("Standup", ("notes.md", b"# Notes\n\nThe Velmora rollout moves to Friday.")))
    kb.ingest_paths([folder], "mails")
    mail.unlink()
    gone = kb.ingest_paths([folder], "mails")
    assert sorted(gone.removed) == sorted(uris) and kb.list_documents("mails") == [], gone


def test_an_html_table_is_written_as_a_table_under_its_heading() -> None:
    page = """<html><head><title>Rooms</title></head><body><main><h2>Meeting rooms</h2><p>Book ahead.</p>
    <table><thead><tr><th>Room</th><th>Floor</th><th>Seats</th></tr></thead>
    <tbody><tr><td>Aster</td><td>2</td><td>8</td></tr><tr><td><p>Birch</p></td><td>3</td><td>12</td></tr></tbody>
    </table><p>Ask facilities for more.</p><table><tr><td>layout only</td></tr></table></main></body></html>"""
    doc = load("rooms.html", page.encode())
    texts = [s.text for s in doc.sections]
    assert texts[0] == "Book ahead."
    assert texts[1] == (
        "Columns: Room | Floor | Seats\n\nRoom: Aster; Floor: 2; Seats: 8\nRoom: Birch; Floor: 3; Seats: 12"
    )
    assert texts[2:] == ["Ask facilities for more.", "layout only"]  # a one-cell layout table is its text
    assert {s.heading for s in doc.sections} == {"Meeting rooms"}
