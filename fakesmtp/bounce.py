"""Turn a bounce (a DSN, an MTA's bounce text or log lines, or a pasted reply) into a scenario.

`parse_bounce` finds what the remote server answered, to whom and at which stage;
`scenario_yaml` writes a scenario that gives the very same reply, with comments saying where
each value came from and what was assumed. Pure text in, text out: no files, no sockets.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import html
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from fakesmtp import catalog

__all__ = ["BounceError", "Finding", "bounce_to_yaml", "parse_bounce", "scenario_yaml"]


class BounceError(ValueError):
    """The input holds no SMTP reply this module can read; the message says what was looked for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One reply the remote server gave, as the bounce tells it."""

    recipient: str | None
    code: int
    status: str | None
    text: tuple[str, ...]
    stage: str | None  # None: the bounce does not say at which command the reply came
    remote_mta: str | None
    # How many times this reply was given before the recipient got further (delivered, or met a
    # different reply), as a log shows; 0 when nothing later is known, so the reply always fires.
    transient_then_delivered: int = 0
    origin: str
    notes: tuple[str, ...] = ()  # what was inferred while reading, shown as comments


# --------------------------------------------------------------------------------------------
# Replies

# RFC 5321 codes have a second digit of 0-5; an enhanced status (RFC 3463) may follow.
_REPLY_LINE = re.compile(
    r"(?P<code>[2-5][0-5]\d)(?P<sep>[ -]|$)"
    r"(?:(?P<status>[245]\.\d{1,3}\.\d{1,3})(?=\s|$))?\s*(?P<text>.*)$"
)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# The lookbehind starts a match only where a word starts: each word is read once, not once
# per character, however long it is.
_ADDRESS = re.compile(r"(?<![^\s<>()\[\]\"',;:])[^\s<>()\[\]\"',;:@]+@[A-Za-z0-9.-]*[A-Za-z0-9]")
_BRACKETED = re.compile(r"<([^<>]*)>")  # the first <...> in a command or a line
_BRACKETED_ADDRESS = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
_ADDRESS_LINE = re.compile(r"^<([^<>]+)>:\s*$")  # "<bob@example.test>:" alone on its line
_SENDER_WORD = re.compile(r"\bsender\b", re.IGNORECASE)


def _clean(line: str) -> str:
    """No control character can travel in a reply line; a tab was a space to the sender."""
    return _CONTROL.sub(" ", line.replace("\t", " ")).strip()


@dataclass(frozen=True, slots=True)
class _Reply:
    code: int
    status: str | None
    text: tuple[str, ...]

    def finding(self, *, fallback_status: str | None = None, **where: Any) -> Finding:
        """This reply as a Finding; ``where`` says for whom, at which stage, from what."""
        status = self.status or fallback_status
        return Finding(code=self.code, status=status, text=self.text, **where)


def _parse_reply(raw: str) -> _Reply | None:
    """Read `550 5.1.1 text`, a multi-line reply, or one flattened onto a single line."""
    raw = "\n".join(_clean(line) for line in raw.split("\n"))
    lines = [ln.strip() for ln in raw.strip().split("\n") if ln.strip()]
    if not lines:
        return None
    first = _REPLY_LINE.match(lines[0])
    if first is None:
        return None
    code, status = first["code"], first["status"]
    if len(lines) == 1 and first["sep"] == "-":
        # Postfix logs and DSNs join a multi-line reply's lines with spaces, keeping each
        # line's "550-5.1.1" prefix: split there to get the lines back.
        prefix = rf"{code}[ -]" + (rf"{re.escape(status)}(?=\s|$)" if status else "")
        lines = re.split(rf"(?<!\s)\s+(?={prefix})", lines[0])
    texts: list[str] = []
    for line in lines:
        m = _REPLY_LINE.match(line)
        if m is not None and m["code"] == code:
            texts.append(m["text"].strip())
        elif texts:
            # A line without the code continues the previous one (text wrapped by the MTA).
            texts[-1] = f"{texts[-1]} {line}".strip()
        else:
            return None
    while len(texts) > 1 and not texts[-1]:
        texts.pop()
    return _Reply(int(code), status, tuple(texts) if any(texts) else ())


# --------------------------------------------------------------------------------------------
# Stages

StageTable = tuple[tuple[re.Pattern[str], str], ...]


def _stage_table(*pairs: tuple[str, str]) -> StageTable:
    """(wording pattern, stage) pairs, compiled once, case-insensitive, first match wins."""
    return tuple((re.compile(pattern, re.IGNORECASE), stage) for pattern, stage in pairs)


_STAGE_OF_COMMAND: StageTable = _stage_table(
    (r"^(?:end\s+of\s+(?:data|message)|\.|bdat\b|message\s+body|body\b)", "end_of_data"),
    (r"^rcpt(?:\s+to)?\b|^rcpt_to\b", "rcpt"),
    (r"^mail(?:\s+from)?\b|^mail_from\b", "mail"),
    (r"^data\b", "data"),
    (r"^(?:e|l)hlo\b", "ehlo"),
    (r"^helo\b", "helo"),
    (
        r"^(?:initial\s+)?(?:connection|connect|greeting|banner)\b"
        r"|^initial\s+server\s+greeting",
        "connect",
    ),
    (r"^starttls\b", "starttls"),
    (r"^auth\b", "auth"),
    (r"^rset\b", "rset"),
    (r"^quit\b", "quit"),
    (r"^noop\b", "noop"),
    (r"^vrfy\b", "vrfy"),
    (r"^expn\b", "expn"),
    (r"^help\b", "help"),
)


_COMMAND_NOISE = re.compile(r"^(?:the\s+)?(?:pipelined\s+)?", re.IGNORECASE)


def _stage_of(command: str) -> str | None:
    """Map an MTA's name for the command ("RCPT TO", "end of DATA", "pipelined MAIL FROM:<x>")."""
    words = _COMMAND_NOISE.sub("", command.strip())
    for pattern, stage in _STAGE_OF_COMMAND:
        if pattern.search(words):
            return stage
    return None


# Where a code is usually met, best first, when the bounce does not say (see _default_stage).
_PREFERENCE = (
    "rcpt",
    "end_of_data",
    "mail",
    "data",
    "connect",
    "ehlo",
    "helo",
    "auth",
    "starttls",
    "rset",
    "quit",
    "noop",
    "vrfy",
    "expn",
    "help",
    "unknown",
)
# Words that say the message itself was refused (rate limits also mention spam: not those).
_CONTENT_WORDS = re.compile(
    r"\b(?:virus|malware|message content|content (?:rejected|refused|blocked)"
    r"|message (?:rejected|refused|blocked)|spam (?:score|detected|content|message)"
    r"|looks like (?:spam|bulk)|bulk mail|too (?:large|big)|message size|attachment"
    r"|mail loop|hop count)",
    re.IGNORECASE,
)
# Enhanced statuses about the message rather than the address: size, content, DMARC.
_MESSAGE_STATUSES = re.compile(r"^[45]\.(?:6\.\d+|3\.4|2\.3|7\.26|7\.27)$")


