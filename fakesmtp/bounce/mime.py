"""Reading a bounce as mail: mbox splitting, the MIME walk (bounded, lenient about broken
boundaries), HTML to text, and the RFC 3464 delivery-status fields read from their raw text."""

from __future__ import annotations

import email
import email.message
import email.policy
import html
import re
from dataclasses import dataclass, field

from .findings import BounceError

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
_HEADER_START = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9-]*):")
_MBOX_SEPARATOR = re.compile(r"^From \S+\s+(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ", re.MULTILINE)
# Where the returned copy of the original message starts in a plain-text bounce: its text is
# the sender's, not the bounce's, and must not be read as a reply.
_RETURNED_COPY = re.compile(
    r"^[ \t]*-{2,}\s*(?:This is a copy of the message|Below this line is a copy of the message"
    r"|Original message|Unsent message follows|Enclosed is a copy|Returned message"
    r"|Message headers follow|Original message follows)"
    r"|^[ \t]*Original message headers:"
    r"|^(?:Message headers follow|Original message follows|Below is a copy of the original"
    r"|Below this line is a copy)"
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
# The email package splits message/delivery-status into header blocks itself and loses the
# lines it cannot read (a multi-line reply written without indentation): renamed before
# parsing, the part stays raw text for the lenient reader below.
_DSN_TYPE = re.compile(
    r"^(Content-Type:[ \t]*)message/(?:global-)?delivery-status", re.IGNORECASE | re.MULTILINE
)
_RAW_DSN = "text/x-fakesmtp-delivery-status"
MAX_DEPTH = 40  # MIME nesting a bounce needs: a few levels; deeper is hostile or broken
_BOUNDARY_LINE = re.compile(r"^--([^\s-][^\s]{0,69})[ \t]*$", re.MULTILINE)


def normalise(text: str) -> str:
    return unquote(text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n"))


_QUOTED = re.compile(r"^[ \t]*> ?", re.MULTILINE)


def unquote(text: str) -> str:
    """A bounce pasted from an e-mail reply, every line quoted with "> ": the quoting removed
    (the readers know the MTAs' layouts, not the quoting around them)."""
    head = [ln for ln in text[:20_000].split("\n") if ln.strip()]
    if len(head) >= 2 and sum(ln.lstrip().startswith(">") for ln in head) >= 0.8 * len(head):
        return _QUOTED.sub("", text)
    return text


def looks_like_mail(text: str) -> bool:
    """RFC 5322 headers at the top (an mbox "From " line may come first)."""
    lines = text.split("\n", 40)[:40]
    if lines and lines[0].startswith("From "):
        lines = lines[1:]
    names = set()
    for line in lines:
        if not line.strip():
            break
        if m := _HEADER_START.match(line):
            names.add(m["name"].lower())
        elif line[:1] not in (" ", "\t"):
            return False
    return len(names & _MAIL_HEADERS) >= 2


def messages(text: str) -> list[email.message.Message]:
    """One message, or each message of an mbox."""
    if text.startswith("From ") and len(_MBOX_SEPARATOR.findall(text)) >= 1:
        # An mbox: each message starts with a From_ line.
        chunks = [c for c in _MBOX_SEPARATOR.split(text) if c.strip()]
        bodies = [c.split("\n", 1)[1] if "\n" in c else "" for c in chunks]
        return [_parse(b) for b in bodies]
    return [_parse(text)]


def _parse(text: str) -> email.message.Message:
    try:
        return email.message_from_string(
            _DSN_TYPE.sub(rf"\1{_RAW_DSN}", text), policy=email.policy.compat32
        )
    except RecursionError:
        raise BounceError("MIME parts nested deeper than Python's parser can follow") from None


def decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except (LookupError, ValueError):  # an unknown charset, or a name no codec can have
        return payload.decode("utf-8", errors="replace")


# Patterns that never cross a "<" inside a tag: each character is looked at a bounded number
# of times, even in broken markup.
_HTML_HIDDEN = re.compile(r"<(style|script|head|title)\b", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<\s*/?\s*(?:br|p|div|tr|li|table|h\d|pre)\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")


def html_text(markup: str) -> str:
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


@dataclass(slots=True)
class Parts:
    """A bounce message's readable parts: DSN fields, plain text, HTML text, JSON notices."""

    dsn: list[str] = field(default_factory=list)  # raw text of each delivery-status part
    plain: list[str] = field(default_factory=list)
    markup: list[str] = field(default_factory=list)
    subject: str = ""


def read_parts(msg: email.message.Message) -> Parts:
    parts = Parts(subject=str(msg.get("subject", "")))
    _walk(msg, parts, 0)
    return parts


def _walk(part: email.message.Message, parts: Parts, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BounceError(f"MIME parts nested more than {MAX_DEPTH} deep: not a bounce")
    ctype = part.get_content_type()
    if ctype in _SKIPPED_PARTS:
        return
    if ctype == _RAW_DSN:
        parts.dsn.append(normalise(decoded(part)))
        return
    if part.is_multipart():
        for sub in part.get_payload():
            _walk(sub, parts, depth + 1)
        return
    if part.get_content_maintype() == "multipart":
        # The declared boundary never occurs (a relay rewrote it): find the one the body
        # uses, or read the body as text.
        body = part.get_payload()
        body = body if isinstance(body, str) else ""
        if repaired := _reparse_with_boundary(body):
            _walk(repaired, parts, depth + 1)
        else:
            parts.plain.append(normalise(body))
    elif ctype == "text/html":
        parts.markup.append(html_text(normalise(decoded(part))))
    elif part.get_content_maintype() == "text" or ctype == "application/json":
        parts.plain.append(normalise(decoded(part)))


def _reparse_with_boundary(body: str) -> email.message.Message | None:
    found = _BOUNDARY_LINE.search(body)
    if found is None:
        return None
    boundary = found[1]
    if f"--{boundary}" not in body[found.end() :]:
        return None
    return _parse(f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n{body}')


def cut_returned_copy(text: str) -> str:
    m = _RETURNED_COPY.search(text)
    return text[: m.start()] if m else text
