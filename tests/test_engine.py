"""The engine as a pure function of (scenario, counts, stage, facts): no socket, no loop.

Each test reads as one line of the scenario language's specification: which rule fires, how
``times``/``after`` count ``per`` what, how a seed makes ``probability`` repeatable, and what
the transcript's "no rule fired (...)" line says.
"""

from __future__ import annotations

import pytest

from fakesmtp.engine import Engine, Facts
from fakesmtp.scenario import load_scenario_data
from fakesmtp.stages import Stage


def engine(*rules: dict, **top: object) -> Engine:
    return Engine(load_scenario_data({**top, "rules": list(rules)}))


def facts(client: str = "192.0.2.1", sender: str | None = "a@app.test", **more: object) -> Facts:
    return Facts(session_id="s1", client=client, helo="client.test", sender=sender, **more)


def fired(e: Engine, stage: Stage, f: Facts) -> int | None:
    decision = e.decide(stage, f)
    return decision.reply.code if decision is not None and decision.reply else None


# --------------------------------------------------------------------------- first match


def test_the_first_matching_rule_wins_and_a_miss_falls_through() -> None:
    e = engine(
        {"on": "rcpt", "match": {"to": "*@full.test"}, "reply": "452 4.2.2 Mailbox full"},
        {"on": "rcpt", "reply": "550 5.1.1 No such user"},
    )
    assert fired(e, Stage.RCPT, facts(recipient="bob@full.test")) == 452
    assert fired(e, Stage.RCPT, facts(recipient="bob@other.test")) == 550
    assert e.decide(Stage.MAIL, facts()) is None  # no rule for the stage: the normal reply


def test_a_rule_with_only_a_delay_decides_to_wait_then_give_the_normal_reply() -> None:
    decision = engine({"on": "data", "delay": "2s"}).decide(Stage.DATA, facts())
    assert decision is not None
    assert (decision.reply, decision.action, decision.delay) == (None, None, 2.0)


# --------------------------------------------------------------------------- times and after


def test_times_fires_that_many_times_then_the_rule_rests() -> None:
    e = engine({"on": "mail", "times": 2, "reply": 451})
    assert [fired(e, Stage.MAIL, facts()) for _ in range(4)] == [451, 451, None, None]


def test_after_lets_that_many_pass_first() -> None:
    e = engine({"on": "mail", "after": 2, "times": 1, "reply": 451})
    assert [fired(e, Stage.MAIL, facts()) for _ in range(4)] == [None, None, 451, None]


def test_reset_forgets_the_counts() -> None:
    e = engine({"on": "mail", "times": 1, "reply": 451})
    assert [fired(e, Stage.MAIL, facts()), fired(e, Stage.MAIL, facts())] == [451, None]
    e.reset()
    assert fired(e, Stage.MAIL, facts()) == 451


@pytest.mark.parametrize(
    ("per", "calls", "expected"),
    [
        # per server: one count for everyone
        ("server", [("c1", "a@x", "r@y"), ("c2", "b@x", "s@y")], [451, None]),
        # per client: each client address has its own count
        ("client", [("c1", "a@x", "r@y"), ("c2", "a@x", "r@y"), ("c1", "b@x", "s@y")],
         [451, 451, None]),
        # per sender: case-insensitive, across clients
        ("sender", [("c1", "a@x", "r@y"), ("c2", "A@X", "s@y"), ("c1", "b@x", "r@y")],
         [451, None, 451]),
        # per recipient
        ("recipient", [("c1", "a@x", "r@y"), ("c2", "b@x", "r@y"), ("c1", "a@x", "s@y")],
         [451, None, 451]),
        # per triplet: client, sender and recipient together (greylisting)
        ("triplet", [("c1", "a@x", "r@y"), ("c1", "a@x", "s@y"), ("c1", "a@x", "r@y"),
                     ("c2", "a@x", "r@y")], [451, 451, None, 451]),
    ],
)  # fmt: skip
def test_times_counts_per(per: str, calls: list[tuple[str, str, str]], expected: list) -> None:
    e = engine({"on": "rcpt", "times": 1, "per": per, "reply": 451})
    got = [
        fired(e, Stage.RCPT, facts(client=client, sender=sender, recipient=recipient))
        for client, sender, recipient in calls
    ]
    assert got == expected


