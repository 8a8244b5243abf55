"""Every catalog code a server can send is produced by a built-in scenario, seen by smtplib.

One test per code: start the scenario, drive a real client to the stage, and check the reply
code and enhanced status it gets. 101 and 111 are not replies; their tests show how a client
meets them (a refused connection, a reset at connect).
"""

from __future__ import annotations

import base64
import errno
import smtplib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fakesmtp import FakeSMTP, catalog, load_scenario
from fakesmtp.scenario import builtin_scenarios

from .conftest import served

Drive = Callable[[FakeSMTP], tuple[int, bytes]]
SENDER = "sender@example.test"
MESSAGE = b"From: sender@example.test\r\nSubject: coverage\r\n\r\nHello.\r\n"
TIMEOUT = 10.0


@contextmanager
def session(server: FakeSMTP) -> Iterator[smtplib.SMTP]:
    """A greeted smtplib client; closed afterwards whatever the server did."""
    client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
    try:
        client.ehlo("client.example.test")
        yield client
    finally:
        client.close()


# --------------------------------------------------------------------------- drivers


def at_connect(server: FakeSMTP) -> tuple[int, bytes]:
    client = smtplib.SMTP(timeout=TIMEOUT)  # no host: connect() returns the banner, not raise
    try:
        return client.connect(server.host, server.port)
    finally:
        client.close()


def command(verb: str, arg: str = "") -> Drive:
    def drive(server: FakeSMTP) -> tuple[int, bytes]:
        with session(server) as client:
            return client.docmd(verb, arg)

    return drive


def auth_plain(user: str, password: str) -> Drive:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return command("AUTH", f"PLAIN {token}")


def auth_login_challenge(server: FakeSMTP) -> tuple[int, bytes]:
    with session(server) as client:
        reply = client.docmd("AUTH", "LOGIN")
        client.docmd("*")  # cancel the exchange, as RFC 4954 allows
        return reply


def mail(sender: str, options: tuple[str, ...] = ()) -> Drive:
    def drive(server: FakeSMTP) -> tuple[int, bytes]:
        with session(server) as client:
            return client.mail(sender, list(options))

    return drive


def rcpt(*recipients: str, sender: str = SENDER) -> Drive:
    """The reply to the last of ``recipients``."""

    def drive(server: FakeSMTP) -> tuple[int, bytes]:
        with session(server) as client:
            assert client.mail(sender)[0] == 250
            reply = (0, b"")
            for recipient in recipients:
                reply = client.rcpt(recipient)
            return reply

    return drive


def data_command(recipient: str) -> Drive:
    def drive(server: FakeSMTP) -> tuple[int, bytes]:
        with session(server) as client:
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(recipient)[0] == 250
            reply = client.docmd("DATA")
            if reply[0] == 354:  # finish politely with an empty message
                client.send(b".\r\n")
                client.getreply()
            return reply

    return drive


def end_of_data(recipient: str, message: bytes = MESSAGE) -> Drive:
    def drive(server: FakeSMTP) -> tuple[int, bytes]:
        with session(server) as client:
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(recipient)[0] == 250
            return client.data(message)

    return drive


def second_connection(server: FakeSMTP) -> tuple[int, bytes]:
    with session(server) as client:
        client.quit()
    return at_connect(server)


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    code: int
    scenario: str  # a built-in scenario name
    stage: str
    status: str | None  # the enhanced status the client must see; None: none expected
    drive: Drive


BIG = MESSAGE + b"x" * (1024 * 1024 + 100) + b"\r\n"  # just over 1 MiB

