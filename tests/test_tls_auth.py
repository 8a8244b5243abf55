"""STARTTLS, implicit TLS, AUTH and the ESMTP extensions, with smtplib, aiosmtplib and swaks."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path

import aiosmtplib
import pytest
import trustme

from fakesmtp import FakeSMTP

from .conftest import connect

MESSAGE = b"Subject: hello\r\nFrom: alice@client.test\r\n\r\nHi.\r\n"
HARDENED = """
server:
  tls: {starttls: true, required: true}
  auth: {mechanisms: [PLAIN, LOGIN, CRAM-MD5], required: true, users: {alice: s3cret}}
"""


def insecure() -> ssl.SSLContext:
    """The generated certificate is self-signed: tests that use it do not verify it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    issued = ca.issue_cert("localhost", "127.0.0.1", "mx.fakesmtp.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


# --------------------------------------------------------------------------- STARTTLS


def test_starttls_with_generated_certificate(serve) -> None:
    server = serve(
        "server: {tls: {starttls: true}}\n"
        "rules:\n  - on: mail\n    match: {tls: false}\n    reply: 530 5.7.0 TLS first\n"
    )
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert client.mail("a@client.test")[0] == 530  # the rule sees tls: false
        client.rset()
        assert client.starttls(context=insecure())[0] == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # not offered twice
        assert client.sendmail("a@client.test", ["b@x.test"], MESSAGE) == {}
    record = server.wait_for_sessions(1)[0]
    assert record.tls


@pytest.mark.slow
def test_starttls_with_given_certificate_verifies(serve, ca, cert_files) -> None:
    cert, key = cert_files
    server = serve(f"server: {{tls: {{starttls: true, cert: '{cert}', key: '{key}'}}}}\n")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("localhost", server.port, timeout=5) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        peer = client.sock.getpeercert()  # type: ignore[union-attr]
        assert ("DNS", "localhost") in peer["subjectAltName"]


def test_tls_required_refuses_mail_before_starttls(serve) -> None:
    server = serve("server: {tls: {starttls: true, required: true}}\n")
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test") == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.starttls(context=insecure())
        client.ehlo("client.test")
        assert client.mail("a@client.test")[0] == 250


@pytest.mark.slow
def test_starttls_rule_454(serve) -> None:
    server = serve(
        "server: {tls: {starttls: true}}\n"
        "rules:\n  - on: starttls\n    reply: 454 4.7.0 TLS not available due to "
        "temporary reason\n"
    )
    with connect(server) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPResponseException) as caught:
            client.starttls(context=insecure())
        assert (caught.value.smtp_code, caught.value.smtp_error) == (
            454,
            b"4.7.0 TLS not available due to temporary reason",
        )
        assert client.noop()[0] == 250  # still in plain text, still served


@pytest.mark.parametrize("action", ["drop", "reset"])
@pytest.mark.slow
def test_starttls_refusing_the_handshake(serve, action: str) -> None:
    server = serve(
        f"server: {{tls: {{starttls: true}}}}\nrules:\n  - on: starttls\n    action: {action}\n"
    )
    with connect(server) as client:
        client.ehlo("client.test")
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
            client.starttls(context=insecure())


def test_client_that_fails_the_handshake_is_closed_cleanly(serve, raw_client) -> None:
    server = serve("server: {tls: {starttls: true}}\n")
    client = raw_client(server)
    client.reply()
    client.send("EHLO c\r\nSTARTTLS\r\n")
    client.reply()
    assert client.reply() == ["220 2.0.0 Ready to start TLS"]
    client.send(b"this is not a TLS client hello\r\n" * 4)
    assert client.closed()
    record = server.wait_for_sessions(1)[0]
    assert record.end.startswith("TLS handshake failed")


