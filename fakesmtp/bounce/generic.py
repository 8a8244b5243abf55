"""The last resort: a reply introduced by common words ("said:", "reason:", "response was"...)
anywhere in the bounce, and a reply pasted on its own (a line that starts with a 4xx or 5xx)."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import (
    AFTER_COMMAND,
    BRACKET_STAGE,
    IN_REPLY_TO,
    LOOK_BACK,
    bracket_stage,
    host_before,
    looks_local,
    parse_reply,
    recipient_before,
    recipient_in,
    reply_block,
    squash,
    stage_of,
)

FAMILY = "generic"

# Phrases that introduce the remote server's words in many bounces.
_MARKER = re.compile(
    r"(?:\bsaid|\bresponse from the remote server was|\bresponse was|\breply was"
    r"|\berror that the other server returned was|\bserver returned|\breturned|\breason"
    r"|\berror was|\bError message below|\bbecause of|\bserver message|\bLast error"
    r"|\bDiagnostic[- ]Code:\s*smtp;|\bremote server replied|\bhas rejected|\bhost replied"
    r"|\bfailed with|\bresponded(?: with)?|\breplied(?: with)?|\berror message was|\banswered"
    r"|\bSMTP (?:error|response|reply)|\bremote (?:error|response)"
    r"|\bdid not like our [A-Za-z ]{1,20}?(?::<[^>\n]{0,300}>)?"
    # "SMTP:RCPT host 192.0.2.1: 553 ...": the command, the host, the reply.
    r"|\bSMTP:(?P<command>[A-Za-z]{3,8})\s+host\s+[^\s:]+)"
    r"\s*(?::\s*)?['\"]?(?=[2-5][0-5]\d[ -])",
    re.IGNORECASE,
)
# "for TEXT command" / "for RCPT command": some MTAs name the command so, before the reply.
_FOR_COMMAND = re.compile(r"\bfor\s+(?P<cmd>[A-Z][A-Za-z ]{1,20}?)\s+command\b", re.IGNORECASE)
# "hMailServer sent: RCPT TO:<x>" on the line above "Remote server replied: 550 ...": the
# command the reporting server sent, named in the line before the reply.
_SENT_COMMAND = re.compile(
    r"\bsent:\s*(?P<cmd>(?:RCPT\s+TO|MAIL\s+FROM|DATA|EHLO|HELO|STARTTLS|AUTH)\b[^\n]{0,300})",
    re.IGNORECASE,
)


def read(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    pos = 0
    while m := _MARKER.search(text, pos):
        raw, end = reply_block(text, m.end(), wrapped=True)
        pos = max(end, m.end())  # a marker inside this reply's text is part of it, not another
        quote = text[m.end() - 1] if text[m.end() - 1] in "'\"" else ""
        if quote and raw.rstrip().endswith(quote):
            raw = raw.rstrip()[:-1]
        if raw.count(")") > raw.count("("):
            raw = raw.rstrip().removesuffix(")")
        stage, notes, raw = _stage(text, m.start(), raw)
        if stage is None and m["command"] and (stage := stage_of(m["command"])):
            notes = [f'stage from "SMTP:{m["command"]}" before the reply']
        reply = parse_reply(raw)
        if reply is None or reply.code < 400:
            continue
        if looks_local(raw) and "said" not in m.group(0).lower():
            hints.no_reply.append(squash(raw))
            continue
        findings.append(
            reply.finding(
                recipient=recipient_before(text, m.start()) or recipient_in(reply),
                stage=stage,
                remote_mta=host_before(text, m.start()),
                origin=f'bounce text ("{squash(m.group(0))}")',
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(text[m.start() : end]),
            )
        )
    return findings


def _stage(text: str, marker_at: int, raw: str) -> tuple[str | None, list[str], str]:
    """The stage the words around a reply state; the reply without them."""
    if r := IN_REPLY_TO.search(raw):
        cmd = " ".join(r["cmd"].split())
        return stage_of(cmd), [f'stage from "in reply to {cmd} command"'], raw[: r.start()]
    if b := BRACKET_STAGE.search(raw):
        return (
            bracket_stage(b["step"]),
            [f'stage from "[{b["step"]}]" after the text'],
            raw[: b.start()],
        )
    lo = max(0, marker_at - LOOK_BACK)
    line_start = max(lo, text.rfind("\n", lo, marker_at) + 1)
    # The words just before the reply, on its line or the one above ("did not like our
    # RCPT TO:", "after end of data:", "for TEXT command").
    prev_start = max(lo, text.rfind("\n", lo, max(lo, line_start - 1)) + 1)
    window = text[prev_start : marker_at + 60]
    found = (
        list(AFTER_COMMAND.finditer(window))
        or list(_FOR_COMMAND.finditer(window))
        or list(_SENT_COMMAND.finditer(window))
    )
    if found and (stage := stage_of(found[-1]["cmd"])):
        return stage, [f'stage from "{squash(found[-1].group(0))}"'], raw
    return None, [], raw


# A refusal after a colon anywhere in the prose ("The reason of the failure: 550 5.1.1 ..."):
# the words before it vary too much between MTAs to list them all.
_EMBEDDED = re.compile(r"(?<=:)[ \t]*\n?[ \t]*(?=[45][0-5]\d[ -])")


def read_embedded(text: str, hints: Hints) -> list[Finding]:
    """The last resort in a bounce's prose: a 4xx or 5xx reply written after a colon."""
    findings: list[Finding] = []
    pos = 0
    while m := _EMBEDDED.search(text, pos):
        raw, end = reply_block(text, m.end(), wrapped=True)
        pos = max(end, m.end() + 1)
        stage, notes, raw = _stage(text, m.start(), raw)
        reply = parse_reply(raw)
        if reply is None:
            continue
        if looks_local(raw):
            hints.no_reply.append(squash(raw))
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        findings.append(
            reply.finding(
                recipient=recipient_in(reply) or recipient_before(text, m.start()),
                stage=stage,
                remote_mta=host_before(text, m.start()),
                origin=f'bounce text ("{squash(text[line_start : m.start()], 60)}")',
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(text[line_start:end]),
            )
        )
    return findings


# A line that starts with a 4xx or 5xx code, possibly quoted ("> ") in an email reply.
_PASTED_START = re.compile(r"^[ \t>]*(?=[45][0-5]\d[ -])", re.MULTILINE)


def read_pasted(text: str, hints: Hints) -> list[Finding]:
    """A reply pasted on its own: the first line that starts with a 4xx or 5xx code."""
    for m in _PASTED_START.finditer(text):
        raw, _ = reply_block(text, m.end())
        reply = parse_reply(raw)
        if reply is None:
            continue
        if looks_local(raw):
            hints.no_reply.append(squash(raw))
            continue
        notes: list[str] = []
        stage: str | None = None
        if r := IN_REPLY_TO.search(raw):
            cmd = " ".join(r["cmd"].split())
            stage = stage_of(cmd)
            reply = parse_reply(raw[: r.start()]) or reply
            notes.append(f'stage from "in reply to {cmd} command"')
        recipient = recipient_in(reply)
        if recipient:
            # A reply about one mailbox names it; matching on it keeps other recipients working.
            notes.append(f"recipient <{recipient}> taken from the reply text")
        return [
            reply.finding(
                recipient=recipient,
                stage=stage,
                remote_mta=None,
                origin="pasted reply",
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(raw),
            )
        ]
    return []
