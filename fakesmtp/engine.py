"""Decide the reply for one stage: first firing rule, its counters, the seeded RNG. No I/O.

The engine runs on the server's single event loop and never awaits, so one decision is atomic
with respect to every other session: counters need no locks. Each scenario gets its own engine
(see session.profile.Profile), so a scenario swapped at run time starts with fresh counters
and a command is decided by one scenario, never half of each.
"""

from __future__ import annotations

import inspect
import random
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .counters import CounterStore, MemoryCounters, OpenSessions
from .patterns import TextMatcher
from .reply import Reply
from .scenario import Match, Rule, Scenario
from .stagefilter import stage_filter
from .stages import MESSAGE_KEYS, Action, Per, Stage
from .store import MessageTooNested, parse_message

if TYPE_CHECKING:  # the email package is imported when a rule first reads a message
    from email.message import EmailMessage


@dataclass(slots=True, eq=False)  # compared and hashed by identity: one per session
class Facts:
    """What a session knows so far. The session updates it; the engine reads it (and keeps the
    session's own ``per: connection`` counts in it)."""

    session_id: str
    client: str
    tls: bool = False
    helo: str | None = None
    user: str | None = None
    sender: str | None = None  # MAIL FROM, once accepted
    recipient: str | None = None  # the recipient being tried at RCPT
    recipients: list[str] = field(default_factory=list)  # accepted recipients
    raw: bytes | None = None  # the message, at end_of_data
    received: int = 0  # BDAT: the message's bytes so far, before the LAST chunk makes it raw
    # per: connection counts live here and end with the session (the engine writes them);
    # counters_of says which engine state they belong to, so a reset or swap starts afresh.
    counters: MemoryCounters | None = None
    counters_of: object = None
    # The server's open sessions, for `concurrent` conditions (set when the session opens).
    sessions: OpenSessions | None = None
    _message: EmailMessage | None = None
    _headers: EmailMessage | None = None
    _subject: str | bool | None = False  # False: not looked up yet

    @property
    def size(self) -> int:
        return len(self.raw) if self.raw is not None else self.received

    @property
    def message(self) -> EmailMessage:
        """The message parsed on first use: only rules that look at headers or body pay for it."""
        if self._message is None:
            self._message = parse_message(self.raw or b"")
        return self._message

    @property
    def headers(self) -> EmailMessage:
        """Only the header section, parsed on first use: enough for subject and header rules."""
        if self._message is not None:
            return self._message
        if self._headers is None:
            import email.policy  # (the email package is imported when a rule first needs it)
            from email.parser import BytesHeaderParser

            parser = BytesHeaderParser(policy=email.policy.default)
            self._headers = parser.parsebytes(self.raw or b"")  # type: ignore[assignment]
        return self._headers  # type: ignore[return-value]

    @property
    def subject(self) -> str | None:
        """The Subject header, decoded. A plain ASCII one is read straight off the bytes; any
        other (encoded words, 8-bit, a header section the parser would end early) is parsed."""
        if self._subject is False:
            self._subject = _plain_subject(self.raw or b"")
            if self._subject is False:
                value = self.headers.get("subject")
                self._subject = None if value is None else str(value)
        return self._subject  # type: ignore[return-value]

    def new_transaction(self) -> None:
        """RSET, HELO/EHLO or the end of a message: the envelope is gone."""
        self.sender = None
        self.recipient = None
        self.recipients = []
        self.raw = None
        self.received = 0
        self._message = None
        self._headers = None
        self._subject = False


# A header section's lines: "Name: value" or a folded continuation.
_HEADER_LINES_RE = re.compile(rb"(?:(?:[!-9;-~]+:|[ \t])[^\n]*\n)*")
_SUBJECT_RE = re.compile(rb"^subject:[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)", re.I | re.M)
_FOLD_RE = re.compile(rb"\r?\n(?=[ \t])")


