"""Rule matching, counters, probability and session state, through real SMTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import threading
import time

import aiosmtplib
import pytest

from fakesmtp.engine import Engine, Facts
from fakesmtp.scenario import load_scenario_text
from fakesmtp.stages import Stage

from .conftest import connect

MESSAGE = b"Subject: Quarterly invoice\r\nX-Spam: yes\r\nFrom: a@client.test\r\n\r\nPay now.\r\n"


def rcpt_code(server, sender: str, recipient: str) -> tuple[int, bytes]:
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail(sender)
        return client.rcpt(recipient)


# --------------------------------------------------------------------------- every match key


@pytest.mark.parametrize(
    ("match", "hit", "miss"),
    [
        ('to: "*@blocked.test"', ("a@c.test", "x@BLOCKED.test"), ("a@c.test", "x@ok.test")),
        ("to: /^sales-\\d+@/", ("a@c.test", "sales-12@x.test"), ("a@c.test", "sales@x.test")),
        ('to: ["a@x.test", "b@*"]', ("a@c.test", "b@y.test"), ("a@c.test", "c@y.test")),
        ('from: "*@spammer.test"', ("z@spammer.test", "a@x.test"), ("z@ok.test", "a@x.test")),
        ("client: 127.0.0.0/8", ("a@c.test", "b@x.test"), None),
        ("client: 192.0.2.0/24", None, ("a@c.test", "b@x.test")),
        ("helo: client.test", ("a@c.test", "b@x.test"), None),
        ('helo: "*.other"', None, ("a@c.test", "b@x.test")),
        ("tls: false", ("a@c.test", "b@x.test"), None),
        ("tls: true", None, ("a@c.test", "b@x.test")),
    ],
)
def test_match_keys_at_rcpt(serve, match: str, hit, miss) -> None:
    server = serve(f"rules:\n  - on: rcpt\n    match: {{{match}}}\n    reply: 550 5.7.1 Matched\n")
    if hit:
        assert rcpt_code(server, *hit) == (550, b"5.7.1 Matched")
    if miss:
        assert rcpt_code(server, *miss) == (250, b"2.1.5 Ok")


def test_user_match_after_auth(serve) -> None:
    server = serve("""
server: {auth: {mechanisms: [PLAIN], users: {alice: a1, bob: b2}}}
rules:
  - on: mail
    match: {user: bob}
    reply: 550 5.7.1 Bob may not send
""")
    for user, password, expected in (("alice", "a1", 250), ("bob", "b2", 550)):
        with connect(server) as client:
            client.login(user, password)
            assert client.mail("x@client.test")[0] == expected


@pytest.mark.parametrize(
    ("match", "fires"),
    [
        ('subject: "*invoice*"', True),
        ('subject: "*receipt*"', False),
        ('header: {X-Spam: "yes"}', True),
        ('header: {X-Spam: "no"}', False),
        ("body: /pay now/i", True),
        ("body: /refund/", False),
        ('size: ">50"', True),
        ('size: "<50"', False),
        ('to: "rcpt2@*"', True),
        ('to: "nobody@*"', False),
    ],
)
def test_match_keys_at_end_of_data(serve, match: str, fires: bool) -> None:
    server = serve(
        f"rules:\n  - on: end_of_data\n    match: {{{match}}}\n"
        "    reply: 554 5.7.1 Rejected for {to}\n"
    )
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        client.rcpt("rcpt1@x.test")
        client.rcpt("rcpt2@x.test")
        code, text = client.data(MESSAGE)
    if fires:
        expected_to = "rcpt2@x.test" if "rcpt2" in match else "rcpt1@x.test"
        assert (code, text) == (554, f"5.7.1 Rejected for {expected_to}".encode())
        assert server.messages == []
    else:
        assert code == 250
        assert server.messages[0].raw == MESSAGE


def test_template_fields_are_expanded_and_cleaned(serve) -> None:
    server = serve(
        "rules:\n  - on: rcpt\n    reply: 550 5.1.1 <{to}> from <{from}> via {helo} "
        "at {client} on {hostname}\n"
    )
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        assert client.rcpt("bob@x.test") == (
            550,
            b"5.1.1 <bob@x.test> from <a@client.test> via client.test at 127.0.0.1 on "
            b"mx.fakesmtp.test",
        )


# --------------------------------------------------------------------------- counters


@pytest.mark.parametrize(
    ("per", "calls", "expected"),
    [
        # (sender, recipient, new connection?) -> code; times: 1
        ("server", [("a@c", "x@t"), ("b@c", "y@t")], [451, 250]),
        ("connection", [("a@c", "x@t"), ("a@c", "x@t")], [451, 451]),  # each call reconnects
        ("client", [("a@c", "x@t"), ("b@c", "y@t")], [451, 250]),
        ("sender", [("a@c", "x@t"), ("a@c", "y@t"), ("b@c", "x@t")], [451, 250, 451]),
        ("recipient", [("a@c", "x@t"), ("b@c", "x@t"), ("a@c", "y@t")], [451, 250, 451]),
        ("triplet", [("a@c", "x@t"), ("a@c", "x@t"), ("b@c", "x@t")], [451, 250, 451]),
    ],
)
def test_times_per_key(serve, per: str, calls, expected) -> None:
    server = serve(f"rules:\n  - on: rcpt\n    times: 1\n    per: {per}\n    reply: 451\n")
    assert [rcpt_code(server, *call)[0] for call in calls] == expected


def test_times_per_connection_within_one_connection(serve) -> None:
    server = serve("rules:\n  - on: rcpt\n    times: 1\n    per: connection\n    reply: 451\n")
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        assert [client.rcpt(f"r{n}@x.test")[0] for n in range(3)] == [451, 250, 250]


def test_after_then_times(serve) -> None:
    server = serve("rules:\n  - on: rcpt\n    after: 2\n    times: 2\n    reply: 452\n")
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        codes = [client.rcpt(f"r{n}@x.test")[0] for n in range(6)]
    assert codes == [250, 250, 452, 452, 250, 250]


def test_greylisting_triplet(serve) -> None:
    server = serve("""
