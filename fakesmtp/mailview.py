"""A captured message read the way mail viewers show it: addresses, bodies, parts, snippet.

Mailpit's and MailHog's API shapes, and Mailpit's search, all read the same facts out of the
raw bytes. Parsing a message costs far more than answering a request, so each message is read
once and the view is kept (bounded) by message id: captured messages never change.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime

from .store import CapturedMessage, MessageTooNested, parse_message

SNIPPET_LENGTH = 250  # characters, as Mailpit's list shows
MAX_BODY = 1024 * 1024  # characters of text or HTML kept in a view; the raw route has the rest
CACHE_SIZE = 512  # views kept; a search over more messages parses the rest again
# A view holds decoded parts and bodies: bound the cache by what it holds too, so a few large
# messages cannot pin hundreds of megabytes next to the store's own copy.
CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Address:
    name: str
    address: str

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


@dataclass(frozen=True, slots=True)
class Part:
    """One leaf of the MIME tree: its path ("1", "2.1"), headers and payload."""

    part_id: str
    content_type: str
    filename: str
    content_id: str
    disposition: str  # "attachment", "inline" or ""
    headers: tuple[tuple[str, str], ...]
    encoded_body: str  # as transmitted (base64, quoted-printable...), for MailHog's shape
    payload: bytes  # decoded

    @property
    def checksums(self) -> dict[str, str]:
        return {
            "MD5": hashlib.md5(self.payload, usedforsecurity=False).hexdigest(),
            "SHA1": hashlib.sha1(self.payload, usedforsecurity=False).hexdigest(),
            "SHA256": hashlib.sha256(self.payload).hexdigest(),
        }


@dataclass(frozen=True, slots=True)
class MailView:
    """What a viewer shows of one message; built by ``view(message)``."""

    id: str
    message_id: str
    sender: Address  # the From header, else the envelope sender
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]  # envelope recipients named in no To or Cc header
    reply_to: tuple[Address, ...]
    return_path: str
    subject: str
    date: datetime | None  # the Date header, when it parses
    created: datetime  # when we accepted it
    size: int
    text: str
    html: str
    headers: tuple[tuple[str, str], ...]  # in message order
    body: str  # everything after the header block, as transmitted
    parts: tuple[Part, ...]  # every leaf, the text and HTML bodies included
    attachments: tuple[Part, ...]
    inline: tuple[Part, ...]
    snippet: str
    list_unsubscribe: str = ""
    list_unsubscribe_post: str = ""
    search_text: str = field(default="", repr=False)  # lower-cased headers and bodies

    @property
    def weight(self) -> int:
        """About how many bytes this view holds (its texts and decoded parts)."""
        texts = len(self.body) + len(self.text) + len(self.html) + len(self.search_text)
        return texts + sum(len(p.payload) + len(p.encoded_body) for p in self.parts)

    def part(self, part_id: str) -> Part | None:
        return next((p for p in self.parts if p.part_id == part_id), None)

    def header_map(self) -> dict[str, list[str]]:
        """Header name -> every value, names in the order first seen."""
        found: dict[str, list[str]] = {}
        for name, value in self.headers:
            found.setdefault(name, []).append(value)
        return found


def canonical(name: str) -> str:
    """``content-type``, ``Message-ID`` -> ``Content-Type``, ``Message-Id``: the form Go's mail
    servers (Mailpit, MailHog) give header names, and so the form their clients look up.
    """
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


def iso(moment: datetime) -> str:
    """RFC 3339 with milliseconds, as Mailpit and MailHog clients parse dates."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _addresses(message: Message, name: str) -> tuple[Address, ...]:
    values = [str(v) for v in message.get_all(name, [])]
    return tuple(Address(n, a) for n, a in getaddresses(values) if a)


def _text(payload: object) -> str:
    return str(payload).replace("\r\n", "\n")[:MAX_BODY]


def _encoded_body(part: Message) -> str:
    payload = part.get_payload(decode=False)
    text = payload if isinstance(payload, str) else ""
    # 8-bit bodies come back with surrogate escapes; show them as the UTF-8 they most likely are
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _leaves(message: Message, prefix: str = "") -> list[tuple[str, Message]]:
    """(path, part) for every non-multipart part; a single-part message is part "1"."""
    if not message.is_multipart():
        return [(prefix or "1", message)]
    found = []
    for number, child in enumerate(message.get_payload(), start=1):  # type: ignore[arg-type]
        path = f"{prefix}.{number}" if prefix else str(number)
        found.extend(_leaves(child, path))
    return found


def _part(path: str, leaf: Message) -> Part:
    try:
        payload = leaf.get_payload(decode=True) or b""
    except Exception:  # a broken transfer encoding: keep what was sent
        payload = _encoded_body(leaf).encode()
    disposition = (leaf.get_content_disposition() or "").lower()
    return Part(
        part_id=path,
        content_type=leaf.get_content_type(),
        filename=leaf.get_filename() or "",
        content_id=str(leaf.get("Content-ID", "")).strip().strip("<>"),
        disposition=disposition,
        headers=tuple((name, str(value)) for name, value in leaf.items()),
        encoded_body=_encoded_body(leaf),
        payload=payload if isinstance(payload, bytes) else bytes(payload),
    )


