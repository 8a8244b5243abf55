"""``fakesmtp record`` against a fakesmtp upstream: what the client sees, what the file says.

The upstream here is a fakesmtp serving a scenario, so every behaviour a test needs is one rule
away: multi-line replies, greylisting, drops and resets at any stage, slow replies, AUTH. (The
Postfix round trip is tests/test_record_postfix.py.)
"""

from __future__ import annotations

import base64
import json
import re
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fakesmtp import FakeSMTP
from fakesmtp.cli import main
from fakesmtp.record import Recorder
from fakesmtp.scenario import ScenarioError, load_scenario_text
from tests.conftest import RawClient

UPSTREAM = """
server:
  hostname: mx.upstream.test
  tls: {starttls: true}
  auth: {mechanisms: [PLAIN, LOGIN], users: {alice: "s3cret-pass"}}
rules:
  - on: connect
    reply: "220 mx.upstream.test ESMTP ready"
  - on: rcpt
    match: {to: "bob@example.test"}
    reply: "550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown"
  - on: rcpt
    match: {to: "grey@example.test"}
    times: 1
    reply: "451 4.7.1 Greylisted, try again later"
  - on: end_of_data
    match: {to: "spam@example.test"}
    reply: {code: 554, status: "5.7.1", text: ["Message refused as spam.", "See {{policy}}."]}
  - on: rcpt
    match: {to: "*@reset.test"}
    action: reset
  - on: data
    match: {to: "*@drop-at-data.test"}
    action: drop
  - on: end_of_data
    match: {to: "*@drop.test"}
    action: drop
"""
Step = tuple[str, Any]
QUEUED = re.compile(r"queued as \S+")


@pytest.fixture
def upstream(serve: Callable[..., FakeSMTP]) -> FakeSMTP:
    return serve(UPSTREAM)


@pytest.fixture
def recorder() -> Iterator[Callable[..., Recorder]]:
    started: list[Recorder] = []

    def start(upstream: FakeSMTP, **options: Any) -> Recorder:
        recorder = Recorder(f"{upstream.host}:{upstream.port}", **options).start_background()
        started.append(recorder)
        return recorder

    yield start
    for recorder in started:
        recorder.stop_background()


def _outcome(call: Callable[[], Any]) -> Any:
    """A reply, or how the connection ended (smtplib turns a drop and a reset into errors)."""
    try:
        return call()
    except smtplib.SMTPServerDisconnected as error:
        return ("disconnected", "reset" if "reset" in str(error).lower() else "closed")
    except (smtplib.SMTPDataError, smtplib.SMTPAuthenticationError) as error:
        return (error.smtp_code, error.smtp_error)


def conversation(host: str, port: int, recipients: list[str]) -> list[Step]:
    """One transaction: the replies at every step, or where and how the line went."""
    steps: list[Step] = []
    smtp = smtplib.SMTP(host, port, timeout=5)
    try:
        steps.append(("ehlo", smtp.ehlo("app.example.test")))
        steps.append(("mail", smtp.mail("app@example.test")))
        for recipient in recipients:
            steps.append((f"rcpt {recipient}", _outcome(lambda r=recipient: smtp.rcpt(r))))
            if steps[-1][1][0] == "disconnected":
                return steps
        data = _outcome(lambda: smtp.data(b"Subject: hi\r\n\r\nHello.\r\n"))
        if isinstance(data[1], bytes):  # each server names its own queue id
            data = (data[0], re.sub(rb"queued as \S+", b"queued as <id>", data[1]))
        steps.append(("data", data))
        if steps[-1][1][0] == "disconnected":
            return steps
        steps.append(("quit", smtp.quit()))
    finally:
        smtp.close()
    return steps


SESSIONS = [
    ["ok@example.test", "bob@example.test", "grey@example.test"],
    ["grey@example.test", "spam@example.test"],
    ["carl@drop.test"],
    ["dan@reset.test"],
    ["erin@drop-at-data.test"],
]


