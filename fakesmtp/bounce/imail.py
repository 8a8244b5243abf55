"""Ipswitch IMail (SMTP32): "Body of message generated response:" then the remote reply,
often in Sendmail's words ("553 5.3.0 <rcpt>... Addressee unknown, relay=[ip]"), sometimes
after the host's name ("mx.example: 550 ...")."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import looks_local, parse_reply, recipient_before, recipient_in, squash

FAMILY = "IMail"

_INTRO = re.compile(r"Body of message generated response:", re.IGNORECASE)
_REPLY_IN_LINE = re.compile(
    r"^\s*(?:(?P<host>[A-Za-z0-9.-]+\.[A-Za-z]{2,}):\s+)?(?=[45][0-5]\d[ -])"
)
_RELAY = re.compile(r",?\s*relay=\[?(?P<ip>[^\]\s]+)\]?\s*$")


def read(text: str, hints: Hints) -> list[Finding]:
    intro = _INTRO.search(text)
    if intro is None:
        return []
    findings: list[Finding] = []
    lines = text[intro.end() :].split("\n")
    offset = intro.end()
    for i, line in enumerate(lines):
        m = _REPLY_IN_LINE.match(line)
        if m is None or not line.strip():
            continue
        raw = line[m.end() :].strip()
        j = i + 1
        while j < len(lines) and lines[j][:1] in (" ", "\t") and lines[j].strip():
            raw += "\n" + lines[j].strip()
            j += 1
        reply = parse_reply(raw)
        if reply is None:
            continue
        if looks_local(raw):
            hints.local(raw)
            continue
        relay = _RELAY.search(raw)
        pos = offset + sum(len(x) + 1 for x in lines[:i])
        findings.append(
            reply.finding(
                recipient=recipient_in(reply) or recipient_before(text, pos),
                stage=None,
                remote_mta=m["host"] or (relay["ip"] if relay else None),
                origin="IMail bounce text",
                family=FAMILY,
                evidence=squash(raw),
            )
        )
    if not findings and lines:
        local = next((ln.strip() for ln in lines if ln.strip()), "")
        if local:
            hints.local(local)
    return findings
