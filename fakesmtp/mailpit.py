"""Mailpit's API v1, the parts test suites use, in Mailpit's own shapes.

A suite written for Mailpit (``mailpit-api``, ``cypress-mailpit``, plain HTTP) runs against
``fakesmtp serve`` with only its address changed. ``GET /api/v1/messages`` is shared with our
native API: one response carries both (Mailpit's capitalised fields beside ours), see
``listing``. Mailpit's Chaos triggers become ordinary rules (``chaos.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import chaos
from .endpoint import FAKE, ApiError, Handler, store_of
from .mailview import Address, Part, canonical, iso, view
from .search import matcher
from .store import CapturedMessage
from .version import __version__

if TYPE_CHECKING:
    from .server import FakeSMTP

# Which messages were opened: Mailpit marks a message read when one fetches it.
READ: web.AppKey[set[str]] = web.AppKey("mailpit_read", set)
DEFAULT_LIMIT = 50  # Mailpit's page size for search


def setup(app: web.Application) -> None:
    """Per-server state, set before the application starts."""
    app[READ] = set()


def routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/api/v1/info", info),
        ("GET", "/api/v1/webui", webui),
        ("PUT", "/api/v1/messages", set_read),
        ("POST", "/api/v1/send", send),
        ("GET", "/api/v1/message/{id}", get_message),
        ("GET", "/api/v1/message/{id}/headers", get_headers),
        ("GET", "/api/v1/message/{id}/raw", get_raw),
        ("GET", "/api/v1/message/{id}/part/{part}", get_part),
        ("GET", "/api/v1/search", search),
        ("DELETE", "/api/v1/search", delete_search),
        ("GET", "/api/v1/tags", tags),
        ("GET", "/api/v1/chaos", get_chaos),
        ("PUT", "/api/v1/chaos", put_chaos),
        ("GET", "/view/{id}.html", view_html),
        ("GET", "/view/{id}.txt", view_text),
        ("GET", "/livez", alive),
        ("GET", "/readyz", alive),
    ]


# --------------------------------------------------------------------------- shapes


def _fake(request: web.Request) -> FakeSMTP:
    return request.app[FAKE]


def _address(address: Address) -> dict[str, str]:
    return {"Name": address.name, "Address": address.address}


def _addresses(addresses: Iterable[Address]) -> list[dict[str, str]]:
    return [_address(a) for a in addresses]


def _attachment(part: Part) -> dict[str, Any]:
    return {
        "PartID": part.part_id,
        "FileName": part.filename,
        "ContentType": part.content_type,
        "ContentID": part.content_id,
        "Size": len(part.payload),
        "Checksums": part.checksums,
    }


def _username(request: web.Request, message: CapturedMessage) -> str:
    record = store_of(request).session(message.session_id)
    return (record.user or "") if record is not None else ""


def summary(request: web.Request, message: CapturedMessage) -> dict[str, Any]:
    """One message as Mailpit lists it."""
    seen = view(message)
    return {
        "ID": seen.id,
        "MessageID": seen.message_id,
        "Read": seen.id in request.app[READ],
        "From": _address(seen.sender),
        "To": _addresses(seen.to),
        "Cc": _addresses(seen.cc),
        "Bcc": _addresses(seen.bcc),
        "ReplyTo": _addresses(seen.reply_to),
        "Subject": seen.subject,
        "Created": iso(seen.created),
        "Username": _username(request, message),
        "Tags": [],
        "Size": seen.size,
        "Attachments": len(seen.attachments),
        "Snippet": seen.snippet,
    }


def _links(header: str) -> list[str]:
    return [item.strip().strip("<>") for item in header.split(",") if item.strip()]


def full(request: web.Request, message: CapturedMessage) -> dict[str, Any]:
    """One message as Mailpit's ``GET /api/v1/message/{ID}`` gives it."""
    seen = view(message)
    return {
        "ID": seen.id,
        "MessageID": seen.message_id,
        "Read": True,  # reading it marks it read; older Mailpit clients expect the field
        "From": _address(seen.sender),
        "To": _addresses(seen.to),
        "Cc": _addresses(seen.cc),
        "Bcc": _addresses(seen.bcc),
        "ReplyTo": _addresses(seen.reply_to),
        "ReturnPath": seen.return_path,
        "Subject": seen.subject,
        "ListUnsubscribe": {
            "Header": seen.list_unsubscribe,
            "Links": _links(seen.list_unsubscribe),
            "Errors": "",
            "HeaderPost": seen.list_unsubscribe_post,
        },
        "Date": iso(seen.date or seen.created),
        "Tags": [],
        "Username": _username(request, message),
        "Text": seen.text,
        "HTML": seen.html,
        "Size": seen.size,
        "Inline": [_attachment(p) for p in seen.inline],
        "Attachments": [_attachment(p) for p in seen.attachments],
    }


