"""The page's "Record a real server" panel in a real headless Chromium (skipped without one)."""

from __future__ import annotations

import re
import smtplib
from typing import Any

import pytest

from fakesmtp import FakeSMTP
from tests.test_page import browser  # noqa: F401 - the Chromium fixture, shared

UPSTREAM = """
rules:
  - on: rcpt
    match: {to: "bob@example.test"}
    reply: "550 5.1.1 <bob@example.test>: User unknown"
"""


@pytest.mark.slow
def test_record_from_the_page_watch_it_grow_then_serve_it(browser: Any) -> None:  # noqa: F811
    with FakeSMTP(UPSTREAM) as upstream, FakeSMTP(api_port=0) as server:
        page = browser.new_page()
        try:
            page.goto(f"http://{server.api_host}:{server.api_port}/")
            page.click("#record summary")
            page.fill("#record-upstream", f"127.0.0.1:{upstream.port}")
            page.click("#record-toggle")
            status = page.locator("#record-status")
            status.filter(has_text="point a client at").wait_for(timeout=5000)
            port = int(re.search(r"client at 127\.0\.0\.1:(\d+)", status.inner_text()).group(1))
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.ehlo("app.example.test")
                client.mail("app@example.test")
                assert client.rcpt("bob@example.test")[0] == 550
            # The recording grows on the page while the panel is open.
            page.locator("#record-yaml").filter(has_text="bob@example.test").wait_for(timeout=5000)
            page.click("#record-toggle")  # Stop
            page.locator("#record-serve").wait_for(state="visible", timeout=5000)
            page.click("#record-serve")
            status.filter(has_text="Serving it now").wait_for(timeout=5000)
            assert [rule.on.value for rule in server.scenario.rules] == ["rcpt"]
            with smtplib.SMTP(server.host, server.port, timeout=5) as client:
                client.ehlo("app.example.test")
                client.mail("app@example.test")
                assert client.rcpt("bob@example.test")[0] == 550
            # The replayed session on the page: the recorded rule named where it fired.
            (session,) = server.wait_for_sessions(1)
            page.goto(f"http://{server.api_host}:{server.api_port}/#session={session.id}")
            fired = page.locator(".server.permanent", has_text="550 5.1.1")
            fired.locator(".rule").filter(has_text="rcpt rule at <request>").wait_for(timeout=5000)
        finally:
            page.close()