def _default_stage(code: int, status: str | None, text: Iterable[str]) -> tuple[str, str]:
    """Choose a stage for a reply whose bounce does not say; returns (stage, why)."""
    entry = catalog.code(code)
    stages = entry.stages if entry is not None else ()
    source = f"the catalog puts {code} at {', '.join(stages)}"
    if not stages:
        # A code the catalog does not list (a private one): most refusals come at RCPT.
        stages = ("rcpt", "end_of_data")
        source = f"the catalog does not list {code}"
    # A status about the message itself (x.3.4 too big, x.6.x content) or content words in
    # the text point at the end of data; everything else at the recipient.
    about_message = bool(status and _MESSAGE_STATUSES.match(status))
    about_message = about_message or bool(_CONTENT_WORDS.search(" ".join(text)))
    if about_message and "end_of_data" in stages:
        return "end_of_data", f"{source}; assumed end_of_data, as the reply is about the message"
    stage = next((s for s in _PREFERENCE if s in stages), stages[0])
    return stage, f"{source}; assumed {stage}, the most usual of them for a refusal"


# --------------------------------------------------------------------------------------------
# Findings from several events of one recipient (log files)


@dataclass(frozen=True, slots=True)
class _Event:
    recipient: str
    finding: Finding | None  # None: delivered


def _collapse(events: list[_Event]) -> list[Finding]:
    """Per recipient, one finding per distinct reply, limited to N when something came after."""
    by_rcpt: dict[str, list[_Event]] = {}
    for event in events:
        by_rcpt.setdefault(event.recipient.casefold(), []).append(event)
    findings: list[Finding] = []
    for seq in by_rcpt.values():
        replies: dict[tuple[object, ...], list[int]] = {}
        for i, event in enumerate(seq):
            if event.finding is not None:
                replies.setdefault(_reply_key(event.finding), []).append(i)
        for positions in replies.values():
            first = seq[positions[0]].finding
            assert first is not None
            # Something happened after this reply's last occurrence: the remote server let the
            # recipient through (or answered differently) after it had said this N times.
            limited = positions[-1] < len(seq) - 1
            count = len(positions) if limited else 0
            findings.append(replace(first, transient_then_delivered=count))
    return findings


def _reply_key(f: Finding) -> tuple[object, ...]:
    return (f.code, f.status, f.text, f.stage)


# --------------------------------------------------------------------------------------------
# MTA log lines

# Log lines are read in steps (recipient, then status, then detail), each a single forward
# search: one pattern spanning the line would backtrack over it on a hostile input.
_POSTFIX_TO = re.compile(r"\b(?P<qid>[0-9A-Za-z]{5,}):\s+to=<(?P<rcpt>[^<>]*)>,")
_POSTFIX_STATUS = re.compile(r"\bstatus=(?P<status>[a-z]+)")
_POSTFIX_SAID = re.compile(
    r"host\s+(?P<host>[^\s\[]+)\[(?P<ip>[^\]]*)\]\s+(?P<how>said|refused to talk to me):\s+"
)

_EXIM_LOG = re.compile(
    r"\b(?P<msgid>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})\s+"
    r"(?P<flag>\*\*|==|=>|->|\*>)\s+(?P<rcpt>[^\s:]+):?(?P<rest>.*)$"
)
_EXIM_ERROR = re.compile(
    r"SMTP error from remote (?:mail )?server (?:after (?P<after>[^\n]{1,400}?)"
    r"|for (?P<for>[A-Za-z ]{1,40}?) command,"
    r"\s+host:\s+(?P<host2>\S+)\s+\((?P<ip2>[^)]*)\)\s+reason):\s*"
    r"(?:host\s+(?P<host>\S+)\s+\[(?P<ip>[^\]]*)\]:\s*)?(?P<reply>[2-5][0-5]\d[ -].*)$",
    re.DOTALL,
)
_EXIM_HOST = re.compile(r"\bH=(?P<host>\S+)(?:\s+\[(?P<ip>[^\]]*)\])?")

_SENDMAIL_TO = re.compile(r"\b(?P<qid>[0-9A-Za-z]{8,}):\s+to=")
_SENDMAIL_NEXT_FIELD = re.compile(r",\s+(?:ctladdr|delay|orcpt|xdelay)=")
_SENDMAIL_DSN = re.compile(r"\bdsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}),")
_SENDMAIL_STAT = re.compile(r"\bstat=")
_DEFERRED = re.compile(r"^Deferred:\s*")
_SENDMAIL_RELAY = re.compile(r"\brelay=(?P<host>[^\s,]+?)\.?(?:\s+\[(?P<ip>[^\]]*)\])?,")


@dataclass(slots=True)
class _Hints:
    """What was seen that is not a reply, so that "nothing found" can say why."""

    delivered: int = 0
    no_reply: list[str] = field(default_factory=list)


def _postfix_log(text: str, hints: _Hints) -> list[Finding]:
    events: list[_Event] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        m = _POSTFIX_TO.search(line)
        st = _POSTFIX_STATUS.search(line, m.end()) if m else None
        if m is None or st is None:
            continue
        rcpt, status, detail = m["rcpt"], st["status"], _parenthesised(line[st.end() :])
        if status == "sent":
            hints.delivered += 1
            events.append(_Event(rcpt, None))
            continue
        said = _postfix_said(detail)
        if said is None:
            hints.no_reply.append(detail or f"status={status}")
            continue
        reply, stage, host, notes = said
        events.append(
            _Event(
                rcpt,
                reply.finding(
                    recipient=rcpt or None,
                    stage=stage,
                    remote_mta=host,
                    origin=f"Postfix log line {lineno} (status={status}, queue id {m['qid']})",
                    notes=notes,
                ),
            )
        )
    return _collapse(events)


def _parenthesised(rest: str) -> str:
    """The "(...)" that ends a Postfix log line after status=..., without the parentheses."""
    rest = rest.strip()
    return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else ""


def _postfix_said(detail: str) -> tuple[_Reply, str | None, str, tuple[str, ...]] | None:
    """Postfix's "host X[ip] said: REPLY (in reply to CMD command)": reply, stage, host, notes."""
    said = _POSTFIX_SAID.search(detail)
    if said is None:
        return None
    raw = detail[said.end() :]
    stage: str | None = None
    notes: tuple[str, ...] = ()
    if said["how"] == "refused to talk to me":
        stage, notes = "connect", ('stage from "refused to talk to me": the greeting banner',)
    elif r := _IN_REPLY_TO.search(raw):
        raw = raw[: r.start()]
        stage, notes = _stage_of(r["cmd"]), (f'stage from "in reply to {r["cmd"]} command"',)
    reply = _parse_reply(raw)
    return (reply, stage, said["host"], notes) if reply is not None else None