def _decoded_text(leaf: Message) -> str:
    try:
        return _text(leaf.get_content())  # type: ignore[attr-defined]
    except Exception:  # an unknown charset or a broken encoding: best effort
        payload = leaf.get_payload(decode=True) or b""
        return _text(payload.decode("utf-8", "replace") if isinstance(payload, bytes) else "")


_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def plain(html_text: str) -> str:
    """HTML reduced to its words, for snippets and search."""
    return html.unescape(_TAGS.sub(" ", html_text))


def _body_section(raw: bytes) -> str:
    for separator in (b"\r\n\r\n", b"\n\n"):
        _, found, body = raw.partition(separator)
        if found:
            return body.decode("utf-8", "replace")
    return ""


def build(message: CapturedMessage) -> MailView:
    """Read one message; never raises for a malformed one (it shows what could be read)."""
    try:
        parsed = parse_message(message.raw)
    except (MessageTooNested, RecursionError):
        # Nested too deep to walk without stalling the loop: its headers, the rest as text.
        parsed = BytesParser(policy=email.policy.default).parsebytes(  # type: ignore[assignment]
            message.raw, headersonly=True
        )
        parsed.set_type("text/plain")
    headers: list[tuple[str, str]] = []
    for name, value in parsed.raw_items():
        try:
            headers.append((name, str(parsed.policy.header_fetch_parse(name, value))))
        except Exception:  # an undecodable header: the raw text
            headers.append((name, str(value)))
    try:
        senders = _addresses(parsed, "From")
        to, cc = _addresses(parsed, "To"), _addresses(parsed, "Cc")
        reply_to = _addresses(parsed, "Reply-To")
    except Exception:
        senders, to, cc, reply_to = (), (), (), ()
    named = {a.address.lower() for a in (*to, *cc)}
    bcc = tuple(Address("", r) for r in message.rcpt_tos if r.lower() not in named)
    sender = senders[0] if senders else Address("", message.mail_from)
    text = html_body = ""
    parts, attachments, inline = [], [], []
    for path, leaf in _leaves(parsed):
        part = _part(path, leaf)
        parts.append(part)
        kind = part.content_type
        if part.disposition == "attachment" or (part.filename and part.disposition != "inline"):
            attachments.append(part)
        elif kind == "text/plain" and not text and not part.filename:
            text = _decoded_text(leaf)
        elif kind == "text/html" and not html_body and not part.filename:
            html_body = _decoded_text(leaf)
        elif part.content_id or part.disposition == "inline" or part.filename:
            inline.append(part)
        else:
            attachments.append(part)
    date = None
    if parsed.get("Date"):
        try:
            date = parsedate_to_datetime(str(parsed["Date"]))
        except (TypeError, ValueError):
            date = None
    words = text or plain(html_body)
    subject = str(parsed.get("Subject", "") or "")
    search_text = "\n".join([*(f"{n}: {v}" for n, v in headers), text, plain(html_body)]).lower()
    return MailView(
        id=message.id,
        message_id=str(parsed.get("Message-ID", "") or "").strip().strip("<>"),
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        return_path=str(parsed.get("Return-Path", "") or "").strip().strip("<>")
        or message.mail_from,
        subject=subject,
        date=date,
        created=datetime.fromtimestamp(message.received_at, UTC),
        size=message.size,
        text=text,
        html=html_body,
        headers=tuple(headers),
        body=_body_section(message.raw),
        parts=tuple(parts),
        attachments=tuple(attachments),
        inline=tuple(inline),
        snippet=_SPACE.sub(" ", words).strip()[:SNIPPET_LENGTH],
        list_unsubscribe=str(parsed.get("List-Unsubscribe", "") or ""),
        list_unsubscribe_post=str(parsed.get("List-Unsubscribe-Post", "") or ""),
        search_text=search_text,
    )


_cache: OrderedDict[str, MailView] = OrderedDict()
_cache_lock = threading.Lock()
_cache_bytes = 0


def view(message: CapturedMessage) -> MailView:
    """The message's view, built on first use and kept for the next request."""
    with _cache_lock:
        found = _cache.get(message.id)
        if found is not None:
            _cache.move_to_end(message.id)
            return found
    global _cache_bytes
    built = build(message)
    weight = built.weight
    if weight > CACHE_BYTES // 4:  # one huge message: served, not kept
        return built
    with _cache_lock:
        if message.id not in _cache:
            _cache[message.id] = built
            _cache_bytes += weight
        while len(_cache) > CACHE_SIZE or _cache_bytes > CACHE_BYTES:
            _, dropped = _cache.popitem(last=False)
            _cache_bytes -= dropped.weight
    return built
