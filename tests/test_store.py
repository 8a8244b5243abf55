"""Capture and durability: envelope, raw bytes and transcripts; nothing acknowledged is lost.

The kill test runs ``python -m fakesmtp serve --store DIR`` as a subprocess, sends mail from
several threads, SIGKILLs it mid-traffic, restarts it on the same directory and checks, through
the HTTP API, that every message that got its 250 is listed with the very bytes sent.
"""

from __future__ import annotations

import json
import re
import select
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fakesmtp import FakeSMTP
from fakesmtp.store import SessionRecord

from .conftest import served

DROP_AT_DATA = """
rules:
  - name: cut at data
    on: data
    action: drop
"""


def send(smtp: FakeSMTP, raw: bytes, to: list[str], **options: Any) -> dict[str, Any]:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
        return client.sendmail("alice@app.test", to, raw, **options)


# --------------------------------------------------------------------------- capture


def test_message_is_captured_with_envelope_parameters_and_exact_bytes() -> None:
    raw = (
        "From: Alice <alice@app.test>\r\n"
        "Subject: =?utf-8?q?Caf=C3=A9_ouvert?=\r\n"
        "\r\n"
        ".a line that smtplib dot-stuffs\r\n"
        "caf\u00e9 au lait\r\n"
    ).encode()
    with served() as smtp:
        before = time.time()
        refused = send(
            smtp,
            raw,
            ["bob@example.test", "rcpt-550@example.test", "carol@example.test"],
            mail_options=["BODY=8BITMIME"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
        )
        assert list(refused) == ["rcpt-550@example.test"]
        [message] = smtp.wait_for(1)
        [session] = smtp.wait_for_sessions(1)
    assert message.raw == raw  # dot-stuffing undone, nothing else touched
    assert message.mail_from == "alice@app.test"
    assert message.rcpt_tos == ["bob@example.test", "carol@example.test"]  # only the accepted
    assert "BODY=8BITMIME" in message.mail_options
    assert message.rcpt_options == {
        "bob@example.test": ["NOTIFY=SUCCESS,FAILURE"],
        "carol@example.test": ["NOTIFY=SUCCESS,FAILURE"],
    }
    assert message.subject == "Caf\u00e9 ouvert"
    assert message.session_id == session.id
    assert before <= message.received_at <= time.time()
    assert message.size == len(raw)
    data = message.to_json()
    assert {"id", "from", "to", "subject", "size", "received_at", "session_id"} <= set(data)


def test_transcript_has_every_command_reply_stage_rule_and_the_end() -> None:
    with served() as smtp:
        send(smtp, b"Subject: one\r\n\r\nx\r\n", ["bob@example.test"])
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(smtp, b"Subject: two\r\n\r\nx\r\n", ["rcpt-550@example.test"])
        first, second = smtp.wait_for_sessions(2)
    stages = [e.stage for e in first.exchanges]
    assert stages == ["connect", "ehlo", "mail", "rcpt", "data", "end_of_data", "quit"]
    assert first.exchanges[0].command is None and first.exchanges[0].reply.startswith("220 ")
    assert first.exchanges[3].command == "rcpt TO:<bob@example.test>"
    assert first.exchanges[5].reply.startswith("250 2.0.0 Ok: queued as ")
    assert first.end == "quit" and first.ended_at >= first.started_at
    times = [e.at for e in first.exchanges]
    assert times == sorted(times)
    [refusal] = [e for e in second.exchanges if e.stage == "rcpt"]
    assert refusal.reply.startswith("550 5.1.1 ")
    assert refusal.rule == "address rcpt-550@example.test"  # the default scenario asked
    assert second.message_ids == []


def test_exchanges_record_the_code_and_status_the_client_saw() -> None:
    scenario = "server: {extensions: [PIPELINING], address_replies: true}"  # no ENHANCEDSTATUS...
    with served(scenario) as plain:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(plain, b"x\r\n", ["rcpt-550@example.test"])
        [session] = plain.wait_for_sessions(1)
    assert [(e.stage, e.code, e.status) for e in session.exchanges[:4]] == [
        ("connect", 220, None), ("ehlo", 250, None), ("mail", 250, None), ("rcpt", 550, None)
    ]  # fmt: skip
    assert session.exchanges[3].reply.startswith("550 ")  # and the text agrees: no status sent
    with served() as enhanced:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(enhanced, b"x\r\n", ["rcpt-550@example.test"])
        [session] = enhanced.wait_for_sessions(1)
    rcpt = session.exchanges[3]
    assert (rcpt.code, rcpt.status) == (550, "5.1.1")
    # A transcript stored before code and status were recorded gets them from its text.
    old = {k: v for k, v in rcpt.to_json().items() if k not in ("code", "status")}
    assert SessionRecord.from_json({**session.to_json(), "transcript": [old]}).exchanges == [rcpt]


def test_a_dropped_session_says_how_it_ended() -> None:
    with served(DROP_AT_DATA) as smtp:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            send(smtp, b"Subject: x\r\n\r\nx\r\n", ["bob@example.test"])
        [session] = smtp.wait_for_sessions(1)
    last = session.exchanges[-1]
    assert (last.stage, last.command, last.reply) == ("data", "data", None)
    assert last.rule == "cut at data"
    assert last.note == "drop by rule"
    assert session.end == "dropped by rule"
    assert smtp.messages == []


def test_memory_store_keeps_the_newest_past_its_limits() -> None:
    with served(max_messages=3, max_sessions=2) as smtp:
        for n in range(5):
            send(smtp, f"Subject: {n}\r\n\r\nx\r\n".encode(), ["bob@example.test"])
        smtp.wait_for_sessions(2)
        assert [m.subject for m in smtp.messages] == ["2", "3", "4"]
        assert len(smtp.sessions) == 2
        assert smtp.sessions[-1].message_ids == [smtp.messages[-1].id]


# --------------------------------------------------------------------------- the directory


def test_store_directory_survives_a_restart(tmp_path: Path) -> None:
    with served(store=tmp_path) as smtp:
        send(smtp, b"Subject: kept\r\n\r\nbody\r\n", ["bob@example.test"], mail_options=["SIZE=20"])
        [before] = smtp.wait_for(1)
        [session_before] = smtp.wait_for_sessions(1)
    assert (tmp_path / "messages" / f"{before.id}.eml").read_bytes() == before.raw
    with served(store=tmp_path) as smtp:
        [after] = smtp.messages
        [session_after] = smtp.sessions
        assert after.to_json() == before.to_json()
        assert after.raw == before.raw
        assert session_after.to_json() == session_before.to_json()
        smtp.reset()  # clears the directory too
    assert list((tmp_path / "messages").iterdir()) == []
    with served(store=tmp_path) as smtp:
        assert smtp.messages == [] and smtp.sessions == []


def test_store_directory_keeps_the_newest_within_its_retention(tmp_path: Path) -> None:
    with served(store=tmp_path) as smtp:
        for n in range(4):
            send(smtp, f"Subject: {n}\r\n\r\nx\r\n".encode(), ["bob@example.test"])
        smtp.wait_for_sessions(4)
    # --store-keep defaults to --max-messages: the two oldest go, from memory and from disk.
    with served(store=tmp_path, max_messages=2) as smtp:
        assert [m.subject for m in smtp.messages] == ["2", "3"]
        assert smtp.messages[0].raw == b"Subject: 2\r\n\r\nx\r\n"  # read from its file
    assert len(list((tmp_path / "messages").glob("*.eml"))) == 2
    assert len(list((tmp_path / "messages").glob("*.json"))) == 2


# --------------------------------------------------------------------------- kill -9


class Served:
    """``python -m fakesmtp serve --store DIR`` in a subprocess, ports read from its first line."""

    def __init__(self, store: Path) -> None:
        command = [sys.executable, "-m", "fakesmtp", "serve", "--store", str(store)]
        command += ["--port", "0", "--api-port", "0", "--quiet"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 20)
        line = self.process.stdout.readline() if ready else ""
        match = re.search(r"SMTP on ([\d.]+):(\d+).*http://([\d.]+):(\d+)/", line)
        if match is None:
            self.process.kill()
            raise AssertionError(f"unexpected first line {line!r}; {self.process.stderr.read()}")
        self.port = int(match[2])
        self.api = f"http://{match[3]}:{match[4]}/api/v1"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.api + path, timeout=5) as response:
            return response.read()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=10)