def _exim_log(text: str, hints: _Hints) -> list[Finding]:
    events: list[_Event] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        m = _EXIM_LOG.search(line)
        if m is None:
            continue
        rcpt, flag, rest = m["rcpt"], m["flag"], m["rest"]
        if flag in ("=>", "->", "*>"):
            hints.delivered += 1
            events.append(_Event(rcpt, None))
            continue
        # Exim writes a multi-line reply's line breaks as the two characters "\n".
        err = _EXIM_ERROR.search(rest.replace("\\n", "\n"))
        reply = _parse_reply(err["reply"]) if err else None
        if err is None or reply is None:
            hints.no_reply.append(rest.strip(" :"))
            continue
        command = err["after"] or err["for"]
        said = f"after {command}" if err["after"] else f"for {command} command"
        host = err["host"] or err["host2"]
        if host is None and (h := _EXIM_HOST.search(rest)):
            host = h["host"]
        kind = "**, failed" if flag == "**" else "==, deferred"
        events.append(
            _Event(
                rcpt,
                reply.finding(
                    recipient=rcpt,
                    stage=_stage_of(command),
                    remote_mta=host,
                    origin=f"Exim log line {lineno} ({kind}, message {m['msgid']})",
                    notes=(f'stage from "{said}"',),
                ),
            )
        )
    return _collapse(events)


def _sendmail_log(text: str, hints: _Hints) -> list[Finding]:
    events: list[_Event] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        m = _SENDMAIL_TO.search(line)
        end = _SENDMAIL_NEXT_FIELD.search(line, m.end()) if m else None
        stat_at = _SENDMAIL_STAT.search(line, end.end()) if end else None
        if m is None or end is None or stat_at is None:
            continue
        to = line[m.end() : end.start()]
        recipients = _BRACKETED.findall(to) or [a.strip() for a in to.split(",")]
        dsn_at = _SENDMAIL_DSN.search(line, end.end(), stat_at.start())
        stat, dsn = line[stat_at.end() :].strip(), dsn_at["dsn"] if dsn_at else None
        relay = _SENDMAIL_RELAY.search(line)
        host = relay["host"] if relay else None
        if stat.startswith("Sent"):
            hints.delivered += 1
            events.extend(_Event(r, None) for r in recipients)
            continue
        detail = _DEFERRED.sub("", stat)
        reply = _parse_reply(detail)
        notes: list[str] = []
        if reply is None:
            # Sendmail logs its own summary ("User unknown") when the remote server refused for
            # good; the reply's code is not in the log, only the enhanced status (dsn=).
            if stat.startswith("Deferred") or dsn is None or relay is None:
                hints.no_reply.append(stat)
                continue
            code = _code_for_status(dsn)
            reply = _Reply(code, dsn, (_clean(detail),))
            notes.append(
                f"Sendmail logs no reply code, only dsn={dsn} and its own summary "
                f"stat={stat!r}: assumed {code}"
            )
        for rcpt in recipients:
            events.append(
                _Event(
                    rcpt,
                    reply.finding(
                        recipient=rcpt,
                        fallback_status=dsn,
                        stage=None,
                        remote_mta=host,
                        origin=f"Sendmail log line {lineno} (queue id {m['qid']})",
                        notes=tuple(notes),
                    ),
                )
            )
    return _collapse(events)


def _code_for_status(status: str) -> int:
    """The basic code that usually carries this enhanced status (Sendmail logs only the latter)."""
    detail = status[2:]
    if status[0] == "4":
        return {"2.2": 452, "3.1": 452, "5.3": 452, "7.0": 421}.get(detail, 451)
    return {"2.2": 552, "2.3": 552, "3.4": 552, "7.1": 554, "3.0": 554, "1.3": 553, "7.8": 535}.get(
        detail, 550
    )


# --------------------------------------------------------------------------------------------
# Bounce prose (the human-readable part of a DSN, or a non-standard bounce)

_POSTFIX_PROSE = re.compile(r"^<(?P<rcpt>[^>]*)>(?:\s+\([^)]*\))?:\s+(?P<detail>.+)$")


