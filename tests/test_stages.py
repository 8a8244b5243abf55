"""Every stage x every kind of rule outcome, as a real client over a real socket sees it."""

from __future__ import annotations

import base64
import time

import pytest

from fakesmtp.stages import Stage

from .conftest import RawClient

PLAIN_ALICE = base64.b64encode(b"\x00alice\x00s3cret").decode()

# How to reach each stage: the commands that lead there (each must succeed), then the command
# the stage answers. None = the banner.
ROUTES: dict[Stage, tuple[list[str], str | None]] = {
    Stage.CONNECT: ([], None),
    Stage.HELO: ([], "HELO client.test"),
    Stage.EHLO: ([], "EHLO client.test"),
    Stage.STARTTLS: (["EHLO client.test"], "STARTTLS"),
    Stage.AUTH: (["EHLO client.test"], f"AUTH PLAIN {PLAIN_ALICE}"),
    Stage.MAIL: (["EHLO client.test"], "MAIL FROM:<alice@client.test>"),
    Stage.RCPT: (["EHLO client.test", "MAIL FROM:<alice@client.test>"], "RCPT TO:<bob@mx.test>"),
    Stage.DATA: (
        ["EHLO client.test", "MAIL FROM:<alice@client.test>", "RCPT TO:<bob@mx.test>"],
        "DATA",
    ),
    # A first chunk (not LAST) of 7 octets: the CRLF the route adds is its last two.
    Stage.BDAT: (
        ["EHLO client.test", "MAIL FROM:<alice@client.test>", "RCPT TO:<bob@mx.test>"],
        "BDAT 7\r\nHello.",
    ),
    Stage.END_OF_DATA: (
        ["EHLO client.test", "MAIL FROM:<alice@client.test>", "RCPT TO:<bob@mx.test>", "DATA"],
        "Subject: stages\r\n\r\nHello.\r\n.",
    ),
    Stage.RSET: (["EHLO client.test"], "RSET"),
    Stage.NOOP: (["EHLO client.test"], "NOOP"),
    Stage.VRFY: (["EHLO client.test"], "VRFY bob@mx.test"),
    Stage.EXPN: (["EHLO client.test"], "EXPN staff"),
    Stage.HELP: (["EHLO client.test"], "HELP"),
    Stage.QUIT: (["EHLO client.test"], "QUIT"),
    Stage.UNKNOWN: (["EHLO client.test"], "XYZZY"),
}

# The normal reply's first line at each stage, when no rule fires.
NORMAL = {
    Stage.CONNECT: "220 mx.fakesmtp.test ESMTP fakesmtp",
    Stage.HELO: "250 mx.fakesmtp.test",
    Stage.EHLO: "250-mx.fakesmtp.test",
    Stage.STARTTLS: "220 2.0.0 Ready to start TLS",
    Stage.AUTH: "235 2.7.0 Authentication successful",
    Stage.MAIL: "250 2.1.0 Ok",
    Stage.RCPT: "250 2.1.5 Ok",
    Stage.DATA: "354 End data with <CR><LF>.<CR><LF>",
    Stage.BDAT: "250 2.0.0 Ok: 7 octets received",
    Stage.END_OF_DATA: "250 2.0.0 Ok: queued as ",
    Stage.RSET: "250 2.0.0 Ok",
    Stage.NOOP: "250 2.0.0 Ok",
    Stage.VRFY: "252 2.0.0 Cannot VRFY user",
    Stage.EXPN: "502 5.5.1 EXPN not supported",
    Stage.HELP: "214 2.0.0 Commands:",
    Stage.QUIT: "221 2.0.0 Bye",
    Stage.UNKNOWN: "500 5.5.2 Error: command not recognized",
}

SERVER = """
server:
  extensions: [PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, DSN, CHUNKING]
  idle_timeout: 0.6s
  tls: {starttls: true}
  auth: {mechanisms: [PLAIN, LOGIN, CRAM-MD5], users: {alice: s3cret}}
"""


def scenario(stage: Stage, rule: str) -> str:
    return f"{SERVER}\nrules:\n  - on: {stage.value}\n    name: under-test\n{rule}"


def walk(client: RawClient, stage: Stage) -> None:
    """Read the banner (unless the banner is under test) and play the route up to the stage."""
    before, _ = ROUTES[stage]
    if stage is not Stage.CONNECT:
        assert client.reply()[0].startswith("220")
    for command in before:
        client.send(command + "\r\n")
        first = client.reply()[0]
        assert first[0] in "23", f"{command} -> {first}"


