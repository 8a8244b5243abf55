"""Exim (and the providers that run it: Mail.ru, GMX, 1&1, MXLogic...): "SMTP error from remote
mail server after CMD:" with the host and reply on the same line or on the next ones, and
Exim's log lines."""

from __future__ import annotations

import re

from .findings import Event, Finding, Hints, collapse
from .grammar import (
    BRACKETED,
    Reply,
    looks_local,
    parse_reply,
    recipient_in,
    squash,
    stage_of,
)

FAMILY = "Exim"

_MARKER = re.compile(
    r"(?:SMTP|LMTP) error from remote (?:mail )?(?:server|mailer)\b|\bLMTP error after\b",
    re.IGNORECASE,
)
# The command named after the marker, ending at the colon that ends the phrase (a colon inside
# "RCPT TO:<x>" does not end it). Bounded: the search stays linear on any input.
_COMMAND = re.compile(
    r"\s*(?:after\s+(?P<after>[^\n]{1,400}?)|for\s+(?P<for>[A-Za-z ]{1,40}?)\s+command,?)"
    r"\s*:?(?=\s*(?:\n|host\b|[2-5][0-5]\d[ -]|$))",
    re.IGNORECASE,
)
_HOST_PREFIX = re.compile(
    r"^\s*host:?\s+(?P<host>[^\s\[\]()]+)\.?(?:\s*[\[(](?P<ip>[^\])\n]*)[\])])?\s*:?\s*"
    r"(?:reason:\s*)?",
    re.IGNORECASE,
)
_REASON = re.compile(r"^\s*reason:\s*", re.IGNORECASE)
# The address a report is about, alone on its line (indented by Exim; GMX and 1&1 write it
# at the margin, quoted or not, with a colon).
_ADDRESS_LINE = re.compile(r"^\s{0,8}\"?(?P<addr>[^\s<>@\"]+@[^\s<>\"]+?)\"?(?:\s+<[^>]*>)?:?\s*$")
_HOST_LINE = re.compile(r"^[ \t]*host\s+(?P<host>\S+)\s+\[(?P<ip>[^\]]*)\]\s*$")
_FAILED_INTRO = re.compile(r"following address(?:\(es\)|es)? (?:failed|has failed)", re.IGNORECASE)


def _block(lines: list[str], i: int, start: int) -> tuple[str, int]:
    """The marker's text: from `start` on line i to a blank line, another address or marker."""
    parts = [lines[i][start:].strip()]
    j = i + 1
    while j < len(lines) and lines[j].strip():
        if _ADDRESS_LINE.match(lines[j]) or _MARKER.search(lines[j]):
            break
        parts.append(lines[j].strip())
        j += 1
    return "\n".join(parts), j


def read_error(block: str) -> tuple[Reply, str, str | None, str | None] | None:
    """An Exim error phrase: the reply, the command, the host, and the "after"/"for" wording."""
    marker = _MARKER.search(block)
    if marker is None:
        return None
    cmd = _COMMAND.match(block, marker.end())
    if cmd is None:
        return None
    rest = block[cmd.end() :].lstrip(" :\n")
    host = None
    if h := _HOST_PREFIX.match(rest):
        host, rest = h["host"], rest[h.end() :]
    elif r := _REASON.match(rest):
        rest = rest[r.end() :]
    # "host H [ip]:" may sit on its own line with the reply below it.
    reply = parse_reply(rest.lstrip("\n "))
    if reply is None:
        return None
    command = " ".join((cmd["after"] or cmd["for"]).split())
    said = f"after {command}" if cmd["after"] else f"for {command} command"
    return reply, command, host, said


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    recipient: str | None = None
    host: str | None = None
    failed_intro = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FAILED_INTRO.search(line):
            failed_intro = True
        if (a := _ADDRESS_LINE.match(line)) and not _MARKER.search(line):
            recipient, host = a["addr"], None
            if failed_intro and i + 1 < len(lines) and not _MARKER.search(lines[i + 1]):
                nxt = lines[i + 1].strip()
                if nxt and looks_local(nxt) and not _HOST_LINE.match(lines[i + 1]):
                    hints.local(nxt)
            i += 1
            continue
        if h := _HOST_LINE.match(line):
            host = h["host"]
        marker = _MARKER.search(line)
        if marker is None:
            i += 1
            continue
        block, nxt = _block(lines, i, marker.start())
        i = nxt
        read = read_error(block)
        if read is None:
            hints.no_reply.append(squash(block))
            continue
        reply, command, named_host, said = read
        rcpt = recipient
        stage = stage_of(command)
        if rcpt is None and stage == "rcpt" and (addr := BRACKETED.search(command)):
            rcpt = addr[1]
        if rcpt is None and stage in (None, "rcpt", "data", "end_of_data"):
            # An address in a reply to MAIL FROM is the sender's, not a recipient's.
            rcpt = recipient_in(reply)
        findings.append(
            reply.finding(
                recipient=rcpt,
                stage=stage,
                remote_mta=named_host or host,
                origin=f"Exim bounce text for {rcpt or 'the message'}",
                notes=(f'stage from "{said}"',),
                family=FAMILY,
                evidence=squash(block),
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# Log lines

_LOG = re.compile(
    r"\b(?P<msgid>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})\s+"
    r"(?P<flag>\*\*|==|=>|->|\*>)\s+(?P<rcpt>[^\s:]+):?(?P<rest>.*)$"
)
_FLAGS = re.compile(r" (?:\*\*|==|=>|->|\*>) ")
_LOG_HOST = re.compile(r"\bH=(?P<host>\S+)(?:\s+\[(?P<ip>[^\]]*)\])?")


def read_log(text: str, hints: Hints) -> list[Finding]:
    events: list[Event] = []
    if not _FLAGS.search(text):
        return []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not _FLAGS.search(line):  # a cheap test first: most lines are not these
            continue
        m = _LOG.search(line)
        if m is None:
            continue
        rcpt, flag, rest = m["rcpt"], m["flag"], m["rest"]
        if flag in ("=>", "->", "*>"):
            hints.delivered += 1
            events.append(Event(rcpt, None))
            continue
        # Exim writes a multi-line reply's line breaks as the two characters "\n".
        read = read_error(rest.replace("\\n", "\n"))
        if read is None:
            hints.no_reply.append(rest.strip(" :"))
            continue
        reply, command, host, said = read
        if host is None and (h := _LOG_HOST.search(rest)):
            host = h["host"]
        kind = "**, failed" if flag == "**" else "==, deferred"
        events.append(
            Event(
                rcpt,
                reply.finding(
                    recipient=rcpt,
                    stage=stage_of(command),
                    remote_mta=host,
                    origin=f"Exim log line {lineno} ({kind}, message {m['msgid']})",
                    notes=(f'stage from "{said}"',),
                    family=FAMILY,
                    evidence=squash(rest),
                ),
            )
        )
    return collapse(events)
