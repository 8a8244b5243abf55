"""PyYAML's scanner and parser errors -> where the mistake is and what to write instead.

PyYAML words its errors for people who know its grammar ("mapping values are not allowed
here"). Scenario authors make a handful of mistakes again and again: a reply text holding
``": "``, a glob starting with ``*``, a tab, a quote never closed. Each one is recognised here
from the error and the line it points at, and gets one line saying what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

# The key a value belongs to, at the end of the text before it: "    reply: ", "- to: ", "{to: ".
_KEY_BEFORE = re.compile(r"(?:^|[\s{,-])(?P<key>[A-Za-z_][\w.-]*)\s*:\s*$")
_KEY_AND_VALUE = re.compile(r"^(?P<indent>\s*(?:-\s+)?)(?P<key>[A-Za-z_][\w.-]*):\s+(?P<value>.*)$")
# "- on:rcpt": a key glued to its value, which YAML reads as one plain word.
_GLUED_KEY = re.compile(r"^(?P<indent>\s*(?:-\s+)?)(?P<key>[A-Za-z_][\w.-]*):(?P<value>[^\s/].*)$")
_CANNOT_START = re.compile(r"found character '(?P<char>.+)' that cannot start any token")
_OPENERS = {"{": "}", "[": "]"}


@dataclass(frozen=True, slots=True)
class YamlMistake:
    """Where PyYAML stopped (1-based line, 0-based column), why, and what to do about it."""

    line: int
    column: int | None
    reason: str
    hint: str = ""


def quoted(value: str) -> str:
    """``value`` as a double-quoted YAML string (the form that can hold any text)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(text: str, index: int) -> str:
    lines = text.splitlines()
    return lines[index] if 0 <= index < len(lines) else ""


def _value_from(line: str, column: int, *, in_flow: bool) -> str:
    """The plain value starting at ``column``: to the end of the line, or of the flow item."""
    value = line[column:]
    if " #" in value:
        value = value.split(" #", 1)[0]
    if in_flow:
        value = re.split(r"[,}\]]", value, maxsplit=1)[0]
    return value.strip()


def _quote_hint(line: str, column: int, char: str) -> str:
    """``a value starting with * must be quoted: to: "*@x.test"``."""
    before = line[:column]
    key = _KEY_BEFORE.search(before)
    value = _value_from(line, column, in_flow="{" in before or "[" in before)
    advice = f"a value starting with {char} must be quoted"
    if key and value:
        return f"{advice}: {key['key']}: {quoted(value)}"
    return f"{advice}: {quoted(value)}" if value else advice


def _colon_hint(line: str, column: int) -> str | None:
    """A ``: `` inside a value: ``quote the reply: reply: "550 5.1.1 <{to}>: ..."``.

    None when the colon at ``column`` is not inside a value (then it is an indentation slip).
    """
    before = line[:column]
    in_flow = [m for m in re.finditer(r"[{,]\s*(?P<key>[A-Za-z_][\w.-]*):\s+", before)]
    if in_flow:  # {to: x, reply: 550 <x>: no}: the value runs to the next , or }
        last = in_flow[-1]
        value = before[last.end() :] + re.split(r"[,}]", line[column:], maxsplit=1)[0]
        key = last["key"]
    else:
        whole = _KEY_AND_VALUE.match(line)
        if not whole or len(whole["indent"]) + len(whole["key"]) >= column:
            return None
        key, value = whole["key"], whole["value"]
        if " #" in value:
            value = value.split(" #", 1)[0]
    return f'quote the {key}, it holds ": ": {key}: {quoted(value.strip())}'


