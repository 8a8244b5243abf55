"""The API against real attacks in a real Chromium (Debian's, through Playwright).

A page from another origin, and a DNS-rebinding page (a name that resolves to 127.0.0.1,
mapped with --host-resolver-rules), try to read messages, swap the scenario and wipe the
store; afterwards the server still holds exactly what it held. With --api-token, the page
passes the token on and requests without it get 401.
"""

from __future__ import annotations

import http.server
import smtplib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fakesmtp import FakeSMTP

from .chromium import chromium
from .conftest import served

pytestmark = pytest.mark.slow

TOKEN = "tok-9b2e77"

# What a hostile page runs: every way it has to read or change the API, each result recorded.
ATTACK = """
async (base) => {
  const out = {};
  const tries = {
    read: () => fetch(base + "/api/v1/messages").then(async (r) => `${r.status} ${await r.text()}`),
    raw: () => fetch(base + "/api/v1/sessions").then(async (r) => `${r.status} ${await r.text()}`),
    reset: () => fetch(base + "/api/v1/reset?store=true", {method: "POST", mode: "no-cors"})
      .then((r) => `sent ${r.status}`),
    resetText: () => fetch(base + "/api/v1/reset?store=true",
      {method: "POST", headers: {"Content-Type": "text/plain"}}).then((r) => `${r.status}`),
    put: () => fetch(base + "/api/v1/scenario", {method: "PUT",
      headers: {"Content-Type": "application/yaml"},
      body: "rules:\\n  - on: rcpt\\n    reply: 550 5.7.1 owned\\n"}).then((r) => `${r.status}`),
    builtin: () => fetch(base + "/api/v1/scenario?builtin=shutting-down",
      {method: "PUT", mode: "no-cors"}).then((r) => `sent ${r.status}`),
    delete: () => fetch(base + "/api/v1/messages", {method: "DELETE"}).then((r) => `${r.status}`),
  };
  for (const [name, attempt] of Object.entries(tries)) {
    try { out[name] = await attempt(); } catch (error) { out[name] = `blocked: ${error}`; }
  }
  return out;
}
"""

FORM_PAGE = b"""<!doctype html><title>evil</title>
<form id="f" method="POST" action="%s/api/v1/reset?store=true"></form>
<p>cat pictures</p>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    rules = "--host-resolver-rules=MAP evil.test 127.0.0.1, MAP rebind.test 127.0.0.1"
    # Chromium's own local-network guard would stop some of these requests before they reach
    # us; other browsers have none, so it is off: the server must hold on its own.
    unguarded = (
        "--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessSendPreflights,"
        "BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessRespectPreflightResults"
    )
    with chromium(rules, unguarded) as launched:
        yield launched


@pytest.fixture
def evil_site() -> Iterator[tuple[int, list[bytes]]]:
    """Another origin on this machine, serving whatever page the test puts in ``pages[0]``."""
    pages = [b"<!doctype html><title>evil</title><p>cat pictures</p>"]

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(pages[0])

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], pages
    finally:
        server.shutdown()
        server.server_close()


def send(smtp: FakeSMTP) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        raw = b"Subject: secret\r\n\r\nPIN 1234\r\n"
        client.sendmail("alice@app.test", ["bob@example.test"], raw)


def untouched(smtp: FakeSMTP) -> None:
    assert len(smtp.messages) == 1
    assert smtp.scenario.name == "default"
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:  # the next real send
        raw = b"Subject: x\r\n\r\nx\r\n"
        assert client.sendmail("a@app.test", ["carol@example.test"], raw) == {}
    assert len(smtp.messages) == 2


@pytest.mark.slow
def test_a_page_from_another_origin_can_neither_read_nor_change(
    browser: Any, evil_site: tuple[int, list[bytes]]
) -> None:
    port, pages = evil_site
    with served(api_port=0) as smtp:
        send(smtp)
        base = f"http://127.0.0.1:{smtp.api_port}"
        page = browser.new_page()
        page.goto(f"http://evil.test:{port}/")
        results = page.evaluate(ATTACK, base)
        # Reads fail in the browser (no CORS permission); writes are refused by the server.
        assert results["read"].startswith("blocked"), results
        assert results["raw"].startswith("blocked"), results
        assert "PIN 1234" not in str(results)
        untouched(smtp)

        pages[0] = FORM_PAGE % base.encode()  # the oldest trick: a plain form POST
        page.goto(f"http://evil.test:{port}/")
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        assert "cross-origin POST refused" in page.content()
        page.close()
        assert len(smtp.messages) == 2


@pytest.mark.slow
def test_a_dns_rebinding_page_can_neither_read_nor_change(browser: Any) -> None:
    with served(api_port=0) as smtp:
        send(smtp)
        # The attacker's page was served from its own address; then its name was rebound to
        # 127.0.0.1. The route serves that page; every request it makes reaches our API.
        origin = f"http://rebind.test:{smtp.api_port}"
        page = browser.new_page()
        page.route(
            f"{origin}/start",
            lambda route: route.fulfill(
                status=200, content_type="text/html", body="<!doctype html><title>x</title>"
            ),
        )
        page.goto(f"{origin}/start")
        results = page.evaluate(ATTACK, origin)
        # Same origin for the browser, so it shows the answers: every one is our 403.
        for name in ("read", "raw", "resetText", "put", "delete"):
            assert results[name].startswith("403"), (name, results[name])
            assert "does not name this server" in results[name] or name != "read"
        assert "PIN 1234" not in str(results)
        page.close()
        untouched(smtp)


@pytest.mark.slow
def test_with_a_token_the_page_passes_it_on_and_others_get_401(browser: Any) -> None:
    with served(api_port=0, api_token=TOKEN) as smtp:
        send(smtp)
        base = f"http://127.0.0.1:{smtp.api_port}"

        # Opened with the token in the address: it is taken, then removed from the address.
        page = browser.new_page()
        page.goto(f"{base}/#token={TOKEN}")
        page.locator("#sessions button").first.wait_for(timeout=10_000)
        assert TOKEN not in page.url
        assert page.evaluate("sessionStorage.getItem('fakesmtp-api-token')") == TOKEN
        # The same page's own request without the token: 401.
        status = page.evaluate("fetch('/api/v1/messages').then((r) => r.status)")
        assert status == 401
        page.close()

        # Opened without it: the page asks, once, and then shows the sessions.
        page = browser.new_page()
        asked: list[str] = []

        def answer(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept(TOKEN)

        page.on("dialog", answer)
        page.goto(f"{base}/")
        page.locator("#sessions button").first.wait_for(timeout=10_000)
        assert len(asked) == 1 and "token" in asked[0]
        page.close()

        # A wrong token typed in gets nothing.
        page = browser.new_page()
        page.on("dialog", lambda dialog: dialog.accept("wrong"))
        page.goto(f"{base}/")
        page.wait_for_timeout(1500)
        assert page.locator("#sessions button").count() == 0
        page.close()
        assert len(smtp.messages) == 1