def _postfix_prose(text: str, hints: _Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    i = 0
    while i < len(lines):
        m = _POSTFIX_PROSE.match(lines[i])
        i += 1
        if m is None:
            continue
        # Postfix wraps a long report with four-space indented continuation lines.
        parts = [m["detail"].strip()]
        while i < len(lines) and lines[i][:1] in (" ", "\t") and lines[i].strip():
            parts.append(lines[i].strip())
            i += 1
        detail = " ".join(parts)
        said = _postfix_said(detail)
        if said is None:
            hints.no_reply.append(detail)
            continue
        reply, stage, host, notes = said
        findings.append(
            reply.finding(
                recipient=m["rcpt"] or None,
                stage=stage,
                remote_mta=host,
                origin=f"Postfix bounce text for <{m['rcpt']}>",
                notes=notes,
            )
        )
    return findings


_EXIM_ADDRESS_LINE = re.compile(r"^\s{1,8}(?P<addr>[^\s<>@]+@[^\s<>]+?)(?:\s+<[^>]*>)?:?\s*$")
_EXIM_HOST_LINE = re.compile(r"^[ \t]*host\s+(?P<host>\S+)\s+\[(?P<ip>[^\]]*)\]")


def _exim_prose(text: str, hints: _Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    recipient: str | None = None
    host: str | None = None
    for i, line in enumerate(lines):
        if (a := _EXIM_ADDRESS_LINE.match(line)) and "SMTP error" not in line:
            recipient, host = a["addr"], None
            continue
        if h := _EXIM_HOST_LINE.match(line):
            host = h["host"]
        start = line.find("SMTP error from remote")
        if start < 0:
            continue
        # The reply follows on the same line or, when Exim ends the line after the command,
        # on the next lines (one per line of a multi-line reply).
        chunk = [line[start:].strip()]
        j = i + 1
        while j < len(lines) and _REPLY_LINE.match(lines[j].strip()) and lines[j].strip():
            chunk.append(lines[j].strip())
            j += 1
        joined = chunk[0] + ("\n" + "\n".join(chunk[1:]) if len(chunk) > 1 else "")
        err = _EXIM_ERROR.search(joined.replace(":\n", ": ", 1))
        reply = _parse_reply(err["reply"]) if err else None
        if err is None or reply is None:
            hints.no_reply.append(line.strip())
            continue
        command = err["after"] or err["for"]
        rcpt = recipient
        if rcpt is None and _stage_of(command) == "rcpt" and (addr := _BRACKETED.search(command)):
            rcpt = addr[1]
        findings.append(
            reply.finding(
                recipient=rcpt,
                stage=_stage_of(command),
                remote_mta=err["host"] or err["host2"] or host,
                origin=f"Exim bounce text for {rcpt or 'the message'}",
                notes=(f'stage from "{"after" if err["after"] else "for"} {command}"',),
            )
        )
    return findings


_SENDMAIL_TALKING = re.compile(r"^\.\.\.\s+while talking to\s+\[?(?P<host>[^\s\]]+?)\]?\.?:\s*$")
_SENDMAIL_SECTION = re.compile(r"^[ \t]*-----\s+(?P<title>.+?)\s+-----\s*$")


def _sendmail_prose(text: str, hints: _Hints) -> list[Finding]:
    lines = text.split("\n")
    failed: list[str] = []  # the addresses Sendmail lists above the transcript
    section = ""
    for line in lines:
        if s := _SENDMAIL_SECTION.match(line):
            section = s["title"].lower()
        elif "addresses had" in section and (a := _BRACKETED.match(line.strip())):
            failed.append(a[1])
    findings: list[Finding] = []
    host: str | None = None
    command = ""
    reply_lines: list[str] = []

    def flush() -> None:
        reply = _parse_reply("\n".join(reply_lines))
        reply_lines.clear()
        if reply is None or reply.code < 400:
            return
        stage = _stage_of(command) if command else None
        notes = [f'stage from the transcript line ">>> {command}"'] if command else []
        if stage == "data":
            # Sendmail's transcript names the last command it sent, DATA, for a reply to the
            # DATA command and for the reply after the message alike; the latter is far more
            # common for a refusal.
            stage = "end_of_data"
            notes.append(
                "Sendmail shows DATA both for the DATA command and for the end of the "
                "message; assumed end_of_data, where content is refused"
            )
        rcpts: list[str | None]
        if stage == "rcpt" and (a := _BRACKETED.search(command)):
            rcpts = [a[1]]
        else:
            rcpts = list(failed) or [None]
        for rcpt in rcpts:
            findings.append(
                reply.finding(
                    recipient=rcpt,
                    stage=stage,
                    remote_mta=host,
                    origin="Sendmail session transcript" + (f" for <{rcpt}>" if rcpt else ""),
                    notes=tuple(notes),
                )
            )

    for line in lines:
        if t := _SENDMAIL_TALKING.match(line.strip()):
            if reply_lines:
                flush()
            host = t["host"]
        elif line.startswith(">>> "):
            if reply_lines:
                flush()
            command = line[4:].strip()
        elif line.startswith("<<< "):
            reply_lines.append(line[4:])
        elif reply_lines:
            flush()
    if reply_lines:
        flush()
    return findings


# qmail says in words what it was doing when the remote server answered.
_QMAIL_CONTEXT: StageTable = _stage_table(
    (r"does not like recipient", "rcpt"),
    (r"sender was rejected", "mail"),
    (r"failed after I sent the message", "end_of_data"),
    (r"failed on DATA command", "data"),
    (r"my name was rejected", "helo"),
    (r"greeting failed", "connect"),
)
_QMAIL_SAID = re.compile(r"^[ \t]*Remote host said:\s*(?P<reply>.*)$")
_QMAIL_HOST = re.compile(
    r"(?:^|Connected to\s+)(?P<host>\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f:]+:[0-9a-f:]+)\b"
)
# Yahoo's qmail-based servers end the text with the protocol step in brackets.
_BRACKET_STAGE = re.compile(r"\[(?P<step>RCPT_TO|MAIL_FROM|BODY|DATA|CONNECT|EOD)\]\s*$")


def _qmail_prose(text: str, hints: _Hints) -> list[Finding]:
    lines = text.split("\n")
    findings: list[Finding] = []
    recipient: str | None = None
    context = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if a := _ADDRESS_LINE.match(stripped):
            recipient, context = a[1], ""
            continue
        m = _QMAIL_SAID.match(line)
        if m is None:
            if stripped:
                context = stripped
            continue
        chunk = [m["reply"]]
        j = i + 1
        while j < len(lines) and (n := _REPLY_LINE.match(lines[j].strip())) and lines[j].strip():
            if not chunk[0].startswith(n["code"]):
                break
            chunk.append(lines[j].strip())
            j += 1
        raw = "\n".join(chunk)
        stage: str | None = None
        notes: list[str] = []
        if b := _BRACKET_STAGE.search(raw):
            raw = raw[: b.start()]
            stage = "end_of_data" if b["step"] in ("BODY", "EOD") else _stage_of(b["step"])
            notes.append(f'stage from "[{b["step"]}]" after the text')
        else:
            for pattern, candidate in _QMAIL_CONTEXT:
                if pattern.search(context):
                    stage = candidate
                    notes.append(f'stage from "{context}"')
                    break
        reply = _parse_reply(raw)
        if reply is None:
            hints.no_reply.append(stripped)
            continue
        h = _QMAIL_HOST.search(context)
        findings.append(
            reply.finding(
                recipient=recipient,
                stage=stage,
                remote_mta=h["host"] if h else None,
                origin="qmail bounce text" + (f" for <{recipient}>" if recipient else ""),
                notes=tuple(notes),
            )
        )
    return findings


_EXCHANGE_REPLY = re.compile(
    r"Remote Server returned '(?P<a>[^\n]{0,2000})'"
    r"|^[ \t]*#(?P<b>[2-5][0-5]\d[ -].*?)\s*##"
    r"|<(?P<hostc>[^\s<>#]+)\s+#\d\.\d{1,3}\.\d{1,3}\s+smtp;(?P<c>[2-5][0-5]\d[ -][^>\n]{0,2000})>"
    r"|^[ \t]*Reported error:\s*(?P<d>[2-5][0-5]\d[ -][^\n]*)",
    re.IGNORECASE | re.MULTILINE,
)
_EXCHANGE_REMOTE = re.compile(
    r"^[ \t]*Remote server:\s*(?P<host>\S+)", re.IGNORECASE | re.MULTILINE
)
_EXCHANGE_GENERATOR = re.compile(
    r"^[ \t]*Generating server:\s*(?P<host>\S+)", re.IGNORECASE | re.MULTILINE
)


def _exchange_prose(text: str, hints: _Hints) -> list[Finding]:
    findings: list[Finding] = []
    remote = _EXCHANGE_REMOTE.search(text)
    generator = _EXCHANGE_GENERATOR.search(text)
    for m in _EXCHANGE_REPLY.finditer(text):
        raw = next((g for g in (m["a"], m["b"], m["c"], m["d"]) if g is not None), "")
        reply = _parse_reply(raw)
        if reply is None:
            continue
        notes: list[str] = []
        host = m["hostc"] or (remote["host"] if remote else None)
        if host is None and generator is not None:
            host = generator["host"]
            notes.append(
                "Exchange names no remote server: the server that wrote the NDR "
                "(Generating server) gave the reply"
            )
        findings.append(
            reply.finding(
                recipient=_recipient_before(text, m.start()),
                stage=None,
                remote_mta=host,
                origin="Exchange / Office 365 NDR text",
                notes=tuple(notes),
            )
        )
    return findings


# Yahoo writes the code followed by a colon ("554: delivery error: ...") under the address.
_YAHOO_REPLY = re.compile(
    r"^<(?P<rcpt>[^>\n]+)>:[ \t]*\n(?P<code>[2-5][0-5]\d):\s+(?P<rest>[^\n]*)", re.MULTILINE
)


def _yahoo_prose(text: str, hints: _Hints) -> list[Finding]:
    findings: list[Finding] = []
    for m in _YAHOO_REPLY.finditer(text):
        raw = f"{m['code']} {m['rest']}"
        stage: str | None = None
        notes: list[str] = []
        if b := _BRACKET_STAGE.search(raw):
            raw = raw[: b.start()]
            stage = "end_of_data" if b["step"] in ("BODY", "EOD") else _stage_of(b["step"])
            notes.append(f'stage from "[{b["step"]}]" after the text')
        reply = _parse_reply(raw)
        if reply is None:
            continue
        findings.append(
            reply.finding(
                recipient=m["rcpt"],
                stage=stage,
                remote_mta=None,
                origin=f"Yahoo-style bounce text for <{m['rcpt']}>",
                notes=tuple(notes),
            )
        )
    return findings


# Phrases that introduce the remote server's words in Gmail's and many other bounces.
_GENERIC_MARKER = re.compile(
    r"(?:\bsaid|\bresponse from the remote server was|\bresponse was|\breply was"
    r"|\berror that the other server returned was|\bserver returned|\breason|\berror was"
    r"|\bDiagnostic-Code:\s*smtp;)\s*(?::\s*)?['\"]?"
    r"(?=[2-5][0-5]\d[ -])",
    re.IGNORECASE,
)
# Command names are a few words: bounded, the search stays linear on any input.
_IN_REPLY_TO = re.compile(
    r"\(in reply to (?P<cmd>[A-Za-z][A-Za-z ]{0,30}) command\)\s*$", re.IGNORECASE
)
_AFTER_COMMAND = re.compile(
    r"\bafter\s+(?P<cmd>(?:pipelined\s+)?(?:RCPT TO|MAIL FROM|DATA|end "
    r"of data|initial connection|EHLO|HELO|STARTTLS|AUTH)\b[^:\n]*"
    r"(?::<[^>]*>)?)",
    re.IGNORECASE,
)


def _generic_prose(text: str, hints: _Hints) -> list[Finding]:
    findings: list[Finding] = []
    pos = 0
    while m := _GENERIC_MARKER.search(text, pos):
        raw, end = _reply_block(text, m.end())
        pos = max(end, m.end())  # a marker inside this reply's text is part of it, not another
        quote = text[m.end() - 1] if text[m.end() - 1] in "'\"" else ""
        if quote and raw.rstrip().endswith(quote):
            raw = raw.rstrip()[:-1]
        if raw.count(")") > raw.count("("):
            raw = raw.rstrip().removesuffix(")")
        stage: str | None = None
        notes: list[str] = []
        if r := _IN_REPLY_TO.search(raw):
            raw = raw[: r.start()]
            stage = _stage_of(r["cmd"])
            notes.append(f'stage from "in reply to {r["cmd"]} command"')
        elif b := _BRACKET_STAGE.search(raw):
            raw = raw[: b.start()]
            stage = "end_of_data" if b["step"] in ("BODY", "EOD") else _stage_of(b["step"])
            notes.append(f'stage from "[{b["step"]}]" after the text')
        else:
            lo = max(0, m.start() - _LOOK_BACK)
            line_start = max(lo, text.rfind("\n", lo, m.start()) + 1)
            if a := _AFTER_COMMAND.search(text, line_start, m.start()):
                stage = _stage_of(a["cmd"])
                notes.append(f'stage from "after {a["cmd"]}"')
        reply = _parse_reply(raw)
        if reply is None or reply.code < 400:
            continue
        findings.append(
            reply.finding(
                recipient=_recipient_before(text, m.start()),
                stage=stage,
                remote_mta=_host_before(text, m.start()),
                origin=f'bounce text ("{_squash(m.group(0))}")',
                notes=tuple(notes),
            )
        )
    return findings


# A line that starts with a 4xx or 5xx code, possibly quoted ("> ") in an email reply.
_PASTED_START = re.compile(r"^[ \t>]*(?=[45][0-5]\d[ -])", re.MULTILINE)


def _pasted(text: str, hints: _Hints) -> list[Finding]:
    """A reply pasted on its own: the first line that starts with a 4xx or 5xx code."""
    for m in _PASTED_START.finditer(text):
        raw, _ = _reply_block(text, m.end())
        reply = _parse_reply(raw)
        if reply is None:
            continue
        notes: list[str] = []
        stage: str | None = None
        if r := _IN_REPLY_TO.search(raw):
            stage = _stage_of(r["cmd"])
            reply = _parse_reply(raw[: r.start()]) or reply
            notes.append(f'stage from "in reply to {r["cmd"]} command"')
        recipient = None
        joined = " ".join(reply.text)
        addr = _BRACKETED_ADDRESS.search(joined)
        if addr and not _SENDER_WORD.search(joined):
            # A reply about one mailbox names it; matching on it keeps other recipients working.
            recipient = addr[1]
            notes.append(f"recipient <{recipient}> taken from the reply text")
        return [
            reply.finding(
                recipient=recipient,
                stage=stage,
                remote_mta=None,
                origin="pasted reply",
                notes=tuple(notes),
            )
        ]
    return []


def _reply_block(text: str, start: int) -> tuple[str, int]:
    """The reply that starts at `start`: its first line plus continuation lines of the same code."""
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    first = text[start:end]
    code = first[:3]
    block = [first]
    while end < len(text):
        nxt = text.find("\n", end + 1)
        nxt = len(text) if nxt < 0 else nxt
        line = text[end + 1 : nxt].strip().lstrip(">").strip()
        if not (line.startswith(code) and line[3:4] in (" ", "-", "")):
            break
        block.append(line)
        end = nxt
    return "\n".join(block), end


# How far before a reply to look for the address or host it is about: the bounces seen put
# them within a few lines (Gmail's is the farthest, a paragraph above).
_LOOK_BACK = 1000


def _recipient_before(text: str, pos: int) -> str | None:
    """The last address written shortly before the reply."""
    found = _ADDRESS.findall(text, max(0, pos - _LOOK_BACK), pos)
    return found[-1].rstrip(".") if found else None


_HOST_WORDS = re.compile(
    r"(?:\bhost\s+|\bRemote-MTA:\s*dns;\s*|\bserver\s+)(?P<host>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
    r"\.?(?=[\s\[(:,]|$)",
    re.IGNORECASE,
)


def _host_before(text: str, pos: int) -> str | None:
    start = max(0, pos - _LOOK_BACK)
    paragraph = text.rfind("\n\n", start, pos)  # the host named in the reply's paragraph
    found = list(_HOST_WORDS.finditer(text, max(start, paragraph), pos))
    return found[-1]["host"] if found else None


def _squash(s: str) -> str:
    return " ".join(s.split()).strip(" :'\"")


# --------------------------------------------------------------------------------------------
# DSN (RFC 3464) fields

_FIELD = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9-]*):[ \t]*(?P<value>.*)$")