@pytest.mark.slow
def test_pipelined_commands_after_starttls_are_discarded(serve, raw_client) -> None:
    # RFC 3207 4.2: a man in the middle must not be able to inject plain-text commands.
    server = serve("server: {tls: {starttls: true}}\n")
    client = raw_client(server)
    client.reply()
    client.send("EHLO c\r\n")
    client.reply()
    client.send("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert client.reply() == ["220 2.0.0 Ready to start TLS"]
    tls = insecure().wrap_socket(client.sock, server_hostname="localhost")
    tls.sendall(b"EHLO c\r\nRCPT TO:<b@x.test>\r\n")
    data = b""
    while not data.endswith(b"need MAIL command\r\n"):
        data += tls.recv(4096)
    assert b"503 5.5.1 Error: need MAIL command" in data


# --------------------------------------------------------------------------- implicit TLS


@pytest.mark.slow
def test_implicit_tls_listener_with_smtplib(serve) -> None:
    server = serve(tls_port=0)
    assert server.tls_port
    with smtplib.SMTP_SSL(server.host, server.tls_port, context=insecure(), timeout=5) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        client.sendmail("a@client.test", ["b@x.test"], MESSAGE)
    [message] = server.wait_for(1)
    record = next(s for s in server.sessions if s.id == message.session_id)
    assert record.listener == "smtps" and record.tls


@pytest.mark.slow
def test_implicit_tls_with_aiosmtplib(serve) -> None:
    server = serve(tls_port=0)

    async def send() -> None:
        await aiosmtplib.send(
            MESSAGE,
            sender="a@client.test",
            recipients=["b@x.test"],
            hostname=server.host,
            port=server.tls_port,
            use_tls=True,
            tls_context=insecure(),
        )

    asyncio.run(send())
    assert server.wait_for(1)[0].rcpt_tos == ["b@x.test"]


def test_aiosmtplib_start_tls_and_login(serve) -> None:
    server = serve(HARDENED)

    async def send() -> None:
        await aiosmtplib.send(
            MESSAGE,
            sender="alice@client.test",
            recipients=["b@x.test"],
            hostname=server.host,
            port=server.port,
            start_tls=True,
            tls_context=insecure(),
            username="alice",
            password="s3cret",
        )

    asyncio.run(send())
    assert server.wait_for(1)[0].mail_from == "alice@client.test"


# --------------------------------------------------------------------------- AUTH


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_mechanisms(serve, mechanism: str) -> None:
    server = serve(f"server: {{auth: {{mechanisms: [{mechanism}], users: {{alice: s3cret}}}}}}\n")
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].strip() == mechanism
        assert client.login("alice", "s3cret") == (235, b"2.7.0 Authentication successful")
    with connect(server) as client, pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        client.login("alice", "wrong")
    assert (caught.value.smtp_code, caught.value.smtp_error) == (
        535,
        b"5.7.8 Authentication credentials invalid",
    )


def test_hardened_submission_server(serve) -> None:
    server = serve(HARDENED)
    with connect(server) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")  # only after STARTTLS
        assert client.docmd("AUTH PLAIN x") == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.starttls(context=insecure())
        client.ehlo("client.test")
        assert client.has_extn("auth")
        assert client.mail("alice@client.test") == (530, b"5.7.0 Authentication required")
        client.rset()
        client.login("alice", "s3cret")
        assert client.sendmail("alice@client.test", ["b@x.test"], MESSAGE) == {}
    assert server.wait_for_sessions(1)[0].user == "alice"


@pytest.mark.parametrize(
    "reply",
    [
        "454 4.7.0 Temporary authentication failure",
        "534 5.7.9 Authentication mechanism is too weak",
        "538 5.7.11 Encryption required for requested authentication mechanism",
    ],
)
def test_auth_rules(serve, reply: str) -> None:
    server = serve(
        "server: {auth: {mechanisms: [PLAIN], users: {alice: s3cret}}}\n"
        f"rules:\n  - on: auth\n    reply: {reply}\n"
    )
    with connect(server) as client, pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        client.login("alice", "s3cret")
    code, _, text = reply.partition(" ")
    assert (caught.value.smtp_code, caught.value.smtp_error) == (int(code), text.encode())


def test_auth_user_rule_and_abort(serve, raw_client) -> None:
    server = serve(
        "server: {auth: {mechanisms: [LOGIN], users: {alice: a, eve: e}}}\n"
        "rules:\n  - on: auth\n    match: {user: eve}\n    reply: 535 5.7.8 Not you\n"
    )
    with connect(server) as client, pytest.raises(smtplib.SMTPAuthenticationError):
        client.login("eve", "e")
    client = raw_client(server)
    client.reply()
    client.send("EHLO c\r\nAUTH LOGIN\r\n")
    client.reply()
    assert client.reply() == ["334 VXNlcm5hbWU6"]  # "Username:"
    client.send("*\r\n")
    assert client.reply() == ["501 5.7.0 Authentication aborted"]


def test_credentials_never_reach_transcripts_or_console(serve) -> None:
    console = io.StringIO()
    server = serve(
        "server: {auth: {mechanisms: [PLAIN, LOGIN], users: {alice: s3cretpw}}}\n", echo=console
    )
    for mechanism in ("PLAIN", "LOGIN"):
        with connect(server) as client:
            client.ehlo("client.test")
            client.user, client.password = "alice", "s3cretpw"
            client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
    server.wait_for_sessions(2)
    secrets = (
        "s3cretpw",
        base64.b64encode(b"s3cretpw").decode(),
        base64.b64encode(b"\x00alice\x00s3cretpw").decode(),
    )
    seen = console.getvalue() + repr([s.to_json() for s in server.sessions])
    assert "AUTH PLAIN ****" in seen
    for secret in secrets:
        assert secret not in seen


# --------------------------------------------------------------------------- extensions


