"""``/api/v1/record``: start a recording from the API or the page, watch it grow, stop it.

The recorder listens on the SMTP host of this server (a port of its own, 0 = a free one) and runs
on the API's loop. One recording at a time; the last one stays readable after it stops, so the
page can offer to serve it (``PUT /api/v1/scenario`` with its YAML).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..endpoint import FAKE, ApiError, Handler
from ..patterns import PatternError, parse_duration
from .relay import Recorder

RECORDER: web.AppKey[list[Recorder]] = web.AppKey("recorder", list)
_OPTIONS = ("upstream", "port", "starttls", "keep_bodies", "delay_threshold")


def routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/api/v1/record", get_recording),
        ("POST", "/api/v1/record", start_recording),
        ("DELETE", "/api/v1/record", stop_recording),
    ]


def setup(app: web.Application) -> None:
    """Keep the recorder with the app, and stop it (writing nothing) when the API stops."""
    app[RECORDER] = []

    async def stop(app: web.Application) -> None:
        for recorder in app[RECORDER]:
            if recorder.running:
                await recorder.stop()

    app.on_shutdown.append(stop)


def recording_json(recorder: Recorder | None) -> dict[str, Any]:
    if recorder is None:
        return {"recording": False, "upstream": None, "listening": None, "sessions": 0, "yaml": ""}
    sessions = recorder.recording.sessions()
    return {
        "recording": recorder.running,
        "upstream": recorder.upstream,
        "listening": {"host": recorder.host, "port": recorder.port} if recorder.running else None,
        "started_at": recorder.recording.started_at,
        "sessions": len(sessions),
        "steps": sum(len(s.steps) for s in sessions),
        "yaml": recorder.yaml(),
    }


def _current(request: web.Request) -> Recorder | None:
    recorders = request.app[RECORDER]
    return recorders[-1] if recorders else None


async def get_recording(request: web.Request) -> web.StreamResponse:
    """The recording under way (or the last one): status and the scenario so far.
    ``?format=yaml`` gives the scenario alone."""
    data = recording_json(_current(request))
    if request.query.get("format") == "yaml":
        return web.Response(text=data["yaml"], content_type="application/yaml")
    return web.json_response(data)


async def start_recording(request: web.Request) -> web.Response:
    """Body ``{"upstream": "HOST[:PORT]", "port": 0, "starttls": false, "keep_bodies": false,
    "delay_threshold": "1s"}``: listen and relay every session to that upstream, recording."""
    current = _current(request)
    if current is not None and current.running:
        raise ApiError(409, f"already recording {current.upstream}: stop it first (DELETE)")
    try:
        body = json.loads((await request.read()).decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, 'send JSON like {"upstream": "mx.example.test:25"}') from None
    if not isinstance(body, dict) or not isinstance(body.get("upstream"), str):
        raise ApiError(400, 'the body needs "upstream": "HOST[:PORT]"')
    unknown = sorted(set(body) - set(_OPTIONS))
    if unknown:
        raise ApiError(400, f"unknown option {unknown[0]!r}", allowed=list(_OPTIONS))
    port = body.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        raise ApiError(400, "port must be a number from 0 (a free one) to 65535")
    try:
        threshold = parse_duration(body.get("delay_threshold", "1s"))
    except PatternError as error:
        raise ApiError(400, f"delay_threshold: {error}") from None
    fake = request.app[FAKE]
    try:
        recorder = Recorder(
            body["upstream"],
            host=fake.host,
            port=port,
            require_tls=bool(body.get("starttls", False)),
            keep_bodies=bool(body.get("keep_bodies", False)),
            delay_threshold=threshold,
        )
    except ValueError as error:
        raise ApiError(400, f"upstream: {error}") from None
    try:
        await recorder.start()
    except OSError as error:
        raise ApiError(400, f"cannot listen on port {port}: {error.strerror or error}") from None
    request.app[RECORDER][:] = [recorder]
    return web.json_response(recording_json(recorder), status=201)


async def stop_recording(request: web.Request) -> web.Response:
    """Stop listening; the sessions under way end. The recording stays readable (GET)."""
    recorder = _current(request)
    if recorder is None or not recorder.running:
        raise ApiError(404, "nothing is being recorded")
    await recorder.stop()
    return web.json_response(recording_json(recorder))
