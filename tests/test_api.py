"""The HTTP API over real HTTP (urllib) against a real server fed by real SMTP (smtplib)."""

from __future__ import annotations

import json
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from fakesmtp import FakeSMTP
from fakesmtp.scenario import ScenarioError, load_scenario_text

from .conftest import served

FULL = """
name: full
rules:
  - name: mailbox full
    on: rcpt
    match: {to: "*@full.test"}
    times: 1
    reply: 452 4.2.2 Mailbox full
"""

INVALID = """
name: broken
rules:
  - on: rcpt
    reply: 612 not a code
  - on: mail
    colour: red
"""


class Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)


class Api:
    """A tiny HTTP client for one server's API."""

    def __init__(self, smtp: FakeSMTP) -> None:
        self.smtp = smtp
        self.base = f"http://127.0.0.1:{smtp.api_port}"

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Response:
        request = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Response(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, error.headers, error.read())

    def get(self, path: str, **options: Any) -> Response:
        return self("GET", path, **options)

    def send(
        self, to: list[str], subject: str = "Hello", sender: str = "alice@app.test"
    ) -> dict[str, Any]:
        raw = f"From: {sender}\r\nSubject: {subject}\r\n\r\nHi\r\n".encode()
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=5) as client:
            return client.sendmail(sender, to, raw)


@pytest.fixture
def api() -> Iterator[Api]:
    with served(api_port=0) as smtp:
        yield Api(smtp)


def catalog_available() -> bool:
    try:
        from fakesmtp import catalog

        return catalog.code(550) is not None
    except Exception:
        return False


# --------------------------------------------------------------------------- health, errors


def test_health(api: Api) -> None:
    response = api.get("/api/v1/health")
    assert response.status == 200
    data = response.json
    assert data["status"] == "ok"
    assert data["smtp"] == {"host": "127.0.0.1", "port": api.smtp.port, "tls_port": None}
    assert (data["scenario"], data["messages"], data["errors"]) == ("default", 0, 0)


def test_api_listens_on_loopback_by_default() -> None:
    with served(api_port=0) as smtp:
        assert smtp.api_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/nothing-here", 404),
        ("GET", "/api/v1/messages/NOPE", 404),
        ("GET", "/api/v1/messages/NOPE/raw", 404),
        ("GET", "/api/v1/sessions/NOPE", 404),
        ("POST", "/api/v1/messages", 405),
        ("GET", "/api/v1/messages?limit=ten", 400),
        ("GET", "/api/v1/messages?limit=-1", 400),
        ("GET", "/api/v1/messages/wait?count=0", 400),
        ("GET", "/api/v1/messages/wait?timeout=forever", 400),
        ("GET", "/api/v1/messages/wait?timeout=9999", 400),
        ("POST", "/api/v1/reset?store=maybe", 400),
        ("GET", "/api/v1/scenario?format=xml", 400),
        ("GET", "/api/v1/catalog/hello", 400),
    ],
)
def test_bad_requests_get_json_errors(api: Api, method: str, path: str, status: int) -> None:
    response = api(method, path)
    assert response.status == status
    assert isinstance(response.json["error"], str) and response.json["error"]
    assert b"Traceback" not in response.body


def test_method_not_allowed_keeps_allow_header(api: Api) -> None:
    response = api("PATCH", "/api/v1/scenario")
    assert response.status == 405
    assert set(response.headers["Allow"].split(",")) >= {"GET", "PUT"}


def test_cross_origin_changes_are_refused(api: Api) -> None:
    api.send(["bob@example.test"])
    refused = api("DELETE", "/api/v1/messages", headers={"Origin": "http://evil.test"})
    assert refused.status == 403
    assert "cross-origin" in refused.json["error"]
    assert len(api.smtp.messages) == 1
    same = api("DELETE", "/api/v1/messages", headers={"Origin": api.base})
    assert same.status == 200 and same.json == {"deleted": 1}


# --------------------------------------------------------------------------- messages


