"""Whatever a client sends, every reply is well-formed and the server keeps serving everyone.

Random and malformed command lines, pipelined bursts and out-of-order commands go over a real
socket to a real server, while a well-behaved smtplib client sends mail next to them: each of
its messages must get 250 and be stored, and the server must record no internal error.

What "well-formed" means here (RFC 5321 4.2, with RFC 6531 for UTF-8):
- every line is three digits from 2xx to 5xx, then a space (last line) or a dash, text, CRLF;
  all lines of one reply carry the same code;
- our own texts are printable ASCII, and client text we quote in our own error replies (a bad
  parameter, an unknown option) is reduced to printable ASCII and bounded;
- the one place UTF-8 may appear is a scenario's template field (``{to}``, ``{from}``,
  ``{helo}``) echoing what the client sent, and then only printable text: addresses that are
  not printable (C0/C1 controls, bidi overrides, undecodable bytes) are refused with 501 before
  they can reach a reply, and a HELO name must be printable to be accepted.

Hypothesis runs derandomized with a bounded example count, so the test takes a few seconds and
fails the same way every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakesmtp import FakeSMTP

from .conftest import served

# One reply line. Printable ASCII for our own texts...
ASCII_LINE = re.compile(rb"^[2-5]\d\d[ -][\x20-\x7e]*\r\n\Z")
# ...and, for lines produced by a template that echoes client text, any printable UTF-8.
HEAD = re.compile(rb"^[2-5]\d\d[ -]")
TLS_GO = b"220 2.0.0 Ready to start TLS\r\n"
ECHO_MARK = b"echo:"  # every templated rule below says this, and no built-in text does
MAX_REPLY_LINE = 512  # RFC 5321 4.5.3.1.5, CRLF included

FUZZ_SCENARIO = """
name: fuzz
server:
  address_replies: true
  max_recipients: 5
  size_limit: 64KiB
  tls: {starttls: true}
  auth: {mechanisms: [PLAIN, LOGIN, CRAM-MD5], users: {alice: s3cret}}
rules:
  - on: mail
    match: {from: "*@echo.test"}
    reply: "451 4.7.1 echo: from <{from}> helo {helo} client {client}"
  - on: rcpt
    match: {to: "*@echo.test"}
    reply: "550 5.1.1 echo: to <{to}> from <{from}> helo {helo}"
  - on: end_of_data
    match: {from: "*@echo-data.test"}
    reply: {code: 554, status: 5.7.1, text: ["echo: to {to}", "echo: size {size} helo {helo}"]}
