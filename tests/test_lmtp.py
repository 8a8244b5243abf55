"""LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the final dot."""

from __future__ import annotations

import smtplib

from .conftest import RawClient

MAILBOX_FULL = """
rules:
  - on: end_of_data
    match: {to: "full@*"}
    reply: 452 4.2.2 <{to}> Mailbox full
  - on: rcpt
    match: {to: "nobody@*"}
    reply: 550 5.1.1 No such user
"""


def deliver(client: RawClient, recipients: list[str]) -> list[str]:
    """LHLO, MAIL, the RCPTs, DATA, a message; the replies after the final dot."""
    assert client.reply()[0].endswith("LMTP fakesmtp")
    client.send("LHLO client.test\r\n")
    assert "250-PIPELINING" in client.reply()
    client.send("MAIL FROM:<a@client.test>\r\n")
    assert client.reply() == ["250 2.1.0 Ok"]
    accepted = 0
    for recipient in recipients:
        client.send(f"RCPT TO:<{recipient}>\r\n")
        accepted += client.reply()[0].startswith("250")
    client.send("DATA\r\n")
    assert client.reply()[0].startswith("354")
    client.send("Subject: lmtp\r\n\r\nHello.\r\n.\r\n")
    return [client.reply()[0] for _ in range(accepted)]


def test_one_reply_per_accepted_recipient_in_order(serve, raw_client) -> None:
    server = serve(MAILBOX_FULL, lmtp=True)
    replies = deliver(raw_client(server), ["a@x.test", "full@x.test", "nobody@x.test", "b@x.test"])
    assert replies[0].startswith("250 2.0.0 <a@x.test> Ok: queued as ")
    assert replies[1] == "452 4.2.2 <full@x.test> Mailbox full"
    assert replies[2].startswith("250 2.0.0 <b@x.test> Ok: queued as ")
    [message] = server.wait_for(1)
    assert message.rcpt_tos == ["a@x.test", "b@x.test"]  # only those told 250


def test_lhlo_replaces_helo_and_ehlo(serve, raw_client) -> None:
    client = raw_client(serve(lmtp=True))
    assert client.reply() == ["220 mx.fakesmtp.test LMTP fakesmtp"]
    client.send("EHLO client.test\r\n")
    assert client.reply() == ["500 5.5.2 Error: command not recognized"]
    client.send("HELO client.test\r\n")
    assert client.reply() == ["500 5.5.2 Error: command not recognized"]


def test_lhlo_answers_at_the_ehlo_stage(serve) -> None:
    server = serve("rules:\n  - on: ehlo\n    reply: 554 5.7.1 Not you\n", lmtp=True)
    with smtplib.LMTP(server.host, server.port, timeout=5) as client:
        assert client.ehlo("client.test") == (554, b"5.7.1 Not you")


def test_drop_after_some_recipients(serve, raw_client) -> None:
    server = serve(
        "rules:\n  - on: end_of_data\n    match: {to: 'crash@*'}\n    action: drop\n", lmtp=True
    )
    client = raw_client(server)
    client.reply()
    client.send(
        "LHLO c\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<a@x.test>\r\n"
        "RCPT TO:<crash@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    )
    for _ in range(6):  # LHLO, MAIL, 3 x RCPT, DATA
        client.reply()
    client.send("Subject: x\r\n\r\nx\r\n.\r\n")
    assert client.reply()[0].startswith("250 2.0.0 <a@x.test>")
    assert client.closed()
    [message] = server.wait_for(1)
    assert message.rcpt_tos == ["a@x.test"]  # b was never told 250: not kept for b


def test_smtplib_lmtp_client_sends(serve) -> None:
    server = serve(lmtp=True)
    with smtplib.LMTP(server.host, server.port, timeout=5) as client:
        assert client.sendmail("a@client.test", ["b@x.test"], b"Subject: hi\r\n\r\nhi\r\n") == {}
    assert server.wait_for(1)[0].rcpt_tos == ["b@x.test"]
