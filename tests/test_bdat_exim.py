"""Debian's Exim relays through fakesmtp with BDAT (RFC 3030), as it does to any MX offering it.

Exim's smtp transport sends CHUNKING's BDAT whenever the server advertises it. Exim runs here
from the files of Debian's exim4-daemon-light package (unpacked with ``dpkg -x``, not installed:
it conflicts with Postfix), with a temporary configuration that routes every address to
fakesmtp, and delivers one message in the foreground (``-odf``). The same message goes once to a
server offering CHUNKING and once to one that does not: what fakesmtp keeps must be the same
bytes either way (only Exim's own Received header differs).

Set TEST_EXIM_ROOT (not a FAKESMTP_ name: those belong to the CLI) to the unpacked tree
(``.ci/run`` does: apt-get download exim4-daemon-light exim4-base libidn12 libnss-wrapper, then
dpkg -x); skipped, with the reason, without it. Exim's compiled-in user is Debian-exim: where
it does not exist, nss_wrapper (from the same tree) gives Exim a passwd file that has it, so
nothing on the machine is changed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakesmtp import FakeSMTP

ROOT = Path(os.environ.get("TEST_EXIM_ROOT", "/nonexistent"))
EXIM = ROOT / "usr/sbin/exim4"
LIBS = ROOT / "usr/lib/x86_64-linux-gnu"
NSS_WRAPPER = LIBS / "libnss_wrapper.so"


def _why_not() -> str | None:
    if not EXIM.exists():
        return (
            "Exim not found: set TEST_EXIM_ROOT to a dpkg -x of Debian's exim4-daemon-light "
            "and exim4-base (see .ci/run)"
        )
    if os.geteuid() != 0:
        return "Exim's delivery process must be started as root"
    private = next((d for d in (LIBS, *LIBS.parents) if not d.stat().st_mode & 0o001), None)
    if private is not None:
        return (
            f"{private} is closed to other users, and Exim delivers as nobody, who must reach "
            "TEST_EXIM_ROOT's libraries: unpack Exim somewhere open (see .ci/run)"
        )
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]

CONFIG = """\
spool_directory = {work}/spool
log_file_path = {work}/log/%slog
exim_path = {work}/exim4
keep_environment = LD_PRELOAD : LD_LIBRARY_PATH : NSS_WRAPPER_PASSWD : NSS_WRAPPER_GROUP
primary_hostname = relay.fakesmtp.test
qualify_domain = fakesmtp.test

begin routers
to_fakesmtp:
  driver = manualroute
  route_list = * 127.0.0.1
  transport = to_fakesmtp
  self = send

begin transports
to_fakesmtp:
  driver = smtp
  port = {port}
  allow_localhost
  hosts_try_chunking = *
  hosts_avoid_tls = *
"""

# What DATA would have to dot-stuff, 8-bit text, and enough of it for Exim to send the header
# and the body as separate chunks.
MESSAGE = (
    b"From: alice@shop.example.test\n"
    b"To: bob@example.test\n"
    b"Subject: chunks from Exim\n"
    b"Message-ID: <bdat-test@shop.example.test>\n"
    b"Date: Sun, 29 Nov 2026 12:00:00 +0000\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    + "Grüße aus dem Lager.\n".encode()
    + b".a line with a leading dot\n.\n..\n"
    + b"a line of text long enough to make the message large\n" * 4000
)
# What Exim sends of it: its lines end in CRLF (and a Received header of its own goes first).
SENT = MESSAGE.replace(b"\n", b"\r\n")


class Exim:
    """One temporary Exim: its configuration, spool and log, and a way to send through it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        for directory in ("spool", "log"):
            (work / directory).mkdir()
            (work / directory).chmod(0o777)  # Exim writes them as Debian-exim
        # A copy without the set-uid bit: the loader would drop LD_LIBRARY_PATH for it.
        shutil.copy(EXIM, work / "exim4")
        (work / "exim4").chmod(0o755)
        self.env = dict(os.environ, LD_LIBRARY_PATH=str(LIBS))
        try:
            pwd.getpwnam("Debian-exim")
        except KeyError:
            passwd, group = work / "passwd", work / "group"
            passwd.write_text(
                Path("/etc/passwd").read_text()
                + "Debian-exim:x:65534:65534:Exim:/nonexistent:/usr/sbin/nologin\n"
            )
            group.write_text(Path("/etc/group").read_text() + "Debian-exim:x:65534:\n")
            self.env.update(
                LD_PRELOAD=str(NSS_WRAPPER),
                NSS_WRAPPER_PASSWD=str(passwd),
                NSS_WRAPPER_GROUP=str(group),
            )

    def send(self, server: FakeSMTP, message: bytes = MESSAGE) -> str:
        """Deliver ``message`` to bob@example.test through fakesmtp; return Exim's main log."""
        config = self.work / f"exim-{server.port}.conf"
        config.write_text(CONFIG.format(work=self.work, port=server.port))
        # -odf: deliver now, in the foreground; -oi: a line holding a lone dot is message
        # text, not its end (sendmail's rule).
        command = [str(self.work / "exim4"), "-C", str(config), "-odf", "-oi"]
        result = subprocess.run(
            [*command, "-f", "alice@shop.example.test", "bob@example.test"],
            input=message,
            env=self.env,
            capture_output=True,
            timeout=60,
        )
        log = self.work / "log" / "mainlog"
        text = log.read_text(errors="replace") if log.exists() else ""
        assert result.returncode == 0, (result.stderr.decode(errors="replace"), text)
        return text


