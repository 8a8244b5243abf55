"""The README's CI recipes, run as written; ``serve --detach``, ``wait-ready``, ``rules``.

The recipes' shell lines are taken from the README and run verbatim with bash, in a fresh venv,
with ``SMTP_MOCK_REPO`` pointing at this checkout and the ports chosen through the environment
(``FAKESMTP_SERVE_PORT``...), as any option can be: what a CI job runs, on free ports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fakesmtp import FakeSMTP
from fakesmtp.cli import main

from .test_cli import FAKESMTP, ROOT, Served, free_port

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S)
          if lang == "yml"]  # fmt: skip


def github_recipe() -> tuple[str, dict[str, str]]:
    """The "Start fakesmtp" step's script and the job's env, from the README."""
    for block in BLOCKS:
        workflow = yaml.safe_load(block)
        if isinstance(workflow, dict) and "jobs" in workflow:
            job = workflow["jobs"]["test"]
            [step] = [s for s in job["steps"] if s.get("name") == "Start fakesmtp"]
            return step["run"], job.get("env", {})
    raise AssertionError("the README has no GitHub Actions recipe")


def gitlab_recipe() -> tuple[str, dict[str, str]]:
    """The job's before_script lines, one script, and its variables."""
    for block in BLOCKS:
        pipeline = yaml.safe_load(block)
        if isinstance(pipeline, dict) and "before_script" in pipeline.get("test", {}):
            job = pipeline["test"]
            return "\n".join(job["before_script"]) + "\n", job.get("variables", {})
    raise AssertionError("the README has no GitLab CI recipe")


