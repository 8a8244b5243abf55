"""Reply values: the one grammar of a reply line, parsing what users write, rendering the wire."""

from __future__ import annotations

import pytest

from fakesmtp.reply import Reply, ReplyError, ReplyLine, expand, parse_reply_line


@pytest.mark.parametrize(
    ("line", "read"),
    [
        ("550 5.1.1 No such user", ReplyLine(550, False, "5.1.1", "No such user")),
        ("550-5.1.1 first of two", ReplyLine(550, True, "5.1.1", "first of two")),
        ("451 Try again later", ReplyLine(451, False, None, "Try again later")),
        ("250", ReplyLine(250, False, None, "")),
        ("421 4.7.0", ReplyLine(421, False, "4.7.0", "")),
        ("550 5.1.10 RESOLVER.ADR.RecipientNotFound", ReplyLine(550, False, "5.1.10",
                                                                "RESOLVER.ADR.RecipientNotFound")),
        ("552 5.3.4text", ReplyLine(552, False, None, "5.3.4text")),  # a status needs a space
    ],
)  # fmt: skip
def test_the_reply_line_grammar(line: str, read: ReplyLine) -> None:
    assert parse_reply_line(line) == read


@pytest.mark.parametrize("line", ["", "hello", "55 short", "650 not a class", "5500 long", "250x"])
def test_what_is_not_a_reply_line(line: str) -> None:
    assert parse_reply_line(line) is None


def test_parse_what_users_write() -> None:
    reply = Reply.parse("550 5.1.1 <{to}>: No such user")
    assert (reply.code, reply.status, reply.lines, reply.templated) == (
        550, "5.1.1", ("<{to}>: No such user",), True
    )  # fmt: skip
    assert Reply.parse("451 Try later").status is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("hello", "does not start with a three-digit reply code"),
        ("999 x", "reply code 999 is not between 200 and 599"),
        ("550 4.1.1 x", "enhanced status 4.1.1 disagrees with code 550"),
        ("550 5.1.1 {password}", "unknown template field {password}"),
        ("550 5.1.1 " + "x" * 481, "longer than 480 characters"),
    ],
)
def test_bad_replies_say_why(text: str, error: str) -> None:
    with pytest.raises(ReplyError, match=error.replace("{", r"\{").replace("}", r"\}")):
        Reply.parse(text)


def test_control_characters_never_reach_the_wire() -> None:
    with pytest.raises(ReplyError, match="control character"):
        Reply.make(550, None, "bad\r\nRSET")


def test_render_puts_a_dash_after_the_code_on_all_lines_but_the_last() -> None:
    reply = Reply.make(550, "5.7.1", ["Message rejected", "See https://example.test/why"])
    assert reply.render() == (
        b"550-5.7.1 Message rejected\r\n550 5.7.1 See https://example.test/why\r\n"
    )
    assert reply.render(enhanced=False) == (
        b"550-Message rejected\r\n550 See https://example.test/why\r\n"
    )


def test_render_expands_only_documented_fields_cleaned_and_bounded() -> None:
    reply = Reply.parse("550 5.1.1 <{to}> from {from} ({{literal}})")
    fields = {"to": "bob@x.test\r\nQUIT", "from": "a" * 300}
    line = reply.render(fields).decode()
    assert line.startswith("550 5.1.1 <bob@x.test??QUIT> from aaa")
    assert line.endswith("a" * 197 + "... ({literal})\r\n")  # 200 characters at most
    assert expand("{size} bytes", {}) == " bytes"  # a field with no value renders empty


def test_421_closes_and_2xx_3xx_are_positive() -> None:
    assert Reply.make(421, "4.3.2", "bye").closes
    assert Reply.make(354, None, "go").positive and not Reply.make(450, None, "no").positive
