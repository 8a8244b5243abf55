"""Gmail and Google Workspace: "The error that the other server returned was: REPLY" (the code
often written twice, "550 550 5.1.1 ... (state 14)"), and "The response was:" in newer ones."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import (
    looks_local,
    parse_reply,
    recipient_before,
    reply_block,
    squash,
)

FAMILY = "Gmail"

_MARKER = re.compile(
    r"(?:The error that the other server returned was|The response from the remote server was"
    r"|The response was|The error was)\s*:\s*",
    re.IGNORECASE,
)
# Google's note of its own state machine after the reply: not the remote server's words.
_STATE = re.compile(r"\s*\(state \d+\)\.?\s*$")
_SERVER = re.compile(r"\bthe server for the domain\s+(?P<host>[A-Za-z0-9.-]+)", re.IGNORECASE)


def read(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    for m in _MARKER.finditer(text):
        start = m.end()
        while start < len(text) and text[start] in " \n":
            start += 1
        raw, end = reply_block(text, start)
        # A reply wrapped by Google's text (no code on the wrapped line) up to a blank line.
        tail = text[end : text.find("\n\n", end) if text.find("\n\n", end) >= 0 else len(text)]
        raw = raw + tail
        notes: list[str] = []
        if s := _STATE.search(raw):
            raw = raw[: s.start()]
            notes.append(f'Google\'s "{s.group(0).strip()}" after the reply left out')
        reply = parse_reply(raw)
        if reply is None or reply.code < 400:
            if looks_local(text[max(0, m.start() - 300) : m.end() + 200]):
                hints.no_reply.append(squash(text[m.start() : m.end() + 120]))
            continue
        host = _SERVER.search(text, max(0, m.start() - 1000), m.start())
        findings.append(
            reply.finding(
                recipient=recipient_before(text, m.start()),
                stage=None,
                remote_mta=host["host"] if host else None,
                origin=f'Gmail bounce text ("{squash(m.group(0))}")',
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(raw),
            )
        )
    return findings