def _unclosed(text: str, upto_line: int) -> tuple[int, int, str] | None:
    """The last ``{`` or ``[`` left open before ``upto_line`` (outside quotes and comments)."""
    stack: list[tuple[int, int, str]] = []
    for number, line in enumerate(text.splitlines()[: upto_line + 1]):
        quote = ""
        for column, char in enumerate(line):
            if quote:
                if char == quote:
                    quote = ""
            elif char in "\"'" and (column == 0 or line[column - 1] in " \t{[,:"):
                quote = char
            elif char == "#" and (column == 0 or line[column - 1] in " \t"):
                break
            elif char in _OPENERS:
                stack.append((number, column, char))
            elif char in "}]" and stack:
                if _OPENERS[stack[-1][2]] != char:
                    return stack[-1]  # {to: [a, b}: the [ is the one left open
                stack.pop()
    return stack[-1] if stack else None


def explain(error: yaml.YAMLError, text: str) -> YamlMistake:
    """Turn PyYAML's error about ``text`` into a YamlMistake with a hint where one is known."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None) or ""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    context_mark = getattr(error, "context_mark", None)
    if mark is None:
        return YamlMistake(1, None, problem)
    line_text = _line(text, mark.line)
    found = YamlMistake(mark.line + 1, mark.column, problem)

    def at(hint: str, where: yaml.Mark | None = None) -> YamlMistake:
        where = where or mark
        return YamlMistake(where.line + 1, where.column, problem, hint)

    cannot_start = _CANNOT_START.search(problem)
    if cannot_start:
        char = cannot_start["char"]
        if char == "\\t":
            return at("indent with spaces, not tabs")
        return at(_quote_hint(line_text, mark.column, char))
    if context == "while scanning an alias" and context_mark is not None:
        return at(
            _quote_hint(_line(text, context_mark.line), context_mark.column, "*"), context_mark
        )
    if context == "while scanning an anchor" and context_mark is not None:
        return at(
            _quote_hint(_line(text, context_mark.line), context_mark.column, "&"), context_mark
        )
    if problem.startswith("found undefined alias"):
        return at(_quote_hint(line_text, mark.column, "*"))
    in_value = _colon_hint(line_text, mark.column)
    if problem == "mapping values are not allowed here" and in_value is None and mark.line > 0:
        glued = _GLUED_KEY.match(_line(text, mark.line - 1))
        if glued:  # "- on:rcpt" is one word to YAML, so the next line's key makes no sense
            key, value = glued["key"], glued["value"]
            return YamlMistake(
                mark.line,
                len(glued["indent"]) + len(key),
                problem,
                f"put a space after the colon: {key}: {value}",
            )
    if problem == "could not find expected ':'" and context_mark is not None:
        bare = _line(text, context_mark.line)[context_mark.column :].strip()
        key, _, value = bare.partition(" ")
        if key and value and re.fullmatch(r"[A-Za-z_][\w.-]*", key):
            return at(f"a key needs a colon after it: {key}: {value}", context_mark)
    if problem == "mapping values are not allowed here":
        return at(
            in_value or "check the indentation: the keys of one mapping start in the same column"
        )
    if context == "while scanning a quoted scalar" and context_mark is not None:
        quote = _line(text, context_mark.line)[context_mark.column : context_mark.column + 1]
        inside = "write '' for a ' inside it" if quote == "'" else 'write \\" for a " inside it'
        return at(
            f"this {quote} is never closed: end the value with {quote} ({inside})", context_mark
        )
    if context.startswith("while parsing a flow") or "<stream end>" in problem:
        colon = _colon_hint(line_text, mark.column) if "got ':'" in problem else None
        if colon is not None and context_mark is not None and context_mark.line == mark.line:
            return at(colon)  # {reply: 550 <x>: no}
        opened = _unclosed(text, mark.line)
        if opened is not None:
            number, column, char = opened  # point at the opener: that is what to close
            hint = f"this {char} is never closed: add {_OPENERS[char]} where the list ends"
            if char == "{":
                hint = f"this {char} is never closed: add {_OPENERS[char]} where the mapping ends"
            return YamlMistake(number + 1, column, problem, hint)
    if "expected <block end>" in problem or "could not find expected ':'" in problem:
        return at(
            'check the indentation: the keys of one mapping, and the "- " of one list, '
            "start in the same column"
        )
    return found
