"""Explanations keyed by what a reply actually says: vendor use, precise status, wording, code.

The page, transcripts and `fakesmtp explain` all read a reply through catalog.read_reply, so a
broad code's generic advice never wins over a status or a text that says otherwise.
"""

from __future__ import annotations

import pytest

from fakesmtp import catalog

from .conftest import served


@pytest.mark.parametrize(
    ("code", "status", "text", "basis", "summary"),
    [
        pytest.param(
            451, "4.7.1", "Greylisted, try again later", "text",
            "Greylisted, the first attempt is deferred on purpose", id="greylisting",
        ),
        pytest.param(
            550, "5.7.26", "message fails the DMARC policy of app.test", "status",
            "Multiple authentication checks failed", id="dmarc-by-status",
        ),
        pytest.param(
            550, "5.7.26",
            "This mail has been blocked because the sender is unauthenticated.", "vendor",
            "Unauthenticated mail refused (DMARC, SPF, DKIM)", id="gmail-5.7.26",
        ),
        pytest.param(
            421, "4.7.28",
            "Our system has detected an unusual rate of unsolicited mail originating from your "
            "IP address", "vendor",
            "Rate limited for an unusual rate of unwanted mail", id="gmail-4.7.28",
        ),
        pytest.param(
            550, "5.1.10",
            "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            "vendor", "Recipient not found (Exchange Online's RecipientNotFound)",
            id="o365-5.1.10",
        ),
        pytest.param(
            550, "5.1.10", "Recipient address has null MX", "status",
            "Recipient address has a null MX", id="null-mx-5.1.10",
        ),
        pytest.param(
            550, "5.4.1", "Recipient address rejected: Access denied", "vendor",
            "Recipient rejected at Exchange Online's edge", id="o365-5.4.1",
        ),
        pytest.param(
            550, "5.7.606", "Access denied, banned sending IP [192.0.2.1]", "vendor",
            "Sending IP address banned by Microsoft", id="o365-5.7.606",
        ),
        pytest.param(
            550, "5.7.649", "Access denied", "vendor",
            "Sending IP address banned by Microsoft", id="o365-range-end",
        ),
        pytest.param(
            421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred", "text",
            "Deferred by Yahoo for unexpected volume or complaints (TSS04)", id="yahoo-tss04",
        ),
        pytest.param(
            451, "4.7.1", "<a@app.test>: Sender rate limit exceeded, try again later", "text",
            "Rate limited, too much too fast", id="rate-limit",
        ),
        pytest.param(
            554, "5.7.1", "Client host [192.0.2.1] blocked using zen.spamhaus.org", "text",
            "Refused because the sender is on a block list", id="blocklist",
        ),
        pytest.param(
            452, "4.2.2", "<bob@x.test>: Mailbox full", "status", "Mailbox full",
            id="mailbox-full",
        ),
        pytest.param(
            422, None, "Recipient mailbox is over its storage limit", "text", "Mailbox full",
            id="mailbox-full-by-text",
        ),
        pytest.param(
            550, "5.1.1", "<bob@x.test>: Recipient address rejected", "status",
            "Bad destination mailbox address", id="unknown-user",
        ),
        pytest.param(
            451, "4.3.0", "Local error in processing", "code", "Local error in processing",
            id="generic-status-falls-back-on-the-code",
        ),
        pytest.param(
            550, "5.7.1", "Relay access denied", "text",
            "Relaying denied, the server does not take mail for that domain from you",
            id="relay-denied",
        ),
        pytest.param(
            550, "5.7.1", "Go away", "status",
            "Delivery not authorized, message refused", id="broad-status-without-signs",
        ),
        pytest.param(
            552, "5.7.0", "This message was blocked because its content is not allowed",
            "status", "A security or policy problem, not more precisely known",
            id="a-broad-status-of-another-subject-beats-the-code",
        ),
        pytest.param(
            550, "5.4.312", "DNS query failed", "text",
            "The recipient's domain could not be found", id="dns",
        ),
        pytest.param(
            550, "5.4.999", "Something odd", "status",
            "Network and routing status",
            id="unregistered-detail-says-routing-not-mailbox",
        ),
        pytest.param(
            550, "5.0.0", "No", "code", "Mailbox unavailable, or rejected by policy",
            id="x.0.0-says-nothing",
        ),
    ],
)  # fmt: skip
def test_a_reply_is_read_from_what_it_says(
    code: int, status: str | None, text: str, basis: str, summary: str
) -> None:
    reading = catalog.read_reply(code, status, text)
    assert (reading.basis, reading.summary) == (basis, summary)
    assert reading.advice and reading.source


def test_greylisting_is_never_headed_as_a_local_error() -> None:
    out = catalog.explain("451 4.7.1 Greylisted, try again later")
    assert out.splitlines()[:4] == [
        "Reply: 451 4.7.1 Greylisted, try again later",
        "",
        "Greylisted, the first attempt is deferred on purpose (transient failure)",
        "  Read from:    the reply's text",
    ]
    # The status comes before the code: it says more precisely what went wrong.
    assert out.index("Enhanced status 4.7.1") < out.index("451 Local error in processing")


def test_explain_5_1_10_knows_office_365s_use() -> None:
    out = catalog.explain("5.1.10")
    assert "Recipient address has a null MX" in out
    assert "  Vendor use:   Microsoft 365 / Exchange Online: Recipient not found (Exchange" in out


def test_a_pasted_office_365_bounce_leads_with_the_vendor_reading() -> None:
    out = catalog.explain(
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    )
    assert out.splitlines()[2:4] == [
        "Recipient not found (Exchange Online's RecipientNotFound) (permanent failure)",
        "  Read from:    Microsoft 365 / Exchange Online's use of this status and the",
    ]


def test_dmarc_reply_never_gets_550s_advice_about_5_1_1() -> None:
    reading = catalog.read_reply(550, "5.7.26", "Unauthenticated mail")
    assert "5.1.1" not in reading.advice and "DMARC" in reading.advice


def test_usually_with_lists_the_rfcs_codes_first() -> None:
    assert "  Usually with: 550; 511" in catalog.explain("5.1.1")
    assert "  Usually with: 553; 501 (at RCPT TO); 513" in catalog.explain("5.1.3")
    assert "  Usually with: 554; 550 (at HELO, EHLO, MAIL FROM, DATA, end of DATA); 541" in (
        catalog.explain("5.7.1")
    )


def test_every_reading_in_the_catalog_is_complete() -> None:
    signs = catalog._catalog().readings
    assert len({sign.id for sign in signs}) == len(signs) >= 10
    for sign in signs:
        assert sign.summary and sign.meaning and sign.advice and sign.source, sign.id
        assert sign.statuses or sign.text is not None, sign.id


def test_the_api_explains_a_greylisted_rcpt_by_its_text() -> None:
    import json
    import smtplib
    import urllib.request

    scenario = (
        "rules:\n  - on: rcpt\n"
        '    reply: "451 4.7.1 <{to}>: Recipient address rejected: Greylisted, try again later"\n'
    )
    with served(scenario, api_port=0) as smtp:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.ehlo()
            client.mail("app@example.test")
            assert client.rcpt("bob@example.test")[0] == 451
        [session] = smtp.wait_for_sessions(1)
        url = f"http://127.0.0.1:{smtp.api_port}/api/v1/sessions/{session.id}"
        with urllib.request.urlopen(url, timeout=5) as response:
            transcript = json.load(response)["transcript"]
    [rcpt] = [e for e in transcript if e["stage"] == "rcpt"]
    assert rcpt["explained_by"] == "text"
    assert rcpt["summary"] == "Greylisted, the first attempt is deferred on purpose"
    assert rcpt["advice"].startswith("Nothing to fix: retry from the same IP address")
    assert rcpt["status_meaning"].startswith("Delivery not authorized")  # kept, not shown first


def test_a_pasted_dmarc_refusal_never_shows_550s_advice_about_5_1_1() -> None:
    out = catalog.explain("550 5.7.26 message fails the DMARC policy of app.test")
    assert "For 5.1.1" not in out
    assert "  What to do:   Set up SPF and DKIM for your sending domain" in out
    # A bare code keeps its own generic advice: nothing more precise was said.
    assert "For 5.1.1, remove or correct the" in catalog.explain("550")


def test_readings_speak_french_too() -> None:
    out = catalog.explain("451 4.7.1 Greylisted, try again later", lang="fr")
    assert out.splitlines()[2:4] == [
        "Liste grise : la première tentative est différée exprès (échec temporaire)",
        "  Lu dans:      le texte de la réponse",
    ]
    for sign in catalog._catalog().readings:
        assert set(sign.fr) == {"summary", "meaning", "advice"}, sign.id
