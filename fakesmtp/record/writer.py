"""A recording -> scenario YAML: the upstream's identity in ``server:``, a rule per distinct reply.

Each step is keyed by its stage and the envelope fact that decided it (the recipient at RCPT,
the sender at MAIL, the HELO name, the accepted recipients or the size at the end of data); a
key that got different answers over time (greylisting: 451, then 250) becomes rules with
``times`` so the replay gives them in the same order. Replies fakesmtp gives by itself are left
out, so the file says only what is particular to the upstream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Any

import yaml

from ..reply import MAX_LINE_TEXT, Reply, ReplyError, clean_text
from ..scenario import AUTH_MECHANISMS, KNOWN_EXTENSIONS, ScenarioError, load_scenario_text
from ..stages import Stage
from .model import RecordedSession, Step, UpstreamReply

DELAY_THRESHOLD = 1.0  # seconds: slower replies keep their delay in the rule
COMMENT_BODY_LINES = 12  # --keep-bodies: how much of a refused message a comment shows

# Stages whose refusals depend on a fact of the envelope, and the fact tried first.
_DECIDERS: dict[Stage, tuple[str, ...]] = {
    Stage.HELO: ("helo",),
    Stage.EHLO: ("helo",),
    Stage.MAIL: ("from", "helo"),
    Stage.RCPT: ("to", "from", "helo"),
    Stage.DATA: ("to", "from"),
    Stage.BDAT: ("to", "from"),
    Stage.END_OF_DATA: ("to", "from"),
}
# Replies about the client's own mistakes (syntax, order): fakesmtp judges those itself.
_PROTOCOL_CODES = frozenset({501, 503})
# ... and these, except where they are the stage's whole behaviour (VRFY disabled, no HELP).
_COMMAND_CODES = frozenset({500, 502, 504})
_COMMAND_STAGES = frozenset(
    {Stage.VRFY, Stage.EXPN, Stage.HELP, Stage.UNKNOWN, Stage.NOOP, Stage.RSET}
)
_QUEUED = re.compile(r"^Ok: queued as \S+$")


class AppendError(ValueError):
    """The file to append to cannot take new rules; the message says why."""


# --------------------------------------------------------------------------- the upstream

Outcome = tuple[Any, ...]  # ("reply", code, status, lines) or ("drop",) / ("reset",)


@dataclass(slots=True)
class Upstream:
    """What the recording says about the server itself: ``server:`` and the defaults to skip."""

    hostname: str | None = None
    size_limit: int | None = None
    extensions: list[str] | None = None
    not_replayed: list[str] = field(default_factory=list)
    starttls: bool = False
    auth: list[str] = field(default_factory=list)
    auth_other: list[str] = field(default_factory=list)  # mechanisms fakesmtp cannot offer
    auth_after_tls_only: bool = False
    # How the upstream words its size limit (server.size_replies), when it was seen.
    size_replies: dict[str, Outcome] = field(default_factory=dict)

    @property
    def enhanced(self) -> bool:
        return self.extensions is None or "ENHANCEDSTATUSCODES" in self.extensions


def describe_upstream(sessions: Sequence[RecordedSession]) -> Upstream:
    """The upstream's name, size limit, extensions, STARTTLS and AUTH, from its first EHLO."""
    found = Upstream()
    for session in sessions:
        if session.ehlo_greeting and found.hostname is None:
            found.hostname = session.ehlo_greeting.split()[0]
        if session.capabilities is not None and found.extensions is None:
            _read_capabilities(found, session.capabilities, session.tls_capabilities)
    if found.hostname is None:  # HELO-only clients: the banner's first word is the name
        for session in sessions:
            banner = next((s for s in session.steps if s.stage is Stage.CONNECT), None)
            if banner is not None and banner.reply is not None and banner.reply.code == 220:
                words = banner.reply.lines[0].split()
                if words:
                    found.hostname = words[0]
                    break
    return found