@pytest.fixture
def exim() -> Iterator[Exim]:
    with tempfile.TemporaryDirectory(prefix="fakesmtp-exim-") as work:
        os.chmod(work, 0o755)
        yield Exim(Path(work))


def without_received(raw: bytes) -> bytes:
    """The message minus the Received header Exim put first (it carries an id and a time)."""
    assert raw.startswith(b"Received: ")
    end = raw.index(b"\r\n")
    while raw[end + 2 : end + 3] in (b" ", b"\t"):  # folded continuation lines
        end = raw.index(b"\r\n", end + 2)
    return raw[end + 2 :]


CHUNKING = "server: {extensions: [PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, CHUNKING]}"
NO_CHUNKING = "server: {extensions: [PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES]}"


def test_exim_delivers_with_bdat_and_the_message_is_kept_byte_for_byte(exim: Exim) -> None:
    with FakeSMTP(CHUNKING) as chunked, FakeSMTP(NO_CHUNKING) as dotted:
        log = exim.send(chunked)
        exim.send(dotted)
        (by_bdat,) = chunked.wait_for(1)
        (by_data,) = dotted.wait_for(1)
        # Every chunk but the LAST at the bdat stage; the LAST one with the message's reply.
        chunk_commands = [
            e.command
            for e in chunked.sessions[0].exchanges
            if e.stage == "bdat" or (e.stage == "end_of_data" and e.command.startswith("BDAT"))
        ]
        data_commands = [e.command for e in dotted.sessions[0].exchanges if e.stage == "data"]
    # Exim used BDAT with the server that offers it ("K" in its log: CHUNKING), DATA otherwise.
    assert ' K C="250 2.0.0 Ok: queued as ' in log
    assert len(chunk_commands) >= 2 and " LAST <message, " in chunk_commands[-1]
    assert data_commands == ["DATA"]
    # The bytes kept are what Exim sent: no dot-stuffing left, no line changed, nothing lost...
    assert without_received(by_bdat.raw) == SENT
    # ...and the same as what DATA delivered.
    assert without_received(by_data.raw) == without_received(by_bdat.raw)
    assert (by_bdat.mail_from, by_bdat.rcpt_tos) == (
        "alice@shop.example.test",
        ["bob@example.test"],
    )
    assert by_bdat.subject == "chunks from Exim"


def test_exim_hears_a_rule_refusing_a_chunk(exim: Exim) -> None:
    scenario = (
        CHUNKING
        + """
rules:
  - name: body too big for this mailbox
    on: bdat
    match: {size: ">100KiB"}
    reply: "552 5.2.2 Mailbox full: {size} octets is more than this mailbox can take"
"""
    )
    with FakeSMTP(scenario) as server:
        log = exim.send(server)
        refused = [e for e in server.sessions[0].exchanges if e.rule]
        # Exim bounces at once, through the same route: its DSN is the only message kept.
        (bounce,) = server.wait_for(1)
    assert [(e.stage, e.reply[:9]) for e in refused] == [("bdat", "552 5.2.2")]
    # Exim took the 552 as permanent for this recipient: it failed the address, with our text.
    assert "** bob@example.test" in log and "552 5.2.2 Mailbox full" in log
    assert (bounce.mail_from, bounce.rcpt_tos) == ("", ["alice@shop.example.test"])
    assert b"552 5.2.2 Mailbox full" in bounce.raw
