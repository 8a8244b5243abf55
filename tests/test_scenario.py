"""Scenario files -> model, and every kind of mistake -> one exact FILE:LINE: key: message line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fakesmtp import ScenarioError, load_scenario
from fakesmtp.scenario import builtin_scenarios, load_scenario_file, load_scenario_text
from fakesmtp.stages import Action, Per, Stage


def load(text: str):
    return load_scenario_text(textwrap.dedent(text), "s.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as caught:
        load(text)
    return str(caught.value)


def test_full_rule_table_builds_a_model() -> None:
    scenario = load("""
        name: greylisting
        description: First attempt deferred.
        seed: 7
        server:
          hostname: mx.example.test
          size_limit: 10MiB
          max_recipients: 100
          extensions: [PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES]
          tls: {starttls: true}
          auth: {mechanisms: [PLAIN, LOGIN], required: false, users: {alice: s3cret}}
        rules:
          - on: rcpt
            match: {to: "*@greylisted.test", client: 127.0.0.0/8, from: [/^a/, "b*"]}
            times: 1
            per: triplet
            reply: 451 4.7.1 Greylisted, try again later
          - on: end_of_data
            match: {subject: "*invoice*", header: {X-Spam: "yes"}, size: ">1KiB", body: /viagra/i}
            reply: {code: 550, status: 5.7.1, text: [Rejected as spam, see the policy]}
            delay: 500ms
            name: spam
          - on: quit
            action: drop
            probability: 0.5
            after: 2
            per: connection
    """)
    assert scenario.name == "greylisting" and scenario.seed == 7
    assert scenario.server.size_limit == 10 * 1024 * 1024
    assert scenario.server.max_recipients == 100
    assert scenario.server.auth is not None and scenario.server.auth.users == {"alice": "s3cret"}
    grey, spam, drop = scenario.rules
    assert grey.on is Stage.RCPT and grey.times == 1 and grey.per is Per.TRIPLET
    assert grey.reply is not None and (grey.reply.code, grey.reply.status) == (451, "4.7.1")
    assert grey.match.to is not None and grey.match.to("X@GREYLISTED.test")
    assert grey.match.client is not None and grey.match.client("127.0.0.9")
    assert not grey.match.client("192.0.2.1")
    assert grey.match.sender is not None and grey.match.sender("bob@x") and grey.match.sender("al")
    assert grey.source.line == 13
    assert spam.reply is not None and spam.reply.lines == ("Rejected as spam", "see the policy")
    assert spam.delay == 0.5 and spam.match.size is not None and spam.match.size(2000)
    assert drop.action is Action.DROP and drop.probability == 0.5 and drop.after == 2


def test_bare_on_key_is_kept_as_the_stage() -> None:
    # YAML 1.1 reads `on` as True; our loader must not.
    assert load("rules:\n  - on: mail\n    reply: 451\n").rules[0].on is Stage.MAIL


def test_bare_code_takes_catalog_text() -> None:
    rule = load("rules:\n  - on: rcpt\n    reply: 550\n").rules[0]
    assert rule.reply is not None and rule.reply.code == 550 and rule.reply.lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  - on: rcpt\n    reply: 550\n    tiems: 2\n",
            "s.yaml:4: rules[0].tiems: unknown key; did you mean 'times'? (allowed: on, match, "
            "reply, action, delay, times, after, per, within, volume, probability, name)",
        ),
        (
            "rules:\n  - on: rctp\n    reply: 550\n",
            "s.yaml:2: on: unknown stage 'rctp'; did you mean 'rcpt'? (allowed: connect, helo, "
            "ehlo, starttls, auth, mail, rcpt, data, bdat, end_of_data, rset, noop, vrfy, expn, "
            "help, quit, unknown)",
        ),
        (
            "rules:\n  - on: rcpt\n    reply: 612 nope\n",
            "s.yaml:3: reply: reply code 612 is not between 200 and 599 (allowed: 200 to 599)",
        ),
        (
            "rules:\n  - on: rcpt\n    reply: 550 4.1.1 nope\n",
            "s.yaml:3: reply: enhanced status 4.1.1 disagrees with code 550 (a 5xx reply takes "
            "5.X.X)",
        ),
        (
            "rules:\n  - on: connect\n    match: {to: x}\n    reply: 554\n",
            "s.yaml:3: match.to: stage connect cannot match on to "
            "(allowed: client, tls, concurrent)",
        ),
        (
            'rules:\n  - on: rcpt\n    match: {to: "/([a-z/"}\n    reply: 550\n',
            "s.yaml:3: match.to: regular expression /([a-z/ does not compile: missing ]: [a-z",
        ),
        (
            "rules:\n  - on: rcpt\n    reply: 550\n    action: explode\n",
            "s.yaml:4: action: unknown action 'explode' (allowed: close, drop, reset, hang)",
        ),
        (
            "rules:\n  - on: mail\n    reply: 550\n    times: 1\n    per: recipient\n",
            "s.yaml:5: per: per recipient means nothing at stage mail: it has no recipient yet "
            "(allowed: server, connection, client, sender)",
        ),
        (
            "rules:\n  - on: rcpt\n",
            "s.yaml:2: reply: a rule must say what to do (allowed: reply, action, delay)",
        ),
        (
            "rules:\n  - on: rcpt\n    reply: 550\n    delay: soon\n",
            "s.yaml:4: delay: 'soon' is not a duration like 2s, 500ms, 1m",
        ),
        (
            "rules:\n  - on: rcpt\n    reply: 550\n    probability: 2\n",
            "s.yaml:4: probability: 2 is not in (0, 1] (allowed: 0 < p <= 1)",
        ),
        (
            "rules:\n  - on: rcpt\n    reply: 550 5.1.1 Hi {nme}\n",
            "s.yaml:3: reply: unknown template field {nme} (allowed: {client}, {from}, {helo}, "
            "{hostname}, {size}, {to})",
        ),
        (
            "rules:\n  - on: rcpt\n    action: drop\n    reply: 550\n",
            "s.yaml:3: action: drop gives no reply, so this rule's reply would never be sent "
            "(allowed: close (reply then close), or remove reply)",
        ),
        (
            "server:\n  size_limit: big\n",
            "s.yaml:2: server.size_limit: 'big' is not a size like 512, 64KiB, 10MB",
        ),
        (
            "server:\n  extensions: [PIPELINING, CHUNKY]\n",
            "s.yaml:2: server.extensions: unknown extension 'CHUNKY' (allowed: 8BITMIME, "
            "BINARYMIME, CHUNKING, DSN, ENHANCEDSTATUSCODES, PIPELINING, SMTPUTF8)",
        ),
        (
            "server:\n  extensions: [PIPELINING, BINARYMIME]\n",
            "s.yaml:2: server.extensions: BINARYMIME needs CHUNKING: binary messages are sent "
            "with BDAT only (allowed: add CHUNKING, or remove BINARYMIME)",
        ),
        (
            "server:\n  extensions: [SIZE]\n",
            "s.yaml:2: server.extensions: SIZE is advertised from server.size_limit (set it; 0 "
            "turns SIZE off)",
        ),
        (
            "rules: [\n",
            "s.yaml:1: yaml: not valid YAML: expected the node content, but found '<stream end>'\n"
            "    rules: [\n"
            "           ^\n"
            "  this [ is never closed: add ] where the list ends",
        ),
        (
            "rules:\n  - on: rcpt\n    reply: [550]\n",
            's.yaml:3: reply: must be a reply like "550 5.1.1 text", not a list',
        ),
        ("name: x\nname: y\n", "s.yaml:2: name: is given twice"),
        (
            "rules:\n  - on: connect\n    match: {concurrent: '>3'}\n    per: connection\n"
            "    reply: 421\n",
            "s.yaml:4: per: concurrent counts open sessions per server, client or sender, not per "
            "connection (allowed: server, client, sender)",
        ),
        (
            "rules:\n  - on: connect\n    match: {concurrent: many}\n    reply: 421\n",
            "s.yaml:3: match.concurrent: 'many' is not a count comparison like >3",
        ),
        (
            "rules:\n  - on: mail\n    within: 1m\n    reply: 451\n",
            "s.yaml:3: within: counts the matches that times/after limit, but this rule has "
            "neither (allowed: add times or after (or volume), or remove within)",
        ),
        (
            "rules:\n  - on: mail\n    after: 3\n    within: 0s\n    reply: 451\n",
            "s.yaml:4: within: must be more than 0",
        ),
        (
            "rules:\n  - on: mail\n    after: 3\n    within: a minute\n    reply: 451\n",
            "s.yaml:4: within: 'a minute' is not a duration like 2s, 500ms, 1m",
        ),
        (
            "rules:\n  - on: mail\n    after: 3\n    within: [1m]\n    reply: 451\n",
            "s.yaml:4: within: must be a duration like 1m or 30s, not a list",
        ),
        ("", "s.yaml:1: scenario: file is empty (allowed: name, description, seed, server, rules)"),
    ],
)
def test_each_mistake_is_one_exact_line(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_every_problem_in_a_file_is_reported() -> None:
    message = error_of("""
        rules:
          - on: rcpt
            reply: 612
          - on: nowhere
            reply: 550
    """)
    assert message.splitlines() == [
        "s.yaml:4: reply: reply code 612 is not between 200 and 599 (allowed: 200 to 599)",
        "s.yaml:5: on: unknown stage 'nowhere' (allowed: connect, helo, ehlo, starttls, auth, "
        "mail, rcpt, data, bdat, end_of_data, rset, noop, vrfy, expn, help, quit, unknown)",
    ]


def test_load_scenario_accepts_every_form(tmp_path: Path) -> None:
    text = "rules:\n  - on: rcpt\n    reply: 550 5.1.1 No\n"
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert load_scenario(str(path)).name == "mine"
    assert load_scenario(path).rules[0].on is Stage.RCPT
    assert load_scenario(text).rules[0].reply.code == 550  # type: ignore[union-attr]
    as_dict = load_scenario({"rules": [{"on": "rcpt", "reply": "550 5.1.1 No"}]})
    assert as_dict.rules[0].on is Stage.RCPT
    assert load_scenario(None).server.address_replies
    with pytest.raises(ScenarioError, match="no such file or built-in scenario"):
        load_scenario("no-such-thing")


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(tmp_path / "missing.yaml")
    assert str(caught.value).endswith("missing.yaml: file: cannot read: No such file or directory")


def test_builtin_scenarios_are_all_valid() -> None:
    found = builtin_scenarios()
    assert "default" in found
    for path in found.values():
        load_scenario_file(path)  # raises on any problem


def test_bare_greeting_and_closing_codes_name_the_server() -> None:
    # RFC 5321 4.2: 220, 221 and 421 replies start with the server's domain.
    rule = load("rules:\n  - on: connect\n    reply: 421\n").rules[0]
    assert rule.reply is not None
    rendered = rule.reply.render({"hostname": "mx.example.test"}).decode()
    assert rendered.startswith("421 4.3.2 mx.example.test ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  - on: end_of_data\n    volume: 1MiB\n    after: 2\n    reply: 452\n",
            "s.yaml:3: volume: counts bytes, and times/after count matches: a rule limits one or "
            "the other (allowed: volume, or times/after)",
        ),
        (
            "rules:\n  - on: mail\n    volume: 1MiB\n    reply: 452\n",
            "s.yaml:3: volume: counts the bytes of messages, which stage mail has not seen "
            "(allowed: on: end_of_data)",
        ),
        (
            "rules:\n  - on: end_of_data\n    volume: lots\n    reply: 452\n",
            "s.yaml:3: volume: 'lots' is not a size like 512, 64KiB, 10MB",
        ),
    ],
)
def test_volume_mistakes(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_a_rule_repeated_by_alias_is_built_once_into_rules_of_their_own() -> None:
    text = "rules:\n  - &r {on: rcpt, match: {to: '*@x.test'}, reply: 550 5.1.1 No}\n"
    text += "  - *r\n" * 20_000
    scenario = load_scenario_text(text, "a.yaml")
    assert len(scenario.rules) == 20_001
    # The engine keeps counts per rule object: copies must not share one.
    assert len({id(rule) for rule in scenario.rules}) == 20_001
    assert {(rule.source.line, rule.reply.code) for rule in scenario.rules} == {(2, 550)}  # type: ignore[union-attr]


def test_a_wrong_rule_repeated_by_alias_is_reported_once() -> None:
    text = "rules:\n  - &r {on: rcpt, reply: 612}\n" + "  - *r\n" * 50 + "  - {on: nope}\n"
    with pytest.raises(ScenarioError) as raised:
        load_scenario_text(text, "a.yaml")
    assert str(raised.value).splitlines() == [
        "a.yaml:2: reply: reply code 612 is not between 200 and 599 (allowed: 200 to 599)",
        "a.yaml:53: on: unknown stage 'nope'; did you mean 'noop'? (allowed: "
        + ", ".join(s.value for s in Stage)
        + ")",
    ]
