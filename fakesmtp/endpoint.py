"""What every route module shares with api.py: the app key, handler type, refusal and store.

api.py mounts the route modules (mailpit, mailhog, rules_api, record.http); they all need these
few names, so they live here, below all of them, instead of in api.py (which would make each
route module import the module that imports it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .scenario import Rule

if TYPE_CHECKING:
    from .server import FakeSMTP
    from .store import MemoryStore

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAKE: web.AppKey[FakeSMTP] = web.AppKey("fake")


class ApiError(Exception):
    """A request we refuse: becomes ``{"error": message, **details}`` with ``status``."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def store_of(request: web.Request) -> MemoryStore:
    """The running server's store, for a handler that reads or changes messages or sessions."""
    store = request.app[FAKE].store
    if store is None:  # cannot happen while the API runs; said plainly if it ever does
        raise ApiError(503, "the SMTP server is not running")
    return store


def rule_json(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.label,
        "on": rule.on.value,
        "source": str(rule.source),
        "line": rule.source.line,
        "match": list(rule.match.keys),
        "reply": rule.reply.text() if rule.reply is not None else None,
        "action": rule.action.value if rule.action is not None else None,
        "delay": rule.delay,
        "times": rule.times,
        "after": rule.after,
        "per": rule.per.value,
        "within": rule.within,
        "volume": rule.volume,
        "probability": rule.probability,
    }
