"""``fakesmtp messages`` and ``fakesmtp sessions``: a running server's store, from the shell.

A thin client of the HTTP API (``--api URL``, default the local server's), so a CI step or a
person at a terminal can list, read, wait for and clear what a server captured without curl.
Standard library only: the CLI must not need aiohttp's client to read a few JSON documents.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .cli_env import EnvGroup
from .suggest import plural
from .transcript import render

DEFAULT_API = "http://127.0.0.1:8025"
F = TypeVar("F", bound=Callable[..., Any])


class ApiUnreachable(click.ClickException):
    """The server's API did not answer, or answered with an error: one line, exit status 1."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status when the server answered with an error

    def show(self, file: object = None) -> None:
        click.echo(f"fakesmtp: {self.format_message()}", err=True)


class Api:
    """The few calls the commands need, with errors worded for the person at the terminal."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        *,
        timeout: float = 10.0,
        raw: bool = False,
        body: bytes | None = None,
    ) -> Any:
        # Imported here: `fakesmtp serve` loads this module too, and starts sooner without it.
        import urllib.error
        import urllib.request

        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/yaml")  # YAML, and so JSON too
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            try:
                answer = json.loads(error.read() or b"{}")
                reason = answer.get("error") or error.reason
                # An invalid rule or scenario: each problem on its own line, as validate says
                reason = "\n".join([reason, *(p["text"] for p in answer.get("problems", ()))])
            except (ValueError, AttributeError, KeyError, TypeError):
                reason = error.reason
            if error.code == 401:
                reason = f"{reason} (give the server's token: --api-token or FAKESMTP_API_TOKEN)"
            raise ApiUnreachable(f"{method} {url}: {error.code} {reason}", error.code) from None
        except (urllib.error.URLError, OSError) as error:
            why = getattr(error, "reason", error)
            raise ApiUnreachable(
                f"no fakesmtp API at {self.base} ({why}); is `fakesmtp serve` running? "
                "(--api URL, or FAKESMTP_API)"
            ) from None
        if raw:
            return body
        return json.loads(body or b"null")


def api_options(function: F) -> F:
    """``--api URL``, ``--api-token T`` and ``--json`` on every subcommand."""
    function = click.option(
        "--json", "as_json", is_flag=True, help="JSON as the API gives it, for scripts."
    )(function)
    function = click.option(
        "--api-token",
        envvar="FAKESMTP_API_TOKEN",
        metavar="TOKEN",
        help="The server's API token, sent as a bearer token (default: $FAKESMTP_API_TOKEN).",
    )(function)
    function = click.option(
        "--api",
        envvar="FAKESMTP_API",
        default=DEFAULT_API,
        show_default=True,
        metavar="URL",
        help="The running server's API (default also from $FAKESMTP_API).",
    )(function)
    return function


def timeout_option(help: str) -> Callable[[F], F]:
    """``--timeout S``, the same on every command that waits: 30 seconds unless said."""
    return click.option(
        "--timeout",
        default=30.0,
        show_default=True,
        type=click.FloatRange(0),
        metavar="S",
        help=help,
    )


def count_option(what: str) -> Callable[[F], F]:
    """``--count N`` of a waiting command: how many ``what`` it waits for (one unless said)."""
    return click.option(
        "--count",
        default=1,
        show_default=True,
        type=click.IntRange(1),
        metavar="N",
        help=f"How many {what} to wait for.",
    )


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _clock(seconds: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds)) if seconds else "?"


def _message_line(message: dict[str, Any]) -> str:
    to = ", ".join(message.get("to") or ())
    return (
        f"{message['id']}  {_clock(message.get('received_at'))}  {message.get('from') or '<>'}"
        f" -> {to}  {message.get('subject') or '(no subject)'}  ({message.get('size', 0)} bytes)"
    )


# --------------------------------------------------------------------------- messages


@click.group(cls=EnvGroup)
def messages() -> None:
    """A running server's messages: list, show, raw, wait, clear.

    \b
    Examples:
      fakesmtp messages list --to '*@example.test'
      fakesmtp messages wait --count 2 --timeout 30
      fakesmtp messages raw ID > message.eml
      fakesmtp messages clear
    """


@messages.command("list")
@click.option("--to", metavar="PATTERN", help="Only messages to a matching recipient.")
@click.option("--from", "sender", metavar="PATTERN", help="Only messages from a matching sender.")
@click.option("--subject", metavar="PATTERN", help="Only messages with a matching subject.")
@click.option("--limit", type=click.IntRange(1), metavar="N", help="At most N, newest first.")
@api_options
def list_messages(
    to: str | None,
    sender: str | None,
    subject: str | None,
    limit: int | None,
    api: str,
    api_token: str | None,
    as_json: bool,
) -> None:
    """Messages, newest first: id, time, sender, recipients, subject."""
    query = {"to": to, "from": sender, "subject": subject, "limit": limit}
    data = Api(api, api_token).call("GET", "/api/v1/messages", query)
    if as_json:
        _echo_json(data)
        return
    for message in data["messages"]:
        click.echo(_message_line(message))
    click.echo(f"({plural(data['count'], 'message')} of {data['total']})", err=True)


@messages.command("show")
@click.argument("message_id", metavar="ID")
@api_options
def show_message(message_id: str, api: str, api_token: str | None, as_json: bool) -> None:
    """A message's envelope, headers and text."""
    data = Api(api, api_token).call("GET", f"/api/v1/messages/{urllib.parse.quote(message_id)}")
    if as_json:
        _echo_json(data)
        return
    click.echo(_message_line(data))
    for name, value in data.get("headers") or ():
        click.echo(f"{name}: {value}")
    click.echo()
    click.echo(data.get("text") or "(no text part)")


