"""A real bounce from a real Postfix: its DSN and its log, through from-bounce, give the same reply.

Postfix (tests/postfix.py: Debian's package, configured in a temporary directory of its own:
no system daemon, no port 25, no local delivery) relays to fakesmtp on 127.0.0.1, which refuses
some recipients. Postfix bounces; its non-delivery notification goes back through the same relay
host, so fakesmtp captures the DSN too. Each DSN (and the log lines) is fed to
`bounce_to_yaml`, and the resulting scenario must give the reply fakesmtp first gave.

Needs root (Postfix's master runs as root and its daemons as the `postfix` user); skipped, with
the reason, where Postfix is not installed or the tests do not run as root.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fakesmtp import FakeSMTP
from fakesmtp.bounce import bounce_to_yaml, parse_bounce
from fakesmtp.scenario import load_scenario_text

from .conftest import served
from .postfix import running_postfix, wait, why_not

pytestmark = [
    pytest.mark.slow,  # starts a real Postfix
    pytest.mark.skipif(why_not() is not None, reason=why_not() or ""),
]

SENDER = "alice@shop.example.test"
# What the remote server (fakesmtp) says; the round trip must give exactly this back.
REFUSED = "bob@example.test"  # at RCPT, one line
REFUSED_TEXT = "<bob@example.test>: Recipient address rejected: User unknown in local table"
CONTENT = "dora@example.test"  # after the end of data, three lines
CONTENT_TEXT = [
    "Message refused: it looks like bulk mail.",
    "See the policy page at",
    "https://postmaster.example.test/bulk for details.",
]
GREYLISTED = "greg@example.test"  # deferred once at RCPT, then accepted
GREY_TEXT = "<greg@example.test>: Greylisted, try again in a moment"
ACCEPTED = "carl@example.test"
SCENARIO = f"""
name: remote-mx
server: {{hostname: mx.example.test}}
rules:
  - on: rcpt
    match: {{to: "{REFUSED}"}}
    reply: {{code: 550, status: "5.1.1", text: "{REFUSED_TEXT}"}}
  - on: rcpt
    match: {{to: "{GREYLISTED}"}}
    times: 1
    per: recipient
    reply: {{code: 451, status: "4.7.1", text: "{GREY_TEXT}"}}
  - on: end_of_data
    match: {{to: "{CONTENT}"}}
    reply:
      code: 554
      status: "5.7.1"
      text: {CONTENT_TEXT!r}
"""

# Retry a deferred message within a second or two instead of minutes.
RETRY_SOON = """\
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


@dataclass(frozen=True, slots=True)
class PostfixRun:
    dsns: dict[str, str]  # refused recipient -> the DSN Postfix wrote about it
    log: str
    leftover: bool  # a process of the Postfix instance's process group outlived the stop


def _submit(port: int, recipients: list[str]) -> None:
    body = (
        f"From: {SENDER}\r\nTo: {', '.join(recipients)}\r\nSubject: test\r\n\r\n"
        "Hello from the test.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(SENDER, recipients, body)


@pytest.fixture(scope="module")
def postfix_run() -> Iterator[PostfixRun]:
    with (
        served(scenario=SCENARIO) as remote,
        running_postfix(
            remote.port, hostname="relay.shop.example.test", settings=RETRY_SOON
        ) as postfix,
    ):
        # The refused recipient travels with an accepted one, as in real life; the refusal
        # after the end of data would bounce every recipient, so it goes alone.
        _submit(postfix.port, [REFUSED, ACCEPTED])
        _submit(postfix.port, [CONTENT])
        _submit(postfix.port, [GREYLISTED])

        def done() -> bool:
            messages = remote.messages
            dsns = [m for m in messages if m.mail_from == ""]
            grey = [m for m in messages if GREYLISTED in m.rcpt_tos]
            return len(dsns) >= 2 and bool(grey)

        wait(done, 30, "Postfix's two DSNs and the retried greylisted message")
        wait(
            lambda: "status=sent" in _log_for(postfix.log, GREYLISTED),
            10,
            "the log line of the greylisted message's delivery",
        )
        postfix.stop()
        leftover = postfix.leftover()
        dsns = {}
        for message in remote.messages:
            if message.mail_from == "":
                text = message.raw.decode("utf-8", "replace")
                for recipient in (REFUSED, CONTENT):
                    if f"Final-Recipient: rfc822; {recipient}" in text:
                        dsns[recipient] = text
        yield PostfixRun(dsns=dsns, log=postfix.log.read_text(errors="replace"), leftover=leftover)


def _log_for(log_path: Path, recipient: str) -> str:
    lines = log_path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if f"to=<{recipient}>" in line)


