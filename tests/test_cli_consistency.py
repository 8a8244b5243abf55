"""One CLI: - for stdin, built-in names, --json, variables named in errors, every problem at once.

Each case is one from issue #13's list, with the exact words a user now sees.
"""

from __future__ import annotations

import json
import smtplib
import socket
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from fakesmtp import FakeSMTP, __version__
from fakesmtp.cli import main
from fakesmtp.cli_env import known_variables, unknown_variables

from .conftest import served as running


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), input=stdin, env=env)


def test_version() -> None:
    result = run("--version")
    assert (result.exit_code, result.stdout) == (0, f"fakesmtp, version {__version__}\n")


# --------------------------------------------------------------------------- validate


def test_validate_takes_a_built_in_name_and_says_1_rule() -> None:
    result = run("validate", "greylisting")
    assert (result.exit_code, result.stdout) == (0, "greylisting: ok (1 rule)\n")


def test_validate_reads_stdin() -> None:
    result = run(
        "validate", "-", stdin="rules:\n  - {on: rcpt, reply: 550}\n  - {on: mail, reply: 451}\n"
    )
    assert (result.exit_code, result.stdout) == (0, "-: ok (2 rules)\n")
    bad = run("validate", "-", stdin="rules:\n  - on: rcpt\n    reply: 550 5.1.1 <{to}>: no\n")
    assert bad.exit_code == 2
    assert bad.stderr.splitlines()[0] == (
        "<stdin>:3: yaml: not valid YAML: mapping values are not allowed here"
    )
    assert (
        bad.stderr.splitlines()[-1]
        == '  quote the reply, it holds ": ": reply: "550 5.1.1 <{to}>: no"'
    )


def test_validate_a_misspelt_built_in_suggests_the_name() -> None:
    result = run("validate", "greylistin")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "greylistin: scenario: no such file or built-in scenario; did you mean 'greylisting'? "
        "(allowed: auth-required, "
    )


def test_validate_json_reports_every_file() -> None:
    result = run(
        "validate", "--json", "greylisting", "-", stdin="rules:\n  - on: RCPT\n    reply: 550\n"
    )
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report[0] == {"file": "greylisting", "valid": True, "name": "greylisting", "rules": 1}
    assert report[1]["valid"] is False
    assert report[1]["problems"] == [
        {
            "file": "<stdin>",
            "line": 2,
            "column": None,
            "key": "on",
            "message": "unknown stage 'RCPT'; did you mean 'rcpt'?",
            "allowed": "connect, helo, ehlo, starttls, auth, mail, rcpt, data, bdat, end_of_data, "
            "rset, noop, vrfy, expn, help, quit, unknown",
            "hint": None,
        }
    ]


# --------------------------------------------------------------------------- scenarios


def test_scenarios_show_prints_the_yaml_with_its_comments() -> None:
    result = run("scenarios", "show", "greylisting")
    assert result.exit_code == 0
    assert result.stdout.startswith("# Reproduces: greylisting.")
    assert 'reply: "451 4.7.1' in result.stdout


def test_scenarios_show_a_misspelt_name() -> None:
    result = run("scenarios", "show", "mailbox-ful")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "mailbox-ful: scenario: no such file or built-in scenario; did you mean 'mailbox-full'?"
    )


def test_scenarios_json() -> None:
    result = run("scenarios", "--json")
    listing = json.loads(result.stdout)
    greylisting = next(item for item in listing if item["name"] == "greylisting")
    assert greylisting["rules"] == 1 and greylisting["description"]


# --------------------------------------------------------------------------- explain


def test_explain_reads_stdin() -> None:
    result = run("explain", "-", stdin="451 4.7.1 Greylisted, try again later\n")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[2] == (
        "Greylisted, the first attempt is deferred on purpose (transient failure)"
    )


