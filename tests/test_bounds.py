"""What a server left running keeps: bounded in memory and on disk, private, and exactly one
answer per message (issue #11)."""

from __future__ import annotations

import json
import logging
import shutil
import smtplib
import stat
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fakesmtp import FakeSMTP
from fakesmtp.cli import main
from fakesmtp.store import Retention

KIB = 1024


def send(smtp: FakeSMTP, count: int, size: int = 100, subject: str = "m") -> None:
    body = b"x" * size
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        for n in range(count):
            raw = f"Subject: {subject}{n}\r\n\r\n".encode() + body + b"\r\n"
            client.sendmail("a@app.test", ["b@example.test"], raw)


def health(smtp: FakeSMTP) -> dict[str, Any]:
    url = f"http://127.0.0.1:{smtp.api_port}/api/v1/health"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# --------------------------------------------------------------------------- memory


def test_memory_is_capped_by_bytes_oldest_dropped_and_counted(serve: Any) -> None:
    smtp = serve(api_port=0, max_memory=1024 * KIB)
    send(smtp, 40, size=100 * KIB)
    kept = smtp.messages
    assert 5 <= len(kept) <= 10  # about a megabyte of 100 KiB messages
    assert kept[-1].subject == "m39" and kept[0].subject == f"m{40 - len(kept)}"
    store = health(smtp)["store"]
    assert store["bytes"] <= 1024 * KIB and store["max_memory"] == 1024 * KIB
    assert store["dropped_messages"] == 40 - len(kept)
    assert store["messages"] == len(kept)


def test_memory_is_capped_by_count_too(serve: Any) -> None:
    smtp = serve(api_port=0, max_messages=3)
    send(smtp, 5)
    assert [m.subject for m in smtp.messages] == ["m2", "m3", "m4"]
    assert health(smtp)["store"]["dropped_messages"] == 2


def test_cli_takes_the_limits() -> None:
    result = CliRunner().invoke(main, ["serve", "--max-memory", "10", "--port", "0"])
    assert result.exit_code == 2 and "--max-memory" in result.output
    result = CliRunner().invoke(main, ["serve", "--store-keep", "soon", "--port", "0"])
    assert result.exit_code == 2 and "--store-keep" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5000", Retention(count=5000)), ("2GiB", Retention(size=2 * 1024**3)),
     ("500MB", Retention(size=500 * 1000**2)), ("7d", Retention(age=7 * 86400)),
     ("12h", Retention(age=12 * 3600)), ("30m", Retention(age=1800))],
)  # fmt: skip
def test_store_keep_reads_counts_sizes_and_ages(text: str, expected: Retention) -> None:
    assert Retention.parse(text) == expected


# --------------------------------------------------------------------------- the store directory