def test_replay_is_what_the_upstream_said_multiline_greylisting_drop_and_reset(
    upstream: FakeSMTP, recorder: Callable[..., Recorder], serve: Callable[..., FakeSMTP]
) -> None:
    relay = recorder(upstream)
    recorded = [conversation(relay.host, relay.port, r) for r in SESSIONS]
    relay.wait_for_sessions(len(SESSIONS))
    text = relay.yaml()
    replay = serve(text)
    replayed = [conversation(replay.host, replay.port, r) for r in SESSIONS]
    assert replayed == recorded
    # What the client saw through the relay is the upstream's, not the relay's.
    assert recorded[0][4][1] == (451, b"4.7.1 Greylisted, try again later")
    assert recorded[1][1 + 1][1] == (250, b"2.1.5 Ok")  # the greylisted retry went through
    assert recorded[1][-1][1][0] == 221
    assert ("data", (554, b"5.7.1 Message refused as spam.\n5.7.1 See {policy}.")) in recorded[1]
    assert recorded[2][-1] == ("data", ("disconnected", "closed"))
    assert recorded[3][-1] == ("rcpt dan@reset.test", ("disconnected", "reset"))
    assert recorded[4][-1] == ("data", ("disconnected", "closed"))
    rules = load_scenario_text(text).rules
    actions = {(r.on.value, r.action.value) for r in rules if r.action is not None}
    assert actions == {("end_of_data", "drop"), ("rcpt", "reset"), ("data", "drop")}
    grey = [r for r in rules if r.match.keys == ("to",) and r.times == 1]
    assert len(grey) == 1 and grey[0].reply is not None and grey[0].reply.code == 451


def test_the_file_holds_the_upstream_identity_and_only_what_differs(
    upstream: FakeSMTP, recorder: Callable[..., Recorder]
) -> None:
    relay = recorder(upstream)
    conversation(relay.host, relay.port, ["ok@example.test", "bob@example.test"])
    relay.wait_for_sessions(1)
    data = yaml.safe_load(relay.yaml())
    assert data["server"]["hostname"] == "mx.upstream.test"
    assert data["server"]["tls"] == {"starttls": True}
    assert data["server"]["auth"] == {"mechanisms": ["PLAIN", "LOGIN"]}
    # The banner and the refusal; fakesmtp's own 250s, 354 and 221 are not written.
    assert [(r[True], r.get("match")) for r in data["rules"]] == [
        ("connect", None),
        ("rcpt", {"to": "bob@example.test"}),
    ]
    text = relay.yaml()
    assert "# recorded " in text and f"from 127.0.0.1:{upstream.port} (session 1)" in text


def test_credentials_reach_the_upstream_and_nothing_else(
    upstream: FakeSMTP, recorder: Callable[..., Recorder], tmp_path: Path
) -> None:
    out = tmp_path / "auth.yaml"
    relay = recorder(upstream, out=out)
    secret = "s3cret-pass"
    blob = base64.b64encode(f"\0alice\0{secret}".encode()).decode()
    context = ssl._create_unverified_context()
    with smtplib.SMTP(relay.host, relay.port, timeout=5) as smtp:
        smtp.starttls(context=context)
        assert smtp.login("alice", secret)[0] == 235  # PLAIN, as the upstream checked it
    with smtplib.SMTP(relay.host, relay.port, timeout=5) as smtp:
        smtp.starttls(context=context)
        smtp.ehlo("app.example.test")
        smtp.user, smtp.password = "alice", secret  # what auth_login answers the 334s with
        assert smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)[0] == 235
    relay.wait_for_sessions(2)
    text = out.read_text()
    for leak in (secret, blob, base64.b64encode(secret.encode()).decode(), "alice"):
        assert leak not in text
    steps = [s for session in relay.recording.sessions() for s in session.steps]
    assert all(secret not in (s.command or "") and "alice" not in (s.command or "") for s in steps)
    assert "AUTH PLAIN ****" in [s.command for s in steps]
    assert load_scenario_text(text).server.auth is not None
    upstream_auth = [e for s in upstream.sessions for e in s.exchanges if e.stage == "auth"]
    assert upstream_auth and upstream_auth[-1].reply.startswith("235")