def _read_capabilities(
    found: Upstream, plain: tuple[str, ...], secure: tuple[str, ...] | None
) -> None:
    extensions: list[str] = []
    for line in (*plain, *(secure or ())):
        # "AUTH=LOGIN PLAIN" is the pre-RFC 4954 spelling some servers still add.
        keyword, *params = (
            line.replace("=", " ", 1).split()
            if line.upper().startswith("AUTH=")
            else (line.split() or [""])
        )
        keyword = keyword.upper()
        if keyword == "SIZE":
            if params and params[0].isdigit():
                found.size_limit = int(params[0]) or None
        elif keyword == "STARTTLS":
            found.starttls = True
        elif keyword == "AUTH":
            for mechanism in params:
                mechanism = mechanism.upper()
                chosen = found.auth if mechanism in AUTH_MECHANISMS else found.auth_other
                if mechanism not in chosen:
                    chosen.append(mechanism)
        elif keyword in KNOWN_EXTENSIONS:
            if keyword not in extensions:
                extensions.append(keyword)
        elif keyword and keyword not in found.not_replayed:
            found.not_replayed.append(keyword)
    found.extensions = extensions
    offered_plain = any(line.upper().startswith(("AUTH ", "AUTH=")) for line in plain)
    found.auth_after_tls_only = bool(found.auth) and not offered_plain


# --------------------------------------------------------------------------- defaults


def _defaults(hostname: str) -> dict[Stage, Reply]:
    """fakesmtp's own reply at each stage: a recorded reply equal to it needs no rule."""
    from ..scenario import Scenario, ServerSettings
    from ..session.profile import Profile

    profile = Profile(Scenario(server=ServerSettings(hostname=hostname)), None)
    return {
        Stage.CONNECT: profile.banner,
        Stage.HELO: profile.helo_ok,
        Stage.STARTTLS: profile.tls_go,
        Stage.MAIL: profile.mail_ok,
        Stage.RCPT: profile.rcpt_ok,
        Stage.DATA: profile.data_go,
        Stage.RSET: profile.ok,
        Stage.NOOP: profile.ok,
        Stage.VRFY: profile.vrfy,
        Stage.EXPN: profile.expn,
        Stage.QUIT: profile.quit,
        Stage.UNKNOWN: profile.unknown,
    }


def _is_default(stage: Stage, reply: UpstreamReply, upstream: Upstream, defaults: dict) -> bool:
    if stage is Stage.EHLO:  # the extension lines come from server:; only the greeting counts
        return reply.code == 250 and reply.lines[0] == (upstream.hostname or "")
    if stage is Stage.END_OF_DATA:  # the queue id is the upstream's own: any id will do
        return (reply.code, reply.status, len(reply.lines)) == (250, "2.0.0", 1) and bool(
            _QUEUED.match(reply.lines[0])
        )
    expected = defaults.get(stage)
    return expected is not None and (reply.code, reply.status, reply.lines) == (
        expected.code,
        expected.status,
        expected.lines,
    )


# --------------------------------------------------------------------------- steps -> rules


@dataclass(slots=True)
class _Run:
    """Consecutive steps of one key that got the same outcome."""

    outcome: Outcome
    steps: list[tuple[RecordedSession, Step]]


@dataclass(slots=True)
class _Group:
    stage: Stage
    match: tuple[tuple[str, Any], ...]
    runs: list[_Run] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PlannedRule:
    """One rule to write, with what the comment above it says."""

    stage: Stage
    match: tuple[tuple[str, Any], ...]
    outcome: Outcome
    times: int | None
    delay: float | None
    steps: list[tuple[RecordedSession, Step]]


def _outcome(step: Step) -> Outcome:
    if step.reply is None:
        return (step.ended or "drop",)
    # As a scenario writes them: no control bytes, within a reply line's length, braces doubled.
    lines = tuple(_written(line) for line in step.reply.lines)
    if step.stage is Stage.EHLO and step.reply.code < 400:
        lines = lines[:1]  # the extension lines are server:'s; a rule gives only the greeting
    return ("reply", step.reply.code, step.reply.status, lines)


