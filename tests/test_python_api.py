"""FakeSMTP as a library: ``with`` in threaded code, ``async with`` on the caller's loop.

No pytest-asyncio: each async case runs under ``asyncio.run`` from a plain test.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading

import aiosmtplib
import pytest

from fakesmtp import FakeSMTP, ScenarioError

MESSAGE = b"From: alice@app.test\r\nTo: bob@example.test\r\nSubject: Hello\r\n\r\nHi Bob\r\n"

FULL = """
rules:
  - name: mailbox full
    on: rcpt
    match: {to: "*@full.test"}
    reply: 452 4.2.2 Mailbox full
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_with_block_captures_and_stops() -> None:
    with FakeSMTP() as smtp:
        assert smtp.host == "127.0.0.1" and smtp.port > 0
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.sendmail("alice@app.test", ["bob@example.test"], MESSAGE)
        [message] = smtp.wait_for(1, timeout=5)
        assert message.mail_from == "alice@app.test"
        assert message.rcpt_tos == ["bob@example.test"]
        assert message.subject == "Hello"
        assert message.raw == MESSAGE
        assert message.message["To"] == "bob@example.test"
        [session] = smtp.wait_for_sessions(1, timeout=5)
        assert session.end == "quit"
        assert session.message_ids == [message.id]
        port = smtp.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_use_takes_effect_in_an_open_session_and_reset_forgets() -> None:
    with FakeSMTP() as smtp, smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        client.ehlo()
        client.mail("alice@app.test")
        assert client.rcpt("carol@full.test")[0] == 250
        smtp.use(FULL)  # the next command of the same session sees it
        assert client.rcpt("dave@full.test") == (452, b"4.2.2 Mailbox full")
        assert smtp.scenario.rules[0].name == "mailbox full"
        client.rset()
        with pytest.raises(ScenarioError) as caught:
            smtp.use("rules:\n  - on: rcpt\n    reply: 612 nope\n")
        assert caught.value.line == 3 and caught.value.key == "reply"
        assert smtp.scenario.rules[0].name == "mailbox full"  # the old one stays
        client.sendmail("alice@app.test", ["bob@example.test"], MESSAGE)
        assert len(smtp.wait_for(1)) == 1
        smtp.reset()
        assert smtp.messages == [] and smtp.sessions == []


def test_wait_for_times_out_with_a_clear_message() -> None:
    with FakeSMTP() as smtp, pytest.raises(TimeoutError, match=r"waited 0.1s for 1 message"):
        smtp.wait_for(1, timeout=0.1)


def test_disconnect_cuts_live_sessions() -> None:
    with FakeSMTP() as smtp, socket.create_connection((smtp.host, smtp.port), timeout=5) as sock:
        assert sock.recv(1024).startswith(b"220 ")
        assert smtp.disconnect() == 1
        assert sock.recv(1024) == b""  # closed, no reply
        [session] = smtp.wait_for_sessions(1)
        assert session.end == "cut by FakeSMTP.disconnect()"


def test_use_of_its_own_scenario_does_not_repeat_the_command_line_overrides() -> None:
    with FakeSMTP(banner=421) as smtp:
        count = len(smtp.scenario.rules)
        smtp.use(smtp.scenario)
        assert len(smtp.scenario.rules) == count


def test_a_failed_start_frees_what_it_had_bound() -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(OSError):
            FakeSMTP(port=port, api_port=taken).start()
    with FakeSMTP(port=port) as smtp:  # the SMTP port of the failed attempt is free again
        assert smtp.port == port


async def _async_with_on_the_callers_loop() -> None:
    async with FakeSMTP(FULL) as smtp:
        assert smtp._loop is asyncio.get_running_loop()
        await aiosmtplib.send(
            MESSAGE,
            sender="alice@app.test",
            recipients=["bob@example.test"],
            hostname=smtp.host,
            port=smtp.port,
        )
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await aiosmtplib.send(
                MESSAGE,
                sender="alice@app.test",
                recipients=["carol@full.test"],
                hostname=smtp.host,
                port=smtp.port,
            )
        [message] = await smtp.wait_for_async(1, timeout=5)
        assert message.rcpt_tos == ["bob@example.test"]
        # Blocking here would starve the server on this very loop: refused with a pointer.
        with pytest.raises(RuntimeError, match="wait_for_async"):
            smtp.wait_for(1)
        smtp.use(None)  # on the loop: applied directly
        smtp.reset()
        assert smtp.messages == []
        port = smtp.port
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_async_with_on_the_callers_loop() -> None:
    asyncio.run(_async_with_on_the_callers_loop())


