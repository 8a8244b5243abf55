"""Limits, timeouts, vanishing clients, internal errors, shutdown and swaps, over real sockets.

Each limit is set small in the scenario so the test is quick. Nothing here measures speed
(that is benchmarks/robustness.py); a test only waits for what the server must do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import resource
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fakesmtp import FakeSMTP
from fakesmtp.stages import Stage

from .conftest import RawClient

REPLY_LINE = re.compile(r"^[2-5]\d\d[ -][\x20-\x7e]*$")


# ------------------------------------------------------------------------- helpers


class Raw(RawClient):
    """The shared byte-level client, checking every reply line it reads is well formed."""

    def line(self) -> str:
        line = super().line()
        assert line.isascii() and REPLY_LINE.match(line), f"malformed reply line {line!r}"
        return line

    def reply(self) -> str:  # type: ignore[override]
        """One whole reply, its lines joined with newlines."""
        return "\n".join(super().reply())

    def command(self, line: str) -> str:
        self.send(line + "\r\n")
        return self.reply()

    def reset(self) -> None:
        """Vanish with a TCP RST: SO_LINGER with a zero timeout, then close."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count(server: FakeSMTP) -> int:
    """Tasks alive on the server's loop, counted on that loop."""
    assert server._loop is not None
    future = asyncio.run_coroutine_threadsafe(_count_tasks(), server._loop)
    return future.result(5)


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


def ensure_fd_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files to ``wanted``, or skip the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture
def start(serve: Callable[..., FakeSMTP]) -> Callable[..., FakeSMTP]:
    """conftest's ``serve`` (errors_expected=True for a test that provokes one)."""
    return serve


def connect(server: FakeSMTP, timeout: float = 5.0) -> Raw:
    client = Raw(server.host, server.port, timeout)
    assert client.reply().startswith("220 "), "no banner"
    return client


# ------------------------------------------------------------------------- connections


def test_max_connections_refuses_the_one_too_many(start: Callable[..., FakeSMTP]) -> None:
    server = start("server: {max_connections: 3}")
    clients = [connect(server) for _ in range(3)]
    extra = Raw(server.host, server.port)
    assert extra.reply() == "421 4.7.0 Too many connections, try again later"
    assert extra.closed()
    # One leaves: there is room again.
    assert clients[0].command("QUIT").startswith("221 ")
    assert clients[0].closed()
    wait_until(lambda: len(server.runtime.active) == 2, 3, "the session to end")
    again = connect(server)
    assert again.command("NOOP") == "250 2.0.0 Ok"
    refused = [s for s in server.sessions if s.end == "too many connections"]
    assert len(refused) == 1


@pytest.mark.slow
def test_a_burst_of_1000_connections_all_get_a_banner(start: Callable[..., FakeSMTP]) -> None:
    """Listen backlog: asyncio's default of 100 leaves part of such a burst without a banner."""
    count = 1000
    ensure_fd_limit(2 * count + 200)  # both ends live in this process
    server = start()

    async def one() -> tuple[bytes, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        return await reader.readline(), writer

    async def burst() -> list[bytes]:
        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 30)
        for _, writer in results:
            writer.close()
        return [banner for banner, _ in results]

    banners = asyncio.run(burst())
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    got = sum(b.startswith(b"220 ") for b in banners)
    assert got == count, f"{got} banners of {count} (net.core.somaxconn = {somaxconn})"
    wait_until(lambda: not server.runtime.active, 10, "every session to end")


# ------------------------------------------------------------------------- lines and sizes