def _dsn_groups_from_text(text: str) -> list[dict[str, str]]:
    """Blank-line separated groups of `Name: value` fields, continuation lines unfolded."""
    groups: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    last: list[str] | None = None
    for line in text.split("\n"):
        if not line.strip():
            if current:
                groups.append(current)
            current, last = {}, None
        elif line[:1] in (" ", "\t") and last is not None:
            last.append(line.strip())
        elif m := _FIELD.match(line):
            # A repeated field keeps its first value; its continuation lines go nowhere.
            last = [m["value"].strip()] if m["name"].lower() not in current else []
            current.setdefault(m["name"].lower(), last)
    if current:
        groups.append(current)
    return [{name: " ".join(parts).strip() for name, parts in g.items()} for g in groups]


_FOLD = re.compile(r"\r?\n[ \t]+")
_FINAL_RECIPIENT = re.compile(r"^Final-Recipient:", re.IGNORECASE | re.MULTILINE)


def _unfold(value: str) -> str:
    return _FOLD.sub(" ", str(value)).strip()


def _typed_value(value: str) -> tuple[str, str]:
    """`rfc822; bob@x` -> ("rfc822", "bob@x"); untyped values get an empty type."""
    kind, sep, rest = value.partition(";")
    return (kind.strip().lower(), rest.strip()) if sep else ("", value.strip())


