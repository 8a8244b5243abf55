"""`fakesmtp explain` and `fakesmtp codes`, run through click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from fakesmtp import catalog
from fakesmtp.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_explain_a_code() -> None:
    result = run("explain", "550")
    assert result.exit_code == 0, result.output
    assert result.stdout == catalog.explain("550") + "\n"
    assert result.stdout.startswith("550 Mailbox unavailable, or rejected by policy")


def test_explain_joins_its_words_into_one_reply() -> None:
    result = run("explain", "550", "5.7.1", "Message", "rejected", "as", "spam")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "Reply: 550 5.7.1 Message rejected as spam"
    assert "Enhanced status 5.7.1: Security or policy status" in result.stdout


def test_explain_a_status_in_french() -> None:
    result = run("explain", "5.2.2", "--lang", "fr")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Statut étendu 5.2.2: Statut de la boîte (échec permanent)")


def test_explain_an_unknown_code() -> None:
    result = run("explain", "437")
    assert result.exit_code == 0, result.output
    assert "not in the catalog; its digits say" in result.stdout


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["hello"], "no reply code (550) or enhanced status (5.1.1) found in 'hello'"),
        (["612"], "612 is not an SMTP reply code: the first digit must be 1 to 5"),
    ],
)
def test_explain_bad_input_is_one_line_and_exit_2(words: list[str], message: str) -> None:
    result = run("explain", *words)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [message]


def test_explain_needs_an_argument() -> None:
    result = run("explain")
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


def test_codes_table() -> None:
    result = run("codes")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CODE", "CLASS", "STAGES", "STATUS", "MEANING"]
    assert [int(line.split()[0]) for line in lines[1:]] == [e.code for e in catalog.codes()]


def test_codes_by_class() -> None:
    result = run("codes", "--class", "transient")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    assert rows and all(row.split()[1] == "transient" for row in rows)
    assert any(row.startswith("451 ") for row in rows)


def test_codes_by_stage_as_json() -> None:
    result = run("codes", "--stage", "connect", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {item["code"] for item in data} >= {220, 421, 554, 521}
    assert all("connect" in item["stages"] for item in data)


def test_codes_in_french() -> None:
    result = run("codes", "--lang", "fr", "--class", "permanent")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split()[:2] == ["CODE", "CLASSE"]
    assert "Boîte indisponible, ou refus par règle" in result.stdout


@pytest.mark.parametrize(
    "args",
    [["--class", "fatal"], ["--stage", "eod"], ["--lang", "de"]],
)
def test_codes_rejects_bad_options(args: list[str]) -> None:
    result = run("codes", *args)
    assert result.exit_code == 2
    assert "Invalid value" in result.stderr
