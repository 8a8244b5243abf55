"""``/api/v1/rules``: add, list and remove single rules at run time, without a new scenario.

A rule sent here is a scenario's ``rules:`` item (YAML or JSON), validated the same way, and
tried before the scenario's own rules, like ``FakeSMTP.on()``; ``times: 1`` makes "the next
message fails". Replacing the scenario (``PUT /api/v1/scenario``) drops them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .endpoint import FAKE, ApiError, Handler, rule_json
from .scenario import Rule, ScenarioError


def routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/api/v1/rules", list_rules),
        ("POST", "/api/v1/rules", add_rule),
        ("DELETE", "/api/v1/rules", delete_rules),
        ("GET", "/api/v1/rules/{id}", get_rule),
        ("DELETE", "/api/v1/rules/{id}", delete_rule),
    ]


def added_json(rule_id: str, rule: Rule) -> dict[str, Any]:
    return {"id": rule_id, **rule_json(rule)}


async def list_rules(request: web.Request) -> web.Response:
    """The added rules in the order they are tried (all before the scenario's)."""
    added = request.app[FAKE].added_rules()
    return web.json_response({"rules": [added_json(i, r) for i, r in added.items()]})


async def add_rule(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    try:
        text = (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the rule must be UTF-8 text (YAML or JSON)") from None
    if not text.strip():
        raise ApiError(400, 'send one rule as the body, e.g. {"on": "rcpt", "reply": 550}')
    try:
        rule_id = fake.add_rule(text)
    except NotImplementedError as error:
        raise ApiError(501, str(error)) from None
    except ScenarioError as error:
        problems = [
            {
                "line": p.line,
                "key": p.key,
                "message": p.message,
                "allowed": p.allowed,
                "text": str(p),
            }
            for p in error.problems
        ]
        raise ApiError(400, "invalid rule", problems=problems) from None
    return web.json_response(added_json(rule_id, fake.added_rules()[rule_id]), status=201)


async def get_rule(request: web.Request) -> web.Response:
    rule_id = request.match_info["id"]
    rule = request.app[FAKE].added_rules().get(rule_id)
    if rule is None:
        raise ApiError(404, f"no added rule {rule_id!r}")
    return web.json_response(added_json(rule_id, rule))


async def delete_rule(request: web.Request) -> web.Response:
    rule_id = request.match_info["id"]
    try:
        rule = request.app[FAKE].remove_rule(rule_id)
    except KeyError:
        raise ApiError(404, f"no added rule {rule_id!r}") from None
    except NotImplementedError as error:
        raise ApiError(501, str(error)) from None
    return web.json_response({"deleted": [added_json(rule_id, rule)]})


async def delete_rules(request: web.Request) -> web.Response:
    """Every added rule; the scenario's own stay."""
    fake = request.app[FAKE]
    deleted = []
    for rule_id in fake.added_rules():
        deleted.append(added_json(rule_id, fake.remove_rule(rule_id)))
    return web.json_response({"deleted": deleted})