CASES = [
    Case("211", 211, "kitchen-sink", "help", "2.0.0", command("HELP")),
    Case("214", 214, "default", "help", "2.0.0", command("HELP")),
    Case("220", 220, "default", "connect", None, at_connect),
    Case("221", 221, "default", "quit", "2.0.0", command("QUIT")),
    Case("235", 235, "auth-required", "auth", "2.7.0", auth_plain("alice", "s3cret")),
    Case("250", 250, "default", "rcpt", "2.1.5", rcpt("bob@example.test")),
    Case("251", 251, "mailbox-moved", "rcpt", "2.1.5", rcpt("ann@forward.test")),
    Case("252", 252, "default", "vrfy", "2.0.0", command("VRFY", "bob")),
    Case("334", 334, "auth-required", "auth", None, auth_login_challenge),
    Case("354", 354, "default", "data", None, data_command("bob@example.test")),
    Case("420", 420, "slow-server-short", "end_of_data", "4.4.2", end_of_data("a@groupwise.test")),
    Case("421", 421, "shutting-down", "mail", "4.3.2", mail(SENDER)),
    Case("421-connect", 421, "shutting-down", "connect", "4.3.2", second_connection),
    Case("422", 422, "mailbox-full", "rcpt", "4.2.2", rcpt("over@example.test")),
    Case("431", 431, "exchange", "end_of_data", "4.3.1", end_of_data("a@resources.test")),
    Case("432", 432, "exchange", "rcpt", "4.3.2", rcpt("a@queue-stopped.test")),
    Case("432-auth", 432, "auth-trouble", "auth", "4.7.12", auth_plain("transition", "x")),
    Case("441", 441, "exchange", "rcpt", "4.4.1", rcpt("a@no-answer.test")),
    Case("442", 442, "dropped-mid-data", "end_of_data", "4.4.2", end_of_data("a@relay-broke.test")),
    Case("446", 446, "exchange", "end_of_data", "4.4.6", end_of_data("a@loop.test")),
    Case("447", 447, "exchange", "end_of_data", "4.4.7", end_of_data("a@expired.test")),
    Case("449", 449, "exchange", "rcpt", "4.4.0", rcpt("a@routing.test")),
    Case("450", 450, "dns-errors", "mail", "4.1.8", mail("a@servfail.test")),
    Case("451", 451, "greylisting", "rcpt", "4.7.1", rcpt("bob@example.test")),
    Case("451-default", 451, "default", "mail", "4.3.0", mail("mail-451@any.test")),
    Case("452", 452, "too-many-recipients", "rcpt", "4.5.3",
         rcpt(*(f"r{n}@example.test" for n in range(6)))),
    Case("454", 454, "starttls-unavailable", "starttls", "4.7.0", command("STARTTLS")),
    Case("455", 455, "kitchen-sink", "mail", "4.5.4", mail("a@busy-params.test")),
    Case("471", 471, "spam-rejected", "end_of_data", "4.7.1", end_of_data("a@filter-down.test")),
    Case("500", 500, "default", "unknown", "5.5.2", command("FROBNICATE")),
    Case("501", 501, "default", "rcpt", "5.1.3", rcpt("not-an-address")),
    Case("502", 502, "default", "expn", "5.5.1", command("EXPN", "staff")),
    Case("503", 503, "default", "rcpt", "5.5.1", command("RCPT", "TO:<bob@example.test>")),
    Case("504", 504, "auth-required", "auth", "5.5.4", command("AUTH", "CRAM-MD5")),
    Case("510", 510, "unknown-recipient", "rcpt", "5.1.0", rcpt("a@typo.test")),
    Case("511", 511, "unknown-recipient", "rcpt", "5.1.1", rcpt("a@legacy.test")),
    Case("512", 512, "dns-errors", "rcpt", "5.1.2", rcpt("a@nxdomain.test")),
    Case("513", 513, "invalid-address", "rcpt", "5.1.3", rcpt("a@x400.test")),
    Case("521", 521, "does-not-accept-mail", "connect", "5.3.2", at_connect),
    Case("523", 523, "message-too-big", "end_of_data", "5.3.4", end_of_data("a@legacy.test", BIG)),
    Case("523-auth", 523, "auth-trouble", "auth", "5.7.10", auth_plain("encrypt", "x")),
    Case("530", 530, "auth-required", "mail", "5.7.0", mail(SENDER)),
    Case("530-tls", 530, "tls-required", "mail", "5.7.0", mail(SENDER)),
    Case("534", 534, "auth-trouble", "auth", "5.7.9", auth_plain("weak", "x")),
    Case("535", 535, "auth-required", "auth", "5.7.8", auth_plain("alice", "wrong")),
    Case("538", 538, "auth-trouble", "auth", "5.7.11", auth_plain("cleartext", "x")),
    Case("541", 541, "spam-rejected", "end_of_data", "5.7.1", end_of_data("a@strict.test")),
    Case("550", 550, "unknown-recipient", "rcpt", "5.1.1", rcpt("nobody@example.test")),
    Case("550-default", 550, "default", "rcpt", "5.1.1", rcpt("rcpt-550@any.test")),
    Case("551", 551, "mailbox-moved", "rcpt", "5.1.6", rcpt("a@moved.test")),
    Case("552", 552, "message-too-big", "mail", "5.3.4", mail(SENDER, ("SIZE=20971520",))),
    Case("552-default", 552, "default", "end_of_data", "5.3.4",
         end_of_data("end_of_data-552@any.test")),
    Case("553", 553, "invalid-address", "rcpt", "5.1.3", rcpt("a!b@example.test")),
    Case("554", 554, "blacklisted-ip", "connect", "5.7.1", at_connect),
    Case("554-default", 554, "default", "data", "5.5.1", data_command("data-554@any.test")),
    Case("555", 555, "invalid-address", "mail", "5.5.4", mail("a@params.test")),
    Case("556", 556, "null-mx", "rcpt", "5.1.10", rcpt("a@nullmx.test")),
]  # fmt: skip


