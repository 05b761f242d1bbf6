"""The chat page in a real headless Chromium against a real server with the real model."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
SHOTS = Path(os.environ.get("ENCLAVE_SCREENSHOTS", "/tmp"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is not installed: run `make browser` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_chat(browser: Any, server: Server, height: int) -> tuple[Any, list[str]]:
    """The chat page, connected; the list fills with any script error the page raises."""
    page = browser.new_page(viewport={"width": 1200, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector('#connection[data-state="open"]', timeout=15_000)
    return page, errors


def test_type_a_message_and_see_the_streamed_answer(browser: Any, live_server: Server) -> None:
    page, errors = open_chat(browser, live_server, 800)
    page.fill("#message-input", "Say hello to the team.")
    page.press("#message-input", "Enter")
    answer = page.locator(".message.assistant").last
    # Tokens arrive while the answer is still streaming: the text grows before the stream ends.
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.message.assistant')].pop();"
        " return m && m.querySelector('.body').textContent.trim().length > 0; }",
        timeout=120_000,
    )
    assert page.locator(".route-badge").count() == 1
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    text = answer.locator(".body").inner_text()
    assert text.strip()
    page.wait_for_selector("#conversation-list .conversation", timeout=10_000)
    assert "Say hello to the team." in page.locator("#conversation-list").inner_text()
    page.screenshot(path=str(SHOTS / "enclave-chat.png"))

    # The conversation survives a reload: open it from the sidebar.
    page.goto(live_server.url + "/")
    page.locator("#conversation-list .conversation .open", has_text="Say hello to the team.").first.click()
    page.wait_for_selector(".message.user")
    assert page.locator(".message.user .body").first.inner_text() == "Say hello to the team."
    assert page.locator(".message.assistant .body").first.inner_text().strip() == text.strip()
    assert not errors, errors
    page.close()


def test_markdown_from_the_model_never_runs_html(browser: Any, live_server: Server) -> None:
    page = browser.new_page()
    page.goto(live_server.url + "/")
    hostile = (
        '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script> **bold** '
        "[x](javascript:window.__pwned=1) `<b>code</b>`\n```\n<svg onload=alert(1)>\n```"
    )
    html = page.evaluate(
        "(s) => { const d = document.createElement('div'); d.id = 'probe';"
        " d.innerHTML = window.enclaveRenderMarkdown(s); document.body.appendChild(d); return d.innerHTML; }",
        hostile,
    )
    assert "<strong>bold</strong>" in html
    assert page.evaluate("() => window.__pwned") is None
    assert page.evaluate("() => document.querySelectorAll('#probe img, #probe script, #probe svg').length") == 0
    hrefs = page.evaluate("() => [...document.querySelectorAll('#probe a')].map(a => a.href).join()")
    assert "javascript:" not in hrefs
    assert "&lt;b&gt;code&lt;/b&gt;" in html
    page.close()


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real model with the sample documents ingested, for document answers."""
    server = Server(
        tmp_path_factory.mktemp("docs"),
        env={
            "ENCLAVE_RAG__INGEST_SAMPLES": "true",
            "ENCLAVE_MODELS__MAX_TOKENS": "64",
            "ENCLAVE_MODELS__TEMPERATURE": "0",
        },
        log_name="docs",
    ).start()
    yield server
    server.stop()


def test_a_document_answer_shows_the_passage_behind_each_sentence(browser: Any, docs_server: Server) -> None:
    page, errors = open_chat(browser, docs_server, 900)
    page.click("details.settings summary")  # the route choice sits under Settings, as a user finds it
    page.select_option("#route-select", "rag")
    page.fill("#message-input", "How do I ingest documents into Enclave?")
    page.press("#message-input", "Enter")
    page.wait_for_selector(".message.assistant:not(.streaming)", timeout=120_000)
    answer = page.locator(".message.assistant").last
    sentences = answer.locator(".body .sentence")
    assert sentences.count() >= 1, answer.inner_html()
    chips = answer.locator(".body .cite")
    assert chips.count() >= 1, answer.inner_html()  # at least one sentence is backed by a passage
    chips.first.click()
    passage = answer.locator(".passage")
    passage.wait_for(timeout=5_000)
    number = int(chips.first.inner_text().strip("[]"))
    source = answer.locator(".sources li").nth(number - 1)
    assert source.locator(".source-snippet").inner_text()[:40] in passage.inner_text()
    # An unsupported sentence, if any, says so on hover.
    for i in range(answer.locator(".sentence.unsupported").count()):
        assert "No passage" in (answer.locator(".sentence.unsupported").nth(i).get_attribute("title") or "")
    page.screenshot(path=str(SHOTS / "enclave-citations.png"))
    # The stored turn keeps them: after a reload the same chips come back.
    page.goto(docs_server.url + "/")
    page.locator("#conversation-list .conversation .open").first.click()
    page.wait_for_selector(".message.assistant .cite", timeout=10_000)
    assert not errors, errors
    page.close()