async def _async_wait_wakes_when_the_message_arrives() -> None:
    async with FakeSMTP() as smtp:
        waiting = asyncio.ensure_future(smtp.wait_for_async(1, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await aiosmtplib.send(
            MESSAGE,
            sender="alice@app.test",
            recipients=["bob@example.test"],
            hostname=smtp.host,
            port=smtp.port,
        )
        assert len(await asyncio.wait_for(waiting, 5)) == 1
        with pytest.raises(TimeoutError):
            await smtp.wait_for_async(2, timeout=0.05)


def test_async_wait_wakes_when_the_message_arrives() -> None:
    asyncio.run(_async_wait_wakes_when_the_message_arrives())


async def _async_failed_start_frees_the_smtp_port() -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            async with FakeSMTP(port=port, api_port=busy.getsockname()[1]):
                pass
    async with FakeSMTP(port=port) as smtp:
        assert smtp.port == port


def test_async_failed_start_frees_the_smtp_port() -> None:
    asyncio.run(_async_failed_start_frees_the_smtp_port())


def test_threaded_server_serves_clients_from_many_threads() -> None:
    with FakeSMTP() as smtp:

        def send(n: int) -> None:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
                client.sendmail("alice@app.test", [f"user{n}@example.test"], MESSAGE)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        received = smtp.wait_for(8)
        assert sorted(m.rcpt_tos[0] for m in received) == sorted(
            f"user{n}@example.test" for n in range(8)
        )
        assert smtp.errors == []


def test_rules_added_from_python() -> None:
    import smtplib

    import pytest

    from fakesmtp import FakeSMTP, ScenarioError

    with FakeSMTP() as smtp:
        smtp.on("rcpt", to="*@full.test").reply("452 4.2.2 Mailbox full")
        smtp.on("mail", from_="*@spammer.test", times=1, name="spam once").reply(451)
        smtp.on("rcpt", to="*@full.test").reply("550 5.1.1 never reached: the first rule wins")
        smtp.on("end_of_data", subject="*drop me*").drop()
        with smtplib.SMTP(smtp.host, smtp.port) as client:
            client.ehlo("client.test")
            assert client.mail("x@spammer.test")[0] == 451
            assert client.mail("x@spammer.test")[0] == 250  # times: 1
            assert client.rcpt("a@full.test") == (452, b"4.2.2 Mailbox full")
            assert client.rcpt("b@ok.test")[0] == 250
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.data(b"Subject: please drop me\r\n\r\nx\r\n")
        assert [r.name for r in smtp.scenario.rules][1] == "spam once"
        with pytest.raises(ScenarioError, match="unknown key; did you mean 'to'"):
            smtp.on("rcpt", too="x").reply(550)
        smtp.use(None)  # starts over: no added rules
        assert smtp.scenario.rules == ()


def _line_of(marker: str) -> int:
    """The line of this file that holds ``marker`` (so the tests below survive edits above)."""
    with open(__file__, encoding="utf-8") as source:
        lines = source.read().splitlines()
    return next(n for n, line in enumerate(lines, 1) if marker in line and "_line_of" not in line)


def test_rules_from_python_name_the_callers_file_and_line_in_errors_and_transcripts() -> None:
    here = "tests/test_python_api.py"
    with FakeSMTP() as smtp:
        with pytest.raises(ScenarioError) as caught:
            smtp.on("RCPT", to="x@y.test").reply(550)  # marker: bad stage
        assert str(caught.value).startswith(
            f"{here}:{_line_of('marker: bad stage')}: on: unknown stage 'RCPT'"
        )
        with pytest.raises(ScenarioError) as caught:
            smtp.use({"rules": [{"on": "mail", "reply": 612}]})  # marker: bad dict
        assert str(caught.value).startswith(
            f"{here}:{_line_of('marker: bad dict')}: reply: reply code 612 is not between"
        )
        smtp.on("rcpt", to="*@full.test").reply("452 4.2.2 Mailbox full")  # marker: good rule
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.ehlo("client.test")
            client.mail("a@client.test")
            assert client.rcpt("b@full.test") == (452, b"4.2.2 Mailbox full")
        [session] = smtp.wait_for_sessions(1)
        [rcpt] = [e for e in session.exchanges if e.stage == "rcpt"]
        assert rcpt.rule == f"rcpt rule at {here}:{_line_of('marker: good rule')}"


def test_a_bare_number_is_seconds_from_python_but_needs_a_unit_in_a_file() -> None:
    with FakeSMTP() as smtp:
        assert smtp.on("data").delay(0.25).delay == 0.25
    with pytest.raises(ScenarioError, match=r"delay: 5 has no unit: write 5s"):
        FakeSMTP("rules:\n  - {on: data, delay: 5}\n")
