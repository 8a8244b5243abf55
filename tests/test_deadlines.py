"""Slow clients lose their slot: deadlines for a whole DATA phase (with a minimum data rate,
like Postfix's smtpd_min_data_rate) and a whole AUTH exchange; shutdown says 421 mid-DATA."""

from __future__ import annotations

import base64
import signal
import threading
import time
from typing import Any

import pytest

from fakesmtp import FakeSMTP
from fakesmtp.scenario import ScenarioError, load_scenario_text

from .conftest import RawClient

TRICKLE = """
server:
  command_timeout: 1s
  min_data_rate: 1000
  data_timeout: 30s
"""


def into_data(client: RawClient) -> None:
    client.reply()  # banner
    for line in ("EHLO client.test", "MAIL FROM:<a@app.test>", "RCPT TO:<b@x.test>", "DATA"):
        client.send(line + "\r\n")
        client.reply()


def trickle(client: RawClient, every: float, until: float) -> list[str]:
    """Send a short body line every ``every`` s until a reply comes (or ``until`` s pass)."""
    client.sock.settimeout(every)
    ended = time.monotonic() + until
    while time.monotonic() < ended:
        try:
            client.send(b"x\r\n")
            return client.reply()
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    raise AssertionError("no reply while trickling")


@pytest.mark.slow
def test_a_client_below_the_minimum_data_rate_gets_421(raw_client: Any, serve: Any) -> None:
    smtp = serve(TRICKLE)
    client = raw_client(smtp)
    into_data(client)
    started = time.monotonic()
    # Two bytes every 200 ms: the idle timer (5 min) would never fire; the rate does.
    reply = trickle(client, 0.2, until=10)
    assert reply[0].startswith("421 4.4.2"), reply
    assert 0.9 < time.monotonic() - started < 5
    assert client.closed()
    smtp.wait_for_sessions(1)
    assert smtp.sessions[0].end == "DATA too slow or too long"
    assert smtp.messages == []


@pytest.mark.slow
def test_the_whole_data_phase_has_a_deadline(raw_client: Any, serve: Any) -> None:
    smtp = serve("server: {data_timeout: 1500ms, min_data_rate: 0}")
    client = raw_client(smtp)
    into_data(client)
    started = time.monotonic()
    reply = trickle(client, 0.1, until=10)
    assert reply[0].startswith("421 4.4.2"), reply
    assert 1.3 < time.monotonic() - started < 5


@pytest.mark.slow
def test_a_client_at_a_good_rate_is_not_hurried(raw_client: Any, serve: Any) -> None:
    smtp = serve(TRICKLE)
    client = raw_client(smtp)
    into_data(client)
    line = b"y" * 998 + b"\r\n"
    for _ in range(20):  # 20 KB over ~2 s: ten times the minimum rate
        client.send(line * 1)
        time.sleep(0.1)
    client.send(b".\r\n")
    assert client.reply()[0].startswith("250 2.0.0")
    assert len(smtp.messages) == 1


@pytest.mark.slow
def test_an_auth_exchange_has_a_deadline(raw_client: Any, serve: Any) -> None:
    smtp = serve(
        "server:\n  auth_timeout: 1s\n  auth: {mechanisms: [LOGIN], users: {alice: s3cret}}\n"
    )
    client = raw_client(smtp)
    client.reply()
    client.send("EHLO client.test\r\n")
    client.reply()
    client.send("AUTH LOGIN\r\n")
    assert client.reply()[0].startswith("334")
    started = time.monotonic()
    time.sleep(0.6)
    client.send(base64.b64encode(b"alice") + b"\r\n")
    assert client.reply()[0].startswith("334")  # the password, please: in time so far
    client.sock.settimeout(5)
    reply = client.reply()  # never answered: the exchange's deadline, not the idle timer
    assert reply[0].startswith("421 4.4.2"), reply
    assert 0.9 < time.monotonic() - started < 4
    smtp.wait_for_sessions(1)
    assert smtp.sessions[0].end == "AUTH deadline"


@pytest.mark.slow
def test_shutdown_answers_421_to_a_client_mid_data() -> None:
    smtp = FakeSMTP().start()
    client = RawClient(smtp)
    try:
        into_data(client)
        client.send(b"Subject: half\r\n\r\nstill sending")
        time.sleep(0.1)
        stopping = threading.Thread(target=smtp.stop, kwargs={"grace": 0.3})
        stopping.start()
        reply = client.reply()
        stopping.join(10)
    finally:
        client.close()
    assert reply[0].startswith("421 4.3.2"), reply
    assert smtp.sessions[0].end == "server shutting down"
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("text", "message"),
    [("server: {data_timeout: 0s}", "must be more than 0"),
     ("server: {min_data_rate: fast}", "is not a size"),
     ("server: {auth_timeout: soon}", "is not a duration")],
)  # fmt: skip
def test_deadline_settings_are_checked(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "s.yaml")
    assert message in str(caught.value) and "s.yaml:1" in str(caught.value)


@pytest.mark.slow
def test_sigterm_answers_421_to_a_client_mid_data_when_grace_ends() -> None:
    from .test_cli import Served

    served = Served("--port", "0", "--no-api", "--quiet")
    client = RawClient("127.0.0.1", served.port)
    try:
        into_data(client)
        client.send(b"Subject: half\r\n\r\nstill sending")
        time.sleep(0.2)
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        client.sock.settimeout(15)
        reply = client.reply()  # after the grace period (5 s), not a silent cut
        assert reply[0].startswith("421 4.3.2"), reply
        assert 4 < time.monotonic() - started < 12
        assert client.closed()
    finally:
        client.close()
        if served.process.poll() is None:
            served.process.send_signal(signal.SIGTERM)  # (again, if the test failed early)
    served.process.communicate(timeout=15)
    assert served.process.returncode == 0