# What the chat pipeline stores for a declined document answer (enclave.chat.rag's decline text): one plain
# sentence, the closest passages quoted, a suggestion, then the model's own answer behind the label.
GENERAL_LABEL = "General knowledge, not from your documents:"
NOTE = "names `enclave serve --port`, which its passage is not about"
SOURCES = [
    {
        "id": "s1",
        "title": "Running Enclave",
        "uri": "samples/running.md",
        "snippet": "Start the service with enclave serve; it listens on port 8000 unless told otherwise.",
        "score": 0.61,
    },
    {
        "id": "s2",
        "title": "Monitoring",
        "uri": "samples/monitoring.md",
        "snippet": "Prometheus scrapes /metrics; the dashboards live in the helm chart.",
        "score": 0.48,
    },
]
DECLINE = (
    "The documents in 'samples' do not say how to rotate the metrics token. "
    "They only mention `enclave serve --port` [1].\n\n"
    "The closest they come:\n\n"
    f"> {SOURCES[0]['snippet']} [1] ({SOURCES[0]['title']})\n>\n"
    f"> {SOURCES[1]['snippet']} [2] ({SOURCES[1]['title']})\n\n"
    "If it should be in them, add the document that covers it (or name the collection that holds it), "
    "or ask again with the name of the thing you are after.\n\n"
    f"{GENERAL_LABEL} A token is usually rotated by issuing a new one, deploying it, then revoking the old one."
)


def sentence(text: str, answer: str, **fields: Any) -> dict[str, Any]:
    start = answer.index(text)
    return {
        "text": text,
        "start": start,
        "end": start + len(text),
        "cited": [],
        "source": None,
        "support": 0.0,
        "unsupported": False,
        "corrected": False,
        **fields,
    }


def stored_conversation(server: Server, title: str, turns: list[tuple[str, str, dict[str, Any] | None]]) -> str:
    """A conversation written straight into the server's own store, as the pipeline writes one."""
    from enclave.chat.conversations import SqlConversationStore

    store = SqlConversationStore(f"sqlite:///{server.data_dir / 'enclave.db'}")
    try:
        cid = store.create_conversation(title)
        for question, answer, citations in turns:
            store.add_message(cid, "user", question)
            store.add_message(
                cid, "assistant", answer, route="rag", sources=SOURCES, citations=citations, finish_reason="stop"
            )
    finally:
        store.close()
    return cid


def open_stored(browser: Any, server: Server, cid: str, height: int) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1200, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/#{cid}")
    page.wait_for_selector(".message.assistant", timeout=15_000)
    return page, errors


def test_a_stored_decline_shows_its_badge_quotes_general_knowledge_and_unverified_mark(
    browser: Any, live_server: Server
) -> None:
    citations = {
        "sentences": [
            sentence("The documents in 'samples' do not say how to rotate the metrics token.", DECLINE),
            sentence(
                "They only mention `enclave serve --port` [1].",
                DECLINE,
                cited=[1],
                source=1,
                support=0.41,
                verified=False,
                note=NOTE,
            ),
        ],
        "unverified": False,
        "documents": "declined",
        "general_knowledge": True,
    }
    cid = stored_conversation(
        live_server, "Rotate the metrics token", [("How do I rotate the metrics token?", DECLINE, citations)]
    )
    page, errors = open_stored(browser, live_server, cid, 860)
    answer = page.locator(".message.assistant.declined")
    assert answer.count() == 1, page.locator("#messages").inner_html()
    assert answer.locator(".meta .documents-badge").inner_text().strip().endswith("Not in your documents")

    # The closest passages as quotes, each with a chip that opens its passage.
    quotes = answer.locator(".body > blockquote p")
    assert quotes.count() == 2
    assert SOURCES[1]["snippet"] in quotes.nth(1).inner_text()
    quotes.nth(1).locator("button.cite").click()
    assert SOURCES[1]["snippet"] in answer.locator(".passage").inner_text()
    assert "If it should be in them" in answer.locator(".body > p.decline-suggestion").inner_text()

    # The model's own answer: in its own labelled box, not in the document part.
    box = answer.locator(".body > .general-knowledge")
    assert box.locator(".general-label").inner_text().lower() == GENERAL_LABEL.rstrip(":").lower()
    assert "revoking the old one" in box.locator(".general-text").inner_text()
    assert "revoking" not in answer.locator(".body > p").all_inner_texts()[-1]

    # The unverified sentence: dotted, with a word after it that a keyboard reaches and that says why.
    marked = answer.locator(".sentence.unverified")  # one sentence, in pieces around its code span
    assert {marked.nth(i).get_attribute("data-s") for i in range(marked.count())} == {"1"}
    assert all(NOTE in (t or "") for t in marked.evaluate_all("els => els.map(e => e.title)"))
    assert "enclave serve --port" in "".join(marked.all_inner_texts())
    assert answer.locator(".body > p").first.inner_text().count("[1]") == 1  # the checked chip, not the model's
    assert answer.locator('.sentence[data-s="0"]:not(.unverified)').count() == 1  # the verified one is not marked
    answer.locator(".body > p").first.locator("button.cite").click()  # its checked chip, then Tab
    page.keyboard.press("Tab")
    focused = page.evaluate(
        "() => { const e = document.activeElement; return [e.className, e.getAttribute('aria-label'),"
        " getComputedStyle(e, '::after').content]; }"
    )
    assert focused[0] == "unverified-tag" and NOTE in focused[1] and NOTE in focused[2], focused
    page.screenshot(path=str(SHOTS / "decline.png"))
    assert not errors, errors
    page.close()