rules:
  - on: rcpt
    times: 1
    per: triplet
    reply: 451 4.7.1 Greylisted, try again later
""")
    assert rcpt_code(server, "a@sender.test", "bob@x.test") == (
        451,
        b"4.7.1 Greylisted, try again later",
    )
    assert rcpt_code(server, "a@sender.test", "bob@x.test")[0] == 250  # the retry
    assert rcpt_code(server, "other@sender.test", "bob@x.test")[0] == 451  # another sender


def test_first_firing_rule_wins_and_exhausted_rules_fall_through(serve) -> None:
    server = serve("""
rules:
  - on: rcpt
    match: {to: "vip@*"}
    times: 1
    reply: 451 4.3.0 First
  - on: rcpt
    match: {to: "vip@*"}
    reply: 550 5.1.1 Second
""")
    assert rcpt_code(server, "a@c.test", "vip@x.test")[1] == b"4.3.0 First"
    assert rcpt_code(server, "a@c.test", "vip@x.test")[1] == b"5.1.1 Second"
    assert rcpt_code(server, "a@c.test", "other@x.test")[0] == 250


def test_probability_is_repeatable_with_a_seed(serve) -> None:
    text = "seed: 42\nrules:\n  - on: rcpt\n    probability: 0.5\n    reply: 451\n"

    def run() -> list[int]:
        server = serve(text)
        with connect(server) as client:
            client.ehlo("client.test")
            client.mail("a@client.test")
            return [client.rcpt(f"r{n}@x.test")[0] for n in range(30)]

    first, second = run(), run()
    assert first == second
    assert 5 < first.count(451) < 25


def test_engine_counters_reset() -> None:
    scenario = load_scenario_text("rules:\n  - on: mail\n    times: 1\n    reply: 451\n")
    engine = Engine(scenario)
    facts = Facts(session_id="s", client="127.0.0.1", helo="h", sender="a@b")
    assert engine.decide(Stage.MAIL, facts) is not None
    assert engine.decide(Stage.MAIL, facts) is None
    engine.reset()
    assert engine.decide(Stage.MAIL, facts) is not None


# --------------------------------------------------------------------------- session state


def test_refused_mail_leaves_no_transaction(serve) -> None:
    server = serve("rules:\n  - on: mail\n    match: {from: 'bad@*'}\n    reply: 550\n")
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.mail("bad@client.test")[0] == 550
        assert client.rcpt("bob@x.test")[0] == 503  # no MAIL in force
        assert client.mail("good@client.test")[0] == 250  # the session is still usable
        assert client.rcpt("bob@x.test")[0] == 250


def test_refused_recipients_are_not_in_the_envelope(serve) -> None:
    server = serve("rules:\n  - on: rcpt\n    match: {to: 'no@*'}\n    reply: 550\n")
    with connect(server) as client:
        refused = client.sendmail("a@client.test", ["yes@x.test", "no@x.test"], MESSAGE)
        assert refused == {"no@x.test": (550, b"5.1.1 " + refused["no@x.test"][1][6:])}
    [message] = server.wait_for(1)
    assert message.rcpt_tos == ["yes@x.test"]


def test_all_recipients_refused_then_data_is_554(serve) -> None:
    server = serve("rules:\n  - on: rcpt\n    reply: 550\n")
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        client.rcpt("no@x.test")
        assert client.docmd("DATA") == (554, b"5.5.1 Error: no valid recipients")


def test_rset_clears_the_transaction(serve) -> None:
    server = serve()
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        client.rcpt("b@x.test")
        assert client.rset()[0] == 250
        assert client.docmd("DATA")[0] == 503
        assert client.mail("a@client.test")[0] == 250


def test_rule_refusing_rset_keeps_the_transaction(serve) -> None:
    server = serve("rules:\n  - on: rset\n    reply: 454 4.3.0 Not now\n")
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        assert client.docmd("RSET") == (454, b"4.3.0 Not now")
        assert client.rcpt("b@x.test")[0] == 250  # MAIL still in force


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (["MAIL FROM:<a@x.test>"], (503, "5.5.1 Error: send HELO/EHLO first")),
        (["EHLO c", "RCPT TO:<b@x.test>"], (503, "5.5.1 Error: need MAIL command")),
        (
            ["EHLO c", "MAIL FROM:<a@x.test>", "MAIL FROM:<a@x.test>"],
            (503, "5.5.1 Error: nested MAIL command"),
        ),
        (["EHLO c", "MAIL FROM:<a@x.test>", "DATA"], (503, "5.5.1 Error: need RCPT command")),
        (["EHLO c", "MAIL TO:<a@x.test>"], (501, "5.5.4 Syntax: MAIL FROM:<address>")),
        (["EHLO c", "MAIL FROM:<not an address>"], (501, "5.1.7 Bad sender address syntax")),
        (
            ["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<nobody>"],
            (501, "5.1.3 Bad recipient address syntax"),
        ),
        (["EHLO c", "MAIL FROM:<a@x.test> FOO=bar"], (555, "5.5.4 Unsupported option: FOO")),
        (["HELO"], (501, "5.5.4 Syntax: HELO hostname")),
        (["EHLO c", "MAIL FROM:<"], (501, "5.5.4 Syntax: MAIL FROM:<address>")),
        (["EHLO c", "MAIL FROM:<a@x.test>", "RCPT TO:<"], (501, "5.5.4 Syntax: RCPT TO:<address>")),
        (["EHLO c", "VRFY"], (501, "5.5.4 Syntax: VRFY address")),
        (["EHLO c", "STARTTLS"], (502, "5.5.1 STARTTLS not available")),
        (["EHLO c", "AUTH PLAIN"], (503, "5.5.1 Error: authentication not enabled")),
    ],
)
def test_protocol_mistakes_get_rfc_replies(serve, raw_client, commands, expected) -> None:
    client = raw_client(serve())
    client.reply()
    for command in commands:
        client.send(command + "\r\n")
        last = client.reply()
    code, _, text = last[-1].partition(" ")
    assert (int(code), text) == expected
    client.send("NOOP\r\n")
    assert client.reply() == ["250 2.0.0 Ok"]  # still serving


def test_enhanced_status_codes_can_be_turned_off(serve) -> None:
    server = serve(
        "server: {extensions: [PIPELINING, 8BITMIME]}\n"
        "rules:\n  - on: rcpt\n    reply: 550 5.1.1 No such user\n"
    )
    with connect(server) as client:
        _code, text = client.ehlo("client.test")
        assert b"ENHANCEDSTATUSCODES" not in text
        assert client.mail("a@client.test") == (250, b"Ok")
        assert client.rcpt("b@x.test") == (550, b"No such user")


# --------------------------------------------------------------------------- replies


def test_multiline_reply_as_the_client_parses_it(serve) -> None:
    server = serve("""
