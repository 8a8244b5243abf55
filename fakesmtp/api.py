"""The HTTP inspection API and the transcript page, served on the SMTP server's own event loop.

Every handler runs on the loop that runs the SMTP sessions, so reading the store, swapping the
scenario and resetting counters happen between two SMTP commands and need no locks. Errors are
JSON (``{"error": ...}``) with a 4xx status; an unexpected one is a JSON 500 without a
traceback, logged once on the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import access, mailhog, mailpit, rules_api
from .endpoint import FAKE, ApiError, Handler, rule_json, store_of
from .metrics import serve_metrics
from .record import http as record_http
from .scenario import (
    Scenario,
    ScenarioError,
    builtin_scenarios,
    collector_paused,
    load_scenario_text,
)
from .store import CapturedMessage, Exchange, SessionRecord
from .version import __version__

if TYPE_CHECKING:
    from .server import FakeSMTP

log = logging.getLogger("fakesmtp.api")

STATIC = Path(__file__).parent / "static"
MAX_WAIT = 300.0  # seconds a long poll may ask for; past it a proxy or client gives up anyway
DEFAULT_WAIT = 10.0
SHUTDOWN_TIMEOUT = 1.0  # seconds in-flight requests get when the server stops

STOPPING: web.AppKey[asyncio.Event] = web.AppKey("stopping", asyncio.Event)


# --------------------------------------------------------------------------- the routes


def routes() -> list[tuple[str, str, Handler]]:
    """(method, path, handler): the whole API at a glance. ``openapi.yaml`` documents it."""
    return [
        ("GET", "/", page),
        ("GET", "/api/v1/health", health),
        ("GET", "/api/v1/messages", list_messages),
        ("DELETE", "/api/v1/messages", delete_messages),
        ("GET", "/api/v1/messages/wait", wait_messages),  # before {id}, which would take "wait"
        ("GET", "/api/v1/messages/{id}", get_message),
        ("GET", "/api/v1/messages/{id}/raw", get_raw),
        ("GET", "/api/v1/sessions", list_sessions),
        ("DELETE", "/api/v1/sessions", delete_sessions),
        ("GET", "/api/v1/sessions/{id}", get_session),
        ("GET", "/api/v1/scenario", get_scenario),
        ("PUT", "/api/v1/scenario", put_scenario),
        ("POST", "/api/v1/reset", reset),
        ("GET", "/api/v1/catalog/{code}", explain_code),
        ("GET", "/metrics", metrics),  # Prometheus
        # Rules added at run time, and Mailpit's and MailHog's APIs: their own modules.
        *rules_api.routes(),
        *mailpit.routes(),
        *mailhog.routes(),
        *record_http.routes(),  # /api/v1/record: fakesmtp record from the API and the page
    ]


async def start_api(fake: FakeSMTP, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the API for ``fake`` on ``host:port`` (0 = a free port); returns (runner, port)."""
    # Access first: a request from a page that is not ours never reaches a handler.
    app = web.Application(middlewares=[access.guard(fake.api_access), json_errors])
    app[FAKE] = fake
    app[STOPPING] = asyncio.Event()
    mailpit.setup(app)
    record_http.setup(app)
    for method, path, handler in routes():
        app.router.add_route(method, path, handler)
    app.router.add_static("/static/", STATIC)

    async def on_shutdown(app: web.Application) -> None:
        app[STOPPING].set()  # long polls answer now instead of holding the shutdown up

    app.on_shutdown.append(on_shutdown)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


# --------------------------------------------------------------------------- middlewares


def _error(status: int, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": message, **details}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON: ours with details, aiohttp's (404, 405, 413) with its reason."""
    try:
        return await handler(request)
    except ApiError as error:
        return _error(error.status, error.message, **error.details)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _error(error.status, error.reason)
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:  # our bug: the client gets no traceback, the log gets one
        log.exception("internal error in %s %s", request.method, request.path)
        return _error(500, "internal error in fakesmtp; see the server log")


# --------------------------------------------------------------------------- query helpers


def _int(request: web.Request, name: str, default: int | None, minimum: int = 0) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, not {text!r}") from None
    if value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}")
    return value