def test_explain_json() -> None:
    result = run("explain", "--json", "550 5.7.26 Unauthenticated mail refused by DMARC")
    data = json.loads(result.stdout)
    assert (data["code"], data["status"]) == (550, "5.7.26")
    assert data["reading"]["explained_by"] == "status"
    assert data["status_entry"]["registered"] is True
    assert data["status_entry"]["vendor_uses"][0]["vendor"] == "Gmail"
    assert data["code_entry"]["code"] == 550


# --------------------------------------------------------------------------- the environment


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    result = run("serve", env={"FAKESMTP_SERVE_PORT": "abc"})
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for FAKESMTP_SERVE_PORT (--port): 'abc' is not a valid integer range."
    )


def test_a_misspelt_scenario_from_the_environment_names_the_variable() -> None:
    result = run("serve", "--port", "0", "--no-api", env={"FAKESMTP_SERVE_SCENARIO": "greylistin"})
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "FAKESMTP_SERVE_SCENARIO=greylistin: scenario: no such file or built-in scenario; "
        "did you mean 'greylisting'?"
    )


def test_a_bad_banner_names_the_option_or_the_variable() -> None:
    result = run("serve", "--port", "0", "--no-api", "--banner", "612")
    assert (result.exit_code, result.stderr) == (
        2,
        "--banner 612: reply: reply code 612 is not between 200 and 599 (allowed: 200 to 599)\n",
    )
    result = run("serve", "--port", "0", "--no-api", env={"FAKESMTP_SERVE_BANNER": "612"})
    assert result.stderr == (
        "FAKESMTP_SERVE_BANNER=612: reply: reply code 612 is not between 200 and 599 "
        "(allowed: 200 to 599)\n"
    )


def test_a_misspelt_variable_is_warned_about() -> None:
    result = run("codes", "--class", "transient", env={"FAKESMTP_SERVE_PROT": "2525"})
    assert result.exit_code == 0
    assert result.stderr == (
        "fakesmtp: warning: FAKESMTP_SERVE_PROT is not a fakesmtp variable, ignored; "
        "did you mean FAKESMTP_SERVE_PORT?\n"
    )


def test_every_option_has_its_variable() -> None:
    known = set(known_variables(main))
    for name in (
        "FAKESMTP_SERVE_PORT",
        "FAKESMTP_SERVE_API_PORT",
        "FAKESMTP_VALIDATE_JSON",
        "FAKESMTP_EXPLAIN_LANG",
        "FAKESMTP_SCENARIOS_SHOW_JSON",
        "FAKESMTP_MESSAGES_LIST_LIMIT",
        "FAKESMTP_SESSIONS_SHOW_API",
        "FAKESMTP_FROM_BOUNCE_API_PORT",
    ):
        assert name in known, name
    assert unknown_variables(main, {"FAKESMTP_API_TOKEN": "x", "FAKESMTP_CHROMIUM": "y"}) == []


# --------------------------------------------------------------------------- start-up


@pytest.fixture
def two_taken_ports() -> Iterator[tuple[int, int]]:
    taken = [socket.socket(), socket.socket()]
    try:
        for sock in taken:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        yield taken[0].getsockname()[1], taken[1].getsockname()[1]
    finally:
        for sock in taken:
            sock.close()


def test_port_clashes_are_all_reported_by_option(two_taken_ports: tuple[int, int]) -> None:
    smtp_port, api_port = two_taken_ports
    result = run("serve", "--port", str(smtp_port), "--api-port", str(api_port))
    assert (result.exit_code, result.stderr) == (
        2,
        f"--port {smtp_port} is in use (another fakesmtp? try --port 0 or another port)\n"
        f"--api-port {api_port} is in use (another fakesmtp? try --api-port 0 or --no-api)\n",
    )


def test_port_clash_from_the_environment_names_the_variable(
    two_taken_ports: tuple[int, int],
) -> None:
    _, api_port = two_taken_ports
    result = run("serve", "--port", "0", env={"FAKESMTP_SERVE_API_PORT": str(api_port)})
    assert result.stderr == (
        f"FAKESMTP_SERVE_API_PORT={api_port} is in use "
        "(another fakesmtp? try --api-port 0 or --no-api)\n"
    )