def test_the_upstream_link_is_tls_when_offered_whatever_the_client_does(
    upstream: FakeSMTP, recorder: Callable[..., Recorder]
) -> None:
    relay = recorder(upstream)
    with smtplib.SMTP(relay.host, relay.port, timeout=5) as smtp:
        code, lines = smtp.ehlo("plain.example.test")
        assert code == 250 and b"STARTTLS" in lines  # offered to the client, as upstream does
        assert smtp.mail("app@example.test")[0] == 250
    relay.wait_for_sessions(1)
    (session,) = relay.recording.sessions()
    assert session.upstream_tls  # the relay's own link went TLS
    assert all(not step.tls for step in session.steps)  # the client's did not
    (seen,) = upstream.sessions
    assert seen.tls


def test_slow_replies_keep_their_delay(
    serve: Callable[..., FakeSMTP], recorder: Callable[..., Recorder]
) -> None:
    slow = serve("rules:\n  - on: mail\n    delay: 400ms\n")
    relay = recorder(slow, delay_threshold=0.3)
    conversation(relay.host, relay.port, ["ok@example.test"])
    relay.wait_for_sessions(1)
    (rule,) = [r for r in load_scenario_text(relay.yaml()).rules if r.on.value == "mail"]
    assert rule.reply is None and 0.4 <= rule.delay < 0.8  # the normal reply, as late


def test_append_adds_new_rules_before_a_catch_all_and_keeps_the_file(
    upstream: FakeSMTP, recorder: Callable[..., Recorder], tmp_path: Path
) -> None:
    out = tmp_path / "mx.yaml"
    out.write_text(
        "# hand-written: keep this comment\n"
        "name: mine\n"
        "rules:\n"
        "  - on: rcpt\n"
        '    match: {to: "bob@example.test"}\n'
        '    reply: "550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown"\n'
        "  # every other recipient is full\n"
        "  - on: rcpt\n"
        '    reply: "452 4.2.2 Mailbox full"\n'
    )
    relay = recorder(upstream, out=out, append=True)
    conversation(relay.host, relay.port, ["bob@example.test", "grey@example.test"])
    relay.wait_for_sessions(1)
    text = out.read_text()
    assert text.startswith("# hand-written: keep this comment\nname: mine\n")
    assert text.count("bob@example.test") == 2  # the rule it had is not written again
    scenario = load_scenario_text(text)
    rcpt = [r for r in scenario.rules if r.on.value == "rcpt"]
    assert [r.match.keys for r in rcpt] == [("to",), ("to",), ()]  # grey before the catch-all
    assert text.index("grey@example.test") < text.index("# every other recipient is full")
    replay_steps = conversation_against(text, ["grey@example.test"])
    assert replay_steps[2][1] == (451, b"4.7.1 Greylisted, try again later")


def conversation_against(text: str, recipients: list[str]) -> list[Step]:
    with FakeSMTP(text) as replay:
        return conversation(replay.host, replay.port, recipients)


def test_message_text_is_kept_only_with_keep_bodies(
    upstream: FakeSMTP, recorder: Callable[..., Recorder]
) -> None:
    plain = recorder(upstream)
    conversation(plain.host, plain.port, ["spam@example.test"])
    plain.wait_for_sessions(1)
    assert "Hello." not in plain.yaml() and "subject" not in plain.yaml()
    keeping = recorder(upstream, keep_bodies=True)
    conversation(keeping.host, keeping.port, ["spam@example.test"])
    keeping.wait_for_sessions(1)
    text = keeping.yaml()
    assert "#     Hello." in text
    (rule,) = [r for r in load_scenario_text(text).rules if r.on.value == "end_of_data"]
    assert rule.match.keys == ("to", "subject")


def test_an_unreachable_upstream_is_a_421_from_the_relay() -> None:
    with Recorder("127.0.0.1:1", timeout=2) as relay:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(relay.host, relay.port, timeout=5)
        assert refused.value.smtp_code == 421
        assert b"4.4.1 fakesmtp record: cannot reach the upstream" in refused.value.smtp_error
        relay.wait_for_sessions(1)
        assert "rules: []" in relay.yaml()


# --------------------------------------------------------------------------- the command


