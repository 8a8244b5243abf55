"""Novell GroupWise (GWIA): "The message that you sent was undeliverable to the following:" then
"  rcpt (REASON)" per address; the reason is a reply when it starts with a code."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import parse_reply, squash

FAMILY = "GroupWise"

_INTRO = re.compile(r"was undeliverable to the following|could not be delivered to", re.IGNORECASE)
_LINE = re.compile(r"^\s+<?(?P<rcpt>[^\s<>@()]+@[^\s<>()]+?)>?\s+\((?P<reason>.+)\)\s*$")


def read(text: str, hints: Hints) -> list[Finding]:
    if not _INTRO.search(text):
        return []
    findings: list[Finding] = []
    for line in text.split("\n"):
        m = _LINE.match(line)
        if m is None:
            continue
        reply = parse_reply(m["reason"])
        if reply is None:
            hints.local(m["reason"])
            continue
        findings.append(
            reply.finding(
                recipient=m["rcpt"],
                stage=None,
                remote_mta=None,
                origin=f"GroupWise bounce text for {m['rcpt']}",
                family=FAMILY,
                evidence=squash(line),
            )
        )
    return findings
