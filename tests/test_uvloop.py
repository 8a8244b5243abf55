"""The server on uvloop: STARTTLS, a TCP reset and a hang behave as on asyncio's own loop.

uvloop implements transports itself (libuv), so what the session does below the protocol
(start_tls on a live stream, SO_LINGER 0 + abort, an idle timer around a hang) is checked here
over real sockets, in-process and through `fakesmtp serve`.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable

import pytest

from fakesmtp import FakeSMTP

from .conftest import RawClient
from .test_cli import Served

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install '.[fast]')")

SCENARIO = """
name: on-uvloop
server:
  tls: {starttls: true}
  idle_timeout: 0.6
rules:
  - name: reset
    on: rcpt
    match: {to: "reset@*"}
    action: reset
  - name: hang
    on: rcpt
    match: {to: "hang@*"}
    action: hang
"""


@pytest.fixture
def server(serve: Callable[..., FakeSMTP]) -> FakeSMTP:
    started = serve(SCENARIO, loop="uvloop")
    assert type(started._loop).__module__.startswith("uvloop")  # really on uvloop
    return started


def test_starttls_then_mail_on_uvloop(server: FakeSMTP) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=ssl._create_unverified_context())
        assert code == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # already on TLS
        client.sendmail("a@client.test", ["b@dest.test"], b"Subject: over TLS\r\n\r\nhi\r\n")
    message = server.wait_for(1)[0]
    assert message.subject == "over TLS"
    session = server.wait_for_sessions(1)[0]
    assert session.tls and session.end == "quit"


def _to_rcpt(client: RawClient, address: str) -> None:
    assert client.reply()[0].startswith("220")
    client.send("EHLO client.test\r\n")
    assert client.reply()[-1].startswith("250 ")
    client.send("MAIL FROM:<a@client.test>\r\n")
    assert client.reply() == ["250 2.1.0 Ok"]
    client.send(f"RCPT TO:<{address}>\r\n")


def test_reset_sends_a_tcp_rst_on_uvloop(server: FakeSMTP) -> None:
    client = RawClient(server)
    _to_rcpt(client, "reset@dest.test")
    with pytest.raises(ConnectionResetError):
        while client.sock.recv(65536):
            pass
    assert server.wait_for_sessions(1)[0].end == "reset by rule"
    client.close()


@pytest.mark.slow
def test_hang_says_nothing_until_the_idle_timeout_on_uvloop(server: FakeSMTP) -> None:
    client = RawClient(server)
    _to_rcpt(client, "hang@dest.test")
    assert not client.closed(timeout=0.3)  # no reply, still open
    assert client.buffer == b""
    assert client.closed(timeout=3)  # the idle timeout (0.6 s) ends it without a word
    assert client.buffer == b""
    assert server.wait_for_sessions(1)[0].end == "timeout while hanging"
    client.close()


@pytest.mark.slow
def test_serve_chooses_uvloop_and_stops_cleanly() -> None:
    served = Served("--port", "0", "--no-api", "--quiet", "--loop", "uvloop")
    try:
        assert "(uvloop)" in served.banner_line
        with smtplib.SMTP("127.0.0.1", served.port, timeout=5) as client:
            assert client.sendmail("a@client.test", ["b@dest.test"], b"hi\r\n") == {}
    finally:
        code, out = served.stop()
    assert code == 0 and "fakesmtp: stopped" in out


@pytest.mark.slow
def test_serve_loop_asyncio_keeps_the_standard_loop() -> None:
    served = Served("--port", "0", "--no-api", "--quiet", "--loop", "asyncio")
    try:
        assert "(uvloop)" not in served.banner_line
    finally:
        assert served.stop()[0] == 0