def listing(
    request: web.Request,
    everything: list[CapturedMessage],
    found: list[CapturedMessage],
    shown: list[CapturedMessage],
    start: int,
) -> dict[str, Any]:
    """The shared ``GET /api/v1/messages`` answer: our fields and Mailpit's in one object.

    Ours: ``total`` (all stored), ``count`` (all that match the filters), ``messages[]`` with
    lower-case keys. Mailpit's: ``messages_count``, ``unread``, ``messages_unread``, ``start``,
    ``tags``, and capitalised keys in each message. ``total`` means the same in both.
    """
    read = request.app[READ]
    return {
        "total": len(everything),
        "count": len(found),
        "unread": sum(1 for m in everything if m.id not in read),
        "messages_count": len(found),
        "messages_unread": sum(1 for m in found if m.id not in read),
        "start": start,
        "tags": [],
        "messages": [{**m.to_json(), **summary(request, m)} for m in shown],
    }


# --------------------------------------------------------------------------- one message


def _message(request: web.Request) -> CapturedMessage:
    store = store_of(request)
    wanted = request.match_info["id"]
    if wanted == "latest":
        messages = store.messages()
        if not messages:
            raise ApiError(404, "no messages yet")
        return messages[-1]
    message = store.message(wanted)
    if message is None:
        raise ApiError(404, f"no message {wanted!r} (deleted, or dropped past the limit)")
    return message


async def get_message(request: web.Request) -> web.Response:
    """The whole message; like Mailpit, reading it marks it read."""
    message = _message(request)
    request.app[READ].add(message.id)
    return web.json_response(full(request, message))


async def get_headers(request: web.Request) -> web.Response:
    """Name -> values, names in Go's form (``Message-Id``) and sorted, as Mailpit gives them."""
    headers: dict[str, list[str]] = {}
    for name, value in view(_message(request)).headers:
        headers.setdefault(canonical(name), []).append(value)
    return web.json_response({name: headers[name] for name in sorted(headers)})


async def get_raw(request: web.Request) -> web.Response:
    message = _message(request)
    return web.Response(body=message.raw, content_type="text/plain", charset="utf-8")


async def get_part(request: web.Request) -> web.Response:
    message = _message(request)
    part = view(message).part(request.match_info["part"])
    if part is None:
        raise ApiError(404, f"message {message.id} has no part {request.match_info['part']!r}")
    headers = {}
    if part.filename:
        headers["Content-Disposition"] = f'inline; filename="{part.filename}"'
    return web.Response(body=part.payload, content_type=part.content_type, headers=headers)


async def view_html(request: web.Request) -> web.Response:
    seen = view(_message(request))
    if not seen.html:
        raise ApiError(404, "this message has no HTML part")
    return web.Response(text=seen.html, content_type="text/html")


async def view_text(request: web.Request) -> web.Response:
    return web.Response(text=view(_message(request)).text, content_type="text/plain")


# --------------------------------------------------------------------------- search


def _page(request: web.Request) -> tuple[int, int]:
    values = []
    for name, default in (("start", 0), ("limit", DEFAULT_LIMIT)):
        text = request.query.get(name, "")
        try:
            value = int(text) if text else default
        except ValueError:
            raise ApiError(400, f"{name} must be a whole number, not {text!r}") from None
        values.append(max(value, 0))
    return values[0], values[1]


def _query(request: web.Request) -> str:
    query = request.query.get("query", "").strip()
    if not query:
        raise ApiError(400, "Error: no search query")
    return query


def matching(request: web.Request, query: str) -> list[CapturedMessage]:
    """Stored messages matching a Mailpit search, newest first."""
    match = matcher(query)
    read = request.app[READ]
    return [m for m in reversed(store_of(request).messages()) if match(view(m), m.id in read)]


