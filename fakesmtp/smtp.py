"""The SMTP session: reads commands, asks the engine, applies its decision or the normal reply.

Built on aiosmtpd's ``SMTP`` protocol, whose connection life cycle (transport, timeouts, EOF) and
``Session`` we keep. The command loop and every verb are ours, because a scenario may answer at
stages aiosmtpd has no hook for (the banner, DATA before 354, STARTTLS, EXPN, HELP, unknown
verbs) and must be able to delay, close, drop, reset or hang at any of them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP as AiosmtpdSMTP

from .engine import Decision, Engine, Facts
from .reply import Reply, clean_text
from .scenario import Scenario, ServerSettings
from .stages import VERB_STAGES, Action, Stage
from .store import CapturedMessage, Exchange, SessionRecord, new_id

if TYPE_CHECKING:
    from .server import Runtime

log = logging.getLogger("fakesmtp")

# `<local@domain>` (a source route `<@a,@b:x@y>` is accepted and dropped), or a bare address.
_PATH_RE = re.compile(
    r"^\s*<(?:@[^:<>]*:)?(?P<angle>[^<>]*)>(?:\s+(?P<params>.*))?$|"
    r"^\s*(?P<bare>[^<>\s]+)(?:\s+(?P<params2>.*))?$"
)
_ADDRESS_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")
_PARAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(=[^=\s\x00-\x1f\x7f]+)?$")
_MASK = "****"


def _good_address(address: str) -> bool:
    # isprintable() also refuses what _ADDRESS_RE lets through: undecodable bytes (kept as
    # surrogates), C1 controls, bidi overrides, line separators. Such text never reaches a
    # reply's {to}/{from}, a transcript or the console.
    return _ADDRESS_RE.match(address) is not None and address.isprintable()


def _echo(value: str, limit: int) -> str:
    """Client text quoted in one of our own error replies: printable ASCII only, bounded."""
    return clean_text(value.encode("ascii", "replace").decode("ascii"), limit)


def _well_formed(data: bytes) -> bytes:
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


def _printable(text: str) -> str:
    """Non-ASCII text made safe for transcripts and consoles (no C1, bidi or separators)."""
    if text.isascii() or text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def _reply(code: int, status: str | None, *lines: str) -> Reply:
    return Reply(code=code, status=status, lines=lines or ("",))


class Profile:
    """The normal replies for one scenario's settings, built once per scenario (not per command)."""

    def __init__(self, scenario: Scenario, starttls: ssl.SSLContext | None) -> None:
        s: ServerSettings = scenario.server
        self.scenario = scenario
        # The rules travel with the settings: a command that began before a swap is decided and
        # rendered by the scenario it began with, never by half of each.
        self.engine = Engine(scenario)
        self.settings = s
        self.starttls = starttls
        self.enhanced = s.enhanced_status
        self.extensions = frozenset(s.extensions)
        host = s.hostname
        self.banner = _reply(220, None, f"{host} ESMTP fakesmtp")
        self.lmtp_banner = _reply(220, None, f"{host} LMTP fakesmtp")
        self.helo_ok = _reply(250, None, host)
        self.mail_ok = _reply(250, "2.1.0", "Ok")
        self.rcpt_ok = _reply(250, "2.1.5", "Ok")
        self.data_go = _reply(354, None, "End data with <CR><LF>.<CR><LF>")
        self.ok = _reply(250, "2.0.0", "Ok")
        self.vrfy = _reply(
            252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"
        )
        self.expn = _reply(502, "5.5.1", "EXPN not supported")
        # Only what this scenario offers: STARTTLS and AUTH when they are configured.
        offered = set(VERB_STAGES) - ({"STARTTLS"} if starttls is None else set())
        offered -= {"AUTH"} if s.auth is None else set()
        self.help = _reply(214, "2.0.0", f"Commands: {' '.join(sorted(offered))}; see RFC 5321")
        self.quit = _reply(221, "2.0.0", "Bye")
        self.tls_go = _reply(220, "2.0.0", "Ready to start TLS")
        self.auth_ok = _reply(235, "2.7.0", "Authentication successful")
        self.auth_bad = _reply(535, "5.7.8", "Authentication credentials invalid")
        self.unknown = _reply(500, "5.5.2", "Error: command not recognized")
        self.timeout = _reply(421, "4.4.2", f"{host} Error: timeout exceeded")
        self.shutdown = _reply(421, "4.3.2", "Service shutting down")
        self.internal = _reply(451, "4.3.0", "Internal error, try again later")
        self._wire: dict[Reply, bytes] = {}

    def wire(self, reply: Reply, fields: dict[str, str] | None = None) -> bytes:
        """A reply's bytes; fixed replies are rendered once and remembered."""
        if reply.templated:
            return _well_formed(reply.render(fields, enhanced=self.enhanced))
        data = self._wire.get(reply)
        if data is None:
            data = _well_formed(reply.render(enhanced=self.enhanced))
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
        for name in ("8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN"):
            if name in self.extensions:
                lines.append(name)
        if self.starttls is not None and not tls_active:
            lines.append("STARTTLS")
        if s.auth is not None and (tls_active or not s.tls.required):
            lines.append("AUTH " + " ".join(s.auth.mechanisms))
        lines.append("HELP")
        return tuple(lines)


