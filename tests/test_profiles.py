"""Provider profiles (gmail, microsoft-365, yahoo, postfix-greylisting): a real client sees each
documented reply, with its code, enhanced status and wording, and the session state after it."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fakesmtp import FakeSMTP

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
MESSAGE = b"From: app@example.test\r\nSubject: profile\r\n\r\nHello.\r\n"


@contextmanager
def client(server: FakeSMTP) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        yield smtp


def rcpt(server: FakeSMTP, to: str, sender: str = "app@example.test") -> tuple[int, bytes]:
    with client(server) as smtp:
        assert smtp.mail(sender)[0] == 250
        return smtp.rcpt(to)


def end_of_data(
    server: FakeSMTP, to: str, sender: str = "app@example.test", body: bytes = MESSAGE
) -> tuple[int, bytes]:
    with client(server) as smtp:
        assert smtp.mail(sender)[0] == 250
        assert smtp.rcpt(to)[0] == 250
        return smtp.data(body)


def mail_until_refused(server: FakeSMTP, limit: int) -> tuple[int, int, bytes]:
    """MAIL (then RSET) until refused: how many were accepted, and the refusal."""
    with client(server) as smtp:
        for accepted in range(limit + 5):
            code, text = smtp.mail(f"s{accepted}@example.test")
            if code != 250:
                return accepted, code, text
            smtp.rset()
    raise AssertionError("never refused")


def banner(server: FakeSMTP) -> tuple[int, bytes]:
    smtp = smtplib.SMTP(timeout=10)
    try:
        return smtp.connect(server.host, server.port)
    finally:
        smtp.close()


@pytest.fixture
def gmail(serve) -> FakeSMTP:
    return serve("gmail")


def test_gmail_greets_and_advertises_as_gmail(gmail: FakeSMTP) -> None:
    assert banner(gmail) == (220, b"mx.google.com ESMTP fakesmtp - gsmtp")
    with client(gmail) as smtp:
        assert smtp.ehlo_resp is not None
        assert smtp.ehlo_resp.startswith(b"mx.google.com at your service, [127.0.0.1]\n")
        assert smtp.has_extn("starttls") and smtp.has_extn("pipelining")
        assert smtp.esmtp_features["size"] == "157286400"


def test_gmail_refuses_an_unknown_account_and_a_full_inbox(gmail: FakeSMTP) -> None:
    code, text = rcpt(gmail, "nosuchuser@gmail.test")
    assert (code, text[:6]) == (550, b"5.1.1 ")
    assert b"does not exist" in text and text.endswith(b"- gsmtp")
    code, text = rcpt(gmail, "full@gmail.test")
    assert (code, text[:6]) == (452, b"4.2.2 ") and b"out of storage" in text


def test_gmail_rate_limits_a_recipient_and_a_client(gmail: FakeSMTP) -> None:
    with client(gmail) as smtp:
        smtp.mail("app@example.test")
        codes = [smtp.rcpt("popular@gmail.test")[0] for _ in range(21)]
        assert codes == [250] * 20 + [450]
        assert smtp.rcpt("other@gmail.test")[0] == 250  # per recipient: others are fine
    accepted, code, text = mail_until_refused(gmail, 100)
    assert (accepted, code, text[:7]) == (99, 421, b"4.7.28 ")  # one MAIL was in the first session
    assert b"unusual rate of email" in text and b"127.0.0.1" in text


def test_gmail_refuses_unauthenticated_mail_and_spam(gmail: FakeSMTP) -> None:
    code, text = end_of_data(gmail, "bob@gmail.test", sender="news@unauthenticated.test")
    assert (code, text[:7]) == (550, b"5.7.26 ") and b"DMARC" in text
    body = b"Subject: win\r\n\r\n" + GTUBE + b"\r\n"
    code, text = end_of_data(gmail, "bob@gmail.test", body=body)
    assert (code, text[:6]) == (550, b"5.7.1 ") and b"unsolicited" in text
    assert end_of_data(gmail, "bob@gmail.test")[0] == 250
    assert [m.rcpt_tos for m in gmail.messages] == [["bob@gmail.test"]]


@pytest.fixture
def microsoft(serve) -> FakeSMTP:
    return serve("microsoft-365")


def test_microsoft_greets_and_advertises_as_exchange_online(microsoft: FakeSMTP) -> None:
    code, text = banner(microsoft)
    assert code == 220 and text.endswith(b"Microsoft ESMTP MAIL Service ready")
    with client(microsoft) as smtp:
        assert smtp.ehlo_resp.startswith(  # type: ignore[union-attr]
            b"fakesmtp-test.mail.protection.outlook.com Hello [127.0.0.1]"
        )
        assert smtp.has_extn("dsn") and smtp.has_extn("starttls")


def test_microsoft_refusals_at_mail_and_rcpt(microsoft: FakeSMTP) -> None:
    code, text = rcpt(microsoft, "nobody@contoso.test")
    assert (code, text) == (550, b"5.4.1 Recipient address rejected: Access denied. AS(201806281)")
    code, text = rcpt(microsoft, "bob@contoso.test", sender="a@banned.test")
    assert (code, text[:8]) == (550, b"5.7.606 ") and b"banned sending IP [127.0.0.1]" in text
    with client(microsoft) as smtp:
        code, text = smtp.mail("a@low-reputation.test")
        assert (code, text[:8]) == (550, b"5.7.708 ")
        assert b"traffic not accepted from this IP" in text
        assert smtp.mail("a@example.test")[0] == 250  # no transaction was left behind


def test_microsoft_refusals_after_the_data(microsoft: FakeSMTP) -> None:
    code, text = end_of_data(microsoft, "bob@contoso.test", sender="a@unauthenticated.test")
    assert (code, text[:8]) == (550, b"5.7.509 ") and b"DMARC policy of reject" in text
    code, text = end_of_data(microsoft, "full@contoso.test")
    assert (code, text[:6]) == (554, b"5.2.2 ") and b"QuotaExceededException" in text
    assert microsoft.messages == []


def test_microsoft_throttles_a_busy_client_after_the_data(microsoft: FakeSMTP) -> None:
    with client(microsoft) as smtp:
        codes = [smtp.sendmail("a@example.test", ["b@contoso.test"], MESSAGE) for _ in range(30)]
        assert codes == [{}] * 30
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("a@example.test", ["b@contoso.test"], MESSAGE)
    assert refused.value.smtp_code == 451
    assert (
        refused.value.smtp_error
        == b"4.7.500 Server busy. Please try again later from [127.0.0.1]. (AS761)"
    )
    assert len(microsoft.messages) == 30


@pytest.fixture
def yahoo(serve) -> FakeSMTP:
    return serve("yahoo")


def test_yahoo_defers_a_busy_client_with_tss04(yahoo: FakeSMTP) -> None:
    assert banner(yahoo) == (220, b"mta7.am0.yahoodns.net ESMTP ready")
    accepted, code, text = mail_until_refused(yahoo, 50)
    assert (accepted, code, text[:14]) == (50, 421, b"4.7.0 [TSS04] ")
    assert b"temporarily deferred due to unexpected volume or user complaints" in text


def test_yahoo_refuses_unknown_accounts_after_the_data(yahoo: FakeSMTP) -> None:
    code, text = end_of_data(yahoo, "unknown@yahoo.test")
    assert code == 554
    assert text == (
        b"delivery error: dd This user doesn't have a yahoo.com account (unknown@yahoo.test) [0]"
        b" - mta7.am0.yahoodns.net"
    )
    assert end_of_data(yahoo, "full@yahoo.test") == (552, b"5.2.2 Mailbox full")


def test_yahoo_refuses_unauthenticated_mail_and_content(yahoo: FakeSMTP) -> None:
    code, text = end_of_data(yahoo, "bob@yahoo.test", sender="a@unauthenticated.test")
    assert (code, text[:6]) == (554, b"5.7.9 ") and b"policy reasons" in text
    body = b"Subject: x\r\n\r\n" + GTUBE + b"\r\n"
    code, text = end_of_data(yahoo, "bob@yahoo.test", body=body)
    assert (code, text[:6]) == (554, b"5.7.9 ") and b"[PH01]" in text


@pytest.fixture
def postfix(serve) -> FakeSMTP:
    return serve("postfix-greylisting")


def test_postfix_greylists_a_first_attempt_and_accepts_the_retry(postfix: FakeSMTP) -> None:
    assert banner(postfix) == (220, b"mail.fakesmtp.test ESMTP Postfix (Debian/GNU)")
    code, text = rcpt(postfix, "bob@example.test")
    assert (code, text[:6]) == (450, b"4.2.0 ") and b"Greylisted" in text
    assert rcpt(postfix, "bob@example.test")[0] == 250
    code, text = rcpt(postfix, "unknown@example.test")
    assert (code, text) == (
        550,
        b"5.1.1 <unknown@example.test>: Recipient address rejected: User unknown in local "
        b"recipient table",
    )
    code, text = rcpt(postfix, "full@example.test")
    assert (code, text[:6]) == (552, b"5.2.2 ") and b"Mailbox is full" in text


def test_postfix_anvil_limits(postfix: FakeSMTP) -> None:
    held = [smtplib.SMTP(postfix.host, postfix.port, timeout=10) for _ in range(50)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(postfix.host, postfix.port, timeout=10)
        assert refused.value.smtp_code == 421
        assert refused.value.smtp_error == (
            b"4.7.0 mail.fakesmtp.test Error: too many connections from 127.0.0.1"
        )
    finally:
        for smtp in held:
            smtp.close()
    postfix.wait_for_sessions(51)
    accepted, code, text = mail_until_refused(postfix, 30)
    assert (accepted, code, text) == (30, 450, b"4.7.1 Error: too much mail from 127.0.0.1")


@pytest.mark.parametrize(
    ("name", "chunking", "binarymime"),
    [
        ("gmail", True, False),
        ("microsoft-365", True, True),
        ("yahoo", False, False),
        ("postfix-greylisting", True, False),
    ],
)
def test_profiles_advertise_chunking_as_the_provider_does(
    serve, name: str, chunking: bool, binarymime: bool
) -> None:
    server = serve(name)
    with client(server) as smtp:
        assert smtp.has_extn("chunking") is chunking
        assert smtp.has_extn("binarymime") is binarymime
