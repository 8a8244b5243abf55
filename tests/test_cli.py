"""The `fakesmtp` command: serve in a subprocess, validate, scenarios, the Dockerfile CMD."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fakesmtp.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAKESMTP = shutil.which("fakesmtp") or ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """`fakesmtp serve ...` in a subprocess; knows its port from the first line it prints."""

    def __init__(self, *args: str, command: list[str] | None = None) -> None:
        base = command or [
            *([FAKESMTP] if FAKESMTP else [sys.executable, "-m", "fakesmtp"]),
            "serve",
        ]
        self.process = subprocess.Popen(
            [*base, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        match = re.search(r"SMTP on ([\d.]+):(\d+)", first)
        assert match, f"unexpected first line {first!r}; stderr: {self.process.stderr.read()}"
        self.port = int(match.group(2))
        self.banner_line = first

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=15)
        return self.process.returncode, out


@pytest.mark.slow
def test_serve_from_console_script_and_sigterm() -> None:
    served = Served("--port", "0", "--no-api")
    try:
        with smtplib.SMTP("127.0.0.1", served.port, timeout=5) as client:
            assert client.sendmail("a@client.test", ["rcpt-550@x.test", "ok@x.test"], b"Hi\r\n")
        idle = smtplib.SMTP("127.0.0.1", served.port, timeout=5)
        idle.ehlo("client.test")
    finally:
        code, out = served.stop()
    assert code == 0
    # the idle client is told, then closed
    assert idle.getreply() == (421, b"4.3.2 Service shutting down")
    assert "RCPT TO:<rcpt-550@x.test> -> 550 5.1.1" in out.replace("rcpt TO", "RCPT TO")
    assert "fakesmtp: stopped" in out


@pytest.mark.slow
def test_serve_banner_option() -> None:
    served = Served("--port", "0", "--no-api", "--quiet", "--banner", "554 5.7.1 Go away")
    try:
        with pytest.raises(smtplib.SMTPConnectError) as caught:
            smtplib.SMTP("127.0.0.1", served.port, timeout=5)
        assert (caught.value.smtp_code, caught.value.smtp_error) == (554, b"5.7.1 Go away")
    finally:
        assert served.stop()[0] == 0


@pytest.mark.slow
def test_serve_bad_scenario_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - on: rcpt\n    reply: 612 No\n")
    done = subprocess.run([sys.executable, "-m", "fakesmtp", "serve", "-s", str(bad)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == f"{bad}:3: reply: reply code 612 is not between 200 and 599 " \
        "(allowed: 200 to 599)\n"  # fmt: skip


def test_validate_reports_each_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("rules:\n  - on: rcpt\n    reply: 550\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - on: rcpt\n    reply: 550\n    action: explode\n")
    result = CliRunner().invoke(main, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{good}: ok (1 rule)" in result.output
    assert f"{bad}:4: action: unknown action 'explode' (allowed: close, drop, reset, hang)" in (
        result.output
    )
    assert CliRunner().invoke(main, ["validate", str(good)]).exit_code == 0


def test_validate_every_builtin_scenario() -> None:
    files = sorted(str(p) for p in (ROOT / "scenarios").glob("*.yaml"))
    result = CliRunner().invoke(main, ["validate", *files])
    assert result.exit_code == 0, result.output


def test_scenarios_lists_builtins_one_line_each() -> None:
    result = CliRunner().invoke(main, ["scenarios"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    names = [line.split()[0] for line in lines]
    assert "default" in names and "greylisting" in names
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # every one has a description


@pytest.mark.slow
def test_serve_finds_builtin_by_name_from_anywhere(tmp_path: Path) -> None:
    served = Served("--port", "0", "--no-api", "--quiet", "-s", "greylisting")
    try:
        assert "scenario: greylisting" in served.process.stdout.readline()  # type: ignore[union-attr]
    finally:
        assert served.stop()[0] == 0


def test_dockerfile_command_starts_and_serves() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert match, "the Dockerfile has no exec-form CMD"
    command = json.loads(match.group(1))
    assert command[:4] == ["fakesmtp", "serve", "--host", "0.0.0.0"]
    # The same command, on free ports (later options win in click), reached over loopback.
    smtp_port, api_port = free_port(), free_port()
    executable = FAKESMTP or pytest.skip("the fakesmtp console script is not on PATH")
    served = Served(command=[executable, *command[1:], "--port", str(smtp_port),
                             "--api-port", str(api_port)])  # fmt: skip
    try:
        assert "SMTP on 0.0.0.0:" in served.banner_line
        with smtplib.SMTP("127.0.0.1", served.port, timeout=5) as client:
            assert client.noop()[0] == 250
    finally:
        assert served.stop()[0] == 0


@pytest.mark.slow
def test_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A CI service container is configured with env vars only.
    monkeypatch.setenv("FAKESMTP_SERVE_BANNER", "554 5.7.1 Not today")
    monkeypatch.setenv("FAKESMTP_SERVE_NO_API", "1")
    served = Served("--port", "0", "--quiet")
    try:
        assert "API" not in served.banner_line
        with pytest.raises(smtplib.SMTPConnectError) as caught:
            smtplib.SMTP("127.0.0.1", served.port, timeout=5)
        assert (caught.value.smtp_code, caught.value.smtp_error) == (554, b"5.7.1 Not today")
    finally:
        assert served.stop()[0] == 0
