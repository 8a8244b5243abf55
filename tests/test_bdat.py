"""CHUNKING and BINARYMIME (RFC 3030) over a raw socket: BDAT chunks, pipelined or not.

Every chunk gets one reply after its octets; after the LAST one the message is decided at
``end_of_data`` and captured exactly as sent (no dot-stuffing, any octet); a failed chunk fails
the message, and pipelined chunks after it are read and discarded, never taken as commands.
"""

from __future__ import annotations

import pytest

from fakesmtp import FakeSMTP

from .conftest import RawClient

CHUNKING = "server:\n  extensions: [PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, CHUNKING]\n"
BINARY = "server:\n  extensions: [PIPELINING, ENHANCEDSTATUSCODES, CHUNKING, BINARYMIME]\n"
ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n"


def bdat(data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def open_session(client: RawClient) -> None:
    """Banner, then EHLO/MAIL/RCPT pipelined: read their replies."""
    assert client.reply()[0].startswith("220")
    client.send(ENVELOPE)
    assert client.reply()[-1].startswith("250 ")  # EHLO
    assert client.reply() == ["250 2.1.0 Ok"]
    assert client.reply() == ["250 2.1.5 Ok"]


def test_chunking_is_advertised_only_when_the_scenario_lists_it(serve, raw_client) -> None:
    for scenario, advertised in (
        (None, []),
        (CHUNKING, ["250-CHUNKING"]),
        (BINARY, ["250-CHUNKING", "250-BINARYMIME"]),
    ):
        client = raw_client(serve(scenario))
        client.reply()
        client.send("EHLO client.test\r\nHELP\r\n")
        lines = client.reply()
        assert [line for line in lines if "CHUNKING" in line or "BINARY" in line] == advertised
        assert ("BDAT" in client.reply()[0]) is bool(advertised)  # HELP lists what is offered


def test_without_chunking_bdat_is_an_unknown_command(serve, raw_client) -> None:
    server = serve()
    client = raw_client(server)
    open_session(client)
    client.send(b"BDAT 4 LAST\r\n")
    assert client.reply() == ["500 5.5.2 Error: command not recognized"]


def test_pipelined_chunks_are_captured_byte_for_byte(serve, raw_client) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    # What DATA would have to dot-stuff or could not carry: a lone dot line, a leading dot,
    # bare CR and LF, NUL, and a "QUIT" line that must not be read as a command.
    first = b"Subject: chunks\r\nX-Test: 1\r\n\r\n.\r\n..leading dots\r\n"
    second = b"bare\nlf and bare\rcr \x00 nul\r\nQUIT\r\n"
    third = b"\xff\xfe binary tail without CRLF"
    client.reply()
    client.send(ENVELOPE + bdat(first) + bdat(second) + bdat(third) + bdat(b"", last=True))
    client.reply(), client.reply(), client.reply()
    assert client.reply() == [f"250 2.0.0 Ok: {len(first)} octets received"]
    assert client.reply() == [f"250 2.0.0 Ok: {len(second)} octets received"]
    assert client.reply() == [f"250 2.0.0 Ok: {len(third)} octets received"]
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    client.send("NOOP\r\n")
    assert client.reply() == ["250 2.0.0 Ok"]  # the QUIT inside the chunk was data
    (message,) = server.wait_for(1)
    assert message.raw == first + second + third
    assert (message.mail_from, message.rcpt_tos) == ("a@client.test", ["b@mx.test"])
    record = server.sessions[0]
    stages = [(e.stage, e.command) for e in record.exchanges if e.stage in ("bdat", "end_of_data")]
    assert stages == [
        ("bdat", f"BDAT {len(first)}"),
        ("bdat", f"BDAT {len(second)}"),
        ("bdat", f"BDAT {len(third)}"),
        # The LAST chunk's reply is the message's: one exchange, at end_of_data.
        ("end_of_data", f"BDAT 0 LAST <message, {len(first + second + third)} bytes>"),
    ]


def test_one_chunk_with_last_and_a_second_message(serve, raw_client) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    open_session(client)
    client.send(bdat(b"Subject: one\r\n\r\nhi\r\n", last=True))
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    # The transaction is over: a new one may use DATA this time.
    client.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n")
    assert [client.reply()[0][:3] for _ in range(3)] == ["250", "250", "354"]
    client.send("Subject: two\r\n\r\nhi\r\n.\r\n")
    assert client.reply()[0].startswith("250 ")
    assert [m.subject for m in server.wait_for(2)] == ["one", "two"]


def test_bdat_0_last_ends_the_message(serve, raw_client) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    open_session(client)
    client.send(bdat(b"Subject: x\r\n\r\n"))
    assert client.reply() == ["250 2.0.0 Ok: 14 octets received"]
    client.send(b"BDAT 0 LAST\r\n")
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    assert server.wait_for(1)[0].raw == b"Subject: x\r\n\r\n"


@pytest.mark.parametrize(
    "command", [b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 1.5", b"BDAT 5 NOTLAST", b"BDAT 5 LAST x"]
)
def test_bad_sizes_get_501_and_the_session_goes_on(serve, raw_client, command: bytes) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    open_session(client)
    client.send(command + b"\r\n")
    assert client.reply() == ["501 5.5.4 Syntax: BDAT chunk-size [LAST]"]
    client.send(bdat(b"ok\r\n", last=True))  # the transaction is still there
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    assert server.wait_for(1)[0].raw == b"ok\r\n"


def test_bdat_out_of_order_is_refused_and_its_chunk_discarded(serve, raw_client) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    client.reply()
    client.send(bdat(b"QUIT\r\n"))  # before EHLO: 503, and "QUIT" is data, not a command
    assert client.reply() == ["503 5.5.1 Error: send HELO/EHLO first"]
    client.send(b"EHLO client.test\r\n" + bdat(b"RSET\r\n", last=True))
    client.reply()
    assert client.reply() == ["503 5.5.1 Error: need MAIL command"]
    client.send(b"MAIL FROM:<a@client.test>\r\n" + bdat(b"NOOP\r\n"))
    client.reply()
    assert client.reply() == ["503 5.5.1 Error: need RCPT command"]
    client.send(b"RCPT TO:<b@mx.test>\r\n" + bdat(b"body\r\n", last=True))
    client.reply()
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    # RFC 3030 2: any BDAT after the LAST one is refused with 503.
    client.send(bdat(b"more\r\n"))
    assert client.reply() == ["503 5.5.1 Error: need MAIL command"]
    assert [m.raw for m in server.wait_for(1)] == [b"body\r\n"]


def test_data_and_bdat_do_not_mix_in_one_transaction(serve, raw_client) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    open_session(client)
    client.send(bdat(b"Subject: half\r\n"))
    assert client.reply()[0].startswith("250 ")
    client.send("DATA\r\n")
    assert client.reply() == ["503 5.5.1 Error: DATA after BDAT"]
    client.send(bdat(b"\r\nrest\r\n", last=True))  # the BDAT transaction goes on
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    assert server.wait_for(1)[0].raw == b"Subject: half\r\n\r\nrest\r\n"
    client.send("RSET\r\n")
    assert client.reply()[0].startswith("250")


def test_binarymime_needs_bdat(serve, raw_client) -> None:
    server = serve(BINARY)
    client = raw_client(server)
    client.reply()
    client.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test> BODY=BINARYMIME\r\nRCPT TO:<b@mx.test>\r\n")
    client.reply(), client.reply(), client.reply()
    client.send("DATA\r\n")
    assert client.reply() == ["503 5.5.1 Error: BODY=BINARYMIME needs BDAT, not DATA"]
    body = b"Content-Transfer-Encoding: binary\r\n\r\n" + bytes(range(256))
    client.send(bdat(body, last=True))
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    (message,) = server.wait_for(1)
    assert message.raw == body and message.mail_options == ["BODY=BINARYMIME"]
    # Without BINARYMIME offered, the parameter is refused as any unknown one.
    plain = raw_client(serve(CHUNKING))
    plain.reply()
    plain.send(b"EHLO c.test\r\nMAIL FROM:<a@c.test> BODY=BINARYMIME\r\n")
    plain.reply()
    assert plain.reply() == ["555 5.5.4 Unsupported option: BODY"]


def test_size_limit_holds_across_chunks(serve, raw_client) -> None:
    server = serve(CHUNKING.replace("server:\n", "server:\n  size_limit: 100\n"))
    client = raw_client(server)
    open_session(client)
    # 60 + 60 > 100: the second chunk is refused; the pipelined LAST after it is discarded.
    client.send(bdat(b"a" * 60) + bdat(b"b" * 60) + bdat(b"QUIT\r\n", last=True))
    assert client.reply() == ["250 2.0.0 Ok: 60 octets received"]
    assert client.reply() == ["552 5.3.4 Message size exceeds fixed maximum message size"]
    assert client.reply() == ["503 5.5.1 Error: need MAIL command"]
    client.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n" + bdat(b"c" * 100, True))
    client.reply(), client.reply()
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")  # exactly the limit is fine
    assert [len(m.raw) for m in server.wait_for(1)] == [100]


def test_a_rule_refuses_a_chunk(serve, raw_client) -> None:
    server = serve(
        CHUNKING
        + """rules:
  - name: too much so far
    on: bdat
    match: {size: ">50"}
    reply: "552 5.3.4 Message too big for this mailbox ({size} octets so far)"
  - name: no invoices
    on: end_of_data
    match: {subject: "*invoice*"}
    reply: "554 5.7.1 Invoices are not accepted here"
"""
    )
    client = raw_client(server)
    open_session(client)
    client.send(bdat(b"x" * 30) + bdat(b"y" * 30) + bdat(b"z" * 5, last=True))
    assert client.reply() == ["250 2.0.0 Ok: 30 octets received"]
    assert client.reply() == ["552 5.3.4 Message too big for this mailbox (60 octets so far)"]
    assert client.reply() == ["503 5.5.1 Error: need MAIL command"]
    record = server.sessions[0]
    refused = [e for e in record.exchanges if e.rule == "too much so far"]
    assert len(refused) == 1 and refused[0].stage == "bdat"
    # end_of_data rules see the whole message, its subject split across two chunks.
    client.send(
        b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n"
        + bdat(b"Subject: your inv")
        + bdat(b"oice\r\n\r\n.", last=True)
    )
    client.reply(), client.reply(), client.reply()
    assert client.reply() == ["554 5.7.1 Invoices are not accepted here"]
    assert server.messages == []


def test_a_chunk_larger_than_the_read_buffer(serve, raw_client) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    open_session(client)
    body = bytes(range(256)) * 8192  # 2 MiB in one chunk
    client.send(bdat(body, last=True))
    assert client.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    assert server.wait_for(1)[0].raw == body


def test_a_client_vanishing_mid_chunk_leaves_nothing(serve, raw_client) -> None:
    server = serve(CHUNKING)
    client = raw_client(server)
    open_session(client)
    client.send(b"BDAT 1000 LAST\r\n" + b"x" * 10)
    client.close()
    record = server.wait_for_sessions(1)[0]
    assert record.end == "client vanished during BDAT"
    assert server.messages == []


def test_lmtp_answers_each_recipient_after_the_last_chunk(serve, raw_client) -> None:
    server = serve(
        CHUNKING
        + 'rules:\n  - on: end_of_data\n    match: {to: "full@*"}\n    reply: 452 4.2.2 Full\n',
        lmtp=True,
    )
    client = raw_client(server)
    client.reply()
    client.send(
        b"LHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<ok@mx.test>\r\nRCPT TO:<full@mx.test>\r\n"
        + bdat(b"Subject: lmtp\r\n\r\nhi\r\n", last=True)
    )
    assert "250-CHUNKING" in client.reply()
    client.reply(), client.reply(), client.reply()
    assert client.reply()[0].startswith("250 2.0.0 <ok@mx.test> Ok: queued as ")
    assert client.reply() == ["452 4.2.2 Full"]
    assert [m.rcpt_tos for m in server.wait_for(1)] == [["ok@mx.test"]]


def test_bdat_size_needs_no_buffering_when_refused(serve, raw_client) -> None:
    # A refused chunk is read and dropped as it comes: a huge one does not stay in memory.
    server: FakeSMTP = serve(CHUNKING.replace("server:\n", "server:\n  size_limit: 1KiB\n"))
    client = raw_client(server)
    open_session(client)
    client.send(bdat(b"q" * (4 << 20)))
    assert client.reply() == ["552 5.3.4 Message size exceeds fixed maximum message size"]
    client.send("NOOP\r\n")
    assert client.reply() == ["250 2.0.0 Ok"]


def test_kept_chunks_share_the_memory_budget_for_bodies(serve, raw_client) -> None:
    # max_memory 8 MiB: bodies in flight may hold a quarter of it, 2 MiB, DATA and BDAT alike.
    server = serve(CHUNKING, max_memory=8 << 20)
    parked = raw_client(server)
    open_session(parked)
    parked.send(bdat(b"p" * (1536 << 10)))  # 1.5 MiB held, the message not finished
    assert parked.reply()[0].startswith("250 2.0.0 Ok: ")
    late = raw_client(server)
    open_session(late)
    late.send(bdat(b"q" * (1 << 20)))  # 1 MiB more would pass the budget: try later
    assert late.reply() == ["452 4.3.1 Insufficient system storage, try again later"]
    parked.send(bdat(b"end\r\n", last=True))  # the parked message ends: its bytes come back
    assert parked.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    late.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n" + bdat(b"q", True))
    late.reply(), late.reply()
    assert late.reply()[0].startswith("250 2.0.0 Ok: queued as ")
    assert len(server.wait_for(2)) == 2


def test_a_trickling_chunk_is_cut_at_the_data_pace(serve, raw_client) -> None:
    # DATA's pace holds for a chunk: after command_timeout's allowance, 500 bytes a second.
    server = serve(CHUNKING.replace("server:\n", "server:\n  command_timeout: 300ms\n"))
    client = raw_client(server)
    open_session(client)
    client.send(b"BDAT 100000 LAST\r\n" + b"x" * 10)
    assert client.reply() == ["421 4.4.2 mx.fakesmtp.test Error: timeout exceeded"]
    assert client.closed()
    record = server.wait_for_sessions(1)[0]
    assert record.end == "BDAT too slow or too long" and server.messages == []
