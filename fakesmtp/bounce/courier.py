"""Courier MTA: "<rcpt>:" then "HOST [IP]:" and the session as ">>> RCPT TO:<x>" / "<<< 550 ..."
lines (also read, with the same pairing, in other appliances' transcripts)."""

from __future__ import annotations

import re

from . import transcript
from .findings import Finding, Hints

FAMILY = "Courier"

_MARKER = re.compile(r"running the Courier mail server|Courier mail server", re.IGNORECASE)


def read(text: str, hints: Hints) -> list[Finding]:
    if not transcript.has_transcript(text):
        return []
    family = FAMILY if _MARKER.search(text) else "transcript"
    return transcript.read_findings(text, family)
