"""The transcript page in a real headless Chromium (Debian's), driven by Playwright.

Skipped, with the reason, where the browser or the Playwright package is missing. The run
leaves a screenshot in test-artifacts/page.png for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakesmtp import FakeSMTP

CHROMIUM = os.environ.get("FAKESMTP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SCENARIO = """
name: page-demo
rules:
  - name: no such user
    on: rcpt
    match: {to: "nobody@*"}
    reply: "550 5.1.1 <{to}>: Recipient address rejected"
  - name: mailbox full
    on: rcpt
    match: {to: "*@full.test"}
    reply: 452 4.2.2 Mailbox full
"""

HOSTILE_BODY = '<img src="x" onerror="document.title=\'owned\'"> <b>bold?</b>'


def catalog_available() -> bool:
    try:
        from fakesmtp import catalog

        return catalog.code(550) is not None
    except Exception:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright package is not installed (pip install playwright)",
    )
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def send(smtp: FakeSMTP, to: list[str], subject: str, body: str = "Hello there") -> None:
    raw = f"From: alice@app.test\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        client.sendmail("alice@app.test", to, raw.encode())


def test_sessions_drawn_as_conversations(browser: Any) -> None:
    with FakeSMTP(SCENARIO, api_port=0) as smtp:
        send(smtp, ["bob@example.test"], "Hello Bob", HOSTILE_BODY)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(smtp, ["nobody@example.test"], "Lost")
        smtp.wait_for_sessions(2)

        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                problems.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )
        page.goto(f"http://127.0.0.1:{smtp.api_port}/")
        sessions = page.locator("#sessions button")
        sessions.nth(1).wait_for()
        assert sessions.count() == 2

        # The refused session: the 550 in colour, the rule that fired, what it means.
        refused = page.locator("#sessions button.worst-permanent")
        assert refused.locator(".code-badge").inner_text() == "550"
        refused.click()
        reply = page.locator(".server.permanent")
        reply.wait_for()
        assert "550 5.1.1 <nobody@example.test>: Recipient address rejected" in reply.inner_text()
        assert reply.locator(".rule").inner_text() == "no such user"
        assert page.locator(".client", has_text="rcpt TO:<nobody@example.test>").count() == 1
        colour = reply.evaluate("node => getComputedStyle(node).borderLeftColor")
        assert colour not in ("rgba(0, 0, 0, 0)", "transparent")
        if catalog_available():
            assert reply.locator(".explain .summary").inner_text().strip()
            assert reply.locator(".explain .advice").inner_text().strip()
            assert "5.1.1" in reply.locator(".explain .status-meaning").inner_text()
        ended = page.locator(".ended").inner_text()
        assert "session ended: quit" in ended
        assert page.locator("#detail").inner_text().strip().endswith(ended)  # nothing stray after
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)

        # The accepted session: its message can be read, and what the client sent stays text.
        page.locator("#sessions button:not(.worst-permanent)").click()
        page.locator(".captured button.view").click()
        message = page.locator(".message")
        message.wait_for()
        assert message.locator(".subject").inner_text() == "Hello Bob"
        assert HOSTILE_BODY in message.locator(".body").inner_text()
        assert message.locator("img").count() == 0
        assert page.title() == "fakesmtp"
        raw_href = message.locator("a.raw").get_attribute("href")
        assert raw_href == f"/api/v1/messages/{smtp.messages[0].id}/raw"
        page.screenshot(path=str(ARTIFACTS / "page-message.png"), full_page=True)

        # New sessions appear without reloading the page.
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(smtp, ["carol@full.test"], "Later")
        page.locator("#sessions button.worst-transient").wait_for(timeout=10_000)
        assert sessions.count() == 3
        page.close()
        assert problems == []