def _mta_name(value: str | None) -> str | None:
    if not value:
        return None
    name = _typed_value(value)[1].split()[0] if _typed_value(value)[1] else ""
    return name.strip("[]").rstrip(".") or None


def _from_dsn(groups: list[dict[str, str]]) -> tuple[list[Finding], list[str]]:
    """Findings for the failed and delayed recipients; also the recipients with no SMTP reply."""
    reporting = next((g["reporting-mta"] for g in groups if "reporting-mta" in g), None)
    findings: list[Finding] = []
    without_reply: list[str] = []
    for group in groups:
        field = group.get("final-recipient") or group.get("original-recipient")
        if field is None:
            continue
        recipient = _typed_value(field)[1].strip("<>") or None
        action = group.get("action", "").strip().lower()
        if action not in ("failed", "delayed"):
            continue  # delivered, relayed, expanded: nothing went wrong for this one
        status_m = _STATUS.search(group.get("status", ""))
        status = status_m[1] if status_m else None
        kind, diagnostic = _typed_value(group.get("diagnostic-code", ""))
        reply = _parse_reply(diagnostic) if kind in ("smtp", "") else None
        remote = _mta_name(group.get("remote-mta"))
        who = recipient or "(unnamed)"
        if reply is not None:
            findings.append(
                reply.finding(
                    recipient=recipient,
                    fallback_status=status,
                    stage=None,
                    remote_mta=remote,
                    origin=f"Diagnostic-Code of recipient {who} (Action: {action})",
                    notes=() if remote else ("no Remote-MTA field",),
                )
            )
        else:
            without_reply.append(recipient or "")
            if status is None:
                continue
            # The reporting MTA decided without an SMTP reply (or wrote it as prose): keep the
            # status and let the prose, if any, give the rest.
            code = _code_for_status(status)
            text = (_clean(diagnostic),) if diagnostic else ()
            findings.append(
                Finding(
                    recipient=recipient,
                    code=code,
                    status=status,
                    text=text,
                    stage=None,
                    remote_mta=remote or _mta_name(reporting),
                    origin=f"Status of recipient {who} (Action: {action}; no SMTP Diagnostic-Code)",
                    notes=(f"no SMTP reply in the DSN: code {code} assumed for status {status}",),
                )
            )
    return findings, without_reply


def _enrich(dsn: list[Finding], prose: list[Finding], no_smtp: list[str]) -> list[Finding]:
    """Complete the DSN's findings with what the human-readable part adds (stage, host, lines)."""
    by_recipient: dict[str, list[Finding]] = {}
    for p in prose:
        by_recipient.setdefault((p.recipient or "").casefold(), []).append(p)
    # Without a recipient in common, a prose reply fits a DSN one when it is the only reply
    # of that code the prose gives.
    by_code: dict[int, set[tuple[object, ...]]] = {}
    for p in prose:
        by_code.setdefault(p.code, set()).add(_reply_key(p))
    out: list[Finding] = []
    for f in dsn:
        match = _matching(f, prose, by_recipient, by_code)
        if match is None:
            out.append(f)
            continue
        if (f.recipient or "") in no_smtp:
            # The DSN had no SMTP reply for this one but the prose has: the prose wins.
            out.append(
                replace(
                    match,
                    recipient=f.recipient or match.recipient,
                    remote_mta=match.remote_mta or f.remote_mta,
                )
            )
            continue
        changes: dict[str, object] = {}
        notes = list(f.notes)
        if f.stage is None and match.stage is not None:
            changes["stage"] = match.stage
            notes += [
                f"{n} (in the human-readable part)" for n in match.notes if n.startswith("stage")
            ]
        if f.remote_mta is None and match.remote_mta is not None:
            changes["remote_mta"] = match.remote_mta
            notes = [n for n in notes if n != "no Remote-MTA field"]
            notes.append("remote server named in the human-readable part")
        if match.code == f.code and len(match.text) > len(f.text):
            changes["text"] = match.text
            notes.append("reply lines as the human-readable part shows them")
        out.append(replace(f, notes=tuple(notes), **changes))  # type: ignore[arg-type]
    return out


def _matching(
    f: Finding,
    prose: list[Finding],
    by_recipient: dict[str, list[Finding]],
    by_code: dict[int, set[tuple[object, ...]]],
) -> Finding | None:
    if f.recipient and (same := by_recipient.get(f.recipient.casefold())):
        return next((p for p in same if p.code == f.code), same[0])
    if len(by_code.get(f.code, ())) == 1:
        return next((p for p in prose if p.code == f.code and p.status in (f.status, None)), None)
    return None


# --------------------------------------------------------------------------------------------
# Messages

_MAIL_HEADERS = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "return-path",
        "received",
        "mime-version",
        "content-type",
        "message-id",
        "delivered-to",
        "reply-to",
        "auto-submitted",
        "dkim-signature",
        "sender",
        "content-transfer-encoding",
        "authentication-results",
        "arc-seal",
        "x-original-to",
    }
)
_HEADER_START = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9-]*):[ \t]*\S")
_MBOX_SEPARATOR = re.compile(r"^From \S+\s+(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ", re.MULTILINE)
# Where the returned copy of the original message starts in a plain-text bounce: its text is
# the sender's, not the bounce's, and must not be read as a reply.
_RETURNED_COPY = re.compile(
    r"^[ \t]*-{2,}\s*(?:This is a copy of the message|Below this line is a copy of the message"
    r"|Original message|Unsent message follows|Enclosed is a copy|Returned message)"
    r"|^[ \t]*Original message headers:"
    r"|^Content-Type:\s*(?:message/rfc822|text/rfc822-headers)",
    re.IGNORECASE | re.MULTILINE,
)
_SKIPPED_PARTS = frozenset(
    {
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/global-headers",
    }
)
_DSN_PARTS = frozenset({"message/delivery-status", "message/global-delivery-status"})


def _looks_like_mail(text: str) -> bool:
    first = text.lstrip("\n").split("\n", 1)[0]
    if _MBOX_SEPARATOR.match(first):
        return True
    m = _HEADER_START.match(first)
    return bool(m) and (m["name"].lower() in _MAIL_HEADERS or m["name"].lower().startswith("x-"))


