"""from-bounce: each corpus bounce parses to the expected reply, and the scenario gives it back.

The round trips serve the generated YAML with a real FakeSMTP on 127.0.0.1 and speak to it with
smtplib, so "reproduces the bounce" means: the same code, enhanced status and text, at the same
stage, for the same recipient, with other recipients still accepted.
"""

from __future__ import annotations

import dataclasses
import re
import smtplib
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakesmtp import FakeSMTP
from fakesmtp.bounce import BounceError, Finding, bounce_to_yaml, parse_bounce, scenario_yaml
from fakesmtp.scenario import ScenarioError, load_scenario_text

from .conftest import served

CORPUS_DIR = Path(__file__).parent / "data" / "bounces"
CORPUS: dict[str, Any] = yaml.safe_load((CORPUS_DIR / "corpus.yaml").read_text(encoding="utf-8"))
BOUNCES: dict[str, Any] = CORPUS["bounces"]
UNREADABLE: dict[str, str] = CORPUS["unreadable"]
SENDER = "alice@shop.example.test"
BYSTANDER = "someone-else@example.test"
MESSAGE = f"From: {SENDER}\r\nTo: {BYSTANDER}\r\nSubject: probe\r\n\r\nHello.\r\n"


def read(name: str) -> str:
    return (CORPUS_DIR / name).read_text(encoding="utf-8")


def corpus_findings() -> Iterator[Any]:
    for name, entry in BOUNCES.items():
        for index, expected in enumerate(entry["findings"]):
            yield pytest.param(name, index, expected, id=f"{name}[{index}]")


def wire_message(code: int, status: str | None, text: tuple[str, ...] | list[str]) -> bytes:
    """What smtplib hands back for this reply: each line's status and text, joined by newlines."""
    lines = text or [""]
    return "\n".join(f"{status or ''} {line}".strip() for line in lines).encode()


# --------------------------------------------------------------------------------------------
# The corpus


def test_corpus_lists_every_file() -> None:
    on_disk = {p.name for p in CORPUS_DIR.iterdir() if p.is_file() and p.name != "corpus.yaml"}
    assert on_disk == set(BOUNCES)
    unreadable = {f"unreadable/{p.name}" for p in (CORPUS_DIR / "unreadable").iterdir()}
    assert unreadable == set(UNREADABLE)