def test_per_connection_counts_live_with_the_session() -> None:
    e = engine({"on": "rcpt", "times": 1, "per": "connection", "reply": 451})
    first, second = facts(), facts()
    assert [fired(e, Stage.RCPT, first), fired(e, Stage.RCPT, first)] == [451, None]
    assert fired(e, Stage.RCPT, second) == 451  # a new connection starts at zero


def test_within_counts_only_over_a_sliding_window() -> None:
    now = [1000.0]
    e = Engine(
        load_scenario_data({"rules": [{"on": "mail", "times": 1, "within": "1m", "reply": 451}]}),
        clock=lambda: now[0],
    )
    assert [fired(e, Stage.MAIL, facts()), fired(e, Stage.MAIL, facts())] == [451, None]
    now[0] += 61
    assert fired(e, Stage.MAIL, facts()) == 451


# --------------------------------------------------------------------------- probability


def test_probability_with_a_seed_is_the_same_sequence_every_run() -> None:
    rule = {"on": "mail", "probability": 0.5, "reply": 451}
    one, two = engine(rule, seed=42), engine(rule, seed=42)
    first = [fired(one, Stage.MAIL, facts()) for _ in range(40)]
    second = [fired(two, Stage.MAIL, facts()) for _ in range(40)]
    assert first == second
    assert 8 < first.count(451) < 32  # about half, and both outcomes happen
    one.reset()
    assert [fired(one, Stage.MAIL, facts()) for _ in range(40)] == first  # reset reseeds


def test_probability_one_always_fires() -> None:
    e = engine({"on": "mail", "probability": 1, "reply": 451})
    assert {fired(e, Stage.MAIL, facts()) for _ in range(20)} == {451}


# --------------------------------------------------------------------------- why not


def test_why_not_names_the_keys_that_did_not_match() -> None:
    e = engine({"on": "rcpt", "match": {"to": "a@*", "from": "x@*"}, "reply": 550})
    f = facts(sender="y@b.test", recipient="a@c.test")
    assert e.decide(Stage.RCPT, f) is None
    why = e.why_not(Stage.RCPT, f)
    assert why is not None and why.startswith("no rule fired (rcpt rule at ")
    assert why.endswith(": from did not match)")


def test_why_not_says_when_times_held_a_matching_rule_back() -> None:
    e = engine({"on": "mail", "times": 1, "name": "once", "reply": 451})
    fired(e, Stage.MAIL, facts())
    assert e.decide(Stage.MAIL, facts()) is None
    assert e.why_not(Stage.MAIL, facts()) == (
        "no rule fired (once: matched, but counted 2 (it fires for the first 1))"
    )


def test_why_not_says_when_probability_held_it_back_and_counts_the_rest() -> None:
    rules = [{"on": "mail", "probability": 0.000001, "name": f"r{n}", "reply": 451}
             for n in range(5)]  # fmt: skip
    e = engine(*rules, seed=1)
    assert e.decide(Stage.MAIL, facts()) is None
    assert e.why_not(Stage.MAIL, facts()) == (
        "no rule fired (r0: matched, but probability held it back; r1: matched, but probability"
        " held it back; r2: matched, but probability held it back; and 2 more)"
    )
    assert e.why_not(Stage.RCPT, facts()) is None  # no rules there: nothing to explain


# --------------------------------------------------------------------------- address replies


def test_the_default_scenario_answers_from_the_address() -> None:
    e = Engine(load_scenario_data({"server": {"address_replies": True}}))
    decision = e.decide(Stage.RCPT, facts(recipient="rcpt-550@x.test"))
    assert decision is not None and decision.reply is not None
    assert (decision.reply.code, decision.reply.status) == (550, "5.1.1")
    assert decision.rule_name == "address rcpt-550@x.test"
    assert e.decide(Stage.RCPT, facts(recipient="bob@x.test")) is None