def test_every_sendable_code_has_a_case() -> None:
    sendable = {entry.code for entry in catalog.codes() if entry.kind != "not-a-reply"}
    assert {case.code for case in CASES} == sendable


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
@pytest.mark.slow
def test_code_is_produced(case: Case) -> None:
    entry = catalog.code(case.code)
    assert entry is not None and case.stage in entry.stages, "the catalog lists this stage"
    assert case.scenario in builtin_scenarios()
    with served(case.scenario) as server:
        code, text = case.drive(server)
    assert code == case.code, text
    if case.status is not None:
        assert text.startswith(case.status.encode() + b" "), text


# --------------------------------------------------------------------------- 101 and 111


def test_111_is_a_refused_connection() -> None:
    # A port nobody listens on: bind one, note it, close it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError) as caught:
        smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
    assert caught.value.errno == errno.ECONNREFUSED
    assert catalog.code(111).kind == "not-a-reply"


def test_101_style_failure_is_a_reset_before_the_greeting() -> None:
    # "Cannot connect" as a client meets it from a server: no greeting, the line is cut.
    refused = pytest.raises((ConnectionResetError, smtplib.SMTPServerDisconnected))
    with served("connection-reset") as server, refused:
        smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
    assert catalog.code(101).kind == "not-a-reply"


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", sorted(builtin_scenarios()))
def test_builtin_scenario_agrees_with_the_catalog(name: str) -> None:
    scenario = load_scenario(name)
    for rule in scenario.rules:
        if rule.reply is None:
            continue
        entry = catalog.code(rule.reply.code)
        assert entry is not None, f"{rule.label}: {rule.reply.code} is not in the catalog"
        assert rule.on.value in entry.stages, f"{rule.label}: catalog has no {rule.on} for it"
        if rule.reply.status is not None:
            # Registered, or a vendor's own status the catalog explains (Microsoft's 5.7.708).
            found = catalog.status(rule.reply.status)
            reading = catalog.read_reply(rule.reply.code, rule.reply.status, rule.reply.text())
            registered = found is not None and found.registered
            assert registered or reading.basis == "vendor", f"{rule.label}: {rule.reply.status}"


@pytest.mark.parametrize("name", sorted(set(builtin_scenarios()) - {"default"}))
def test_builtin_scenario_says_what_it_reproduces(name: str) -> None:
    text = Path(builtin_scenarios()[name]).read_text(encoding="utf-8")
    assert text.startswith("# Reproduces: ")
    header = text.split("\nname:", 1)[0]
    assert "# Codes: " in header