def test_messages_newest_first_with_envelope(api: Api) -> None:
    api.send(["bob@example.test"], subject="first")
    api.send(["carol@example.test", "dave@other.test"], subject="second", sender="eve@app.test")
    data = api.get("/api/v1/messages").json
    assert (data["total"], data["count"]) == (2, 2)
    second, first = data["messages"]
    assert first["subject"] == "first" and second["subject"] == "second"
    assert second["from"] == "eve@app.test"
    assert second["to"] == ["carol@example.test", "dave@other.test"]
    for message in data["messages"]:
        assert {"id", "from", "to", "subject", "size", "received_at", "session_id"} <= set(message)
        assert message["size"] > 0


def test_message_filters(api: Api) -> None:
    api.send(["bob@example.test"], subject="Invoice 42")
    api.send(["carol@other.test"], subject="Welcome", sender="news@app.test")

    def subjects(query: str) -> list[str]:
        return [m["subject"] for m in api.get(f"/api/v1/messages?{query}").json["messages"]]

    assert subjects("to=bob@example.test") == ["Invoice 42"]
    assert subjects("to=*@other.test") == ["Welcome"]
    assert subjects("to=CAROL") == ["Welcome"]  # a plain value is a case-insensitive substring
    assert subjects("from=news@*") == ["Welcome"]
    assert subjects("subject=invoice") == ["Invoice 42"]
    assert subjects("subject=Invoice*&to=carol*") == []
    assert subjects("limit=1") == ["Welcome"]
    session_id = api.smtp.messages[0].session_id
    assert subjects(f"session={session_id}") == ["Invoice 42"]


def test_message_detail_and_raw(api: Api) -> None:
    message = EmailMessage()
    message["From"] = "alice@app.test"
    message["To"] = "bob@example.test"
    message["Subject"] = "Report"
    message.set_content("See the attachment.\n")
    message.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="data.csv")
    with smtplib.SMTP(api.smtp.host, api.smtp.port, timeout=5) as client:
        client.send_message(message)
    [captured] = api.smtp.wait_for(1)
    detail = api.get(f"/api/v1/messages/{captured.id}").json
    assert detail["subject"] == "Report"
    assert ["Subject", "Report"] in detail["headers"]
    assert detail["text"] == "See the attachment.\n"
    assert detail["attachments"] == [
        {"filename": "data.csv", "content_type": "text/csv", "size": 8}
    ]
    raw = api.get(f"/api/v1/messages/{captured.id}/raw")
    assert raw.status == 200
    assert raw.headers["Content-Type"] == "message/rfc822"
    assert raw.body == captured.raw


def test_delete_messages_keeps_sessions(api: Api) -> None:
    api.send(["bob@example.test"])
    api.send(["carol@example.test"])
    response = api("DELETE", "/api/v1/messages")
    assert response.json == {"deleted": 2}
    assert api.get("/api/v1/messages").json["messages"] == []
    assert api.get("/api/v1/sessions").json["total"] == 2


@pytest.mark.slow
def test_wait_returns_when_the_messages_arrive(api: Api) -> None:
    def later() -> None:
        time.sleep(0.2)
        api.send(["bob@example.test"], subject="one")
        api.send(["carol@example.test"], subject="two")

    sender = threading.Thread(target=later)
    started = time.monotonic()
    sender.start()
    response = api.get("/api/v1/messages/wait?count=2&timeout=10")
    elapsed = time.monotonic() - started
    sender.join()
    assert response.status == 200
    assert [m["subject"] for m in response.json["messages"]] == ["two", "one"]
    assert elapsed < 5  # woken by the arrival, not by the timeout


@pytest.mark.slow
def test_wait_with_a_filter_and_timeout(api: Api) -> None:
    api.send(["bob@example.test"])
    assert api.get("/api/v1/messages/wait?count=1&timeout=1").status == 200
    response = api.get("/api/v1/messages/wait?count=1&timeout=0.2&to=carol@*")
    assert response.status == 408
    assert response.json["count"] == 0
    assert "timed out after 0.2s" in response.json["error"]


