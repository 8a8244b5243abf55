"""Yahoo (and AOL/Verizon, which share its servers): "<rcpt>:" then "554: delivery error: ..."
with a colon after the code, and the protocol step in brackets ("[RCPT_TO]")."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import BRACKET_STAGE, bracket_stage, parse_reply, squash

FAMILY = "Yahoo"

_REPLY = re.compile(
    r"^<(?P<rcpt>[^>\n]+)>:[ \t]*\n(?P<code>[2-5][0-5]\d):\s+(?P<rest>[^\n]*)", re.MULTILINE
)


def read(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    for m in _REPLY.finditer(text):
        raw = f"{m['code']} {m['rest']}"
        stage: str | None = None
        notes: list[str] = []
        if b := BRACKET_STAGE.search(raw):
            raw = raw[: b.start()]
            stage = bracket_stage(b["step"])
            notes.append(f'stage from "[{b["step"]}]" after the text')
        reply = parse_reply(raw)
        if reply is None:
            continue
        findings.append(
            reply.finding(
                recipient=m["rcpt"],
                stage=stage,
                remote_mta=None,
                origin=f"Yahoo-style bounce text for <{m['rcpt']}>",
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(m.group(0)),
            )
        )
    return findings
