"""Transcripts as a learner reads them: ``str(session)`` and ``FakeSMTP.transcript()``."""

from __future__ import annotations

import re
import smtplib

from .conftest import served


def test_str_of_a_session_reads_as_the_conversation() -> None:
    with served("unknown-recipient") as smtp:
        assert smtp.transcript() == "(no sessions)"
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.ehlo("app.test")
            client.mail("app@example.test")
            code, _ = client.rcpt("nobody@example.test")
        [session] = smtp.wait_for_sessions(1)
        text = str(session)
        whole = smtp.transcript()
    assert code == 550
    lines = text.splitlines()
    assert re.fullmatch(
        r"session \w+ from 127\.0\.0\.1:\d+, plain text, started \d\d:\d\d:\d\d\.\d{3}", lines[0]
    )
    assert lines[1:3] == [
        "    +0.000s  C: (connects)",
        "             S: 220 mx.fakesmtp.test ESMTP fakesmtp",
    ]
    rcpt = lines.index(next(line for line in lines if "C: rcpt TO:<nobody@example.test>" in line))
    assert lines[rcpt + 1].startswith("             S: 550 5.1.1 <nobody@example.test>")
    assert lines[rcpt + 3] == "                = Bad destination mailbox address"
    assert re.fullmatch(r"  ended: quit at \d\d:\d\d:\d\d\.\d{3}", lines[-1])
    assert not re.search(r"\d{10}\.\d", text)  # no epoch seconds for a person to decode
    assert whole == text
