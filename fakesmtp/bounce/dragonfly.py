"""DragonFly Mail Agent (dma): "There was an error delivering your mail to <rcpt>." then
"HOST [IP] did not like our CMD:" with the reply on the same or the next line."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import looks_local, parse_reply, recipient_in, squash, stage_of

FAMILY = "DragonFly"

_RECIPIENT = re.compile(r"error delivering your mail to <(?P<rcpt>[^<>\s]+)>", re.IGNORECASE)
_LIKE = re.compile(
    r"^(?P<host>[^\s\[\]]+)\s*(?:\[(?P<ip>[^\]]*)\])?\s+did not like our\s+"
    r"(?P<cmd>[A-Za-z][A-Za-z ]{0,20}?)\s*:\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_ERROR_INTRO = re.compile(r"^There was an error delivering your mail to", re.IGNORECASE)


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    recipient: str | None = None
    intro = False
    for i, line in enumerate(lines):
        if r := _RECIPIENT.search(line):
            recipient, intro = r["rcpt"], True
            continue
        m = _LIKE.match(line.strip())
        if m is None:
            if intro and line.strip() and looks_local(line):
                hints.local(line.strip())
            continue
        first = m["rest"].strip()
        start = i
        if not first and i + 1 < len(lines):
            # dma ends the line after the command and writes the reply on the next one.
            first, start = lines[i + 1].strip(), i + 1
        # Lines up to the next blank one belong to the reply (its other lines, or wrapping).
        raw, _ = _until_blank(lines, start, first)
        reply = parse_reply(raw)
        if reply is None:
            hints.no_reply.append(squash(line))
            continue
        cmd = " ".join(m["cmd"].split())
        findings.append(
            reply.finding(
                recipient=recipient or recipient_in(reply),
                stage=stage_of(cmd),
                remote_mta=m["host"],
                origin="DragonFly Mail Agent bounce text",
                notes=(f'stage from "did not like our {cmd}"',),
                family=FAMILY,
                evidence=squash(f"{line.strip()} {raw}"),
            )
        )
    return findings


def _until_blank(lines: list[str], i: int, first: str) -> tuple[str, int]:
    parts = [first]
    j = i + 1
    while j < len(lines) and lines[j].strip():
        parts.append(lines[j].strip())
        j += 1
    return "\n".join(parts), j
