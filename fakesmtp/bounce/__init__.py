"""Turn a bounce (a DSN, an MTA's bounce text or log lines, or a pasted reply) into a scenario.

`parse_bounce` finds what the remote server answered, to whom and at which stage;
`scenario_yaml` writes a scenario that gives the very same reply. One module per MTA family
reads that family's layout (its markers learnt from the bounces those MTAs send); `dsn` reads
RFC 3464 fields, `mime` the message around them, `generic` is the last resort. Pure text in,
text out; `inputs` alone reads files and directories.
"""

from __future__ import annotations

from collections.abc import Callable

from . import (
    amazonses,
    courier,
    domino,
    dragonfly,
    dsn,
    exchange,
    exim,
    generic,
    gmail,
    groupwise,
    imail,
    mdaemon,
    mfilter,
    opensmtpd,
    postfix,
    qmail,
    sendmail,
    yahoo,
    zoho,
)
from .findings import BounceError, Finding, Hints
from .inputs import MAX_INPUT, Collected, Source, named
from .mime import cut_returned_copy, looks_like_mail, messages, normalise, read_parts
from .writer import LOOKED_FOR, findings_json, scenario_yaml

__all__ = [
    "BounceError",
    "Finding",
    "bounce_to_yaml",
    "findings_json",
    "parse_bounce",
    "parse_sources",
    "scenario_yaml",
]

Reader = Callable[[str, Hints], list[Finding]]
LOG_READERS: tuple[Reader, ...] = (postfix.read_log, exim.read_log, sendmail.read_log)
# Most specific layouts first: the first reader that finds a reply has recognised the bounce.
# A reader that recognises its layout and finds the failure local stops the search, so that
# the looser readers below cannot take the reporting server's own words for a reply.
PROSE_READERS: tuple[Reader, ...] = (
    postfix.read,
    exim.read,
    sendmail.read,
    qmail.read,
    exchange.read,
    gmail.read,
    yahoo.read,
    dragonfly.read,
    mfilter.read,
    courier.read,
    mdaemon.read,
    domino.read,
    groupwise.read,
    imail.read,
    zoho.read,
    opensmtpd.read,
    amazonses.read,
    generic.read,
    generic.read_embedded,
)


# The human-readable part of a bounce is a few KB; the readers look at this much of it, so a
# huge text costs a bounded time (log lines are read whole, line by line).
PROSE_LIMIT = 512 * 1024


def _from_prose(text: str, hints: Hints) -> list[Finding]:
    text = text[:PROSE_LIMIT]
    for reader in PROSE_READERS:
        if found := reader(text, hints):
            return found
        if hints.local_failure:
            return []
    return []


def _from_message(text: str, hints: Hints) -> list[Finding]:
    findings: list[Finding] = []
    for msg in messages(text):
        parts = read_parts(msg)
        prose = "\n\n".join(cut_returned_copy(p) for p in (parts.plain or parts.markup))
        groups = [g for raw in parts.dsn for g in dsn.groups_from_text(raw)]
        if not groups and dsn.FINAL_RECIPIENT.search(prose):
            # Some MTAs send the DSN fields as plain text instead of message/delivery-status.
            groups = dsn.groups_from_text(prose)
        findings += _combine(groups, prose, hints)
    return findings


def _combine(groups: list[dict[str, str]], prose: str, hints: Hints) -> list[Finding]:
    """The DSN's replies and the prose's, each completing the other."""
    prose_findings = _from_prose(prose, hints)
    if not prose_findings and not hints.local_failure:
        prose_findings = generic.read_pasted(prose[:PROSE_LIMIT], hints) if not groups else []
    result = dsn.read(groups)
    if hints.local_failure and not prose_findings:
        # The family reader saw the reporting server's own failure: the DSN's
        # Diagnostic-Code repeats that server's summary, not a remote reply.
        return []
    hints.no_reply.extend(result.local)
    if result.findings or result.without_reply:
        found = dsn.enrich(result, prose_findings)
        if not found and (statuses := dsn.status_only(result)):
            hints.no_reply.append(f"the DSN gives only a Status ({statuses}) and no SMTP reply")
        return found
    return prose_findings


def _from_text(text: str, hints: Hints) -> list[Finding]:
    if dsn.FINAL_RECIPIENT.search(text):
        # DSN fields pasted without the rest of the message.
        found = _combine(dsn.groups_from_text(text), text, hints)
        if found:
            return found
    for reader in LOG_READERS:
        if found := reader(text, hints):
            return found
    if hints.local_failure:
        return []
    return _from_prose(cut_returned_copy(text), hints) or (
        [] if hints.local_failure else generic.read_pasted(text[:PROSE_LIMIT], hints)
    )


def parse_bounce(text: str) -> list[Finding]:
    """Every reply the bounce reports for a failed or delayed recipient, in the order found.

    Raises BounceError, with a one-line message naming what was looked for, when there is none.
    """
    if len(text) > MAX_INPUT:
        raise BounceError(
            f"input of {len(text) // (1024 * 1024)} MB is over the {MAX_INPUT // (1024 * 1024)} "
            "MB from-bounce reads: a bounce is a few KB (for a log, grep the lines first)"
        )
    text = normalise(text)
    if not text.strip():
        raise BounceError(f"empty input: {LOOKED_FOR}")
    hints = Hints()
    try:
        findings = _from_message(text, hints) if looks_like_mail(text) else _from_text(text, hints)
    except RecursionError:
        raise BounceError("the input nests parts too deeply to read: not a bounce") from None
    if findings:
        return findings
    if hints.no_reply:
        first = " ".join(hints.no_reply[0].split())[:160]
        raise BounceError(
            f"the bounce reports no SMTP reply from a remote server ({first!r}): "
            "the reporting server failed on its own (DNS, connection, expiry or a local "
            "error), so there is no reply to reproduce"
        )
    if hints.delivered:
        raise BounceError(
            f"only successful deliveries found ({hints.delivered}): nothing to reproduce"
        )
    raise BounceError(f"no SMTP reply found: {LOOKED_FOR}")


def bounce_to_yaml(text: str, source: str = "-") -> str:
    """`fakesmtp from-bounce`: the bounce's text in, the scenario YAML out."""
    return scenario_yaml(parse_bounce(text), source)


def parse_sources(sources: list[Source]) -> Collected:
    """Every input's findings (one scenario for a folder of bounces); the inputs without a
    reply are listed with the reason. Raises BounceError when no input has a reply."""
    if len(sources) == 1:
        return Collected(findings=parse_bounce(sources[0].text))
    collected = Collected()
    for source in sources:
        try:
            collected.findings += named(parse_bounce(source.text), source.name)
        except BounceError as error:
            collected.skipped.append((source.name, str(error)))
    if not collected.findings:
        name, why = collected.skipped[0]
        raise BounceError(f"no bounce among the {len(sources)} files has a reply ({name}: {why})")
    return collected
