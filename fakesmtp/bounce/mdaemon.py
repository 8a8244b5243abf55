"""MDaemon: "--- The following addresses had delivery problems ---" then "<rcpt> (Permanent:
REPLY)" per address; its "--- Session Transcript ---" is read by the transcript reader first."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import looks_local, parse_reply, squash

FAMILY = "MDaemon"

_LINE = re.compile(
    r"^\s*<?(?P<rcpt>[^\s<>@]+@[^\s<>]+?)>?\s+\((?P<kind>Permanent|Temporary|Unknown):\s*"
    r"(?P<reason>.*?)\)?\s*$",
    re.IGNORECASE,
)


def read(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    for line in text.split("\n"):
        m = _LINE.match(line)
        if m is None:
            continue
        reply = parse_reply(m["reason"])
        if reply is None or looks_local(m["reason"]):
            hints.local(m["reason"])
            continue
        findings.append(
            reply.finding(
                recipient=m["rcpt"],
                stage=None,
                remote_mta=None,
                origin=f"MDaemon delivery problem ({m['kind']}) for <{m['rcpt']}>",
                family=FAMILY,
                evidence=squash(line),
            )
        )
    return findings
