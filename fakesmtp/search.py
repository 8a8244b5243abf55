"""Mailpit's search syntax, parsed once into terms, then tried against message views.

``to:bob subject:"monthly report" -from:noreply invoice has:attachment is:unread``: words are
separated by spaces, double quotes group a phrase, ``-`` or ``!`` before a term excludes what it
matches. Every term must hold. Matching is a case-insensitive substring test, as Mailpit's is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .mailview import MailView

ADDRESS_FIELDS = ("to", "from", "cc", "bcc", "reply-to", "addressed")
TEXT_FIELDS = ("subject", "message-id", "tag")
FLAGS = {
    "is:read",
    "is:unread",
    "is:tagged",
    "has:attachment",
    "has:attachments",
    "has:inline",
    "has:inlines",
}
_WORD = re.compile(r"[a-zA-Z0-9]")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s?(k|kb|m|mb)?$")


@dataclass(frozen=True, slots=True)
class Term:
    """One condition: ``field`` is "" for a plain word, else to, from, subject, is, has, ..."""

    field: str
    value: str
    exclude: bool = False


def split(query: str) -> list[str]:
    """Words separated by spaces; double quotes group (and are dropped), as in ``subject:"a b"``."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for char in query:
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def parse(query: str) -> tuple[Term, ...]:
    """The terms of a query; words with no letter or digit are ignored, as Mailpit does."""
    terms = []
    for word in split(query):
        exclude = len(word) > 1 and word[0] in "-!"
        if exclude:
            word = word[1:]
        if not _WORD.search(word):
            continue
        lowered = word.lower()
        if lowered in FLAGS:
            kind, _, value = lowered.partition(":")
            terms.append(Term(kind, value.rstrip("s"), exclude))
            continue
        prefix, colon, value = word.partition(":")
        field = prefix.lower()
        if colon and value and field in ("after", "before"):
            if _moment(value) is not None:  # an unreadable date is ignored, as Mailpit does
                terms.append(Term(field, value, exclude))
        elif colon and value and field in (*ADDRESS_FIELDS, *TEXT_FIELDS):
            terms.append(Term(field, value.lower() if field != "tag" else value, exclude))
        elif colon and field in ("larger", "smaller") and _size(value) is not None:
            terms.append(Term(field, value, exclude))
        elif colon and not value and field in (*ADDRESS_FIELDS, *TEXT_FIELDS):
            continue  # "to:" alone asks nothing
        else:
            terms.append(Term("", lowered, exclude))
    return tuple(terms)


def _size(text: str) -> int | None:
    found = _SIZE.match(text.strip().lower())
    if found is None:
        return None
    number = float(found[1])
    unit = found[2] or ""
    return int(number * {"": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2}[unit])


def _moment(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _addresses(view: MailView, field: str) -> str:
    groups = {
        "to": view.to,
        "from": (view.sender,),
        "cc": view.cc,
        "bcc": view.bcc,
        "reply-to": view.reply_to,
    }
    chosen = groups.values() if field == "addressed" else (groups[field],)
    return "\n".join(f"{a.name} <{a.address}>" for group in chosen for a in group).lower()


def _holds(term: Term, view: MailView, read: bool) -> bool:
    field, value = term.field, term.value
    if field == "":
        return value in view.search_text
    if field in ADDRESS_FIELDS:
        return value in _addresses(view, field)
    if field == "subject":
        return value in view.subject.lower()
    if field == "message-id":
        return value in view.message_id.lower()
    if field == "tag":
        return False  # fakesmtp does not tag messages
    if field == "is":
        return {"read": read, "unread": not read, "tagged": False}[value]
    if field == "has":
        return bool(view.attachments if value == "attachment" else view.inline)
    if field in ("after", "before"):
        moment = _moment(value) or view.created
        return view.created >= moment if field == "after" else view.created <= moment
    size = _size(value) or 0
    return view.size > size if field == "larger" else view.size < size


def matcher(query: str) -> Callable[[MailView, bool], bool]:
    """``match(view, read)``: whether a message satisfies every term of ``query``."""
    terms = parse(query)

    def match(view: MailView, read: bool) -> bool:
        return all(_holds(term, view, read) != term.exclude for term in terms)

    return match
