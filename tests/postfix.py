"""A real Postfix, run from a temporary configuration, relaying to a fakesmtp on 127.0.0.1.

Debian's Postfix, started in the foreground (``postfix start-fg``) from a directory of its own:
no system daemon, no port 25, no local delivery, no chroot (the temporary directory has no
chroot tree). Its smtpd listens on a free loopback port; everything it accepts is relayed to
the given port. The record tests run it as the upstream they record; the bounce tests as the
MTA whose DSNs and log lines they read.

Needs root (the master runs as root, its daemons as the ``postfix`` user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None
)

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = {domain}
mydestination =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
# The log is read by the tests (and it keeps syslog out of it).
maillog_file = /dev/stdout
"""
# Only what relaying and bouncing need, after the smtpd line.
SERVICES = """\
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


def why_not() -> str | None:
    """Why a Postfix cannot run here, or None."""
    if POSTFIX is None:
        return "Postfix is not installed (apt-get install postfix, 'No configuration')"
    if os.geteuid() != 0:
        return "Postfix's master daemon must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist (the Debian package creates it)"
    return None


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


class Postfix:
    """A started instance: its smtpd's port, its log, and a stop that may come early."""

    def __init__(self, port: int, config: Path, log: Path, master: subprocess.Popen[bytes]):
        self.port = port
        self.log = log
        self._config = config
        self._master = master
        self._stopped = False

    def stop(self) -> None:
        """Stop this instance; if it will not go, end its process group (ours, started by us)."""
        if self._stopped:
            return
        self._stopped = True
        assert POSTFIX is not None
        config = str(self._config)
        subprocess.run(
            [POSTFIX, "-c", config, "stop"], capture_output=True, timeout=20, check=False
        )
        try:
            self._master.wait(timeout=15)
        except subprocess.TimeoutExpired:
            subprocess.run(
                [POSTFIX, "-c", config, "abort"], capture_output=True, timeout=20, check=False
            )
            os.killpg(self._master.pid, signal.SIGKILL)
            self._master.wait(timeout=5)

    def leftover(self) -> bool:
        """Whether any process is left in the process group the master was started in."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(self._master.pid, 0)
            except ProcessLookupError:
                return False
            time.sleep(0.1)
        return True


@contextmanager
def running_postfix(
    relay_port: int,
    *,
    hostname: str,
    settings: str = "",
    services: str = "",
    files: Mapping[str, bytes] | None = None,
    **fields: object,
) -> Iterator[Postfix]:
    """Postfix as ``hostname``, relaying to ``relay_port``; stopped and removed on exit.

    ``settings`` are main.cf lines after MAIN_CF's, formatted with ``config`` (the directory
    ``files`` are written to, readable by Postfix's daemons) and ``fields``; ``services`` are
    master.cf lines after SERVICES'.
    """
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
    port = free_port()
    log_path = root / "postfix.log"
    try:
        # mydomain is what Postfix would take anyway: the hostname without its first label.
        main_cf = MAIN_CF.format(
            root=root, hostname=hostname, domain=hostname.split(".", 1)[1], relay_port=relay_port
        )
        (config / "main.cf").write_text(main_cf + settings.format(config=config, **fields))
        smtpd = f"127.0.0.1:{port} inet n - n - - smtpd\n"
        (config / "master.cf").write_text(smtpd + SERVICES + services)
        for name, content in (files or {}).items():
            (config / name).write_bytes(content)
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
            # start-fg keeps the master in the foreground: it is our child, and it goes when we
            # stop it, whatever happens in the test.
            master = subprocess.Popen(
                [POSTFIX, "-c", str(config), "start-fg"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        postfix = Postfix(port, config, log_path, master)
        try:
            wait(
                lambda: _accepts(port) or master.poll() is not None,
                20,
                "Postfix's smtpd to listen",
            )
            assert master.poll() is None, f"Postfix did not start:\n{log_path.read_text()}"
            yield postfix
        finally:
            postfix.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