def _plain_subject(raw: bytes) -> str | bool | None:
    """The Subject of a message whose header section is plain ASCII, without the parser:
    its text, or None when there is none; False when only the parser can tell."""
    end = raw.find(b"\r\n\r\n")
    section = raw if end < 0 else raw[: end + 2]
    found = _SUBJECT_RE.search(section)
    if found is None:
        lines = _HEADER_LINES_RE.match(section)
        whole = lines is not None and lines.end() == len(section)
        return None if whole and section.isascii() else False
    value = found.group(1)
    if b"=?" in value or not value.isascii():
        return False  # encoded words or 8-bit text: the parser decodes them
    lines = _HEADER_LINES_RE.match(section, 0, found.start())
    if lines is None or lines.end() != found.start():
        return False  # a line the parser would take for the end of the headers
    return _FOLD_RE.sub(b"", value).rstrip(b"\r").decode("ascii")  # kept as the parser keeps it


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do instead of the normal reply. ``reply`` None with no action: wait, then default."""

    reply: Reply | None
    action: Action | None = None
    delay: float = 0.0
    rule: Rule | None = None
    to: str | None = None  # the recipient {to} renders at data / end_of_data
    count: int | None = None  # the rule's times/after count, this match included

    @property
    def note(self) -> str | None:
        """For the transcript: how many matches were counted (in the window) when it fired."""
        if self.rule is None or self.count is None:
            return None
        return count_text(self.rule, self.count)

    @property
    def rule_name(self) -> str | None:
        if self.rule is None:
            return f"address {self.to}" if self.reply is not None else None
        return self.rule.label


Check = Callable[[Stage, Facts], bool]


@dataclass(frozen=True, slots=True)
class Count:
    """One counted match: what the engine asks a counter store for a rule with times/after."""

    store: CounterStore
    key: str
    window: float | None
    limit: int
    amount: int = 1  # a volume rule counts the message's bytes, not one match


# The engine's decision loop, written once as a generator: it yields a Count whenever a rule
# needs one and is sent back the total. decide() answers from a synchronous store right away;
# decide_async() awaits a store (a networked one) whose hit() returns an awaitable.
Steps = Generator[Count, int, "Decision | None"]


class _State:
    """The mutable side of one scenario: reset() replaces it in one assignment."""

    __slots__ = ("by_stage", "checks", "filters", "held", "index", "keys", "rejected", "rng",
                 "scenario")  # fmt: skip

    def __init__(self, scenario: Scenario, previous: _State | None = None) -> None:
        self.scenario = scenario
        self.keys = _counter_keys(scenario, previous)
        # Grouped in lists, then frozen: one pass, linear in the number of rules (growing a
        # tuple per rule copied it each time, minutes for 100,000 rules with the loop blocked).
        grouped: dict[Stage, list[Rule]] = {}
        for rule in scenario.rules:
            grouped.setdefault(rule.on, []).append(rule)
        self.by_stage: dict[Stage, tuple[Rule, ...]] = {
            stage: tuple(rules) for stage, rules in grouped.items()
        }
        self.index = {id(rule): n for n, rule in enumerate(scenario.rules)}
        # Rules that share a Match (a repeated `match:` line, an alias) share its checks.
        compiled: dict[tuple[int, Per], tuple[tuple[str, Check], ...]] = {}
        self.checks = {}
        for rule in scenario.rules:
            shared = (id(rule.match), rule.per)
            checks = compiled.get(shared)
            if checks is None:
                checks = compiled[shared] = _compile_checks(rule.match, rule.per)
            self.checks[id(rule)] = checks
        # One regex per stage, where the rules allow it, says at once that none applies.
        self.filters = {
            stage: found for stage, rules in self.by_stage.items() if (found := stage_filter(rules))
        }
        self.rejected: Stage | None = None  # the stage the last decision's filter turned away
        self.rng = random.Random(scenario.seed)
        # The counts of the last decision that fired nothing, for why_not() to report.
        self.held: dict[int, int] = {}


class Engine:
    """Owns the mutable side of a scenario: counters for times/after and the random generator.

    ``counters`` keeps the counts of every ``per`` but ``connection`` (those live with the
    session, in its Facts, and go when it ends); by default an in-memory, bounded store.
    ``clock`` gives the seconds that ``within:`` windows are measured in.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        counters: CounterStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = _State(scenario)
        self.counters: CounterStore = counters if counters is not None else MemoryCounters()
        self.clock = clock
        # A networked store (redis_counters) answers hit() with an awaitable: use decide_async().
        self.awaits: bool = getattr(self.counters, "awaits", False)

    @property
    def scenario(self) -> Scenario:
        return self._state.scenario

    def reset(self) -> None:
        """Forget every count and reseed the generator, keeping the scenario."""
        self.counters.clear()
        self._state = _State(self._state.scenario)  # per-connection counts belong to the old one

    def keep_counts_of(self, previous: Engine) -> None:
        """Take over ``previous``'s counts for the rules both scenarios share (the same objects).

        Adding or removing one rule at run time must not restart the others' ``times``/``after``
        (a greylisting triplet, a ``times: 1`` that already fired), nor the random sequence.
        """
        self._state = _State(self._state.scenario, previous._state)
        self._state.rng = previous._state.rng
        self.counters = previous.counters

    def has_rules(self, stage: Stage) -> bool:
        return stage in self._state.by_stage

    def decide(self, stage: Stage, facts: Facts) -> Decision | None:
        """The first rule for ``stage`` that matches and fires, else the address reply."""
        state = self._state
        if self._none_can_fire(state, stage, facts):  # the common case: no generator, no count
            return self._fallback(state, stage, facts)
        steps = self._steps(state, stage, facts)
        try:
            count = next(steps)
            while True:
                count = steps.send(self._hit(count))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def decide_async(self, stage: Stage, facts: Facts) -> Decision | None:
        """As decide(), for a counter store whose hit() must be awaited."""
        state = self._state
        if self._none_can_fire(state, stage, facts):
            return self._fallback(state, stage, facts)
        steps = self._steps(state, stage, facts)
        try:
            count = next(steps)
            while True:
                total = self._hit(count)
                if inspect.isawaitable(total):
                    total = await total
                count = steps.send(total)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _none_can_fire(self, state: _State, stage: Stage, facts: Facts) -> bool:
        """No rules at this stage, or its filter shows none can match: no counting to do."""
        return stage not in state.by_stage or self._filtered(state, stage, facts)

    @staticmethod
    def _fallback(state: _State, stage: Stage, facts: Facts) -> Decision | None:
        """What answers when no rule fires: the address-driven reply, or the normal one."""
        if state.scenario.server.address_replies:
            return _address_decision(stage, facts)
        return None

    def _hit(self, count: Count) -> Any:
        """Add one match to its counter: the total, or an awaitable of it (a shared store)."""
        return count.store.hit(
            count.key, self.clock(), window=count.window, limit=count.limit, amount=count.amount
        )

    @staticmethod
    def _filtered(state: _State, stage: Stage, facts: Facts) -> bool:
        """True when the stage's filter shows that none of its rules can match ``facts``."""
        found = state.filters.get(stage)
        if found is not None and found.none_can_match(stage, facts):
            state.held, state.rejected = {}, stage
            return True
        state.rejected = None
        return False

    def _steps(self, state: _State, stage: Stage, facts: Facts) -> Steps:
        held: dict[int, int] = {}
        for rule in state.by_stage.get(stage, ()):
            if not _all_hold(state.checks[id(rule)], stage, facts):
                continue
            count = None
            if rule.volume is not None:  # bytes within the window, this message's included
                count = yield self._count(state, rule, stage, facts)
                if count <= rule.volume:
                    held[id(rule)] = count
                    continue
            elif rule.times is not None or rule.after:
                count = yield self._count(state, rule, stage, facts)
                if count <= rule.after or (
                    rule.times is not None and count > rule.after + rule.times
                ):
                    held[id(rule)] = count
                    continue
            if rule.probability is not None and state.rng.random() >= rule.probability:
                continue
            to = _matching_recipient(rule.match, stage, facts)
            return Decision(rule.reply, rule.action, rule.delay, rule, to, count)
        state.held = held
        return self._fallback(state, stage, facts)

    def _count(self, state: _State, rule: Rule, stage: Stage, facts: Facts) -> Count:
        """Which counter one match of ``rule`` adds to."""
        index = state.index[id(rule)]
        limit, amount = _count_limit(rule), 1
        if rule.volume is not None:
            amount = facts.size
        if rule.per is Per.CONNECTION:
            if facts.counters is None or facts.counters_of is not state:
                facts.counters, facts.counters_of = MemoryCounters(max_keys=1024), state
            return Count(facts.counters, str(index), rule.within, limit, amount)
        key = f"{state.keys[id(rule)]}\x1f{_count_key(rule.per, stage, facts)}"
        return Count(self.counters, key, rule.within, limit, amount)

    def why_not(self, stage: Stage, facts: Facts, limit: int = 3) -> str | None:
        """Why no rule of this stage fired, for the transcript: "why didn't my rule fire?".

        Call it right after a decide() that returned None: it reports that decision's counts.
        """
        state = self._state
        rules = state.by_stage.get(stage, ())
        if not rules:
            return None
        if state.rejected is stage and limit == 3:  # every rule failed on its one condition
            return state.filters[stage].note
        reasons = []
        for rule in rules[:limit]:
            failed = self._failed_keys(rule, stage, facts)
            if failed:
                reasons.append(f"{rule.label}: {', '.join(failed)} did not match")
            elif id(rule) in state.held:
                reasons.append(
                    f"{rule.label}: matched, but {_held_text(rule, state.held[id(rule)])}"
                )
            else:
                reasons.append(f"{rule.label}: matched, but probability held it back")
        more = f"; and {len(rules) - limit} more" if len(rules) > limit else ""
        return "no rule fired (" + "; ".join(reasons) + more + ")"

    def _failed_keys(self, rule: Rule, stage: Stage, facts: Facts) -> list[str]:
        return [key for key, check in self._state.checks[id(rule)] if not check(stage, facts)]


