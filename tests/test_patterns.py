"""Rule conditions, compiled once: globs, /regex/, CIDR, sizes, counts and durations."""

from __future__ import annotations

import pytest

from fakesmtp.patterns import (
    PatternError,
    compile_cidr,
    compile_count,
    compile_size,
    compile_text,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("pattern", "hits", "misses"),
    [
        ("bob@example.test", ["bob@example.test", "BOB@Example.TEST"], ["bob@example.testx"]),
        ("*@full.test", ["a@full.test", "A@FULL.TEST"], ["a@full.test.evil", "a@notfull.test."]),
        ("user?@x.test", ["user1@x.test"], ["user12@x.test"]),
        ("[ab]*@x.test", ["a1@x.test", "b@x.test"], ["c@x.test"]),
        ("/^rcpt-\\d+@/", ["rcpt-550@x.test"], ["RCPT-550@x.test", "x-rcpt-550@x.test"]),
        ("/^rcpt-\\d+@/i", ["RCPT-550@x.test"], ["rcpt-x@x.test"]),
        ("/invoice/", ["your invoice #1"], ["Invoice"]),
        (["a@x.test", "*@y.test"], ["a@x.test", "z@y.test"], ["b@x.test"]),
    ],
)
def test_text_patterns(pattern: str | list[str], hits: list[str], misses: list[str]) -> None:
    matches = compile_text(pattern)
    assert [matches(value) for value in hits] == [True] * len(hits)
    assert [matches(value) for value in misses] == [False] * len(misses)


def test_a_regex_that_does_not_compile_says_so() -> None:
    with pytest.raises(PatternError, match=r"regular expression /\(/ does not compile"):
        compile_text("/(/")


def test_cidr_patterns() -> None:
    matches = compile_cidr(["192.0.2.0/24", "::1"])
    assert [matches(a) for a in ("192.0.2.9", "::1", "198.51.100.1", "not an ip")] == [
        True, True, False, False
    ]  # fmt: skip
    with pytest.raises(PatternError, match=r"'192\.0\.2\.300' is not an IP address or CIDR"):
        compile_cidr("192.0.2.300")


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), (512, 512), ("64KiB", 65536), ("1kB", 1000), ("10MB", 10**7),
     ("10MiB", 10 * 1024**2), ("1.5k", 1500), ("2 GiB", 2 * 1024**3)],
)  # fmt: skip
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["big", "-1", -1, True, "10 parsecs"])
def test_what_is_not_a_size(bad: object) -> None:
    with pytest.raises(PatternError):
        parse_size(bad)  # type: ignore[arg-type]


def test_size_and_count_comparisons() -> None:
    over = compile_size(">1MiB")
    assert (over(1024**2), over(1024**2 + 1)) == (False, True)
    assert compile_size("<=512")(512) and not compile_size("!=512")(512)
    assert compile_size("1000")(1000)  # a bare size means "exactly"
    three_or_more = compile_count(">=3")
    assert (three_or_more(2), three_or_more(3)) == (False, True)
    with pytest.raises(PatternError, match="not a count comparison"):
        compile_count(">lots")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0), (3, 3.0), ("1.5s", 1.5)],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "2 days", -1, True])
def test_what_is_not_a_duration(bad: object) -> None:
    with pytest.raises(PatternError):
        parse_duration(bad)  # type: ignore[arg-type]
