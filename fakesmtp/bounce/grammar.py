"""The words every bounce reader shares: reply lines (the grammar of reply.py, read leniently),
stage names, addresses and hosts near a reply, and the reporting server's own error wording."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fakesmtp import catalog
from fakesmtp.reply import REPLY_LINE, parse_reply_line

from .findings import Finding

# --------------------------------------------------------------------------------------------
# Replies

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
STATUS_IN_TEXT = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
# What bounces put between the code and the status: the code again (Gmail: "550 550 5.1.1"),
# a hash (Google Workspace, Exchange: "550 #5.1.0") or a quote ("550-'5.2.2 ...'").
_STATUS_AFTER_NOISE = re.compile(
    r"^(?:(?P<code>[2-5][0-5]\d)[ -])?(?P<hash>#)?(?P<quote>['\"])?"
    r"(?P<status>[245]\.\d{1,3}\.\d{1,3})(?=[\s'\"]|$)\s*"
)
# qmail and servers in its tradition end the text with the status: "... list (#5.7.1)"; its
# chkuser patch names itself after it: "(#5.1.1 - chkuser)".
_QMAIL_STATUS = re.compile(
    r"\(#([245]\.\d{1,3}\.\d{1,3})(?:\s+-\s+[A-Za-z][\w.-]{0,30})?\)\s*\.?\s*$"
)
# A later reply inside a positive one: a greeting "220-name" cut short by "421 4.2.1 ...".
_REFUSAL_INSIDE = re.compile(r"(?<=\s)(?=[45][0-5]\d[ -])")


def clean(line: str) -> str:
    """No control character can travel in a reply line; a tab was a space to the sender."""
    return _CONTROL.sub(" ", line.replace("\t", " ")).strip()


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply read from a bounce, with what reading it took (wrapped lines joined, ...)."""

    code: int
    status: str | None
    text: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def finding(self, *, fallback_status: str | None = None, **where: Any) -> Finding:
        """This reply as a Finding; ``where`` says for whom, at which stage, from what."""
        status = self.status
        notes = (*self.notes, *where.pop("notes", ()))
        if status is None and fallback_status:
            status = fallback_status
            notes = (*notes, f"the reply carries no enhanced status: {status} from the DSN Status")
        return Finding(code=self.code, status=status, text=self.text, notes=notes, **where)


def parse_reply(raw: str) -> Reply | None:
    """Read `550 5.1.1 text`, a multi-line reply, or one flattened or wrapped by the bounce.

    Lines without a code continue the line before them (the MTA wrapped the text); a
    multi-line reply flattened onto one line ("550-5.1.1 a 550-5.1.1 b") is split again.
    """
    lines = [clean(ln) for ln in raw.strip().split("\n")]
    lines = [ln for ln in lines if ln]
    if not lines:
        return None
    first = parse_reply_line(lines[0])
    if first is None:
        return None
    notes: list[str] = []
    if first.code < 400 and len(lines) == 1 and (later := _REFUSAL_INSIDE.search(lines[0])):
        # A greeting that began positive ("220-mx ...") and turned into a refusal: the
        # refusal is the reply that ended the conversation.
        inner = parse_reply(lines[0][later.start() :])
        if inner is not None:
            note = (
                f"the reply began with {first.code} and ended with {inner.code}: {inner.code} kept"
            )
            return Reply(inner.code, inner.status, inner.text, (*inner.notes, note))
    code = first.code
    status = first.status
    if len(lines) == 1 and first.more:
        # Postfix logs and DSNs join a multi-line reply's lines with spaces, keeping each
        # line's "550-5.1.1" prefix: split there to get the lines back.
        prefix = rf"{code}[ -]" + (rf"{re.escape(status)}(?=\s|$)" if status else "")
        lines = re.split(rf"(?<!\s)\s+(?={prefix})", lines[0])
    texts: list[str] = []
    joined = 0
    for line in lines:
        m = parse_reply_line(line)
        if m is not None and m.code == code:
            texts.append(m.text.strip())
        elif texts:
            # A line without the code continues the previous one (text wrapped by the MTA).
            texts[-1] = f"{texts[-1]} {line}".strip()
            joined += 1
        else:
            return None
    if status is None and texts:
        texts[0], status, how = _status_after_noise(code, texts[0])
        if how:
            notes.append(how)
    q = _QMAIL_STATUS.search(texts[-1]) if status is None and texts else None
    if q is not None and q[1][0] == str(code)[0]:
        status = q[1]
        notes.append(f"enhanced status {status} read from the (#{status}) the text ends with")
    while len(texts) > 1 and not texts[-1]:
        texts.pop()
    if joined:
        notes.append(f"{joined} wrapped line(s) joined into the reply text")
    return Reply(code, status, tuple(texts) if any(texts) else (), tuple(notes))


