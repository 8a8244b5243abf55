"""A real bounce from a real Postfix: its DSN and its log, through from-bounce, give the same reply.

Postfix (Debian's package, configured here in a temporary directory of its own: no system
daemon, no port 25, no local delivery) relays to fakesmtp on 127.0.0.1, which refuses some
recipients. Postfix bounces; its non-delivery notification goes back through the same relay
host, so fakesmtp captures the DSN too. Each DSN (and the log lines) is fed to
`bounce_to_yaml`, and the resulting scenario must give the reply fakesmtp first gave.

Needs root (Postfix's master runs as root and its daemons as the `postfix` user); skipped, with
the reason, where Postfix is not installed or the tests do not run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fakesmtp import FakeSMTP
from fakesmtp.bounce import bounce_to_yaml, parse_bounce
from fakesmtp.scenario import load_scenario_text

from .conftest import served

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None
)


def _why_not() -> str | None:
    if POSTFIX is None:
        return "Postfix is not installed (apt-get install postfix, 'No configuration')"
    if os.geteuid() != 0:
        return "Postfix's master daemon must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist (the Debian package creates it)"
    return None


pytestmark = [
    pytest.mark.slow,  # starts a real Postfix
    pytest.mark.skipif(_why_not() is not None, reason=_why_not() or ""),
]

SENDER = "alice@shop.example.test"
# What the remote server (fakesmtp) says; the round trip must give exactly this back.
REFUSED = "bob@example.test"  # at RCPT, one line
REFUSED_TEXT = "<bob@example.test>: Recipient address rejected: User unknown in local table"
CONTENT = "dora@example.test"  # after the end of data, three lines
CONTENT_TEXT = [
    "Message refused: it looks like bulk mail.",
    "See the policy page at",
    "https://postmaster.example.test/bulk for details.",
]
GREYLISTED = "greg@example.test"  # deferred once at RCPT, then accepted
GREY_TEXT = "<greg@example.test>: Greylisted, try again in a moment"
ACCEPTED = "carl@example.test"
SCENARIO = f"""
name: remote-mx
server: {{hostname: mx.example.test}}
rules:
  - on: rcpt
    match: {{to: "{REFUSED}"}}
    reply: {{code: 550, status: "5.1.1", text: "{REFUSED_TEXT}"}}
  - on: rcpt
    match: {{to: "{GREYLISTED}"}}
    times: 1
    per: recipient
    reply: {{code: 451, status: "4.7.1", text: "{GREY_TEXT}"}}
  - on: end_of_data
    match: {{to: "{CONTENT}"}}
    reply:
      code: 554
      status: "5.7.1"
      text: {CONTENT_TEXT!r}
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.shop.example.test
mydomain = shop.example.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
# The log is read by the test (and it keeps syslog out of it).
maillog_file = /dev/stdout
# Retry a deferred message within a second or two instead of minutes.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""
# Only what relaying and bouncing need: an smtpd on a loopback port to submit to, no local
# delivery, no chroot (the temporary directory has no chroot tree).
MASTER_CF = """\
127.0.0.1:{submit_port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@dataclass(frozen=True, slots=True)
class PostfixRun:
    dsns: dict[str, str]  # refused recipient -> the DSN Postfix wrote about it
    log: str
    leftover: bool  # a process of the Postfix instance's process group outlived the stop


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _submit(port: int, recipients: list[str]) -> None:
    body = (
        f"From: {SENDER}\r\nTo: {', '.join(recipients)}\r\nSubject: test\r\n\r\n"
        "Hello from the test.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(SENDER, recipients, body)


def _stop(postfix: str, config: Path, master: subprocess.Popen[bytes]) -> None:
    """Stop this instance; if it will not go, end its process group (ours, started by us)."""
    subprocess.run(
        [postfix, "-c", str(config), "stop"], capture_output=True, timeout=20, check=False
    )
    try:
        master.wait(timeout=15)
    except subprocess.TimeoutExpired:
        subprocess.run(
            [postfix, "-c", str(config), "abort"], capture_output=True, timeout=20, check=False
        )
        os.killpg(master.pid, signal.SIGKILL)
        master.wait(timeout=5)


@pytest.fixture(scope="module")
def postfix_run() -> Iterator[PostfixRun]:
    assert POSTFIX is not None
    # Not pytest's tmp_path: its parents are private to root, and Postfix's daemons run as the
    # postfix user, which must reach the queue directory.
    root = Path(tempfile.mkdtemp(prefix="fakesmtp-postfix-"))
    root.chmod(0o755)
    config = root / "etc"
    for directory in (config, root / "queue", root / "data"):
        directory.mkdir(mode=0o755)
    # The master keeps its lock in data_directory as the postfix user; `postfix check` fills
    # in the queue directory with the right owners.
    owner = pwd.getpwnam("postfix")
    os.chown(root / "data", owner.pw_uid, owner.pw_gid)
    submit_port = _free_port()
    log_path = root / "postfix.log"
    try:
        with served(scenario=SCENARIO) as remote:
            (config / "main.cf").write_text(MAIN_CF.format(root=root, relay_port=remote.port))
            (config / "master.cf").write_text(MASTER_CF.format(submit_port=submit_port))
            check = subprocess.run(
                [POSTFIX, "-c", str(config), "check"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert check.returncode == 0, f"postfix check failed: {check.stdout}{check.stderr}"
            with log_path.open("wb") as log:
                # start-fg keeps the master in the foreground: it is our child, and it goes
                # when we stop it, whatever happens in the test.
                master = subprocess.Popen(
                    [POSTFIX, "-c", str(config), "start-fg"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                _wait(
                    lambda: _accepts(submit_port) or master.poll() is not None,
                    20,
                    "Postfix's smtpd to listen",
                )
                assert master.poll() is None, f"Postfix did not start:\n{log_path.read_text()}"
                # The refused recipient travels with an accepted one, as in real life; the
                # refusal after the end of data would bounce every recipient, so it goes alone.
                _submit(submit_port, [REFUSED, ACCEPTED])
                _submit(submit_port, [CONTENT])
                _submit(submit_port, [GREYLISTED])

                def done() -> bool:
                    messages = remote.messages
                    dsns = [m for m in messages if m.mail_from == ""]
                    grey = [m for m in messages if GREYLISTED in m.rcpt_tos]
                    return len(dsns) >= 2 and bool(grey)

                _wait(done, 30, "Postfix's two DSNs and the retried greylisted message")
                _wait(
                    lambda: "status=sent" in _log_for(log_path, GREYLISTED),
                    10,
                    "the log line of the greylisted message's delivery",
                )
            finally:
                _stop(POSTFIX, config, master)
            leftover = _group_alive(master.pid)
            dsns = {}
            for message in remote.messages:
                if message.mail_from == "":
                    text = message.raw.decode("utf-8", "replace")
                    for recipient in (REFUSED, CONTENT):
                        if f"Final-Recipient: rfc822; {recipient}" in text:
                            dsns[recipient] = text
            yield PostfixRun(dsns=dsns, log=log_path.read_text(errors="replace"), leftover=leftover)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group the master was started in."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _log_for(log_path: Path, recipient: str) -> str:
    lines = log_path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if f"to=<{recipient}>" in line)


def _meet(yaml_text: str, recipient: str, stage: str) -> tuple[int, bytes]:
    """Serve the generated scenario; the reply a client meets at `stage` for `recipient`."""
    load_scenario_text(yaml_text, source="<bounce>")
    with served(scenario=yaml_text) as server:
        return _attempt(server, recipient, stage)


def _attempt(server: FakeSMTP, recipient: str, stage: str) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
        smtp.ehlo("app.shop.example.test")
        assert smtp.mail(SENDER)[0] == 250
        if stage == "rcpt":
            return smtp.rcpt(recipient)
        assert smtp.rcpt(recipient)[0] == 250
        return smtp.data(f"From: {SENDER}\r\nSubject: again\r\n\r\nHi.\r\n")


@pytest.mark.slow
def test_postfix_dsn_of_a_rcpt_refusal_round_trips(postfix_run: PostfixRun) -> None:
    dsn = postfix_run.dsns[REFUSED]
    yaml_text = bounce_to_yaml(dsn, "postfix-dsn.eml")
    (finding,) = parse_bounce(dsn)
    assert (finding.recipient, finding.stage, finding.code) == (REFUSED, "rcpt", 550)
    assert _meet(yaml_text, REFUSED, "rcpt") == (550, f"5.1.1 {REFUSED_TEXT}".encode())
    assert _meet(yaml_text, ACCEPTED, "rcpt")[0] == 250


def test_postfix_dsn_of_a_multiline_end_of_data_refusal_round_trips(
    postfix_run: PostfixRun,
) -> None:
    dsn = postfix_run.dsns[CONTENT]
    yaml_text = bounce_to_yaml(dsn, "postfix-dsn.eml")
    (finding,) = parse_bounce(dsn)
    assert (finding.recipient, finding.stage, finding.code) == (CONTENT, "end_of_data", 554)
    assert list(finding.text) == CONTENT_TEXT  # Postfix flattened the lines; they are back
    expected = "\n".join(f"5.7.1 {line}" for line in CONTENT_TEXT).encode()
    assert _meet(yaml_text, CONTENT, "end_of_data") == (554, expected)
    assert _meet(yaml_text, ACCEPTED, "end_of_data")[0] == 250


@pytest.mark.slow
def test_postfix_log_of_a_bounce_round_trips(postfix_run: PostfixRun) -> None:
    lines = [line for line in postfix_run.log.splitlines() if f"to=<{REFUSED}>" in line]
    yaml_text = bounce_to_yaml("\n".join(lines), "maillog")
    assert _meet(yaml_text, REFUSED, "rcpt") == (550, f"5.1.1 {REFUSED_TEXT}".encode())


def test_postfix_log_of_a_deferral_then_delivery_round_trips(postfix_run: PostfixRun) -> None:
    """Deferred once, then sent: the scenario defers once, then accepts the retry."""
    lines = [line for line in postfix_run.log.splitlines() if f"to=<{GREYLISTED}>" in line]
    assert "status=deferred" in lines[0] and "status=sent" in lines[-1]
    yaml_text = bounce_to_yaml("\n".join(lines), "maillog")
    (finding,) = parse_bounce("\n".join(lines))
    assert finding.transient_then_delivered == 1
    load_scenario_text(yaml_text, source="<bounce>")
    with served(scenario=yaml_text) as server:
        assert _attempt(server, GREYLISTED, "rcpt") == (451, f"4.7.1 {GREY_TEXT}".encode())
        assert _attempt(server, GREYLISTED, "rcpt")[0] == 250


def test_no_postfix_left_running(postfix_run: PostfixRun) -> None:
    assert "stopping the Postfix mail system" in postfix_run.log
    assert not postfix_run.leftover
