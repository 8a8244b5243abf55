"""Compiled matchers for rule conditions: globs, /regex/, CIDR, size comparisons, durations."""

from __future__ import annotations

import ipaddress
import operator
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import re2

TextMatcher = Callable[[str], bool]
SizeMatcher = Callable[[int], bool]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}  # fmt: skip
_COMPARISON_RE = re.compile(r"^\s*(<=|>=|==|!=|<|>|=)?\s*(.+)$")
_COMPARATORS = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "=": operator.eq, "==": operator.eq, "!=": operator.ne, None: operator.eq,
}  # fmt: skip
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_REGEX_RE = re.compile(r"^/(.*)/([imsx]*)$", re.DOTALL)


class PatternError(ValueError):
    """A pattern that cannot be compiled; the message says why."""


def compile_text(spec: str | Sequence[str]) -> TextMatcher:
    """A glob (case-insensitive), a ``/regex/flags``, or a list meaning any of them."""
    if isinstance(spec, str):
        return _compile_one(spec)
    matchers = tuple(_compile_one(item) for item in spec)
    matcher = lambda value: any(m(value) for m in matchers)  # noqa: E731
    globs = [getattr(m, "globs", None) for m in matchers]
    if all(globs):
        matcher.globs = tuple(g for some in globs for g in some)  # type: ignore[attr-defined,union-attr]
    return matcher


def _glob(matcher: TextMatcher, spec: str) -> TextMatcher:
    """Note on a glob's matcher the glob it stands for, so that the engine can join a stage's
    globs into one regex (stagefilter.py). Only ASCII ones: there casefold() and RE2's
    case-insensitive matching surely agree."""
    if spec.isascii():
        matcher.globs = (spec,)  # type: ignore[attr-defined]
    return matcher


# Matchers are pure functions: one per distinct spec, across rules and loads (a scenario
# that lists `*@example.test` among other patterns 20,000 times builds it once).
@lru_cache(maxsize=4096)
def _compile_one(spec: str) -> TextMatcher:
    if not isinstance(spec, str):
        raise PatternError(f"{spec!r} is not a string")
    regex = _REGEX_RE.match(spec)
    if regex:
        flags = regex.group(2)
        if "x" in flags:
            raise PatternError(
                f"regular expression {spec} uses flag x (verbose), which RE2 does not have; "
                "write the pattern without spaces and comments"
            )
        inline = f"(?{''.join(sorted(set(flags)))})" if flags else ""
        compiled = compile_re2(inline + regex.group(1), spec)
        return lambda value: compiled.search(value) is not None
    if "*" not in spec and "?" not in spec and "[" not in spec:
        wanted = spec.casefold()
        return _glob(lambda value: value.casefold() == wanted, spec)
    # Addresses and host names compare case-insensitively, so globs do too.
    simple = _simple_glob(spec.casefold())
    if simple is not None:
        return _glob(simple, spec)
    compiled = compile_re2(glob_to_re2(spec), spec)
    return _glob(lambda value: compiled.fullmatch(value) is not None, spec)


def _simple_glob(glob: str) -> TextMatcher | None:
    """``*@x.test``, ``bob@*``, ``*bounce*``: string tests, no regex to build. Most globs in
    scenarios look like these, and a scenario of 100,000 rules then loads in seconds."""
    if "?" in glob or "[" in glob:
        return None
    inner = glob.strip("*")
    if "*" in inner:
        if glob[0] == "*" or glob[-1] == "*" or glob.count("*") != 1:
            return None
        head, _, tail = glob.partition("*")  # user@*.test
        least = len(head) + len(tail)

        def around(value: str) -> bool:
            folded = value.casefold()
            return len(folded) >= least and folded.startswith(head) and folded.endswith(tail)

        return around
    if glob.startswith("*") and glob.endswith("*") and len(glob) > 1:
        return lambda value: inner in value.casefold()
    if glob.startswith("*"):
        return lambda value: value.casefold().endswith(inner)
    if glob.endswith("*"):
        return lambda value: value.casefold().startswith(inner)
    return None


# --------------------------------------------------------------------------- RE2

