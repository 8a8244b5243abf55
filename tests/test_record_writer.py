"""The recording -> scenario writer, on hand-built recordings (pure, fast)."""

from __future__ import annotations

import yaml

from fakesmtp.record import RecordedSession, Step, UpstreamReply, append_yaml, scenario_yaml
from fakesmtp.record.upstream import parse_reply
from fakesmtp.scenario import load_scenario_text
from fakesmtp.stages import Stage


def reply(*lines: str) -> UpstreamReply:
    wire = [f"{line}\r\n".encode() for line in lines]
    return parse_reply(wire)


def session(*steps: Step, capabilities: tuple[str, ...] | None = None) -> RecordedSession:
    recorded = RecordedSession(number=1, client="127.0.0.1", upstream="mx.example.test:25")
    recorded.capabilities = capabilities
    recorded.ehlo_greeting = "mx.example.test" if capabilities is not None else None
    recorded.steps.extend(steps)
    return recorded


def rules_of(text: str) -> list[dict]:
    load_scenario_text(text)  # always a valid scenario
    return yaml.safe_load(text)["rules"] or []


def test_parse_reply_keeps_multiline_text_and_one_status() -> None:
    parsed = reply("550-5.7.1 Refused.", "550-5.7.1 See the page", "550 5.7.1 for more.")
    assert (parsed.code, parsed.status) == (550, "5.7.1")
    assert parsed.lines == ("Refused.", "See the page", "for more.")
    assert parsed.wire == b"550-5.7.1 Refused.\r\n550-5.7.1 See the page\r\n550 5.7.1 for more.\r\n"
    assert reply("250 mx.example.test").status is None


def test_a_positive_reply_of_its_own_is_one_stage_wide_rule_with_the_address_templated() -> None:
    steps = [
        Step(
            stage=Stage.RCPT,
            command=f"RCPT TO:<{to}>",
            recipient=to,
            sender="a@x.test",
            reply=reply(f"250 2.1.5 <{to}>... Recipient ok"),
        )
        for to in ("b@x.test", "c@x.test")
    ]
    text = scenario_yaml([session(*steps)], "mx.example.test:25")
    assert rules_of(text) == [{True: "rcpt", "reply": "250 2.1.5 <{to}>... Recipient ok"}]


def test_without_enhancedstatuscodes_the_status_stays_in_the_text() -> None:
    refused = Step(stage=Stage.MAIL, command="MAIL FROM:<a@x.test>", sender="a@x.test",
                   reply=reply("553 5.7.1 <a@x.test>: Sender address rejected"))  # fmt: skip
    text = scenario_yaml([session(refused, capabilities=("PIPELINING",))], "mx:25")
    (rule,) = rules_of(text)
    assert rule["match"] == {"from": "a@x.test"}
    assert rule["reply"] == {"code": 553, "text": "5.7.1 <a@x.test>: Sender address rejected"}


def test_client_mistakes_are_noted_not_written_and_braces_are_escaped() -> None:
    steps = [
        Step(stage=Stage.MAIL, command="MAIL FROM:bad", reply=reply("501 5.1.7 Bad address")),
        Step(stage=Stage.NOOP, command="NOOP", reply=reply("250 2.0.0 Ok {really}")),
    ]
    text = scenario_yaml([session(*steps)], "mx:25")
    assert "# mail: 501 5.1.7 Bad address -- not written" in text
    assert rules_of(text) == [{True: "noop", "reply": "250 2.0.0 Ok {{really}}"}]


def test_an_ehlo_greeting_of_its_own_is_kept_and_the_extensions_go_to_server() -> None:
    ehlo = Step(stage=Stage.EHLO, command="EHLO me", helo="me",
                reply=reply("250-mx.example.test at your service, [127.0.0.1]",
                            "250-SIZE 35882577", "250-8BITMIME", "250 CHUNKING"))  # fmt: skip
    recorded = session(ehlo, capabilities=("SIZE 35882577", "8BITMIME", "CHUNKING"))
    text = scenario_yaml([recorded], "mx:25")
    data = yaml.safe_load(text)
    assert data["server"]["size_limit"] == 35882577
    assert data["server"]["extensions"] == ["8BITMIME", "CHUNKING"]
    assert "not replayed" not in text
    assert data["rules"] == [
        {True: "ehlo", "reply": "250 mx.example.test at your service, [127.0.0.1]"}
    ]


def test_append_twice_adds_nothing_the_second_time() -> None:
    refused = Step(stage=Stage.RCPT, command="RCPT TO:<b@x.test>", recipient="b@x.test",
                   reply=reply("550 5.1.1 No such user"))  # fmt: skip
    first = scenario_yaml([session(refused)], "mx:25")
    assert append_yaml(first, [session(refused)], "mx:25") == first


def test_an_upstream_reply_too_long_or_with_control_bytes_still_makes_a_valid_file() -> None:
    odd = Step(stage=Stage.HELP, command="HELP", reply=reply("214 2.0.0 " + "{x}\t" * 300))
    (rule,) = rules_of(scenario_yaml([session(odd)], "mx:25"))
    assert rule["reply"].startswith("214 2.0.0 {{x}}?{{x}}?")


def test_upstream_addresses() -> None:
    from fakesmtp.record.upstream import parse_address

    assert parse_address("mx.example.test") == ("mx.example.test", 25)
    assert parse_address("mx.example.test:2525") == ("mx.example.test", 2525)
    assert parse_address("[2001:db8::25]:587") == ("2001:db8::25", 587)
    assert parse_address("[::1]") == ("::1", 25)
    for bad in ("", ":25", "mx:0", "mx:port", "[::1]x"):
        try:
            parse_address(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was taken")


def test_a_long_recording_stays_bounded() -> None:
    from fakesmtp.record import Recording

    recording = Recording("mx:25", keep_bodies=True, max_sessions=1, max_kept_bodies=10)
    first, second = recording.open_session("127.0.0.1"), recording.open_session("127.0.0.1")
    refused = reply("554 5.7.1 Spam")
    for session in (first, second):
        for message in (b"short", b"longer than the room left"):
            recording.add(session, Step(stage=Stage.END_OF_DATA, command="<message>",
                                        reply=refused, message=message))  # fmt: skip
    (kept,) = recording.sessions()
    assert kept.number == 1 and [s.message for s in kept.steps] == [b"short", None]
    assert (recording.not_recorded, second.number, second.steps) == (1, 2, [])
    text = scenario_yaml(recording.sessions(), "mx:25", not_recorded=recording.not_recorded)
    assert "# 1 later session(s) were relayed but not recorded (bound)." in text
