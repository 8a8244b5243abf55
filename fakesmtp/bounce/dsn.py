"""RFC 3464 delivery-status fields: per failed or delayed recipient, the reply in its
Diagnostic-Code, completed by what the human-readable part adds (stage, host, whole lines)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from . import postfix
from .findings import Finding, reply_key
from .grammar import STATUS_IN_TEXT, Reply, looks_local, parse_reply, squash

_FIELD = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9-]*):[ \t]*(?P<value>.*)$")
FINAL_RECIPIENT = re.compile(r"^Final-Recipient:", re.IGNORECASE | re.MULTILINE)
# The reply inside an expiry notice: "554 4.4.7 Message expired ...<421 4.4.2 text>".
_LAST_ATTEMPT = re.compile(r"<(?P<reply>[2-5][0-5]\d[ -][^<>]*)>\s*$")


def groups_from_text(text: str) -> list[dict[str, str]]:
    """Blank-line separated groups of `Name: value` fields.

    An indented line folds into the field above (joined with a space, RFC 5322 unfolding); an
    unindented line that is not a field, as some MTAs write a multi-line reply's later lines,
    continues the field above on a new line, so the reply keeps its lines.
    """
    groups: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    last: list[str] | None = None
    for line in text.split("\n"):
        if not line.strip():
            if current:
                groups.append(current)
            current, last = {}, None
        elif line[:1] in (" ", "\t") and last is not None:
            # Kept as "\n " so that the Diagnostic-Code reader can say it joined them.
            if last:
                last[-1] = f"{last[-1]}\n {line.strip()}"
            else:
                last.append(line.strip())
        elif (m := _FIELD.match(line)) and not m["name"][:1].isdigit():
            # A repeated field keeps its first value; its continuation lines go nowhere.
            last = [m["value"].strip()] if m["name"].lower() not in current else []
            current.setdefault(m["name"].lower(), last)
        elif last is not None:
            last.append(line.strip())
    if current:
        groups.append(current)
    return [
        {
            name: "\n".join(parts).strip() if name == "diagnostic-code" else _unfold(parts)
            for name, parts in g.items()
        }
        for g in groups
    ]


def _unfold(parts: list[str]) -> str:
    return " ".join(" ".join(parts).split())


_FOLD = re.compile(r"\n[ \t]+")


def _typed_value(value: str) -> tuple[str, str]:
    """`rfc822; bob@x` -> ("rfc822", "bob@x"); untyped values get an empty type."""
    kind, sep, rest = value.partition(";")
    if sep and " " not in kind.strip() and len(kind) < 30:
        return kind.strip().lower(), rest.strip()
    return "", value.strip()


def _mta_name(value: str | None) -> str | None:
    if not value:
        return None
    name = _typed_value(value)[1].split()[0] if _typed_value(value)[1] else ""
    return name.strip("[]").rstrip(".") or None


@dataclass(slots=True)
class DsnResult:
    findings: list[Finding] = field(default_factory=list)
    # Recipients with no SMTP reply in their Diagnostic-Code, and their Status.
    without_reply: dict[str, str | None] = field(default_factory=dict)
    local: list[str] = field(default_factory=list)  # the reporting server's own words


def read_diagnostic(diagnostic: str) -> tuple[Reply | None, str | None, tuple[str, ...], str]:
    """The reply in a Diagnostic-Code: (reply, stage, notes, why-not when there is none)."""
    folds = len(_FOLD.findall(diagnostic))
    diagnostic = _FOLD.sub(" ", diagnostic)
    kind, value = _typed_value(diagnostic)
    if kind not in ("smtp", "", "x-postfix") and not kind.startswith("x-"):
        return None, None, (), diagnostic
    reply, stage, notes, why_not = _diagnostic_reply(kind, value)
    if reply is not None and folds:
        note = f"{folds} folded line(s) of the Diagnostic-Code joined into the reply text"
        reply = replace(reply, notes=(*reply.notes, note))
    return reply, stage, notes, why_not


def _diagnostic_reply(
    kind: str, value: str
) -> tuple[Reply | None, str | None, tuple[str, ...], str]:
    diagnostic = f"{kind}; {value}" if kind else value
    flat = " ".join(value.split("\n")) if kind == "x-postfix" else value
    if said := postfix.read_said(" ".join(value.split())):
        reply, stage, _host, notes = said
        return reply, stage, notes, ""
    if kind.startswith("x-") and kind != "x-postfix" and not re.match(r"\s*[2-5][0-5]\d", value):
        return None, None, (), diagnostic
    reply = parse_reply(flat)
    if reply is None:
        return None, None, (), diagnostic
    text = " ".join(flat.split())
    if looks_local(text):
        inner = _LAST_ATTEMPT.search(text)
        last = parse_reply(inner["reply"]) if inner else None
        if last is not None and not looks_local(inner["reply"]):
            note = "the reply of the last attempt, quoted inside the reporting server's notice"
            return replace(last, notes=(*last.notes, note)), None, (), ""
        return None, None, (), text
    return reply, None, (), ""


def read(groups: list[dict[str, str]]) -> DsnResult:
    """Findings for the failed and delayed recipients, and those the DSN gives no reply for."""
    result = DsnResult()
    for group in groups:
        rfield = group.get("final-recipient") or group.get("original-recipient")
        if rfield is None:
            continue
        recipient = _typed_value(rfield)[1].strip("<>") or None
        action = group.get("action", "").strip().lower()
        if action not in ("failed", "delayed", ""):
            continue  # delivered, relayed, expanded: nothing went wrong for this one
        status_m = STATUS_IN_TEXT.search(group.get("status", ""))
        status = status_m[1] if status_m else None
        if action == "" and not (status and status[0] in "45"):
            continue
        diagnostic = group.get("diagnostic-code", "")
        reply, stage, notes, why_not = read_diagnostic(diagnostic)
        remote = _mta_name(group.get("remote-mta"))
        who = recipient or "(unnamed)"
        if reply is None:
            result.without_reply[recipient or ""] = status
            if why_not:
                result.local.append(f"{who}: {squash(why_not, 160)}")
            continue
        result.findings.append(
            reply.finding(
                recipient=recipient,
                fallback_status=status,
                stage=stage,
                remote_mta=remote,
                origin=f"Diagnostic-Code of recipient {who} (Action: {action or 'unstated'})",
                notes=(*notes, *(() if remote else ("no Remote-MTA field",))),
                family="RFC 3464",
                evidence=squash(diagnostic),
            )
        )
    return result


def enrich(dsn: DsnResult, prose: list[Finding]) -> list[Finding]:
    """The DSN's findings completed by the human-readable part's; the prose's own findings for
    recipients whose Diagnostic-Code held no reply (with the DSN's Status when they lack one)."""
    by_recipient: dict[str, list[Finding]] = {}
    for p in prose:
        by_recipient.setdefault((p.recipient or "").casefold(), []).append(p)
    # Without a recipient in common, a prose reply fits a DSN one when it is the only reply
    # of that code the prose gives.
    by_code: dict[int, set[tuple[object, ...]]] = {}
    for p in prose:
        by_code.setdefault(p.code, set()).add(reply_key(p))
    out: list[Finding] = []
    for f in dsn.findings:
        match = _matching(f, prose, by_recipient, by_code)
        if match is None:
            out.append(f)
            continue
        changes: dict[str, object] = {}
        notes = list(f.notes)
        if f.stage is None and match.stage is not None and match.code == f.code:
            changes["stage"] = match.stage
            notes += [
                f"{n} (in the human-readable part)" for n in match.notes if n.startswith("stage")
            ]
        if f.remote_mta is None and match.remote_mta is not None:
            changes["remote_mta"] = match.remote_mta
            notes = [n for n in notes if n != "no Remote-MTA field"]
            notes.append("remote server named in the human-readable part")
        if match.code == f.code and len(match.text) > len(f.text):
            changes["text"] = match.text
            notes.append("reply lines as the human-readable part shows them")
        if match.family not in ("generic", f.family):
            changes["family"] = match.family
        out.append(replace(f, notes=tuple(notes), **changes))  # type: ignore[arg-type]
    for recipient, status in dsn.without_reply.items():
        same = by_recipient.get(recipient.casefold(), [])
        if not same and not recipient:
            same = prose
        if not same and len(dsn.without_reply) == 1 and not dsn.findings:
            # One recipient, and the prose names it differently (or not at all).
            same = prose
        for p in same:
            notes = list(p.notes)
            if p.status is None and status:
                p = replace(p, status=status)
                notes.append(f"the reply carries no enhanced status: {status} from the DSN Status")
            out.append(replace(p, recipient=recipient or p.recipient, notes=tuple(notes)))
    return out


def _matching(
    f: Finding,
    prose: list[Finding],
    by_recipient: dict[str, list[Finding]],
    by_code: dict[int, set[tuple[object, ...]]],
) -> Finding | None:
    if f.recipient and (same := by_recipient.get(f.recipient.casefold())):
        return next((p for p in same if p.code == f.code), same[0])
    if len(by_code.get(f.code, ())) == 1:
        return next((p for p in prose if p.code == f.code and p.status in (f.status, None)), None)
    return None


def status_only(dsn: DsnResult) -> str | None:
    """What to say when the DSN gives statuses and no reply anywhere."""
    shown = [f"{r or '(unnamed)'} {s}" for r, s in dsn.without_reply.items() if s]
    if not shown:
        return None
    return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