# Scenario patterns run on RE2, whose time is linear in the input: no pattern a user writes
# can stall the event loop every session shares (Python's re takes exponential time on
# /^(a+)+$/). RE2 leaves out the features that need backtracking; say which one was used.
_UNSUPPORTED = (
    ("(?=", "a lookahead (?=...)"),
    ("(?!", "a negative lookahead (?!...)"),
    ("(?<=", "a lookbehind (?<=...)"),
    ("(?<!", "a negative lookbehind (?<!...)"),
    ("(?>", "an atomic group (?>...)"),
    ("(?P=", "a backreference (?P=name)"),
    ("(?#", "a comment (?#...)"),
)
_BACKREFERENCE_RE = re.compile(r"invalid escape sequence: \\([1-9]\d*)")
_ESCAPE_RE = re.compile(r"invalid escape sequence: (\\.)")
_REPEAT_RE = re.compile(r"bad repetition operator: (\S+)")


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # our message says what is wrong; RE2's stderr line would not
# re2.compile() copies its options field by field into a new Options and looks the pattern up
# in a 128-entry cache on every call: two thirds of the cost of a short pattern, and a
# scenario of 100,000 rules may hold 20,000 regexes. The pattern class it ends in takes our
# one (never changed) Options as it is; were it renamed in a later google-re2, compile() is
# still there.
_RE2_PATTERN = getattr(re2, "_Regexp", None)


def compile_re2(pattern: str, spec: str) -> Any:
    """Compile for RE2, or raise PatternError naming the construct RE2 does not take."""
    try:
        if _RE2_PATTERN is not None:
            return _RE2_PATTERN(pattern, _RE2_OPTIONS)
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as error:
        raise PatternError(_re2_problem(spec, pattern, error)) from None


def _re2_problem(spec: str, pattern: str, error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    reason = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    construct = None
    for marker, name in _UNSUPPORTED:
        if marker in pattern:
            construct = name
            break
    if construct is None and (found := _BACKREFERENCE_RE.search(reason)):
        construct = f"a backreference \\{found[1]}"
    elif construct is None and (found := _REPEAT_RE.search(reason)):
        construct = f"the repetition {found[1]} (possessive or nested)"
    elif construct is None and (found := _ESCAPE_RE.search(reason)):
        construct = f"the escape {found[1]}"
    if construct is not None:
        return (
            f"regular expression {spec} uses {construct}, which RE2 cannot run "
            "(scenario patterns run in linear time, so none can stall the server)"
        )
    return f"regular expression {spec} does not compile: {reason}"


def glob_to_re2(glob: str) -> str:
    """A shell glob as an RE2 pattern for the whole value: ``*`` any run, ``?`` one character,
    ``[abc]`` / ``[!abc]`` a set; case-insensitive; everything else literal."""
    out = ["(?is)"]
    i, n = 0, len(glob)
    while i < n:
        ch = glob[i]
        i += 1
        if ch == "*":
            while i < n and glob[i] == "*":  # ** is *: one .* keeps the pattern small
                i += 1
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = i
            if j < n and glob[j] in "!^":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal [
                out.append(re.escape("["))
                continue
            body = glob[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            # Inside a set only \ ] and ^ need escaping; ranges (a-z) stay ranges.
            body = body.replace("\\", "\\\\").replace("]", "\\]").replace("^", "\\^")
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def compile_cidr(spec: str | Sequence[str]) -> TextMatcher:
    """An IP address or network (``192.0.2.0/24``, ``::1``), or a list meaning any of them."""
    items = [spec] if isinstance(spec, str) else list(spec)
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise PatternError(f"{item!r} is not an IP address or CIDR network") from None

    def matches(value: str) -> bool:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(address in network for network in networks)

    return matches


def parse_size(value: str | int) -> int:
    """``10MiB`` -> 10485760; ``1kB`` -> 1000; a bare number is bytes."""
    if isinstance(value, bool):
        raise PatternError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise PatternError(f"size {value} is negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise PatternError(f"{value!r} is not a size like 512, 64KiB, 10MB")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])


def compile_size(spec: str | int) -> SizeMatcher:
    """``">1MiB"``, ``"<=512"``, ``"1000"``: a comparison against the message size."""
    match = _COMPARISON_RE.match(str(spec))
    if not match:
        raise PatternError(f"{spec!r} is not a size comparison like >1MiB")
    compare = _COMPARATORS[match.group(1)]
    limit = parse_size(match.group(2))
    return lambda size: compare(size, limit)


def compile_count(spec: str | int) -> Callable[[int], bool]:
    """``">3"``, ``">=4"``, ``"2"``: a comparison against a whole number (open sessions)."""
    match = _COMPARISON_RE.match(str(spec))
    if not match or isinstance(spec, bool) or not match.group(2).strip().isdigit():
        raise PatternError(f"{spec!r} is not a count comparison like >3")
    compare = _COMPARATORS[match.group(1)]
    limit = int(match.group(2))
    return lambda count: compare(count, limit)


def parse_duration(value: str | float) -> float:
    """``2s``, ``500ms``, ``1m``, or a number of seconds."""
    if isinstance(value, bool):
        raise PatternError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise PatternError(f"{value!r} is not a duration like 2s, 500ms, 1m")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise PatternError(f"duration {value!r} is negative")
    return seconds
