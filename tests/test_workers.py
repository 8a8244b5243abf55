"""``serve --workers N``: N processes on one port, one API over all of them, one clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .test_cli import FAKESMTP, Served

GREYLIST = """\
name: greylist
rules:
  - name: greylist
    on: rcpt
    times: 1
    per: triplet
    reply: 451 4.7.1 Greylisted
"""


class Workers(Served):
    """`fakesmtp serve --workers N` in a subprocess, with its API port read off the first line."""

    def __init__(self, *args: str) -> None:
        super().__init__("--port", "0", "--api-port", "0", "--quiet", *args)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", self.banner_line)
        assert match, self.banner_line
        self.api = f"http://127.0.0.1:{match.group(1)}"

    def get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.api + path, timeout=timeout) as response:
            body = response.read()
            kind = response.headers["Content-Type"]
        return json.loads(body) if kind.startswith("application/json") else body.decode()

    def put(self, path: str, body: bytes) -> Any:
        request = urllib.request.Request(self.api + path, data=body, method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def children(self) -> list[int]:
        """The worker processes' ids (children of the supervisor)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


def send(port: int, n: int, to: str = "rcpt@dest.test") -> tuple[int, bytes]:
    """One session, one message; returns the reply to the end of data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(f"sender{n}@client.test")
        code, text = client.rcpt(to)
        if code != 250:
            return code, text
        return client.data(f"Subject: message {n}\r\n\r\nbody {n}\r\n".encode())


@pytest.mark.slow
def test_two_workers_capture_every_message_once_in_one_api() -> None:
    served = Workers("--workers", "2")
    try:
        assert "(2 workers" in served.banner_line
        assert len(served.children()) == 2
        total = 200
        waited: dict[str, Any] = {}
        # Asked before anything is sent: the supervisor's store hears from both workers.
        waiter = threading.Thread(
            target=lambda: waited.update(served.get(f"/api/v1/messages/wait?count={total}"
                                                    "&timeout=60", timeout=70)),
        )  # fmt: skip
        waiter.start()
        with ThreadPoolExecutor(40) as pool:
            replies = list(pool.map(lambda n: send(served.port, n), range(total)))
        assert all(code == 250 for code, _ in replies)
        # "queued as ID": each 250 names the message the API shows, before the 250 was sent.
        queued = {text.decode().rsplit(" ", 1)[1] for _, text in replies}
        listed = served.get("/api/v1/messages")
        assert listed["total"] == total
        assert {m["id"] for m in listed["messages"]} == queued  # each once, none lost
        assert sorted(m["subject"] for m in listed["messages"]) == sorted(
            f"message {n}" for n in range(total)
        )
        waiter.join(70)
        assert waited["count"] == total
        sessions = served.get("/api/v1/sessions")["sessions"]
        assert len(sessions) == total
        assert {s["end"] for s in sessions} == {"quit"}
        one = served.get(f"/api/v1/sessions/{sessions[0]['id']}")
        assert [e["stage"] for e in one["transcript"]][:3] == ["connect", "ehlo", "mail"]
        assert one["messages"][0]["id"] in queued
        metrics = served.get("/metrics")
        assert 'fakesmtp_messages_total{outcome="kept"} 200.0' in metrics
        assert f"fakesmtp_sessions_total {float(total)}" in metrics
    finally:
        code, _ = served.stop()
    assert code == 0


@pytest.mark.slow
def test_sigterm_stops_every_worker_cleanly() -> None:
    served = Workers("--workers", "2")
    workers = served.children()
    idle = [smtplib.SMTP("127.0.0.1", served.port, timeout=10) for _ in range(6)]
    for client in idle:
        client.ehlo("client.test")
    code, out = served.stop()
    assert code == 0
    assert "fakesmtp: stopped" in out
    for client in idle:  # wherever it landed, each idle client is told, then closed
        assert client.getreply() == (421, b"4.3.2 Service shutting down")
    time.sleep(0.2)
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


@pytest.mark.slow
def test_a_swap_through_the_api_reaches_every_worker() -> None:
    served = Workers("--workers", "2")
    try:
        served.put("/api/v1/scenario", b"rules:\n  - {on: rcpt, reply: 550 5.1.1 Nobody here}\n")
        # Enough connections that both workers are reached (the kernel spreads them).
        with ThreadPoolExecutor(10) as pool:
            codes = {code for code, _ in pool.map(lambda n: send(served.port, n), range(40))}
        assert codes == {550}
    finally:
        assert served.stop()[0] == 0


@pytest.mark.slow
def test_rules_counted_across_connections_are_refused_without_shared_state(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "greylist.yaml"
    scenario.write_text(GREYLIST)
    command = [*([FAKESMTP] if FAKESMTP else [sys.executable, "-m", "fakesmtp"]), "serve"]
    result = subprocess.run(
        [*command, "--workers", "2", "--port", "0", "--no-api", "-s", str(scenario)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"rule 'greylist' ({scenario}:3) counts times/after for each triplet, across "
        "connections: with --workers 2 the count would not be exact; share the counts with "
        "--state redis://HOST:PORT/DB, or run with --workers 1"
    )
    bad = subprocess.run([*command, "--workers", "none"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "--workers 'none': give a number from 1, or auto" in bad.stderr


@pytest.mark.slow
def test_workers_write_one_store_directory_and_no_capture_only_counts(tmp_path: Path) -> None:
    served = Workers("--workers", "2", "--store", str(tmp_path))
    try:
        with ThreadPoolExecutor(8) as pool:
            assert {c for c, _ in pool.map(lambda n: send(served.port, n), range(20))} == {250}
    finally:
        assert served.stop()[0] == 0
    assert len(list((tmp_path / "messages").glob("*.eml"))) == 20

    served = Workers("--workers", "2", "--no-capture")
    try:
        with ThreadPoolExecutor(8) as pool:
            assert {c for c, _ in pool.map(lambda n: send(served.port, n), range(20))} == {250}
        assert served.get("/api/v1/messages")["total"] == 0
        metrics = served.get("/metrics")
        assert 'fakesmtp_messages_total{outcome="dropped"} 20.0' in metrics
        assert 'fakesmtp_messages_total{outcome="kept"} 0.0' in metrics
    finally:
        assert served.stop()[0] == 0


@pytest.mark.slow
def test_workers_auto_is_one_per_cpu() -> None:
    served = Workers("--workers", "auto")
    try:
        assert len(served.children()) == (os.cpu_count() or 1)
    finally:
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("rule", "shared", "why"),
    [
        ("{name: r, on: rcpt, times: 1, per: client, reply: 451}", False,
         "counts times/after for each client, across connections"),
        ("{name: r, on: end_of_data, volume: 1MiB, within: 1m, reply: 452}", False,
         "counts volume for the whole server, across connections"),
        ("{name: r, on: rcpt, probability: 0.5, reply: 451}", True,
         "draws its probability from the one seeded sequence"),
        ("{name: r, on: mail, match: {concurrent: '>3'}, reply: 421}", True,
         "counts the sessions open at once"),
    ],
)  # fmt: skip
def test_each_kind_of_shared_count_is_named(rule: str, shared: bool, why: str) -> None:
    from fakesmtp.scenario import load_scenario
    from fakesmtp.workers import WorkersError, check_shareable

    scenario = load_scenario(f"seed: 7\nrules:\n  - {rule}\n")
    with pytest.raises(WorkersError) as refused:
        check_shareable(scenario, 2, shared)
    assert f"rule 'r' (<text>:3) {why}" in str(refused.value)
    check_shareable(scenario, 1, False)  # one process, no shared state: exact as ever
    per_connection = load_scenario("rules:\n  - {on: rcpt, times: 1, per: connection, reply: 451}")
    check_shareable(per_connection, 2, False)  # counts that live with the connection are fine