def test_line_too_long_is_refused_and_the_session_goes_on(
    start: Callable[..., FakeSMTP],
) -> None:
    server = start("server: {max_line_length: 100}")
    client = connect(server)
    assert client.command("NOOP " + "x" * 93) == "250 2.0.0 Ok"  # exactly 100 with CRLF
    assert client.command("NOOP " + "x" * 94) == "500 5.5.2 Line too long"
    # Far past the reader's buffer, sent in pieces: refused once, memory stays bounded.
    for _ in range(100):
        client.send(b"y" * 10_000)
    assert client.command("") == "500 5.5.2 Line too long"
    assert client.command("NOOP") == "250 2.0.0 Ok"
    client.send("QUIT\r\n")
    client.reply()
    [record] = server.wait_for_sessions(1)
    commands = [e.command for e in record.exchanges]
    assert commands.count("<line too long>") == 2


def test_long_auth_response_line_is_refused(start: Callable[..., FakeSMTP]) -> None:
    server = start("server: {auth: {mechanisms: [LOGIN], users: {alice: s3cret}}}")
    client = connect(server)
    client.command("EHLO client.test")
    assert client.command("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert client.command("A" * 20_000) == "500 5.5.6 Authentication Exchange line is too long"
    assert client.command("NOOP") == "250 2.0.0 Ok"


@pytest.mark.parametrize("answer", ["*", "A" * 20_000], ids=["abort", "too-long"])
def test_plain_challenge_answered_once(start: Callable[..., FakeSMTP], answer: str) -> None:
    server = start("server: {auth: {mechanisms: [PLAIN], users: {alice: s3cret}}}")
    client = connect(server)
    client.command("EHLO client.test")
    assert client.command("AUTH PLAIN") == "334 "  # RFC 4954 4: with its space
    assert client.command(answer).startswith(("501 5.7.0", "500 5.5.6"))
    assert client.command("NOOP") == "250 2.0.0 Ok"


def test_message_size_limit(start: Callable[..., FakeSMTP]) -> None:
    server = start("server: {size_limit: 1KiB}")
    client = connect(server)
    assert "250-SIZE 1024" in client.command("EHLO client.test")
    refused = "552 5.3.4 Message size exceeds fixed maximum message size"
    assert client.command("MAIL FROM:<a@client.test> SIZE=2048") == refused
    assert client.command("MAIL FROM:<a@client.test>").startswith("250 ")
    assert client.command("RCPT TO:<b@mx.test>").startswith("250 ")
    assert client.command("DATA").startswith("354 ")
    client.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 30)
    assert client.command(".") == refused
    assert server.messages == []
    # The session goes on: a message within the limit is accepted.
    client.command("MAIL FROM:<a@client.test>")
    client.command("RCPT TO:<b@mx.test>")
    client.command("DATA")
    client.send(b"Subject: small\r\n\r\nok\r\n")
    assert client.command(".").startswith("250 2.0.0 Ok: queued as ")
    assert [m.subject for m in server.messages] == ["small"]


# ------------------------------------------------------------------------- timeouts


@pytest.mark.slow
def test_idle_timeout_says_421_then_closes(start: Callable[..., FakeSMTP]) -> None:
    server = start("server: {idle_timeout: 0.5s}")
    client = connect(server)
    assert client.command("EHLO client.test").startswith("250")
    started = time.monotonic()
    assert client.reply() == "421 4.4.2 mx.fakesmtp.test Error: timeout exceeded"
    assert client.closed()
    assert 0.3 < time.monotonic() - started < 3
    [record] = server.wait_for_sessions(1)
    assert record.end == "timeout"


@pytest.mark.slow
def test_bytes_without_a_line_end_do_not_restart_the_idle_timer(
    start: Callable[..., FakeSMTP],
) -> None:
    server = start("server: {idle_timeout: 0.6s, command_timeout: 1m}")
    client = connect(server)
    started = time.monotonic()
    client.sock.settimeout(0.1)
    reply = b""
    while b"\r\n" not in reply and time.monotonic() - started < 5:
        client.send(b"x")
        with contextlib.suppress(TimeoutError):
            reply += client.sock.recv(1024)
    assert reply.startswith(b"421 4.4.2 "), reply
    assert time.monotonic() - started < 3


