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


# --------------------------------------------------------------------------- concurrency

CONCURRENT_PER_CLIENT = """
rules:
  - name: concurrency per client
    on: connect
    match: {concurrent: ">3"}
    per: client
    reply: "421 4.7.0 Too many concurrent SMTP connections from this IP address"
"""


def greet(server, source: str = "127.0.0.1") -> smtplib.SMTP | int:
    """A connection from ``source`` (any 127/8 address works on loopback): client or 421."""
    try:
        client = smtplib.SMTP(server.host, server.port, timeout=5, source_address=(source, 0))
    except smtplib.SMTPConnectError as error:
        assert error.smtp_error.startswith(b"4.7.0 ") and b"Too many concurrent" in error.smtp_error
        return error.smtp_code
    return client


def test_a_clients_fourth_simultaneous_connection_is_refused(serve) -> None:
    server = serve(CONCURRENT_PER_CLIENT)
    held = [greet(server) for _ in range(3)]
    assert all(isinstance(c, smtplib.SMTP) for c in held)
    assert greet(server) == 421
    assert greet(server) == 421  # the refused ones do not stay counted
    other = greet(server, "127.0.0.2")  # another client address is served
    assert isinstance(other, smtplib.SMTP)
    for client in held:  # the three held connections still work
        assert isinstance(client, smtplib.SMTP)
        assert client.ehlo("c.test")[0] == 250
        assert client.sendmail("a@c.test", ["b@d.test"], b"Subject: x\r\n\r\nx\r\n") == {}
    held[0].quit()
    server.wait_for_sessions(3, timeout=5)  # three have ended: two refused, one quit
    deadline = time.monotonic() + 5
    while len(server.runtime.open_sessions) > 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    again = greet(server)  # one slot is free again
    assert isinstance(again, smtplib.SMTP)
    for client in [*held[1:], other, again]:
        assert isinstance(client, smtplib.SMTP)
        client.quit()
    refused = [s for s in server.sessions if s.exchanges and s.exchanges[0].reply.startswith("421")]
    assert len(refused) == 2 and all(
        s.exchanges[0].rule == "concurrency per client" for s in refused
    )


def test_concurrency_is_counted_exactly_as_sessions_come_and_go(serve) -> None:
    server = serve("""
rules:
  - name: ten at a time
    on: connect
    match: {concurrent: ">10"}
    reply: "421 4.7.0 {hostname} Too many concurrent connections"
""")
    held = [greet(server) for _ in range(10)]
    assert all(isinstance(c, smtplib.SMTP) for c in held)
    with ThreadPoolExecutor(40) as pool:  # 40 at once while ten are open: every one refused
        assert list(pool.map(lambda _: greet(server), range(40))) == [421] * 40
    for client in held[:5]:
        assert isinstance(client, smtplib.SMTP)
        client.quit()
    deadline = time.monotonic() + 5
    while len(server.runtime.open_sessions) > 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    with ThreadPoolExecutor(20) as pool:  # five slots free: exactly five of twenty get in
        results = list(pool.map(lambda _: greet(server), range(20)))
    admitted = [c for c in results if isinstance(c, smtplib.SMTP)]
    assert len(admitted) == 5 and results.count(421) == 15
    for client in [*held[5:], *admitted]:
        assert isinstance(client, smtplib.SMTP)
        client.quit()
    deadline = time.monotonic() + 5
    while len(server.runtime.open_sessions) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.runtime.open_sessions) == 0


def test_concurrent_sessions_of_one_sender_are_limited_at_mail(serve) -> None:
    server = serve("""
rules:
  - on: mail
    match: {concurrent: ">2"}
    per: sender
    reply: "451 4.7.0 Too many concurrent deliveries from <{from}>"
""")
    clients = [smtplib.SMTP(server.host, server.port, timeout=5) for _ in range(4)]
    for client in clients:
        client.ehlo("c.test")
    assert [c.mail("bulk@a.test")[0] for c in clients[:3]] == [250, 250, 451]
    assert clients[3].mail("other@a.test")[0] == 250
    clients[0].rset()  # its transaction is over: bulk@a.test has one open now
    assert clients[2].mail("BULK@a.test")[0] == 250
    for client in clients:
        client.quit()


# --------------------------------------------------------------------------- volume


def test_a_senders_volume_is_limited_per_window(serve) -> None:
    server = serve("""
rules:
  - name: hourly volume
    on: end_of_data
    volume: 2KiB
    per: sender
    within: 1h
    reply: "452 4.3.1 <{from}> sent more than 2 KiB this hour, try later"
""")
    body = b"Subject: v\r\n\r\n" + b"x" * 1000 + b"\r\n"  # about 1 KiB each

    def sendmail(sender: str) -> int:
        with connect(server) as client:
            try:
                client.sendmail(sender, ["r@dest.test"], body)
            except smtplib.SMTPDataError as error:
                assert error.smtp_error.startswith(b"4.3.1 <" + sender.encode())
                return error.smtp_code
            return 250

    assert [sendmail("big@a.test") for _ in range(3)] == [250, 250, 452]
    assert sendmail("small@a.test") == 250
    assert len(server.messages) == 3
    refused = [e for s in server.sessions for e in s.exchanges if e.rule == "hourly volume"]
    # A window keeps only what deciding needs: past the volume, the count is a lower bound.
    assert [e.note for e in refused] == [
        f"counted {3 * len(body)} or more bytes per sender within 1h"
    ]