async def search(request: web.Request) -> web.Response:
    query = _query(request)
    start, limit = _page(request)
    found = matching(request, query)
    everything = store_of(request).messages()
    shown = found[start : start + limit]
    # Newest first like the native list; `found` already is, so pass it through as is.
    body = listing(request, everything, found, shown, start)
    body["count"] = len(shown)  # here Mailpit's meaning: no native route shares this path
    return web.json_response(body)


async def delete_search(request: web.Request) -> web.Response:
    found = matching(request, _query(request))
    store_of(request).delete_messages([m.id for m in found])
    return web.Response(text="ok")


async def set_read(request: web.Request) -> web.Response:
    """``{"Read": true, "IDs": [...]}`` or ``{"Search": "..."}``; neither: every message."""
    body = await _json_body(request)
    ids = body.get("IDs") or []
    query = body.get("Search") or ""
    if ids and query:
        raise ApiError(400, "You may specify either IDs or a search query, not both")
    if query:
        ids = [m.id for m in matching(request, query)]
    elif not ids:
        ids = [m.id for m in store_of(request).messages()]
    read = request.app[READ]
    if body.get("Read"):
        read.update(ids)
    else:
        read.difference_update(ids)
    return web.Response(text="ok")


async def _json_body(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or {} when there is none."""
    text = (await request.read()).decode("utf-8", "replace").strip()
    if not text:
        return {}
    try:
        body = json.loads(text)
    except ValueError as error:
        raise ApiError(400, f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    ids = body.get("IDs")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise ApiError(400, "IDs must be a list of message ids")
    return body


async def requested_ids(request: web.Request) -> list[str]:
    """The ``{"IDs": [...]}`` of a Mailpit delete; empty when the body names none.

    Like Mailpit, a body that is not such JSON names none (so all go): a Python client that
    sends the ids form-encoded relies on that leniency.
    """
    try:
        return list((await _json_body(request)).get("IDs") or [])
    except ApiError:
        return []


# --------------------------------------------------------------------------- send


async def send(request: web.Request) -> web.Response:
    """Mailpit's send API: submitted over SMTP to this server, so the scenario answers it."""
    from .mailpit_send import SendError, build, submit

    fake = _fake(request)
    try:
        sender, recipients, raw = build(await _json_body(request))
        queued = await submit(fake.host, fake.port, sender, recipients, raw)
    except SendError as error:
        raise ApiError(400, error.message, stage=error.stage) from None
    except (ValueError, TypeError) as error:  # a malformed address, or header
        raise ApiError(400, f"cannot build the message: {error}") from None
    except OSError as error:
        raise ApiError(503, f"cannot reach the SMTP listener: {error}") from None
    return web.json_response({"ID": queued})


# --------------------------------------------------------------------------- the rest


async def info(request: web.Request) -> web.Response:
    store = store_of(request)
    messages = store.messages()
    read = request.app[READ]
    return web.json_response(
        {
            "Version": f"fakesmtp {__version__}",
            "LatestVersion": "",
            "Database": "",
            "DatabaseSize": 0,
            "Messages": len(messages),
            "Unread": sum(1 for m in messages if m.id not in read),
            "Tags": {},
            "RuntimeStats": {
                "Uptime": 0,
                "MessagesDeleted": 0,
                "SMTPAccepted": len(messages),
                "SMTPAcceptedSize": sum(m.size for m in messages),
                "SMTPRejected": 0,
                "SMTPIgnored": 0,
            },
        }
    )


async def webui(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "Label": "fakesmtp",
            "ChaosEnabled": True,
            "DuplicatesIgnored": False,
            "HideDeleteAllButton": False,
            "SpamAssassin": False,
            "MessageRelay": {"Enabled": False},
        }
    )


async def tags(request: web.Request) -> web.Response:
    return web.json_response([])  # fakesmtp does not tag messages


async def alive(request: web.Request) -> web.Response:
    """Mailpit's ``/livez`` and ``/readyz``: 200 once the server listens."""
    store_of(request)
    return web.Response(text="ok")


async def get_chaos(request: web.Request) -> web.Response:
    return web.json_response(chaos.current(_fake(request)))


async def put_chaos(request: web.Request) -> web.Response:
    body = await _json_body(request)
    try:
        triggers = chaos.parse(body)
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    try:
        return web.json_response(chaos.apply(_fake(request), triggers))
    except NotImplementedError as error:
        raise ApiError(501, str(error)) from None
