"""The chat page in a real headless Chromium against a real server with the real model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    turns = [
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
