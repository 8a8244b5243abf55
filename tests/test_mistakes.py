"""Every mistake points at its fix: YAML slips and misspelt names, with the exact words shown.

Each case here is one a scenario author makes in their first hour (issue #13); the wording is
pinned so a change to it is a decision, not an accident.
"""

from __future__ import annotations

import pytest

from fakesmtp import ScenarioError
from fakesmtp.scenario import load_scenario_text
from fakesmtp.suggest import closest, did_you_mean, plural


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "s.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "rules:\n  - on: rcpt\n    reply: 550 5.1.1 <{to}>: Recipient address rejected\n",
            "s.yaml:3: yaml: not valid YAML: mapping values are not allowed here\n"
            "        reply: 550 5.1.1 <{to}>: Recipient address rejected\n"
            "                               ^\n"
            '  quote the reply, it holds ": ": '
            'reply: "550 5.1.1 <{to}>: Recipient address rejected"',
            id="colon-in-reply",
        ),
        pytest.param(
            "rules:\n  - {on: rcpt, reply: 550 5.1.1 <x>: no}\n",
            "s.yaml:2: yaml: not valid YAML: expected ',' or '}', but got ':'\n"
            "      - {on: rcpt, reply: 550 5.1.1 <x>: no}\n"
            "                                       ^\n"
            '  quote the reply, it holds ": ": reply: "550 5.1.1 <x>: no"',
            id="colon-in-flow-mapping",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    match:\n      to: *@x.test\n    reply: 550\n",
            "s.yaml:4: yaml: not valid YAML: expected alphabetic or numeric character, "
            "but found '@'\n"
            "          to: *@x.test\n"
            "              ^\n"
            '  a value starting with * must be quoted: to: "*@x.test"',
            id="star-glob",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    match: {to: *@x.test}\n    reply: 550\n",
            "s.yaml:3: yaml: not valid YAML: expected alphabetic or numeric character, "
            "but found '@'\n"
            "        match: {to: *@x.test}\n"
            "                    ^\n"
            '  a value starting with * must be quoted: to: "*@x.test"',
            id="star-glob-in-flow",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    match:\n      to: *anyone\n    reply: 550\n",
            "s.yaml:4: yaml: not valid YAML: found undefined alias 'anyone'\n"
            "          to: *anyone\n"
            "              ^\n"
            '  a value starting with * must be quoted: to: "*anyone"',
            id="star-word",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    match:\n      to: @x.test\n    reply: 550\n",
            "s.yaml:4: yaml: not valid YAML: found character '@' that cannot start any token\n"
            "          to: @x.test\n"
            "              ^\n"
            '  a value starting with @ must be quoted: to: "@x.test"',
            id="at-sign",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    reply: `550`\n",
            "s.yaml:3: yaml: not valid YAML: found character '`' that cannot start any token\n"
            "        reply: `550`\n"
            "               ^\n"
            '  a value starting with ` must be quoted: reply: "`550`"',
            id="backquote",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n  \treply: 550\n",
            "s.yaml:3: yaml: not valid YAML: found character '\\t' that cannot start any token\n"
            "       reply: 550\n"
            "      ^\n"
            "  indent with spaces, not tabs",
            id="tab",
        ),
        pytest.param(
            'rules:\n  - on: rcpt\n    reply: "550 no\n',
            "s.yaml:3: yaml: not valid YAML: found unexpected end of stream\n"
            '        reply: "550 no\n'
            "               ^\n"
            '  this " is never closed: end the value with " (write \\" for a " inside it)',
            id="unclosed-double-quote",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    reply: '550 no\n  - on: mail\n    reply: 451\n",
            "s.yaml:3: yaml: not valid YAML: found unexpected end of stream\n"
            "        reply: '550 no\n"
            "               ^\n"
            "  this ' is never closed: end the value with ' (write '' for a ' inside it)",
            id="unclosed-single-quote",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    match: {to: a@b, from: x\n    reply: 550\n",
            "s.yaml:3: yaml: not valid YAML: expected ',' or '}', but got ':'\n"
            "        match: {to: a@b, from: x\n"
            "               ^\n"
            "  this { is never closed: add } where the mapping ends",
            id="unclosed-brace",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n     reply: 550\n",
            "s.yaml:3: yaml: not valid YAML: mapping values are not allowed here\n"
            "         reply: 550\n"
            "              ^\n"
            "  check the indentation: the keys of one mapping start in the same column",
            id="deeper-indent",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n   reply: 550\n",
            "s.yaml:3: yaml: not valid YAML: expected <block end>, but found "
            "'<block mapping start>'\n"
            "       reply: 550\n"
            "       ^\n"
            '  check the indentation: the keys of one mapping, and the "- " of one list, '
            "start in the same column",
            id="shallower-indent",
        ),
    ],
)
def test_a_yaml_slip_says_what_to_write(text: str, expected: str) -> None:
    assert error_of(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "rules:\n  - on: RCPT\n    reply: 550\n",
            "s.yaml:2: on: unknown stage 'RCPT'; did you mean 'rcpt'? (allowed: connect, helo, "
            "ehlo, starttls, auth, mail, rcpt, data, bdat, end_of_data, rset, noop, vrfy, expn, "
            "help, quit, unknown)",
            id="stage-in-capitals",
        ),
        pytest.param(
            "rules:\n  - on: recipient\n    reply: 550\n",
            "s.yaml:2: on: unknown stage 'recipient'; did you mean 'rcpt'? (allowed: connect, "
            "helo, ehlo, starttls, auth, mail, rcpt, data, bdat, end_of_data, rset, noop, vrfy, "
            "expn, help, quit, unknown)",
            id="stage-alias",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    match: {recipient: x@y}\n    reply: 550\n",
            "s.yaml:3: match.recipient: unknown key; did you mean 'to'? (allowed: from, to, helo, "
            "client, user, tls, subject, header, body, size, concurrent)",
            id="match-recipient",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    match: {sender: x@y}\n    reply: 550\n",
            "s.yaml:3: match.sender: unknown key; did you mean 'from'? (allowed: from, to, helo, "
            "client, user, tls, subject, header, body, size, concurrent)",
            id="match-sender",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    per: recipent\n    reply: 550\n",
            "s.yaml:3: per: unknown per 'recipent'; did you mean 'recipient'? (allowed: server, "
            "connection, client, sender, recipient, triplet)",
            id="per-misspelt",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    action: Drop\n",
            "s.yaml:3: action: unknown action 'Drop'; did you mean 'drop'? "
            "(allowed: close, drop, reset, hang)",
            id="action-case",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    Reply: 550\n",
            "s.yaml:3: rules[0].Reply: unknown key; did you mean 'reply'? (allowed: on, match, "
            "reply, action, delay, times, after, per, within, volume, probability, name)",
            id="key-case",
        ),
        pytest.param(
            "rules:\n  - on: data\n    delay: 5\n",
            "s.yaml:3: delay: 5 has no unit: write 5s (seconds) or 5ms (milliseconds)",
            id="delay-without-unit",
        ),
    ],
)
def test_a_misspelt_name_gets_the_one_meant(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_delay_zero_and_with_units_are_fine() -> None:
    scenario = load_scenario_text(
        "rules:\n  - {on: data, delay: 0}\n  - {on: mail, delay: 250ms}\n", "s.yaml"
    )
    assert [rule.delay for rule in scenario.rules] == [0.0, 0.25]


@pytest.mark.parametrize(
    ("word", "choices", "expected"),
    [
        ("RCPT", ["mail", "rcpt"], "rcpt"),
        ("recipient", ["from", "to", "client"], "to"),
        ("recipient", ["mail", "rcpt"], "rcpt"),
        ("sender", ["from", "to"], "from"),
        ("recipent", ["sender", "recipient"], "recipient"),
        ("greylistin", ["greylisting", "rate-limited"], "greylisting"),
        (
            "FAKESMTP_SERVE_PROT",
            ["FAKESMTP_SERVE_PORT", "FAKESMTP_SERVE_HOST"],
            "FAKESMTP_SERVE_PORT",
        ),
        ("end-of-data", ["data", "end_of_data"], "end_of_data"),
        ("xyzzy", ["mail", "rcpt"], None),
        ("rcpt", ["mail", "rcpt"], None),  # nothing to suggest for a word that is right
    ],
)
def test_closest(word: str, choices: list[str], expected: str | None) -> None:
    assert closest(word, choices) == expected


def test_did_you_mean_and_plural_wording() -> None:
    assert did_you_mean("tiems", ["times", "after"]) == "did you mean 'times'?"
    assert did_you_mean("zzz", ["times"]) == ""
    assert [plural(n, "rule") for n in (0, 1, 2)] == ["0 rules", "1 rule", "2 rules"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "rules:\n  - on:rcpt\n    reply: 550\n",
            "s.yaml:2: yaml: not valid YAML: mapping values are not allowed here\n"
            "      - on:rcpt\n"
            "          ^\n"
            "  put a space after the colon: on: rcpt",
            id="no-space-after-colon",
        ),
        pytest.param(
            "rules:\n  - on: rcpt\n    reply 550\n    action: close\n",
            "s.yaml:3: yaml: not valid YAML: could not find expected ':'\n"
            "        reply 550\n"
            "        ^\n"
            "  a key needs a colon after it: reply: 550",
            id="no-colon",
        ),
        pytest.param(
            "rules:\n- on: rcpt\n  match: {to: [a@b, c@d}\n  reply: 550\n",
            "s.yaml:3: yaml: not valid YAML: expected ',' or ']', but got '}'\n"
            "      match: {to: [a@b, c@d}\n"
            "                  ^\n"
            "  this [ is never closed: add ] where the list ends",
            id="bracket-closed-by-brace",
        ),
        pytest.param(
            "rules:\n  on: rcpt\n  reply: 550\n",
            's.yaml:2: rules: must be a list of rules, not a mapping; start each rule with "- " '
            "(- on: rcpt)",
            id="rule-without-dash",
        ),
    ],
)
def test_more_slips_say_what_to_write(text: str, expected: str) -> None:
    assert error_of(text) == expected