@pytest.mark.slow
def test_command_timeout_cuts_a_client_trickling_one_line(
    start: Callable[..., FakeSMTP],
) -> None:
    server = start("server: {idle_timeout: 10s, command_timeout: 0.5s}")
    client = connect(server)
    assert client.command("EHLO client.test").startswith("250")
    started = time.monotonic()
    client.sock.settimeout(0.1)
    reply = b""
    for byte in b"NOOP" + b" x" * 100:  # one byte every 0.1 s, never a line end
        try:
            client.send(bytes([byte]))
            reply += client.sock.recv(1024)
        except TimeoutError:
            continue
        except OSError:
            break
        if b"\r\n" in reply:
            break
    elapsed = time.monotonic() - started
    assert reply.startswith(b"421 4.4.2 mx.fakesmtp.test Error: timeout exceeded"), reply
    assert 0.4 < elapsed < 3, elapsed  # the command timeout, long before the 10 s idle one
    assert client.closed()
    [record] = server.wait_for_sessions(1)
    assert record.end == "command timeout"
    assert record.exchanges[-1].note == "command timeout"


@pytest.mark.slow
def test_a_slow_line_finished_in_time_is_served(start: Callable[..., FakeSMTP]) -> None:
    server = start("server: {idle_timeout: 10s, command_timeout: 3s}")
    client = connect(server)
    for byte in b"NOOP\r":
        client.send(bytes([byte]))
        time.sleep(0.1)
    assert client.command("") == "250 2.0.0 Ok"
    # The allowance is per line: the next line gets its own.
    for byte in b"NOOP\r":
        client.send(bytes([byte]))
        time.sleep(0.1)
    assert client.command("") == "250 2.0.0 Ok"


@pytest.mark.slow
def test_a_client_that_never_reads_is_cut_at_the_idle_timeout(
    start: Callable[..., FakeSMTP],
) -> None:
    """Pipelined commands, replies never read: close() would wait for ever to flush them."""
    server = start("server: {idle_timeout: 0.5s}")
    assert server.runtime is not None
    fds = fd_count()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.setblocking(False)
    data = b"EHLO client.test\r\n" * 100_000  # ~17 MB of replies: more than socket buffers
    sent, blocked_since = 0, None
    with contextlib.suppress(OSError):
        while sent < len(data):
            try:
                sent += sock.send(data[sent : sent + 65536])
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 0.3:
                    break  # the server stopped reading: its replies have nowhere to go
                time.sleep(0.01)
    # The client is still there, reading nothing; the server must let go all the same.
    wait_until(lambda: not server.runtime.active, 10, "the session to end")
    [record] = server.wait_for_sessions(1)
    assert record.end == "timeout"
    sock.close()
    wait_until(lambda: fd_count() <= fds, 5, f"file descriptors back to {fds}")


def test_too_many_errors_closes_with_421(start: Callable[..., FakeSMTP]) -> None:
    server = start("server: {max_errors: 3}")
    client = connect(server)
    client.send("BOGUS\r\nMAIL FROM:<\r\nXYZZY\r\nNOOP\r\n")  # pipelined
    assert client.reply() == "500 5.5.2 Error: command not recognized"
    assert client.reply() == "503 5.5.1 Error: send HELO/EHLO first"
    assert client.reply() == "500 5.5.2 Error: command not recognized"
    assert client.reply() == "421 4.7.0 Too many errors, closing connection"
    assert client.closed()
    [record] = server.wait_for_sessions(1)
    assert record.end == "too many errors"


def test_a_scenario_timeout_must_be_positive() -> None:
    from fakesmtp.scenario import ScenarioError, load_scenario

    for key in ("idle_timeout", "command_timeout"):
        with pytest.raises(ScenarioError, match=f"server.{key}"):
            load_scenario(f"server: {{{key}: 0s}}")
    assert load_scenario("server: {command_timeout: 2s}").server.command_timeout == 2.0


