"""Mailpit's API v1 and MailHog's API v2 shapes, over real HTTP, fed by real SMTP (smtplib)."""

from __future__ import annotations

import hashlib
import json
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from fakesmtp import FakeSMTP

from .conftest import served


class Http:
    """urllib against one server's API: (status, content type, body)."""

    def __init__(self, smtp: FakeSMTP) -> None:
        self.smtp = smtp
        self.base = f"http://127.0.0.1:{smtp.api_port}"

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
        """``body``: bytes as they are (YAML text), anything else as JSON."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data and data[:1] in b"{[" else {}
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, kind, data = self(method, path, body)
        assert status == 200, (status, data)
        assert kind.startswith("application/json"), kind
        return json.loads(data)

    def send(
        self, message: EmailMessage, sender: str = "app@example.test", to: list[str] | None = None
    ) -> None:
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=5) as client:
            client.ehlo("client.example.test")
            client.send_message(message, from_addr=sender, to_addrs=to)


def letter(subject: str, to: str = "Bob Smith <bob@example.test>", **extra: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice App <alice@example.test>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '.')}@example.test>"
    message["Date"] = "Tue, 03 Mar 2026 10:00:00 +0000"
    for name, value in extra.items():
        message[name.replace("_", "-")] = value
    message.set_content(f"Hello Bob,\n\nThis is {subject}.\n")
    return message


@pytest.fixture
def http() -> Iterator[Http]:
    with served(api_port=0) as smtp:
        yield Http(smtp)


def with_attachment(subject: str) -> EmailMessage:
    message = letter(subject, Cc="Carol <carol@example.test>", Reply_To="help@example.test")
    message.add_alternative("<p>Hello <b>Bob</b></p>", subtype="html")
    message.add_attachment(
        b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="invoice.pdf"
    )
    return message


# --------------------------------------------------------------------------- Mailpit


def test_list_has_our_fields_and_mailpits(http: Http) -> None:
    http.send(letter("first"))
    http.send(letter("second"), to=["bob@example.test", "hidden@example.test"])
    data = http.json("GET", "/api/v1/messages")
    # ours
    assert (data["total"], data["count"]) == (2, 2)
    newest = data["messages"][0]
    assert newest["subject"] == "second" and newest["to"] == [
        "bob@example.test",
        "hidden@example.test",
    ]
    # Mailpit's
    assert (data["messages_count"], data["unread"], data["start"], data["tags"]) == (2, 2, 0, [])
    assert newest["ID"] == newest["id"]
    assert newest["Subject"] == "second"
    assert newest["MessageID"] == "second@example.test"
    assert newest["From"] == {"Name": "Alice App", "Address": "alice@example.test"}
    assert newest["To"] == [{"Name": "Bob Smith", "Address": "bob@example.test"}]
    assert newest["Bcc"] == [{"Name": "", "Address": "hidden@example.test"}]
    assert newest["Read"] is False and newest["Attachments"] == 0 and newest["Tags"] == []
    assert newest["Snippet"] == "Hello Bob, This is second."
    assert newest["Size"] == newest["size"] > 0
    assert newest["Created"].endswith("Z")


def test_list_pages_with_start_and_limit(http: Http) -> None:
    for n in range(3):
        http.send(letter(f"n{n}"))
    data = http.json("GET", "/api/v1/messages?start=1&limit=1")
    assert [m["Subject"] for m in data["messages"]] == ["n1"]
    assert (data["start"], data["total"], data["messages_count"], data["count"]) == (1, 3, 3, 3)


def test_message_latest_full_shape_and_read(http: Http) -> None:
    http.send(letter("older"))
    http.send(with_attachment("invoice"), to=["bob@example.test", "carol@example.test"])
    data = http.json("GET", "/api/v1/message/latest")
    assert data["Subject"] == "invoice" and data["Read"] is True
    assert data["Text"] == "Hello Bob,\n\nThis is invoice.\n"
    assert data["HTML"] == "<p>Hello <b>Bob</b></p>\n"
    assert data["Cc"] == [{"Name": "Carol", "Address": "carol@example.test"}]
    assert data["ReplyTo"] == [{"Name": "", "Address": "help@example.test"}]
    assert data["Bcc"] == []
    assert data["ReturnPath"] == "app@example.test"
    assert data["Date"] == "2026-03-03T10:00:00.000Z"
    assert data["Inline"] == []
    [attachment] = data["Attachments"]
    assert attachment["FileName"] == "invoice.pdf"
    assert attachment["ContentType"] == "application/pdf"
    assert attachment["Size"] == len(b"%PDF-1.4 fake")
    assert attachment["Checksums"]["SHA256"] == hashlib.sha256(b"%PDF-1.4 fake").hexdigest()
    # Reading it marked it read, as Mailpit does
    listed = http.json("GET", "/api/v1/messages")
    assert [m["Read"] for m in listed["messages"]] == [True, False]
    assert listed["unread"] == 1
    # The part, by the PartID the summary gave
    status, kind, body = http("GET", f"/api/v1/message/{data['ID']}/part/{attachment['PartID']}")
    assert (status, kind, body) == (200, "application/pdf", b"%PDF-1.4 fake")


def test_headers_raw_and_views(http: Http) -> None:
    http.send(with_attachment("views"))
    message_id = http.json("GET", "/api/v1/messages")["messages"][0]["ID"]
    headers = http.json("GET", f"/api/v1/message/{message_id}/headers")
    assert list(headers) == sorted(headers)
    assert headers["Subject"] == ["views"]
    assert headers["Message-Id"] == ["<views@example.test>"]  # Go's form, as Mailpit names it
    assert headers["Mime-Version"] == ["1.0"]
    assert headers["To"] == ["Bob Smith <bob@example.test>"]
    status, kind, raw = http("GET", f"/api/v1/message/{message_id}/raw")
    assert status == 200 and kind.startswith("text/plain")
    assert raw == http.smtp.messages[0].raw
    status, kind, page = http("GET", "/view/latest.html")
    assert (status, page) == (200, b"<p>Hello <b>Bob</b></p>\n")
    status, kind, text = http("GET", f"/view/{message_id}.txt")
    assert (status, text) == (200, b"Hello Bob,\n\nThis is views.\n")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/message/NOPE",
        "/api/v1/message/latest",
        "/api/v1/message/NOPE/raw",
        "/api/v1/message/latest/headers",
        "/view/latest.txt",
    ],
)
def test_missing_messages_are_404(http: Http, path: str) -> None:
    status, _, body = http("GET", path)
    assert status == 404 and "error" in json.loads(body)


def test_search_syntax(http: Http) -> None:
    http.send(letter("monthly report", to="Bob <bob@example.test>"))
    http.send(letter("weekly report", to="Dan <dan@example.test>"))
    http.send(with_attachment("invoice 42"))

    def subjects(query: str) -> list[str]:
        found = http.json("GET", "/api/v1/search?" + urllib.parse.urlencode({"query": query}))
        assert found["messages_count"] == len(found["messages"])
        return [m["Subject"] for m in found["messages"]]

    assert subjects("to:dan") == ["weekly report"]
    assert subjects('subject:"monthly report"') == ["monthly report"]
    assert subjects("report -to:dan") == ["monthly report"]
    assert subjects("has:attachment") == ["invoice 42"]
    assert subjects("!has:attachment from:alice") == ["weekly report", "monthly report"]
    assert subjects("is:unread larger:10") == ["invoice 42", "weekly report", "monthly report"]
    assert subjects("cc:carol") == ["invoice 42"]
    assert subjects("message-id:weekly") == ["weekly report"]
    assert subjects("DAN") == ["weekly report"]  # headers and bodies, any case
    assert subjects('"this is monthly"') == ["monthly report"]
    assert subjects("nothing-like-this") == []
    status, _, body = http("GET", "/api/v1/search")
    assert status == 400 and b"no search query" in body


def test_delete_by_search_by_ids_and_all(http: Http) -> None:
    for subject in ("keep", "drop me", "also"):
        http.send(letter(subject))
    assert http("DELETE", "/api/v1/search?query=subject:drop")[2] == b"ok"
    assert [m.subject for m in http.smtp.messages] == ["keep", "also"]
    keep = http.smtp.messages[0].id
    deleted = http.json("DELETE", "/api/v1/messages", {"IDs": [keep, "NO-SUCH-ID"]})
    assert deleted == {"deleted": 1}
    assert [m.subject for m in http.smtp.messages] == ["also"]
    assert http.json("DELETE", "/api/v1/messages") == {"deleted": 1}
    assert http.smtp.messages == []
    # Like Mailpit, a body that names no ids as JSON (a client sending them form-encoded)
    # deletes everything
    http.send(letter("form"))
    assert http.json("DELETE", "/api/v1/messages", b"ids=whatever") == {"deleted": 1}


def test_set_read_status(http: Http) -> None:
    http.send(letter("a"))
    http.send(letter("b"))
    assert http("PUT", "/api/v1/messages", {"Read": True, "Search": "subject:a"})[2] == b"ok"
    assert [m["Subject"] for m in http.json("GET", "/api/v1/search?query=is:read")["messages"]] == [
        "a"
    ]
    http("PUT", "/api/v1/messages", {"Read": True})
    assert http.json("GET", "/api/v1/messages")["unread"] == 0
    status, _, _ = http("PUT", "/api/v1/messages", {"IDs": ["x"], "Search": "a"})
    assert status == 400


def test_info_webui_tags_livez(http: Http) -> None:
    http.send(letter("x"))
    info = http.json("GET", "/api/v1/info")
    assert info["Messages"] == 1 and info["Unread"] == 1
    assert info["RuntimeStats"]["SMTPAccepted"] == 1
    assert http.json("GET", "/api/v1/webui")["ChaosEnabled"] is True
    assert http.json("GET", "/api/v1/tags") == []
    assert http("GET", "/livez")[0] == http("GET", "/readyz")[0] == 200


# --------------------------------------------------------------------------- MailHog


def test_mailhog_v2_messages_shape(http: Http) -> None:
    http.send(letter("plain"))
    http.send(with_attachment("multi"), to=["bob@example.test"])
    data = http.json("GET", "/api/v2/messages")
    assert (data["total"], data["count"], data["start"]) == (2, 2, 0)
    newest = data["items"][0]
    assert newest["ID"] == http.smtp.messages[1].id
    assert newest["From"] == {
        "Relays": None,
        "Mailbox": "app",
        "Domain": "example.test",
        "Params": "",
    }
    assert newest["To"] == [
        {"Relays": None, "Mailbox": "bob", "Domain": "example.test", "Params": ""}
    ]
    assert newest["Content"]["Headers"]["Subject"] == ["multi"]
    assert newest["Content"]["Headers"]["Content-Type"][0].startswith("multipart/mixed")
    assert newest["Raw"]["Helo"] == "client.example.test"
    assert newest["Raw"]["Data"].encode() == http.smtp.messages[1].raw
    types = [p["Headers"]["Content-Type"][0].split(";")[0] for p in newest["MIME"]["Parts"]]
    assert types == ["text/plain", "text/html", "application/pdf"]
    oldest = data["items"][1]
    assert oldest["MIME"] is None and "This is plain." in oldest["Content"]["Body"]
    page = http.json("GET", "/api/v2/messages?start=1&limit=5")
    assert (page["count"], page["items"][0]["ID"]) == (1, oldest["ID"])


def test_mailhog_search_kinds_and_delete(http: Http) -> None:
    http.send(letter("to bob"), sender="bounce@shop.test")
    http.send(letter("to dan", to="dan@example.test"))

    def ids(kind: str, query: str) -> list[str]:
        found = urllib.parse.urlencode({"kind": kind, "query": query})
        data = http.json("GET", f"/api/v2/search?{found}")
        return [item["Content"]["Headers"]["Subject"][0] for item in data["items"]]

    assert ids("from", "SHOP.test") == ["to bob"]
    assert ids("to", "dan@") == ["to dan"]
    assert ids("containing", "this is to bob") == ["to bob"]
    assert http("GET", "/api/v2/search?kind=subject&query=x")[0] == 400
    first = http.smtp.messages[0].id
    assert http.json("DELETE", f"/api/v1/messages/{first}") == {"deleted": 1}
    assert http("DELETE", f"/api/v1/messages/{first}")[0] == 404
    assert [m.subject for m in http.smtp.messages] == ["to dan"]


def test_delete_one_from_a_dir_store_removes_its_files(tmp_path: Any) -> None:
    with served(api_port=0, store=tmp_path) as smtp:
        http = Http(smtp)
        http.send(letter("on disk"))
        message_id = smtp.messages[0].id
        assert (tmp_path / "messages" / f"{message_id}.eml").exists()
        http.json("DELETE", f"/api/v1/messages/{message_id}")
    assert list((tmp_path / "messages").iterdir()) == []
    with served(store=tmp_path) as again:
        assert again.messages == []


def test_send_api_goes_through_smtp_and_the_scenario(http: Http) -> None:
    request = {
        "From": {"Email": "app@example.test", "Name": "App"},
        "To": [{"Email": "bob@example.test", "Name": "Bob"}],
        "Bcc": ["audit@example.test"],
        "Subject": "Sent by the API",
        "Text": "Hello\n.\nwith a lone dot",
        "HTML": "<p>Hello</p>",
        "Attachments": [
            {"Content": "dG90YWw6IDQy", "Filename": "a.txt", "ContentType": "text/plain"}
        ],
        "Headers": {"X-Campaign": "spring"},
    }
    sent = http.json("POST", "/api/v1/send", request)
    [message] = http.smtp.messages
    assert sent == {"ID": message.id}
    assert message.rcpt_tos == ["bob@example.test", "audit@example.test"]
    full = http.json("GET", f"/api/v1/message/{sent['ID']}")
    assert full["Subject"] == "Sent by the API" and full["Text"] == "Hello\n.\nwith a lone dot\n"
    assert full["Attachments"][0]["FileName"] == "a.txt"
    assert http.json("GET", f"/api/v1/message/{sent['ID']}/headers")["X-Campaign"] == ["spring"]
    session = http.smtp.sessions[-1]
    assert session.helo == "fakesmtp.api"  # a real SMTP session, in the transcripts
    # The scenario answers it like any client
    http.smtp.add_rule({"on": "rcpt", "match": {"to": "bob@*"}, "reply": "550 5.1.1 No Bob"})
    status, _, body = http("POST", "/api/v1/send", request)
    assert status == 400
    assert json.loads(body) == {"error": "550 5.1.1 No Bob", "stage": "rcpt"}
    assert len(http.smtp.messages) == 1
    status, _, body = http("POST", "/api/v1/send", {"To": [{"Email": "x@y.test"}]})
    assert status == 400 and b"From" in body


def test_message_views_are_cached_within_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from fakesmtp import mailview

    monkeypatch.setattr(mailview, "CACHE_BYTES", 1_000_000)
    monkeypatch.setattr(mailview, "_cache", mailview.OrderedDict())
    monkeypatch.setattr(mailview, "_cache_bytes", 0)
    with FakeSMTP(api_port=0) as smtp:
        http = Http(smtp)
        big = letter("big")
        big.add_attachment(b"x" * 30_000, maintype="application", subtype="octet-stream",
                           filename="big.bin")  # fmt: skip
        for _ in range(12):
            http.send(big)
        huge = letter("huge")
        huge.add_attachment(b"y" * 200_000, maintype="application", subtype="octet-stream",
                            filename="huge.bin")  # fmt: skip
        http.send(huge)
        found = http.json("GET", "/api/v1/search?query=has:attachment&limit=100")
        assert found["messages_count"] == 13
    kept = list(mailview._cache.values())
    assert 0 < len(kept) < 12  # the oldest big ones made room
    assert sum(v.weight for v in kept) == mailview._cache_bytes <= 1_000_000
    assert {v.subject for v in kept} == {"big"}  # the huge one was served, not kept