def _skipped(step: Step) -> str | None:
    """Why a step makes no rule: a reply fakesmtp gives by itself in that state."""
    reply = step.reply
    if reply is None:
        return None
    if reply.code in _PROTOCOL_CODES:
        return "a reply to a client mistake (fakesmtp checks syntax and order itself)"
    if reply.code in _COMMAND_CODES and step.stage not in _COMMAND_STAGES:
        return "a reply to a client mistake (fakesmtp checks syntax and order itself)"
    if step.stage is Stage.DATA and not step.recipients and reply.code >= 400:
        return "DATA without an accepted recipient (fakesmtp refuses it by itself)"
    return None


def _facts(step: Step) -> dict[str, Any]:
    facts: dict[str, Any] = {"helo": step.helo, "from": step.sender}
    if step.stage is Stage.RCPT:
        facts["to"] = step.recipient
    elif step.recipients:
        # Several accepted recipients: "any of them" (a tuple, so the key can be hashed).
        facts["to"] = step.recipients if len(step.recipients) > 1 else step.recipients[0]
    return {k: v for k, v in facts.items() if v is not None}


def _narrowing(step: Step, upstream: Upstream, keep_bodies: bool) -> tuple[tuple[str, Any], ...]:
    """The ``match`` that decided this step: the fact the reply names, else the stage's own."""
    deciders = _DECIDERS.get(step.stage)
    if deciders is None:
        return ()
    reply = step.reply
    if step.stage is Stage.END_OF_DATA and reply is not None and _size_refusal(reply):
        limit = upstream.size_limit
        if limit is not None and step.size is not None and step.size > limit:
            return (("size", f">{limit}"),)
        return (("size", f">={step.size or 0}"),)
    facts = _facts(step)
    text = " ".join(reply.lines).casefold() if reply is not None else ""
    chosen: list[tuple[str, Any]] = []
    if text:
        for key in deciders:
            value = facts.get(key)
            values = value if isinstance(value, tuple) else (value,)
            if value and any(v and v.casefold() in text for v in values):
                chosen.append((key, value))
                break
    if not chosen:
        key = next((k for k in deciders if facts.get(k) is not None), None)
        if key is None:
            return ()
        chosen.append((key, facts[key]))
    if keep_bodies and step.stage is Stage.END_OF_DATA and step.message is not None:
        subject = _subject(step.message)
        if subject:
            chosen.append(("subject", subject))
    return tuple(chosen)


def _size_setting(step: Step, upstream: Upstream) -> bool:
    """A refusal for the size limit is said by fakesmtp's own check, before any rule: it goes
    to ``server.size_replies`` (at MAIL for a declared SIZE=, after the dot for a message)."""
    reply, limit = step.reply, upstream.size_limit
    if reply is None or limit is None or step.size is None or step.size <= limit:
        return False
    if step.stage not in (Stage.MAIL, Stage.END_OF_DATA) or not _size_refusal(reply):
        return False
    upstream.size_replies.setdefault(step.stage.value, _outcome(step))
    return True


def _size_refusal(reply: UpstreamReply) -> bool:
    return reply.status in ("5.3.4", "5.2.3", "4.3.1") or (
        reply.code == 552 and reply.status is None
    )


def _subject(message: bytes) -> str | None:
    headers = BytesHeaderParser(policy=default_policy).parsebytes(message)
    subject = headers.get("Subject")
    return str(subject) if subject else None