def _meet(yaml_text: str, recipient: str, stage: str) -> tuple[int, bytes]:
    """Serve the generated scenario; the reply a client meets at `stage` for `recipient`."""
    load_scenario_text(yaml_text, source="<bounce>")
    with served(scenario=yaml_text) as server:
        return _attempt(server, recipient, stage)


def _attempt(server: FakeSMTP, recipient: str, stage: str) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        smtp.ehlo("app.shop.example.test")
        assert smtp.mail(SENDER)[0] == 250
        if stage == "rcpt":
            return smtp.rcpt(recipient)
        assert smtp.rcpt(recipient)[0] == 250
        return smtp.data(f"From: {SENDER}\r\nSubject: again\r\n\r\nHi.\r\n")


@pytest.mark.slow
def test_postfix_dsn_of_a_rcpt_refusal_round_trips(postfix_run: PostfixRun) -> None:
    dsn = postfix_run.dsns[REFUSED]
    yaml_text = bounce_to_yaml(dsn, "postfix-dsn.eml")
    (finding,) = parse_bounce(dsn)
    assert (finding.recipient, finding.stage, finding.code) == (REFUSED, "rcpt", 550)
    assert _meet(yaml_text, REFUSED, "rcpt") == (550, f"5.1.1 {REFUSED_TEXT}".encode())
    assert _meet(yaml_text, ACCEPTED, "rcpt")[0] == 250


def test_postfix_dsn_of_a_multiline_end_of_data_refusal_round_trips(
    postfix_run: PostfixRun,
) -> None:
    dsn = postfix_run.dsns[CONTENT]
    yaml_text = bounce_to_yaml(dsn, "postfix-dsn.eml")
    (finding,) = parse_bounce(dsn)
    assert (finding.recipient, finding.stage, finding.code) == (CONTENT, "end_of_data", 554)
    assert list(finding.text) == CONTENT_TEXT  # Postfix flattened the lines; they are back
    expected = "\n".join(f"5.7.1 {line}" for line in CONTENT_TEXT).encode()
    assert _meet(yaml_text, CONTENT, "end_of_data") == (554, expected)
    assert _meet(yaml_text, ACCEPTED, "end_of_data")[0] == 250


@pytest.mark.slow
def test_postfix_log_of_a_bounce_round_trips(postfix_run: PostfixRun) -> None:
    lines = [line for line in postfix_run.log.splitlines() if f"to=<{REFUSED}>" in line]
    yaml_text = bounce_to_yaml("\n".join(lines), "maillog")
    assert _meet(yaml_text, REFUSED, "rcpt") == (550, f"5.1.1 {REFUSED_TEXT}".encode())


def test_postfix_log_of_a_deferral_then_delivery_round_trips(postfix_run: PostfixRun) -> None:
    """Deferred once, then sent: the scenario defers once, then accepts the retry."""
    lines = [line for line in postfix_run.log.splitlines() if f"to=<{GREYLISTED}>" in line]
    assert "status=deferred" in lines[0] and "status=sent" in lines[-1]
    yaml_text = bounce_to_yaml("\n".join(lines), "maillog")
    (finding,) = parse_bounce("\n".join(lines))
    assert finding.transient_then_delivered == 1
    load_scenario_text(yaml_text, source="<bounce>")
    with served(scenario=yaml_text) as server:
        assert _attempt(server, GREYLISTED, "rcpt") == (451, f"4.7.1 {GREY_TEXT}".encode())
        assert _attempt(server, GREYLISTED, "rcpt")[0] == 250


def test_no_postfix_left_running(postfix_run: PostfixRun) -> None:
    assert "stopping the Postfix mail system" in postfix_run.log
    assert not postfix_run.leftover