def _status_after_noise(code: int, text: str) -> tuple[str, str | None, str]:
    """The status written after a repeated code, a '#' or a quote; the text without them."""
    m = _STATUS_AFTER_NOISE.match(text)
    if m is None or (m["code"] and int(m["code"]) != code):
        # Gmail repeats the code even when no status follows: "550 550 text".
        if text.startswith(f"{code} "):
            return text[4:].lstrip(), None, f"the code {code} written twice: once kept"
        return text, None, ""
    rest = text[m.end() :]
    if m["quote"] and rest.rstrip().endswith(m["quote"]):
        rest = rest.rstrip()[:-1]
    shown = "written twice" if m["code"] else "after '#'" if m["hash"] else "quoted"
    return (
        rest,
        m["status"],
        f"enhanced status {m['status']} read where the bounce put it ({shown})",
    )


def is_reply_line(line: str) -> bool:
    return REPLY_LINE.match(line.strip()) is not None


# More lines than any server sends in one reply: the rest is not part of it.
MAX_REPLY_LINES = 100
# A line this long was probably wrapped by the MTA (they wrap near 72-78 characters).
_WRAP_WIDTH = 60
_FIELD_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:\s")


def reply_block(text: str, start: int, *, wrapped: bool = False) -> tuple[str, int]:
    """The reply that starts at `start`: its first line plus continuation lines of the same code.

    With `wrapped`, an indented line after a long one continues it (the MTA wrapped the text);
    parse_reply joins it and says so.
    """
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    first = text[start:end]
    code = first[:3]
    block = [first]
    previous = text[text.rfind("\n", 0, start) + 1 : end]
    while end < len(text):
        nxt = text.find("\n", end + 1)
        nxt = len(text) if nxt < 0 else nxt
        raw_line = text[end + 1 : nxt]
        line = raw_line.strip().lstrip(">").strip()
        if len(block) >= MAX_REPLY_LINES:
            break
        same_code = line.startswith(code) and line[3:4] in (" ", "-", "")
        wrapped_line = (
            wrapped
            and line
            and raw_line[:1] in (" ", "\t")
            and len(previous) >= _WRAP_WIDTH
            and REPLY_LINE.match(line) is None
            and not _FIELD_LIKE.match(line)
        )
        if not (same_code or wrapped_line):
            break
        block.append(line)
        previous = raw_line
        end = nxt
    return "\n".join(block), end


def wrapped_after(lines: list[str], i: int, first: str) -> tuple[str, int]:
    """`first` plus the indented lines wrapped after line i (up to a blank or unindented one).

    Returns the text (lines joined by newlines, for parse_reply to join) and the next index.
    """
    parts = [first]
    j = i + 1
    while j < len(lines) and lines[j][:1] in (" ", "\t") and lines[j].strip():
        parts.append(lines[j].strip())
        j += 1
    return "\n".join(parts), j


# --------------------------------------------------------------------------------------------
# The reporting server's own errors: no remote server answered

# Words a sending MTA writes about its own failure to reach anyone (DNS, network, queue
# expiry, a local program). When a bounce's only reply carries them, and no remote server is
# quoted ("said:", "<<<"), there is nothing a mock server could reproduce.
_LOCAL_WORDS = re.compile(
    r"\b(?:host not found|name server:"
    r"|host does not accept mail|does not accept mail \(nullmx\)|null mx"
    r"|timed out while|message expired|unable to deliver in \d+ minutes|dns query failed"
    r"|operating system error|retry timeout exceeded|all hosts .{0,80}?have been failing"
    r"|retry time not reached|all relevant MX records point to non-existent hosts"
    r"|malformed or unexpected name server reply|unknown mail domain"
    r"|unrouteable address|loops back to myself|delivery time expired"
    r"|nonexistent domain|SMTPSEND\.DNS|network error on destination"
    r"|message timed out|lost connection with|DNS Error:|address resolution of"
    r"|did not accept our requests to connect)",
    re.IGNORECASE,
)
# Words a remote server may also use in a reply of its own ("554 5.7.1 Connection refused by
# policy"): the sending MTA's only when the status is about routing or the network (X.4.x,
# X.1.2 bad destination system, X.7.27 null MX), or when there is no status at all.
_LOCAL_WORDS_WEAK = re.compile(
    r"\b(?:host unknown|no such domain|domain not found|connection (?:timed out|refused)"
    r"|no route to host|network is unreachable|no mx record|DNS lookup failed"
    r"|unable to connect to|could not connect to|no answer from host|read error from"
    r"|timeout waiting for input|Deferred:)",
    re.IGNORECASE,
)
_LOCAL_STATUS = re.compile(r"^[45]\.(?:4\.\d+|1\.2|7\.27)$")


