"""Who may use the API, over real HTTP: Host names, the token, other sites, secrets, files."""

from __future__ import annotations

import http.client
import json
import os
import smtplib
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner

from fakesmtp import FakeSMTP
from fakesmtp.cli import main

AUTH_SCENARIO = """
name: with-auth
server:
  auth:
    mechanisms: [PLAIN, LOGIN]
    users:
      alice: "s3cret-pässword"
      bob: hunter2
rules:
  - on: rcpt
    match: {to: "*@full.test"}
    reply: 452 4.2.2 Mailbox full
"""

TOKEN = "tok-4f9a1c"


def request(
    smtp: FakeSMTP,
    method: str,
    path: str,
    *,
    host: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request with the Host header we choose (urllib would always send its own)."""
    connection = http.client.HTTPConnection("127.0.0.1", smtp.api_port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host if host is not None else f"127.0.0.1:{smtp.api_port}")
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(data) if kind.startswith("application/json") else data
    finally:
        connection.close()


def send(smtp: FakeSMTP, to: str = "bob@example.test") -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        client.sendmail("alice@app.test", [to], b"Subject: hi\r\n\r\nHello\r\n")


# --------------------------------------------------------------------------- Host names


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST.", "app.localhost:{port}", "127.0.0.2",
     "[::1]:{port}"],
)  # fmt: skip
@pytest.mark.slow
def test_names_of_this_server_are_answered(serve: Any, host: str) -> None:
    smtp = serve(api_port=0)
    status, data = request(smtp, "GET", "/api/v1/health", host=host.format(port=smtp.api_port))
    assert status == 200 and data["status"] == "ok"


@pytest.mark.parametrize(
    "host", ["rebind.test:{port}", "evil.example", "127.0.0.1.nip.io", "", "192.0.2.7"]
)
def test_other_host_names_can_neither_read_nor_change(serve: Any, host: str) -> None:
    smtp = serve(api_port=0)
    send(smtp)
    host = host.format(port=smtp.api_port)
    for method, path in [
        ("GET", "/api/v1/messages"),
        ("GET", f"/api/v1/messages/{smtp.messages[0].id}/raw"),
        ("GET", "/api/v1/scenario"),
        ("PUT", "/api/v1/scenario?builtin=shutting-down"),
        ("POST", "/api/v1/reset?store=true"),
        ("DELETE", "/api/v1/messages"),
        ("GET", "/"),
    ]:
        status, data = request(smtp, method, path, host=host)
        assert status == 403, (method, path, status)
        assert "does not name this server" in data["error"]
        assert "--api-allow-host" in data["error"]
    assert len(smtp.messages) == 1
    assert smtp.scenario.name == "default"


def test_api_allow_host_adds_a_name(serve: Any) -> None:
    smtp = serve(api_port=0, api_allow_hosts=["fakesmtp", "Mail.CI.test"])
    for host in ("fakesmtp:8025", "mail.ci.test", "fakesmtp"):
        status, _ = request(smtp, "GET", "/api/v1/health", host=host)
        assert status == 200, host
    status, _ = request(smtp, "GET", "/api/v1/health", host="other.ci.test")
    assert status == 403


def test_bound_to_every_interface_the_address_reached_is_this_server(serve: Any) -> None:
    smtp = serve(api_port=0, host="0.0.0.0")
    # Reached on 127.0.0.1 the connection's own address answers; so does the bound 0.0.0.0.
    for host in (f"127.0.0.1:{smtp.api_port}", "0.0.0.0"):
        assert request(smtp, "GET", "/api/v1/health", host=host)[0] == 200
    assert request(smtp, "GET", "/api/v1/health", host="203.0.113.9")[0] == 403


def test_another_sites_page_is_refused_even_with_a_good_host(serve: Any) -> None:
    smtp = serve(api_port=0)
    send(smtp)
    for headers in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):
        for method, path in [("POST", "/api/v1/reset?store=true"), ("GET", "/api/v1/messages")]:
            status, data = request(smtp, method, path, headers=headers)
            assert status == 403, (headers, method)
            assert "refused" in data["error"]
    assert len(smtp.messages) == 1
    # The page itself may be opened from a link on another site; it holds no data.
    assert request(smtp, "GET", "/", headers={"Sec-Fetch-Site": "cross-site"})[0] == 200


# --------------------------------------------------------------------------- the token


def test_with_a_token_every_api_route_needs_it(serve: Any) -> None:
    smtp = serve(api_port=0, api_token=TOKEN)
    send(smtp)
    message_id = smtp.messages[0].id
    routes = [
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/messages"),
        ("GET", f"/api/v1/messages/{message_id}"),
        ("GET", f"/api/v1/messages/{message_id}/raw"),
        ("GET", "/api/v1/messages/wait?timeout=0"),
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/scenario"),
        ("PUT", "/api/v1/scenario?builtin=shutting-down"),
        ("POST", "/api/v1/reset?store=true"),
        ("DELETE", "/api/v1/messages"),
        ("GET", "/api/v1/catalog/550"),
        ("GET", "/api/v1/no-such-route"),
    ]
    for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
                  {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
        for method, path in routes:
            status, data = request(smtp, method, path, headers=wrong)
            assert status == 401, (wrong, method, path)
            assert "token" in data["error"] and TOKEN not in json.dumps(data)
    assert len(smtp.messages) == 1 and smtp.scenario.name == "default"
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert request(smtp, "GET", "/api/v1/messages", headers=good)[1]["total"] == 1
    assert request(smtp, "DELETE", "/api/v1/messages", headers=good)[0] == 200
    assert smtp.messages == []
    # The page shell has no data: the browser loads it, then it asks for the token.
    assert request(smtp, "GET", "/")[0] == 200
    assert request(smtp, "GET", "/static/app.js")[0] == 200


def test_token_from_the_environment_and_never_printed(tmp_path: Path) -> None:
    # `serve` itself blocks: check the option wiring through --help and FakeSMTP instead.
    result = CliRunner().invoke(main, ["serve", "--help"])
    for option in ("--api-token", "--api-host", "--api-allow-host", "--log"):
        assert option in result.output
    os.environ["FAKESMTP_SERVE_API_TOKEN"] = TOKEN
    try:
        seen: dict[str, Any] = {}

        def fake_run(server: FakeSMTP, *options: Any) -> None:
            seen["token"] = server.api_access.token
            seen["api_host"] = server.api_host

        from fakesmtp import cli

        original = cli.run_server
        cli.run_server = fake_run
        try:
            result = CliRunner().invoke(main, ["serve", "--api-host", "127.0.0.2"])
        finally:
            cli.run_server = original
    finally:
        del os.environ["FAKESMTP_SERVE_API_TOKEN"]
    assert result.exit_code == 0, result.output
    assert seen == {"token": TOKEN, "api_host": "127.0.0.2"}


def test_api_host_apart_from_smtp_host(serve: Any) -> None:
    smtp = serve(api_port=0, host="127.0.0.1", api_host="127.0.0.2")
    assert smtp.api_host == "127.0.0.2"
    connection = http.client.HTTPConnection("127.0.0.2", smtp.api_port, timeout=5)
    connection.request("GET", "/api/v1/health")
    assert connection.getresponse().status == 200
    connection.close()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", smtp.api_port, timeout=2).connect()


# --------------------------------------------------------------------------- secrets and files


def test_auth_passwords_never_leave_through_the_api(serve: Any) -> None:
    smtp = serve(AUTH_SCENARIO, api_port=0)
    status, data = request(smtp, "GET", "/api/v1/scenario")
    assert status == 200
    everything = json.dumps(data, ensure_ascii=False)
    assert "s3cret" not in everything and "hunter2" not in everything
    assert "alice: '*****'" in data["text"] and "bob: '*****'" in data["text"]
    status, text = request(smtp, "GET", "/api/v1/scenario?format=yaml")
    assert status == 200 and b"hunter2" not in text and b"s3cret" not in text
    # The users still log in: only what is shown is blanked.
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        client.ehlo()
        assert client.login("bob", "hunter2")[0] == 235
    status, data = request(
        smtp, "PUT", "/api/v1/scenario", body=AUTH_SCENARIO.replace("hunter2", "tiger").encode()
    )
    assert status == 200 and "tiger" not in json.dumps(data)


def test_put_scenario_cannot_name_files_outside_the_servers_directories(
    serve: Any, tmp_path: Path
) -> None:
    authority = trustme.CA()
    started_with = tmp_path / "started"
    started_with.mkdir()
    cert = authority.issue_cert("mx.fakesmtp.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(started_with / "server.pem"))
    smtp = serve(api_port=0, cert=str(started_with / "server.pem"),
                 key=str(started_with / "server.pem"))  # fmt: skip
    outside = tmp_path / "elsewhere.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(outside))
    answers = []
    for path in (outside, tmp_path / "does-not-exist.pem", Path("/etc/passwd"),
                 started_with / ".." / "elsewhere.pem"):  # fmt: skip
        body = f"server:\n  tls:\n    starttls: true\n    cert: {path}\n    key: {path}\n"
        status, data = request(smtp, "PUT", "/api/v1/scenario", body=body.encode())
        assert status == 400
        answers.append([p["message"] for p in data["problems"]])
    # Existing or not, readable or not: the same answer, so nothing can be learnt about files.
    assert all(answer == answers[0] for answer in answers)
    assert "directories this server was started with" in answers[0][0]
    inside = started_with / "server.pem"
    body = f"server:\n  tls:\n    starttls: true\n    cert: {inside}\n    key: {inside}\n"
    assert request(smtp, "PUT", "/api/v1/scenario", body=body.encode())[0] == 200


@pytest.mark.slow
def test_container_command_with_a_token_logs_one_line_per_session() -> None:
    import re
    import urllib.error
    import urllib.request

    from .test_cli import ROOT, Served, free_port

    dockerfile = (ROOT / "Dockerfile").read_text()
    env_lines = dict(re.findall(r"^ENV (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert env_lines.get("FAKESMTP_SERVE_LOG") == "session"
    api_port = free_port()
    saved = dict(os.environ)
    os.environ.update(env_lines, FAKESMTP_SERVE_API_TOKEN=TOKEN)
    try:
        served = Served(*command[2:], "--port", "0", "--api-port", str(api_port))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        assert "(token required)" in served.banner_line and TOKEN not in served.banner_line
        url = f"http://127.0.0.1:{api_port}/api/v1/health"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        authorized = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(authorized, timeout=5) as response:
            assert json.loads(response.read())["status"] == "ok"
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", served.port, timeout=5) as client:
                client.sendmail("a@app.test", ["b@example.test"], b"Subject: x\r\n\r\nx\r\n")
    finally:
        code, out = served.stop()
    assert code == 0
    lines = [line for line in out.splitlines() if line.strip()]
    sessions = [line for line in lines if "exchange(s)" in line]
    assert len(sessions) == 2, out
    assert "1 message(s)" in sessions[0] and "ended: quit" in sessions[0]
    assert not any("MAIL FROM" in line.upper() for line in lines), out
    assert TOKEN not in out
