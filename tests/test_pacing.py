"""Pacing as real receivers do it, over real sockets: rate limits in a window, exact counts."""

from __future__ import annotations

import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import connect

WINDOW = 2.0

PER_CLIENT_RATE = f"""
rules:
  - name: sender rate
    on: mail
    after: 3
    per: sender
    within: {WINDOW}s
    reply: "421 4.7.0 <{{from}}>: too many messages, slow down"
"""


def send(server, sender: str) -> int:
    """One message in its own connection, as a mass mailer's worker would: MAIL's code."""
    with connect(server) as client:
        client.ehlo("client.test")
        code = client.mail(sender)[0]
        if code == 250:
            client.rcpt("rcpt@dest.test")
            client.data(b"Subject: hi\r\n\r\nhello\r\n")
        return code


@pytest.mark.slow
def test_a_sender_that_waits_out_the_window_is_accepted_again(serve) -> None:
    server = serve(PER_CLIENT_RATE)
    started = time.monotonic()
    assert [send(server, "patient@a.test") for _ in range(4)] == [250, 250, 250, 421]
    assert send(server, "other@a.test") == 250  # per sender: another is not held back
    time.sleep(max(0.0, started + WINDOW + 0.2 - time.monotonic()))
    # The patient sender waited out the window: accepted again, up to the limit.
    assert [send(server, "patient@a.test") for _ in range(4)] == [250, 250, 250, 421]
    assert len(server.messages) == 7
    refused = [
        e
        for s in server.sessions
        for e in s.exchanges
        if e.stage == "mail" and e.reply and e.reply.startswith("421")
    ]
    assert [e.rule for e in refused] == ["sender rate", "sender rate"]
    assert refused[0].note == f"counted 4 or more per sender within {WINDOW:g}s"


@pytest.mark.slow
def test_a_sender_that_does_not_wait_stays_refused(serve) -> None:
    server = serve(PER_CLIENT_RATE)
    codes = []
    deadline = time.monotonic() + WINDOW * 1.5
    while time.monotonic() < deadline:  # one attempt every ~0.3 s: never 2 s of quiet
        codes.append(send(server, "eager@a.test"))
        time.sleep(0.3)
    assert codes[:3] == [250, 250, 250]
    assert len(codes) >= 7 and set(codes[3:]) == {421}


def test_counts_are_exact_under_fifty_concurrent_clients(serve) -> None:
    server = serve("""
rules:
  - name: busy
    on: connect
    after: 20
    within: 1m
    reply: "421 4.7.0 {hostname} Too many connections, try later"
  - name: every third recipient deferred
    on: rcpt
    after: 10
    times: 15
    per: server
    reply: "451 4.7.1 Try later"
""")

    def one(n: int) -> tuple[int, int | None]:
        try:
            client = smtplib.SMTP(server.host, server.port, timeout=10)
        except smtplib.SMTPConnectError as error:
            return error.smtp_code, None
        with client:
            client.ehlo(f"c{n}.test")
            client.mail(f"s{n}@a.test")
            return 220, client.rcpt("r@b.test")[0]

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    banners = sorted(code for code, _ in results)
    assert banners == [220] * 20 + [421] * 30
    rcpts = sorted(code for _, code in results if code is not None)
    assert rcpts == [250] * 10 + [451] * 10  # 20 sessions got in; matches 11..20 deferred
    assert len(server.wait_for_sessions(50)) == 50


def test_the_rate_limited_builtin_counts_per_minute(serve) -> None:
    server = serve("rate-limited")
    rule = server.scenario.rules[0]
    assert (rule.after, rule.per, rule.within) == (10, "client", 60.0)
    greetings = []
    for _ in range(12):
        try:
            with connect(server) as client:
                greetings.append(client.noop()[0] and 220)
        except smtplib.SMTPConnectError as error:
            greetings.append(error.smtp_code)
            assert b"4.7.0" in error.smtp_error and b"too many connections" in error.smtp_error
    assert greetings == [220] * 10 + [421, 421]
    server.reset()  # a minute's wait, without the wait
    with connect(server) as client:
        client.ehlo("client.test")
        for n in range(30):
            assert client.mail(f"s{n}@a.test")[0] == 250
            client.rset()
        code, text = client.mail("one-more@a.test")
        assert (code, text[:5]) == (450, b"4.7.1")