def _messages(text: str) -> list[email.message.Message]:
    text = text.lstrip("\n")
    if _MBOX_SEPARATOR.match(text):
        # A mailbox file (Postfix's local delivery writes one): each message after a From_ line.
        chunks = [c for c in _MBOX_SEPARATOR.split(text) if c.strip()]
        bodies = [c.split("\n", 1)[1] if "\n" in c else "" for c in chunks]
        return [email.message_from_string(b, policy=email.policy.compat32) for b in bodies]
    return [email.message_from_string(text, policy=email.policy.compat32)]


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


# Patterns that never cross a "<" inside a tag: each character is looked at a bounded number
# of times, even in broken markup.
_HTML_HIDDEN = re.compile(r"<(style|script|head|title)\b", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<\s*/?\s*(?:br|p|div|tr|li|table|h\d|pre)\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")


def _html_text(markup: str) -> str:
    """The text of an HTML part (Exchange sends some NDRs as HTML only), a line per block."""
    lower = markup.lower()
    kept: list[str] = []
    pos = 0
    while m := _HTML_HIDDEN.search(lower, pos):
        close = lower.find(f"</{m[1].lower()}", m.end())
        if close < 0:
            break
        kept.append(markup[pos : m.start()])
        end = lower.find(">", close)
        pos = len(markup) if end < 0 else end + 1
    kept.append(markup[pos:])
    text = html.unescape(_HTML_TAG.sub("", _HTML_BREAK.sub("\n", "".join(kept))))
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))


def _walk(
    part: email.message.Message, groups: list[dict[str, str]], plain: list[str], markup: list[str]
) -> None:
    ctype = part.get_content_type()
    if ctype in _SKIPPED_PARTS:
        return
    if ctype in _DSN_PARTS:
        payload = part.get_payload()
        if isinstance(payload, list):
            for block in payload:
                groups.append({k.lower(): _unfold(v) for k, v in block.items()})
                rest = block.get_payload()
                if isinstance(rest, str) and rest.strip():
                    groups.extend(_dsn_groups_from_text(rest))
        else:
            groups.extend(_dsn_groups_from_text(_normalise(_decoded(part))))
        return
    if part.is_multipart():
        for sub in part.get_payload():
            _walk(sub, groups, plain, markup)
    elif ctype == "text/plain":
        plain.append(_normalise(_decoded(part)))
    elif ctype == "text/html":
        markup.append(_html_text(_normalise(_decoded(part))))


def _from_message(msg: email.message.Message, hints: _Hints) -> list[Finding]:
    groups: list[dict[str, str]] = []
    plain: list[str] = []
    markup: list[str] = []
    _walk(msg, groups, plain, markup)
    prose = "\n\n".join(_cut_returned_copy(p) for p in (plain or markup))
    if not groups and _FINAL_RECIPIENT.search(prose):
        # Some MTAs send the DSN fields as plain text instead of message/delivery-status.
        groups = _dsn_groups_from_text(prose)
    prose_findings = _from_prose(prose, hints)
    dsn_findings, no_smtp = _from_dsn(groups)
    if dsn_findings:
        return _enrich(dsn_findings, prose_findings, no_smtp)
    return prose_findings


def _cut_returned_copy(text: str) -> str:
    m = _RETURNED_COPY.search(text)
    return text[: m.start()] if m else text


# --------------------------------------------------------------------------------------------
# Putting it together

_Scanner = Callable[[str, _Hints], list[Finding]]
_LOG_SCANNERS: tuple[_Scanner, ...] = (_postfix_log, _exim_log, _sendmail_log)
_PROSE_SCANNERS: tuple[_Scanner, ...] = (
    _postfix_prose,
    _exim_prose,
    _sendmail_prose,
    _qmail_prose,
    _exchange_prose,
    _yahoo_prose,
    _generic_prose,
)
_LOOKED_FOR = (
    "looked for a DSN (message/delivery-status with Diagnostic-Code), the bounce text of "
    "Postfix, Exim, Sendmail, qmail, Exchange/Office 365, Gmail or Yahoo, a Postfix, Exim or "
    "Sendmail log line, or a pasted reply such as '550 5.1.1 <bob@example.test>: User unknown'"
)


def _from_prose(text: str, hints: _Hints) -> list[Finding]:
    for scanner in _PROSE_SCANNERS:
        if found := scanner(text, hints):
            return found
    return []


def _from_text(text: str, hints: _Hints) -> list[Finding]:
    if _FINAL_RECIPIENT.search(text):
        # DSN fields pasted without the rest of the message.
        found, no_smtp = _from_dsn(_dsn_groups_from_text(text))
        if found:
            return _enrich(found, _from_prose(text, hints), no_smtp)
    for scanner in _LOG_SCANNERS:
        if found := scanner(text, hints):
            return found
    return _from_prose(_cut_returned_copy(text), hints) or _pasted(text, hints)


def _normalise(text: str) -> str:
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def parse_bounce(text: str) -> list[Finding]:
    """Every reply the bounce reports for a failed or delayed recipient, in the order found.

    Raises BounceError, with a one-line message naming what was looked for, when there is none.
    """
    text = _normalise(text)
    if not text.strip():
        raise BounceError(f"empty input: {_LOOKED_FOR}")
    hints = _Hints()
    if _looks_like_mail(text):
        findings = [f for msg in _messages(text) for f in _from_message(msg, hints)]
    else:
        findings = _from_text(text, hints)
    if findings:
        return findings
    if hints.no_reply:
        first = " ".join(hints.no_reply[0].split())[:120]
        raise BounceError(
            f"the bounce reports no SMTP reply from a remote server ({first!r}): "
            "the remote server never answered, so there is no reply to reproduce"
        )
    if hints.delivered:
        raise BounceError(
            f"only successful deliveries found ({hints.delivered}): nothing to reproduce"
        )
    raise BounceError(f"no SMTP reply found: {_LOOKED_FOR}")


# --------------------------------------------------------------------------------------------
# YAML

# Stages at which `match: {to: ...}` can hold: before RCPT the recipient is not known yet.
_STAGES_WITH_RECIPIENT = frozenset({"rcpt", "data", "end_of_data"})
_GLOB_CHARS = re.compile(r"([*?\[])")
_LOOKS_LIKE_REGEX = re.compile(r"^/.*/[imsx]*$", re.DOTALL)
_NOT_IN_COMMENTS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_MAX_LINE = 480  # the longest reply text line the scenario loader takes (RFC 5321's 512 octets)
_YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _q(value: str) -> str:
    """A YAML double-quoted scalar: never read as a bool, number, null, alias or comment."""
    out = []
    for ch in value:
        if ch in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[ch])
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029\ufeff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _comment(text: str) -> str:
    """Text safe in a comment: on one line (YAML also breaks lines at U+0085, U+2028, U+2029)."""
    return " ".join(_NOT_IN_COMMENTS.sub(" ", text).split())