def looks_local(text: str, status: str | None = None) -> bool:
    """Whether the words are the reporting server's own (DNS, network, expiry), not a reply.

    `status` is the reply's enhanced status; read from the text when not given.
    """
    if _LOCAL_WORDS.search(text) is not None:
        return True
    if _LOCAL_WORDS_WEAK.search(text) is None:
        return False
    if status is None and (line := parse_reply_line(text.strip())) is not None:
        status = line.status or _status_after_noise(line.code, line.text)[1]
    return status is None or _LOCAL_STATUS.match(status) is not None


# --------------------------------------------------------------------------------------------
# Stages

StageTable = tuple[tuple[re.Pattern[str], str], ...]


def stage_table(*pairs: tuple[str, str]) -> StageTable:
    """(wording pattern, stage) pairs, compiled once, case-insensitive, first match wins."""
    return tuple((re.compile(pattern, re.IGNORECASE), stage) for pattern, stage in pairs)


_STAGE_OF_COMMAND: StageTable = stage_table(
    (
        r"^(?:end\s+of\s+(?:data|message)|final\s+data|\.|bdat\b|message\s+body|body\b"
        r"|data\s+end|after\s+data|text\b)",
        "end_of_data",
    ),
    (r"^rcpt(?:\s+to)?\b|^rcpt_to\b|^recipient\b", "rcpt"),
    (r"^mail(?:\s+from)?\b|^mail_from\b|^sender\b", "mail"),
    (r"^data\b", "data"),
    (r"^(?:e|l)hlo\b", "ehlo"),
    (r"^helo\b", "helo"),
    (
        r"^(?:initial\s+)?(?:connection|connect|greeting|banner)\b"
        r"|^initial\s+server\s+greeting|^conn\b",
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

_COMMAND_NOISE = re.compile(r"^(?:the\s+)?(?:pipelined\s+)?(?:smtp\s+)?", re.IGNORECASE)


def stage_of(command: str) -> str | None:
    """Map an MTA's name for the command ("RCPT TO", "end of DATA", "pipelined MAIL FROM:<x>")."""
    words = _COMMAND_NOISE.sub("", command.strip())
    for pattern, stage in _STAGE_OF_COMMAND:
        if pattern.search(words):
            return stage
    return None


# "(in reply to RCPT TO command)", Postfix's words; also "in reply to end of DATA command".
IN_REPLY_TO = re.compile(
    r"\(?\s*in reply to (?P<cmd>[A-Za-z][A-Za-z ]{0,30}?)(?: command)?\s*\)?\s*\.?\s*$",
    re.IGNORECASE,
)
AFTER_COMMAND = re.compile(
    r"\b(?:after|on|for|in reply to|did not like our)\s+"
    r"(?P<cmd>(?:pipelined\s+)?(?:RCPT(?:\s+TO)?|MAIL(?:\s+FROM)?|DATA|end of data|final DATA"
    r"|initial connection|EHLO|HELO|STARTTLS|AUTH)\b"
    r"[^:\n]{0,200}?(?::<[^>\n]{0,300}>)?)(?:\s+command)?\s*:",
    re.IGNORECASE,
)
# Yahoo's and other qmail-based servers end the text with the protocol step in brackets.
BRACKET_STAGE = re.compile(r"\[(?P<step>RCPT_TO|MAIL_FROM|BODY|DATA|CONNECT|EOD)\]\s*$")


def bracket_stage(step: str) -> str | None:
    return "end_of_data" if step in ("BODY", "EOD") else stage_of(step)


# Where a code is usually met, best first, when the bounce does not say (see default_stage).
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
    r"|mail loop|hop count|header error|dmarc)",
    re.IGNORECASE,
)
# Enhanced statuses about the message rather than the address: size, content, DMARC.
_MESSAGE_STATUSES = re.compile(r"^[45]\.(?:6\.\d+|3\.4|2\.3|7\.26|7\.27)$")


def default_stage(code: int, status: str | None, text: Iterable[str]) -> tuple[str, str]:
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


def code_for_status(status: str) -> int:
    """The basic code that usually carries this enhanced status (when only the status is known)."""
    detail = status[2:]
    if status[0] == "4":
        return {"2.2": 452, "3.1": 452, "5.3": 452, "7.0": 421}.get(detail, 451)
    return {"2.2": 552, "2.3": 552, "3.4": 552, "7.1": 554, "3.0": 554, "1.3": 553, "7.8": 535}.get(
        detail, 550
    )


# --------------------------------------------------------------------------------------------
# Addresses and hosts

# The lookbehind starts a match only where a word starts: each word is read once, not once
# per character, however long it is.
ADDRESS = re.compile(r"(?<![^\s<>()\[\]\"',;:])[^\s<>()\[\]\"',;:@]+@[A-Za-z0-9.-]*[A-Za-z0-9]")
BRACKETED = re.compile(r"<([^<>]*)>")  # the first <...> in a command or a line
BRACKETED_ADDRESS = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
ADDRESS_LINE = re.compile(r"^<([^<>]+@[^<>]+)>:?\s*$")  # "<bob@example.test>:" alone on its line
SENDER_WORD = re.compile(r"\bsender\b|\bmail from\b", re.IGNORECASE)

# How far before a reply to look for the address or host it is about: the bounces seen put
# them within a few lines (Gmail's is the farthest, a paragraph above).
LOOK_BACK = 1000


# Lines that name the sender, not a recipient: "From: alice@...", "MAIL FROM:<alice@...>".
_SENDER_LINE = re.compile(
    r"^\s*(?:From|Sender|Return-Path|Reply-To|X-Postfix-Sender|Envelope-From)\s*:"
    r"|\bMAIL\s+FROM\s*:|\benvelope-from\b",
    re.IGNORECASE | re.MULTILINE,
)
# Words after a reply that introduce the address it was about: "The following recipients were
# affected:", or the envelope a bounce lists below the error ("RCPT TO: bob@...").
_RECIPIENTS_AFTER = re.compile(r"\brecipients?\b|\bRCPT\s+TO\b", re.IGNORECASE)


def recipient_before(text: str, pos: int) -> str | None:
    """The last address written shortly before the reply, not on a line naming the sender;
    else the first one after it when the bounce lists "the following recipients" there."""
    start = max(0, pos - LOOK_BACK)
    for m in reversed(list(ADDRESS.finditer(text, start, pos))):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if not _SENDER_LINE.search(text, line_start, m.start()):
            return m.group(0).rstrip(".")
    end = min(len(text), pos + LOOK_BACK // 2)
    # The first address after the recipient words, passing over others (the sender's in an
    # envelope listed as "MAIL FROM: ... RCPT TO: ...").
    words = _RECIPIENTS_AFTER.search(text, pos, end)
    after = ADDRESS.search(text, words.end(), end) if words else None
    return after.group(0).rstrip(".") if after is not None else None


def recipient_in(reply: Reply, *, bare: bool = True) -> str | None:
    """The address a reply names, unless the reply is about the sender: one in <brackets>, else
    (with `bare`) the only bare one ("550 5.1.1 No such user bob@example.test", Lotus Notes)."""
    joined = " ".join(reply.text)
    if SENDER_WORD.search(joined):
        return None
    if addr := BRACKETED_ADDRESS.search(joined):
        return addr[1]
    found = {a.rstrip(".") for a in ADDRESS.findall(joined)} if bare else set()
    return found.pop() if len(found) == 1 else None


_HOST_WORDS = re.compile(
    r"(?:\bhost\s+|\bRemote-MTA:\s*dns;\s*|\bserver\s+|\bRemote system:\s*dns;\s*)"
    r"(?P<host>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)\.?(?=[\s\[(:,]|$)",
    re.IGNORECASE,
)


def host_before(text: str, pos: int) -> str | None:
    start = max(0, pos - LOOK_BACK)
    paragraph = text.rfind("\n\n", start, pos)  # the host named in the reply's paragraph
    found = list(_HOST_WORDS.finditer(text, max(start, paragraph), pos))
    return found[-1]["host"] if found else None


def squash(s: str, limit: int = 300) -> str:
    """Text on one line, for comments and evidence."""
    out = " ".join(s.split()).strip(" :'\"")
    return out if len(out) <= limit else out[: limit - 3] + "..."