def test_corpus_is_anonymised() -> None:
    """Only documentation names and addresses (RFC 2606, RFC 5737, RFC 3849) in the corpus."""
    allowed_ip = re.compile(r"^(?:192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}$")
    for path in CORPUS_DIR.rglob("*"):
        if not path.is_file() or path.name == "corpus.yaml":
            continue
        text = path.read_text(encoding="utf-8")
        for ip in re.findall(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", text):
            assert allowed_ip.match(ip), f"{path.name}: address {ip} is not a documentation one"
        for domain in re.findall(r"@([A-Za-z0-9.-]+[A-Za-z0-9])", text):
            assert domain.endswith(".test"), f"{path.name}: domain {domain} is not under .test"


# --------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("name", list(BOUNCES))
def test_parse_finds_every_reply(name: str) -> None:
    findings = parse_bounce(read(name))
    expected = BOUNCES[name]["findings"]
    assert [f.recipient for f in findings] == [e["recipient"] for e in expected]


@pytest.mark.parametrize(("name", "index", "expected"), list(corpus_findings()))
def test_parse_reply_stage_and_server(name: str, index: int, expected: dict[str, Any]) -> None:
    finding = parse_bounce(read(name))[index]
    assert finding.code == expected["code"]
    assert finding.status == expected["status"]
    assert list(finding.text) == expected["text"]
    assert finding.stage == expected["stage"]
    assert finding.remote_mta == expected["remote_mta"]
    assert finding.transient_then_delivered == expected["times"]
    assert finding.origin  # every finding says where it came from


def test_finding_is_a_frozen_value() -> None:
    finding = parse_bounce(read("pasted-single.txt"))[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.code = 250  # type: ignore[misc]
    assert not hasattr(finding, "__dict__")  # slots


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_input_gives_one_line_error(name: str) -> None:
    with pytest.raises(BounceError) as caught:
        parse_bounce(read(name))
    message = str(caught.value)
    assert message.startswith(UNREADABLE[name])
    assert "\n" not in message


def test_unreadable_error_names_what_was_looked_for() -> None:
    with pytest.raises(BounceError, match=r"^no SMTP reply found: looked for a DSN") as caught:
        bounce_to_yaml("Please call me back about the invoice.\n")
    for expected in ("Postfix", "Exim", "Sendmail", "qmail", "Exchange", "log line", "550 5.1.1"):
        assert expected in str(caught.value)


def test_bounce_error_is_a_value_error() -> None:
    assert issubclass(BounceError, ValueError)


# Stage words as each MTA writes them, one log line each.
POSTFIX_LINE = (
    "Nov 29 09:00:00 relay postfix/smtp[1]: ABCDE12345: to=<pat@example.test>, "
    "relay=mx.example.test[192.0.2.25]:25, delay=1, delays=0/0/0/1, dsn={status}, "
    "status={kind} (host mx.example.test[192.0.2.25] said: {reply} (in reply to {cmd} command))"
)
EXIM_LINE = (
    "2024-11-29 09:00:00 1tAbCd-000AbC-1Z ** pat@example.test R=dnslookup T=remote_smtp "
    "H=mx.example.test [192.0.2.25]: SMTP error from remote mail server after {cmd}: {reply}"
)


@pytest.mark.parametrize(
    ("cmd", "stage"),
    [
        ("RCPT TO", "rcpt"),
        ("MAIL FROM", "mail"),
        ("DATA", "data"),
        ("end of DATA", "end_of_data"),
        ("EHLO", "ehlo"),
        ("HELO", "helo"),
        ("STARTTLS", "starttls"),
    ],
)
def test_postfix_in_reply_to_names_the_stage(cmd: str, stage: str) -> None:
    line = POSTFIX_LINE.format(status="5.7.1", kind="bounced", reply="554 5.7.1 No", cmd=cmd)
    (finding,) = parse_bounce(line)
    assert (finding.stage, finding.code, finding.status, finding.text) == (
        stage,
        554,
        "5.7.1",
        ("No",),
    )


@pytest.mark.parametrize(
    ("cmd", "stage"),
    [
        ("RCPT TO:<pat@example.test>", "rcpt"),
        ("pipelined RCPT TO:<pat@example.test>", "rcpt"),
        ("MAIL FROM:<alice@shop.example.test> SIZE=1000", "mail"),
        ("pipelined MAIL FROM:<>", "mail"),
        ("DATA", "data"),
        ("pipelined DATA", "data"),
        ("end of data", "end_of_data"),
        ("pipelined end of data", "end_of_data"),
        ("initial connection", "connect"),
        ("EHLO relay.shop.example.test", "ehlo"),
        ("HELO relay.shop.example.test", "helo"),
    ],
)
def test_exim_after_names_the_stage(cmd: str, stage: str) -> None:
    (finding,) = parse_bounce(EXIM_LINE.format(cmd=cmd, reply="550 5.7.1 Refused"))
    assert (finding.stage, finding.code, finding.text) == (stage, 550, ("Refused",))
    assert finding.recipient == "pat@example.test"


def test_postfix_multiline_reply_flattened_by_the_log_is_split_again() -> None:
    reply = "451-4.7.1 First line 451-4.7.1 second line 451 4.7.1 third line"
    line = POSTFIX_LINE.format(status="4.7.1", kind="deferred", reply=reply, cmd="RCPT TO")
    (finding,) = parse_bounce(line)
    assert finding.text == ("First line", "second line", "third line")


def test_pasted_reply_quoted_in_an_email_reply() -> None:
    (finding,) = parse_bounce("> 550-5.7.1 First\n> 550 5.7.1 Second\n")
    assert (finding.code, finding.status, finding.text) == (550, "5.7.1", ("First", "Second"))


def test_pasted_reply_without_enhanced_status() -> None:
    (finding,) = parse_bounce("452 Too many recipients\n")
    assert (finding.code, finding.status, finding.text, finding.stage) == (
        452,
        None,
        ("Too many recipients",),
        None,
    )


def test_pasted_reply_about_the_sender_does_not_match_on_that_address() -> None:
    (finding,) = parse_bounce("553 5.7.1 <alice@shop.example.test>: Sender address rejected\n")
    assert finding.recipient is None


def test_log_deferred_then_bounced_limits_the_deferral() -> None:
    deferred = POSTFIX_LINE.format(
        status="4.2.2", kind="deferred", reply="452 4.2.2 Full", cmd="RCPT TO"
    )
    bounced = POSTFIX_LINE.format(
        status="5.2.2", kind="bounced", reply="552 5.2.2 Still full", cmd="RCPT TO"
    )
    first, second = parse_bounce("\n".join([deferred, deferred, bounced]))
    assert (first.code, first.transient_then_delivered) == (452, 2)
    assert (second.code, second.transient_then_delivered) == (552, 0)


def test_delivered_dsn_recipients_are_left_alone() -> None:
    findings = parse_bounce(read("rfc3464-multi-failed-delayed.eml"))
    assert "erin@example.test" not in {f.recipient for f in findings}


def test_returned_message_is_not_read_as_the_bounce() -> None:
    # The returned copy of the original message mentions "550 5.1.1": it must not count.
    (finding,) = parse_bounce(read("dsn-without-machine-part.eml"))
    assert finding.code == 552


# --------------------------------------------------------------------------------------------
# The YAML


@pytest.mark.parametrize("name", list(BOUNCES))
def test_generated_yaml_loads(name: str) -> None:
    text = bounce_to_yaml(read(name), name)
    scenario = load_scenario_text(text, source="<bounce>")
    # The key is written `on:`, bare, as users write it (the loader keeps it a string).
    assert len(re.findall(r"^  - on: [a-z_]+$", text, re.MULTILINE)) == len(scenario.rules) > 0
    assert "'on'" not in text and '"on"' not in text
    assert text.startswith("# Generated by `fakesmtp from-bounce`")


@pytest.mark.parametrize("name", list(BOUNCES))
def test_generated_yaml_is_safe_for_yaml_1_1(name: str) -> None:
    """A plain YAML 1.1 reader sees strings where strings are meant (no 5.1 float, no `yes`)."""
    data = yaml.safe_load(bounce_to_yaml(read(name), name))
    assert isinstance(data["name"], str)
    assert isinstance(data["description"], str)
    for rule in data["rules"]:
        assert rule[True] in {"connect", "helo", "ehlo", "mail", "rcpt", "data", "end_of_data"}
        reply = rule["reply"]
        assert isinstance(reply["code"], int)
        assert isinstance(reply.get("status", ""), str)
        texts = reply["text"] if isinstance(reply["text"], list) else [reply["text"]]
        assert all(isinstance(t, str) for t in texts)
        for value in rule.get("match", {}).values():
            assert all(isinstance(v, str) for v in (value if isinstance(value, list) else [value]))


@pytest.mark.parametrize(("name", "index", "expected"), list(corpus_findings()))
def test_generated_rule_stage_and_match(name: str, index: int, expected: dict[str, Any]) -> None:
    finding = parse_bounce(read(name))[index]
    scenario = load_scenario_text(scenario_yaml([finding], name), source="<bounce>")
    (rule,) = scenario.rules
    assert rule.on.value == expected["on"]
    assert (rule.reply.code, rule.reply.status) == (expected["code"], expected["status"])
    assert list(rule.reply.lines) == (expected["text"] or [""])
    assert rule.times == (expected["times"] or None)
    has_match = bool(expected["recipient"]) and expected["on"] in ("rcpt", "data", "end_of_data")
    assert (rule.match is not None and "to" in rule.match.keys) == has_match
    if expected["remote_mta"]:
        assert scenario.server.hostname == expected["remote_mta"]


def test_comments_say_where_values_came_from_and_what_was_assumed() -> None:
    text = bounce_to_yaml(read("rfc3464-multi-failed-delayed.eml"), "multi.eml")
    assert "# from: Diagnostic-Code of recipient carol@example.test (Action: failed)" in text
    assert re.search(r"# stage not stated in the bounce: .*assumed end_of_data", text)
    assert "# the remote server, as named by: Diagnostic-Code of recipient" in text
    assert "add `times: N` to let a retry through" in text  # the delayed recipient
    text = bounce_to_yaml(read("rfc3464-single-failed.eml"), "single.eml")
    assert '# stage from "in reply to RCPT TO command" (in the human-readable part)' in text


def make(**overrides: Any) -> Finding:
    values: dict[str, Any] = {
        "recipient": "pat@example.test",
        "code": 550,
        "status": "5.1.1",
        "text": ("Unknown",),
        "stage": "rcpt",
        "remote_mta": "mx.example.test",
        "origin": "test",
    }
    return Finding(**(values | overrides))


@pytest.mark.parametrize(
    "line",
    [
        "yes",
        "on",
        "~",
        "null",
        "5.1",
        "0x1F",
        "12:30",
        "#not a comment",
        "- looks like a list",
        "*alias",
        "&anchor",
        "!tag",
        "key: value",
        "'single' and \"double\" quotes",
        "back\\slash",
        "{SPAM} braces {to} stay literal }{",
        "% @ ` | >",
        "Ünïcödé ✓ 日本語",
        "",
    ],
)
def test_awkward_text_survives_yaml_and_the_loader(line: str) -> None:
    text = scenario_yaml([make(text=(line, "second"))])
    (rule,) = load_scenario_text(text, source="<bounce>").rules
    # Braces are doubled in the YAML so that the loader does not read {to} as a field.
    assert rule.reply.render() == f"550-5.1.1 {line}".rstrip().encode() + b"\r\n" + (
        b"550 5.1.1 second\r\n"
    )


def test_awkward_addresses_match_only_themselves() -> None:
    text = scenario_yaml([make(recipient="we*ird?[x]@example.test")])
    (rule,) = load_scenario_text(text, source="<bounce>").rules
    assert rule.match is not None and rule.match.to is not None
    assert rule.match.to("we*ird?[x]@example.test")
    assert not rule.match.to("weXirdY@example.test")


def test_status_of_another_class_goes_on_the_wire_unchanged() -> None:
    text = scenario_yaml([make(code=550, status="4.7.1", text=("Odd server",))])
    (rule,) = load_scenario_text(text, source="<bounce>").rules
    assert rule.reply.render() == b"550 4.7.1 Odd server\r\n"
    assert "disagrees with code 550" in text


def test_overlong_text_line_is_split_to_what_the_loader_takes() -> None:
    long = " ".join(["word"] * 200)
    text = scenario_yaml([make(text=(long,))])
    (rule,) = load_scenario_text(text, source="<bounce>").rules
    assert len(rule.reply.lines) > 1
    assert " ".join(rule.reply.lines) == long


def test_same_reply_for_several_recipients_is_one_rule() -> None:
    findings = parse_bounce(read("sendmail-bounce-data.txt"))
    text = scenario_yaml(findings, "data.txt")
    (rule,) = load_scenario_text(text, source="<bounce>").rules
    assert 'match: {to: ["kate@example.test", "leo@example.test"]}' in text
    assert rule.match is not None and rule.match.to is not None
    assert rule.match.to("leo@example.test") and not rule.match.to(BYSTANDER)


def test_recipient_not_matched_before_rcpt() -> None:
    text = scenario_yaml([make(stage="mail", code=553, status="5.7.1")])
    (rule,) = load_scenario_text(text, source="<bounce>").rules
    assert rule.match is None or not rule.match.keys
    assert "at mail it is not known yet" in text


def test_no_findings_is_an_error() -> None:
    with pytest.raises(BounceError):
        scenario_yaml([])


# --------------------------------------------------------------------------------------------
# Round trips: serve the scenario, meet the reply with smtplib


def client(server: FakeSMTP) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=5)


def attempt(server: FakeSMTP, stage: str, recipient: str) -> tuple[int, bytes]:
    """One session up to `stage`, every earlier step accepted; the reply at that stage."""
    if stage == "connect":
        try:
            smtp = client(server)
        except smtplib.SMTPConnectError as error:
            return error.smtp_code, error.smtp_error
        smtp.quit()
        return 220, b""
    smtp = client(server)
    try:
        if stage == "helo":
            return smtp.helo("client.shop.example.test")
        code, _ = smtp.ehlo("client.shop.example.test")
        if stage == "ehlo":
            return code, smtp.ehlo_resp or b""
        assert code == 250
        if stage == "mail":
            return smtp.mail(SENDER)
        assert smtp.mail(SENDER)[0] == 250
        if stage == "rcpt":
            return smtp.rcpt(recipient)
        assert smtp.rcpt(recipient)[0] == 250
        if stage == "data":
            return smtp.docmd("DATA")
        assert stage == "end_of_data", stage
        try:
            return smtp.data(MESSAGE)
        except smtplib.SMTPDataError as error:  # refused at DATA: not the stage we want
            pytest.fail(f"DATA itself was refused: {error}")
    finally:
        with suppress(OSError):
            smtp.close()


@pytest.mark.parametrize(("name", "index", "expected"), list(corpus_findings()))
def test_round_trip_gives_the_same_reply(name: str, index: int, expected: dict[str, Any]) -> None:
    finding = parse_bounce(read(name))[index]
    yaml_text = scenario_yaml([finding], name)
    load_scenario_text(yaml_text, source="<bounce>")
    stage = expected["on"]
    recipient = finding.recipient or BYSTANDER
    want = (expected["code"], wire_message(expected["code"], expected["status"], expected["text"]))
    with served(yaml_text) as server:
        for _ in range(max(1, expected["times"])):
            assert attempt(server, stage, recipient) == want
        if expected["times"]:
            # The log shows a later success: the next attempt goes through.
            assert attempt(server, stage, recipient)[0] in (220, 250)
        if finding.recipient and stage in ("rcpt", "data", "end_of_data"):
            # Only the failed recipient meets the reply; anyone else is accepted.
            assert attempt(server, stage, BYSTANDER)[0] == 250
        if finding.remote_mta and stage != "connect":
            smtp = client(server)
            assert smtp.ehlo()[1].split(b"\n")[0] == finding.remote_mta.encode()
            smtp.quit()


def test_round_trip_whole_dsn_in_one_transaction() -> None:
    """Failed at the end of data for one, delayed at RCPT for another, the third accepted."""
    yaml_text = bounce_to_yaml(read("rfc3464-multi-failed-delayed.eml"), "multi.eml")
    with served(yaml_text) as server:
        smtp = client(server)
        smtp.ehlo()
        assert smtp.mail(SENDER)[0] == 250
        assert smtp.rcpt("carol@example.test")[0] == 250
        assert smtp.rcpt("dan@example.test") == (
            452,
            b"4.2.2 <dan@example.test>: Mailbox over quota, try again later",
        )
        assert smtp.rcpt("erin@example.test")[0] == 250
        assert smtp.data(MESSAGE) == (554, b"5.7.1 Message refused: it looks like bulk mail")
        smtp.quit()


def test_round_trip_recipients_sharing_one_refusal() -> None:
    yaml_text = bounce_to_yaml(read("sendmail-bounce-data.txt"), "data.txt")
    with served(yaml_text) as server:
        for recipient in ("kate@example.test", "leo@example.test"):
            assert attempt(server, "end_of_data", recipient) == (
                554,
                b"5.7.1 Message content rejected",
            )
        assert attempt(server, "end_of_data", BYSTANDER)[0] == 250


def test_round_trip_every_stage_word() -> None:
    """The Exim `after ...` words at every stage a client can meet, served and met."""
    for cmd, stage in [
        ("initial connection", "connect"),
        ("EHLO x.example.test", "ehlo"),
        ("HELO x.example.test", "helo"),
        ("MAIL FROM:<>", "mail"),
        ("RCPT TO:<pat@example.test>", "rcpt"),
        ("DATA", "data"),
        ("end of data", "end_of_data"),
    ]:
        (finding,) = parse_bounce(EXIM_LINE.format(cmd=cmd, reply="554 5.7.1 Go away"))
        yaml_text = scenario_yaml([finding])
        with served(yaml_text) as server:
            assert attempt(server, stage, "pat@example.test") == (554, b"5.7.1 Go away"), cmd


def test_invalid_scenario_would_be_caught_by_the_loader() -> None:
    """The round trips mean something: the loader does refuse a broken reply."""
    bad = scenario_yaml([make()]).replace('status: "5.1.1"', 'status: "5.1"')
    with pytest.raises(ScenarioError):
        load_scenario_text(bad, source="<bounce>")


# --------------------------------------------------------------------------------------------
# Any input: a scenario the loader takes, or a one-line BounceError; never anything else

FRAGMENTS = [
    "550",
    "451",
    "421",
    "554",
    "250",
    "5.1.1",
    "4.7.1",
    "2.0.0",
    "9.9.9",
    "-",
    " ",
    "\n",
    "\r\n",
    "\t",
    "<bob@example.test>",
    "bob@example.test",
    ":",
    "said: ",
    "host mx.example.test[192.0.2.1]",
    " (in reply to RCPT TO command)",
    " (in reply to end of DATA command)",
    "status=bounced (",
    "status=deferred (",
    "status=sent (",
    "ABCDE12345: to=<bob@example.test>, ",
    ")",
    "Final-Recipient: rfc822; bob@example.test\n",
    "Action: failed\n",
    "Action: delayed\n",
    "Status: 5.1.1\n",
    "Diagnostic-Code: smtp; ",
    "Remote-MTA: dns; mx.example.test\n",
    "Remote host said: ",
    "does not like recipient.\n",
    "1tAbCd-000AbC-1Z ** bob@example.test ",
    "SMTP error from remote mail server after RCPT TO:<bob@example.test>: ",
    "after end of data: ",
    ">>> RCPT To:<bob@example.test>\n",
    "<<< ",
    "... while talking to mx.example.test.:\n",
    "Remote Server returned '",
    "'",
    "#",
    "##",
    "Reported error: ",
    "The response was:\n",
    "[BODY]",
    "{",
    "}",
    "{to}",
    '"',
    "\\",
    "é",
    "\x00",
    "\x1b",
    "\x85",
    "\u2028",
    "\ufeff",
    "From: a@example.test\n",
    "Content-Type: text/html\n",
    "<p>",
    "&lt;",
    "Content-Type: multipart/report; boundary=b\n",
    "\n--b\n",
    "\n--b--\n",
    "Content-Type: message/delivery-status\n",
    "dsn=5.1.1, stat=User unknown",
    "4ATD1C9x001234: to=<bob@example.test>, delay=00:00:01, relay=mx.example.test. [192.0.2.3], ",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=40).map("".join))
