"""The transcript page in a real headless Chromium (Debian's), driven by Playwright.

Skipped, with the reason, where the browser or the Playwright package is missing. The run
leaves a screenshot in test-artifacts/page.png for a person to look at.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakesmtp import FakeSMTP

from .chromium import chromium
from .conftest import served

pytestmark = pytest.mark.slow  # a real Chromium

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

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
    with chromium() as launched:
        yield launched


def send(smtp: FakeSMTP, to: list[str], subject: str, body: str = "Hello there") -> None:
    raw = f"From: alice@app.test\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        client.sendmail("alice@app.test", to, raw.encode())


def test_sessions_drawn_as_conversations(browser: Any) -> None:
    with served(SCENARIO, api_port=0) as smtp:
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
            summary = reply.locator(".explain .summary").inner_text()
            assert summary == "Bad destination mailbox address (from the enhanced status 5.1.1)"
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


LEARNER_SCENARIO = """
name: learner
rules:
  - on: rcpt
    match: {to: "*@greylisted.test"}
    reply: "451 4.7.1 <{to}>: Recipient address rejected: Greylisted, try again later"
  - on: rcpt
    match: {to: "*@strict.test"}
    reply: "550 5.7.26 <{to}>: message fails the DMARC policy of app.test"
  - on: rcpt
    match: {to: "*@busy.test"}
    reply: "451 4.7.1 <{from}>: Sender rate limit exceeded, try again later"
  - on: rcpt
    match: {to: "*@full.test"}
    reply: "452 4.2.2 <{to}>: Mailbox full"
"""

# What a learner must read next to each reply: (recipient, summary heading, words the advice
# must hold, words it must not hold because they belong to another problem).
LEARNER_CASES = [
    (
        "ann@greylisted.test",
        "Greylisted, the first attempt is deferred on purpose (from the reply's text)",
        "retry from the same IP address",
        ("Local error", "relaying", "Delivery not authorized"),
    ),
    (
        "dan@strict.test",
        "Multiple authentication checks failed (from the enhanced status 5.7.26)",
        "publish a DMARC record",
        ("5.1.1", "remove or correct the address"),
    ),
    (
        "ray@busy.test",
        "Rate limited, too much too fast (from the reply's text)",
        "fewer connections at once",
        ("Local error", "relaying", "Delivery not authorized"),
    ),
    (
        "fay@full.test",
        "Mailbox full (from the enhanced status 4.2.2)",
        "tell the recipient",
        ("too many recipients", "Delivery not authorized"),
    ),
]


def test_a_learner_reads_advice_that_matches_each_reply(browser: Any) -> None:
    if not catalog_available():
        pytest.skip("the reply catalog is not available")
    with served(LEARNER_SCENARIO, api_port=0) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(smtp, [case[0] for case in LEARNER_CASES], "Learning")
        smtp.wait_for_sessions(1)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(f"http://127.0.0.1:{smtp.api_port}/")
        page.locator("#sessions button").first.click()
        for recipient, summary, advice, foreign in LEARNER_CASES:
            reply = page.locator(".server", has_text=f"<{recipient.split('@')[0]}@")
            if "busy" in recipient:  # the rate limit names the sender, not the recipient
                reply = page.locator(".server", has_text="Sender rate limit exceeded")
            reply.wait_for()
            assert reply.locator(".explain .summary").inner_text() == summary
            shown = reply.locator(".explain .advice").inner_text()
            assert advice in shown
            for word in foreign:
                assert word not in shown, f"{recipient}: {word!r} does not belong in {shown!r}"
                assert word not in summary
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-explanations.png"), full_page=True)
        page.close()
