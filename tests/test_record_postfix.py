"""Record a real Postfix through ``fakesmtp record``, serve the recording, replay the sessions.

smtplib and swaks each run the same sessions twice: through the recorder to Postfix, then against
``fakesmtp serve`` with the recorded scenario. Every reply must be the same (code, enhanced
status, text, at the same step), and the replay must accept the same envelopes Postfix did
(Postfix relays what it accepts to a fakesmtp sink, so both sides are seen).

Two honest differences are normalised, and nothing else: Postfix's queue ids (fakesmtp makes its
own), and the EHLO keywords fakesmtp does not offer as Postfix does (VRFY and ETRN are offered by
Postfix, HELP by fakesmtp); the keywords both speak must be the same set, before and after TLS.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fakesmtp import FakeSMTP
from fakesmtp.record import Recorder
from fakesmtp.scenario import load_scenario_text
from tests.postfix import why_not
from tests.postfix_upstream import GREYLISTED, SIZE_LIMIT, USERS, postfix_upstream

pytestmark = [
    pytest.mark.skipif(why_not() is not None, reason=why_not() or ""),
    pytest.mark.slow,
]

SENDER = "app@shop.example.test"
ACCEPTED = "ok@example.test"
UNKNOWN = "nobody@example.test"
PASSWORD = USERS["alice"]
# fakesmtp offers these EHLO keywords as a server that implements them; the rest are not replayed.
NOT_REPLAYED = {"VRFY", "ETRN", "HELP"}
QUEUED = re.compile(r"queued as \S+")
Step = tuple[str, Any]


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _ehlo(reply: tuple[int, bytes]) -> Step:
    greeting, *keywords = reply[1].decode().split("\n")
    kept = {k for k in keywords if k.split()[0].upper() not in NOT_REPLAYED}
    return ("ehlo", (reply[0], greeting, frozenset(kept)))


def _reply(name: str, reply: tuple[int, bytes]) -> Step:
    return (name, (reply[0], QUEUED.sub("queued as <id>", reply[1].decode())))


def _try(name: str, call: Callable[[], Any]) -> Step:
    """A step that may be refused with an exception (smtplib raises for AUTH and DATA)."""
    try:
        return _reply(name, call())
    except smtplib.SMTPAuthenticationError as error:
        return _reply(name, (error.smtp_code, error.smtp_error))
    except smtplib.SMTPDataError as error:
        return _reply(name, (error.smtp_code, error.smtp_error))


def tls_auth_session(host: str, port: int) -> list[Step]:
    """STARTTLS, a wrong then a right password, refused, deferred and accepted recipients."""
    steps: list[Step] = []
    smtp = smtplib.SMTP(host, port, timeout=20)  # the banner is checked in the other sessions
    try:
        steps.append(_ehlo(smtp.ehlo("app.shop.example.test")))
        steps.append(_reply("starttls", smtp.starttls(context=_tls())))
        steps.append(_ehlo(smtp.ehlo("app.shop.example.test")))
        steps.append(_try("auth-wrong", lambda: smtp.login("alice", "not the password")))
        steps.append(_try("auth", lambda: smtp.login("alice", PASSWORD)))
        steps.append(_reply("mail", smtp.mail(SENDER)))
        for recipient in (ACCEPTED, UNKNOWN, GREYLISTED):
            steps.append(_reply(f"rcpt {recipient}", smtp.rcpt(recipient)))
        steps.append(_try("data", lambda: smtp.data(b"Subject: hello\r\n\r\nHello.\r\n")))
        steps.append(_reply("quit", smtp.quit()))
    finally:
        smtp.close()
    return steps


def big_message_session(host: str, port: int) -> list[Step]:
    """Plain text: a message over the size limit, refused after its final dot; then more."""
    steps: list[Step] = []
    smtp = smtplib.SMTP(timeout=20)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (SIZE_LIMIT // 1000 + 5)
    try:
        steps.append(_reply("connect", smtp.connect(host, port)))
        steps.append(_ehlo(smtp.ehlo("app.shop.example.test")))
        # AUTH without TLS: Postfix (smtpd_tls_auth_only) says it has no AUTH at all.
        steps.append(_reply("auth-plain", smtp.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25n")))
        # A declared size over the limit is refused at MAIL...
        steps.append(_reply("mail-size", smtp.mail(SENDER, [f"SIZE={SIZE_LIMIT * 2}"])))
        steps.append(_reply("rset", smtp.rset()))  # Postfix refuses every MAIL until then
        steps.append(_reply("mail", smtp.mail(SENDER)))  # ... an undeclared one after the dot
        steps.append(_reply("rcpt", smtp.rcpt(ACCEPTED)))
        steps.append(_try("data", lambda: smtp.data(big)))
        steps.append(_reply("rset", smtp.rset()))
        steps.append(_reply("noop", smtp.noop()))
        steps.append(_reply("unknown", smtp.docmd("XYZZY")))
        steps.append(_reply("quit", smtp.quit()))
    finally:
        smtp.close()
    return steps


SWAKS = shutil.which("swaks")


def swaks_session(host: str, port: int, *more: str) -> list[Step]:
    """swaks with STARTTLS and AUTH LOGIN; its transcript's server lines, reply by reply."""
    assert SWAKS is not None
    done = subprocess.run(
        [SWAKS, "--server", host, "--port", str(port), "--ehlo", "swaks.shop.example.test",
         "--from", SENDER, "--to", f"{ACCEPTED},{UNKNOWN}", "--tls",
         "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", PASSWORD,
         "--body", "Hello from swaks.", "--timeout", "20", *more],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    steps: list[Step] = []
    command, in_message = "CONNECT", False
    reply: list[str] = []
    for line in done.stdout.splitlines():
        if line.startswith((" -> ", " ~> ")) and not in_message:
            word = line[4:].split(" ")[0].upper()
            # After AUTH, swaks sends base64 (credentials): name the step, not its content.
            command = word if word.isalpha() and len(word) <= 8 else "AUTH-DATA"
        elif line.startswith(("<-  ", "<~  ", "<** ", "<~* ")):  # what the server said
            text = line[4:]
            reply.append(text)
            if len(text) < 4 or text[3] != "-":
                steps.append(_swaks_reply(command, reply))
                reply = []
                in_message = text.startswith("354")  # the message's lines are not commands
                command = "END_OF_DATA" if in_message else command
    assert steps, f"swaks said nothing a server said:\n{done.stdout}\n{done.stderr}"
    return steps


def _swaks_reply(command: str, lines: list[str]) -> Step:
    code = int(lines[0][:3])
    texts = [line[4:] for line in lines]
    if command == "EHLO" and code == 250:
        kept = {t for t in texts[1:] if t.split()[0].upper() not in NOT_REPLAYED}
        return ("ehlo", (code, texts[0], frozenset(kept)))
    return (command.lower(), (code, QUEUED.sub("queued as <id>", "\n".join(texts))))


@dataclass
class Recorded:
    yaml: str
    steps: dict[str, list[Step]]
    envelopes: list[tuple[str, tuple[str, ...]]]  # what Postfix accepted and relayed


@dataclass
class Replayed:
    steps: dict[str, list[Step]]
    envelopes: list[tuple[str, tuple[str, ...]]]


SESSIONS: dict[str, Callable[[str, int], list[Step]]] = {
    "tls_auth": tls_auth_session,
    "big_message": big_message_session,
}
if SWAKS is not None:
    SESSIONS["swaks"] = swaks_session
    # MAIL, RCPTs and DATA sent in one go: the relay answers them one by one, in order.
    SESSIONS["swaks_pipelined"] = lambda host, port: swaks_session(host, port, "--pipeline")


def _envelopes(server: FakeSMTP) -> list[tuple[str, tuple[str, ...]]]:
    return sorted((m.mail_from, tuple(sorted(m.rcpt_tos))) for m in server.messages)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    out = tmp_path_factory.mktemp("record") / "postfix.yaml"
    with FakeSMTP() as sink, postfix_upstream(sink.port) as postfix:
        # A loaded machine can be slow to start an smtpd: only delays over 5s are kept.
        with Recorder(f"127.0.0.1:{postfix.port}", out=out, delay_threshold=5.0) as recorder:
            steps = {name: run("127.0.0.1", recorder.port) for name, run in SESSIONS.items()}
            recorder.wait_for_sessions(len(SESSIONS))
        accepted = 3 if SWAKS is not None else 1
        sink.wait_for(accepted, timeout=30)
        yield Recorded(yaml=out.read_text(), steps=steps, envelopes=_envelopes(sink))


def test_the_recording_is_a_valid_scenario_with_postfix_identity(recorded: Recorded) -> None:
    scenario = load_scenario_text(recorded.yaml, "postfix.yaml")
    assert scenario.server.hostname == "mx.postfix.test"
    assert scenario.server.size_limit == SIZE_LIMIT
    assert scenario.server.tls.starttls
    assert scenario.server.auth is not None and scenario.server.auth.mechanisms == (
        "PLAIN",
        "LOGIN",
    )
    assert PASSWORD not in recorded.yaml and "not the password" not in recorded.yaml
    assert "Hello." not in recorded.yaml  # no message text without --keep-bodies
    assert 'match: {to: "nobody@example.test"}' in recorded.yaml
    assert scenario.server.auth.tls_only  # Postfix offered AUTH only after STARTTLS
    assert scenario.server.data_size_reply is not None
    assert scenario.server.data_size_reply.lines == ("Error: message file too big",)
    assert scenario.server.mail_size_reply is not None
    assert scenario.server.mail_size_reply.lines == ("Message size exceeds fixed limit",)


@pytest.fixture(scope="module")
def replayed(recorded: Recorded) -> Replayed:
    """The same sessions, in the same order, against ``serve`` with the recording.

    In order, because what the upstream decided from what is never recorded (a password) is
    replayed by position: the first AUTH attempts failed, the later ones succeeded.
    """
    with FakeSMTP(recorded.yaml) as replay:
        steps = {name: run(replay.host, replay.port) for name, run in SESSIONS.items()}
        return Replayed(steps=steps, envelopes=_envelopes(replay))


@pytest.mark.parametrize("name", list(SESSIONS))
def test_replay_gives_every_reply_postfix_gave(
    recorded: Recorded, replayed: Replayed, name: str
) -> None:
    assert replayed.steps[name] == recorded.steps[name]


def test_replay_accepts_the_envelopes_postfix_accepted(
    recorded: Recorded, replayed: Replayed
) -> None:
    assert replayed.envelopes == recorded.envelopes
    assert (SENDER, (ACCEPTED,)) in recorded.envelopes


def test_what_postfix_said_is_what_the_client_got(recorded: Recorded) -> None:
    """The recorded steps are Postfix's own words (not the relay's)."""
    rcpts = [s for s in recorded.steps["tls_auth"] if s[0].startswith("rcpt")]
    assert rcpts[1][1][0] == 550 and "User unknown in relay recipient table" in rcpts[1][1][1]
    assert rcpts[2][1] == (451, f"4.7.1 <{GREYLISTED}>: Recipient address rejected: "
                                "Greylisted, try again later")  # fmt: skip
    data = dict(recorded.steps["big_message"])["data"]
    assert data == (552, "5.3.4 Error: message file too big")