def test_size_advertised_and_enforced(serve) -> None:
    server = serve("server: {size_limit: 1KiB}\n")
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == "1024"
        assert client.mail("a@client.test", ["SIZE=5000"]) == (
            552,
            b"5.3.4 Message size exceeds fixed maximum message size",
        )
        client.rset()
        client.mail("a@client.test")
        client.rcpt("b@x.test")
        assert client.data(b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n") == (
            552,
            b"5.3.4 Message size exceeds fixed maximum message size",
        )
        assert client.noop()[0] == 250
    assert server.messages == []


def test_max_recipients(serve) -> None:
    server = serve("server: {max_recipients: 2}\n")
    with connect(server) as client:
        client.ehlo("client.test")
        client.mail("a@client.test")
        codes = [client.rcpt(f"r{n}@x.test") for n in range(3)]
    assert [c[0] for c in codes] == [250, 250, 452]
    assert codes[2][1] == b"4.5.3 Error: too many recipients"


@pytest.mark.slow
def test_smtputf8(serve) -> None:
    server = serve()
    with connect(server) as client:
        client.command_encoding = "utf-8"  # smtplib only sends UTF-8 when told to
        client.ehlo("client.test")
        assert client.mail("jörg@client.test") == (
            553,
            b"5.6.7 SMTPUTF8 is required for a non-ASCII address",
        )
        assert client.mail("jörg@client.test", ["SMTPUTF8"])[0] == 250
        assert client.rcpt("пример@x.test")[0] == 250


def test_8bitmime_and_dsn_parameters_are_recorded(serve) -> None:
    server = serve()
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test", ["BODY=8BITMIME", "RET=HDRS", "ENVID=abc123"])[0] == 250
        assert client.rcpt("b@x.test", ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b@x.test"])[0] == 250
        client.data(MESSAGE)
    [message] = server.wait_for(1)
    assert message.mail_options == ["BODY=8BITMIME", "RET=HDRS", "ENVID=abc123"]
    assert message.rcpt_options == {"b@x.test": ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b@x.test"]}


def test_dsn_parameters_refused_when_dsn_is_not_advertised(serve) -> None:
    server = serve("server: {extensions: [PIPELINING, ENHANCEDSTATUSCODES]}\n")
    with connect(server) as client:
        client.ehlo("client.test")
        assert client.mail("a@client.test", ["RET=HDRS"]) == (555, b"5.5.4 Unsupported option: RET")
        client.mail("a@client.test")
        assert client.rcpt("b@x.test", ["NOTIFY=NEVER"]) == (
            555,
            b"5.5.4 Unsupported option: NOTIFY",
        )


def test_line_length_limit(serve, raw_client) -> None:
    client = raw_client(serve("server: {max_line_length: 100}\n"))
    client.reply()
    client.send("NOOP " + "x" * 200 + "\r\n")
    assert client.reply() == ["500 5.5.2 Line too long"]
    client.send("NOOP " + "x" * 5000 + "\r\n")  # longer than the read buffer, too
    assert client.reply() == ["500 5.5.2 Line too long"]
    client.send("NOOP\r\n")
    assert client.reply() == ["250 2.0.0 Ok"]


@pytest.mark.slow
def test_idle_timeout_says_421(serve, raw_client) -> None:
    server = serve("server: {idle_timeout: 300ms}\n")
    client = raw_client(server)
    client.reply()
    assert client.reply() == ["421 4.4.2 mx.fakesmtp.test Error: timeout exceeded"]
    assert client.closed()
    assert server.wait_for_sessions(1)[0].end == "timeout"


# --------------------------------------------------------------------------- swaks

SWAKS = shutil.which("swaks")
needs_swaks = pytest.mark.skipif(
    SWAKS is None, reason="swaks is not installed (apt-get install swaks); .ci/run installs it"
)


def swaks(server: FakeSMTP, *args: str) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    return subprocess.run(
        [
            SWAKS,
            "--server",
            f"{server.host}:{server.port}",
            "--from",
            "alice@client.test",
            "--to",
            "bob@x.test",
            "--helo",
            "client.test",
            "--timeout",
            "10",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@needs_swaks
@pytest.mark.slow
def test_swaks_cram_md5_and_pipelining(serve) -> None:
    server = serve("server: {auth: {mechanisms: [CRAM-MD5], users: {alice: s3cret}}}\n")
    done = swaks(
        server,
        "--auth",
        "CRAM-MD5",
        "--auth-user",
        "alice",
        "--auth-password",
        "s3cret",
        "--pipeline",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0 Authentication successful" in done.stdout
    assert server.wait_for(1)[0].rcpt_tos == ["bob@x.test"]
    refused = swaks(
        server, "--auth", "CRAM-MD5", "--auth-user", "alice", "--auth-password", "wrong"
    )
    assert refused.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in refused.stdout


@needs_swaks
@pytest.mark.slow
def test_swaks_hardened_submission(serve) -> None:
    server = serve(HARDENED)
    done = swaks(
        server, "--tls", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "s3cret"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    without_tls = swaks(
        server, "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "s3cret"
    )
    assert without_tls.returncode != 0