def plan_rules(
    sessions: Sequence[RecordedSession],
    upstream: Upstream,
    *,
    keep_bodies: bool = False,
    delay_threshold: float = DELAY_THRESHOLD,
) -> tuple[list[PlannedRule], list[str]]:
    """The rules a recording needs, in the order they must be tried; and notes on what was left."""
    defaults = _defaults(upstream.hostname or "")
    groups: dict[tuple[Stage, tuple[tuple[str, Any], ...]], _Group] = {}
    notes: list[str] = []
    for session in sessions:
        for step in session.steps:
            if _size_setting(step, upstream):
                continue
            why = _skipped(step)
            if why is not None:
                assert step.reply is not None
                note = f"{step.stage}: {step.reply.text()} -- not written: {why}"
                if note not in notes:
                    notes.append(note)
                continue
            match = _narrowing(step, upstream, keep_bodies)
            group = groups.setdefault((step.stage, match), _Group(step.stage, match))
            plain = step.reply is not None and _is_default(
                step.stage, step.reply, upstream, defaults
            )
            # Every reply fakesmtp would give anyway is one outcome (queue ids differ).
            outcome = ("default",) if plain else _outcome(step)
            if group.runs and group.runs[-1].outcome == outcome:
                group.runs[-1].steps.append((session, step))
            else:
                group.runs.append(_Run(outcome, [(session, step)]))
    planned: list[PlannedRule] = []
    stage_wide: dict[Stage, list[PlannedRule]] = {}
    for group in groups.values():
        for index, run in enumerate(group.runs):
            last = index == len(group.runs) - 1
            delay = _delay(run, delay_threshold)
            reply = run.steps[0][1].reply
            plain = run.outcome == ("default",)
            if last and plain and delay is None:
                continue  # what fakesmtp says anyway
            positive = reply is not None and reply.code < 400
            rule = PlannedRule(
                stage=group.stage,
                match=group.match,
                # fakesmtp's own reply (late, or before the upstream changed its mind): a rule
                # that only waits, then gives the normal reply.
                outcome=("delay",) if plain else run.outcome,
                times=None if last else len(run.steps),
                delay=delay,
                steps=run.steps,
            )
            if last and positive and group.match and not plain:
                # A positive reply that is not ours (Exchange's "Recipient OK"): one rule for
                # the whole stage, the address made a template field, after the refusals.
                rule.match = ()
                rule.outcome = _templated(rule.outcome, run.steps[0][1])
                same = next(
                    (r for r in stage_wide.get(group.stage, []) if r.outcome == rule.outcome),
                    None,
                )
                if same is not None:
                    same.steps.extend(run.steps)
                else:
                    stage_wide.setdefault(group.stage, []).append(rule)
                continue
            planned.append(rule)
    ordered: list[PlannedRule] = []
    for stage in Stage:
        ordered += [r for r in planned if r.stage is stage and r.match]
        ordered += [r for r in planned if r.stage is stage and not r.match]
        ordered += stage_wide.get(stage, [])
    return ordered, notes


