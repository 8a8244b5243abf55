"""The scenario a bounce's findings give: commented YAML (each value says where it came from and
what was assumed), and the findings as JSON for tooling."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .findings import BounceError, Finding
from .grammar import clean, default_stage

LOOKED_FOR = (
    "looked for a DSN (message/delivery-status with Diagnostic-Code), the bounce text of "
    "Postfix, Exim, Sendmail, qmail, Exchange/Office 365, Gmail, Yahoo, Amazon SES, Courier, "
    "OpenSMTPD, DragonFly, Domino, GroupWise, IMail, MDaemon, m-FILTER or Zoho, an SMTP "
    "transcript, a Postfix, Exim or Sendmail log line, or a pasted reply such as "
    "'550 5.1.1 <bob@example.test>: User unknown'"
)

# Stages at which `match: {to: ...}` can hold: before RCPT the recipient is not known yet.
_STAGES_WITH_RECIPIENT = frozenset({"rcpt", "data", "end_of_data"})
_GLOB_CHARS = re.compile(r"([*?\[])")
_LOOKS_LIKE_REGEX = re.compile(r"^/.*/[imsx]*$", re.DOTALL)
_NOT_IN_COMMENTS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_MAX_LINE = 480  # the longest reply text line the scenario loader takes (RFC 5321's 512 octets)
_YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _q(value: str) -> str:
    """A YAML double-quoted scalar: never read as a bool, number, null, alias or comment."""
    out = []
    for ch in value:
        if ch in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[ch])
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029\ufeff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _comment(text: str) -> str:
    """Text safe in a comment: on one line (YAML also breaks lines at U+0085, U+2028, U+2029)."""
    return " ".join(_NOT_IN_COMMENTS.sub(" ", text).split())


def _glob_literal(address: str) -> str:
    """The address as a glob that matches only itself (match strings are globs)."""
    escaped = _GLOB_CHARS.sub(r"[\1]", address)
    # A value written /like this/flags is read as a regular expression.
    if _LOOKS_LIKE_REGEX.match(escaped):
        escaped = "[/]" + escaped[1:]
    return escaped


def _template_literal(text: str) -> str:
    """Reply text as a literal: the loader expands {to}-style fields, so braces are doubled."""
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True, slots=True)
class _Rule:
    stage: str
    code: int
    status: str | None
    text: tuple[str, ...]
    times: int
    recipients: tuple[str, ...]
    origins: tuple[str, ...]
    notes: tuple[str, ...]


def _rules(findings: list[Finding]) -> list[_Rule]:
    """One rule per distinct reply (in the order first met), with the values the loader takes."""
    # Dicts used as ordered sets: addresses, origins and notes, each kept once in order.
    groups: dict[tuple[object, ...], tuple[dict[str, None], dict[str, None], dict[str, None]]]
    groups = {}
    for f in findings:
        notes = list(f.notes)
        status, text = f.status, tuple(clean(line) for line in f.text)
        if status and status[0] != str(f.code)[0]:
            # The loader refuses a status of another class than the code; written as text it
            # still goes on the wire exactly as the remote server sent it.
            text = tuple(f"{status} {line}".rstrip() for line in text) or (status,)
            notes.append(f"status {status} disagrees with code {f.code}: kept in the text")
            status = None
        if any(len(line) > _MAX_LINE for line in text):
            text = tuple(part for line in text for part in _wrap(line))
            notes.append(
                f"a text line longer than {_MAX_LINE} characters was split into several reply lines"
            )
        stage = f.stage
        if stage is None:
            stage, why = default_stage(f.code, status, text)
            notes.append(f"stage not stated in the bounce: {why}")
        recipients: tuple[str, ...] = ()
        if f.recipient and stage in _STAGES_WITH_RECIPIENT:
            recipients = (f.recipient,)
        elif f.recipient:
            notes.append(
                f"no match on the recipient <{f.recipient}>: at {stage} it is not "
                "known yet, so every message meets this reply"
            )
        times = f.transient_then_delivered
        # Several recipients that met the same reply share one rule with a list of addresses;
        # a reply for every recipient stays a rule of its own.
        key = (stage, f.code, status, text, times, bool(recipients))
        if key not in groups:
            groups[key] = ({}, {}, {})
        addresses, origins, all_notes = groups[key]
        addresses.update(dict.fromkeys(recipients))
        origins[f.origin] = None
        all_notes.update(dict.fromkeys(notes))
    rules: list[_Rule] = []
    for (stage, code, status, text, times, _), (addresses, origins, notes) in groups.items():
        shown = list(origins)
        if len(shown) > _MAX_ORIGINS:
            shown = [*shown[:_MAX_ORIGINS], f"and {len(shown) - _MAX_ORIGINS} more"]
        rules.append(
            _Rule(stage, code, status, text, times, tuple(addresses), tuple(shown), tuple(notes))
        )
    return rules


_MAX_ORIGINS = 5  # a long log can give one reply hundreds of times: name a few lines
_STDIN = ("-", "<stdin>")  # how callers name standard input (click says "<stdin>")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def _wrap(line: str) -> list[str]:
    parts: list[str] = []
    while len(line) > _MAX_LINE:
        cut = line.rfind(" ", 0, _MAX_LINE + 1)
        cut = cut if cut > 0 else _MAX_LINE
        parts.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    return [*parts, line]


def _few(items: tuple[str, ...], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _slug(source: str) -> str:
    stem = _EXTENSION.sub("", source.replace("\\", "/").rsplit("/", 1)[-1])
    slug = _NOT_SLUG.sub("-", stem.lower()).strip("-")
    if not slug or source in _STDIN:
        return "bounce-stdin"
    return slug if slug.startswith("bounce") else f"bounce-{slug}"


def scenario_yaml(
    findings: list[Finding], source: str = "-", skipped: list[tuple[str, str]] | None = None
) -> str:
    """A commented scenario YAML that gives each finding's reply to the same recipient(s).

    `skipped` lists the inputs (of a folder of bounces) that gave no reply, and why.
    """
    if not findings:
        raise BounceError(f"no SMTP reply to reproduce: {LOOKED_FOR}")
    rules = _rules(findings)
    where = "standard input" if source in _STDIN else source
    out = [
        f"# Generated by `fakesmtp from-bounce` from {_comment(where)}.",
        "# It gives the reply the remote server gave, at the same stage, so your software meets",
        "# it locally. Recipients without a rule below are accepted as usual.",
    ]
    shown = (skipped or [])[:_MAX_ORIGINS]
    out += [f"# no reply in {_comment(name)}: {_comment(why)}" for name, why in shown]
    if skipped and len(skipped) > len(shown):
        out.append(f"# and {len(skipped) - len(shown)} more files without a reply")
    out.append(f"name: {_q(_slug(source))}")
    summary = "; ".join(
        f"{r.code}{' ' + r.status if r.status else ''} at {r.stage}"
        + (f" for {_few(r.recipients)}" if r.recipients else "")
        for r in rules[:_MAX_ORIGINS]
    )
    if len(rules) > _MAX_ORIGINS:
        summary += f"; and {len(rules) - _MAX_ORIGINS} more replies"
    out.append(f"description: {_q('Reproduces ' + summary + ' (from ' + where + ')')}")
    hosts = list(dict.fromkeys(f.remote_mta for f in findings if f.remote_mta))
    if hosts:
        named_by = next(f.origin for f in findings if f.remote_mta == hosts[0])
        out += ["server:", f"  # the remote server, as named by: {_comment(named_by)}"]
        if len(hosts) > 1:
            out.append(f"  # (the bounce also names {_comment(', '.join(hosts[1:]))})")
        out.append(f"  hostname: {_q(hosts[0])}")
    out.append("rules:")
    for r in rules:
        out.append(f"  # from: {_comment('; '.join(dict.fromkeys(r.origins)))}")
        out += [f"  # {_comment(n)}" for n in r.notes]
        if r.times:
            out.append(
                f"  # the log shows this reply {r.times} time(s), then the recipient got "
                "through: a retry after that is accepted"
            )
        elif r.code < 500:
            out.append(
                "  # a transient reply with no later success in the bounce: every attempt "
                "meets it; add `times: N` to let a retry through"
            )
        out.append(f"  - on: {r.stage}")
        if r.recipients:
            values = [_q(_glob_literal(a)) for a in r.recipients]
            value = values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"
            out.append(f"    match: {{to: {value}}}")
        if r.times:
            out.append(f"    times: {r.times}")
            per = "recipient" if r.recipients else ("sender" if r.stage == "mail" else "")
            if per:
                out.append(f"    per: {per}")
        out += ["    reply:", f"      code: {r.code}"]
        if r.status:
            out.append(f"      status: {_q(r.status)}")
        lines = [_q(_template_literal(t)) for t in r.text]
        if len(lines) <= 1:
            # An empty text is written out: left out, the loader would use the catalog's text.
            out.append(f"      text: {lines[0] if lines else _q('')}")
        else:
            out.append("      text:")
            out += [f"        - {line}" for line in lines]
    return "\n".join(out) + "\n"


def findings_json(findings: list[Finding]) -> str:
    """The findings for tooling: recipient, code, status, stage (None: not stated), text,
    family, evidence, the remote server, and what was inferred."""
    rows = [
        {
            "recipient": f.recipient,
            "code": f.code,
            "status": f.status,
            "stage": f.stage,
            "text": list(f.text),
            "family": f.family,
            "evidence": f.evidence,
            "remote_mta": f.remote_mta,
            "origin": f.origin,
            "notes": list(f.notes),
        }
        for f in findings
    ]
    return json.dumps({"findings": rows}, indent=2, ensure_ascii=False) + "\n"