def test_store_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    with FakeSMTP(store=directory) as smtp:
        send(smtp, 1)
        smtp.wait_for_sessions(1)
    for path in [directory, directory / "messages", directory / "sessions"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert len(files) == 3  # .eml, .json, the transcript
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_store_keep_deletes_the_oldest_files(tmp_path: Path) -> None:
    with FakeSMTP(store=tmp_path, store_keep="3") as smtp:
        send(smtp, 5)
        assert [m.subject for m in smtp.messages] == ["m2", "m3", "m4"]
    assert len(list((tmp_path / "messages").glob("*.eml"))) == 3
    with FakeSMTP(store=tmp_path, store_keep="250B") as smtp:  # two 120-byte messages fit
        assert [m.subject for m in smtp.messages] == ["m3", "m4"]
        assert smtp.store is not None and smtp.store.usage()["disk_bytes"] <= 250
    assert len(list((tmp_path / "messages").glob("*.eml"))) == 2


@pytest.mark.slow
def test_start_up_indexes_the_store_without_reading_the_messages(tmp_path: Path) -> None:
    with FakeSMTP(store=tmp_path) as smtp:
        send(smtp, 30, size=100 * KIB)
        smtp.wait_for_sessions(1)
    with FakeSMTP(store=tmp_path) as smtp:
        assert len(smtp.messages) == 30 and smtp.messages[3].subject == "m3"
        assert smtp.store is not None
        # Thirty envelopes, not 3 MB of messages: the bytes stay on disk until asked for.
        assert smtp.store.usage()["bytes"] < 100 * KIB
        assert smtp.messages[3].raw.endswith(b"x" * 100 + b"\r\n")


def test_one_malformed_file_does_not_stop_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeSMTP(store=tmp_path) as smtp:
        send(smtp, 2)
        smtp.wait_for_sessions(1)
    (tmp_path / "messages" / "BROKEN.json").write_text("{not json")
    (tmp_path / "messages" / "ODD.json").write_text('{"id": 1}')
    (tmp_path / "sessions" / "BROKEN.json").write_text("[]")
    with caplog.at_level(logging.WARNING, "fakesmtp.store"), FakeSMTP(store=tmp_path) as smtp:
        assert [m.subject for m in smtp.messages] == ["m0", "m1"]
        send(smtp, 1, subject="after")
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "BROKEN.json" in skipped and "ODD.json" in skipped


def test_an_unwritable_store_is_reported_as_such(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(main, ["serve", "--store", str(blocker / "store"), "--port", "0"])
    assert result.exit_code == 2
    assert "cannot write to the store directory" in result.output
    assert "listen" not in result.output


# --------------------------------------------------------------------------- one answer each


def test_a_durable_message_keeps_its_250_when_the_transcript_cannot_be_written(
    tmp_path: Path,
) -> None:
    with FakeSMTP(store=tmp_path) as smtp:
        sessions = tmp_path / "sessions"
        shutil.rmtree(sessions)
        sessions.write_text("in the way")  # every transcript write now fails
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            assert client.sendmail("a@app.test", ["b@x.test"], b"Subject: kept\r\n\r\nx\r\n") == {}
        assert smtp.errors == []
    sessions.unlink()
    with FakeSMTP(store=tmp_path) as smtp:
        assert [m.subject for m in smtp.messages] == ["kept"]  # and only once


def test_a_451_means_nothing_was_kept(tmp_path: Path) -> None:
    with FakeSMTP(store=tmp_path) as smtp:
        messages = tmp_path / "messages"
        shutil.rmtree(messages)
        messages.write_text("in the way")  # the message itself cannot be written
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            client.ehlo()
            client.mail("a@app.test")
            client.rcpt("b@x.test")
            code, text = client.data(b"Subject: lost\r\n\r\nx\r\n")
        assert code == 451 and text.startswith(b"4.3.0")
        assert smtp.messages == []
    messages.unlink()
    with FakeSMTP(store=tmp_path) as smtp:
        assert smtp.messages == []  # no duplicate waits for the client's retry


def test_bodies_being_received_share_one_memory_budget(serve: Any) -> None:
    from .conftest import RawClient

    smtp = serve(max_memory=8 * 1024 * KIB)  # bodies in flight: a quarter, 2 MiB
    parked = []
    chunk = (b"z" * 998 + b"\r\n") * 512  # 500 KiB
    try:
        for _ in range(3):  # three clients parked mid-DATA, 1.5 MiB held in all
            client = RawClient(smtp)
            client.reply()
            for line in ("EHLO c.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA"):
                client.send(line + "\r\n")
                client.reply()
            client.send(chunk * 1)
            parked.append(client)
        time.sleep(0.3)
        # A fourth message would pass the budget: dropped, and a transient 452 at its end.
        late = parked[0].__class__(smtp)
        late.reply()
        for line in ("EHLO c.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA"):
            late.send(line + "\r\n")
            late.reply()
        late.send(chunk + chunk + b".\r\n")
        assert late.reply()[0].startswith("452 4.3.1")
        late.close()
        # The parked ones finish; their budget comes back and the next message fits again.
        for client in parked:
            client.send(b".\r\n")
            assert client.reply()[0].startswith("250")
        parked[0].send(b"MAIL FROM:<a@x.test>\r\n")
        parked[0].reply()
        parked[0].send(b"RCPT TO:<b@x.test>\r\nDATA\r\n")
        parked[0].reply()
        parked[0].reply()
        parked[0].send(chunk + b".\r\n")
        assert parked[0].reply()[0].startswith("250")
    finally:
        for client in parked:
            client.close()
    assert len(smtp.messages) == 4


def test_chatty_sessions_push_out_old_transcripts_not_messages(serve: Any) -> None:
    from .conftest import RawClient

    smtp = serve(api_port=0, max_memory=1024 * KIB)
    send(smtp, 3)
    for _ in range(60):  # ~20 KiB of transcript each: more than the memory limit in all
        client = RawClient(smtp)
        client.reply()
        for _ in range(20):
            client.send(b"NOOP " + b"z" * 900 + b"\r\n")
            client.reply()
        client.send(b"QUIT\r\n")
        client.reply()
        client.close()
    deadline = time.monotonic() + 5
    while health(smtp)["active_sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the last sessions' ends are counted once they are closed
    store = health(smtp)["store"]
    assert [m.subject for m in smtp.messages] == ["m0", "m1", "m2"]
    assert store["dropped_messages"] == 0 and store["dropped_sessions"] > 0
    assert store["bytes"] <= 1024 * KIB
