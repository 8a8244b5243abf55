"""IBM/Lotus Domino: "Your message ... was not delivered to: RCPT because: REASON"; the reason is
a remote reply when it starts with a code, Domino's own words otherwise."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import ADDRESS, parse_reply, squash

FAMILY = "Domino"

_NOT_DELIVERED = re.compile(r"^\s*was not delivered to:\s*$", re.IGNORECASE)
_BECAUSE = re.compile(r"^\s*because:\s*(?P<rest>.*)$", re.IGNORECASE)
_CODE_AT = re.compile(r"(?:^|[\s:])(?=[2-5][0-5]\d[ -])")


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    recipients: list[str] = []
    findings: list[Finding] = []
    for i, line in enumerate(lines):
        if _NOT_DELIVERED.match(line):
            recipients = []
            for nxt in lines[i + 1 : i + 20]:
                if _BECAUSE.match(nxt):
                    break
                recipients += [a.rstrip(".") for a in ADDRESS.findall(nxt)]
            continue
        b = _BECAUSE.match(line)
        if b is None or not recipients:
            continue
        reason = [b["rest"].strip()] if b["rest"].strip() else []
        for nxt in lines[i + 1 : i + 20]:
            if not nxt.strip():
                if reason:
                    break
                continue
            reason.append(nxt.strip())
        words = " ".join(reason)
        at = _CODE_AT.search(words)
        reply = parse_reply(words[at.end() :]) if at else None
        if reply is None:
            hints.local(words)
            continue
        for rcpt in recipients:
            findings.append(
                reply.finding(
                    recipient=rcpt,
                    stage=None,
                    remote_mta=None,
                    origin=f"Domino bounce text for {rcpt}",
                    family=FAMILY,
                    evidence=squash(words),
                )
            )
    return findings