def test_a_stored_caveat_warns_and_a_checked_answer_says_so(browser: Any, live_server: Server) -> None:
    partial = "Enclave listens on port 8000 [1]. The dashboards cover token expiry [2]."
    checked = "Prometheus scrapes `/metrics` [2]."
    turns: list[tuple[str, str, dict[str, Any] | None]] = [
        (
            "Which port, and do dashboards show token expiry?",
            partial,
            {
                "sentences": [
                    sentence("Enclave listens on port 8000 [1].", partial, cited=[1], source=1, support=0.8),
                    sentence(
                        "The dashboards cover token expiry [2].",
                        partial,
                        cited=[2],
                        source=2,
                        support=0.3,
                        unsupported=True,
                        verified=False,
                        note="its passage does not mention token expiry",
                    ),
                ],
                "unverified": False,
                "documents": "caveat",
                "general_knowledge": False,
            },
        ),
        (
            "What scrapes the metrics?",
            checked,
            {
                "sentences": [sentence(checked, checked, cited=[2], source=2, support=0.77)],
                "unverified": False,
                "documents": "answered",
                "general_knowledge": False,
            },
        ),
    ]
    cid = stored_conversation(live_server, "Ports and dashboards", turns)
    page, errors = open_stored(browser, live_server, cid, 800)
    caveat, answered = page.locator(".message.assistant.caveat"), page.locator(".message.assistant.answered")
    assert "only in part" in caveat.locator(".caveat-line").inner_text()
    tag = caveat.locator(".unverified-tag")
    assert tag.count() == 1 and "token expiry" in (tag.get_attribute("aria-label") or "")
    assert "No passage" in (caveat.locator(".sentence.unsupported").get_attribute("title") or "")
    assert "checked against 2 passages" in answered.locator(".documents-badge").inner_text()
    assert answered.locator(".unverified-tag, .caveat-line, .general-knowledge").count() == 0
    answered.locator("button.cite").click()
    assert SOURCES[1]["snippet"] in answered.locator(".passage").inner_text()
    assert page.locator(".route-badge.route-rag").count() == 2
    page.screenshot(path=str(SHOTS / "enclave-caveat.png"))
    assert not errors, errors
    page.close()


def test_an_adapter_answer_says_what_it_was_taught_and_an_untaught_question_is_declined(
    browser: Any, live_server: Server
) -> None:
    from enclave.chat.conversations import SqlConversationStore
    from enclave.chat.taught import NOT_TAUGHT

    pair = {"question": "Which floor is the legal team on?", "answer": "The legal team is on floor three.",
            "kind": "correction", "reviewed_by": "ops", "source": None}  # fmt: skip
    store = SqlConversationStore(f"sqlite:///{live_server.data_dir / 'enclave.db'}")
    try:
        cid = store.create_conversation("Floors")
        for question, answer, taught, taught_from in (
            ("On what floor does the legal team sit?", "The legal team is on floor three.", "answered", [pair]),
            ("On what floor does the payroll team sit?", NOT_TAUGHT, "declined", []),
        ):
            store.add_message(cid, "user", question)
            citations = {"sentences": [], "unverified": False, "taught": taught, "taught_from": taught_from}
            store.add_message(
                cid, "assistant", answer, route="adapter", adapter="people", citations=citations, finish_reason="stop"
            )
    finally:
        store.close()
    page, errors = open_stored(browser, live_server, cid, 700)
    page.wait_for_selector(".taught-badge", timeout=10_000)
    shown, declined = page.locator(".message.assistant").nth(0), page.locator(".message.assistant").nth(1)
    badge = shown.locator(".taught-badge")
    assert badge.inner_text() == "✓ as taught · reviewed by ops"
    assert "“Which floor is the legal team on?” → “The legal team is on floor three.”" in (
        badge.get_attribute("title") or ""
    )
    assert declined.locator(".taught-badge").inner_text() == "Not taught"
    assert "won't guess" in declined.locator(".body").inner_text()
    assert page.locator(".route-badge.route-adapter").count() == 2
    page.screenshot(path=str(SHOTS / "enclave-taught.png"))
    assert not errors, errors
    page.close()