def _glob_literal(address: str) -> str:
    """The address as a glob that matches only itself (match strings are globs)."""
    escaped = _GLOB_CHARS.sub(r"[\1]", address)
    # A value written /like this/flags is read as a regular expression.
    if _LOOKS_LIKE_REGEX.match(escaped):
        escaped = "[/]" + escaped[1:]
    return escaped


def _template_literal(text: str) -> str:
    """Reply text as a literal: the loader expands {to}-style fields, so braces are doubled."""
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True, slots=True)
class _Rule:
    stage: str
    code: int
    status: str | None
    text: tuple[str, ...]
    times: int
    recipients: tuple[str, ...]
    origins: tuple[str, ...]
    notes: tuple[str, ...]


def _rules(findings: list[Finding]) -> list[_Rule]:
    """One rule per distinct reply (in the order first met), with the values the loader takes."""
    # Dicts used as ordered sets: addresses, origins and notes, each kept once in order.
    groups: dict[tuple[object, ...], tuple[dict[str, None], dict[str, None], dict[str, None]]]
    groups = {}
    for f in findings:
        notes = list(f.notes)
        status, text = f.status, tuple(_clean(line) for line in f.text)
        if status and status[0] != str(f.code)[0]:
            # The loader refuses a status of another class than the code; written as text it
            # still goes on the wire exactly as the remote server sent it.
            text = tuple(f"{status} {line}".rstrip() for line in text) or (status,)
            notes.append(f"status {status} disagrees with code {f.code}: kept in the text")
            status = None
        if any(len(line) > _MAX_LINE for line in text):
            text = tuple(part for line in text for part in _wrap(line))
            notes.append(
                f"a text line longer than {_MAX_LINE} characters was split into several reply lines"
            )
        stage = f.stage
        if stage is None:
            stage, why = _default_stage(f.code, status, text)
            notes.append(f"stage not stated in the bounce: {why}")
        recipients: tuple[str, ...] = ()
        if f.recipient and stage in _STAGES_WITH_RECIPIENT:
            recipients = (f.recipient,)
        elif f.recipient:
            notes.append(
                f"no match on the recipient <{f.recipient}>: at {stage} it is not "
                "known yet, so every message meets this reply"
            )
        times = f.transient_then_delivered
        # Several recipients that met the same reply share one rule with a list of addresses;
        # a reply for every recipient stays a rule of its own.
        key = (stage, f.code, status, text, times, bool(recipients))
        if key not in groups:
            groups[key] = ({}, {}, {})
        addresses, origins, all_notes = groups[key]
        addresses.update(dict.fromkeys(recipients))
        origins[f.origin] = None
        all_notes.update(dict.fromkeys(notes))
    rules: list[_Rule] = []
    for (stage, code, status, text, times, _), (addresses, origins, notes) in groups.items():
        shown = list(origins)
        if len(shown) > _MAX_ORIGINS:
            shown = [*shown[:_MAX_ORIGINS], f"and {len(shown) - _MAX_ORIGINS} more"]
        rules.append(
            _Rule(stage, code, status, text, times, tuple(addresses), tuple(shown), tuple(notes))
        )
    return rules


_MAX_ORIGINS = 5  # a long log can give one reply hundreds of times: name a few lines
_STDIN = ("-", "<stdin>")  # how callers name standard input (click says "<stdin>")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def _wrap(line: str) -> list[str]:
    parts: list[str] = []
    while len(line) > _MAX_LINE:
        cut = line.rfind(" ", 0, _MAX_LINE + 1)
        cut = cut if cut > 0 else _MAX_LINE
        parts.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    return [*parts, line]


def _few(items: tuple[str, ...], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _slug(source: str) -> str:
    stem = _EXTENSION.sub("", source.replace("\\", "/").rsplit("/", 1)[-1])
    slug = _NOT_SLUG.sub("-", stem.lower()).strip("-")
    if not slug or source in _STDIN:
        return "bounce-stdin"
    return slug if slug.startswith("bounce") else f"bounce-{slug}"


def scenario_yaml(findings: list[Finding], source: str = "-") -> str:
    """A commented scenario YAML that gives each finding's reply to the same recipient(s)."""
    if not findings:
        raise BounceError(f"no SMTP reply to reproduce: {_LOOKED_FOR}")
    rules = _rules(findings)
    where = "standard input" if source in _STDIN else source
    out = [
        f"# Generated by `fakesmtp from-bounce` from {_comment(where)}.",
        "# It gives the reply the remote server gave, at the same stage, so your software meets",
        "# it locally. Recipients without a rule below are accepted as usual.",
        f"name: {_q(_slug(source))}",
    ]
    summary = "; ".join(
        f"{r.code}{' ' + r.status if r.status else ''} at {r.stage}"
        + (f" for {_few(r.recipients)}" if r.recipients else "")
        for r in rules
    )
    out.append(f"description: {_q('Reproduces ' + summary + ' (from ' + where + ')')}")
    hosts = list(dict.fromkeys(f.remote_mta for f in findings if f.remote_mta))
    if hosts:
        named_by = next(f.origin for f in findings if f.remote_mta == hosts[0])
        out += ["server:", f"  # the remote server, as named by: {_comment(named_by)}"]
        if len(hosts) > 1:
            out.append(f"  # (the bounce also names {_comment(', '.join(hosts[1:]))})")
        out.append(f"  hostname: {_q(hosts[0])}")
    out.append("rules:")
    for r in rules:
        out.append(f"  # from: {_comment('; '.join(dict.fromkeys(r.origins)))}")
        out += [f"  # {_comment(n)}" for n in r.notes]
        if r.times:
            out.append(
                f"  # the log shows this reply {r.times} time(s), then the recipient got "
                "through: a retry after that is accepted"
            )
        elif r.code < 500:
            out.append(
                "  # a transient reply with no later success in the bounce: every attempt "
                "meets it; add `times: N` to let a retry through"
            )
        out.append(f"  - on: {r.stage}")
        if r.recipients:
            values = [_q(_glob_literal(a)) for a in r.recipients]
            value = values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"
            out.append(f"    match: {{to: {value}}}")
        if r.times:
            out.append(f"    times: {r.times}")
            per = "recipient" if r.recipients else ("sender" if r.stage == "mail" else "")
            if per:
                out.append(f"    per: {per}")
        out += ["    reply:", f"      code: {r.code}"]
        if r.status:
            out.append(f"      status: {_q(r.status)}")
        lines = [_q(_template_literal(t)) for t in r.text]
        if len(lines) <= 1:
            # An empty text is written out: left out, the loader would use the catalog's text.
            out.append(f"      text: {lines[0] if lines else _q('')}")
        else:
            out.append("      text:")
            out += [f"        - {line}" for line in lines]
    return "\n".join(out) + "\n"


def bounce_to_yaml(text: str, source: str = "-") -> str:
    """`fakesmtp from-bounce`: the bounce's text in, the scenario YAML out."""
    return scenario_yaml(parse_bounce(text), source)