def _float(request: web.Request, name: str, default: float, maximum: float) -> float:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise ApiError(400, f"{name} must be a number of seconds, not {text!r}") from None
    if not 0 <= value <= maximum:
        raise ApiError(400, f"{name} must be between 0 and {maximum:g} seconds")
    return value


def _flag(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false").lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, f"{name} must be true or false, not {text!r}")


def _text_matcher(pattern: str) -> Callable[[str | None], bool]:
    """A glob when the value has * ? or [, else a case-insensitive substring."""
    if any(c in pattern for c in "*?["):
        compiled = re.compile(fnmatch.translate(pattern), re.IGNORECASE)
        return lambda value: value is not None and compiled.match(value) is not None
    needle = pattern.lower()
    return lambda value: value is not None and needle in value.lower()


def message_filter(request: web.Request) -> Callable[[CapturedMessage], bool] | None:
    """The ``to``, ``from``, ``subject`` and ``session`` query filters, all of which must hold."""
    tests: list[Callable[[CapturedMessage], bool]] = []
    if "to" in request.query:
        to = _text_matcher(request.query["to"])
        tests.append(lambda m: any(to(address) for address in m.rcpt_tos))
    if "from" in request.query:
        sender = _text_matcher(request.query["from"])
        tests.append(lambda m: sender(m.mail_from))
    if "subject" in request.query:
        subject = _text_matcher(request.query["subject"])
        tests.append(lambda m: subject(m.subject))
    if "session" in request.query:
        session_id = request.query["session"]
        tests.append(lambda m: m.session_id == session_id)
    if not tests:
        return None
    return lambda message: all(test(message) for test in tests)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text (metrics.py counts; the route lives here so metrics never imports us)."""
    return await serve_metrics(request, _fake(request).metrics)


def _fake(request: web.Request) -> FakeSMTP:
    return request.app[FAKE]


# --------------------------------------------------------------------------- health, page


async def health(request: web.Request) -> web.Response:
    fake = _fake(request)
    store = store_of(request)
    runtime = fake.runtime
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "smtp": {"host": fake.host, "port": fake.port, "tls_port": fake.tls_port},
            "scenario": fake.scenario.name,
            "messages": store.count(),
            "sessions": len(store.sessions()),
            "active_sessions": len(runtime.active) if runtime is not None else 0,
            "errors": len(fake.errors),
            # What is kept against the limits, and how much was dropped to stay within them.
            "store": store.usage(),
        }
    )


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- messages


def _newest_first(items: Iterable[Any], limit: int | None) -> list[Any]:
    ordered = list(items)[::-1]
    return ordered if limit is None else ordered[:limit]


async def list_messages(request: web.Request) -> web.Response:
    """Newest first, ``start`` and ``limit`` paging; ours and Mailpit's fields in one answer."""
    store = store_of(request)
    limit = _int(request, "limit", None)
    start = _int(request, "start", 0) or 0
    match = message_filter(request)
    everything = store.messages()
    found = [m for m in everything if match is None or match(m)][::-1]
    shown = found[start:] if limit is None else found[start : start + limit]
    return web.json_response(mailpit.listing(request, everything, found, shown, start))


async def wait_messages(request: web.Request) -> web.Response:
    """Long poll: answer once ``count`` messages (matching the filters) are stored."""
    store = store_of(request)
    count = _int(request, "count", 1, minimum=1)
    assert count is not None
    timeout = _float(request, "timeout", DEFAULT_WAIT, MAX_WAIT)
    match = message_filter(request)
    stopping = request.app[STOPPING]
    waiter = asyncio.ensure_future(store.wait_for_async(count, timeout, match))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
    if waiter.cancelled():
        raise ApiError(503, "the server is stopping")
    try:
        found = waiter.result()
    except TimeoutError:
        have = len([m for m in store.messages() if match is None or match(m)])
        raise ApiError(
            408,
            f"timed out after {timeout:g}s waiting for {count} message(s); {have} arrived",
            count=have,
        ) from None
    return web.json_response({"count": len(found), "messages": [m.to_json() for m in found[::-1]]})


def _message(request: web.Request) -> CapturedMessage:
    message_id = request.match_info["id"]
    message = store_of(request).message(message_id)
    if message is None:
        raise ApiError(404, f"no message {message_id!r} (deleted, or dropped past the limit)")
    return message


async def get_message(request: web.Request) -> web.Response:
    message = _message(request)
    return web.json_response({**message.to_json(), **message_content(message)})


async def get_raw(request: web.Request) -> web.Response:
    message = _message(request)
    return web.Response(
        body=message.raw,
        content_type="message/rfc822",
        headers={"Content-Disposition": f'inline; filename="{message.id}.eml"'},
    )


async def delete_messages(request: web.Request) -> web.Response:
    """All messages, or those a Mailpit client names: ``{"IDs": [...]}``.

    JSON for every client: Mailpit's reads the body as text, MailHog's parses it.
    """
    store = store_of(request)
    ids = await mailpit.requested_ids(request)
    if ids:
        return web.json_response({"deleted": len(store.delete_messages(ids))})
    deleted = store.count()
    store.clear(messages=True, sessions=False)
    return web.json_response({"deleted": deleted})


MAX_TEXT = 256 * 1024  # characters of body text shown; the raw endpoint has the rest


def _readable(content: Any) -> str:
    """Body text for people: the wire's CRLF as newlines, bounded."""
    return str(content).replace("\r\n", "\n")[:MAX_TEXT]


def message_content(message: CapturedMessage) -> dict[str, Any]:
    """Headers, text and HTML bodies and attachments, for people reading the message."""
    try:
        parsed = message.message
        headers = [[name, str(value)] for name, value in parsed.items()]
        text = html = None
        attachments = []
        for part in parsed.walk():
            if part.is_multipart():
                continue
            if part.is_attachment():
                payload = part.get_payload(decode=True) or b""
                attachments.append(
                    {
                        "filename": part.get_filename(),
                        "content_type": part.get_content_type(),
                        "size": len(payload),
                    }
                )
            elif part.get_content_type() == "text/plain" and text is None:
                text = _readable(part.get_content())
            elif part.get_content_type() == "text/html" and html is None:
                html = _readable(part.get_content())
    except Exception as error:  # a message too broken for the parser is still stored
        return {"parse_error": f"{type(error).__name__}: {error}"}
    return {"headers": headers, "text": text, "html": html, "attachments": attachments}


# --------------------------------------------------------------------------- sessions


_KINDS = {"2": "success", "3": "intermediate", "4": "transient", "5": "permanent"}


@functools.lru_cache(maxsize=512)
def explain_reply(code: int, status: str | None, text: str = "") -> dict[str, Any]:
    """``summary``, ``meaning``, ``advice`` read from what the reply says (catalog.read_reply).

    ``explained_by`` names what the explanation rests on (vendor, status, text, code), and
    ``status_meaning`` keeps the registry's words for the status, for the curious.
    """
    from . import catalog  # loaded on the first reply that needs explaining

    try:
        reading = catalog.read_reply(code, status, text)
    except Exception:  # the catalog is another module's job; its failure must not break ours
        log.exception("reply catalog lookup failed for %s %s", code, status)
        return {}
    found: dict[str, Any] = {"explained_by": reading.basis}
    for key in ("summary", "meaning", "advice", "source", "vendor", "status_meaning"):
        value = getattr(reading, key)
        if value:
            found[key] = value
    return found


def exchange_json(exchange: Exchange) -> dict[str, Any]:
    """An exchange with its reply code, class and, when it is not a success, what it means."""
    data = exchange.to_json()  # code and status were recorded when the reply was made
    code, status = exchange.code, exchange.status
    if code is None:
        return data
    data["kind"] = _KINDS.get(str(code)[0])
    if code >= 400:
        text = " ".join((exchange.reply or "")[4:].split())
        data.update(explain_reply(code, status, text))
    return data


def _worst(record: SessionRecord) -> int | None:
    """The most serious failure code the server sent in this session, for lists to colour."""
    worst = None
    for exchange in list(record.exchanges):
        code = exchange.code
        if code is not None and code >= 400 and (worst is None or code // 100 > worst // 100):
            worst = code
    return worst


def session_summary(record: SessionRecord) -> dict[str, Any]:
    data = record.to_json(transcript=False)
    data["active"] = record.ended_at is None and record.end is None
    data["worst"] = _worst(record)
    return data


async def list_sessions(request: web.Request) -> web.Response:
    store = store_of(request)
    limit = _int(request, "limit", None)
    everything = store.sessions()
    return web.json_response(
        {
            "total": len(everything),
            "sessions": [session_summary(s) for s in _newest_first(everything, limit)],
        }
    )


async def delete_sessions(request: web.Request) -> web.Response:
    """Forget every session's transcript; messages stay (``DELETE /api/v1/messages`` for those)."""
    store = store_of(request)
    deleted = len(store.sessions())
    store.clear(messages=False, sessions=True)
    return web.json_response({"deleted": deleted})


async def get_session(request: web.Request) -> web.Response:
    store = store_of(request)
    session_id = request.match_info["id"]
    record = store.session(session_id)
    if record is None:
        raise ApiError(404, f"no session {session_id!r} (deleted, or dropped past the limit)")
    data = session_summary(record)
    data["transcript"] = [exchange_json(e) for e in list(record.exchanges)]
    messages = []
    for message_id in list(record.message_ids):
        message = store.message(message_id)
        messages.append(message.to_json() if message else {"id": message_id, "deleted": True})
    data["messages"] = messages
    return web.json_response(data)


async def explain_code(request: web.Request) -> web.Response:
    """``/api/v1/catalog/550`` or ``/api/v1/catalog/5.1.1``: what the catalog says."""
    text = request.match_info["code"]
    from . import catalog

    if re.fullmatch(r"\d{3}", text):
        entry = catalog.code(int(text))
        if entry is None:
            raise ApiError(404, f"{text} is not in the reply catalog")
        return web.json_response(
            {
                "code": entry.code,
                "kind": entry.kind,
                "summary": getattr(entry, "summary", ""),
                "meaning": entry.meaning,
                "advice": entry.advice,
                "status": entry.status,
                "stages": list(getattr(entry, "stages", ())),
            }
        )
    if re.fullmatch(r"\d\.\d{1,3}\.\d{1,3}", text):
        status = catalog.status(text)
        if status is None:
            raise ApiError(404, f"{text} is not an enhanced status code RFC 3463 defines")
        return web.json_response(
            {
                "status": status.status,
                "kind": status.kind,
                "subject": status.subject,
                "meaning": status.meaning,
                "advice": status.advice,
            }
        )
    raise ApiError(400, f"{text!r} is neither a reply code (550) nor an enhanced status (5.1.1)")


# --------------------------------------------------------------------------- scenario


def scenario_json(scenario: Scenario) -> dict[str, Any]:
    return {
        "name": scenario.name,
        "description": scenario.description,
        "source": scenario.source,
        "seed": scenario.seed,
        "address_replies": scenario.server.address_replies,
        "rules": [rule_json(rule) for rule in scenario.rules],
        "text": scenario.public_text(),  # AUTH passwords blanked: secrets never leave
    }


async def get_scenario(request: web.Request) -> web.Response:
    """JSON by default; ``?format=yaml`` gives the YAML text it was loaded from."""
    scenario = _fake(request).scenario
    wanted = request.query.get("format", "json")
    if wanted == "yaml":
        if not scenario.text:
            raise ApiError(404, "this scenario was built in code: it has no YAML text")
        return web.Response(text=scenario.public_text(), content_type="application/yaml")
    if wanted != "json":
        raise ApiError(400, f"format must be json or yaml, not {wanted!r}")
    return await _scenario_response(scenario)


async def _scenario_response(scenario: Scenario) -> web.Response:
    # A scenario of 100,000 rules takes a second to render: off the loop, so SMTP sessions
    # keep being answered meanwhile.
    # iterencode, not dumps: dumps is one C call holding the GIL the loop needs meanwhile.
    def render() -> bytes:
        with collector_paused():
            return "".join(json.JSONEncoder().iterencode(scenario_json(scenario))).encode()

    body = await asyncio.get_running_loop().run_in_executor(None, render)
    return web.Response(body=body, content_type="application/json")


def _problems(error: ScenarioError) -> list[dict[str, Any]]:
    return [
        {
            "path": p.path,
            "line": p.line,
            "key": p.key,
            "message": p.message,
            "allowed": p.allowed,
            "hint": p.hint,  # what to write instead, for YAML that does not parse
            "column": p.column,
            "text": str(p),
        }
        for p in error.problems
    ]


async def put_scenario(request: web.Request) -> web.Response:
    """Swap the scenario: a YAML or JSON body, or ``?builtin=NAME``. New commands see it at once."""
    fake = _fake(request)
    name = request.query.get("builtin")
    try:
        if name is not None:
            # Only the built-in names: a path here would let any client read server files.
            path = builtin_scenarios().get(name)
            if path is None:
                raise ApiError(
                    400,
                    f"no built-in scenario {name!r}",
                    allowed=sorted(builtin_scenarios()),
                )
            scenario = load_scenario_text(path.read_text(encoding="utf-8"), str(path))
        else:
            body = await request.read()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "the scenario must be UTF-8 text (YAML or JSON)") from None
            if not text.strip():
                raise ApiError(
                    400, "send the scenario (YAML or JSON) as the body, or ?builtin=NAME"
                )
            policy = fake.api_access
            # Parsed in a worker thread: a big scenario must not stall every SMTP session.
            scenario = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: load_scenario_text(
                    text, "<request>", file_check=lambda name: access.file_allowed(policy, name)
                ),
            )
    except ScenarioError as error:
        raise ApiError(400, "invalid scenario", problems=_problems(error)) from None
    if fake.runtime is None:
        raise ApiError(503, "the SMTP server is not running")
    try:
        # The rule table (and any certificate) is built in a worker thread too: 20,000 rules
        # held the loop ~100 ms. On the loop the swap is then one assignment, atomic; --banner /
        # --ehlo stay first, and the rules added at run time go with the old scenario, as
        # FakeSMTP.use() does for Python.
        prepared = await asyncio.get_running_loop().run_in_executor(None, fake.prepare, scenario)
        with collector_paused():  # when prepare's profile was overtaken, use() builds one
            scenario = fake.use(prepared)
    except (OSError, ssl.SSLError, ValueError) as error:
        raise ApiError(400, f"cannot use this scenario: {error}") from None
    return await _scenario_response(scenario)


async def reset(request: web.Request) -> web.Response:
    """Counters (times/after, the seeded generator) and errors; ``?store=true`` also forgets
    messages and sessions; ``?scenario=true`` goes back to the scenario the server started with.
    """
    fake = _fake(request)
    forget = _flag(request, "store")
    restore = _flag(request, "scenario")
    done = ["counters", "errors"]
    if restore:
        fake.use(fake.initial_scenario)
        done.append("scenario")
    fake.reset(messages=forget, sessions=forget)
    if forget:
        done.append("store")
    return web.json_response({"reset": done, "at": time.time()})