@pytest.mark.slow
def test_any_input_gives_a_loadable_scenario_or_a_bounce_error(text: str) -> None:
    try:
        findings = parse_bounce(text)
    except BounceError as error:
        assert "\n" not in str(error)
        return
    for finding in findings:
        assert 200 <= finding.code <= 599
    load_scenario_text(scenario_yaml(findings, "fuzz.txt"), source="<bounce>")


@pytest.mark.parametrize(
    "text",
    [
        "host x said:" + " \n" * 20000,
        "550-" * 20000,
        "550-5.1.1 " * 20000,
        "said " * 20000,
        "Reported error:" + " " * 50000,
        "550 x" + " (in reply to" * 20000,
        "<a@example.test>:\n" * 20000,
        "<" * 50000 + ">:",
        "Final-Recipient: rfc822; a@example.test\nAction: failed\n" + " x\n" * 20000,
        "From: a\n" + "X-A: b\n" * 20000 + "\nbody",
        "Remote host said: 550 " + " " * 50000 + "x",
        "<a@example.test>:\n554: " + " " * 50000 + "x",
        "The response was: 550 x" + " " * 50000 + "x",
    ],
    ids=lambda text: repr(text[:16]),
)
@pytest.mark.slow
def test_adversarial_input_is_read_in_one_pass(text: str) -> None:
    """Inputs that would make a careless pattern backtrack for minutes (each runs in well
    under a second); the test only checks they finish with an answer."""
    with suppress(BounceError):
        parse_bounce(text)
