"""Microsoft Exchange (2003 to 2019) and Office 365 / Outlook.com NDRs: "Remote Server returned
'REPLY'", "#550 5.1.1 ... ##", "<host #5.0.0 smtp;550 ...>", "Reported error: REPLY"."""

from __future__ import annotations

import re

from .findings import Finding, Hints
from .grammar import looks_local, parse_reply, recipient_before, squash

FAMILY = "Exchange"

_REPLY = re.compile(
    r"(?:Remote Server|Server at (?P<hosta>[^\s']+)(?:\s+\([^)\n]*\))?) returned"
    r" '(?P<a>[^\n]{0,2000})'"
    # "#550 5.1.1 ... ##", after the name of the server that answered when it was remote
    # ("mx.example.net #550 5.1.1 User unknown ##", Exchange 2007 to 2013).
    r"|^[ \t]*(?:(?P<hostb>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)[ \t]+)?"
    r"#(?P<b>[2-5][0-5]\d[ -].*?)\s*##"
    r"|<(?P<hostc>[^\s<>#]+)\s+#\d\.\d{1,3}\.\d{1,3}\s+smtp;\s*"
    r"(?P<c>[2-5][0-5]\d[ -][^\n]{0,2000}?)>[ \t]*$"
    r"|^[ \t]*Reported error:\s*(?P<d>[2-5][0-5]\d[ -][^\n]*)",
    re.IGNORECASE | re.MULTILINE,
)
_REMOTE = re.compile(r"^[ \t]*Remote server:\s*(?P<host>\S+)", re.IGNORECASE | re.MULTILINE)
_GENERATOR = re.compile(r"^[ \t]*Generating server:\s*(?P<host>\S+)", re.IGNORECASE | re.MULTILINE)


def read(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    remote = _REMOTE.search(text)
    generator = _GENERATOR.search(text)
    for m in _REPLY.finditer(text):
        raw = next((g for g in (m["a"], m["b"], m["c"], m["d"]) if g is not None), "")
        reply = parse_reply(raw)
        if reply is None:
            continue
        if looks_local(raw):
            # Exchange's own verdict on a message it could not hand over (DNS, expiry).
            hints.local(raw)
            continue
        notes: list[str] = []
        host = m["hostc"] or m["hosta"] or m["hostb"] or (remote["host"] if remote else None)
        if host is None and generator is not None:
            host = generator["host"]
            notes.append(
                "Exchange names no remote server: the server that wrote the NDR "
                "(Generating server) gave the reply"
            )
        findings.append(
            reply.finding(
                recipient=recipient_before(text, m.start()),
                stage=None,
                remote_mta=host,
                origin="Exchange / Office 365 NDR text",
                notes=tuple(notes),
                family=FAMILY,
                evidence=squash(m.group(0)),
            )
        )
    return findings
