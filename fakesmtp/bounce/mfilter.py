"""m-FILTER (Digital Arts): "-------SMTP command:" and "-------server message:" sections, each
followed by its line: the command sent and the reply it got."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import BRACKETED, parse_reply, recipient_before, recipient_in, squash, stage_of

FAMILY = "m-FILTER"

_SECTION = re.compile(r"^-{3,}\s*(?P<name>SMTP command|server message)\s*:\s*$", re.IGNORECASE)


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    command = ""
    findings: list[Finding] = []
    for i, line in enumerate(lines):
        m = _SECTION.match(line.strip())
        if m is None:
            continue
        body: list[str] = []
        for nxt in lines[i + 1 :]:
            if not nxt.strip() or nxt.strip().startswith("---"):
                break
            body.append(nxt.strip())
        if m["name"].lower() == "smtp command":
            command = body[0] if body else ""
            continue
        reply = parse_reply("\n".join(body))
        if reply is None:
            continue
        stage = stage_of(command) if command else None
        rcpt = None
        if stage == "rcpt" and (a := BRACKETED.search(command)):
            rcpt = a[1]
        pos = sum(len(x) + 1 for x in lines[:i])
        findings.append(
            reply.finding(
                recipient=rcpt or recipient_in(reply) or recipient_before(text, pos),
                stage=stage,
                remote_mta=None,
                origin="m-FILTER bounce text",
                notes=(f'stage from the "SMTP command" section: {command}',) if stage else (),
                family=FAMILY,
                evidence=squash(f"{command} / {' '.join(body)}"),
            )
        )
    return findings