# ------------------------------------------------------------------------- internal errors


def _send(server: FakeSMTP, smtp: smtplib.SMTP | None = None, subject: str = "hi") -> None:
    message = f"Subject: {subject}\r\n\r\nHello.\r\n"
    smtp = smtp or smtplib.SMTP(server.host, server.port, timeout=5)
    smtp.sendmail("alice@client.test", ["bob@mx.test"], message)


def test_store_failure_answers_451_and_keeps_nothing(
    start: Callable[..., FakeSMTP], caplog: pytest.LogCaptureFixture
) -> None:
    server = start(errors_expected=True)
    assert server.store is not None
    real_save = server.store.save_message

    async def broken_save(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    server.store.save_message = broken_save  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="fakesmtp")
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            _send(server, smtp)
        assert refused.value.smtp_code == 451
        assert refused.value.smtp_error == b"4.3.0 Internal error, try again later"
        assert server.messages == []
        # Transient and private: the session goes on, and the next try gets through.
        server.store.save_message = real_save  # type: ignore[method-assign]
        smtp.rset()
        _send(server, smtp, subject="retried")
    assert [m.subject for m in server.messages] == ["retried"]
    assert [type(e) for e in server.errors] == [RuntimeError]
    logged = [r for r in caplog.records if r.name == "fakesmtp" and r.levelno == logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback
    # Recorded in the transcript as what it is, with the reply the client got.
    record = server.wait_for_sessions(1)[0]
    end_of_data = [(e.reply, e.note) for e in record.exchanges if e.stage == "end_of_data"]
    assert end_of_data[:2] == [
        (None, "internal error: RuntimeError"),
        ("451 4.3.0 Internal error, try again later", None),
    ]


def test_a_bug_in_a_verb_answers_451_not_a_python_name(start: Callable[..., FakeSMTP]) -> None:
    server = start(errors_expected=True)
    assert server.runtime is not None
    engine = server.runtime.profile.engine
    real_decide = engine.decide

    def buggy(stage: Stage, facts: Any) -> Any:
        if stage is Stage.RCPT:
            return {}["no such key"]  # a KeyError, as a real bug would raise
        return real_decide(stage, facts)

    engine.decide = buggy  # type: ignore[method-assign]
    client = connect(server)
    client.command("EHLO client.test")
    assert client.command("MAIL FROM:<a@client.test>") == "250 2.1.0 Ok"
    assert client.command("RCPT TO:<b@mx.test>") == "451 4.3.0 Internal error, try again later"
    engine.decide = real_decide  # type: ignore[method-assign]
    assert client.command("RCPT TO:<b@mx.test>") == "250 2.1.5 Ok"
    assert [type(e) for e in server.errors] == [KeyError]
    client.command("QUIT")
    record = server.wait_for_sessions(1)[0]
    assert any(e.note == "internal error: KeyError" for e in record.exchanges)


def test_a_bug_at_the_banner_closes_with_421(start: Callable[..., FakeSMTP]) -> None:
    server = start(errors_expected=True)
    assert server.runtime is not None
    engine = server.runtime.profile.engine

    def buggy(stage: Stage, facts: Any) -> Any:
        raise ZeroDivisionError("oops")

    engine.decide = buggy  # type: ignore[method-assign]
    client = Raw(server.host, server.port)
    assert client.reply() == "421 4.3.0 Internal error, closing connection"
    assert client.closed()
    assert [type(e) for e in server.errors] == [ZeroDivisionError]


def test_a_broken_console_never_becomes_an_smtp_error(start: Callable[..., FakeSMTP]) -> None:
    """`fakesmtp serve | head`: once the pipe is gone, every console write fails."""

    class GoneStream:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self) -> bool:
            return False

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    server = start(echo=GoneStream())
    _send(server)
    assert len(server.messages) == 1


# ------------------------------------------------------------------------- vanishing clients

