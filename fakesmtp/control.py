"""``fakesmtp wait-ready`` and ``fakesmtp rules``: wait for a running server, change its rules.

Clients of the HTTP API through ``remote.Api`` (``--api URL``, ``--api-token``), like
``fakesmtp messages``. A token left unsaid falls back to ``FAKESMTP_SERVE_API_TOKEN``: a CI job
or a container sets it once, for the server and the commands (the Docker health check too).
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .cli_env import EnvGroup
from .remote import Api, ApiUnreachable, api_options, timeout_option
from .suggest import plural


def api_of(api: str, token: str | None) -> Api:
    return Api(api, token or os.environ.get("FAKESMTP_SERVE_API_TOKEN") or None)


@click.command("wait-ready")
@timeout_option("Seconds to wait before giving up (exit status 1).")
@api_options
def wait_ready(timeout: float, api: str, api_token: str | None, as_json: bool) -> None:
    """Wait until a server's API answers (exit 1 on timeout).

    \b
    Examples:
      fakesmtp serve & fakesmtp wait-ready
      fakesmtp wait-ready --api http://smtp:8025 --timeout 60    # a CI service container
    """
    client = api_of(api, api_token)
    deadline = time.monotonic() + timeout
    while True:
        try:
            health = client.call("GET", "/api/v1/health", timeout=2.0)
            break
        except ApiUnreachable as error:
            if error.status in (401, 403):  # waiting will not change this answer
                raise
            if time.monotonic() >= deadline:
                raise ApiUnreachable(f"not ready after {timeout:g}s: {error.message}") from None
        time.sleep(0.1)
    if as_json:
        click.echo(json.dumps(health, indent=2))
        return
    smtp = health.get("smtp") or {}
    click.echo(
        f"fakesmtp ready: SMTP on {smtp.get('host')}:{smtp.get('port')}, "
        f"scenario {health.get('scenario')}"
    )


@click.group(cls=EnvGroup)
def rules() -> None:
    """Add, list, remove rules on a running server.

    Its scenario stays; the added rules are tried before the scenario's own.

    \b
    Examples:
      fakesmtp rules add 'on: end_of_data
      times: 1
      reply: 451 4.3.0 Try again later'                # the next message fails
      fakesmtp rules add '{"on": "rcpt", "match": {"to": "*@full.test"}, "reply": 452}'
      fakesmtp rules add my-rule.yaml
      fakesmtp rules list
      fakesmtp rules delete 3
      fakesmtp rules delete --all
    """


@rules.command("add")
@click.argument("rule")
@api_options
def rules_add(rule: str, api: str, api_token: str | None, as_json: bool) -> None:
    """Add a rule (YAML/JSON text, a file, or -); prints its id."""
    if rule == "-":
        text = sys.stdin.read()
    elif ":" in rule or "{" in rule:
        text = rule
    else:
        try:
            with open(rule, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise click.BadParameter(f"cannot read {rule}: {error.strerror or error}") from None
    added = api_of(api, api_token).call("POST", "/api/v1/rules", body=text.encode("utf-8"))
    click.echo(json.dumps(added, indent=2) if as_json else added["id"])


@rules.command("list")
@api_options
def rules_list(api: str, api_token: str | None, as_json: bool) -> None:
    """The added rules, in the order they are tried."""
    found = api_of(api, api_token).call("GET", "/api/v1/rules")["rules"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for rule in found:
        does = rule["reply"] or rule["action"] or f"delay {rule['delay']:g}s"
        limits = f" times {rule['times']}" if rule["times"] is not None else ""
        click.echo(f"{rule['id']:>4}  {rule['on']:<12} {does}{limits}  ({rule['name']})")


@rules.command("delete")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every added rule.")
@api_options
def rules_delete(
    ids: tuple[str, ...], everything: bool, api: str, api_token: str | None, as_json: bool
) -> None:
    """Remove added rules by id, or --all."""
    if everything == bool(ids):
        raise click.UsageError("give rule ids, or --all")
    client = api_of(api, api_token)
    if everything:
        deleted = client.call("DELETE", "/api/v1/rules")["deleted"]
    else:
        deleted = []
        for rule_id in ids:
            deleted += client.call("DELETE", f"/api/v1/rules/{rule_id}")["deleted"]
    if as_json:
        click.echo(json.dumps(deleted, indent=2))
        return
    click.echo(f"deleted {plural(len(deleted), 'rule')}")
