"""One compiled regex per stage that tells, in one match, that none of its rules can apply.

A load-test scenario often holds dozens of rules of one shape, ``match: {to: "*@x.test"}`` at
``rcpt``, and most commands match none of them. Trying each rule's glob costs one function call
and one regex per rule; when every rule of a stage has a single condition on the same fact, and
each is a glob or a literal, their regexes are joined into one. A value it does not match
matches no rule, and the engine skips the stage's rules at once; a value it matches goes through
the rules one by one as before (first match, counters, probability: nothing changes there).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .stages import Stage

if TYPE_CHECKING:
    from .engine import Facts
    from .scenario import Rule

# Past this many rules a stage keeps its loop: building one huge regex at every scenario swap
# or reset would cost more than it saves.
MAX_RULES = 1000

# The conditions a filter can stand for, and the Match attribute holding each one's matcher.
_MATCHERS = {"from": "sender", "to": "to", "helo": "helo", "subject": "subject"}


def _values(key: str) -> Callable[[Stage, Facts], Iterable[str]]:
    """What the condition ``key`` is tried against, as the engine's own checks read it."""
    if key == "from":
        return lambda stage, facts: () if facts.sender is None else (facts.sender,)
    if key == "helo":
        return lambda stage, facts: () if facts.helo is None else (facts.helo,)
    if key == "subject":
        return lambda stage, facts: () if (s := facts.subject) is None else (s,)

    def recipients(stage: Stage, facts: Facts) -> Iterable[str]:
        if stage is Stage.RCPT:  # the recipient being tried; elsewhere, any accepted one
            return () if facts.recipient is None else (facts.recipient,)
        return facts.recipients

    return recipients


@dataclass(slots=True)
class StageFilter:
    """Every rule of one stage, as one regex over one fact; and what the transcript then says."""

    globs: tuple[str, ...]  # casefolded, every rule's
    values: Callable[[Stage, Facts], Iterable[str]]
    note: str  # why no rule fired, when the filter alone says so
    # Compiled at the stage's first command, not when the engine is built: a server starts
    # (and a scenario swap or reset finishes) that much sooner.
    compiled: re.Pattern[str] | None = None

    @property
    def regex(self) -> re.Pattern[str]:
        if self.compiled is None:
            # Python's fnmatch, for the filter alone: the rules themselves run on RE2 as written.
            sources = [fnmatch.translate(glob) for glob in self.globs]
            self.compiled = re.compile("|".join(f"(?:{source})" for source in sources), re.DOTALL)
        return self.compiled

    def none_can_match(self, stage: Stage, facts: Facts) -> bool:
        match = (self.compiled or self.regex).match  # the property only the first time
        return not any(match(value.casefold()) for value in self.values(stage, facts))


def stage_filter(rules: tuple[Rule, ...], limit: int = 3) -> StageFilter | None:
    """The filter for a stage's ``rules``, or None when they are not all of one joinable shape."""
    keys = {rule.match.keys for rule in rules}
    if len(keys) != 1:
        return None
    (only,) = keys
    if len(only) != 1 or only[0] not in _MATCHERS:
        return None
    key = only[0]
    globs = [getattr(getattr(rule.match, _MATCHERS[key]), "globs", None) for rule in rules]
    if not all(globs) or len(globs) > MAX_RULES:  # a /regex/ keeps its flags and search
        return None
    folded = tuple(glob.casefold() for some in globs for glob in some)  # type: ignore[union-attr]
    # The very words Engine.why_not() would find, rule by rule, for a value matching none.
    reasons = [f"{rule.label}: {key} did not match" for rule in rules[:limit]]
    more = f"; and {len(rules) - limit} more" if len(rules) > limit else ""
    note = "no rule fired (" + "; ".join(reasons) + more + ")"
    return StageFilter(folded, _values(key), note)