"""


def check_stream(data: bytes) -> list[bytes]:
    """Check every reply line in ``data`` (a whole conversation's replies); return the lines."""
    lines = data.split(b"\r\n")
    assert lines[-1] == b"", f"a reply does not end with CRLF: {lines[-1]!r}"
    out = []
    code_of_reply: bytes | None = None
    for raw in lines[:-1]:
        line = raw + b"\r\n"
        out.append(line)
        assert b"\n" not in raw and b"\r" not in raw, f"bare CR or LF in a reply: {line!r}"
        assert len(line) <= MAX_REPLY_LINE, f"reply line of {len(line)} octets: {line[:80]!r}..."
        if ECHO_MARK in line:
            assert HEAD.match(line), f"malformed reply line: {line!r}"
            text = line[4:-2].decode("utf-8")  # strict: raises on anything but UTF-8
            assert text.isprintable(), f"unprintable text echoed: {line!r}"
        else:
            assert ASCII_LINE.match(line), f"malformed reply line: {line!r}"
        code = line[:3]
        if code_of_reply is not None:
            assert code == code_of_reply, f"a multi-line reply changed code: {line!r}"
        code_of_reply = code if line[3:4] == b"-" else None
    assert code_of_reply is None, "a multi-line reply has no last line"
    return out


# ------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[FakeSMTP]:
    with served(FUZZ_SCENARIO, max_messages=100_000) as server:
        yield server


class GoodClient(threading.Thread):
    """Sends mail with smtplib, one session per message, until told to stop."""

    def __init__(self, server: FakeSMTP) -> None:
        super().__init__(name="good-client", daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.sent: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            message = EmailMessage()
            message["From"] = "good@client.test"
            message["To"] = "bob@mx.test"
            message["Subject"] = f"good {n}"
            message["Message-ID"] = f"<good-{n}-{time.monotonic_ns()}@client.test>"
            message.set_content("Hello.\n.leading dot\n")
            try:
                with smtplib.SMTP(self.server.host, self.server.port, timeout=10) as smtp:
                    refused = smtp.send_message(message)
                if refused:
                    self.failures.append(f"refused: {refused}")
                else:
                    self.sent.append(message["Message-ID"])
            except (smtplib.SMTPException, OSError) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
            time.sleep(0.005)


@pytest.fixture
def good_client(fuzz_server: FakeSMTP) -> Iterator[GoodClient]:
    client = GoodClient(fuzz_server)
    client.start()
    yield client
    client.stop.set()
    client.join(15)
    assert not client.failures, client.failures[:5]
    assert client.sent, "the well-behaved client sent nothing"
    stored = {m.message["Message-ID"] for m in fuzz_server.messages}
    missing = [mid for mid in client.sent if mid not in stored]
    assert not missing, f"acknowledged with 250 but not stored: {missing[:5]}"


TERMINATOR = b"\r\n.\r\nHELP\r\n"


def converse(
    server: FakeSMTP, chunks: list[bytes], timeout: float = 10.0, terminator: bytes = TERMINATOR
) -> bytes:
    """Read the banner, send ``chunks`` back to back, then a terminator; return all replies.

    The terminator ends a message if one is open, then asks HELP: its 214 is the last reply.
    (HELP is never among the fuzzed verbs.) The server may also close the connection (QUIT,
    421 after too many errors, a failed STARTTLS): then everything up to EOF is returned.
    """
    received = b""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        for chunk in [*chunks, terminator]:
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed first (QUIT, 421...): read what it said
                break
        deadline = time.monotonic() + timeout
        while not (received.startswith(b"214 ") or b"\r\n214 " in received):
            if TLS_GO in received:
                break  # the server now waits for a TLS handshake we will not make: hang up
            assert time.monotonic() < deadline, f"no end of conversation: {received[-300:]!r}"
            try:
                data = sock.recv(65536)
            except ConnectionResetError:  # a reset after the server closed with unread input
                break
            if not data:
                break
            received += data
    return received


# ------------------------------------------------------------------------- strategies

VERBS = [
    b"HELO",
    b"EHLO",
    b"ehlo",
    b"MAIL FROM:",
    b"mail from:",
    b"MAIL FROM: ",
    b"MAIL",
    b"RCPT TO:",
    b"Rcpt To:",
    b"RCPT",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"VRFY",
    b"EXPN",
    b"AUTH",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH CRAM-MD5",
    b"STARTTLS",
    b"QUIT",
    b"BDAT",
    b"ETRN",
    b"XYZZY",
    b"",
]
ADDRESSES = [
    b"<alice@client.test>",
    b"<>",
    b"<",
    b">",
    b"<<a@b.test>>",
    b"<@relay.test,@other.test:a@b.test>",
    b"a@b.test",
    b"<a@echo.test>",
    b"<x@echo-data.test>",
    b"<rcpt-550@x.test>",
    b"<rcpt-421@x.test>",
    b"<mail-451@x.test>",
    b"<data-554@x.test>",
    b"<end_of_data-552@x.test>",
    "<用户@例子.test>".encode(),
    "<josé@echo.test>".encode(),
    b"<a\x00b@echo.test>",
    b"<a\x1b[31mred@echo.test>",
    "<\u202eevil@echo.test>".encode(),
    "<\u0085nel@echo.test>".encode(),
    b"<\xff\xfe@echo.test>",
    b"<postmaster>",
    b"<" + b"a" * 300 + b"@echo.test>",
    b"<a@" + b"b" * 600 + b".test>",
]
PARAMS = [
    b"SIZE=100",
    b"SIZE=99999999999999",
    b"SIZE=x",
    b"BODY=8BITMIME",
    b"BODY=BINARYMIME",
    b"SMTPUTF8",
    b"RET=FULL",
    b"RET=\x07",
    b"ENVID=abc",
    b"NOTIFY=SUCCESS",
    b"ORCPT=rfc822;a@b.test",
    b"AUTH=<>",
    b"=",
    b"FOO",
    b"\xff=\xfe",
    "ÜBER=1".encode(),
    b"X" * 200,
]
BASE64 = [b"AGFsaWNlAHMzY3JldA==", b"YWxpY2U=", b"czNjcmV0", b"*", b"=", b"!!!", b"AA"]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b""]
JUNK = [b"\x00", b"\x1b[2J", b"\x7f", b"\r", b"\xc3\x28", "\u2028".encode(), b"%s%n", b"{to}"]


@st.composite
def command_line(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind <= 4:  # a verb with an argument built from interesting pieces
        verb = draw(st.sampled_from(VERBS))
        parts = draw(
            st.lists(
                st.one_of(
                    st.sampled_from(ADDRESSES),
                    st.sampled_from(PARAMS),
                    st.sampled_from(BASE64),
                    st.sampled_from(JUNK),
                    st.text(max_size=20).map(str.encode),
                ),
                max_size=4,
            )
        )
        separator = draw(st.sampled_from([b" ", b"", b"  ", b"\t"]))
        line = verb + separator + b" ".join(parts)
    elif kind <= 6:  # message-like lines: dots, headers, empty lines
        line = draw(
            st.sampled_from(
                [b".", b"..", b". ", b".x", b"", b"Subject: hi", b"From: <a@b.test>", b"body"]
            )
        )
    elif kind == 7:  # an overlong line
        line = draw(st.sampled_from([b"NOOP ", b"MAIL FROM:<", b"", b"AUTH PLAIN "]))
        line += b"x" * draw(st.sampled_from([990, 1001, 1500, 5000]))
    else:  # anything at all
        line = draw(st.binary(max_size=120))
    return line + draw(st.sampled_from(ENDINGS))


# Where the random lines start: so that fuzzing also reaches RCPT, DATA and the message.
_GREET = b"EHLO client.test\r\n"
_MAIL = _GREET + b"MAIL FROM:<alice@client.test>\r\n"
_RCPT = _MAIL + b"RCPT TO:<bob@mx.test>\r\n"
PREAMBLES = [
    b"",
    _GREET,
    _MAIL,
    _RCPT,
    _RCPT + b"DATA\r\n",
    b"HELO c.test\r\nMAIL FROM:<x@echo-data.test>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n",
    "EHLO ü.test\r\nMAIL FROM:<ü@b.test> SMTPUTF8\r\nRCPT TO:<ü@echo.test>\r\n".encode(),
]


@st.composite
def burst(draw: st.DrawFn) -> list[bytes]:
    """A sequence of lines, cut into the chunks they are sent in (pipelining)."""
    lines = draw(st.lists(command_line(), min_size=1, max_size=25))
    data = draw(st.sampled_from(PREAMBLES)) + b"".join(lines)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    chunks, start = [], 0
    for cut in [*cuts, len(data)]:
        chunks.append(data[start:cut])
        start = cut
    return [c for c in chunks if c]


# ------------------------------------------------------------------------- the tests


@pytest.mark.slow
def test_fuzzed_command_lines_get_well_formed_replies(
    fuzz_server: FakeSMTP, good_client: GoodClient
) -> None:
    seen_codes: set[bytes] = set()

    @settings(
        max_examples=300,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(burst())
    def one_conversation(chunks: list[bytes]) -> None:
        replies = check_stream(converse(fuzz_server, chunks))
        assert replies and replies[0].startswith(b"220 "), replies[:1]
        seen_codes.update(line[:3] for line in replies)

    one_conversation()
    assert not fuzz_server.errors, fuzz_server.errors
    # The fuzzing reached far into the conversation, not only the "500 unknown" reply.
    for code in (b"250", b"354", b"500", b"501", b"503", b"550"):
        assert code in seen_codes, f"no {code.decode()} reply seen: {sorted(seen_codes)}"
    # And the server still serves a plain client after all that.
    with smtplib.SMTP(fuzz_server.host, fuzz_server.port, timeout=5) as smtp:
        assert smtp.noop()[0] == 250


# ------------------------------------------------------------------------- BDAT (RFC 3030)

BDAT_SCENARIO = (
    FUZZ_SCENARIO.replace(
        "server:\n",
        "server:\n  extensions: [PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, DSN,"
        " CHUNKING, BINARYMIME]\n",
    )
    + """
  - on: bdat
    match: {size: ">100"}
    reply: "552 5.3.4 echo: {size} octets so far from <{from}> helo {helo}"
  - on: bdat
    match: {to: "*@refuse-chunk.test"}
    times: 1
    per: connection
    reply: "451 4.3.0 echo: chunk refused once for <{to}>"
"""
)
CHUNK_PIECES = [
    b".\r\n",
    b"\r\n.\r\n",
    b"QUIT\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"\x00",
    b"\n",
    b"\r",
]
BDAT_SYNTAX = [b"", b"x", b"-1", b"1.5", b"5 LAST x", b"3 last", b"0", b"0 LAST", b"9" * 21]
# Up to this many octets may be announced and not sent: the terminator's padding fills them.
SHORTFALL = 20


@st.composite
def bdat_item(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 6))
    if kind <= 3:  # a chunk: its size right, or a little off either way
        pieces = st.one_of(st.sampled_from(CHUNK_PIECES), st.binary(max_size=60))
        data = b"".join(draw(st.lists(pieces, max_size=8)))
        size = len(data) if kind <= 2 else max(0, len(data) + draw(st.integers(-5, SHORTFALL)))
        last = draw(st.booleans())
        return b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + data
    if kind == 4:  # a BDAT line that is not what RFC 3030 allows
        return b"BDAT " + draw(st.sampled_from(BDAT_SYNTAX)) + b"\r\n"
    # Any other command (a random "BDAT 123456789" could wait for ever: those are chunks above).
    return draw(command_line().filter(lambda line: not line.upper().startswith(b"BDAT")))


_BINARY = b"EHLO client.test\r\nMAIL FROM:<alice@client.test> BODY=BINARYMIME\r\n"
BDAT_PREAMBLES = [
    b"",
    _GREET,
    _RCPT,
    _RCPT + b"BDAT 4\r\nHi\r\n",
    _RCPT + b"BDAT 120\r\n" + b"y" * 120,  # past the bdat rule's 100 octets: refused
    _BINARY + b"RCPT TO:<bob@mx.test>\r\n",
    _MAIL + b"RCPT TO:<a@refuse-chunk.test>\r\n",
    b"EHLO c.test\r\nMAIL FROM:<x@echo-data.test>\r\nRCPT TO:<bob@mx.test>\r\n",
]


@pytest.mark.slow
def test_fuzzed_bdat_conversations_get_well_formed_replies() -> None:
    seen: set[bytes] = set()
    # The padding completes any chunk announced larger than sent, then ends a DATA message.
    terminator = b"X" * (SHORTFALL + 44) + TERMINATOR

    @settings(
        max_examples=150,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.sampled_from(BDAT_PREAMBLES), st.lists(bdat_item(), min_size=1, max_size=12))
    def one_conversation(preamble: bytes, items: list[bytes]) -> None:
        data = preamble + b"".join(items)
        replies = check_stream(converse(server, [data], terminator=terminator))
        assert replies and replies[0].startswith(b"220 "), replies[:1]
        seen.update(line[:3] for line in replies)
        seen.update(b"octets" for line in replies if b"octets received" in line)

    with FakeSMTP(BDAT_SCENARIO) as server:
        one_conversation()
        assert not server.errors, server.errors
        with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
            assert smtp.noop()[0] == 250
        kept = len(server.messages)
    # The fuzzing reached chunks taken, chunks refused by size and rule, bad syntax, and LAST.
    for code in (b"250", b"451", b"501", b"503", b"552", b"octets"):
        assert code in seen, f"no {code.decode()} reply seen: {sorted(seen)}"
    assert kept > 0, "no BDAT message was ever completed"


@pytest.mark.slow
def test_many_concurrent_garbage_connections(
    fuzz_server: FakeSMTP, good_client: GoodClient
) -> None:
    """50 clients at once, each sending a random burst in random pieces with random pauses."""
    rng = random.Random(7)
    pieces = [*VERBS, *ADDRESSES, *PARAMS, *JUNK, b"\r\n", b"\r\n", b"\r\n", b"DATA\r\n"]

    def script() -> list[tuple[bytes, float]]:
        steps = []
        for _ in range(rng.randint(5, 40)):
            data = b" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
            steps.append((data + rng.choice(ENDINGS), rng.choice([0, 0, 0, 0.001, 0.01])))
        return steps

    async def client(steps: list[tuple[bytes, float]]) -> bytes:
        reader, writer = await asyncio.open_connection(fuzz_server.host, fuzz_server.port)
        received = bytearray()

        async def read() -> None:
            while chunk := await reader.read(65536):
                received.extend(chunk)
                if TLS_GO in received:
                    return  # it waits for a TLS handshake, which this client will not make

        reading = asyncio.create_task(read())
        try:
            for data, pause in [*steps, (b"\r\n.\r\nQUIT\r\n", 0.0)]:
                writer.write(data)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        except ConnectionError:
            pass  # the server may close first (421, QUIT, STARTTLS...)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reading, 15)
        writer.close()
        return bytes(received)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(client(script()) for _ in range(50)))

    for received in asyncio.run(main()):
        replies = check_stream(received)
        assert replies[0].startswith(b"220 ")
    assert not fuzz_server.errors, fuzz_server.errors


# ----------------------------------------- aiosmtpd's own flaws, proven gone (one by one)


@pytest.fixture
def server() -> Iterator[FakeSMTP]:
    with served(FUZZ_SCENARIO) as running:
        yield running


def exchange(server: FakeSMTP, *lines: bytes) -> list[bytes]:
    """Send ``lines`` (each gets CRLF) one at a time; return the reply lines after the banner."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        out = []

        def reply() -> None:
            while True:
                line = reader.readline()
                assert line, "connection closed"
                out.append(line)
                if line[3:4] != b"-":
                    return

        reply()
        for line in lines:
            sock.sendall(line + b"\r\n")
            reply()
    check_stream(b"".join(out))
    return out[1:]


def test_unknown_command_is_not_echoed(server: FakeSMTP) -> None:
    # aiosmtpd answers `500 Error: command "X" not recognized`, control bytes and all.
    replies = exchange(server, b"X\x1b[31mRED\x00\x07 arg", b"\xff\xfe", b"")
    assert replies == [b"500 5.5.2 Error: command not recognized\r\n"] * 3


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        # aiosmtpd: `500 Error: (IndexError) string index out of range` or similar.
        (b"MAIL FROM:<", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<>>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL TO:<a@b.test>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<a\x01b@c.test>", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<no-at-sign>", b"501 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<\u202eevil@x.test>".encode(), b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<\xff@x.test> SMTPUTF8", b"501 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<josé@x.test>".encode(), b"553 5.6.7 SMTPUTF8 is required"),
        (b"MAIL FROM:<a@b.test> FOO=\x1b[1m", b"501 5.5.4 Bad parameter syntax: FOO=?[1m"),
        ("MAIL FROM:<a@b.test> ÜBER=1".encode(), b"501 5.5.4 Bad parameter syntax: ?BER=1"),
        (b"MAIL FROM:<a@b.test> BODY=BINARYMIME", b"555 5.5.4 Unsupported option: BODY"),
        (b"EHLO a\x00b", b"501 5.5.4 Syntax: EHLO hostname"),
        (b"EHLO", b"501 5.5.4 Syntax: EHLO hostname"),
    ],
)
def test_bad_syntax_gets_rfc_replies(server: FakeSMTP, line: bytes, reply: bytes) -> None:
    replies = exchange(server, b"EHLO client.test", line)
    assert replies[-1].startswith(reply), replies[-1]


@pytest.mark.parametrize(
    ("address", "reply"),
    [
        (b"<rcpt-to-nowhere>", b"501 5.1.3 Bad recipient address syntax"),
        (b"<a\x1bb@echo.test>", b"501 5.1.3 Bad recipient address syntax"),
        ("<\u0085@echo.test>".encode(), b"501 5.1.3 Bad recipient address syntax"),
        (b"<", b"501 5.5.4 Syntax: RCPT TO:<address>"),
        ("<用户@例子.test>".encode(), b"553 5.6.7 SMTPUTF8 is required"),
    ],
)
def test_bad_recipients_get_rfc_replies(server: FakeSMTP, address: bytes, reply: bytes) -> None:
    replies = exchange(server, b"EHLO client.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:" + address)
    assert replies[-1].startswith(reply), replies[-1]


def test_template_fields_echo_only_printable_bounded_text(server: FakeSMTP) -> None:
    long_local = b"x" * 900
    replies = exchange(
        server,
        "EHLO héllo.test".encode(),
        "MAIL FROM:<josé@b.test> SMTPUTF8".encode(),
        "RCPT TO:<用户@echo.test>".encode(),
        b"RCPT TO:<" + long_local + b"@echo.test>",
    )
    assert (
        replies[-2].decode()
        == "550 5.1.1 echo: to <用户@echo.test> from <josé@b.test> helo héllo.test\r\n"
    )
    # A 900-character address is cut to a bounded field, and the line stays within 512 octets.
    assert replies[-1].startswith(b"550 5.1.1 echo: to <xxx") and b"...>" in replies[-1]
    assert len(replies[-1]) <= MAX_REPLY_LINE


def test_echoed_utf8_stays_within_512_octets(server: FakeSMTP) -> None:
    # 200 three-octet characters per field: within the character bound, over the octet bound.
    wide = "用" * 300
    replies = exchange(
        server,
        f"EHLO {wide}.test".encode(),
        f"MAIL FROM:<{wide}@b.test> SMTPUTF8".encode(),
        f"RCPT TO:<{wide}@echo.test>".encode(),
    )
    assert replies[-1].startswith(b"550 5.1.1 echo: to <")
    assert len(replies[-1]) <= MAX_REPLY_LINE
    replies[-1].decode("utf-8")  # cut at a character boundary
