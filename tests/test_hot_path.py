"""The hot path's shortcuts decide exactly what the long way decides.

- One regex per stage (stagefilter.py) turns a command away from a stage's rules when none can
  match: the decision and the transcript's "why not" must be the very ones the rule-by-rule
  loop gives.
- A plain ASCII Subject is read off the bytes: it must equal what the email parser says.
"""

from __future__ import annotations

import email.policy
import random
import smtplib
from collections.abc import Callable
from email.parser import BytesHeaderParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakesmtp import FakeSMTP
from fakesmtp.engine import Engine, Facts, _plain_subject
from fakesmtp.scenario import load_scenario
from fakesmtp.stages import Stage

MANY = "\n".join(
    [
        "name: many",
        "rules:",
        *[
            line
            for n in range(20)
            for line in (
                "  - on: rcpt",
                f'    match: {{to: ["*@never-{n}.test", "exact{n}@x.test"]}}',
                "    reply: 550 5.1.1 No",
            )
        ],
        "  - name: full",
        "    on: rcpt",
        '    match: {to: "*@FULL.test"}',
        "    times: 2",
        "    reply: 452 4.2.2 Full",
        "  - on: rcpt",
        '    match: {to: "b?b@[xy].test"}',
        "    reply: 551 5.1.6 Moved",
        *[
            line
            for n in range(5)
            for line in (
                "  - on: end_of_data",
                f'    match: {{subject: "*never-{n}*"}}',
                "    reply: 554 5.7.1 No",
            )
        ],
        "  - on: end_of_data",
        '    match: {subject: "urgent*"}',
        "    reply: 554 5.7.1 Spam",
        "  - on: mail",
        "    match: {from: /^spam/}",  # a /regex/: this stage keeps the rule-by-rule loop
        "    reply: 550 5.7.1 Spammer",
    ]
)

ADDRESSES = [
    "a@full.test", "A@Full.Test", "bob@x.test", "bib@y.test", "bob@z.test", "exact3@x.test",
    "EXACT19@X.TEST", "someone@never-7.test", "nobody@else.test", "x@never-20.test", "",
]  # fmt: skip
SUBJECTS = ["hello", "Urgent: pay now", "never-3 again", "no", "URGENT", "re: urgent"]


def _decisions(engine: Engine, facts_list: list[tuple[Stage, Facts]]) -> list[tuple]:
    out = []
    for stage, facts in facts_list:
        decision = engine.decide(stage, facts)
        note = engine.why_not(stage, facts) if decision is None else None
        out.append((decision.rule_name if decision else None, decision and decision.reply, note))
    return out


def _facts(seed: int) -> list[tuple[Stage, Facts]]:
    rng = random.Random(seed)
    found = []
    for n in range(300):
        facts = Facts(session_id=f"s{n % 7}", client="192.0.2.1")
        facts.helo = "client.test"
        facts.sender = rng.choice(["spam@x.test", "ok@x.test", "Spammer@x.test"])
        stage = rng.choice([Stage.MAIL, Stage.RCPT, Stage.END_OF_DATA])
        if stage is Stage.RCPT:
            facts.recipient = rng.choice(ADDRESSES) or None
        else:
            facts.recipients = [a for a in rng.sample(ADDRESSES, 2) if a]
        if stage is Stage.END_OF_DATA:
            subject = rng.choice(SUBJECTS)
            facts.raw = f"From: a@x.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
        found.append((stage, facts))
    return found


def test_the_stage_filters_decide_as_the_rules_do() -> None:
    scenario = load_scenario(MANY)
    fast, slow = Engine(scenario), Engine(scenario)
    assert set(fast._state.filters) == {Stage.RCPT, Stage.END_OF_DATA}  # not mail: a /regex/
    slow._state.filters = {}  # the rule-by-rule loop only
    facts = _facts(7)
    fast_decisions = _decisions(fast, facts)
    assert fast_decisions == _decisions(slow, _facts(7))  # same inputs, fresh Facts
    fired = {name for name, _, _ in fast_decisions if name}
    assert "full" in fired and len(fired) > 3  # the inputs reach rules, not only misses
    assert any(note and "did not match; and" in note for _, _, note in fast_decisions)


def test_a_filtered_stage_still_counts_and_says_why_not_over_smtp(
    serve: Callable[..., FakeSMTP],
) -> None:
    server = serve(MANY)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo("client.test")
        client.mail("ok@client.test")
        assert [client.rcpt("a@full.test")[0] for _ in range(3)] == [452, 452, 250]
        assert client.rcpt("exact4@X.test")[0] == 550
        assert client.rcpt("bab@y.test")[0] == 551
        assert client.rcpt("nobody@else.test")[0] == 250
        client.data(b"Subject: Urgent offer\r\n\r\nhi\r\n")
    transcript = server.wait_for_sessions(1)[0].exchanges
    wanted = "rcpt to:<nobody@else.test>"
    missed = next(e for e in transcript if (e.command or "").lower() == wanted)
    assert missed.note == (
        "no rule fired (rcpt rule at <text>:3: to did not match; rcpt rule at <text>:6: to did "
        "not match; rcpt rule at <text>:9: to did not match; and 19 more)"
    )
    assert [e.reply for e in transcript if e.stage == "end_of_data"] == ["554 5.7.1 Spam"]


SAMPLES = [
    b"Subject: hello\r\n\r\nbody",
    b"From: a@b\r\nSubject:   hello  world  \r\nTo: x\r\n\r\nbody",
    b"Subject: folded\r\n  line two\r\n\r\nb",
    b"subject: lower\r\n\r\n",
    b"X: y\r\n\r\nSubject: in body\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n",
    b"No header here\r\nSubject: x\r\n\r\n",
    b"From: a\r\n\r\n",
    b"Subject: one\r\nSubject: two\r\n\r\n",
    b"Subject:\r\n\r\n",
    b"Subject: tab\tinside\r\n\r\n",
    b"Subject: caf\xc3\xa9\r\n\r\n",
    b"Subject: no blank line at all",
    b"Subject: nl only\n\nbody",
    b"From: a\n\nSubject: body line\n",
]


def _parsed(raw: bytes) -> str | None:
    value = BytesHeaderParser(policy=email.policy.default).parsebytes(raw).get("subject")
    return None if value is None else str(value)


@pytest.mark.parametrize("raw", SAMPLES)
def test_a_plain_subject_reads_as_the_parser_reads_it(raw: bytes) -> None:
    fast = _plain_subject(raw)
    assert fast is False or fast == _parsed(raw)
    facts = Facts(session_id="s", client="c", raw=raw)
    assert facts.subject == _parsed(raw)


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(st.sampled_from([b"From: a", b"X-Y: z", b"  folded", b"To: b"]), max_size=3),
    subject=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    fold=st.booleans(),
)
def test_any_ascii_subject_reads_as_the_parser_reads_it(
    before: list[bytes], subject: str, fold: bool
) -> None:
    value = subject.encode()
    if fold and b" " in value.strip():
        head, _, tail = value.strip().partition(b" ")
        value = head + b"\r\n " + tail
    raw = b"\r\n".join([*before, b"Subject: " + value, b"", b"body"])
    facts = Facts(session_id="s", client="c", raw=raw)
    assert facts.subject == _parsed(raw)
