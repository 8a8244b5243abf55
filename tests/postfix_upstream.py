"""A real Postfix smtpd as an upstream for record tests, run from a temporary configuration.

tests/postfix.py's Postfix, relaying what it accepts to a fakesmtp sink on 127.0.0.1, so the test
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
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.postfix import Postfix, running_postfix

HOSTNAME = "mx.postfix.test"
USERS = {"alice": "correct horse"}
KNOWN = ("ok@example.test", "grey@example.test", "carl@example.test", "dora@example.test")
GREYLISTED = "grey@example.test"
SIZE_LIMIT = 20000

# main.cf lines after tests/postfix.py's: the recipient table, the access map, TLS and AUTH.
SETTINGS = """\
relay_domains = example.test
relay_recipient_maps = texthash:{config}/recipients
smtpd_recipient_restrictions =
    check_recipient_access texthash:{config}/access,
    permit_mynetworks,
    reject_unauth_destination
message_size_limit = {size_limit}
smtpd_tls_security_level = may
smtpd_tls_cert_file = {config}/cert.pem
smtpd_tls_key_file = {config}/key.pem
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{auth_port}
# A refused client is told at once, not after Postfix's anti-harvesting pause.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
"""
SERVICES = "tlsmgr    unix  - - n 1000? 1 tlsmgr\n"


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


def _files() -> dict[str, bytes]:
    import trustme

    issued = trustme.CA().issue_cert(HOSTNAME)
    return {
        "recipients": "".join(f"{r} ok\n" for r in KNOWN).encode(),
        "access": f"{GREYLISTED} 451 4.7.1 Greylisted, try again later\n".encode(),
        "cert.pem": issued.cert_chain_pems[0].bytes(),
        "key.pem": issued.private_key_pem.bytes(),
    }


@contextmanager
def postfix_upstream(sink_port: int) -> Iterator[Postfix]:
    """Run the Postfix above, relaying to ``sink_port``; stopped (and removed) on exit."""
    auth = _ThreadingServer(("127.0.0.1", 0), _DovecotAuth)
    auth_thread = threading.Thread(target=auth.serve_forever, daemon=True)
    auth_thread.start()
    try:
        with running_postfix(
            sink_port,
            hostname=HOSTNAME,
            settings=SETTINGS,
            services=SERVICES,
            files=_files(),
            size_limit=SIZE_LIMIT,
            auth_port=auth.server_address[1],
        ) as postfix:
            yield postfix
    finally:
        auth.shutdown()
        auth.server_close()