def _counter_keys(scenario: Scenario, previous: _State | None) -> dict[int, str]:
    """A name per rule for its counters: its position, the same in every process; rules kept
    from ``previous`` (a rule added or removed at run time) keep the name they had.
    """
    if previous is None:  # a new scenario: every rule is named by its position
        return {id(rule): str(n) for n, rule in enumerate(scenario.rules)}
    keys = {id(r): previous.keys[id(r)] for r in scenario.rules if id(r) in previous.keys}
    used = set(keys.values())
    for n, rule in enumerate(scenario.rules):
        if id(rule) in keys:
            continue
        key, again = str(n), 0
        while key in used:  # a position a kept rule's name already holds
            again += 1
            key = f"{n}.{again}"
        keys[id(rule)] = key
        used.add(key)
    return keys


def _all_hold(checks: tuple[tuple[str, Check], ...], stage: Stage, facts: Facts) -> bool:
    return all(check(stage, facts) for _, check in checks)


def _count_limit(rule: Rule) -> int:
    """How far a rule's count must be exact: past it, the rule's answer no longer changes."""
    if rule.volume is not None:
        return rule.volume + 1
    return rule.after + (rule.times or 0) + 1


def count_text(rule: Rule, count: int) -> str:
    """``counted 4 per client within 1m``: how a count reads in transcripts."""
    # A window keeps only what deciding needs: at its limit, the count means "this or more".
    limit = _count_limit(rule)
    number = f"{count} or more" if rule.within is not None and count >= limit else f"{count}"
    unit = " bytes" if rule.volume is not None else ""
    per = "" if rule.per is Per.SERVER else f" per {rule.per}"
    within = f" within {duration_text(rule.within)}" if rule.within is not None else ""
    return f"counted {number}{unit}{per}{within}"