rules:
  - on: rcpt
    reply:
      code: 550
      status: 5.7.1
      text: [Message rejected, "See https://policy.example.test/{to}", Contact postmaster]
""")
    code, text = rcpt_code(server, "a@c.test", "bob@x.test")
    assert code == 550
    assert text.split(b"\n") == [
        b"5.7.1 Message rejected",
        b"5.7.1 See https://policy.example.test/bob@x.test",
        b"5.7.1 Contact postmaster",
    ]


@pytest.mark.slow
def test_pipelined_batch_gets_replies_in_order(serve, raw_client) -> None:
    server = serve(
        "rules:\n  - on: rcpt\n    match: {to: 'no@*'}\n    delay: 100ms\n    reply: 550 5.1.1 No\n"
    )
    client = raw_client(server)
    client.reply()
    client.send("EHLO c\r\n")
    assert "250-PIPELINING" in client.reply()
    client.send(
        "MAIL FROM:<a@c.test>\r\nRCPT TO:<no@x.test>\r\nRCPT TO:<yes@x.test>\r\n"
        "RCPT TO:<no@x.test>\r\nDATA\r\n"
    )
    replies = [client.reply()[0] for _ in range(5)]
    assert replies == [
        "250 2.1.0 Ok",
        "550 5.1.1 No",
        "250 2.1.5 Ok",
        "550 5.1.1 No",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    client.send("Subject: p\r\n\r\nx\r\n.\r\nQUIT\r\n")
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as")
    assert client.reply() == ["221 2.0.0 Bye"]


def test_aiosmtplib_pipelines_a_whole_message(serve) -> None:
    server = serve()

    async def send() -> None:
        response = await aiosmtplib.send(
            MESSAGE,
            sender="a@client.test",
            recipients=["b@x.test", "c@x.test"],
            hostname=server.host,
            port=server.port,
            start_tls=False,
        )
        assert response[1].startswith("2.0.0 Ok: queued as")

    asyncio.run(send())
    assert server.wait_for(1)[0].rcpt_tos == ["b@x.test", "c@x.test"]


# --------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_others_are_served_while_one_session_hangs_or_waits(serve) -> None:
    server = serve("""
