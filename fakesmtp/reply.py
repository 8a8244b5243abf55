"""SMTP replies as values: parse "550 5.1.1 text", check it, render well-formed RFC 5321 lines."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# The only fields a reply text may use; anything else in braces is an error at load time.
TEMPLATE_FIELDS = frozenset({"to", "from", "helo", "client", "hostname", "size"})

_REPLY_RE = re.compile(r"^(?P<code>\d{3})(?:[ -](?P<rest>.*))?$", re.DOTALL)
_STATUS_RE = re.compile(r"^(?P<cls>[245])\.(?P<subject>\d{1,3})\.(?P<detail>\d{1,3})$")
_FIELD_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
# Printable ASCII plus UTF-8 text; control bytes (NUL, CR, LF, ESC, DEL...) never reach the wire.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# One reply line as RFC 5321 section 4.2 writes it: a code (second digit 0-5), "-" when more lines
# follow or " " (or nothing) on the last, an optional enhanced status (RFC 3463), the text.
REPLY_LINE = re.compile(
    r"(?P<code>[2-5][0-5]\d)(?P<sep>[ -]|$)"
    r"(?:(?P<status>[245]\.\d{1,3}\.\d{1,3})(?=\s|$))?\s*(?P<text>.*)$",
    re.DOTALL,
)

MAX_LINE_TEXT = 480  # keeps "550-5.1.1 " + text + CRLF within RFC 5321's 512-octet reply line
MAX_FIELD_LENGTH = 200  # bound on what a template field can add from client input


def clean_text(value: str, limit: int = MAX_FIELD_LENGTH) -> str:
    """Text from a client made safe to echo in a reply: no control bytes, bounded length."""
    value = _CONTROL_RE.sub("?", value)
    return value if len(value) <= limit else value[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class ReplyLine:
    """One line of a reply as read from text: its code, whether more lines follow, status, text."""

    code: int
    more: bool  # "550-..." : another line of the same reply follows
    status: str | None
    text: str


def parse_reply_line(line: str) -> ReplyLine | None:
    """Read one reply line (``550-5.1.1 text``); None when it does not start with a reply code."""
    match = REPLY_LINE.match(line)
    if match is None:
        return None
    return ReplyLine(int(match["code"]), match["sep"] == "-", match["status"], match["text"])


class ReplyError(ValueError):
    """A reply that is not a well-formed SMTP reply; the message says why."""


def check_status(status: str, code: int) -> str:
    """Validate an enhanced status code (RFC 3463) against the reply code's class."""
    match = _STATUS_RE.match(status)
    if not match:
        raise ReplyError(f"enhanced status {status!r} is not X.Y.Z with X one of 2, 4, 5")
    if match["cls"] != str(code)[0]:
        raise ReplyError(
            f"enhanced status {status} disagrees with code {code} "
            f"(a {str(code)[0]}xx reply takes {str(code)[0]}.X.X)"
        )
    return status


def _check_template(text: str) -> bool:
    """True when the text has fields to expand; raise on a field we do not document."""
    templated = False
    for match in _FIELD_RE.finditer(text):
        name = match.group(1)
        if name is None:  # an escaped brace
            templated = True
            continue
        if name not in TEMPLATE_FIELDS:
            allowed = ", ".join("{" + f + "}" for f in sorted(TEMPLATE_FIELDS))
            raise ReplyError(f"unknown template field {{{name}}} (allowed: {allowed})")
        templated = True
    return templated


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One SMTP reply: a code, an optional enhanced status and one or more lines of text."""

    code: int
    status: str | None = None
    lines: tuple[str, ...] = ("",)
    templated: bool = False

    @classmethod
    def make(cls, code: int, status: str | None, text: str | list[str] | tuple[str, ...]) -> Reply:
        """Build a checked reply; raise ReplyError with a one-line reason when it is not valid."""
        if not 200 <= code <= 599:
            raise ReplyError(f"reply code {code} is not between 200 and 599")
        if status is not None:
            check_status(status, code)
        lines = (text,) if isinstance(text, str) else tuple(text)
        if not lines:
            raise ReplyError("reply text list is empty")
        templated = False
        for line in lines:
            if not isinstance(line, str):
                raise ReplyError(f"reply text line {line!r} is not a string")
            if _CONTROL_RE.search(line):
                raise ReplyError("reply text contains a control character (CR, LF, NUL...)")
            if len(line) > MAX_LINE_TEXT:
                raise ReplyError(f"reply text line longer than {MAX_LINE_TEXT} characters")
            templated = _check_template(line) or templated
        return cls(code=code, status=status, lines=lines, templated=templated)

    @classmethod
    def parse(cls, text: str) -> Reply:
        """Parse ``"550 5.1.1 text"``: a code, an optional enhanced status, the text."""
        match = _REPLY_RE.match(text.strip())
        if not match:
            raise ReplyError(f"{text!r} does not start with a three-digit reply code")
        code = int(match["code"])
        rest = match["rest"] or ""
        status = None
        first, _, remainder = rest.partition(" ")
        if _STATUS_RE.match(first) or re.fullmatch(r"\d\.\d{1,3}\.\d{1,3}", first):
            status, rest = first, remainder
        return cls.make(code, status, rest)

    @property
    def positive(self) -> bool:
        """2xx and 3xx: the command took effect (or may go on)."""
        return self.code < 400

    @property
    def closes(self) -> bool:
        """421 always closes the connection (RFC 5321 section 3.8)."""
        return self.code == 421

    def text(self) -> str:
        """The reply as one string, as `explain` and logs show it."""
        status = f"{self.status} " if self.status else ""
        return "\n".join(f"{self.code} {status}{line}".rstrip() for line in self.lines)

    def render(self, fields: Mapping[str, str] | None = None, *, enhanced: bool = True) -> bytes:
        """The wire form: every line CRLF-terminated, "-" after the code on all but the last."""
        prefix = f"{self.status} " if enhanced and self.status else ""
        lines = self.lines
        if self.templated:
            lines = tuple(expand(line, fields or {}) for line in lines)
        last = len(lines) - 1
        out = []
        for index, line in enumerate(lines):
            separator = " " if index == last else "-"
            out.append(f"{self.code}{separator}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8", "replace")


def expand(text: str, fields: Mapping[str, str]) -> str:
    """Fill the documented {fields}; values are cleaned of control bytes and bounded."""

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return clean_text(fields.get(match.group(1), ""))

    return _FIELD_RE.sub(substitute, text)[:MAX_LINE_TEXT]
