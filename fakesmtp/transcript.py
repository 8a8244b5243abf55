"""A session as a learner reads it: who said what, when, which rule answered, what a refusal means.

One renderer for every place a person reads a conversation in text: ``str(session)``,
``FakeSMTP.transcript()``, a failing test's report section and ``fakesmtp sessions show``. It
works on a session's JSON form (``SessionRecord.to_json()``, or the API's answer), so the CLI
renders a remote server's sessions exactly as the plugin renders local ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from .reply import parse_reply_line

_INDENT = " " * 13  # under "  +0.123s  " and the "S: " of the line above


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    moment = time.localtime(seconds)
    return time.strftime("%H:%M:%S", moment) + f".{int(seconds * 1000) % 1000:03d}"


def _explanation(exchange: Mapping[str, Any], reply: str) -> str:
    """``Mailbox full: Retry later...`` for a 4xx/5xx reply, read from what it says."""
    code, status = exchange.get("code"), exchange.get("status")
    if "code" not in exchange:  # a transcript from before code/status were recorded
        first = parse_reply_line(reply)
        code, status = (first.code, first.status) if first else (None, None)
    if not isinstance(code, int) or not 400 <= code < 600:
        return ""
    try:
        from . import catalog

        reading = catalog.read_reply(code, status, " ".join(reply[4:].split()))
    except Exception:  # an explanation is a courtesy: never let it hide the transcript
        return ""
    return reading.summary


def render(session: Mapping[str, Any], *, explain: bool = True) -> str:
    """The session ``session`` (its JSON form) as plain text, one block per exchange."""
    started = session.get("started_at") or 0.0
    facts = [f"from {session.get('client')}:{session.get('client_port')}"]
    facts.append(
        "implicit TLS"
        if session.get("listener") == "smtps"
        else ("STARTTLS" if session.get("tls") else "plain text")
    )
    if session.get("user"):
        facts.append(f"user {session['user']}")
    facts.append(f"started {_clock(started)}")
    lines = [f"session {session.get('id')} {', '.join(facts)}"]
    for exchange in session.get("transcript") or ():
        offset = f"+{max(0.0, (exchange.get('at') or started) - started):.3f}s"
        command = exchange.get("command")
        if command is None and exchange.get("stage") == "connect":
            command = "(connects)"
        prefix = f"  {offset:>9}  "
        if command is not None:
            lines.append(f"{prefix}C: {command}")
            prefix = _INDENT
        reply = exchange.get("reply")
        if reply is None:
            note = exchange.get("note")
            lines.append(f"{prefix}S: (no reply{': ' + note if note else ''})")
        else:
            reply_lines = reply.replace("\r\n", "\n").rstrip("\n").split("\n")
            lines.append(f"{prefix}S: {reply_lines[0]}")
            lines.extend(f"{_INDENT}   {line}" for line in reply_lines[1:])
            if exchange.get("note"):
                lines.append(f"{_INDENT}   ({exchange['note']})")
        if exchange.get("rule"):
            lines.append(f"{_INDENT}   [rule: {exchange['rule']}]")
        meaning = _explanation(exchange, reply) if explain and reply else ""
        if meaning:
            lines.append(f"{_INDENT}   = {meaning}")
    if session.get("exchanges_dropped"):
        lines.append(f"  ... and {session['exchanges_dropped']} more exchange(s) not kept")
    if session.get("end") or session.get("ended_at"):
        lines.append(
            f"  ended: {session.get('end') or 'closed'} at {_clock(session.get('ended_at'))}"
        )
    else:
        lines.append("  (still connected)")
    return "\n".join(lines)


def render_all(sessions: Iterable[Mapping[str, Any]], *, explain: bool = True) -> str:
    """Several sessions, oldest first, a blank line between them."""
    blocks = [render(session, explain=explain) for session in sessions]
    return "\n\n".join(blocks) if blocks else "(no sessions)"