def _held_text(rule: Rule, count: int) -> str:
    if rule.volume is not None:
        return f"{count_text(rule, count)} (it fires past {rule.volume} bytes)"
    if count <= rule.after:
        fires = f"fires after {rule.after}"
    else:
        fires = f"fires for {rule.after + 1} to {rule.after + (rule.times or 0)}"
        if not rule.after:
            fires = f"fires for the first {rule.times}"
    return f"{count_text(rule, count)} (it {fires})"


def duration_text(seconds: float) -> str:
    """60 -> ``1m``, 2 -> ``2s``, 0.5 -> ``500ms``: a duration as a scenario would write it."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def _count_key(per: Per, stage: Stage, facts: Facts) -> str:
    if per is Per.SERVER:
        return ""
    if per is Per.CLIENT:
        return facts.client
    if per is Per.SENDER:
        return (facts.sender or "").lower()
    recipient = facts.recipient if stage is Stage.RCPT else ",".join(facts.recipients)
    recipient = (recipient or "").lower()
    if per is Per.RECIPIENT:
        return recipient
    return f"{facts.client}\x1f{(facts.sender or '').lower()}\x1f{recipient}"  # Per.TRIPLET


def _matching_recipient(match: Match, stage: Stage, facts: Facts) -> str | None:
    """The recipient that satisfied `to`: what {to} renders when the rule fires."""
    if match.to is None:
        return None
    if stage is Stage.RCPT:
        return facts.recipient
    return next((r for r in facts.recipients if match.to(r)), None)


# --------------------------------------------------------------------------- compiled conditions


def _compile_checks(match: Match, per: Per) -> tuple[tuple[str, Check], ...]:
    """One small function per condition, built once per scenario, never per command.

    Envelope checks come first: the message ones may parse the message, and need not when an
    envelope condition already failed.
    """
    checks = [
        (key, _check_concurrent(match, per) if key == "concurrent" else _CHECK_BUILDERS[key](match))
        for key in match.keys
    ]
    if len(checks) > 1:
        checks.sort(key=lambda pair: pair[0] in MESSAGE_KEYS)
    return tuple(checks)


def _check_client(match: Match) -> Check:
    pattern = match.client
    assert pattern is not None
    return lambda stage, facts: pattern(facts.client)


def _check_optional(attribute: str, pattern: TextMatcher | None) -> Check:
    """A condition on a fact that may not be known yet (HELO name, sender, user)."""
    assert pattern is not None

    def check(stage: Stage, facts: Facts) -> bool:
        value = getattr(facts, attribute)
        return value is not None and pattern(value)

    return check


def _check_to(match: Match) -> Check:
    pattern = match.to
    assert pattern is not None

    def check(stage: Stage, facts: Facts) -> bool:
        if stage is Stage.RCPT:  # the recipient being tried
            return facts.recipient is not None and pattern(facts.recipient)
        return any(pattern(recipient) for recipient in facts.recipients)  # any accepted one

    return check


def _check_tls(match: Match) -> Check:
    wanted = match.tls
    return lambda stage, facts: facts.tls is wanted


def _check_concurrent(match: Match, per: Per) -> Check:
    """Open sessions now (this one included) per server, client or sender: the rule's ``per``."""
    compare = match.concurrent
    assert compare is not None

    def check(stage: Stage, facts: Facts) -> bool:
        sessions = facts.sessions
        return compare(sessions.count(per, facts) if sessions is not None else 1)

    return check


