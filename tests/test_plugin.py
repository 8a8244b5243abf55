"""The pytest plugin, exercised as users meet it: test files run by pytester, real SMTP inside."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# Hypothesis's plugin takes over a second to set up in every inner run; these runs need none.
QUIET = ("-p", "no:hypothesispytest", "-p", "no:randomly")

# The README's example, kept here so that it stays true.
README_EXAMPLE = """
import smtplib

def send_welcome(host, port, recipients):  # the application's code under test
    with smtplib.SMTP(host, port) as smtp:
        return smtp.sendmail("app@example.test", recipients, "Subject: Welcome\\r\\n\\r\\nHi!")

def test_unknown_recipient_is_reported(fakesmtp):
    fakesmtp.use("unknown-recipient")
    refused = send_welcome(fakesmtp.host, fakesmtp.port, ["nobody@example.test", "bob@x.test"])
    assert refused["nobody@example.test"][0] == 550
    assert [m.rcpt_tos for m in fakesmtp.messages] == [["bob@x.test"]]
    assert fakesmtp.messages[0].subject == "Welcome"
"""


def test_readme_example(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(README_EXAMPLE)
    pytester.runpytest(*QUIET).assert_outcomes(passed=1)


def test_marker_fixture_override_and_isolation(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def fakesmtp_scenario():
            return {"name": "from-conftest", "rules": [{"on": "mail", "reply": "451 4.3.0 Later"}]}
        """
    )
    pytester.makepyfile(
        """
        import smtplib
        import pytest

        PORTS = []
        FULL = "rules:\\n  - {on: rcpt, times: 1, reply: 452 4.2.2 Mailbox full}\\n"

        def send(server, to="bob@example.test"):
            with smtplib.SMTP(server.host, server.port, timeout=5) as client:
                return client.sendmail("alice@app.test", [to], "Subject: hi\\r\\n\\r\\nx\\r\\n")

        @pytest.mark.fakesmtp(scenario=FULL)
        def test_marker_with_keyword(fakesmtp):
            PORTS.append(fakesmtp.port)
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                send(fakesmtp)
            send(fakesmtp)  # times: 1 -- the counter is this test's
            assert len(fakesmtp.wait_for(1)) == 1

        @pytest.mark.fakesmtp(FULL)
        def test_marker_positional_starts_clean(fakesmtp):
            PORTS.append(fakesmtp.port)
            assert fakesmtp.messages == [] and fakesmtp.sessions == []
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                send(fakesmtp)  # counters were reset: the rule fires again

        def test_fixture_override(fakesmtp):
            PORTS.append(fakesmtp.port)
            assert fakesmtp.scenario.name == "from-conftest"
            with pytest.raises(smtplib.SMTPSenderRefused):
                send(fakesmtp)

        def test_same_server_every_time(fakesmtp, fakesmtp_server):
            assert fakesmtp is fakesmtp_server
            assert len(set(PORTS)) == 1 and PORTS[0] == fakesmtp.port
        """
    )
    pytester.runpytest("--strict-markers", *QUIET).assert_outcomes(passed=4)


def test_scenario_is_restored_and_connections_cut_between_tests(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import smtplib
        import pytest

        LEFT_OPEN = []

        def test_changes_things(fakesmtp):
            fakesmtp.use("greylisting")
            client = smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5)
            client.ehlo()
            LEFT_OPEN.append(client)  # a connection the test forgot to close

        def test_sees_none_of_it(fakesmtp):
            assert fakesmtp.scenario.name == "default"
            assert fakesmtp.sessions == []
            with pytest.raises(smtplib.SMTPServerDisconnected):
                LEFT_OPEN[0].noop()
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=2)


@pytest.mark.slow
def test_use_and_wait_for_and_reset(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib
        import pytest
        from fakesmtp import ScenarioError

        def test_it(fakesmtp):
            with pytest.raises(ScenarioError, match="reply"):
                fakesmtp.use("rules:\\n  - {on: rcpt, reply: 612 nope}\\n")
            with pytest.raises(TimeoutError):
                fakesmtp.wait_for(1, timeout=0.05)
            with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
                client.sendmail("a@app.test", ["b@x.test"], "Subject: s\\r\\n\\r\\nbody\\r\\n")
            [message] = fakesmtp.wait_for(1, timeout=5)
            assert (message.mail_from, message.rcpt_tos) == ("a@app.test", ["b@x.test"])
            assert message.raw.endswith(b"body\\r\\n")
            assert message.subject == message.message["Subject"] == "s"
            assert fakesmtp.sessions[0].message_ids == [message.id]
            fakesmtp.reset()
            assert fakesmtp.messages == []
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=1)