TLS_SCENARIO = """
server:
  idle_timeout: 1s
  tls: {starttls: true}
  auth: {mechanisms: [PLAIN, LOGIN], users: {alice: s3cret}}
rules:
  - {on: vrfy, action: hang}
"""


def client_hello() -> bytes:
    """The first flight of a real TLS handshake, made in memory."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _to_data(client: Raw) -> None:
    client.command("EHLO client.test")
    client.command("MAIL FROM:<a@client.test>")
    client.command("RCPT TO:<b@mx.test>")
    assert client.command("DATA").startswith("354 ")


def _vanish_mid_command(server: FakeSMTP) -> None:
    client = connect(server)
    client.send(b"MAIL FRO")
    time.sleep(0.01)
    client.close()


def _reset_mid_command(server: FakeSMTP) -> None:
    client = connect(server)
    client.send(b"EHLO client.test\r\nMAIL FRO")
    client.reset()


def _vanish_mid_body(server: FakeSMTP) -> None:
    client = connect(server)
    _to_data(client)
    client.send(b"Subject: half\r\n\r\n" + b"x" * 100_000)
    client.close()


def _reset_mid_body(server: FakeSMTP) -> None:
    client = connect(server)
    _to_data(client)
    client.send(b"Subject: half\r\n\r\nsome lines\r\n")
    client.reset()


def _vanish_after_final_dot(server: FakeSMTP) -> None:
    client = connect(server)
    _to_data(client)
    client.send(b"Subject: whole\r\n\r\nbody\r\n.\r\n")
    client.reset()  # the 250 (or 451) meets a reset socket


def _vanish_mid_long_line(server: FakeSMTP) -> None:
    client = connect(server)
    client.send(b"z" * 200_000)
    client.close()


def _vanish_during_auth(server: FakeSMTP) -> None:
    client = connect(server)
    client.command("EHLO client.test")
    assert client.command("AUTH LOGIN").startswith("334 ")
    client.close()


def _vanish_while_hung(server: FakeSMTP) -> None:
    client = connect(server)
    client.send(b"VRFY bob\r\n")  # the rule hangs: no reply until the idle timeout
    time.sleep(0.05)
    client.close()


def _starttls(server: FakeSMTP) -> Raw:
    client = connect(server)
    client.command("EHLO client.test")
    assert client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    return client


def _vanish_during_tls_handshake(server: FakeSMTP) -> None:
    client = _starttls(server)
    hello = client_hello()
    client.send(hello[: len(hello) // 2])
    client.close()


def _reset_after_client_hello(server: FakeSMTP) -> None:
    client = _starttls(server)
    client.send(client_hello())
    client.sock.recv(1)  # the server's answer has begun
    client.reset()


def _silent_after_starttls(server: FakeSMTP) -> Raw:
    return _starttls(server)  # kept open, silent: the idle timeout (1 s) must end it


def _vanish_inside_tls(server: FakeSMTP) -> None:
    client = _starttls(server)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(client.sock, server_hostname="localhost")
    tls.sendall(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@x.test>\r\nDA")
    tls.recv(1024)
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()  # a reset, under TLS


def _vanish_during_smtps_handshake(server: FakeSMTP) -> None:
    assert server.tls_port
    client = Raw(server.host, server.tls_port)
    hello = client_hello()
    client.send(hello[:50])
    client.close()


VANISHING: dict[str, Callable[[FakeSMTP], Raw | None]] = {
    "mid-command": _vanish_mid_command,
    "reset-mid-command": _reset_mid_command,
    "mid-body": _vanish_mid_body,
    "reset-mid-body": _reset_mid_body,
    "after-final-dot": _vanish_after_final_dot,
    "mid-long-line": _vanish_mid_long_line,
    "during-auth": _vanish_during_auth,
    "while-hung": _vanish_while_hung,
    "during-tls-handshake": _vanish_during_tls_handshake,
    "reset-after-client-hello": _reset_after_client_hello,
    "silent-after-starttls": _silent_after_starttls,
    "inside-tls": _vanish_inside_tls,
    "during-smtps-handshake": _vanish_during_smtps_handshake,
}


@pytest.mark.parametrize("where", list(VANISHING))
@pytest.mark.slow
def test_vanishing_clients_leave_nothing_behind(start: Callable[..., FakeSMTP], where: str) -> None:
    server = start(TLS_SCENARIO, tls_port=0)
    assert server.runtime is not None
    # Warm up (first TLS handshake, first message), then take the idle figures.
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.sendmail("a@client.test", ["b@mx.test"], "Subject: warm\r\n\r\nup\r\n")
    wait_until(lambda: not server.runtime.active, 5, "the warm-up session to end")
    fds, tasks = fd_count(), task_count(server)

    kept = [VANISHING[where](server) for _ in range(10)]

    wait_until(lambda: not server.runtime.active, 10, "every session to end")
    for client in kept:
        if client is not None:
            assert client.closed(1)  # by the server
            client.close()
    wait_until(lambda: fd_count() <= fds, 5, f"file descriptors back to {fds}")
    wait_until(lambda: task_count(server) <= tasks, 5, f"tasks back to {tasks}")
    ended = [s for s in server.sessions if s.ended_at is not None]
    assert len(ended) >= 10 + 1 - (10 if where == "during-smtps-handshake" else 0)
    # And it still serves.
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        assert smtp.noop()[0] == 250


# ------------------------------------------------------------------------- graceful shutdown


class Serve:
    """``python -m fakesmtp serve`` in a subprocess, its stdout read by a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fakesmtp", "serve", "--port", "0", "--no-api", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        stdout = self.process.stdout
        threading.Thread(target=lambda: [self.lines.put(x) for x in stdout], daemon=True).start()
        first = self.lines.get(timeout=20)
        match = re.search(r"SMTP on ([\d.]+):(\d+)", first)
        assert match, first
        self.host, self.port = match[1], int(match[2])

    def output(self) -> list[str]:
        out = []
        while not self.lines.empty():
            out.append(self.lines.get())
        return out