def _delay(run: _Run, threshold: float) -> float | None:
    times = sorted(step.elapsed for _, step in run.steps)
    median = times[len(times) // 2]
    return round(median, 1) if median > threshold else None


def _templated(outcome: Outcome, step: Step) -> Outcome:
    """Addresses in a stage-wide reply become {to}/{from}/{helo}, so it fits every envelope."""
    if outcome[0] != "reply":
        return outcome
    fields = {"to": step.recipient, "from": step.sender, "helo": step.helo}
    lines = []
    for line in outcome[3]:
        for name, value in fields.items():
            if value:
                line = line.replace(_escape(value), "{" + name + "}")
        lines.append(line)
    return (*outcome[:3], tuple(lines))


# --------------------------------------------------------------------------- YAML


def _written(line: str) -> str:
    """An upstream's reply line as a scenario can hold it (clean, escaped, not too long)."""
    written = _escape(clean_text(line, MAX_LINE_TEXT))
    if len(written) > MAX_LINE_TEXT:  # doubled braces: half the length always fits
        written = _escape(clean_text(line, MAX_LINE_TEXT // 2))
    return written


def _escape(text: str) -> str:
    """Braces are template fields in a reply: an upstream's literal brace is written doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def _quote(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _glob_literal(value: str) -> str:
    """A fact as a glob that matches only itself: ``*``, ``?`` and ``[`` bracketed."""
    if value.startswith("/") and value.endswith("/") and len(value) > 1:
        value = "[/]" + value[1:]
    return re.sub(r"([*?\[])", r"[\1]", value)


def _match_value(key: str, value: Any) -> Any:
    if key in ("to", "from", "helo", "subject"):
        if isinstance(value, tuple | list):
            return [_glob_literal(v) for v in value]
        return _glob_literal(value)
    return value


def _reply_yaml(outcome: Outcome, enhanced: bool) -> str:
    _, code, status, lines = outcome
    if not enhanced and status is not None:  # fakesmtp would not show it: keep it in the text
        lines, status = tuple(f"{status} {line}".rstrip() for line in lines), None
    if len(lines) == 1 and lines[0]:
        written = f"{code} {status + ' ' if status else ''}{lines[0]}"
        try:
            parsed = Reply.parse(written)
        except ReplyError:
            parsed = None
        if parsed is not None and (parsed.code, parsed.status, parsed.lines) == (
            code,
            status,
            lines,
        ):
            return _quote(written)
    parts = [f"code: {code}"]
    if status is not None:
        parts.append(f"status: {_quote(status)}")
    text = _quote(lines[0]) if len(lines) == 1 else "[" + ", ".join(map(_quote, lines)) + "]"
    parts.append(f"text: {text}")
    return "{" + ", ".join(parts) + "}"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _rule_yaml(rule: PlannedRule, upstream: Upstream, keep_bodies: bool) -> list[str]:
    session, step = rule.steps[0]
    command = step.command if step.command is not None else "the connection"
    lines = [
        f"  # recorded {_when(step.at)} from {session.upstream} (session {session.number}),"
        f" in answer to {command}",
    ]
    more = len(rule.steps) - 1
    if more:
        lines.append(f"  #   and {more} more time{'s' if more > 1 else ''} in this recording")
    if rule.times is not None:
        lines.append("  #   only that many times: the upstream answered differently afterwards")
    if keep_bodies and step.message is not None and step.stage is Stage.END_OF_DATA:
        text = step.message.decode("utf-8", "replace").splitlines()
        lines.append("  #   the message (--keep-bodies):")
        lines += [f"  #     {line}" for line in text[:COMMENT_BODY_LINES]]
        if len(text) > COMMENT_BODY_LINES:
            lines.append(f"  #     ... {len(text) - COMMENT_BODY_LINES} more lines")
    lines.append(f"  - on: {rule.stage.value}")
    if rule.match:
        inner = ", ".join(f"{key}: {_quote(_match_value(key, value))}" for key, value in rule.match)
        lines.append(f"    match: {{{inner}}}")
    kind = rule.outcome[0]
    if kind == "reply":
        lines.append(f"    reply: {_reply_yaml(rule.outcome, upstream.enhanced)}")
    elif kind in ("drop", "reset"):
        lines.append(f"    action: {kind}")
    if rule.delay is not None:
        lines.append(f"    delay: {rule.delay:g}s")
    elif kind == "delay":
        lines.append("    delay: 0s  # then the normal reply")
    if rule.times is not None:
        lines.append(f"    times: {rule.times}")
    return lines


def _server_yaml(upstream: Upstream) -> list[str]:
    lines = ["server:"]
    if upstream.hostname:
        lines.append(f"  hostname: {_quote(upstream.hostname)}")
    if upstream.size_limit:
        lines.append(f"  size_limit: {upstream.size_limit}")
    if upstream.size_replies:
        lines.append("  size_replies:  # how the upstream refused what was over its size limit")
        for stage, outcome in upstream.size_replies.items():
            lines.append(f"    {stage}: {_reply_yaml(outcome, upstream.enhanced)}")
    if upstream.extensions is not None:
        lines.append(f"  extensions: [{', '.join(upstream.extensions)}]")
    if upstream.not_replayed:
        lines.append(
            f"  # also offered by the upstream, not replayed: {', '.join(upstream.not_replayed)}"
        )
    if upstream.starttls:
        lines.append("  tls: {starttls: true}")
    if upstream.auth:
        # tls_only: the upstream offered AUTH only once STARTTLS was done.
        tls_only = ", tls_only: true" if upstream.auth_after_tls_only else ""
        lines.append(f"  auth: {{mechanisms: [{', '.join(upstream.auth)}]{tls_only}}}")
    if upstream.auth_other:
        lines.append(f"  # AUTH mechanisms fakesmtp cannot offer: {', '.join(upstream.auth_other)}")
    return lines if len(lines) > 1 else []


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "upstream"


def scenario_yaml(
    sessions: Sequence[RecordedSession],
    upstream_name: str,
    *,
    keep_bodies: bool = False,
    delay_threshold: float = DELAY_THRESHOLD,
    not_recorded: int = 0,
) -> str:
    """The scenario that replays these sessions: a file users can read, edit and serve.

    ``not_recorded``: sessions relayed after the recording reached its bound, said in a comment.
    """
    upstream = describe_upstream(sessions)
    rules, notes = plan_rules(
        sessions, upstream, keep_bodies=keep_bodies, delay_threshold=delay_threshold
    )
    started = min((s.started_at for s in sessions), default=time.time())
    out = [
        f"# Recorded by `fakesmtp record` from {upstream_name}, starting {_when(started)}:",
        f"# {len(sessions)} session{'s' if len(sessions) != 1 else ''}. "
        "Serve it with `fakesmtp serve --scenario THIS_FILE`.",
        "# Replies fakesmtp gives by itself (250 Ok, 354, 221 Bye...) are not written as rules.",
        "# No credentials were kept, "
        + ("and message text only where shown." if keep_bodies else "nor any message text."),
        f"name: {_quote('recorded-' + _slug(upstream_name))}",
        f"description: {_quote(f'What {upstream_name} answered, recorded by fakesmtp record.')}",
    ]
    if not_recorded:
        out.insert(2, f"# {not_recorded} later session(s) were relayed but not recorded (bound).")
    out += _server_yaml(upstream)
    out += [f"# {note}" for note in notes]
    if rules:
        out.append("rules:")
        for rule in rules:
            out += _rule_yaml(rule, upstream, keep_bodies)
    else:
        out.append("rules: []  # nothing the upstream said needs a rule")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- --append


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _node_value(node: yaml.Node) -> Any:
    constructor = yaml.constructor.SafeConstructor()
    return constructor.construct_object(node, deep=True)


def _existing_key(item: yaml.MappingNode) -> tuple[Any, ...] | None:
    """The (stage, match, outcome) of a rule already in the file, read from its YAML nodes."""
    fields = {str(k.value): v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
    if "on" not in fields:
        return None
    stage = _node_value(fields["on"])
    match = _node_value(fields["match"]) if "match" in fields else {}
    outcome: Outcome
    if "reply" in fields:
        reply = _node_value(fields["reply"])
        if isinstance(reply, dict):
            text = reply.get("text", "")
            lines = tuple(text) if isinstance(text, list) else (str(text),)
            outcome = ("reply", reply.get("code"), reply.get("status"), lines)
        else:
            try:
                parsed = Reply.parse(str(reply))
            except ReplyError:
                return None
            outcome = ("reply", parsed.code, parsed.status, parsed.lines)
    elif "action" in fields:
        outcome = (str(_node_value(fields["action"])),)
    else:
        outcome = ("delay",)
    return (str(stage), _canonical(match), outcome)


def _planned_key(rule: PlannedRule, enhanced: bool) -> tuple[Any, ...]:
    """The key of a rule as it will be written (status folded into text when it is)."""
    outcome = rule.outcome
    if outcome[0] == "reply" and not enhanced and outcome[2] is not None:
        lines = tuple(f"{outcome[2]} {line}".rstrip() for line in outcome[3])
        outcome = ("reply", outcome[1], None, lines)
    match = {k: _match_value(k, v) for k, v in rule.match}
    return (rule.stage.value, _canonical(match), outcome)


def append_yaml(
    existing: str,
    sessions: Sequence[RecordedSession],
    upstream_name: str,
    *,
    source: str = "<existing>",
    keep_bodies: bool = False,
    delay_threshold: float = DELAY_THRESHOLD,
) -> str:
    """``existing`` with the rules of this recording it lacks, its own text and comments kept.

    A rule narrowed by ``match`` goes before the first rule of its stage that matches anything
    (first match wins, so after it, it would never fire); other new rules go at the end.
    """
    try:
        load_scenario_text(existing, source)
    except ScenarioError as error:
        raise AppendError(f"cannot append to an invalid scenario: {error}") from None
    upstream = describe_upstream(sessions)
    rules, _ = plan_rules(
        sessions, upstream, keep_bodies=keep_bodies, delay_threshold=delay_threshold
    )
    root = yaml.compose(existing, Loader=yaml.SafeLoader)
    lines = existing.splitlines()
    rules_node = None
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "rules":
                rules_node = value
    items: list[yaml.MappingNode] = []
    if rules_node is not None:
        if not isinstance(rules_node, yaml.SequenceNode) or (
            rules_node.flow_style and rules_node.value
        ):
            raise AppendError(f"{source}: rules must be a block list (one '- on:' per rule)")
        items = [item for item in rules_node.value if isinstance(item, yaml.MappingNode)]
    enhanced = _enhanced(existing, source)
    have = {key for item in items if (key := _existing_key(item)) is not None}
    indent = items[0].start_mark.column - 2 if items else 2
    inserts: dict[int, list[str]] = {}
    at_end: list[str] = []
    for rule in rules:
        key = _planned_key(rule, enhanced)
        if key in have:
            continue
        have.add(key)
        text = _reindent(_rule_yaml(rule, upstream, keep_bodies), indent)
        before = _catch_all(items, rule.stage) if rule.match else None
        if before is None:
            at_end += text
        else:
            inserts.setdefault(_comment_start(lines, before.start_mark.line), []).extend(text)
    if not inserts and not at_end:
        return existing
    out: list[str] = []
    for number, line in enumerate(lines):
        out += inserts.get(number, [])
        out.append(line)
    if at_end:
        if rules_node is None or (rules_node.flow_style and not rules_node.value):
            out = [line for line in out if not re.match(r"^rules:\s*\[\s*\]", line)]
            out.append("rules:")
            out += at_end
        else:
            end = rules_node.end_mark.line if items else len(out)
            end = min(end + sum(len(v) for k, v in inserts.items() if k < end), len(out))
            while end > 0 and not out[end - 1].strip():
                end -= 1
            out[end:end] = at_end
    return "\n".join(out) + "\n"


def _enhanced(text: str, source: str) -> bool:
    return load_scenario_text(text, source).server.enhanced_status


def _catch_all(items: Iterable[yaml.MappingNode], stage: Stage) -> yaml.MappingNode | None:
    """The first rule at ``stage`` with no ``match``: it would answer before a narrower rule."""
    for item in items:
        fields = {str(k.value): v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
        on = fields.get("on")
        if on is not None and getattr(on, "value", None) == stage.value and "match" not in fields:
            return item
    return None


def _comment_start(lines: list[str], line: int) -> int:
    """The first of the comment lines just above ``line`` (they describe that rule)."""
    # The item's mark is at its first key; the "- " is on the same line.
    while line > 0 and lines[line - 1].lstrip().startswith("#"):
        line -= 1
    return line


def _reindent(lines: list[str], indent: int) -> list[str]:
    if indent == 2:
        return lines
    pad = " " * indent
    return [pad + line[2:] if line.startswith("  ") else line for line in lines]
