"""OpenSMTPD (and bounces in its one-line layout, EZweb's among them): "rcpt: REPLY" per failed
recipient under "the following list of recipients", the stage sometimes "(in reply to X)"."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import IN_REPLY_TO, looks_local, parse_reply, squash, stage_of

FAMILY = "OpenSMTPD"

_LINE = re.compile(
    r"^[ \t]*<?(?P<rcpt>[^\s<>@:\"]+@[^\s<>:\"]+?)>?:[ \t]*"
    # SurfControl-style "rcpt: [192.0.2.1], 550 ...": the address the reply came from first.
    r"(?:\[(?P<ip>[^\]\s]{1,60})\],?[ \t]*)?(?P<reply>[2-5][0-5]\d[ -].*)$"
)
_LOCAL_LINE = re.compile(r"^[ \t]*<?(?P<rcpt>[^\s<>@:\"]+@[^\s<>:\"]+?)>?:[ \t]*(?P<why>\D.*)$")
_INTRO = re.compile(r"following (?:list of )?recipients?", re.IGNORECASE)


def read(text: str, hints: Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    intro = False
    for i, line in enumerate(lines):
        if _INTRO.search(line):
            intro = True
        m = _LINE.match(line)
        if m is None:
            if intro and (loc := _LOCAL_LINE.match(line)) and looks_local(loc["why"]):
                hints.local(line.strip())
            continue
        raw = m["reply"].strip()
        # Indented lines after it are the reply wrapped.
        j = i + 1
        while j < len(lines) and lines[j][:1] in (" ", "\t") and lines[j].strip():
            if _LINE.match(lines[j]):
                break
            raw += "\n" + lines[j].strip()
            j += 1
        stage: str | None = None
        notes: list[str] = []
        flat = " ".join(raw.split("\n"))
        if r := IN_REPLY_TO.search(flat):
            cmd = " ".join(r["cmd"].split())
            stage = stage_of(cmd)
            notes.append(f'stage from "in reply to {cmd} command"')
            raw = flat[: r.start()]
        reply = parse_reply(raw)
        if reply is None or reply.code < 400:
            continue
        if looks_local(raw):
            hints.no_reply.append(squash(raw))
            continue
        findings.append(
            reply.finding(
                recipient=m["rcpt"],
                stage=stage,
                remote_mta=m["ip"],
                origin=f"bounce text line for {m['rcpt']}",
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(line),
            )
        )
    return findings
