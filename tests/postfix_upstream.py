"""A real Postfix smtpd as an upstream for record tests, run from a temporary configuration.

Debian's Postfix, started in the foreground (``postfix start-fg``) from a directory of its own: no
system daemon, no port 25. It relays what it accepts to a fakesmtp sink on 127.0.0.1, so the test
sees the envelope Postfix accepted. It refuses unknown recipients (550 5.1.1, relay recipient
table), defers some (451 4.7.1 from a check_recipient_access map), refuses a big message after
its final dot (message_size_limit), offers STARTTLS, and offers AUTH only over TLS
(smtpd_tls_auth_only). Postfix's SMTP AUTH talks to an authentication server with Dovecot's
protocol: the small one here checks one user table, so Postfix itself runs the SASL exchange.

Needs root (the master runs as root, its daemons as the ``postfix`` user).
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None
)
HOSTNAME = "mx.postfix.test"
USERS = {"alice": "correct horse"}
KNOWN = ("ok@example.test", "grey@example.test", "carl@example.test", "dora@example.test")
GREYLISTED = "grey@example.test"
SIZE_LIMIT = 20000


def why_not() -> str | None:
    """Why a Postfix upstream cannot run here, or None."""
    if POSTFIX is None:
        return "Postfix is not installed (apt-get install postfix, 'No configuration')"
    if os.geteuid() != 0:
        return "Postfix's master daemon must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist (the Debian package creates it)"
    return None


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = postfix.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.test
relay_recipient_maps = texthash:{root}/etc/recipients
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
maillog_file = /dev/stdout
smtpd_recipient_restrictions =
    check_recipient_access texthash:{root}/etc/access,
    permit_mynetworks,
    reject_unauth_destination
message_size_limit = {size_limit}
smtpd_tls_security_level = may
smtpd_tls_cert_file = {root}/etc/cert.pem
smtpd_tls_key_file = {root}/etc/key.pem
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{auth_port}
# A refused client is told at once, not after Postfix's anti-harvesting pause.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
"""
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
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


class _DovecotAuth(socketserver.StreamRequestHandler):
    """Dovecot's authentication protocol (server side), enough for PLAIN and LOGIN."""

    def handle(self) -> None:
        self._say("VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext")
        self._say(f"SPID\t{os.getpid()}", "CUID\t1", "COOKIE\t" + "0" * 32, "DONE")
        pending: dict[str, dict[str, str]] = {}
        for raw in self.rfile:
            words = raw.decode("utf-8", "replace").rstrip("\r\n").split("\t")
            if words[0] == "AUTH" and len(words) >= 3:
                request_id, mechanism = words[1], words[2].upper()
                params = dict(w.split("=", 1) for w in words[3:] if "=" in w)
                state = {"mechanism": mechanism}
                pending[request_id] = state
                self._step(request_id, state, params.get("resp"))
            elif words[0] == "CONT" and len(words) >= 3 and words[1] in pending:
                self._step(words[1], pending[words[1]], words[2])

    def _step(self, request_id: str, state: dict[str, str], response: str | None) -> None:
        if state["mechanism"] == "PLAIN":
            if response is None:
                self._say(f"CONT\t{request_id}\t")
                return
            parts = base64.b64decode(response).decode("utf-8", "replace").split("\x00")
            self._verdict(request_id, parts[1] if len(parts) == 3 else "", parts[-1])
            return
        if "user" not in state:  # LOGIN: the user name, then the password
            if response is None:
                self._say(f"CONT\t{request_id}\t{base64.b64encode(b'Username:').decode()}")
                return
            state["user"] = base64.b64decode(response).decode("utf-8", "replace")
            self._say(f"CONT\t{request_id}\t{base64.b64encode(b'Password:').decode()}")
            return
        password = base64.b64decode(response or "").decode("utf-8", "replace")
        self._verdict(request_id, state["user"], password)

    def _verdict(self, request_id: str, user: str, password: str) -> None:
        good = USERS.get(user) == password
        self._say(f"{'OK' if good else 'FAIL'}\t{request_id}\tuser={user}")

    def _say(self, *lines: str) -> None:
        self.wfile.write("".join(line + "\n" for line in lines).encode())
        self.wfile.flush()


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class PostfixUpstream:
    port: int
    log: Path
    leftover: Callable[[], bool]  # whether a process of the instance outlived its stop


def _write_certificate(directory: Path) -> None:
    import trustme

    issued = trustme.CA().issue_cert(HOSTNAME)
    issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    issued.private_key_pem.write_to_path(str(directory / "key.pem"))


@contextmanager
def postfix_upstream(sink_port: int) -> Iterator[PostfixUpstream]:
    """Run the Postfix above, relaying to ``sink_port``; stopped (and checked gone) on exit."""
    assert POSTFIX is not None
    # Not pytest's tmp_path: its parents are private to root, and Postfix's daemons run as the
    # postfix user, which must reach the queue directory.
    root = Path(tempfile.mkdtemp(prefix="fakesmtp-record-postfix-"))
    root.chmod(0o755)
    config = root / "etc"
    for directory in (config, root / "queue", root / "data"):
        directory.mkdir(mode=0o755)
    owner = pwd.getpwnam("postfix")
    os.chown(root / "data", owner.pw_uid, owner.pw_gid)
    auth = _ThreadingServer(("127.0.0.1", 0), _DovecotAuth)
    auth_thread = threading.Thread(target=auth.serve_forever, daemon=True)
    auth_thread.start()
    port = free_port()
    log_path = root / "postfix.log"
    try:
        (config / "main.cf").write_text(
            MAIN_CF.format(
                root=root,
                hostname=HOSTNAME,
                sink_port=sink_port,
                size_limit=SIZE_LIMIT,
                auth_port=auth.server_address[1],
            )
        )
        (config / "master.cf").write_text(MASTER_CF.format(port=port))
        (config / "recipients").write_text("".join(f"{r} ok\n" for r in KNOWN))
        (config / "access").write_text(f"{GREYLISTED} 451 4.7.1 Greylisted, try again later\n")
        _write_certificate(config)
        for name in ("recipients", "access", "cert.pem", "key.pem"):
            (config / name).chmod(0o644)
        check = subprocess.run(
            [POSTFIX, "-c", str(config), "check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, f"postfix check failed: {check.stdout}{check.stderr}"
        with log_path.open("wb") as log:
            master = subprocess.Popen(
                [POSTFIX, "-c", str(config), "start-fg"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait(lambda: _accepts(port) or master.poll() is not None, 20, "Postfix's smtpd")
            assert master.poll() is None, f"Postfix did not start:\n{log_path.read_text()}"
            yield PostfixUpstream(
                port=port, log=log_path, leftover=lambda: _group_alive(master.pid)
            )
        finally:
            _stop(POSTFIX, config, master)
    finally:
        auth.shutdown()
        auth.server_close()
        shutil.rmtree(root, ignore_errors=True)


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


def _group_alive(pgid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True