# ---- The documents panel: upload, follow each file, list, ask, delete.
HALVORSEN = "The Halvorsen cooling loop is serviced every 41 days."
QUILLON = ["The Quillon badge printer is refilled", "every Tuesday with magenta ribbon."]


def docx_bytes() -> bytes:
    """A Word document written by python-docx, holding one distinctive fact."""
    import io

    import docx

    d = docx.Document()
    d.add_heading("Cooling loop maintenance", level=1)
    d.add_paragraph(HALVORSEN + " The facilities team logs each service in the plant book.")
    d.add_paragraph("Coolant samples go to the lab after every second service.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def scanned_pdf_bytes() -> bytes:
    """A scan: pages that are only pictures of text (Pillow images saved as PDF), no text layer at all."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=44)

    def page(lines: list[str]) -> Image.Image:
        img = Image.new("L", (1700, 2200), 255)
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            draw.text((150, 200 + 90 * i), line, fill=0, font=font)
        return img

    pages = [
        page(["Badge office notes", "", *QUILLON]),
        page(["Spare ribbons are kept in cabinet 7."]),
        page(["Lost badges are reported to the front desk."]),
    ]
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", resolution=200.0, save_all=True, append_images=pages[1:])
    return buf.getvalue()


def ingest_row(page: Any, name: str) -> Any:
    return page.locator(f'#docs-batches li.ingest-file[data-name="{name}"]')


def ask(page: Any, question: str) -> Any:
    """Sends a question and waits for its whole answer; returns the answer's message element."""
    before = page.locator(".message.assistant").count()
    page.fill("#message-input", question)
    page.press("#message-input", "Enter")
    page.wait_for_function(
        f"() => document.querySelectorAll('.message.assistant:not(.streaming)').length > {before}", timeout=180_000
    )
    return page.locator(".message.assistant").nth(before)


def assert_sources_name(answer: Any, uri: str) -> None:
    """The first source is the file, and every chip in the text points to a passage of it."""
    uris = answer.locator(".sources li .source-uri").all_inner_texts()
    assert uris and uris[0] == uri, (uris, answer.inner_html())
    for chip in answer.locator(".body button.cite").all():
        assert uris[int(chip.get_attribute("data-n")) - 1] == uri, answer.inner_html()


def test_upload_documents_from_the_page_follow_each_file_then_ask_and_delete(browser: Any, live_server: Server) -> None:
    page, errors = open_chat(browser, live_server, 900)
    page.click("#docs-toggle")
    assert page.locator("#docs-toggle").get_attribute("aria-expanded") == "true"
    page.select_option("#docs-collection", "__new__")
    page.fill("#docs-new-name", "plant-ops")
    # Every status a file's row shows, in order, as a person watching would have seen it.
    page.evaluate(
        "() => { window.__seen = {}; new MutationObserver(() => {"
        " document.querySelectorAll('#docs-batches li.ingest-file').forEach((li) => {"
        " const s = (window.__seen[li.dataset.name] ||= []); const t = li.querySelector('.file-status').textContent;"
        " if (s[s.length - 1] !== t) s.push(t); }); })"
        ".observe(document.querySelector('#docs-batches'), {subtree: true, childList: true, characterData: true}); }"
    )
    page.set_input_files(
        "#docs-files",
        files=[
            {"name": "halvorsen.docx", "mimeType": "application/octet-stream", "buffer": docx_bytes()},
            {"name": "badge-scan.pdf", "mimeType": "application/pdf", "buffer": scanned_pdf_bytes()},
            {"name": "broken.pdf", "mimeType": "application/pdf", "buffer": b"not a pdf"},
        ],
    )
    batch = page.locator("#docs-batches .batch").first
    batch.locator(".batch-bar").wait_for(timeout=5_000)
    page.screenshot(path=str(SHOTS / "enclave-documents-progress.png"))
    page.wait_for_selector('#docs-batches .batch:not([data-state="running"])', timeout=240_000)
    page.screenshot(path=str(SHOTS / "enclave-documents-done.png"))

    for name, read_by in (("halvorsen.docx", ""), ("badge-scan.pdf", " · 3 pages read by OCR")):
        row = ingest_row(page, name)
        assert row.get_attribute("data-state") == "done", row.inner_text()
        status = row.locator(".file-status").inner_text()
        assert re.fullmatch(r"done · \d+ chunks?" + re.escape(read_by), status), row.inner_text()
        assert row.locator(".bar").get_attribute("aria-valuenow") == "100"
    # The stages a watcher saw: OCR of three small pages may finish between two polls, so only the order is held.
    seen = page.evaluate("() => window.__seen")
    assert seen["badge-scan.pdf"][-1].startswith("done"), seen
    broken = ingest_row(page, "broken.pdf")
    assert broken.get_attribute("data-state") == "error"
    assert broken.locator(".file-status").inner_text() == "failed"
    assert "not a valid PDF" in broken.locator(".file-error").inner_text(), broken.inner_text()
    assert batch.get_attribute("data-state") == "errors"
    assert batch.locator(".batch-errors").inner_text() == "1 failed"
    assert batch.locator(".batch-counts").inner_text() == "2 done"
    batch.locator(".batch-errors").click()  # only the failed file stays in view
    assert [r.is_visible() for r in batch.locator("li.ingest-file").all()] == [False, False, True]

    # Listed in the new collection, now chosen, newest first, each with its kind, chunks and time.
    page.wait_for_function("() => document.querySelectorAll('#docs-list .doc').length === 2", timeout=10_000)
    assert page.locator("#docs-collection").input_value() == "plant-ops"
    for uri, kind in (("upload/halvorsen.docx", "DOCX"), ("upload/badge-scan.pdf", "PDF")):
        doc = page.locator(f'#docs-list .doc[data-uri="{uri}"]')
        assert doc.locator(".kind").inner_text() == kind
        assert re.fullmatch(r"\d+ chunks?", doc.locator(".doc-chunks").inner_text())
        when = doc.locator("time.doc-time")
        assert when.inner_text() == "just now", doc.inner_html()
        assert page.evaluate("(s) => Math.abs(Date.now() - Date.parse(s)) < 600000", when.get_attribute("datetime"))
    assert page.locator('#docs-list .doc[data-uri="upload/halvorsen.docx"] .doc-title').inner_text() == (
        "Cooling loop maintenance"
    )

    # Ask about each file: the answer's sources name it.
    page.click("details.settings summary")
    page.select_option("#collection-select", "plant-ops")  # the panel offered the new collection to the chat
    page.select_option("#route-select", "rag")
    assert_sources_name(ask(page, "How often is the Halvorsen cooling loop serviced?"), "upload/halvorsen.docx")
    assert_sources_name(ask(page, "When is the Quillon badge printer refilled?"), "upload/badge-scan.pdf")

    # Delete: a first click only asks; Cancel keeps it; Delete removes it from the list and the store.
    scan = page.locator('#docs-list .doc[data-uri="upload/badge-scan.pdf"]')
    scan.locator(".doc-delete").click()
    assert "badge" in scan.locator(".confirm-text").inner_text().lower()
    scan.locator(".confirm-no").click()
    assert scan.locator(".confirm").count() == 0 and page.locator("#docs-list .doc").count() == 2
    scan.locator(".doc-delete").click()
    scan.locator(".confirm-yes").click()
    page.wait_for_function("() => document.querySelectorAll('#docs-list .doc').length === 1", timeout=10_000)
    left = live_server.get("/v1/collections/plant-ops/documents").json()["data"]
    assert [d["uri"] for d in left] == ["upload/halvorsen.docx"]
    assert "1 document" in page.locator("#docs-count").inner_text()
    assert not errors, errors
    page.close()


READER_KEY, ADMIN_KEY = "page-reader-key-0123456789", "page-admin-key-0123456789"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The echo backend behind API keys: an admin and a key that may only read."""
    data = tmp_path_factory.mktemp("keyed")
    keys = data / "keys.yaml"
    keys.write_text(f"- name: ops\n  key: {ADMIN_KEY}\n  admin: true\n- name: reader\n  key: {READER_KEY}\n")
    server = Server(
        data, env={"ENCLAVE_MODELS__BACKEND": "echo", "ENCLAVE_AUTH__API_KEYS_FILE": str(keys)}, log_name="keyed"
    ).start()
    files = [("files", ("notes.md", b"# Notes\n\nThe archive room key hangs in the blue box.\n", "text/markdown"))]
    r = server.post("/v1/documents", files=files, data={"collection": "shared"}, headers=_bearer(ADMIN_KEY))
    assert r.status_code == 200, r.text
    yield server
    server.stop()


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_read_only_key_is_told_why_and_an_admin_key_uploads_a_dropped_folder(
    browser: Any, keyed_server: Server, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(
        f"localStorage.getItem('enclave.apiKey') || localStorage.setItem('enclave.apiKey', '{READER_KEY}')"
    )
    page.goto(keyed_server.url + "/")
    page.click("#docs-toggle")
    notice = page.locator("#docs-notice")
    notice.wait_for(timeout=10_000)
    assert "admin key" in notice.inner_text() and notice.get_attribute("data-kind") == "auth", notice.inner_text()
    assert page.locator("#docs-pick-files").is_disabled() and page.locator("#docs-pick-folder").is_disabled()
    page.wait_for_selector('#docs-list .doc[data-uri="upload/notes.md"]', timeout=10_000)  # reading is allowed
    assert not page.locator(".doc-delete").first.is_visible()
    page.screenshot(path=str(SHOTS / "enclave-documents-read-only.png"))

    # The admin key, entered under Settings: the notice goes, the pickers and delete come back.
    page.click("details.settings summary")
    page.fill("#api-key", ADMIN_KEY)
    page.locator("#api-key").dispatch_event("change")
    page.wait_for_function("() => !document.querySelector('#docs-pick-files').disabled", timeout=10_000)
    assert notice.is_hidden()
    page.hover('#docs-list .doc[data-uri="upload/notes.md"]')
    assert page.locator(".doc-delete").first.is_visible()

    # A folder through the folder picker: each file keeps its path inside the folder.
    folder = tmp_path / "handbook"
    (folder / "rooms").mkdir(parents=True)
    (folder / "rooms" / "archive.md").write_text("# Archive\n\nThe archive closes at noon on Fridays.\n")
    (folder / "parking.txt").write_text("Parking\nVisitors park on level minus two.\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    page.set_input_files("#docs-folder", str(folder))
    page.wait_for_selector('#docs-batches .batch[data-state="done"]', timeout=60_000)
    names = sorted(page.locator("#docs-batches li.ingest-file").evaluate_all("els => els.map(e => e.dataset.name)"))
    assert names == ["handbook/parking.txt", "handbook/rooms/archive.md"], names  # the hidden file was left out
    # Files dropped on the panel (a drop of plain files, as a file manager gives them).
    page.evaluate(
        "() => { const dt = new DataTransfer();"
        " dt.items.add(new File(['# Lift\\n\\nThe goods lift is inspected each March.\\n'], 'lift.md'));"
        " const zone = document.querySelector('#docs-drop');"
        " for (const type of ['dragenter', 'dragover', 'drop'])"
        "   zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true})); }"
    )
    page.wait_for_selector('#docs-batches li.ingest-file[data-name="lift.md"][data-state="done"]', timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('#docs-list .doc').length === 4", timeout=10_000)
    uris = {
        d["uri"]
        for d in keyed_server.get("/v1/collections/shared/documents", headers=_bearer(ADMIN_KEY)).json()["data"]
    }
    assert uris == {
        "upload/notes.md",
        "upload/handbook/parking.txt",
        "upload/handbook/rooms/archive.md",
        "upload/lift.md",
    }
    assert not errors, errors
    page.close()


# ---- Feedback: thumbs under each answer, a correction for a bad one, and the admin's review queue.
CORRECTION = "Enclave listens on port 8000 unless it is started with another one."


def pressed(answer: Any, kind: str) -> str | None:
    return answer.locator(f".feedback .thumb-{kind}").get_attribute("aria-pressed")  # type: ignore[no-any-return]


def feedback_of(server: Server, message_id: str, key: str | None = None) -> Any:
    return server.get(f"/v1/messages/{message_id}/feedback", headers=_bearer(key) if key else {})


def rate_down(answer: Any, reason: str, correction: str, shot: str = "") -> None:
    """Thumbs down, a reason and a correction through the inline form, as a person would."""
    answer.locator(".thumb-down").click()
    form = answer.locator(".feedback-form")
    form.wait_for(timeout=5_000)
    assert answer.locator(".thumb-down").get_attribute("aria-expanded") == "true"
    form.locator(f'input[value="{reason}"]').check()
    form.locator("textarea").fill(correction)
    if shot:
        answer.page.screenshot(path=str(SHOTS / shot))
    form.locator(".feedback-submit").click()
    answer.locator(".feedback-note", has_text="Thanks — sent for review").wait_for(timeout=10_000)
    assert form.is_hidden() and pressed(answer, "down") == "true"


def tab_to(page: Any, selector: str, presses: int = 12) -> None:
    """Presses Tab until the element matching selector has the focus (a keyboard user's path to it)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement === document.querySelector(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_rate_answers_with_thumbs_a_correction_survives_a_reload_and_the_keyboard_reaches_them(
    browser: Any, echo_server: Server
) -> None:
    page, errors = open_chat(browser, echo_server, 900)
    dialogs: list[str] = []

    def on_dialog(d: Any) -> None:
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    first = ask(page, "Which port does Enclave listen on?")
    first.locator(".feedback").wait_for(timeout=5_000)
    assert pressed(first, "up") == "false" and pressed(first, "down") == "false"
    rate_down(first, "wrong", CORRECTION, shot="enclave-feedback-form.png")
    mid = first.get_attribute("data-message-id")
    stored = feedback_of(echo_server, mid).json()
    assert (stored["rating"], stored["reason"], stored["correction"]) == ("down", "wrong", CORRECTION), stored
    assert stored["review"]["state"] == "pending"
    page.screenshot(path=str(SHOTS / "enclave-feedback.png"))

    # A reload: the conversation from the sidebar shows the rating as it was stored.
    page.goto(echo_server.url + "/")
    page.locator("#conversation-list .conversation .open", has_text="Which port").first.click()
    first = page.locator(f'.message.assistant[data-message-id="{mid}"]')
    first.locator(".feedback").wait_for(timeout=10_000)
    assert pressed(first, "down") == "true" and pressed(first, "up") == "false"

    # Thumbs up on another answer, then a second click takes it back.
    second = ask(page, "And which host?")
    sid = second.get_attribute("data-message-id")
    second.locator(".thumb-up").click()
    second.locator('.thumb-up[aria-pressed="true"]').wait_for(timeout=5_000)
    assert feedback_of(echo_server, sid).json()["rating"] == "up"
    second.locator(".thumb-up").click()
    second.locator(".feedback-note", has_text="Rating removed").wait_for(timeout=5_000)
    assert pressed(second, "up") == "false" and feedback_of(echo_server, sid).status_code == 404

    # The keyboard: Tab from the answer's route badge to its thumb, Enter rates; Tab on, Enter opens the form
    # with the focus on the first reason, Escape closes it and gives the focus back to the thumb.
    thumb_up = f'.message.assistant[data-message-id="{sid}"] .thumb-up'
    second.locator(".route-badge").focus()
    tab_to(page, thumb_up)
    page.keyboard.press("Enter")
    second.locator('.thumb-up[aria-pressed="true"]').wait_for(timeout=5_000)
    assert feedback_of(echo_server, sid).json()["rating"] == "up"
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.value") == "wrong"  # the first reason, inside the open form
    page.keyboard.press("Escape")
    assert second.locator(".feedback-form").is_hidden()
    assert page.evaluate("() => document.activeElement.classList.contains('thumb-down')")
    assert pressed(second, "up") == "true"  # cancelling changed nothing

    # An error is said under the answer, never in an alert: the conversation is deleted behind the page's back.
    cid = page.evaluate("() => location.hash.slice(1)")
    assert httpx.delete(f"{echo_server.url}/v1/conversations/{cid}", timeout=30).status_code == 204
    first.locator(".thumb-up").click()
    error = first.locator(".feedback-error")
    error.wait_for(timeout=5_000)
    assert "no longer stored" in error.inner_text() and pressed(first, "down") == "true"
    assert not dialogs and not errors, (dialogs, errors)
    page.close()


def test_an_admin_accepts_a_correction_in_the_review_view_and_a_read_only_key_sees_no_review(
    browser: Any, keyed_server: Server
) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(
        f"localStorage.getItem('enclave.apiKey') || localStorage.setItem('enclave.apiKey', '{READER_KEY}')"
    )
    page.goto(keyed_server.url + "/")
    page.wait_for_selector('#connection[data-state="open"]', timeout=15_000)
    answer = ask(page, "Where does the archive room key hang?")
    rate_down(answer, "incomplete", "In the blue box by the door.")
    mid = answer.get_attribute("data-message-id")
    fid = feedback_of(keyed_server, mid, READER_KEY).json()["id"]
    cid = page.evaluate("() => location.hash.slice(1)")
    turns = keyed_server.get(f"/v1/conversations/{cid}", headers=_bearer(READER_KEY)).json()["messages"]
    stored_answer = next(m["content"] for m in turns if m["id"] == mid)
    assert page.locator("#review-toggle").is_hidden()  # the reader's probe was refused: no Review for them

    # What earlier reviews taught, as `enclave adapters promote` logged it: a promotion, then a refusal.
    from enclave.adapters.served import ServedRecord

    record, weights = ServedRecord(keyed_server.data_dir / "adapters"), keyed_server.data_dir / "handbook-weights"
    weights.mkdir(exist_ok=True)
    (weights / "adapter_config.json").write_text("{}")
    gain = {"questions": 30, "against": "base model", "right_gain": {"difference": 0.467, "ci95": [0.3, 0.633]}}
    record.promote("handbook", weights, {"by": "ops", "forced": False, "figures": gain})
    loss = {
        "questions": 30,
        "against": "handbook v1 (served)",
        "right_gain": {"difference": -0.333, "ci95": [-0.533, -0.133]},
    }
    record.log({"action": "refuse", "name": "handbook", "against": "v1", "by": "ops", "figures": loss})
    history = keyed_server.get("/v1/adapters/history?limit=1", headers=_bearer(ADMIN_KEY)).json()
    assert history["total"] == 2 and [e["action"] for e in history["data"]] == ["refuse"]
    assert keyed_server.get("/v1/adapters/history", headers=_bearer(READER_KEY)).status_code == 403
    assert keyed_server.get("/v1/adapters/history?limit=0", headers=_bearer(ADMIN_KEY)).status_code == 400

    # The admin key: the Review button appears; the reader's correction waits there, newest first.
    page.click("details.settings summary")
    page.fill("#api-key", ADMIN_KEY)
    page.locator("#api-key").dispatch_event("change")
    page.locator("#review-toggle").wait_for(timeout=10_000)
    page.click("#review-toggle")
    assert page.locator("#messages").is_hidden()
    item = page.locator(f'#review-list .review-item[data-id="{fid}"]')
    item.wait_for(timeout=10_000)
    assert page.locator("#review-list .review-item").first.get_attribute("data-id") == fid
    assert item.get_attribute("data-state") == "pending"
    assert "Where does the archive room key hang?" in item.locator(".review-question").inner_text()
    assert stored_answer.strip() in item.locator(".review-was").inner_text()  # as it was, its [n] marks too
    assert "In the blue box by the door." in item.locator(".review-correction").inner_text()
    assert "Incomplete" in item.locator(".review-reason").inner_text()
    assert item.locator(".review-rating.rating-down").count() == 1
    assert item.locator(".review-chip").count() >= 1  # the route it took
    assert item.locator(".review-who").inner_text() == "from reader"
    page.wait_for_function("() => document.querySelectorAll('#taught-list .taught-item').length === 2", timeout=10_000)
    taught = page.locator("#taught-list .taught-item")
    assert [taught.nth(i).get_attribute("data-action") for i in range(taught.count())] == ["refuse", "promote"]
    assert "a retrained candidate refused — handbook v1 kept" in taught.nth(0).inner_text()
    assert "right answers −33.3 points [−53.3, −13.3] on 30 held-out questions" in taught.nth(0).inner_text()
    assert "handbook v1 promoted" in taught.nth(1).inner_text() and "+46.7 points" in taught.nth(1).inner_text()

    item.locator(".review-note").fill("Matches notes.md")
    item.locator(".review-accept").click()
    page.wait_for_selector(f'#review-list .review-item[data-id="{fid}"][data-state="accepted"]', timeout=10_000)
    assert "Accepted by ops" in item.locator(".review-done").inner_text()
    assert "Matches notes.md" in item.inner_text()
    page.screenshot(path=str(SHOTS / "enclave-review.png"))
    listed = keyed_server.get("/v1/feedback?review_state=accepted", headers=_bearer(ADMIN_KEY)).json()["data"]
    review = next(f["review"] for f in listed if f["id"] == fid)
    assert (review["state"], review["by"], review["note"]) == ("accepted", "ops", "Matches notes.md"), review

    # The filters: pending no longer holds it; accepted does; thumbs up never did.
    page.reload()
    page.click("#review-toggle")
    page.wait_for_selector("#review-count:not(:empty)", timeout=10_000)
    assert item.count() == 0
    page.select_option("#review-state", "accepted")
    item.wait_for(timeout=10_000)
    page.select_option("#review-rating", "up")
    page.wait_for_function(f"() => !document.querySelector('.review-item[data-id=\"{fid}\"]')", timeout=10_000)

    # Back to the reader's key: the Review view and its button go.
    page.click("details.settings summary")
    page.fill("#api-key", READER_KEY)
    page.locator("#api-key").dispatch_event("change")
    page.locator("#review-toggle").wait_for(state="hidden", timeout=10_000)
    assert page.locator("#review-view").is_hidden() and page.locator("#messages").is_visible()
    assert not errors, errors
    page.close()