def _check_size(match: Match) -> Check:
    compare = match.size
    assert compare is not None
    return lambda stage, facts: compare(facts.size)


def _check_subject(match: Match) -> Check:
    pattern = match.subject
    assert pattern is not None

    def check(stage: Stage, facts: Facts) -> bool:
        subject = facts.subject
        return subject is not None and pattern(subject)

    return check


def _check_headers(match: Match) -> Check:
    headers = match.headers

    def check(stage: Stage, facts: Facts) -> bool:
        message = facts.headers
        for name, pattern in headers:
            if not any(pattern(str(value)) for value in message.get_all(name) or []):
                return False
        return True

    return check


def _check_body(match: Match) -> Check:
    pattern = match.body
    assert pattern is not None

    def check(stage: Stage, facts: Facts) -> bool:
        try:
            text = _body_text(facts.message)
        except (RecursionError, MessageTooNested):
            # MIME nested deeper than the email package can walk (it recurses per level): a
            # valid message all the same, so the rule looks at the raw body rather than the
            # session answering 451 for a bug of ours that is not one.
            raw = facts.raw or b""
            start = raw.find(b"\r\n\r\n")
            text = raw[start + 4 if start >= 0 else 0 :].decode("utf-8", "replace")
        return pattern(text)

    return check


_CHECK_BUILDERS: dict[str, Callable[[Match], Check]] = {
    "client": _check_client,
    "helo": lambda match: _check_optional("helo", match.helo),
    "from": lambda match: _check_optional("sender", match.sender),
    "user": lambda match: _check_optional("user", match.user),
    "to": _check_to,
    "tls": _check_tls,
    "size": _check_size,
    "subject": _check_subject,
    "header": _check_headers,
    "body": _check_body,
}