def reach(client: RawClient, stage: Stage) -> None:
    """Walk up to the stage and send the command it answers (nothing for the banner)."""
    walk(client, stage)
    command = ROUTES[stage][1]
    if command is not None:
        client.send(command + "\r\n")


def ask(client: RawClient, stage: Stage) -> list[str]:
    reach(client, stage)
    return client.reply()


# A 2xx, a 4xx and a 5xx for every stage; each must reach the client exactly as written.
CODES = {
    "2xx": lambda stage: {Stage.CONNECT: 220, Stage.QUIT: 221, Stage.AUTH: 235}.get(stage, 250),
    "4xx": lambda stage: 452,
    "5xx": lambda stage: 554,
}


@pytest.mark.parametrize("kind", CODES)
@pytest.mark.parametrize("stage", list(Stage))
def test_rule_reply_reaches_client(serve, raw_client, stage: Stage, kind: str) -> None:
    code = CODES[kind](stage)
    status = f"{str(code)[0]}.7.1"
    server = serve(scenario(stage, f"    reply: {code} {status} Rule answers {stage.value}\n"))
    client = raw_client(server)
    lines = ask(client, stage)
    if stage is Stage.EHLO and kind == "2xx":
        # a positive EHLO rule keeps the extension list, with the rule's text first
        assert lines[0] == f"250-Rule answers {stage.value}"
        assert "250 HELP" in lines
    else:
        assert lines == [f"{code} {status} Rule answers {stage.value}"]
    server.wait_for_sessions(0)
    record = server.sessions[0]
    fired = [e for e in record.exchanges if e.rule == "under-test"]
    assert len(fired) == 1 and fired[0].stage == stage.value


@pytest.mark.parametrize("stage", list(Stage))
def test_normal_reply_without_rule(serve, raw_client, stage: Stage) -> None:
    server = serve(SERVER)
    lines = ask(raw_client(server), stage)
    assert lines[0].startswith(NORMAL[stage])


@pytest.mark.parametrize("stage", list(Stage))
def test_421_always_closes(serve, raw_client, stage: Stage) -> None:
    server = serve(scenario(stage, "    reply: 421 4.3.2 Going away\n"))
    client = raw_client(server)
    assert ask(client, stage) == ["421 4.3.2 Going away"]
    assert client.closed()
    assert server.wait_for_sessions(1)[0].end == "closed by rule"


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.slow
def test_delay_then_normal_reply(serve, raw_client, stage: Stage) -> None:
    server = serve(scenario(stage, "    delay: 300ms\n"))
    client = raw_client(server)
    walk(client, stage)
    command = ROUTES[stage][1]
    started = time.monotonic()
    if command is not None:
        client.send(command + "\r\n")
    else:  # the banner: the delay started at connect, measured from here it is a bit less
        started -= 0.05
    lines = client.reply()
    assert time.monotonic() - started >= 0.25
    assert lines[0].startswith(NORMAL[stage])


@pytest.mark.parametrize("stage", list(Stage))
def test_close_after_reply(serve, raw_client, stage: Stage) -> None:
    server = serve(scenario(stage, "    reply: 554 5.3.2 Closing now\n    action: close\n"))
    client = raw_client(server)
    assert ask(client, stage) == ["554 5.3.2 Closing now"]
    assert client.closed()


@pytest.mark.parametrize("stage", list(Stage))
def test_drop_closes_without_reply(serve, raw_client, stage: Stage) -> None:
    server = serve(scenario(stage, "    action: drop\n"))
    client = raw_client(server)
    reach(client, stage)
    assert client.closed()
    assert client.buffer == b""
    record = server.wait_for_sessions(1)[0]
    assert record.end == "dropped by rule"
    assert record.exchanges[-1].reply is None


@pytest.mark.parametrize("stage", list(Stage))
def test_reset_sends_tcp_rst(serve, raw_client, stage: Stage) -> None:
    server = serve(scenario(stage, "    action: reset\n"))
    # At connect, the reset can race the client's own connect(), which then reports it.
    with pytest.raises(ConnectionResetError):
        client = raw_client(server)
        reach(client, stage)
        while client.sock.recv(65536):
            pass
    assert server.wait_for_sessions(1)[0].end == "reset by rule"


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.slow
def test_hang_never_answers_until_idle_timeout(serve, raw_client, stage: Stage) -> None:
    server = serve(scenario(stage, "    action: hang\n"))
    client = raw_client(server)
    reach(client, stage)
    assert not client.closed(timeout=0.3)  # nothing, and still open
    assert client.buffer == b""
    assert client.closed(timeout=3)  # the idle timeout (0.6 s) ends it, still without a word
    assert client.buffer == b""
    assert server.wait_for_sessions(1)[0].end == "timeout while hanging"