class SessionOver(Exception):
    """The conversation is finished (QUIT, a rule closed it, the client left)."""


class _Refused(Exception):
    """A protocol error reply was sent; counts towards the session's error limit."""


class _NullHandler:
    """aiosmtpd wants a handler object; our verbs are methods of the session itself."""


class ScenarioSMTP(AiosmtpdSMTP):
    """One SMTP connection, answering as the current scenario says."""

    # The commands this protocol knows, and the stage each one answers at (LMTP changes both).
    verbs: dict[str, Verb]
    stages: dict[str, Stage] = VERB_STAGES

    def __init__(self, runtime: Runtime, *, implicit_tls: bool = False) -> None:
        profile = runtime.profile
        settings = profile.settings
        self.line_length_limit = max(settings.max_line_length, 1001)  # the StreamReader's limit
        super().__init__(
            _NullHandler(),
            hostname=settings.hostname,  # never look up our own name (getfqdn per connection)
            data_size_limit=None,
            enable_SMTPUTF8=True,
            timeout=settings.idle_timeout,
            auth_require_tls=False,
            loop=runtime.loop,
        )
        self.runtime = runtime
        self.profile = profile
        self.implicit_tls = implicit_tls
        self.record: SessionRecord | None = None
        self.facts: Facts | None = None
        self.extended = False
        self.mail_options: list[str] = []
        self.rcpt_options: dict[str, list[str]] = {}
        self.declared_size = 0
        self.smtputf8 = False
        self.rcpt_attempted = False
        self.errors = 0
        self.awaiting_command = False
        self._line_started = False  # a byte of the awaited command line has arrived
        self._timeout_note = "idle timeout"
        self.closing = False  # a reply-less end (drop, reset, hang) or a close is under way
        self.hanging = False
        self.end_reason: str | None = None
        self._finished = False

    # ------------------------------------------------------------------ life cycle

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; a real MTA says why (RFC 5321 4.5.3.2: 421 before closing).
        if self.transport is None:
            return
        note = self._timeout_note
        if not self.hanging and not self.closing:
            self._write_reply(Stage.UNKNOWN, None, self.profile.timeout, None, note=note)
        if self.hanging:
            self.end_reason = "timeout while hanging"
        self.end_reason = self.end_reason or note.replace("idle ", "")
        if self.transport.get_write_buffer_size():
            # Replies are still waiting: the client reads nothing (or we sit in drain()), and
            # close() would wait for it to read, holding the socket and the session for ever.
            self.transport.abort()
        else:
            self.transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._timeout_note = "idle timeout"
        super()._reset_timeout(duration)

    def data_received(self, data: bytes) -> None:
        # The idle timer restarts only on a complete line. Once a command line has begun it must
        # also end within command_timeout, so one trickling client cannot hold a slot for long.
        # A chunk holding the line's end needs no timer: the line completes at once.
        if self.awaiting_command and not self._line_started and b"\n" not in data:
            self._line_started = True
            limit = self.profile.settings.command_timeout
            handle = self._timeout_handle
            if handle is None or handle.when() - self.loop.time() > limit:
                self._reset_timeout(max(limit, 0.001))  # 0 would mean "the idle duration"
                self._timeout_note = "command timeout"
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._finish("client vanished")

    def _finish(self, reason: str) -> None:
        if self._finished or self.record is None:
            return
        self._finished = True
        self.record.ended_at = time.time()
        self.record.end = self.end_reason or reason
        self.runtime.session_closed(self)

    async def _handle_client(self) -> None:
        runtime = self.runtime
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername") or ("", 0)
        self.record = SessionRecord(
            id=new_id(),
            client=str(peer[0]),
            client_port=int(peer[1]),
            listener="smtps" if self.implicit_tls else "smtp",
            tls=self.implicit_tls,
        )
        self.facts = Facts(session_id=self.record.id, client=str(peer[0]), tls=self.implicit_tls)
        over_limit = runtime.session_opened(self)
        try:
            if over_limit:
                self.end_reason = "too many connections"
                await self._send(
                    Stage.CONNECT,
                    None,
                    _reply(421, "4.7.0", "Too many connections, try again later"),
                )
                self._close()
                return
            await self._respond(Stage.CONNECT, None, self.banner(runtime.profile))
            while self.transport is not None and not self.closing:
                await self._one_command()
        except SessionOver:
            pass
        except asyncio.CancelledError:
            self.end_reason = self.end_reason or "client vanished"
            raise
        except (ConnectionError, OSError):
            self.end_reason = self.end_reason or "client vanished"
        except Exception as error:  # our bug outside a command (the banner...): 421, not silence
            runtime.internal_error(self, error)
            self.end_reason = "internal error"
            if self.transport is not None and not self.closing:
                with contextlib.suppress(Exception):
                    self._write_reply(
                        Stage.UNKNOWN,
                        None,
                        _reply(421, "4.3.0", "Internal error, closing connection"),
                        None,
                        note=f"internal error: {type(error).__name__}",
                    )
        finally:
            if self.transport is not None and not self.hanging:
                self._close()
            self._finish("closed")

    async def _one_command(self) -> None:
        runtime = self.runtime
        # One command sees one scenario: a swap at run time applies from the next command on.
        self.profile = runtime.profile
        if runtime.shutting_down:
            self.end_reason = "server shutting down"
            await self._send(Stage.UNKNOWN, None, runtime.profile.shutdown, note="shutdown")
            self._close()
            raise SessionOver
        self.awaiting_command = True
        self._line_started = False
        too_long = False
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as overrun:
            self.awaiting_command = False
            await self._discard_long_line(overrun.consumed)
            line, too_long = b"", True
        except asyncio.IncompleteReadError:
            self.end_reason = self.end_reason or "client vanished"
            raise SessionOver from None
        finally:
            self.awaiting_command = False
        self._reset_timeout()
        # Taken again now the line is here: a swap made while the client was silent applies.
        self.profile = profile = runtime.profile
        line = line.rstrip(b"\r\n")
        too_long = too_long or len(line) + 2 > profile.settings.max_line_length
        verb_bytes, _, arg_bytes = line.partition(b" ")
        try:
            verb = "" if too_long else verb_bytes.decode("ascii").upper()
        except UnicodeDecodeError:
            verb = ""
        arg = arg_bytes.decode("utf-8", "surrogateescape").strip()
        stage = self.stages.get(verb, Stage.UNKNOWN)
        shown = "<line too long>" if too_long else self._shown_command(verb, line)
        try:
            handler = self.verbs.get(verb)
            if too_long:
                # Inside the try: the 500 counts towards max_errors and the session goes on.
                await self._refuse(Stage.UNKNOWN, shown, 500, "5.5.2", "Line too long")
            elif handler is None:
                await self._unknown(shown)
            else:
                await handler(self, arg, shown)
        except (SessionOver, asyncio.CancelledError, ConnectionError):
            raise
        except _Refused:
            self.errors += 1
            if self.errors >= profile.settings.max_errors:
                self.end_reason = "too many errors"
                await self._send(
                    stage, None, _reply(421, "4.7.0", "Too many errors, closing connection")
                )
                self._close()
                raise SessionOver from None
        except Exception as error:  # our bug: transient and private, never a Python name
            runtime.internal_error(self, error)
            if self.transport is not None and not self.closing:
                await self._send(
                    stage, shown, profile.internal, note=f"internal error: {type(error).__name__}"
                )

    def _shown_command(self, verb: str, line: bytes) -> str:
        """The command as transcripts show it: cleaned, bounded, credentials masked."""
        if verb == "AUTH":
            parts = line.decode("ascii", "replace").split()
            return " ".join(parts[:2] + ([_MASK] if len(parts) > 2 else []))
        return _printable(clean_text(line.decode("utf-8", "replace"), 1000))

    async def _discard_long_line(self, consumed: int) -> None:
        try:
            await self._reader.readexactly(consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    return
                except asyncio.LimitOverrunError as more:
                    await self._reader.readexactly(more.consumed)
        except asyncio.IncompleteReadError:  # the client left in the middle of the long line
            self.end_reason = self.end_reason or "client vanished"
            raise SessionOver from None

    # ------------------------------------------------------------------ replying

    def _fields(self, decision: Decision | None) -> dict[str, str]:
        facts = self.facts
        assert facts is not None
        to = (
            (decision.to if decision else None)
            or facts.recipient
            or (facts.recipients[0] if facts.recipients else "")
        )
        size = facts.size or self.declared_size
        return {
            "to": to or "",
            "from": facts.sender or "",
            "helo": facts.helo or "",
            "client": facts.client,
            "hostname": self.profile.settings.hostname,
            "size": str(size),
        }

    def _write_reply(
        self,
        stage: Stage,
        command: str | None,
        reply: Reply,
        decision: Decision | None,
        note: str | None = None,
    ) -> None:
        fields = self._fields(decision) if reply.templated else None
        data = self.profile.wire(reply, fields)
        assert self.transport is not None
        rule = decision.rule_name if decision else None
        # Recorded before it is written: whoever reads the reply finds it in the transcript.
        self._log(stage, command, data.decode("utf-8", "replace").rstrip("\r\n"), rule, note)
        self.transport.write(data)

    def _log(
        self,
        stage: Stage,
        command: str | None,
        reply: str | None,
        rule: str | None,
        note: str | None = None,
    ) -> None:
        assert self.record is not None
        exchange = Exchange(time.time(), stage.value, command, reply, rule, note)
        self.runtime.store.record(self.record, exchange)

    async def _send(
        self,
        stage: Stage,
        command: str | None,
        reply: Reply,
        decision: Decision | None = None,
        note: str | None = None,
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            raise SessionOver
        self._write_reply(stage, command, reply, decision, note)
        await self._writer.drain()

    async def _refuse(
        self, stage: Stage, command: str | None, code: int, status: str, text: str
    ) -> None:
        """A protocol error reply (RFC 5321 500/501/503...), counted against max_errors."""
        await self._send(stage, command, _reply(code, status, text))
        raise _Refused

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _reset_connection(self) -> None:
        """Close with a TCP RST: SO_LINGER with a zero timeout, then abort."""
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def _respond(
        self,
        stage: Stage,
        command: str | None,
        default: Reply,
        *,
        shape: Callable[[Reply], Reply] | None = None,
        commit: Callable[[], Awaitable[Reply | None]] | None = None,
    ) -> Reply:
        """Answer ``command`` as the scenario says, or with ``default``.

        Returns the reply sent: when it is positive (2xx/3xx), the command takes effect.
        ``shape`` adapts a rule's positive reply (EHLO keeps its extension lines); ``commit``
        runs before a positive reply is sent (end of data stores the message before its 250)
        and may return the reply to send instead.
        """
        assert self.facts is not None
        engine = self.profile.engine
        decision = engine.decide(stage, self.facts)
        note = None
        if decision is None:
            reply = default
            if engine.has_rules(stage):  # tell the transcript why none of them fired
                note = engine.why_not(stage, self.facts)
        else:
            note = decision.note  # how many were counted (in the window), for times/after rules
            if decision.delay:
                await self._pause(decision.delay)
            action = decision.action
            if action in (Action.DROP, Action.RESET, Action.HANG):
                await self._end_without_reply(stage, command, decision)
            reply = decision.reply or default
            if shape is not None and reply.positive and decision.reply is not None:
                reply = shape(reply)
        if commit is not None and reply.positive:
            replaced = await commit()
            if replaced is not None:
                reply = replaced
        await self._send(stage, command, reply, decision, note)
        if reply.closes or (decision is not None and decision.action is Action.CLOSE):
            self.end_reason = self.end_reason or ("closed by rule" if decision else "closed")
            self._close()
            raise SessionOver
        return reply

    async def _pause(self, seconds: float) -> None:
        """A rule's delay. Our own slowness is not the client's idleness: the idle timer waits."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        await asyncio.sleep(seconds)
        if self.transport is None:
            raise SessionOver
        self._reset_timeout()

    async def _end_without_reply(
        self, stage: Stage, command: str | None, decision: Decision
    ) -> None:
        action = decision.action
        self._log(stage, command, None, decision.rule_name, f"{action} by rule")
        if action is Action.DROP:
            self.end_reason = "dropped by rule"
            self._close()
        elif action is Action.RESET:
            self.end_reason = "reset by rule"
            self._reset_connection()
        else:
            self.end_reason = "hung by rule"
            self.hanging = True
            self.closing = True
            await asyncio.Event().wait()  # until the idle timeout closes the transport
        raise SessionOver

    # ------------------------------------------------------------------ checks

    async def _need_helo(self, stage: Stage, shown: str) -> None:
        if self.facts is not None and self.facts.helo is None:
            await self._refuse(stage, shown, 503, "5.5.1", "Error: send HELO/EHLO first")

    async def _need_policy(self, stage: Stage, shown: str) -> None:
        """TLS and AUTH requirements, as a hardened submission server enforces them."""
        settings = self.profile.settings
        facts = self.facts
        assert facts is not None
        if settings.tls.required and not facts.tls:
            await self._refuse(stage, shown, 530, "5.7.0", "Must issue a STARTTLS command first")
        if settings.auth is not None and settings.auth.required and facts.user is None:
            await self._refuse(stage, shown, 530, "5.7.0", "Authentication required")

    def _parse_path(self, arg: str, keyword: str) -> tuple[str, list[str]] | None:
        """``FROM:<a@b> SIZE=10`` -> ("a@b", ["SIZE=10"]); None when it is not a path."""
        if arg[: len(keyword)].upper() != keyword:
            return None
        match = _PATH_RE.match(arg[len(keyword) :])
        if match is None:
            return None
        address = match["angle"] if match["angle"] is not None else match["bare"]
        params = match["params"] if match["angle"] is not None else match["params2"]
        return (address or "").strip(), (params or "").split()

    # ------------------------------------------------------------------ verbs

    async def smtp_HELO(self, arg: str, shown: str) -> None:
        await self._greet(Stage.HELO, arg, shown, extended=False)

    async def smtp_EHLO(self, arg: str, shown: str) -> None:
        await self._greet(Stage.EHLO, arg, shown, extended=True)

    async def _greet(self, stage: Stage, arg: str, shown: str, *, extended: bool) -> None:
        facts = self.facts
        assert facts is not None and self.record is not None
        if not arg or not arg.isprintable():
            await self._refuse(
                stage, shown, 501, "5.5.4", f"Syntax: {stage.value.upper()} hostname"
            )
        profile = self.profile
        previous = facts.helo
        facts.helo = clean_text(arg, 255)
        if extended:
            lines = profile.ehlo_lines(facts.tls)
            default = Reply(code=250, lines=(profile.settings.hostname, *lines))

            def shape(reply: Reply) -> Reply:
                return Reply(
                    code=reply.code, lines=(reply.lines[0], *lines), templated=reply.templated
                )
        else:
            default, shape = profile.helo_ok, None  # type: ignore[assignment]
        if (await self._respond(stage, shown, default, shape=shape)).positive:
            self.extended = extended
            self.record.helo = facts.helo
            facts.new_transaction()
            self._new_transaction()
        else:
            facts.helo = previous

    async def smtp_STARTTLS(self, arg: str, shown: str) -> None:  # type: ignore[override]
        facts = self.facts
        profile = self.profile
        assert facts is not None and self.record is not None
        if profile.starttls is None:
            await self._refuse(Stage.STARTTLS, shown, 502, "5.5.1", "STARTTLS not available")
        if facts.tls:
            await self._refuse(Stage.STARTTLS, shown, 503, "5.5.1", "TLS already active")
        if arg:
            await self._refuse(Stage.STARTTLS, shown, 501, "5.5.4", "Syntax: STARTTLS")
        await self._need_helo(Stage.STARTTLS, shown)
        if not (await self._respond(Stage.STARTTLS, shown, profile.tls_go)).positive:
            return
        # RFC 3207 4.2: anything the client pipelined after STARTTLS is discarded.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        transport = self.transport
        try:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client left before the handshake")
            await self._writer.start_tls(profile.starttls)
        except Exception as error:
            gone = transport is None or transport.is_closing()
            if not gone and not isinstance(error, TimeoutError | ssl.SSLError | OSError):
                raise
            # A client that leaves after the 220 can make asyncio fail in odd ways (even an
            # AttributeError on the closed transport): that is the client's doing, not ours.
            if self._writer.transport is None and transport is not None:
                # start_tls() left the writer without a transport; its __del__ would raise.
                self._writer._transport = transport  # type: ignore[attr-defined]
            self.end_reason = f"TLS handshake failed: {type(error).__name__}"
            self._log(Stage.STARTTLS, None, None, None, self.end_reason)
            self._close()
            raise SessionOver from None
        self.transport = self._writer.transport
        # RFC 3207 4.2: the client must start over, forgetting what it knew before.
        facts.tls = True
        facts.helo = None
        facts.user = None
        facts.new_transaction()
        self._new_transaction()
        self.record.tls = True
        self.extended = False

    async def smtp_AUTH(self, arg: str, shown: str) -> None:  # type: ignore[override]
        from .auth import authenticate  # only sessions that authenticate pay for it

        facts = self.facts
        settings = self.profile.settings
        assert facts is not None and self.record is not None
        if settings.auth is None:
            await self._refuse(Stage.AUTH, shown, 503, "5.5.1", "Error: authentication not enabled")
        if not self.extended:
            await self._refuse(Stage.AUTH, shown, 503, "5.5.1", "Error: send EHLO first")
        if settings.tls.required and not facts.tls:
            await self._refuse(
                Stage.AUTH, shown, 530, "5.7.0", "Must issue a STARTTLS command first"
            )
        if facts.user is not None:
            await self._refuse(Stage.AUTH, shown, 503, "5.5.1", "Error: already authenticated")
        if facts.sender is not None:
            await self._refuse(
                Stage.AUTH, shown, 503, "5.5.1", "Error: MAIL transaction in progress"
            )
        words = arg.split()
        if not words or len(words) > 2:
            await self._refuse(Stage.AUTH, shown, 501, "5.5.4", "Syntax: AUTH mechanism [response]")
        mechanism = words[0].upper()
        if mechanism not in settings.auth.mechanisms:
            await self._refuse(Stage.AUTH, shown, 504, "5.5.4", "Unrecognized authentication type")
        exchanges_before = len(self.record.exchanges)
        outcome = await authenticate(self, mechanism, words[1] if len(words) > 1 else None, shown)
        if outcome is None:  # aborted or undecodable: already answered
            raise _Refused
        username, valid = outcome
        facts.user = username
        default = self.profile.auth_ok if valid else self.profile.auth_bad
        # After a 334 exchange the command is already in the transcript.
        command = shown if len(self.record.exchanges) == exchanges_before else None
        if (await self._respond(Stage.AUTH, command, default)).positive:
            self.record.user = username
        else:
            facts.user = None

    async def challenge(self, stage: Stage, command: str | None, text: bytes) -> bytes | None:
        """Send ``334 <base64>`` and read the answer; None after answering an abort or bad data."""
        await self._send(stage, command, _reply(334, None, base64.b64encode(text).decode()))
        try:
            line = (await self._reader.readuntil(b"\n")).strip()
        except asyncio.LimitOverrunError as overrun:
            await self._discard_long_line(overrun.consumed)
            self._log(stage, _MASK, None, None, "client response to 334, too long")
            await self._send(
                stage, None, _reply(500, "5.5.6", "Authentication Exchange line is too long")
            )
            return None
        except asyncio.IncompleteReadError:
            self.end_reason = self.end_reason or "client vanished"
            raise SessionOver from None
        self._reset_timeout()  # a complete line, like any command line
        self._log(stage, _MASK, None, None, "client response to 334")
        if line == b"*":
            await self._send(stage, None, _reply(501, "5.7.0", "Authentication aborted"))
            return None
        try:
            return base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            await self._send(stage, None, _reply(501, "5.5.2", "Cannot decode response"))
            return None

    async def smtp_MAIL(self, arg: str, shown: str) -> None:  # type: ignore[override]
        facts = self.facts
        settings = self.profile.settings
        assert facts is not None
        await self._need_helo(Stage.MAIL, shown)
        await self._need_policy(Stage.MAIL, shown)
        if facts.sender is not None:
            await self._refuse(Stage.MAIL, shown, 503, "5.5.1", "Error: nested MAIL command")
        parsed = self._parse_path(arg, "FROM:")
        if parsed is None:
            await self._refuse(Stage.MAIL, shown, 501, "5.5.4", "Syntax: MAIL FROM:<address>")
            return
        address, params = parsed
        if address and not _good_address(address):
            await self._refuse(Stage.MAIL, shown, 501, "5.1.7", "Bad sender address syntax")
        options = await self._mail_params(params, shown)
        if not address.isascii() and not self.smtputf8:
            await self._refuse(
                Stage.MAIL, shown, 553, "5.6.7", "SMTPUTF8 is required for a non-ASCII address"
            )
        if settings.size_limit and self.declared_size > settings.size_limit:
            await self._refuse(
                Stage.MAIL, shown, 552, "5.3.4", "Message size exceeds fixed maximum message size"
            )
        facts.sender = address
        if (await self._respond(Stage.MAIL, shown, self.profile.mail_ok)).positive:
            self.mail_options = options
        else:
            facts.sender = None
            self._new_transaction()

    async def _mail_params(self, params: list[str], shown: str) -> list[str]:
        extensions = self.profile.extensions
        settings = self.profile.settings
        self.smtputf8 = False
        self.declared_size = 0
        if params and not self.extended:
            await self._refuse(Stage.MAIL, shown, 501, "5.5.4", "Syntax: MAIL FROM:<address>")
        for param in params:
            if not _PARAM_RE.match(param):
                await self._refuse(
                    Stage.MAIL,
                    shown,
                    501,
                    "5.5.4",
                    f"Bad parameter syntax: {_echo(param, 60)}",
                )
            name, _, value = param.partition("=")
            name = name.upper()
            if name == "SIZE" and settings.size_limit and value.isdigit():
                self.declared_size = int(value)
            elif (
                name == "BODY"
                and "8BITMIME" in extensions
                and value.upper() in ("7BIT", "8BITMIME")
            ):
                pass
            elif name == "SMTPUTF8" and "SMTPUTF8" in extensions and not value:
                self.smtputf8 = True
            elif name in ("RET", "ENVID") and "DSN" in extensions and value:
                if name == "RET" and value.upper() not in ("FULL", "HDRS"):
                    await self._refuse(Stage.MAIL, shown, 501, "5.5.4", "RET takes FULL or HDRS")
            elif name == "AUTH" and settings.auth is not None and value:
                pass  # RFC 4954 5: the submitter's identity, recorded with the envelope
            else:
                await self._refuse(
                    Stage.MAIL, shown, 555, "5.5.4", f"Unsupported option: {_echo(name, 40)}"
                )
        return params

    async def smtp_RCPT(self, arg: str, shown: str) -> None:  # type: ignore[override]
        facts = self.facts
        settings = self.profile.settings
        extensions = self.profile.extensions
        assert facts is not None
        await self._need_helo(Stage.RCPT, shown)
        if facts.sender is None:
            await self._refuse(Stage.RCPT, shown, 503, "5.5.1", "Error: need MAIL command")
        parsed = self._parse_path(arg, "TO:")
        if parsed is None:
            await self._refuse(Stage.RCPT, shown, 501, "5.5.4", "Syntax: RCPT TO:<address>")
            return
        address, params = parsed
        if not _good_address(address) and address.lower() != "postmaster":
            await self._refuse(Stage.RCPT, shown, 501, "5.1.3", "Bad recipient address syntax")
        for param in params:
            name, _, value = param.partition("=")
            if not _PARAM_RE.match(param) or not self.extended:
                await self._refuse(Stage.RCPT, shown, 501, "5.5.4", "Syntax: RCPT TO:<address>")
            if name.upper() not in ("NOTIFY", "ORCPT") or "DSN" not in extensions or not value:
                await self._refuse(
                    Stage.RCPT, shown, 555, "5.5.4", f"Unsupported option: {_echo(name, 40)}"
                )
        if not address.isascii() and not self.smtputf8:
            await self._refuse(
                Stage.RCPT, shown, 553, "5.6.7", "SMTPUTF8 is required for a non-ASCII address"
            )
        self.rcpt_attempted = True
        if len(facts.recipients) >= settings.max_recipients:
            await self._send(Stage.RCPT, shown, _reply(452, "4.5.3", "Error: too many recipients"))
            return
        facts.recipient = address
        try:
            if (await self._respond(Stage.RCPT, shown, self.profile.rcpt_ok)).positive:
                facts.recipients.append(address)
                if params:
                    self.rcpt_options[address] = params
        finally:
            facts.recipient = None

    async def smtp_DATA(self, arg: str, shown: str) -> None:  # type: ignore[override]
        facts = self.facts
        assert facts is not None and self.record is not None
        await self._need_helo(Stage.DATA, shown)
        if facts.sender is None:
            await self._refuse(Stage.DATA, shown, 503, "5.5.1", "Error: need MAIL command")
        if not facts.recipients:
            if self.rcpt_attempted:
                await self._refuse(Stage.DATA, shown, 554, "5.5.1", "Error: no valid recipients")
            await self._refuse(Stage.DATA, shown, 503, "5.5.1", "Error: need RCPT command")
        if arg:
            await self._refuse(Stage.DATA, shown, 501, "5.5.4", "Syntax: DATA")
        # Only a 3xx lets the client send the message; after a 2xx its lines are read as commands.
        if (await self._respond(Stage.DATA, shown, self.profile.data_go)).code // 100 != 3:
            return
        raw, too_big = await self._read_message()
        if too_big:
            self.declared_size = len(raw) if raw else self.declared_size
            await self._send(
                Stage.END_OF_DATA,
                "<message>",
                _reply(552, "5.3.4", "Message size exceeds fixed maximum message size"),
            )
            facts.new_transaction()
            self._new_transaction()
            return
        facts.raw = raw
        try:
            await self._answer_message(raw)
        finally:
            facts.new_transaction()
            self._new_transaction()

    def banner(self, profile: Profile) -> Reply:
        """The greeting (LMTP says LMTP)."""
        return profile.banner

    async def _answer_message(self, raw: bytes) -> None:
        """After the final dot: keep the message, then one reply (LMTP: one per recipient)."""
        message_id = new_id()
        facts = self.facts
        assert facts is not None

        async def store() -> Reply | None:
            return await self._keep_message(message_id, raw, list(facts.recipients))

        queued = _reply(250, "2.0.0", f"Ok: queued as {message_id}")
        await self._respond(Stage.END_OF_DATA, f"<message, {len(raw)} bytes>", queued, commit=store)

    async def _keep_message(
        self, message_id: str, raw: bytes, recipients: list[str]
    ) -> Reply | None:
        """Store the message before any 250; on failure, the 451 to send instead."""
        assert self.facts is not None and self.record is not None
        captured = CapturedMessage(
            id=message_id,
            session_id=self.record.id,
            mail_from=self.facts.sender or "",
            rcpt_tos=recipients,
            raw=raw,
            mail_options=self.mail_options,
            rcpt_options={r: o for r, o in self.rcpt_options.items() if r in recipients},
        )
        try:
            await self.runtime.store.save_message(captured, self.record)
        except Exception as error:  # never acknowledge what we could not keep
            self.runtime.internal_error(self, error)
            note = f"internal error: {type(error).__name__}"
            self._log(Stage.END_OF_DATA, None, None, None, note)
            return self.profile.internal
        return None

    async def _read_message(self) -> tuple[bytes, bool]:
        """Read up to the lone dot, undoing dot-stuffing; past the size limit, read and discard."""
        limit = self.profile.settings.size_limit
        # One buffer, not a list of lines: a line object costs ~40 bytes more than its text.
        data = bytearray()
        size = 0
        too_big = False
        reader = self._reader
        at_line_start = True
        # Restarting the idle timer makes a new timer: per line, that was most of the time
        # spent on a big message. Restart it every tenth of the idle timeout (at most 1 s)
        # instead; the client gets at least 90% of the idle timeout between two lines.
        clock = self.loop.time
        every = min(1.0, self._timeout_duration / 10)
        restart_at = clock() + every
        while True:
            try:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as overrun:
                    # A body line longer than our buffer: take it in pieces (real MTAs do).
                    line = await reader.readexactly(overrun.consumed)
            except asyncio.IncompleteReadError:
                self.end_reason = "client vanished during DATA"
                raise SessionOver from None
            now = clock()
            if now >= restart_at:
                self._reset_timeout()
                restart_at = now + every
            if at_line_start and (line == b".\r\n" or line == b".\n"):
                break
            if at_line_start and line[:1] == b".":
                line = line[1:]
            at_line_start = line.endswith(b"\n")
            size += len(line)
            if too_big:
                continue
            if limit and size > limit:
                too_big = True
                data = bytearray()  # keep reading to the dot, but keep nothing
                continue
            data += line
        self._reset_timeout()
        return bytes(data), too_big

    def _new_transaction(self) -> None:
        self.mail_options = []
        self.rcpt_options = {}
        self.declared_size = 0
        self.smtputf8 = False
        self.rcpt_attempted = False

    async def smtp_RSET(self, arg: str, shown: str) -> None:  # type: ignore[override]
        if arg:
            await self._refuse(Stage.RSET, shown, 501, "5.5.4", "Syntax: RSET")
        if (await self._respond(Stage.RSET, shown, self.profile.ok)).positive:
            assert self.facts is not None
            self.facts.new_transaction()
            self._new_transaction()

    async def smtp_NOOP(self, arg: str, shown: str) -> None:  # type: ignore[override]
        await self._respond(Stage.NOOP, shown, self.profile.ok)

    async def smtp_VRFY(self, arg: str, shown: str) -> None:  # type: ignore[override]
        if not arg:
            await self._refuse(Stage.VRFY, shown, 501, "5.5.4", "Syntax: VRFY address")
        await self._respond(Stage.VRFY, shown, self.profile.vrfy)

    async def smtp_EXPN(self, arg: str, shown: str) -> None:  # type: ignore[override]
        await self._respond(Stage.EXPN, shown, self.profile.expn)

    async def smtp_HELP(self, arg: str, shown: str) -> None:  # type: ignore[override]
        await self._respond(Stage.HELP, shown, self.profile.help)

    async def smtp_QUIT(self, arg: str, shown: str) -> None:  # type: ignore[override]
        if (await self._respond(Stage.QUIT, shown, self.profile.quit)).positive:
            self.end_reason = self.end_reason or "quit"
            self._close()
            raise SessionOver

    async def _unknown(self, shown: str) -> None:
        profile = self.profile
        if await self._respond(Stage.UNKNOWN, shown, profile.unknown) is profile.unknown:
            raise _Refused  # the normal 500 counts towards max_errors; a rule's reply does not


Verb = Callable[[ScenarioSMTP, str, str], Awaitable[None]]
ScenarioSMTP.verbs = {verb: getattr(ScenarioSMTP, f"smtp_{verb}") for verb in VERB_STAGES}


__all__ = ["Profile", "ScenarioSMTP", "SessionOver"]