def _body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        payload = message.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    try:
        return str(part.get_content())
    except (LookupError, ValueError):
        return ""


# --------------------------------------------------------------------------- the default scenario

# `rcpt-550@x`, `550@x` (RCPT), `mail-451-4.7.1@x`, `data-554@x`, `end_of_data-552@x`
_ADDRESS_RE = re.compile(
    r"^(?:(?P<stage>mail|rcpt|data|end_of_data)-)?(?P<code>[2-5]\d\d)"
    r"(?:-(?P<status>[245]\.\d{1,3}\.\d{1,3}))?$",
    re.IGNORECASE,
)


@lru_cache(maxsize=512)
def _address_reply(local_part: str) -> tuple[Stage, Reply] | None:
    match = _ADDRESS_RE.match(local_part)
    if not match:
        return None
    from . import catalog_defaults  # the generated table: no catalog.yaml parse per address

    stage = Stage((match["stage"] or "rcpt").lower())
    code = int(match["code"])
    default_status, text = catalog_defaults.default_reply(code, stage.value)
    status = match["status"] if match["status"] and match["status"][0] == str(code)[0] else None
    try:
        return stage, Reply.make(code, status or default_status, text)
    except ValueError:
        return None


def _reply_from_address(address: str | None, stage: Stage) -> Reply | None:
    if not address:
        return None
    local = address.rpartition("@")[0] or address
    if not (local[:1].isdigit() or "-" in local):  # the common case costs one check
        return None
    found = _address_reply(local.lower())
    if found is None or found[0] is not stage:
        return None
    return found[1]


def _address_decision(stage: Stage, facts: Facts) -> Decision | None:
    """The default scenario: an address's local part asks for the reply at its stage."""
    if stage is Stage.MAIL:
        candidates = [facts.sender]
    elif stage is Stage.RCPT:
        candidates = [facts.recipient]
    elif stage in (Stage.DATA, Stage.END_OF_DATA):
        candidates = [*facts.recipients, facts.sender]
    else:
        return None
    for address in candidates:
        reply = _reply_from_address(address, stage)
        if reply is not None:
            action = Action.CLOSE if reply.closes else None
            return Decision(reply, action, 0.0, None, address)
    return None