@pytest.mark.slow
def test_sigterm_says_421_to_idle_clients_finishes_writes_and_exits_0() -> None:
    serve = Serve()
    try:
        idle = [Raw(serve.host, serve.port) for _ in range(3)]
        for client in idle:
            assert client.reply().startswith("220 ")
            assert client.command("EHLO client.test").startswith("250")
        busy = Raw(serve.host, serve.port)
        busy.reply()
        _to_data(busy)
        busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        time.sleep(0.2)

        serve.process.send_signal(signal.SIGTERM)
        for client in idle:
            assert client.reply() == "421 4.3.2 Service shutting down"
            assert client.closed()
        # The client in the middle of its message finishes it: 250, then the 421.
        busy.send(b"second half\r\n.\r\n")
        assert busy.reply().startswith("250 2.0.0 Ok: queued as ")
        assert busy.command("NOOP") == "421 4.3.2 Service shutting down"
        assert busy.closed()
        assert serve.process.wait(10) == 0
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait()
    stdout = serve.output()
    assert stdout and stdout[-1].strip() == "fakesmtp: stopped"
    assert serve.process.stderr is not None
    stderr = serve.process.stderr.read()
    assert "Traceback" not in stderr, stderr


# ------------------------------------------------------------------------- swapping under load

SCENARIO_A = """
server:
  hostname: a.test
  extensions: [PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES]
rules:
  - {on: mail, reply: "250 2.1.0 sender ok by A"}
  - {on: rcpt, reply: "250 2.1.5 recipient ok by A"}
  - {on: end_of_data, reply: "250 2.0.0 queued by A"}
"""
SCENARIO_B = """
server:
  hostname: b.test
  extensions: [PIPELINING, 8BITMIME, SMTPUTF8]
rules:
  - {on: mail, reply: "250 2.1.0 sender ok by B"}
  - {on: rcpt, reply: "250 2.1.5 recipient ok by B"}
  - {on: end_of_data, reply: "250 2.0.0 queued by B"}
"""


