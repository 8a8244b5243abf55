"""Sendmail (V8 and V5) and the bounces written in its layout: "----- Transcript of session
follows -----" with ">>>"/"<<<" lines per "... while talking to HOST:", the failed addresses
listed above it, and Sendmail's log lines."""

from __future__ import annotations

import re

from . import transcript
from .findings import Event, Finding, Hints, collapse
from .grammar import (
    BRACKETED,
    Reply,
    clean,
    code_for_status,
    parse_reply,
    recipient_in,
    squash,
)

FAMILY = "Sendmail"

_SECTION = re.compile(r"^[ \t]*-----\s+(?P<title>.+?)\s+-----\s*$")
_REASON = re.compile(r"^\s*\(reason:\s*(?P<reason>.*?)\)?\s*$", re.IGNORECASE)


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    failed: list[str] = []  # the addresses Sendmail lists above the transcript
    section = ""
    own: list[str] = []  # Sendmail's own lines in the transcript (no arrow)
    in_transcript = False
    for line in lines:
        if s := _SECTION.match(line):
            section = s["title"].lower()
            in_transcript = "transcript of session" in section
        elif "addresses had" in section and (a := BRACKETED.match(line.strip())):
            failed.append(a[1])
        elif in_transcript and line.strip() and not transcript.TALKING.match(line):
            own.append(line.strip())
    if not transcript.has_transcript(text):
        if in_transcript or section:
            # A transcript with no remote line: every line is Sendmail's own (DNS, timeout,
            # a local mailer), so no remote server answered.
            local = [ln for ln in own if ln[:1].isdigit()] or own
            if local:
                hints.local(local[0])
        return []
    findings: list[Finding] = []
    for ex in transcript.refusals(transcript.read(text)):
        stage = ex.stage
        notes: list[str] = []
        if ex.command:
            notes.append(f'stage from the transcript line ">>> {ex.command}"')
        elif stage == "connect":
            notes.append("stage from the transcript: the first reply, before any command")
        if stage == "data":
            # Sendmail's transcript names the last command it sent, DATA, for a reply to the
            # DATA command and for the reply after the message alike; the latter is far more
            # common for a refusal.
            stage = "end_of_data"
            notes.append(
                "Sendmail shows DATA both for the DATA command and for the end of the "
                "message; assumed end_of_data, where content is refused"
            )
        # No RCPT in the transcript: the addresses listed above it, else the one written
        # just above the transcript ("Recipient: <bob@...>", as appliances in this layout do),
        # else the one the reply names in <brackets> (a bare one may be anyone: "you cannot
        # send to yourself (bob@...)").
        rcpts: list[str | None] = (
            [ex.recipient]
            if ex.recipient
            else list(failed) or [ex.named or recipient_in(ex.reply, bare=False)]
        )
        for rcpt in rcpts:
            findings.append(
                ex.reply.finding(
                    recipient=rcpt,
                    stage=stage,
                    remote_mta=ex.host,
                    origin="Sendmail session transcript" + (f" for <{rcpt}>" if rcpt else ""),
                    notes=tuple(notes),
                    family=FAMILY,
                    evidence=squash(" / ".join(ex.lines)),
                )
            )
    return findings


# --------------------------------------------------------------------------------------------
# Log lines

_TO = re.compile(r"\b(?P<qid>[0-9A-Za-z]{8,}):\s+to=")
_NEXT_FIELD = re.compile(r",\s+(?:ctladdr|delay|orcpt|xdelay)=")
_DSN = re.compile(r"\bdsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}),")
_STAT = re.compile(r"\bstat=")
_DEFERRED = re.compile(r"^Deferred:\s*")
_RELAY = re.compile(r"\brelay=(?P<host>[^\s,]+?)\.?(?:\s+\[(?P<ip>[^\]]*)\])?,")


def read_log(text: str, hints: Hints) -> list[Finding]:
    events: list[Event] = []
    if "stat=" not in text:
        return []
    for lineno, line in enumerate(text.split("\n"), 1):
        if "stat=" not in line:  # a plain substring test first: most lines are not these
            continue
        m = _TO.search(line)
        end = _NEXT_FIELD.search(line, m.end()) if m else None
        stat_at = _STAT.search(line, end.end()) if end else None
        if m is None or end is None or stat_at is None:
            continue
        to = line[m.end() : end.start()]
        recipients = BRACKETED.findall(to) or [a.strip() for a in to.split(",")]
        dsn_at = _DSN.search(line, end.end(), stat_at.start())
        stat, dsn = line[stat_at.end() :].strip(), dsn_at["dsn"] if dsn_at else None
        relay = _RELAY.search(line)
        host = relay["host"] if relay else None
        if stat.startswith("Sent"):
            hints.delivered += 1
            events.extend(Event(r, None) for r in recipients)
            continue
        detail = _DEFERRED.sub("", stat)
        reply = parse_reply(detail)
        notes: list[str] = []
        if reply is None:
            # Sendmail logs its own summary ("User unknown") when the remote server refused for
            # good; the reply's code is not in the log, only the enhanced status (dsn=).
            if stat.startswith("Deferred") or dsn is None or relay is None:
                hints.no_reply.append(stat)
                continue
            code = code_for_status(dsn)
            reply = Reply(code, dsn, (clean(detail),))
            notes.append(
                f"Sendmail logs no reply code, only dsn={dsn} and its own summary "
                f"stat={stat!r}: assumed {code}"
            )
        for rcpt in recipients:
            events.append(
                Event(
                    rcpt,
                    reply.finding(
                        recipient=rcpt,
                        fallback_status=dsn,
                        stage=None,
                        remote_mta=host,
                        origin=f"Sendmail log line {lineno} (queue id {m['qid']})",
                        notes=tuple(notes),
                        family=FAMILY,
                        evidence=squash(line),
                    ),
                )
            )
    return collapse(events)