def test_an_address_not_on_this_machine() -> None:
    result = run("serve", "--port", "0", "--no-api", "--host", "192.0.2.1")
    assert (result.exit_code, result.stderr) == (
        2,
        "--host 192.0.2.1 is not an address of this machine "
        "(try 127.0.0.1, or 0.0.0.0 for every address)\n",
    )


# --------------------------------------------------------------------------- messages, sessions


@pytest.fixture(scope="module")
def served() -> Iterator[FakeSMTP]:
    with running("mailbox-full", api_port=0) as smtp:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.sendmail(
                "app@example.test", ["bob@example.test"], b"Subject: Hi Bob\r\n\r\nHello\r\n"
            )
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail(
                    "app@example.test", ["quota@example.test"], b"Subject: Full\r\n\r\nx\r\n"
                )
        smtp.wait_for_sessions(1)
        yield smtp


def api_of(smtp: FakeSMTP) -> str:
    return f"http://127.0.0.1:{smtp.api_port}"


def test_messages_list_show_raw_wait(served: FakeSMTP) -> None:
    api = api_of(served)
    listed = run("messages", "list", "--api", api)
    assert listed.exit_code == 0, listed.output
    [line] = listed.stdout.splitlines()
    message_id = line.split()[0]
    assert line.endswith("app@example.test -> bob@example.test  Hi Bob  (" + line.rsplit("(", 1)[1])
    assert listed.stderr == "(1 message of 1)\n"
    shown = run("messages", "show", message_id, "--api", api)
    assert "Subject: Hi Bob" in shown.stdout and shown.stdout.rstrip().endswith("Hello")
    raw = run("messages", "raw", message_id, "--api", api)
    assert raw.stdout_bytes.endswith(b"Hello\r\n")
    waited = run("messages", "wait", "--count", "1", "--timeout", "2", "--api", api, "--json")
    assert json.loads(waited.stdout)["count"] == 1
    as_json = json.loads(run("messages", "list", "--json", "--api", api).stdout)
    assert as_json["messages"][0]["subject"] == "Hi Bob"


def test_sessions_list_and_show_the_conversation(served: FakeSMTP) -> None:
    api = api_of(served)
    listed = run("sessions", "list", "--api", api)
    [line] = listed.stdout.splitlines()
    session_id = line.split()[0]
    assert "1 message" in line and "worst 452" in line and line.endswith("quit")
    shown = run("sessions", "show", session_id, "--api", api)
    assert "C: rcpt TO:<quota@example.test>" in shown.stdout
    assert "= Mailbox full" in shown.stdout
    raw = run("sessions", "raw", session_id, "--api", api)
    assert "S: 452 4.2.2 <quota@example.test>: Mailbox over quota, try again later" in raw.stdout
    assert "rule:" not in raw.stdout and "Mailbox full" not in raw.stdout.replace("over quota", "")
    waited = run("sessions", "wait", "--api", api)
    assert waited.exit_code == 0 and waited.stdout.split()[0] == session_id


def test_clear_messages_then_sessions() -> None:
    with running(api_port=0) as smtp:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.sendmail("a@x.test", ["b@x.test"], b"Subject: x\r\n\r\nx\r\n")
        smtp.wait_for_sessions(1)
        api = api_of(smtp)
        assert run("messages", "clear", "--api", api).stdout == "deleted 1 message\n"
        assert smtp.messages == [] and len(smtp.sessions) == 1
        assert run("sessions", "clear", "--api", api).stdout == "deleted 1 session\n"
        assert smtp.sessions == []


def test_no_server_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = run("messages", "list", "--api", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"fakesmtp: no fakesmtp API at http://127.0.0.1:{port} (")
    assert result.stderr.rstrip().endswith(
        "is `fakesmtp serve` running? (--api URL, or FAKESMTP_API)"
    )