def stop(pid: int) -> None:
    """SIGTERM, then wait until the process is gone (it is not our child: poll)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"fakesmtp (PID {pid}) did not stop on SIGTERM")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv, as a CI job's Python is: the recipes pip install into it."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the recipes clone the repository")
    path = tmp_path_factory.mktemp("ci") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path


def run_recipe(script: str, env: dict[str, str], venv: Path, workdir: Path) -> Iterator[int]:
    smtp_port, api_port = free_port(), free_port()
    environment = {
        **os.environ,
        **{k: str(v) for k, v in env.items()},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "SMTP_MOCK_REPO": ROOT.as_uri(),  # this checkout instead of the hosted repository
        "FAKESMTP_SERVE_PORT": str(smtp_port),
        "FAKESMTP_SERVE_API_PORT": str(api_port),
        "FAKESMTP_API": f"http://127.0.0.1:{api_port}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=workdir, env=environment, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    pids = [int(line) for line in result.stdout.splitlines() if line.strip().isdigit()]
    try:
        assert result.returncode == 0, output
        assert len(pids) == 1, output
        assert "warning" not in output, output  # e.g. a variable of the recipe mistaken for ours
        assert f"fakesmtp ready: SMTP on 127.0.0.1:{smtp_port}" in result.stdout, output
        yield smtp_port
    finally:
        for pid in pids:
            stop(pid)


@pytest.mark.slow
def test_github_actions_recipe_runs_as_written(venv: Path, tmp_path: Path) -> None:
    script, env = github_recipe()
    for smtp_port in run_recipe(script, env, venv, tmp_path):
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
            client.ehlo()
            client.mail("app@example.test")
            assert client.rcpt("bob@example.test")[0] == 451  # the greylisting scenario
            assert client.rcpt("bob@example.test")[0] == 250
    log = (tmp_path / "fakesmtp.log").read_text()
    assert "scenario: greylisting" in log and "451 4.7.1" in log


@pytest.mark.slow
def test_gitlab_ci_recipe_runs_as_written(venv: Path, tmp_path: Path) -> None:
    script, env = gitlab_recipe()
    for smtp_port in run_recipe(script, env, venv, tmp_path):
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
            assert client.sendmail("a@example.test", ["rcpt-550@x.test", "ok@x.test"], b"x\r\n")


# --------------------------------------------------------------------------- the pieces


def fakesmtp_command() -> list[str]:
    return [FAKESMTP] if FAKESMTP else [sys.executable, "-m", "fakesmtp"]


@pytest.mark.slow
def test_serve_detach_returns_once_listening_with_the_pid(tmp_path: Path) -> None:
    log = tmp_path / "fakesmtp.log"
    result = subprocess.run(
        [*fakesmtp_command(), "serve", "--detach", "--port", "0", "--api-port", "0",
         "--banner", "554 5.7.1 Not here", "--log-file", str(log)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.strip())
    try:
        port = int(re.search(r"SMTP on 127\.0\.0\.1:(\d+)", result.stderr).group(1))
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port, timeout=5)  # listening already: no retry needed
        assert refused.value.smtp_code == 554
    finally:
        stop(pid)
    assert "554 5.7.1 Not here" in log.read_text()


@pytest.mark.slow
def test_serve_detach_that_cannot_start_says_why_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - on: rcpt\n    reply: 612\n")
    result = subprocess.run(
        [*fakesmtp_command(), "serve", "--detach", "--port", "0", "--scenario", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{bad}:3: reply:" in result.stderr


def test_wait_ready_and_rules_commands() -> None:
    runner = CliRunner()
    with FakeSMTP(api_port=0) as smtp:
        api = ["--api", f"http://127.0.0.1:{smtp.api_port}"]
        ready = runner.invoke(main, ["wait-ready", *api, "--timeout", "5"])
        assert ready.exit_code == 0 and f"SMTP on 127.0.0.1:{smtp.port}" in ready.output
        added = runner.invoke(main, ["rules", "add", "on: mail\ntimes: 1\nreply: 451", *api])
        assert added.exit_code == 0, added.output
        rule_id = added.output.strip()
        assert list(smtp.added_rules()) == [rule_id]
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.ehlo()
            assert client.mail("a@example.test")[0] == 451  # the next one fails...
            assert client.mail("a@example.test")[0] == 250  # ...and only that one
        listed = runner.invoke(main, ["rules", "list", "--json", *api])
        assert [r["id"] for r in json.loads(listed.output)] == [rule_id]
        bad = runner.invoke(main, ["rules", "add", "{on: mail, reply: 612}", *api])
        assert bad.exit_code == 1 and "reply code 612" in bad.output
        deleted = runner.invoke(main, ["rules", "delete", rule_id, *api])
        assert deleted.exit_code == 0 and smtp.added_rules() == {}
        assert runner.invoke(main, ["rules", "delete", *api]).exit_code == 2  # ids or --all
    gone = runner.invoke(main, ["wait-ready", "--api", f"http://127.0.0.1:{free_port()}",
                                "--timeout", "0.3"])  # fmt: skip
    assert gone.exit_code == 1 and "not ready after 0.3s" in gone.output


@pytest.mark.slow
def test_dockerfile_health_check_is_wait_ready_with_the_token() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    check = json.loads(re.search(r"^\s+CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert check[:2] == ["fakesmtp", "wait-ready"]
    api_port = free_port()
    token = "s3cret-token"
    saved = dict(os.environ)
    os.environ["FAKESMTP_SERVE_API_TOKEN"] = token
    try:
        served = Served("--port", "0", "--api-port", str(api_port), "--quiet")
        try:
            command = [*fakesmtp_command(), *check[1:], "--api", f"http://127.0.0.1:{api_port}"]
            healthy = subprocess.run(command, capture_output=True, text=True, timeout=30)
            assert healthy.returncode == 0, healthy.stderr
            os.environ["FAKESMTP_SERVE_API_TOKEN"] = "wrong"
            refused = subprocess.run(command, capture_output=True, text=True, timeout=30)
            assert refused.returncode == 1 and "401" in refused.stderr
        finally:
            assert served.stop()[0] == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