@pytest.mark.slow  # a process of its own, stopped with Ctrl-C's signal
def test_record_command_listens_relays_and_writes_the_file(
    upstream: FakeSMTP, tmp_path: Path
) -> None:
    out = tmp_path / "cli.yaml"
    command = [sys.executable, "-m", "fakesmtp", "record", "--upstream",
               f"127.0.0.1:{upstream.port}", "--port", "0", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("fakesmtp record: SMTP on 127.0.0.1:"), first
        port = int(first.split("127.0.0.1:")[1].split(",")[0])
        conversation("127.0.0.1", port, ["bob@example.test"])
        secret = base64.b64encode(b"\0alice\0s3cret-pass").decode()
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.starttls(context=ssl._create_unverified_context())
            smtp.ehlo("app.example.test")
            assert smtp.docmd("AUTH", f"PLAIN {secret}")[0] == 235
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "-> 550 5.1.1 <bob@example.test>" in stdout  # one line per exchange
    assert secret not in stdout + stderr and "s3cret" not in stdout + stderr
    assert "2 session(s) recorded" in stderr
    assert load_scenario_text(out.read_text()).rules


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--upstream", "mx.example.test:99999"],
            "--upstream mx.example.test:99999: '99999' is not a port number",
        ),
        (["--upstream", "mx.example.test", "--append"], "--append needs --out FILE"),
        (["--upstream", "mx.example.test", "--delay-threshold", "soon"], "--delay-threshold soon:"),
    ],
)
def test_record_command_bad_input_is_one_line_and_exit_2(
    arguments: list[str], message: str
) -> None:
    done = CliRunner().invoke(main, ["record", *arguments])
    assert done.exit_code == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_append_to_an_invalid_file_is_refused_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - on: rcpt\n    reply: 999\n")
    done = CliRunner().invoke(
        main, ["record", "--upstream", "127.0.0.1:2525", "--out", str(bad), "--append"]
    )
    assert done.exit_code == 2
    assert "--append: cannot append to an invalid scenario" in done.stderr
    assert f"{bad}:3" in done.stderr


# --------------------------------------------------------------------------- the API


def _call(api: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(api + path, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def test_record_from_the_api_watch_it_grow_stop_and_serve_it(
    upstream: FakeSMTP, serve: Callable[..., FakeSMTP]
) -> None:
    server = serve(api_port=0)
    api = f"http://{server.api_host}:{server.api_port}/api/v1"
    assert _call(api, "GET", "/record")[1]["recording"] is False
    body = json.dumps({"upstream": f"127.0.0.1:{upstream.port}"}).encode()
    status, started = _call(api, "POST", "/record", body)
    assert status == 201 and started["recording"] and started["sessions"] == 0
    port = started["listening"]["port"]
    assert _call(api, "POST", "/record", body)[0] == 409  # one at a time
    conversation("127.0.0.1", port, ["bob@example.test"])
    deadline = time.monotonic() + 5
    while _call(api, "GET", "/record")[1]["sessions"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    grown = _call(api, "GET", "/record")[1]
    assert 'match: {to: "bob@example.test"}' in grown["yaml"]
    status, stopped = _call(api, "DELETE", "/record")
    assert status == 200 and stopped["recording"] is False and stopped["listening"] is None
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", port, timeout=2)
    status, text = _call(api, "GET", "/record?format=yaml")
    assert status == 200 and text == stopped["yaml"]
    # Serve it, as the page's "Serve this recording" does: its rules are like any other.
    status, scenario = _call(api, "PUT", "/scenario", text.encode())
    assert status == 200 and [r["on"] for r in scenario["rules"]] == ["connect", "rcpt"]
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        smtp.ehlo("app.example.test")
        smtp.mail("app@example.test")
        assert smtp.rcpt("bob@example.test")[0] == 550


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{}", 400, 'the body needs "upstream"'),
        (b'{"upstream": "mx:0"}', 400, "upstream: '0' is not a port number"),
        (b'{"upstream": "mx", "relay": "x"}', 400, "unknown option 'relay'"),
        (b'{"upstream": "mx", "port": -1}', 400, "port must be"),
    ],
)
def test_record_api_refuses_bad_requests(
    serve: Callable[..., FakeSMTP], body: bytes, status: int, error: str
) -> None:
    server = serve(api_port=0)
    api = f"http://{server.api_host}:{server.api_port}/api/v1"
    got, data = _call(api, "POST", "/record", body)
    assert got == status and data["error"].startswith(error)
    assert _call(api, "DELETE", "/record")[0] == 404


# --------------------------------------------------------------------------- keys it writes


def test_auth_tls_only_offers_auth_after_starttls_only(serve: Callable[..., FakeSMTP]) -> None:
    server = serve(
        "server:\n  tls: {starttls: true}\n"
        "  auth: {mechanisms: [PLAIN], tls_only: true, users: {alice: pw}}\n"
    )
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        smtp.ehlo("app.example.test")
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN AGFsaWNlAHB3") == (
            503,
            b"5.5.1 Error: authentication not enabled",
        )
        assert smtp.mail("app@example.test")[0] == 250  # unlike tls.required, MAIL is open
        smtp.rset()
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.ehlo("app.example.test")
        assert smtp.has_extn("auth")
        assert smtp.login("alice", "pw")[0] == 235


