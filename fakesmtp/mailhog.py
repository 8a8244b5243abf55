"""MailHog's API v2 (list, search) and its v1 delete routes, in MailHog's shapes.

The ``mailhog`` npm client, ``cypress-mailhog`` and the PHP/Java clients read ``total``,
``count``, ``start`` and ``items[]`` whose ``Content.Headers`` map each header to its values.
Unlike MailHog, every leaf of the MIME tree is listed in ``MIME.Parts`` (MailHog lists only the
top level), so a client finds the text of a nested multipart/alternative too.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .endpoint import ApiError, Handler, store_of
from .mailview import MailView, canonical, iso, view
from .store import CapturedMessage

DEFAULT_LIMIT = 50  # MailHog's page size
KINDS = ("from", "to", "containing")


def routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/api/v2/messages", list_messages),
        ("GET", "/api/v2/search", search),
        ("DELETE", "/api/v1/messages/{id}", delete_message),
    ]


def _path(address: str) -> dict[str, Any]:
    mailbox, _, domain = address.rpartition("@")
    if not mailbox:  # no @: a bare name, or the null sender <>
        mailbox, domain = address, ""
    return {"Relays": None, "Mailbox": mailbox, "Domain": domain, "Params": ""}


def _headers(pairs: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        found.setdefault(canonical(name), []).append(value)
    return found


def item(message: CapturedMessage, helo: str) -> dict[str, Any]:
    """One message as MailHog's v2 lists it."""
    seen: MailView = view(message)
    parts = [
        {
            "Headers": _headers(part.headers),
            "Body": part.encoded_body,
            "Size": len(part.encoded_body),
            "MIME": None,
        }
        for part in seen.parts
    ]
    multipart = len(parts) > 1 or (seen.parts and seen.parts[0].part_id != "1")
    return {
        "ID": message.id,
        "From": _path(message.mail_from),
        "To": [_path(r) for r in message.rcpt_tos],
        "Content": {
            "Headers": _headers(seen.headers),
            "Body": seen.body,
            "Size": message.size,
            "MIME": None,
        },
        "Created": iso(seen.created),
        "MIME": {"Parts": parts} if multipart else None,
        "Raw": {
            "From": message.mail_from,
            "To": list(message.rcpt_tos),
            "Data": message.raw.decode("utf-8", "replace"),
            "Helo": helo,
        },
    }


def _page(request: web.Request) -> tuple[int, int]:
    values = []
    for name, default in (("start", 0), ("limit", DEFAULT_LIMIT)):
        text = request.query.get(name, "")
        try:
            values.append(max(int(text), 0) if text else default)
        except ValueError:
            raise ApiError(400, f"{name} must be a whole number, not {text!r}") from None
    return values[0], values[1]


def _answer(request: web.Request, found: list[CapturedMessage]) -> web.Response:
    """Newest first, as MailHog lists them."""
    start, limit = _page(request)
    store = store_of(request)
    shown = found[start : start + limit]
    items = []
    for message in shown:
        record = store.session(message.session_id)
        items.append(item(message, (record.helo or "") if record is not None else ""))
    return web.json_response(
        {"total": len(found), "count": len(items), "start": start, "items": items}
    )


async def list_messages(request: web.Request) -> web.Response:
    return _answer(request, store_of(request).messages()[::-1])


def _holds(kind: str, needle: str, message: CapturedMessage) -> bool:
    seen = view(message)
    if kind == "from":
        haystack = [message.mail_from, *seen.header_map().get("From", [])]
    elif kind == "to":
        found = seen.header_map()
        haystack = [*message.rcpt_tos, *found.get("To", []), *found.get("Cc", [])]
    else:
        return needle in seen.search_text
    return any(needle in value.lower() for value in haystack)


async def search(request: web.Request) -> web.Response:
    """``kind`` is from, to or containing; ``query`` a case-insensitive substring."""
    kind = request.query.get("kind", "containing")
    if kind not in KINDS:
        raise ApiError(400, f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    needle = request.query.get("query", "").lower()
    found = [m for m in store_of(request).messages()[::-1] if _holds(kind, needle, m)]
    return _answer(request, found)


async def delete_message(request: web.Request) -> web.Response:
    """MailHog's ``DELETE /api/v1/messages/{id}`` (also ours)."""
    message_id = request.match_info["id"]
    if not store_of(request).delete_messages([message_id]):
        raise ApiError(404, f"no message {message_id!r}")
    return web.json_response({"deleted": 1})