def test_a_marker_dict_with_a_mistake_names_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.fakesmtp({"rules": [{"on": "RCPT", "reply": 550}]})
        def test_bad(fakesmtp):
            pass
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_marked.py:*: on: unknown stage 'RCPT'*"])


def test_invalid_marker_scenario_fails_the_test_plainly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakesmtp(scenario="rules:\\n  - {on: rcpt, reply: 612 nope}\\n")
        def test_bad(fakesmtp):
            pass

        @pytest.mark.fakesmtp("default", scenario="default")
        def test_twice(fakesmtp):
            pass

        def test_next_one_is_fine(fakesmtp):
            assert fakesmtp.scenario.name == "default"
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*the scenario for this test is invalid:*",
            "*<text>:2: reply: reply code 612 is not between 200 and 599*",
            "*@pytest.mark.fakesmtp takes one argument*",
        ]
    )


@pytest.mark.slow
def test_internal_server_error_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib
        import pytest

        def test_server_breaks(fakesmtp):
            # A store observer that raises is a bug inside the server's process: the client
            # gets a transient 451, and the fixture reports the bug.
            def broken(kind, item):
                if kind == "message":
                    raise ZeroDivisionError("observer bug")
            unsubscribe = fakesmtp.store.subscribe(broken)
            try:
                with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
                    with pytest.raises(smtplib.SMTPDataError) as refused:
                        client.sendmail("a@app.test", ["b@x.test"], "Subject: s\\r\\n\\r\\nx")
                    assert refused.value.smtp_code == 451
            finally:
                unsubscribe()

        def test_next_test_is_clean(fakesmtp):
            assert fakesmtp.errors == []
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_server_breaks*",
            "*fakesmtp met 1 internal error(s) while serving this test*",
            "*ZeroDivisionError: observer bug*",
        ]
    )


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers", *QUIET)
    result.stdout.fnmatch_lines(["@pytest.mark.fakesmtp(scenario):*"])


@pytest.mark.slow
def test_a_failing_test_shows_the_transcript_of_its_sessions(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib

        def test_app_reports_full_mailbox(fakesmtp):
            fakesmtp.use("mailbox-full")
            with smtplib.SMTP(fakesmtp.host, fakesmtp.port) as client:
                client.ehlo("app.test")
                client.mail("app@example.test")
                code, _ = client.rcpt("quota@example.test")
            assert code == 250, "the application expected its mail to go through"
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- fakesmtp transcript -*",
            "session * from 127.0.0.1:*, plain text, started *",
            "    +0.000s  C: (connects)",
            "             S: 220 mx.fakesmtp.test ESMTP fakesmtp",
            "*C: ehlo app.test",
            "*C: mail FROM:<app@example.test>",
            "             S: 250 2.1.0 Ok",
            "*C: rcpt TO:<quota@example.test>",
            "             S: 452 4.2.2 <quota@example.test>: Mailbox over quota, try again later",
            "*rule: over quota, try later*",
            "                = Mailbox full",
        ]
    )


def test_a_passing_test_shows_no_transcript(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib

        def test_ok(fakesmtp):
            with smtplib.SMTP(fakesmtp.host, fakesmtp.port) as client:
                client.noop()
        """
    )
    result = pytester.runpytest("-rA", *QUIET)
    result.assert_outcomes(passed=1)
    assert "fakesmtp transcript" not in result.stdout.str()


def test_a_misspelt_marker_scenario_is_named_once_with_a_suggestion(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakesmtp("greylistin")
        def test_bad(fakesmtp):
            pass
        """
    )
    # -rN: no short summary, which repeats the message untruncated when CI is set.
    result = pytester.runpytest(*QUIET, "-rN")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    expected = (
        "greylistin: scenario: no such file or built-in scenario; did you mean 'greylisting'?"
    )
    assert out.count(expected) == 1
    assert "greylistin:0" not in out