@messages.command("raw")
@click.argument("message_id", metavar="ID")
@api_options
def raw_message(message_id: str, api: str, api_token: str | None, as_json: bool) -> None:
    """A message's exact bytes (RFC 5322), to standard output."""
    path = f"/api/v1/messages/{urllib.parse.quote(message_id)}"
    client = Api(api, api_token)
    if as_json:
        _echo_json(client.call("GET", path))
        return
    sys.stdout.buffer.write(client.call("GET", path + "/raw", raw=True))
    sys.stdout.flush()


@messages.command("wait")
@count_option("messages")
@timeout_option("Seconds to wait before giving up.")
@click.option("--to", metavar="PATTERN", help="Count only messages to a matching recipient.")
@click.option("--subject", metavar="PATTERN", help="Count only messages with a matching subject.")
@api_options
def wait_messages(
    count: int,
    timeout: float,
    to: str | None,
    subject: str | None,
    api: str,
    api_token: str | None,
    as_json: bool,
) -> None:
    """Wait for N messages (exit 1 on timeout), then list them."""
    query = {"count": count, "timeout": timeout, "to": to, "subject": subject}
    data = Api(api, api_token).call("GET", "/api/v1/messages/wait", query, timeout=timeout + 10)
    if as_json:
        _echo_json(data)
        return
    for message in data["messages"]:
        click.echo(_message_line(message))


@messages.command("clear")
@api_options
def clear_messages(api: str, api_token: str | None, as_json: bool) -> None:
    """Forget every message (sessions are kept)."""
    data = Api(api, api_token).call("DELETE", "/api/v1/messages")
    if as_json:
        _echo_json(data)
        return
    click.echo(f"deleted {plural(data.get('deleted', 0), 'message')}")


# --------------------------------------------------------------------------- sessions


@click.group(cls=EnvGroup)
def sessions() -> None:
    """A running server's sessions: list, show, raw, wait, clear.

    \b
    Examples:
      fakesmtp sessions list
      fakesmtp sessions show ID          # the conversation, as a learner reads it
      fakesmtp sessions wait --count 1
    """


def _session_line(session: dict[str, Any]) -> str:
    worst = session.get("worst")
    ended = session.get("end") or ("connected" if session.get("active") else "closed")
    return (
        f"{session['id']}  {_clock(session.get('started_at'))}  {session.get('client')}"
        f"  {plural(session.get('exchange_count', 0), 'exchange')}"
        f"  {plural(len(session.get('message_ids') or ()), 'message')}"
        f"  {'worst ' + str(worst) if worst else 'no refusal'}  {ended}"
    )


@sessions.command("list")
@click.option("--limit", type=click.IntRange(1), metavar="N", help="At most N, newest first.")
@api_options
def list_sessions(limit: int | None, api: str, api_token: str | None, as_json: bool) -> None:
    """Sessions, newest first: client, worst reply, how it ended."""
    data = Api(api, api_token).call("GET", "/api/v1/sessions", {"limit": limit})
    if as_json:
        _echo_json(data)
        return
    for session in data["sessions"]:
        click.echo(_session_line(session))
    click.echo(f"({plural(data['total'], 'session')})", err=True)


@sessions.command("show")
@click.argument("session_id", metavar="ID")
@api_options
def show_session(session_id: str, api: str, api_token: str | None, as_json: bool) -> None:
    """The conversation as a learner reads it.

    C:/S: lines with offsets, the rule that fired, what each refusal means.
    """
    data = Api(api, api_token).call("GET", f"/api/v1/sessions/{urllib.parse.quote(session_id)}")
    if as_json:
        _echo_json(data)
        return
    click.echo(render(data))


@sessions.command("raw")
@click.argument("session_id", metavar="ID")
@api_options
def raw_session(session_id: str, api: str, api_token: str | None, as_json: bool) -> None:
    """Commands and replies exactly as sent (for diffing)."""
    data = Api(api, api_token).call("GET", f"/api/v1/sessions/{urllib.parse.quote(session_id)}")
    if as_json:
        _echo_json(data["transcript"])
        return
    for exchange in data["transcript"]:
        if exchange.get("command") is not None:
            click.echo(f"C: {exchange['command']}")
        for line in (exchange.get("reply") or "").replace("\r\n", "\n").splitlines():
            click.echo(f"S: {line}")


@sessions.command("wait")
@count_option("ended sessions")
@timeout_option("Seconds to wait before giving up.")
@api_options
def wait_sessions(
    count: int, timeout: float, api: str, api_token: str | None, as_json: bool
) -> None:
    """Wait for N ended sessions (exit 1 on timeout), then list them."""
    client = Api(api, api_token)
    deadline = time.monotonic() + timeout
    while True:  # the API has no long poll for sessions: ask twice a second
        data = client.call("GET", "/api/v1/sessions")
        ended = [s for s in data["sessions"] if not s.get("active")]
        if len(ended) >= count:
            break
        if time.monotonic() >= deadline:
            raise ApiUnreachable(
                f"timed out after {timeout:g}s waiting for {plural(count, 'ended session')}; "
                f"{len(ended)} so far"
            )
        time.sleep(0.5)
    if as_json:
        _echo_json({"count": len(ended), "sessions": ended})
        return
    for session in ended:
        click.echo(_session_line(session))


@sessions.command("clear")
@api_options
def clear_sessions(api: str, api_token: str | None, as_json: bool) -> None:
    """Forget every session's transcript (messages are kept)."""
    data = Api(api, api_token).call("DELETE", "/api/v1/sessions")
    if as_json:
        _echo_json(data)
        return
    click.echo(f"deleted {plural(data.get('deleted', 0), 'session')}")