@pytest.mark.slow
def test_a_pending_wait_does_not_hold_up_the_server_stop() -> None:
    smtp = FakeSMTP(api_port=0).start()
    api = Api(smtp)
    results: list[Response] = []
    waiter = threading.Thread(
        target=lambda: results.append(api.get("/api/v1/messages/wait?timeout=60"))
    )
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    smtp.stop()
    waiter.join(10)
    assert time.monotonic() - started < 5
    assert results and results[0].status == 503


# --------------------------------------------------------------------------- sessions


def test_sessions_with_transcript_rule_and_explanation(api: Api) -> None:
    api.smtp.use(FULL)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        api.send(["carol@full.test"])
    api.smtp.wait_for_sessions(1)
    data = api.get("/api/v1/sessions").json
    assert data["total"] == 1
    [summary] = data["sessions"]
    assert summary["worst"] == 452 and summary["end"] == "quit" and summary["active"] is False
    assert "transcript" not in summary
    session = api.get(f"/api/v1/sessions/{summary['id']}").json
    stages = [e["stage"] for e in session["transcript"]]
    assert stages[:4] == ["connect", "ehlo", "mail", "rcpt"]
    rcpt = session["transcript"][3]
    assert rcpt["command"] == "rcpt TO:<carol@full.test>"
    assert rcpt["reply"] == "452 4.2.2 Mailbox full"
    assert (rcpt["code"], rcpt["status"], rcpt["kind"]) == (452, "4.2.2", "transient")
    assert rcpt["rule"] == "mailbox full"
    if catalog_available():
        assert rcpt["summary"] and rcpt["advice"] and rcpt["status_meaning"]
    ehlo = session["transcript"][1]
    assert ehlo["kind"] == "success" and "advice" not in ehlo
    assert session["messages"] == []


def test_session_lists_its_messages(api: Api) -> None:
    api.send(["bob@example.test"], subject="kept")
    [summary] = api.get("/api/v1/sessions").json["sessions"]
    session = api.get(f"/api/v1/sessions/{summary['id']}").json
    [message] = session["messages"]
    assert message["subject"] == "kept"
    api("DELETE", "/api/v1/messages")
    session = api.get(f"/api/v1/sessions/{summary['id']}").json
    assert session["messages"] == [{"id": message["id"], "deleted": True}]


@pytest.mark.skipif(not catalog_available(), reason="the reply catalog is not in this build")
def test_catalog_endpoint(api: Api) -> None:
    code = api.get("/api/v1/catalog/550").json
    assert code["code"] == 550 and code["kind"] == "permanent" and code["advice"]
    status = api.get("/api/v1/catalog/5.1.1").json
    assert status["status"] == "5.1.1" and status["meaning"]
    assert api.get("/api/v1/catalog/299").status == 404


# --------------------------------------------------------------------------- scenario


def test_get_scenario_as_json_and_yaml(api: Api) -> None:
    api.smtp.use(FULL)
    data = api.get("/api/v1/scenario").json
    assert data["name"] == "full"
    [rule] = data["rules"]
    assert (rule["name"], rule["on"], rule["reply"], rule["times"]) == (
        "mailbox full",
        "rcpt",
        "452 4.2.2 Mailbox full",
        1,
    )
    assert rule["match"] == ["to"]
    text = api.get("/api/v1/scenario?format=yaml")
    assert text.headers["Content-Type"].startswith("application/yaml")
    assert text.body.decode() == FULL


def test_put_yaml_takes_effect_for_the_next_command_of_an_open_session(api: Api) -> None:
    with smtplib.SMTP(api.smtp.host, api.smtp.port, timeout=5) as client:
        client.ehlo()
        client.mail("alice@app.test")
        assert client.rcpt("carol@full.test")[0] == 250
        response = api("PUT", "/api/v1/scenario", FULL.encode(), {"Content-Type": "text/yaml"})
        assert response.status == 200 and response.json["name"] == "full"
        assert client.rcpt("dave@full.test") == (452, b"4.2.2 Mailbox full")
    assert api.get("/api/v1/health").json["scenario"] == "full"


