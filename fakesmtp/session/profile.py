"""A scenario's normal replies, built once per scenario: what a session says when no rule speaks."""

from __future__ import annotations

import ssl

from ..counters import CounterStore
from ..engine import Engine
from ..reply import Reply
from ..scenario import Scenario, ServerSettings
from ..stages import VERB_STAGES


def well_formed(data: bytes) -> bytes:
    """Every line as RFC 5321 4.2 writes it: code, space or dash, text; 512 octets at most.

    The reply module bounds a templated line in characters, but echoed UTF-8 takes up to four
    octets per character: cut at a UTF-8 boundary. A reply with no text keeps the space after
    its code (RFC 4954 4: an empty SASL challenge is "334 ", space included).
    """
    lines = data.split(b"\r\n")[:-1]
    if all(3 < len(line) <= 510 for line in lines):
        return data
    fixed = []
    for line in lines:
        line = line[:510].decode("utf-8", "ignore").encode()
        fixed.append(line + (b" \r\n" if len(line) == 3 else b"\r\n"))
    return b"".join(fixed)


def fixed_reply(code: int, status: str | None, *lines: str) -> Reply:
    """A fixed reply of ours (never templated)."""
    return Reply(code=code, status=status, lines=lines or ("",))


class Profile:
    """The normal replies for one scenario's settings, built once per scenario (not per command)."""

    def __init__(
        self,
        scenario: Scenario,
        starttls: ssl.SSLContext | None,
        counters: CounterStore | None = None,
    ) -> None:
        s: ServerSettings = scenario.server
        self.scenario = scenario
        # The rules travel with the settings: a command that began before a swap is decided and
        # rendered by the scenario it began with, never by half of each.
        self.engine = Engine(scenario, counters=counters)
        self.settings = s
        self.starttls = starttls
        self.enhanced = s.enhanced_status
        self.extensions = frozenset(s.extensions)
        host = s.hostname
        self.banner = fixed_reply(220, None, f"{host} ESMTP fakesmtp")
        self.lmtp_banner = fixed_reply(220, None, f"{host} LMTP fakesmtp")
        self.helo_ok = fixed_reply(250, None, host)
        self.mail_ok = fixed_reply(250, "2.1.0", "Ok")
        self.rcpt_ok = fixed_reply(250, "2.1.5", "Ok")
        self.data_go = fixed_reply(354, None, "End data with <CR><LF>.<CR><LF>")
        self.ok = fixed_reply(250, "2.0.0", "Ok")
        self.vrfy = fixed_reply(
            252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"
        )
        self.expn = fixed_reply(502, "5.5.1", "EXPN not supported")
        # Only what this scenario offers: STARTTLS and AUTH when they are configured.
        offered = set(VERB_STAGES) - ({"STARTTLS"} if starttls is None else set())
        offered -= {"AUTH"} if s.auth is None else set()
        offered -= {"BDAT"} if "CHUNKING" not in self.extensions else set()
        self.help = fixed_reply(
            214, "2.0.0", f"Commands: {' '.join(sorted(offered))}; see RFC 5321"
        )
        self.quit = fixed_reply(221, "2.0.0", "Bye")
        self.tls_go = fixed_reply(220, "2.0.0", "Ready to start TLS")
        self.auth_ok = fixed_reply(235, "2.7.0", "Authentication successful")
        self.auth_bad = fixed_reply(535, "5.7.8", "Authentication credentials invalid")
        self.unknown = fixed_reply(500, "5.5.2", "Error: command not recognized")
        self.timeout = fixed_reply(421, "4.4.2", f"{host} Error: timeout exceeded")
        self.shutdown = fixed_reply(421, "4.3.2", "Service shutting down")
        self.internal = fixed_reply(451, "4.3.0", "Internal error, try again later")
        too_big = fixed_reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        self.mail_too_big = s.mail_size_reply or too_big
        self.data_too_big = s.data_size_reply or too_big
        self._wire: dict[Reply, bytes] = {}

    def wire(self, reply: Reply, fields: dict[str, str] | None = None) -> bytes:
        """A reply's bytes; fixed replies are rendered once and remembered."""
        if reply.templated:
            return well_formed(reply.render(fields, enhanced=self.enhanced))
        data = self._wire.get(reply)
        if data is None:
            data = well_formed(reply.render(enhanced=self.enhanced))
            if len(self._wire) < 1024:
                self._wire[reply] = data
        return data

    def ehlo_lines(self, tls_active: bool) -> tuple[str, ...]:
        """The extension keywords advertised after ``250-hostname``."""
        s = self.settings
        lines = []
        if "PIPELINING" in self.extensions:
            lines.append("PIPELINING")
        if s.size_limit:
            lines.append(f"SIZE {s.size_limit}")
        for name in (
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "CHUNKING",
            "BINARYMIME",
        ):
            if name in self.extensions:
                lines.append(name)
        if self.starttls is not None and not tls_active:
            lines.append("STARTTLS")
        if s.auth is not None and (tls_active or not (s.tls.required or s.auth.tls_only)):
            lines.append("AUTH " + " ".join(s.auth.mechanisms))
        lines.append("HELP")
        return tuple(lines)
