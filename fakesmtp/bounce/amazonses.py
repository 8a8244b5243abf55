"""Amazon SES notices in JSON (delivered by SNS or e-mail): "bouncedRecipients" with each
recipient's status and diagnosticCode; "Delivery" notices are successes."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from .findings import Finding, Hints
from .grammar import looks_local, parse_reply, squash

FAMILY = "Amazon SES"

_START = re.compile(r'\{\s*"(?:notificationType|eventType|Type|mail|bounce)"')
_MAX_STARTS = 20  # a notice is near the top: a hostile input cannot make this quadratic
_DECODER = json.JSONDecoder()


def _notices(text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for n, m in enumerate(_START.finditer(text)):
        if n >= _MAX_STARTS:
            break
        try:
            value, _ = _DECODER.raw_decode(text, m.start())
        except ValueError:
            # Mail transport folded the one-line notice: unfold it and try again.
            end = text.find("\n\n", m.start())
            chunk = text[m.start() : end if end >= 0 else len(text)].replace("\n", "")
            try:
                value, _ = _DECODER.raw_decode(chunk)
            except ValueError:
                continue
        if isinstance(value, dict):
            # SNS wraps the SES notice as a JSON string in "Message".
            inner = value.get("Message")
            if isinstance(inner, str) and inner.lstrip().startswith("{"):
                with contextlib.suppress(ValueError):
                    value = json.loads(inner)
            if isinstance(value, dict):
                found.append(value)
    return found


def read(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    for notice in _notices(text):
        kind = str(notice.get("notificationType") or notice.get("eventType") or "")
        if kind == "Delivery":
            delivered = notice.get("delivery", {}).get("recipients", [])
            hints.delivered += len(delivered) if isinstance(delivered, list) else 1
            continue
        bounce = notice.get("bounce")
        if not isinstance(bounce, dict):
            if kind:
                hints.no_reply.append(f"an Amazon SES {kind} notice, not a bounce")
            continue
        for rcpt in bounce.get("bouncedRecipients") or []:
            if not isinstance(rcpt, dict):
                continue
            address = str(rcpt.get("emailAddress", "")) or None
            diagnostic = str(rcpt.get("diagnosticCode", ""))
            status = rcpt.get("status")
            kind_, _, value = diagnostic.partition(";")
            raw = value if kind_.strip().lower() == "smtp" else diagnostic
            reply = parse_reply(raw)
            if reply is None or looks_local(raw):
                hints.no_reply.append(diagnostic or f"status {status} with no diagnosticCode")
                continue
            findings.append(
                reply.finding(
                    recipient=address,
                    fallback_status=status if isinstance(status, str) else None,
                    stage=None,
                    remote_mta=str(bounce.get("remoteMtaIp") or "") or None,
                    origin=f"Amazon SES {bounce.get('bounceType', '')} bounce notice (JSON)",
                    family=FAMILY,
                    evidence=squash(diagnostic),
                )
            )
    return findings
