"""Zoho Mail: "rcpt Invalid Address, ERROR_CODE :550, ERROR_CODE :5.1.1 text" per recipient."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import ADDRESS, Reply, clean, squash

FAMILY = "Zoho"

_LINE = re.compile(
    r"ERROR_CODE\s*:\s*(?P<code>[2-5][0-5]\d)\s*,?\s*(?:ERROR_CODE\s*:\s*)?"
    r"(?P<status>[245]\.\d{1,3}\.\d{1,3})?\s*(?P<text>.*)$",
    re.IGNORECASE,
)


def read(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    for line in text.split("\n"):
        m = _LINE.search(line)
        if m is None:
            continue
        addresses = ADDRESS.findall(line[: m.start()])
        reply = Reply(int(m["code"]), m["status"], (clean(m["text"]),) if m["text"].strip() else ())
        findings.append(
            reply.finding(
                recipient=addresses[0].rstrip(".") if addresses else None,
                stage=None,
                remote_mta=None,
                origin="Zoho bounce text",
                notes=("code and status read from Zoho's ERROR_CODE fields",),
                family=FAMILY,
                evidence=squash(line),
            )
        )
    return findings