def whole(reply: str) -> str | None:
    """Which scenario a reply comes from, "A" or "B"; an assertion error if from both."""
    if reply.startswith(("250-a.test", "250 a.test")):
        assert "ENHANCEDSTATUSCODES" in reply and "SMTPUTF8" not in reply, reply
        return "A"
    if reply.startswith(("250-b.test", "250 b.test")):
        assert "SMTPUTF8" in reply and "ENHANCEDSTATUSCODES" not in reply, reply
        return "B"
    if reply.endswith("by A"):
        assert re.match(r"^250 2\.\d\.\d ", reply), f"A's rule without A's status codes: {reply}"
        return "A"
    if reply.endswith("by B"):
        assert not re.match(r"^250 2\.\d\.\d ", reply), f"B's rule with A's status codes: {reply}"
        return "B"
    raise AssertionError(f"a reply from neither scenario: {reply!r}")


@pytest.mark.slow
def test_swapping_the_scenario_under_load(start: Callable[..., FakeSMTP]) -> None:
    server = start(SCENARIO_A)
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            server.use(SCENARIO_B if swaps % 2 == 0 else SCENARIO_A)
            swaps += 1
            time.sleep(0.001)

    failures: list[str] = []
    seen: set[str] = set()
    sent = [0]

    def sender(n: int) -> None:
        try:
            for i in range(15):
                client = connect(server)
                replies = [client.command("EHLO client.test")]
                client.send(b"MAIL FROM:<a@client.test>\r\n")
                client.send(b"RCPT TO:<b@mx.test>\r\nDATA\r\n")  # pipelined
                replies += [client.reply(), client.reply()]
                assert client.reply().startswith("354 ")
                client.send(f"Subject: {n}-{i}\r\n\r\nbody\r\n".encode())
                time.sleep(0.002)  # a swap may land in the middle of the message
                client.send(b".\r\n")
                replies.append(client.reply())
                assert client.command("QUIT").startswith("221")
                client.close()
                seen.update(whole(reply) or "" for reply in replies)
                sent[0] += 1
        except Exception as error:  # collected: the main thread asserts
            failures.append(f"{type(error).__name__}: {error}")

    swapping = threading.Thread(target=swapper)
    swapping.start()
    senders = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(60)
    stop.set()
    swapping.join(10)
    assert not failures, failures[:3]
    assert sent[0] == 8 * 15 and len(server.messages) == 8 * 15  # no session dropped
    assert seen == {"A", "B"} and swaps > 10


def test_transcript_is_cut_by_bytes_keeping_its_start_and_end(
    start: Callable[..., FakeSMTP],
) -> None:
    server = start()
    assert server.store is not None
    server.store.transcript_limit = 4000  # bytes, roughly: about twenty NOOP exchanges
    client = connect(server)
    assert client.command("EHLO start.test").startswith("250")
    for n in range(200):
        assert client.command(f"NOOP {n}") == "250 2.0.0 Ok"
    record = server.sessions[0]
    assert record.kept_bytes <= 4000
    commands = [e.command for e in record.exchanges]
    assert commands[0] is None and commands[1].startswith("EHLO start.test")  # the start
    assert commands[-1] == "NOOP 199"  # and the end
    data = record.to_json()
    assert data["exchange_count"] == 202  # the banner, EHLO, 200 NOOPs: all counted
    cut = data["cut"]
    assert cut["exchanges"] == 202 - len(record.exchanges) and cut["bytes"] > 0
    assert commands[cut["after"] - 1] is not None and commands[cut["after"]] != "NOOP 0"