@pytest.mark.slow
def test_nothing_acknowledged_is_lost_after_kill_9(tmp_path: Path) -> None:
    served = Served(tmp_path)
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def traffic(worker: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", served.port, timeout=5) as client:
                    client.ehlo()
                    for _ in range(3):  # several messages per session
                        n += 1
                        raw = (
                            f"Subject: worker {worker} message {n}\r\n\r\n"
                            f".dotted line\r\nbody {worker}-{n} caf\u00e9\r\n"
                        ).encode()
                        assert client.mail("alice@app.test")[0] == 250
                        assert client.rcpt(f"bob{worker}@example.test")[0] == 250
                        code, reply = client.data(raw)
                        if code == 250:
                            queued = reply.decode().rsplit(" ", 1)[-1]
                            with lock:
                                acknowledged[queued] = raw
                                if len(acknowledged) >= 40:
                                    enough.set()
            except (OSError, smtplib.SMTPException):
                return  # the server was killed under us

    workers = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    try:
        assert enough.wait(20), "the server did not acknowledge 40 messages in 20 s"
        served.process.send_signal(signal.SIGKILL)  # mid-traffic: workers are still sending
        served.process.wait(10)
    finally:
        stop.set()
        served.process.kill()
        for worker in workers:
            worker.join(10)
    with lock:
        expected = dict(acknowledged)

    restarted = Served(tmp_path)
    try:
        listed = json.loads(restarted.get("/messages"))
        ids = {m["id"] for m in listed["messages"]}
        missing = sorted(set(expected) - ids)
        assert not missing, f"{len(missing)} acknowledged message(s) lost: {missing}"
        for message_id, raw in expected.items():
            assert restarted.get(f"/messages/{message_id}/raw") == raw
        by_id = {m["id"]: m for m in listed["messages"]}
        for message_id in expected:
            session_id = by_id[message_id]["session_id"]
            session = json.loads(restarted.get(f"/sessions/{session_id}"))
            assert message_id in session["message_ids"]  # the transcript was kept before the 250
            assert session["end"] is not None  # a live one says the server died under it
    finally:
        restarted.stop()
