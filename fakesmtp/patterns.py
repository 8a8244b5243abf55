"""Compiled matchers for rule conditions: globs, /regex/, CIDR, size comparisons, durations."""

from __future__ import annotations

import fnmatch
import ipaddress
import operator
import re
from collections.abc import Callable, Sequence

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
    return lambda value: any(m(value) for m in matchers)


def _compile_one(spec: str) -> TextMatcher:
    if not isinstance(spec, str):
        raise PatternError(f"{spec!r} is not a string")
    regex = _REGEX_RE.match(spec)
    if regex:
        flags = 0
        for letter in regex.group(2):
            flags |= {"i": re.I, "m": re.M, "s": re.S, "x": re.X}[letter]
        try:
            compiled = re.compile(regex.group(1), flags)
        except re.error as error:
            raise PatternError(f"regular expression {spec} does not compile: {error}") from None
        return lambda value: compiled.search(value) is not None
    if not any(ch in spec for ch in "*?["):
        wanted = spec.casefold()
        return lambda value: value.casefold() == wanted
    # Addresses and host names compare case-insensitively, so globs do too.
    compiled = re.compile(fnmatch.translate(spec.casefold()), re.DOTALL)
    return lambda value: compiled.match(value.casefold()) is not None


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
