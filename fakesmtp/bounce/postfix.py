"""Postfix: "<rcpt>: host H[ip] said: REPLY (in reply to CMD command)" in the bounce text and in
X-Postfix Diagnostic-Codes, "refused to talk to me" for greetings, and its log lines."""

from __future__ import annotations

import re

from .findings import Event, Finding, Hints, collapse
from .grammar import IN_REPLY_TO, Reply, looks_local, parse_reply, squash, stage_of, wrapped_after

FAMILY = "Postfix"

_SAID = re.compile(
    r"\bhost\s+(?P<host>[^\s\[]+)\s*\[(?P<ip>[^\]]*)\]\s+(?P<how>said|refused\s+to\s+talk\s+to\s+me)"
    r":\s*"
    # Without "host": "connect to H[ip]: server refused to talk to me: 421 ..."
    r"|\bconnect\s+to\s+(?P<host2>[^\s\[]+)\s*\[(?P<ip2>[^\]]*)\](?::\d+)?:\s+server\s+"
    r"(?P<how2>refused\s+to\s+talk\s+to\s+me):\s*",
    re.IGNORECASE,
)


def read_said(detail: str) -> tuple[Reply, str | None, str, tuple[str, ...]] | None:
    """Postfix's "host X[ip] said: REPLY (in reply to CMD command)": reply, stage, host, notes."""
    said = _SAID.search(detail)
    if said is None:
        return None
    raw = detail[said.end() :]
    stage: str | None = None
    notes: tuple[str, ...] = ()
    host = said["host"] or said["host2"]
    if said["how"] is None or "refused" in said["how"].lower():
        stage, notes = "connect", ('stage from "refused to talk to me": the greeting banner',)
    elif r := IN_REPLY_TO.search(raw):
        raw = raw[: r.start()]
        cmd = " ".join(r["cmd"].split())
        stage, notes = stage_of(cmd), (f'stage from "in reply to {cmd} command"',)
    reply = parse_reply(raw)
    return (reply, stage, host, notes) if reply is not None else None


# --------------------------------------------------------------------------------------------
# The bounce text

_PROSE = re.compile(r"^<(?P<rcpt>[^>]*)>(?:\s+\([^)]*\))?:\s+(?P<detail>.+)$")


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    i = 0
    while i < len(lines):
        m = _PROSE.match(lines[i])
        if m is None:
            i += 1
            continue
        # Postfix wraps a long report with four-space indented continuation lines.
        raw, i = wrapped_after(lines, i, m["detail"].strip())
        detail = " ".join(raw.split("\n"))
        said = read_said(detail)
        if said is None:
            hints.no_reply.append(detail)
            if looks_local(detail) or "delivery temporarily suspended" in detail:
                hints.local_failure = True
            continue
        reply, stage, host, notes = said
        joined = raw.count("\n")
        findings.append(
            reply.finding(
                recipient=m["rcpt"] or None,
                stage=stage,
                remote_mta=host,
                origin=f"Postfix bounce text for <{m['rcpt']}>",
                notes=(
                    *notes,
                    *((f"{joined} wrapped line(s) of the report joined",) if joined else ()),
                ),
                family=FAMILY,
                evidence=squash(detail),
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# Log lines

# Log lines are read in steps (recipient, then status, then detail), each a single forward
# search: one pattern spanning the line would backtrack over it on a hostile input.
_TO = re.compile(r"\b(?P<qid>[0-9A-Za-z]{5,}):\s+to=<(?P<rcpt>[^<>]*)>,")
_STATUS = re.compile(r"\bstatus=(?P<status>[a-z]+)")


def read_log(text: str, hints: Hints) -> list[Finding]:
    events: list[Event] = []
    if "status=" not in text:
        return []
    for lineno, line in enumerate(text.split("\n"), 1):
        if "status=" not in line:  # a plain substring test first: most lines are not these
            continue
        m = _TO.search(line)
        st = _STATUS.search(line, m.end()) if m else None
        if m is None or st is None:
            continue
        rcpt, status, detail = m["rcpt"], st["status"], _parenthesised(line[st.end() :])
        if status == "sent":
            hints.delivered += 1
            events.append(Event(rcpt, None))
            continue
        said = read_said(detail)
        if said is None:
            hints.no_reply.append(detail or f"status={status}")
            continue
        reply, stage, host, notes = said
        events.append(
            Event(
                rcpt,
                reply.finding(
                    recipient=rcpt or None,
                    stage=stage,
                    remote_mta=host,
                    origin=f"Postfix log line {lineno} (status={status}, queue id {m['qid']})",
                    notes=notes,
                    family=FAMILY,
                    evidence=squash(detail),
                ),
            )
        )
    return collapse(events)


def _parenthesised(rest: str) -> str:
    """The "(...)" that ends a Postfix log line after status=..., without the parentheses."""
    rest = rest.strip()
    return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else ""