def test_the_api_token_is_sent_as_a_bearer_token() -> None:
    with running(api_port=0, api_token="s3cret") as smtp:
        api = api_of(smtp)
        refused = run("messages", "list", "--api", api)
        assert refused.exit_code == 1
        assert "401" in refused.stderr and "--api-token or FAKESMTP_API_TOKEN" in refused.stderr
        assert run("messages", "list", "--api", api, "--api-token", "s3cret").exit_code == 0
        from_env = run("sessions", "list", "--api", api, env={"FAKESMTP_API_TOKEN": "s3cret"})
        assert from_env.exit_code == 0


def _commands(command, path=("fakesmtp",)):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_reads_consistently() -> None:
    """Every command's summary fits the list untruncated; every option says what it is for."""
    import click

    for path, command in _commands(main):
        # click's own limit in an 80-column terminal: what is left after the longest name.
        siblings = dict(_commands(main)).get(path[:-1])
        width = max(map(len, getattr(siblings, "commands", {"": None}))) if siblings else 0
        summary = command.get_short_help_str(limit=80 - 6 - width)
        if len(path) > 1:  # the root's summary is shown by nobody
            assert summary and not summary.endswith("..."), f"{' '.join(path)}: {summary!r}"
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help", "version"):
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"
                if "port" in param.name:
                    assert param.metavar == "N", f"{' '.join(path)} {param.opts[0]}"
        result = CliRunner().invoke(main, [*path[1:], "--help"], prog_name="fakesmtp")
        assert result.exit_code == 0 and result.stdout.startswith(f"Usage: {' '.join(path)} ")


def test_from_bounce_serve_takes_host_and_api_port(two_taken_ports: tuple[int, int]) -> None:
    from pathlib import Path

    bounce = Path(__file__).parent / "data" / "bounces" / "postfix-log-bounced.log"
    smtp_port, api_port = two_taken_ports
    result = run(
        "from-bounce", str(bounce), "--serve", "--host", "127.0.0.1",
        "--port", str(smtp_port), "--api-port", str(api_port),
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-2:] == [
        f"--port {smtp_port} is in use (another fakesmtp? try --port 0 or another port)",
        f"--api-port {api_port} is in use (another fakesmtp? try --api-port 0 or --no-api)",
    ]


@pytest.mark.slow
def test_serve_says_1_rule() -> None:
    from tests.test_cli import Served

    served = Served("--port", "0", "--no-api", "--scenario", "greylisting")
    try:
        assert served.process.stdout is not None
        assert served.process.stdout.readline() == (
            "scenario: greylisting (1 rule) - Ctrl-C to stop\n"
        )
    finally:
        assert served.stop()[0] == 0


def test_rules_from_python_get_the_same_suggestions() -> None:
    from fakesmtp import ScenarioError

    smtp = FakeSMTP()
    with pytest.raises(ScenarioError, match=r": on: unknown stage 'RCPT'; did you mean 'rcpt'\?"):
        smtp.on("RCPT").reply(550)
    with pytest.raises(
        ScenarioError, match=r": match\.recipient: unknown key; did you mean 'to'\?"
    ):
        smtp.on("rcpt", recipient="bob@x.test").reply(550)
    with pytest.raises(ScenarioError, match=r"unknown per 'recipent'; did you mean 'recipient'\?"):
        smtp.on("rcpt", per="recipent").reply(550)


def test_every_command_names_variables_in_its_errors() -> None:
    from fakesmtp.cli_env import EnvCommand, EnvGroup

    plain = [" ".join(p) for p, c in _commands(main) if not isinstance(c, EnvCommand | EnvGroup)]
    assert plain == []
    result = run("messages", "list", "--api", "http://127.0.0.1:1", env={
        "FAKESMTP_MESSAGES_LIST_LIMIT": "many"
    })  # fmt: skip
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for FAKESMTP_MESSAGES_LIST_LIMIT (--limit): "
        "'many' is not a valid integer range."
    )
