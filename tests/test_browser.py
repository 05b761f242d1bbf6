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
