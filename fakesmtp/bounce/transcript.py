"""SMTP session transcripts quoted in bounces (">>> RCPT TO:<x>" / "<<< 550 ..."; also "-->",
"<--", "Sent <<<" / "Received >>>"): each reply paired with the command it answered, in order,
so pipelined commands (several sent before the first reply) get their own replies."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fakesmtp.reply import parse_reply_line

from .findings import Finding
from .grammar import ADDRESS, BRACKETED, Reply, parse_reply, recipient_in, squash, stage_of

# Sendmail, Courier, and many appliances write "... while talking to HOST:" per connection.
TALKING = re.compile(
    r"^\s*(?:\.\.\.\s+)?while talking to\s+\[?(?P<host>[^\s\]:]+?)\]?\.?:\s*$", re.IGNORECASE
)
_ARROW = re.compile(r"(?:^|\s)(?:>>>|<<<|-->|<--)(?:\s+|$)")
_COMMAND = re.compile(
    r"^(?:EHLO|HELO|LHLO|MAIL\s+FROM|RCPT\s+TO|DATA|BDAT|QUIT|RSET|STARTTLS|AUTH|NOOP|VRFY"
    r"|EXPN|XFORWARD|XCLIENT)\b|^\.$",
    re.IGNORECASE,
)


# Above a transcript: "<rcpt>:" or "Recipient: <rcpt>" (Courier, EZweb), "HOST [IP]:" (Courier).
_NAMED = re.compile(
    r"^\s*(?:Recipient:\s*|Original-Recipient:\s*)?<(?P<addr>[^<>\s]+@[^<>\s]+)>:?\s*$"
)
_HOST_LINE = re.compile(r"^\s+(?P<host>[A-Za-z0-9.-]+\.[A-Za-z]{2,})\s*\[[^\]]*\]:?\s*$")


_GREETING_REFUSALS = frozenset({421, 521, 554})


@dataclass(frozen=True, slots=True)
class Exchange:
    """One reply of a transcript and the command it answered ("" for the greeting)."""

    reply: Reply
    command: str | None  # None: the transcript shows no command for it (greeting, after 354)
    stage: str | None
    host: str | None
    lines: tuple[str, ...]  # the transcript lines, for the evidence
    named: str | None = None  # the last address written above the transcript ("<rcpt>:")

    @property
    def recipient(self) -> str | None:
        if self.stage == "rcpt" and self.command and (a := BRACKETED.search(self.command)):
            return a[1]
        return None


def has_transcript(text: str) -> bool:
    return any(_ARROW.search(line) for line in text.split("\n"))


def read(text: str) -> list[Exchange]:
    """Every complete reply in the transcript(s), with its command, stage and host."""
    out: list[Exchange] = []
    host: str | None = None
    pending: list[str] = []  # commands sent and not yet answered (pipelining)
    replies_seen = 0
    after_data_go_ahead = False  # 354 seen: the next reply answers the end of data
    current: list[str] = []
    raw: list[str] = []
    named: str | None = None
    for line in text.split("\n"):
        if t := TALKING.match(line):
            host, pending, replies_seen, after_data_go_ahead = t["host"], [], 0, False
            current, raw = [], []
            continue
        arrow = _ARROW.search(line)
        if arrow is None:
            if (a := _NAMED.match(line)) is not None:
                named = a["addr"]
                host, pending, replies_seen, after_data_go_ahead = None, [], 0, False
            elif (h := _HOST_LINE.match(line)) is not None:
                host = h["host"]
            continue
        rest = line[arrow.end() :].strip()
        if _COMMAND.match(rest):
            pending.append(rest)
            continue
        parsed = parse_reply_line(rest)
        if parsed is None:
            if current:  # a wrapped line of the reply being read
                current[-1] = f"{current[-1]} {rest}"
                raw.append(line)
            continue
        current.append(rest)
        raw.append(line)
        if parsed.more:
            continue
        reply = parse_reply("\n".join(current))
        lines, current, raw = tuple(raw), [], []
        if reply is None:
            continue
        command: str | None = None
        if pending:
            command = pending.pop(0)
            stage = stage_of(command)
        elif replies_seen == 0 and (host is not None or reply.code in _GREETING_REFUSALS):
            # The first reply of a connection the transcript opened: the greeting. Without
            # a "while talking to" line, only a code servers refuse greetings with says so.
            stage = "connect"
        elif after_data_go_ahead:
            stage = "end_of_data"
        else:
            stage = None
        after_data_go_ahead = reply.code == 354
        replies_seen += 1
        out.append(Exchange(reply, command, stage, host, lines, named))
    return out


def refusals(exchanges: list[Exchange]) -> list[Exchange]:
    """The failures among the replies: not positive ones, not the answer to QUIT, not a
    refused DATA that only follows from every recipient having been refused already."""
    out: list[Exchange] = []
    rcpt_ok: dict[str | None, bool] = {}
    for ex in exchanges:
        if ex.stage == "rcpt":
            rcpt_ok[ex.host] = rcpt_ok.get(ex.host, False) or ex.reply.code < 400
        if ex.reply.code < 400 or ex.stage == "quit":
            continue
        if ex.stage == "data" and rcpt_ok.get(ex.host) is False:
            continue
        out.append(ex)
    return out


def read_findings(text: str, family: str, failed: list[str] | None = None) -> list[Finding]:
    """Findings for the refusals of a transcript: each for the recipient its RCPT names, the
    address written above the transcript, or else every failed recipient the bounce lists."""
    findings: list[Finding] = []
    for ex in refusals(read(text)):
        notes: list[str] = []
        if ex.command:
            notes.append(f'stage from the transcript: the reply to "{squash(ex.command, 60)}"')
        elif ex.stage == "connect":
            notes.append("stage from the transcript: the first reply, before any command")
        elif ex.stage == "end_of_data":
            notes.append("stage from the transcript: the reply after 354 and the message")
        rcpts: list[str | None]
        if ex.recipient or ex.named:
            rcpts = [ex.recipient or ex.named]
        else:
            rcpts = list(failed or []) or [recipient_in(ex.reply, bare=False)]
        for rcpt in rcpts:
            findings.append(
                ex.reply.finding(
                    recipient=rcpt,
                    stage=ex.stage,
                    remote_mta=ex.host,
                    origin=f"{family} session transcript" + (f" for <{rcpt}>" if rcpt else ""),
                    notes=tuple(notes),
                    family=family,
                    evidence=squash(" / ".join(ex.lines)),
                )
            )
    return findings


def failed_addresses(text: str) -> list[str]:
    """Addresses a bounce lists (for replies a transcript gives to no RCPT in particular)."""
    return list(dict.fromkeys(a.rstrip(".") for a in ADDRESS.findall(text)))