def test_size_replies_word_the_size_limit_at_mail_and_after_the_dot(
    serve: Callable[..., FakeSMTP],
) -> None:
    server = serve(
        "server:\n  size_limit: 1000\n  size_replies:\n"
        '    mail: "552 5.3.4 Message size exceeds fixed limit"\n'
        '    end_of_data: "552 5.3.4 Error: message file too big"\n'
    )
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        smtp.ehlo("app.example.test")
        assert smtp.mail("app@example.test", ["SIZE=5000"]) == (
            552,
            b"5.3.4 Message size exceeds fixed limit",
        )
        assert smtp.mail("app@example.test")[0] == 250
        smtp.rcpt("bob@example.test")
        big = b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n"
        assert smtp.data(big) == (552, b"5.3.4 Error: message file too big")
    assert server.messages == []


def test_size_replies_must_refuse() -> None:
    with pytest.raises(ScenarioError) as error:
        load_scenario_text('server:\n  size_replies: {mail: "250 2.0.0 fine"}\n')
    assert "<text>:2: server.size_replies.mail: must refuse (allowed: 4xx or 5xx)" in str(
        error.value
    )


def test_bdat_chunks_are_relayed_and_the_last_ones_reply_recorded(
    serve: Callable[..., FakeSMTP], recorder: Callable[..., Recorder]
) -> None:
    chunking = serve(
        "server: {extensions: [PIPELINING, ENHANCEDSTATUSCODES, CHUNKING]}\n"
        "rules:\n"
        "  - on: end_of_data\n"
        '    match: {to: "spam@example.test"}\n'
        '    reply: "554 5.7.1 Spam, by BDAT too"\n'
    )
    relay = recorder(chunking)

    def chunked(host: str, port: int, to: str) -> list[list[str]]:
        client = RawClient(host, port)
        try:
            replies = [client.reply()]
            for command in (
                "EHLO app.example.test",
                "MAIL FROM:<a@example.test>",
                f"RCPT TO:<{to}>",
            ):
                client.send(command + "\r\n")
                replies.append(client.reply())
            client.send("BDAT 8\r\nSubject:")
            replies.append(client.reply())
            client.send("BDAT 10 LAST\r\n hi\r\n\r\nx\r\n")
            replies.append(client.reply())
            return [[QUEUED.sub("queued as <id>", line) for line in r] for r in replies]
        finally:
            client.close()

    recorded = [
        chunked(relay.host, relay.port, to) for to in ("ok@example.test", "spam@example.test")
    ]
    relay.wait_for_sessions(2)
    assert recorded[1][-1] == ["554 5.7.1 Spam, by BDAT too"]
    assert recorded[0][-1] == ["250 2.0.0 Ok: queued as <id>"]
    assert [m.raw for m in chunking.messages] == [b"Subject: hi\r\n\r\nx\r\n"]
    replay = serve(relay.yaml())
    replayed = [
        chunked(replay.host, replay.port, to) for to in ("ok@example.test", "spam@example.test")
    ]
    assert replayed == recorded


def test_record_command_names_the_variable_a_bad_value_came_from() -> None:
    environment = {"FAKESMTP_RECORD_UPSTREAM": "mx.example.test:0"}
    done = CliRunner().invoke(main, ["record"], env=environment)
    assert done.exit_code == 2
    assert done.stderr.startswith("FAKESMTP_RECORD_UPSTREAM=mx.example.test:0: '0' is not a port")
