"""qmail (and qmail-based servers, Yahoo's among them): "<rcpt>:" then what qmail was doing in
words ("does not like recipient", "failed after I sent the message") and "Remote host said:"."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import (
    ADDRESS_LINE,
    BRACKET_STAGE,
    REPLY_LINE,
    bracket_stage,
    parse_reply,
    squash,
    stage_table,
)

FAMILY = "qmail"

# qmail says in words what it was doing when the remote server answered.
_CONTEXT = stage_table(
    (r"does not like recipient", "rcpt"),
    (r"sender was rejected", "mail"),
    (r"failed after I sent the message", "end_of_data"),
    (r"failed on DATA command", "data"),
    (r"my name was rejected", "helo"),
    (r"greeting failed", "connect"),
)
_SAID = re.compile(r"^[ \t]*Remote host said:\s*(?P<reply>.*)$")
_HOST = re.compile(
    r"(?:^|Connected to\s+)(?P<host>\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f:]+:[0-9a-f:]+)\b"
)
# qmail's own sentences after a reply: not part of it.
_OWN_WORDS = re.compile(r"^(?:Giving up on|I'm not going to|I'll try again|Sorry,|---)")
# qmail's own verdicts: it never reached a server that answered.
_LOCAL = re.compile(
    r"Sorry, I (?:wasn't able to establish an SMTP connection|couldn't find any host)"
    r"|Sorry, no mailbox here by that name|This address no longer accepts mail"
    r"|I'm not going to try again; this message has been in the queue too long",
    re.IGNORECASE,
)


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    recipient: str | None = None
    context = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if a := ADDRESS_LINE.match(stripped):
            recipient, context = a[1], ""
            continue
        m = _SAID.match(line)
        if m is None:
            if stripped:
                context = stripped
                if recipient and _LOCAL.search(stripped):
                    hints.local(stripped)
            continue
        chunk = [m["reply"]]
        j = i + 1
        # Further lines of the same reply, or the reply wrapped (no code) up to a blank line.
        while j < len(lines) and lines[j].strip() and not _SAID.match(lines[j]):
            nxt = lines[j].strip()
            code = REPLY_LINE.match(nxt)
            if code is not None and not chunk[0].startswith(code["code"]):
                break
            if ADDRESS_LINE.match(nxt) or _OWN_WORDS.match(nxt):
                break
            chunk.append(nxt)
            j += 1
        raw = "\n".join(chunk)
        stage: str | None = None
        notes: list[str] = []
        if b := BRACKET_STAGE.search(raw):
            raw = raw[: b.start()]
            stage = bracket_stage(b["step"])
            notes.append(f'stage from "[{b["step"]}]" after the text')
        else:
            for pattern, candidate in _CONTEXT:
                if pattern.search(context):
                    stage = candidate
                    notes.append(f'stage from "{context}"')
                    break
        reply = parse_reply(raw)
        if reply is None:
            hints.no_reply.append(stripped)
            continue
        h = _HOST.search(context)
        findings.append(
            reply.finding(
                recipient=recipient,
                stage=stage,
                remote_mta=h["host"] if h else None,
                origin="qmail bounce text" + (f" for <{recipient}>" if recipient else ""),
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(f"{context} / {raw}"),
            )
        )
    return findings
