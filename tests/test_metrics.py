"""``/metrics``: scraped over HTTP after real SMTP traffic, checked against what the clients saw."""

from __future__ import annotations

import smtplib
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakesmtp import FakeSMTP

SCENARIO = """
name: metrics
rules:
  - name: mailbox full
    on: rcpt
    match: {to: "*@full.test"}
    reply: 452 4.2.2 Mailbox full
  - name: spam
    on: end_of_data
    match: {subject: "*spam*"}
    reply: 554 5.7.1 Looks like spam
  - name: go away
    on: helo
    match: {helo: rude.test}
    action: drop
"""


def scrape(server: FakeSMTP, accept: str | None = None) -> tuple[str, dict[tuple, float]]:
    """The content type, and every sample as {(name, sorted labels): value}."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.api_port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=5) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return content_type, samples


def test_metrics_count_what_the_clients_saw(serve: Callable[..., FakeSMTP]) -> None:
    server = serve(SCENARIO, api_port=0)
    seen: Counter[tuple[str, int]] = Counter()  # (stage, code) as the clients got them
    body_bytes = 0
    kept = refused = 0
    for n in range(6):
        client = smtplib.SMTP(server.host, server.port, timeout=5)
        seen["connect", 220] += 1
        seen["ehlo", client.ehlo("client.test")[0]] += 1
        seen["mail", client.mail("a@sender.test")[0]] += 1
        seen["rcpt", client.rcpt("ok@dest.test")[0]] += 1
        seen["rcpt", client.rcpt("b@full.test")[0]] += 1
        subject = "spam offer" if n % 3 == 0 else f"hello {n}"
        message = f"Subject: {subject}\r\n\r\nbody {n}\r\n".encode()
        client.putcmd("data")
        seen["data", client.getreply()[0]] += 1
        code, _ = _send_body(client, message)
        seen["end_of_data", code] += 1
        if code == 250:
            kept += 1
            body_bytes += len(message)
        else:
            refused += 1
        seen["quit", client.quit()[0]] += 1
    rude = smtplib.SMTP(server.host, server.port, timeout=5)
    seen["connect", 220] += 1
    with pytest.raises(smtplib.SMTPServerDisconnected):
        rude.helo("rude.test")
    server.wait_for_sessions(7)

    content_type, samples = scrape(server)
    assert content_type.startswith("text/plain; version=0.0.4")
    replies = {
        (dict(labels)["stage"], int(dict(labels)["code"])): value
        for (name, labels), value in samples.items()
        if name == "fakesmtp_replies_total"
    }
    assert replies == dict(seen)
    assert samples["fakesmtp_sessions_total", ()] == 7
    assert samples["fakesmtp_connections", ()] == 0
    assert samples["fakesmtp_sessions_ended_total", (("end", "quit"),)] == 6
    assert samples["fakesmtp_sessions_ended_total", (("end", "dropped by rule"),)] == 1
    commands = {dict(labels)["stage"]: v for (name, labels), v in samples.items()
                if name == "fakesmtp_commands_total"}  # fmt: skip
    assert commands == {"ehlo": 6, "mail": 6, "rcpt": 12, "data": 6, "end_of_data": 6,
                        "quit": 6, "helo": 1}  # fmt: skip
    assert samples["fakesmtp_rule_fires_total", (("rule", "mailbox full"),)] == 6
    assert samples["fakesmtp_rule_fires_total", (("rule", "spam"),)] == 2
    assert samples["fakesmtp_rule_fires_total", (("rule", "go away"),)] == 1
    assert samples["fakesmtp_messages_total", (("outcome", "kept"),)] == kept == 4
    assert samples["fakesmtp_messages_total", (("outcome", "refused"),)] == refused == 2
    assert samples["fakesmtp_messages_total", (("outcome", "dropped"),)] == 0
    # What the server kept is the client's message as sent (smtplib adds nothing to it).
    assert samples["fakesmtp_received_message_bytes_total", ()] == body_bytes
    assert body_bytes == sum(m.size for m in server.messages)


def _send_body(client: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """The message after a 354, the way smtplib's data() sends it."""
    client.send(smtplib._quote_periods(message) + b".\r\n")  # type: ignore[attr-defined]
    return client.getreply()


def test_open_connections_and_address_replies_share_one_label(
    serve: Callable[..., FakeSMTP],
) -> None:
    server = serve(None, api_port=0)  # the default scenario: address-driven replies
    client = smtplib.SMTP(server.host, server.port, timeout=5)
    client.ehlo("x.test")
    client.mail("a@x.test")
    assert client.rcpt("rcpt-550@a.test")[0] == 550
    assert client.rcpt("rcpt-551@b.test")[0] == 551
    _, samples = scrape(server)
    assert samples["fakesmtp_connections", ()] == 1
    rules = {dict(labels)["rule"]: v for (name, labels), v in samples.items()
             if name == "fakesmtp_rule_fires_total"}  # fmt: skip
    assert rules == {"(address-driven reply)": 2}
    client.quit()


def test_openmetrics_on_request(serve: Callable[..., FakeSMTP]) -> None:
    server = serve(None, api_port=0)
    content_type, samples = scrape(server, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert samples["fakesmtp_sessions_total", ()] == 0
