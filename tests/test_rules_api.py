"""Rules added at run time (/api/v1/rules, FakeSMTP.add_rule) and Mailpit's Chaos as rules."""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
from collections.abc import Iterator

import pytest

from fakesmtp import FakeSMTP
from tests.test_mailpit import Http

from .conftest import served


@pytest.fixture
def http() -> Iterator[Http]:
    with served(api_port=0) as smtp:
        yield Http(smtp)


def send(smtp: FakeSMTP, to: str = "bob@example.test") -> tuple[int, bytes]:
    """One message; the first refusal's (code, text) or the final (250, ...)."""
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        client.ehlo()
        for verb, argument in (
            ("MAIL", "FROM:<app@example.test>"),
            ("RCPT", f"TO:<{to}>"),
            ("DATA", ""),
        ):
            code, text = client.docmd(verb, argument)
            if code >= 400:
                return code, text
        client.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        return client.getreply()


def curl(*args: str) -> str:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return subprocess.run(
        ["curl", "-s", "--fail-with-body", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout


@pytest.mark.slow
def test_next_message_fails_from_curl_then_passes(http: Http) -> None:
    base = http.base
    added = json.loads(
        curl(
            "-X",
            "POST",
            "--data-binary",
            "on: end_of_data\ntimes: 1\nreply: 451 4.3.0 Try later\n",
            f"{base}/api/v1/rules",
        )
    )
    assert added["on"] == "end_of_data" and added["times"] == 1
    assert send(http.smtp) == (451, b"4.3.0 Try later")
    assert send(http.smtp)[0] == 250
    assert len(http.smtp.messages) == 1
    listed = json.loads(curl(f"{base}/api/v1/rules"))["rules"]
    assert [rule["id"] for rule in listed] == [added["id"]]
    deleted = json.loads(curl("-X", "DELETE", f"{base}/api/v1/rules/{added['id']}"))
    assert deleted["deleted"][0]["id"] == added["id"]
    assert json.loads(curl(f"{base}/api/v1/rules"))["rules"] == []
    # A transcript names the rule like any other
    transcript = http.smtp.sessions[0].exchanges
    assert any(e.rule and "end_of_data rule at <rule>:1" in e.rule for e in transcript)


def test_runtime_rules_come_before_the_scenario_and_after_on() -> None:
    scenario = "rules: [{on: rcpt, reply: 550 5.1.1 from the scenario}]"
    with served(scenario, api_port=0) as smtp:
        http = Http(smtp)
        smtp.on("rcpt", to="*@example.test").reply("452 4.2.2 from on()")
        status, _, body = http("POST", "/api/v1/rules", {"on": "rcpt", "reply": "451 4.7.1 api"})
        assert status == 201
        api_rule = json.loads(body)["id"]
        assert send(smtp)[1] == b"4.2.2 from on()"  # on() was added first: tried first
        assert send(smtp, "x@other.test")[1] == b"4.7.1 api"  # then the API's, for the rest
        listed = http.json("GET", "/api/v1/rules")["rules"]
        assert [r["reply"] for r in listed] == ["452 4.2.2 from on()", "451 4.7.1 api"]
        http.json("DELETE", f"/api/v1/rules/{listed[0]['id']}")
        assert send(smtp)[1] == b"4.7.1 api"
        http.json("DELETE", f"/api/v1/rules/{api_rule}")
        assert send(smtp)[1] == b"5.1.1 from the scenario"


def test_adding_a_rule_keeps_the_other_rules_counts() -> None:
    scenario = "rules: [{on: rcpt, times: 1, reply: 451 4.7.1 greylisted}]"
    with served(scenario, api_port=0) as smtp:
        http = Http(smtp)
        assert send(smtp)[0] == 451
        http.json("DELETE", "/api/v1/rules")  # nothing added yet: nothing to do
        status, _, body = http("POST", "/api/v1/rules", {"on": "mail", "times": 1, "reply": 421})
        assert status == 201
        assert send(smtp)[0] == 421  # the new rule fires once...
        assert send(smtp)[0] == 250  # ...and the scenario's times: 1 is still spent
        rule_id = json.loads(body)["id"]
        assert http("DELETE", f"/api/v1/rules/{rule_id}")[0] == 200
        assert send(smtp)[0] == 250


def test_python_add_rule_remove_rule() -> None:
    with served() as smtp:
        rule_id = smtp.add_rule({"on": "rcpt", "times": 1, "reply": 452})
        assert list(smtp.added_rules()) == [rule_id]
        assert send(smtp)[0] == 452
        smtp.add_rule("on: mail\nreply: 451\n")
        assert send(smtp)[0] == 451
        smtp.remove_rule(rule_id)
        assert len(smtp.added_rules()) == 1
        with pytest.raises(KeyError):
            smtp.remove_rule(rule_id)
        smtp.use(None)  # a new scenario drops them
        assert smtp.added_rules() == {}
        assert send(smtp)[0] == 250


def test_invalid_rule_is_400_with_line_and_key(http: Http) -> None:
    assert http("POST", "/api/v1/rules", b"")[0] == 400
    status, _, body = http("POST", "/api/v1/rules", b"on: rcpt\nreply: 612 nope\n")
    assert status == 400
    [problem] = json.loads(body)["problems"]
    assert (problem["line"], problem["key"]) == (2, "reply")
    assert http.json("GET", "/api/v1/rules")["rules"] == []
    assert http("DELETE", "/api/v1/rules/999")[0] == 404
    assert http("GET", "/api/v1/rules/999")[0] == 404


def test_a_new_scenario_drops_added_rules(http: Http) -> None:
    http("POST", "/api/v1/rules", {"on": "rcpt", "reply": 550})
    assert send(http.smtp)[0] == 550
    assert http("PUT", "/api/v1/scenario?builtin=default", b"")[0] == 200
    assert http.json("GET", "/api/v1/rules")["rules"] == []
    assert send(http.smtp)[0] == 250


# --------------------------------------------------------------------------- Chaos


def test_chaos_recipient_451_then_cleared(http: Http) -> None:
    default = http.json("GET", "/api/v1/chaos")
    assert default == {
        "Sender": {"ErrorCode": 451, "Probability": 0},
        "Recipient": {"ErrorCode": 451, "Probability": 0},
        "Authentication": {"ErrorCode": 535, "Probability": 0},
    }
    now = http.json("PUT", "/api/v1/chaos", {"Recipient": {"ErrorCode": 451, "Probability": 100}})
    assert now["Recipient"] == {"ErrorCode": 451, "Probability": 100}
    assert now["Sender"]["Probability"] == 0
    code, text = send(http.smtp)
    assert code == 451 and text.startswith(b"4.")  # the catalog's status and text
    [rule] = http.json("GET", "/api/v1/rules")["rules"]
    assert (rule["name"], rule["on"]) == ("chaos: Recipient", "rcpt")
    rcpt = [e for e in http.smtp.sessions[-1].exchanges if e.stage == "rcpt"]
    assert rcpt[-1].rule == "chaos: Recipient"
    assert http.json("PUT", "/api/v1/chaos", {})["Recipient"]["Probability"] == 0
    assert http.json("GET", "/api/v1/rules")["rules"] == []
    assert send(http.smtp)[0] == 250


def test_chaos_sender_421_closes_the_connection(http: Http) -> None:
    http.json("PUT", "/api/v1/chaos", {"Sender": {"ErrorCode": 421, "Probability": 100}})
    with smtplib.SMTP(http.smtp.host, http.smtp.port, timeout=5) as client:
        client.ehlo()
        code, _ = client.docmd("MAIL", "FROM:<a@example.test>")
        assert code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_chaos_probability_and_validation(http: Http) -> None:
    half = http.json("PUT", "/api/v1/chaos", {"Sender": {"Probability": 50}})
    assert half["Sender"] == {"ErrorCode": 451, "Probability": 50}
    [rule] = http.json("GET", "/api/v1/rules")["rules"]
    assert rule["probability"] == 0.5
    for bad in (
        {"Sender": {"ErrorCode": 250, "Probability": 5}},
        {"Sender": {"ErrorCode": 451, "Probability": 101}},
        {"Nobody": {"ErrorCode": 451, "Probability": 1}},
    ):
        status = http("PUT", "/api/v1/chaos", bad)[0]
        assert status == 400, bad
    assert http.json("GET", "/api/v1/chaos")["Sender"]["Probability"] == 50  # unchanged


def test_with_workers_adding_rules_is_refused_plainly() -> None:
    from fakesmtp.workers import Supervisor

    assert Supervisor.supports_added_rules is False
    with FakeSMTP(api_port=0) as smtp:
        smtp.supports_added_rules = False  # what a Supervisor says
        http = Http(smtp)
        status, _, body = http("POST", "/api/v1/rules", {"on": "rcpt", "reply": 550})
        assert status == 501 and b"--workers" in body
        put = http("PUT", "/api/v1/chaos", {"Sender": {"ErrorCode": 451, "Probability": 5}})
        assert put[0] == 501
        assert send(smtp)[0] == 250
