"""The plain block YAML that big scenarios are written in, read straight to Python data.

libyaml hands PyYAML an event, then a node, with two marks, for every key and every value: for
a scenario of 100,000 rules that alone costs well over a second before anything is checked.
Scenario files use little of YAML: ``key: value`` lines, ``- `` items, plain or quoted scalars
and one-line ``{...}`` / ``[...]``. This reads that much with one regex pass over the lines
and builds no node objects.

It is never the authority. Given anything else (anchors, aliases, tags, block or multi-line
scalars, tabs, escapes, an odd indentation, a key given twice) it answers None, and the caller
loads the text with the YAML loader, which decides what the text means and words its errors.
Plain scalars are typed by PyYAML's own resolver and constructor, so ``yes``, ``0x1F`` or
``2026-01-01`` mean here what they mean there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

# One row per line: indentation, a "- " item marker, a `key:`, and the rest. A key is a plain
# word (header names, user names, snake_case settings); anything fancier is left to the loader.
_ROW = re.compile(r"( *)(-(?: +|$))?(?:([A-Za-z0-9_][A-Za-z0-9_.@+/-]*):(?: +|$))?(.*?) *$")
# At most 128 characters: YAML refuses a key longer than 1,024, and none of ours comes near.
_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.@+/-]{0,127}"
_FLOW_KEY = re.compile(_KEY)
# The one-line flow collections scenarios hold (`{to: "*@x.test"}`, `{to: [a, b]}`,
# `["a", "b"]`), matched whole in C; anything else goes through the slower reader below.
_QUOTED = r"\"[^\"\\]*\"|'[^']*'(?!')"
_PLAIN = r"[^\s,\[\]{}#:&*!|>'\"%@`?-][^,\[\]{}#:]*?(?= *[,\]}])"
_SCALAR = rf"(?:{_QUOTED}|{_PLAIN})"
_LIST = rf"\[ *{_SCALAR}(?: *, *{_SCALAR})* *\]"
_SIMPLE_FLOW = re.compile(
    rf"(\{{ *{_KEY}: +(?:{_SCALAR}|{_LIST})(?: *, *{_KEY}: +(?:{_SCALAR}|{_LIST}))* *\}}"
    rf"|{_LIST}) *(?:#.*)?"
)
_ONE_PAIR_ROW = re.compile(
    rf"( *)(- +)?({_KEY}): +\{{ *({_KEY}): +(?:(\"[^\"\\]*\"|'[^']*'(?!'))"
    rf"|([^\s,\[\]{{}}#:&*!|>'\"%@`?-][^,\[\]{{}}#:]*?)) *\}} *(?:#.*)?"
)
_FLOW_PAIR = re.compile(rf"({_KEY}): +({_SCALAR}|{_LIST})")
_FLOW_ITEM = re.compile(_SCALAR)
_DOUBLE_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# What PyYAML refuses to read, plus what this reader does not take on: tabs (YAML's rules for
# them are subtle), carriage returns not followed by a line feed, and YAML 1.1's other line
# breaks (NEL, LS, PS), which Python's `$` does not treat as line ends. A BOM inside the text too.
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)) + b"\n"
_OUTSIDE = re.compile(
    "[^\x0a\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
# First characters that make a plain scalar something else (alias, tag, anchor, block scalar,
# directive, reserved), or that YAML allows only in cases not worth the risk here (`-1`, `?x`).
_NOT_PLAIN_START = frozenset("-?:,[]{}#&*!|>%@`")
_MAX_FLOW_DEPTH = 8
# Each level of nesting is a call here and sits further right: past this column, a file is
# nested deeper than any scenario, and the loader (which allows 1,000 levels) takes it.
_MAX_COLUMN = 100
_STR_TAG = "tag:yaml.org,2002:str"


_UNSEEN = object()
_EMPTY = object()  # `key:` or `-` with nothing after it on its line


class _Unsupported(Exception):
    """Raised anywhere in the reader: hand the text to the YAML loader."""


@dataclass(frozen=True, slots=True)
class Sequence:
    """A block sequence read: its items, and the line (1-based) where each item begins."""

    items: list[Any]
    lines: list[int]


def read_sequence(text: str, first_line: int) -> Sequence | None:
    """Read ``text``, lines that hold one block sequence (a scenario's ``rules:`` body), whose
    first line is line ``first_line`` of the file. None: not in the subset (or not valid YAML);
    ask the YAML loader."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text.isascii():  # most files: a quick C pass leaves only what YAML would refuse
        if text.encode("ascii").translate(None, _PRINTABLE_ASCII):
            return None
    elif _OUTSIDE.search(text):
        return None
    try:
        return _Reader(text, first_line).document()
    except _Unsupported:
        return None


class _Reader:
    def __init__(self, text: str, first_line: int) -> None:
        self.plain: dict[str, Any] = {}  # plain text -> its value, resolved once per read
        # A line means the same wherever it is, and big scenarios repeat most of theirs
        # (`  - on: rcpt`, `    times: 1`): each distinct line is parsed once. Blank and
        # comment-only lines carry nothing and are left out.
        parsed: dict[str, tuple[int, int, str, Any] | None] = {}
        self.rows: list[tuple[int, int, str, Any]] = []  # indent, "- " length, key, value
        self.numbers: list[int] = []  # each row's line number
        for number, line in enumerate(text.split("\n"), first_line):
            row = parsed.get(line, _UNSEEN)
            if row is _UNSEEN:
                row = parsed[line] = self.row(line)
            if row is not None:
                self.rows.append(row)
                self.numbers.append(number)

    def row(self, line: str) -> tuple[int, int, str, Any] | None:
        pair = _ONE_PAIR_ROW.fullmatch(line)
        if pair is not None:  # `    match: {to: "*@x.test"}`, the line big files vary most
            indent, dash, key, inner, quoted, plain = pair.groups("")
            value = quoted[1:-1] if quoted else self.resolve(plain)
            return len(indent), len(dash), key, {inner: value}
        indent, dash, key, rest = _ROW.match(line).groups("")  # type: ignore[union-attr]
        if rest and rest[0] != "#":
            return len(indent), len(dash), key, self.scalar(rest)
        if dash or key:
            return len(indent), len(dash), key, _EMPTY
        return None

    def document(self) -> Sequence:
        rows = self.rows
        if not rows or not rows[0][1]:
            raise _Unsupported
        items, lines, end = self.sequence(0, rows[0][0])
        if end != len(rows):
            raise _Unsupported
        return Sequence(items, lines)

    def block(self, at: int) -> tuple[Any, int]:
        """The node whose first row is ``at``: a sequence or a mapping, at that row's indent."""
        indent, dash, key, _ = self.rows[at]
        if dash:
            items, _, end = self.sequence(at, indent)
            return items, end
        if key:
            return self.mapping(at, indent)
        raise _Unsupported  # a scalar on a line of its own, or a multi-line one

    def sequence(self, at: int, column: int) -> tuple[list[Any], list[int], int]:
        if column > _MAX_COLUMN:
            raise _Unsupported
        rows, count = self.rows, len(self.rows)
        items: list[Any] = []
        lines: list[int] = []
        while at < count:
            indent, dash, key, value = rows[at]
            if indent != column or not dash:
                break
            number = self.numbers[at]
            if key:  # `- on: rcpt`: a mapping begins on the item's line
                value, at = self.mapping(at, column + dash)
            elif value is not _EMPTY:
                at += 1
            elif at + 1 < count and rows[at + 1][0] > column:  # `-` alone, its node below
                number = self.numbers[at + 1]
                value, at = self.block(at + 1)
            else:
                raise _Unsupported  # an empty item (null): rare, and the loader words it
            items.append(value)
            lines.append(number)
        if at < count and rows[at][0] > column:
            raise _Unsupported  # more indented than the items: a continuation, or a mistake
        return items, lines, at

    def mapping(self, at: int, column: int) -> tuple[dict[str, Any], int]:
        if column > _MAX_COLUMN:
            raise _Unsupported
        rows, count = self.rows, len(self.rows)
        mapping: dict[str, Any] = {}
        first = True
        while at < count:
            indent, dash, key, value = rows[at]
            if not first and (indent != column or dash):
                break
            first = False
            if not key or key in mapping:
                raise _Unsupported
            at += 1
            if value is not _EMPTY:
                mapping[key] = value
            elif at < count and rows[at][0] > column:
                mapping[key], at = self.block(at)
            elif at < count and rows[at][0] == column and rows[at][1]:
                # `key:` then `- item` lines at the key's own indent: a sequence, YAML allows it.
                mapping[key], _, at = self.sequence(at, column)
            else:
                raise _Unsupported  # `key:` with nothing: null, rare, left to the loader
        if at < count and rows[at][0] > column:
            raise _Unsupported
        return mapping, at

    # -- scalars and one-line flow collections

    def scalar(self, text: str) -> Any:
        """A value written after `key: ` or `- `, comments included."""
        first = text[0]
        if first == "{" or first == "[":
            simple = _SIMPLE_FLOW.fullmatch(text)
            if simple is not None:
                return self.simple_flow(simple.group(1))
        if first == "'" or first == '"' or first == "{" or first == "[":
            value, end = self.flow_value(text, 0, 0)
            rest = text[end:].lstrip(" ")
            if rest and rest[0] != "#":
                raise _Unsupported
            return value
        if first in _NOT_PLAIN_START:
            raise _Unsupported
        cut = text.find(" #")
        if cut >= 0:
            text = text[:cut].rstrip(" ")
        if ": " in text or text[-1] == ":":
            raise _Unsupported  # YAML reads a mapping there, or refuses it
        return self.resolve(text)

    def simple_flow(self, text: str) -> dict[str, Any] | list[Any]:
        """A collection `_SIMPLE_FLOW` matched: flat, its scalars quoted without escapes."""
        if text[0] == "[":
            return [self.flow_scalar(item) for item in _FLOW_ITEM.findall(text)]
        pairs = _FLOW_PAIR.findall(text)
        mapping = {
            key: (
                [self.flow_scalar(item) for item in _FLOW_ITEM.findall(value)]
                if value[0] == "["
                else self.flow_scalar(value)
            )
            for key, value in pairs
        }
        if len(mapping) != len(pairs):
            raise _Unsupported  # a key given twice: the loader says so
        return mapping

    def flow_scalar(self, text: str) -> Any:
        first = text[0]
        if first == '"' or first == "'":
            return text[1:-1]
        return self.resolve(text)

    def resolve(self, text: str) -> Any:
        if text[0] not in _TYPED_FIRST:
            return text  # no implicit type starts with this character: a string
        value = self.plain.get(text, self)
        if value is self:
            tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
            if tag == _STR_TAG:
                value = text
            else:
                try:
                    value = _CONSTRUCTOR.construct_object(yaml.ScalarNode(tag, text), deep=True)
                except yaml.YAMLError:
                    raise _Unsupported from None  # `=` and the like: the loader words it
            self.plain[text] = value
        return value

    def flow_value(self, text: str, at: int, depth: int) -> tuple[Any, int]:
        """The value starting at ``text[at]`` inside or as a flow collection; returns it and
        the index after it."""
        first = text[at] if at < len(text) else ""
        if first == "'":
            end = at + 1
            while True:
                end = text.find("'", end)
                if end < 0:
                    raise _Unsupported  # continues on the next line
                if text[end + 1 : end + 2] != "'":
                    break
                end += 2
            return text[at + 1 : end].replace("''", "'"), end + 1
        if first == '"':
            found = _DOUBLE_QUOTED.match(text, at)
            if found is None:
                raise _Unsupported
            quoted = found.group()
            if "\\" in quoted:
                # YAML's escapes are many (\x41, \u00e9, \N, \_ ...): let the loader read this one.
                try:
                    value = yaml.load(quoted, Loader=_SCALAR_LOADER)
                except yaml.YAMLError:
                    raise _Unsupported from None  # an escape YAML does not have
                if not isinstance(value, str):
                    raise _Unsupported
                return value, found.end()
            return quoted[1:-1], found.end()
        if first == "{" or first == "[":
            if depth >= _MAX_FLOW_DEPTH:
                raise _Unsupported
            return self.flow_collection(text, at, depth + 1)
        # A plain scalar inside a flow collection: up to the next , ] or }.
        end = at
        length = len(text)
        while end < length and text[end] not in ",]}":
            end += 1
        plain = text[at:end].rstrip(" ")
        if not plain or plain[0] in _NOT_PLAIN_START or ":" in plain or "#" in plain:
            raise _Unsupported
        return self.resolve(plain), end

    def flow_collection(self, text: str, at: int, depth: int) -> tuple[Any, int]:
        closer = "}" if text[at] == "{" else "]"
        mapping: dict[str, Any] | None = {} if closer == "}" else None
        items: list[Any] = []
        at = _skip_spaces(text, at + 1)
        if text[at : at + 1] == closer:
            return (mapping if mapping is not None else items), at + 1
        while True:
            if mapping is not None:
                key, at = self.flow_key(text, at)
                if key in mapping:
                    raise _Unsupported
                value, at = self.flow_value(text, _skip_spaces(text, at), depth)
                mapping[key] = value
            else:
                value, at = self.flow_value(text, at, depth)
                items.append(value)
            at = _skip_spaces(text, at)
            following = text[at : at + 1]
            if following == closer:
                return (mapping if mapping is not None else items), at + 1
            if following != ",":
                raise _Unsupported
            at = _skip_spaces(text, at + 1)
            if text[at : at + 1] in (closer, ""):
                raise _Unsupported  # a trailing comma, or the collection goes on below

    def flow_key(self, text: str, at: int) -> tuple[str, int]:
        """``key: `` or ``"key":`` inside ``{...}``; returns the key and the index after ':'."""
        if text[at : at + 1] in ('"', "'"):
            key, at = self.flow_value(text, at, 0)
            at = _skip_spaces(text, at)
            if text[at : at + 1] != ":":
                raise _Unsupported
            return key, at + 1
        found = _FLOW_KEY.match(text, at)
        if found is None or text[found.end() : found.end() + 2] != ": ":
            raise _Unsupported
        return found.group(), found.end() + 2


def _skip_spaces(text: str, at: int) -> int:
    while text[at : at + 1] == " ":
        at += 1
    return at


# The safe loader's resolver and constructor: the same typing as a file loaded the slow way.
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
# The first characters PyYAML's implicit types (bool, int, float, null, timestamp, merge...)
# can start with; any other plain scalar is a string without asking the resolver.
_TYPED_FIRST = frozenset(key for key in _RESOLVER.yaml_implicit_resolvers if key)
_SCALAR_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