server: {idle_timeout: 5s}
rules:
  - on: rcpt
    match: {to: "hang@*"}
    action: hang
  - on: rcpt
    match: {to: "slow@*"}
    delay: 3s
    reply: 451 4.4.1 Slow
""")
    stuck = []

    def stuck_client(recipient: str) -> None:
        client = connect(server, timeout=10)
        client.ehlo("c")
        client.mail("a@c.test")
        stuck.append(client)
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.rcpt(recipient)

    threads = [
        threading.Thread(target=stuck_client, args=(r,), daemon=True)
        for r in ("hang@x.test", "slow@x.test")
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    for n in range(5):
        with connect(server) as client:
            client.sendmail("a@c.test", [f"r{n}@x.test"], MESSAGE)
    assert time.monotonic() - started < 2.0
    assert len(server.wait_for(5)) == 5
    for client in stuck:
        client.close()


def test_transcript_says_why_no_rule_fired(serve) -> None:
    server = serve("""
rules:
  - on: rcpt
    name: spam trap
    match: {to: "trap@*", from: "*@spammer.test"}
    reply: 550
  - on: rcpt
    name: once
    times: 1
    reply: 451
""")
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        assert client.rcpt("trap@x.test")[0] == 451  # "once" fires
        assert client.rcpt("trap@x.test")[0] == 250
    rcpts = [e for e in server.wait_for_sessions(1)[0].exchanges if e.stage == "rcpt"]
    assert rcpts[0].rule == "once" and rcpts[0].note == "counted 1"
    assert rcpts[1].rule is None
    assert rcpts[1].note == (
        "no rule fired (spam trap: from did not match; "
        "once: matched, but counted 2 (it fires for the first 1))"
    )


@pytest.mark.slow
def test_a_delay_longer_than_the_idle_timeout_still_replies(serve) -> None:
    # The server's own delay must not count as the client being idle.
    server = serve("server: {idle_timeout: 300ms}\nrules:\n  - on: mail\n    delay: 800ms\n")
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test") == (250, b"2.1.0 Ok")