def test_put_json_body(api: Api) -> None:
    body = {"name": "json", "rules": [{"on": "mail", "reply": "451 4.3.0 Try later"}]}
    response = api(
        "PUT", "/api/v1/scenario", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert response.status == 200
    assert response.json["rules"][0]["on"] == "mail"
    with smtplib.SMTP(api.smtp.host, api.smtp.port, timeout=5) as client:
        client.ehlo()
        assert client.mail("alice@app.test")[0] == 451


def test_put_invalid_scenario_reports_what_validate_reports(api: Api) -> None:
    response = api("PUT", "/api/v1/scenario", INVALID.encode())
    assert response.status == 400
    data = response.json
    assert data["error"] == "invalid scenario"
    with pytest.raises(ScenarioError) as expected:
        load_scenario_text(INVALID, "<request>")
    assert [(p["line"], p["key"], p["message"]) for p in data["problems"]] == [
        (p.line, p.key, p.message) for p in expected.value.problems
    ]
    assert [p["text"] for p in data["problems"]] == [str(p) for p in expected.value.problems]
    assert api.get("/api/v1/scenario").json["name"] == "default"  # nothing changed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "send the scenario"),
        (b"  \n", "send the scenario"),
        (b"\xff\xfe\x00", "UTF-8"),
        (b"rules: [", "invalid scenario"),
    ],
)
def test_put_unusable_bodies(api: Api, body: bytes, message: str) -> None:
    response = api("PUT", "/api/v1/scenario", body)
    assert response.status == 400
    assert message in response.json["error"]


def test_put_builtin_by_name_only(api: Api) -> None:
    assert api("PUT", "/api/v1/scenario?builtin=greylisting").json["name"] == "greylisting"
    refused = api("PUT", "/api/v1/scenario?builtin=/etc/passwd")
    assert refused.status == 400
    assert "greylisting" in refused.json["allowed"]


# --------------------------------------------------------------------------- reset


def test_reset_counters_store_and_scenario(api: Api) -> None:
    api("PUT", "/api/v1/scenario", FULL.encode())
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        api.send(["carol@full.test"])  # times: 1, so the next one is accepted
    api.send(["carol@full.test"])
    response = api("POST", "/api/v1/reset")
    assert response.json["reset"] == ["counters", "errors"]
    assert len(api.smtp.messages) == 1  # the store is kept without ?store=true
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        api.send(["carol@full.test"])  # the counter starts again
    response = api("POST", "/api/v1/reset?store=true&scenario=true")
    assert response.json["reset"] == ["counters", "errors", "scenario", "store"]
    assert api.get("/api/v1/messages").json["total"] == 0
    assert api.get("/api/v1/sessions").json["total"] == 0
    assert api.get("/api/v1/scenario").json["name"] == "default"


# --------------------------------------------------------------------------- the document


@pytest.mark.slow
def test_openapi_documents_every_route_and_no_other() -> None:
    import yaml

    from fakesmtp.api import routes

    document = yaml.safe_load((Path(__file__).parent.parent / "openapi.yaml").read_text())
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert documented == {(method, path) for method, path, _ in routes()}


def test_a_rule_added_with_on_after_a_put_is_tried_before_the_put_rules(api: Api) -> None:
    smtp = api.smtp
    smtp.on("rcpt", to="first@x.test").reply("451 4.3.0 before the PUT")
    body = b"rules:\n  - {on: rcpt, reply: 550 5.1.1 from the PUT}\n"
    assert api("PUT", "/api/v1/scenario", body).status == 200
    smtp.on("rcpt", to="*@full.test").reply("452 4.2.2 Mailbox full")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        api.send(["bob@full.test", "carol@x.test", "first@x.test"])
    # on() promises its rules go first; the PUT replaced the scenario, with what on() added before.
    assert refused.value.recipients == {
        "bob@full.test": (452, b"4.2.2 Mailbox full"),
        "carol@x.test": (550, b"5.1.1 from the PUT"),
        "first@x.test": (550, b"5.1.1 from the PUT"),
    }
    assert api("POST", "/api/v1/reset?scenario=true").status == 200
    smtp.on("rcpt").reply("453 4.3.0 after the reset")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        api.send(["dave@x.test"])
    assert refused.value.recipients == {"dave@x.test": (453, b"4.3.0 after the reset")}
