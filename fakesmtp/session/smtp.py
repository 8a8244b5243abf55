"""The SMTP session: reads commands, asks the engine, applies its decision or the normal reply.

Every verb is ours, because a scenario may answer at any stage (the banner, DATA before 354,
STARTTLS, EXPN, HELP, unknown verbs) and must be able to delay, close, drop, reset or hang at
any of them. Bytes come and go through ``wire.Wire``; decisions are applied in one place,
``respond()``: wait, then end silently or send, then close when the reply or rule says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import ssl
import time
from collections.abc import Awaitable, Callable

from ..engine import Decision, Facts
from ..reply import Reply, clean_text
from ..stages import VERB_STAGES, Action, Stage
from ..store import CapturedMessage, Exchange, SessionRecord, new_id
from .auth import Undecodable, authenticate
from .profile import Profile, fixed_reply
from .runtime import Runtime
from .wire import Closed, Wire

# `<local@domain>` (a source route `<@a,@b:x@y>` is accepted and dropped), or a bare address.
_PATH_RE = re.compile(
    r"^\s*<(?:@[^:<>]*:)?(?P<angle>[^<>]*)>(?:\s+(?P<params>.*))?$|"
    r"^\s*(?P<bare>[^<>\s]+)(?:\s+(?P<params2>.*))?$"
)
_ADDRESS_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")
_PARAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(=[^=\s\x00-\x1f\x7f]+)?$")
# RFC 3030 2: "BDAT" SP chunk-size [SP "LAST"]; a size of 20 digits is already absurd.
_BDAT_RE = re.compile(r"^(\d{1,20})(?:[ \t]+(LAST))?$", re.IGNORECASE)
_MASK = "****"
_SILENT = (Action.DROP, Action.RESET, Action.HANG)


def _good_address(address: str) -> bool:
    # isprintable() also refuses what _ADDRESS_RE lets through: undecodable bytes (kept as
    # surrogates), C1 controls, bidi overrides, line separators. Such text never reaches a
    # reply's {to}/{from}, a transcript or the console.
    return _ADDRESS_RE.match(address) is not None and address.isprintable()


def _echo(value: str, limit: int) -> str:
    """Client text quoted in one of our own error replies: printable ASCII only, bounded."""
    return clean_text(value.encode("ascii", "replace").decode("ascii"), limit)


def _printable(text: str) -> str:
    """Non-ASCII text made safe for transcripts and consoles (no C1, bidi or separators)."""
    if text.isascii() or text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def message_shown(command: str | None, message: str) -> str:
    """How the transcript shows a message: after the BDAT command that ended it, if any."""
    return message if command is None else f"{command} {message}"


def _refuses(decision: Decision) -> bool:
    """The rule says no (or ends the connection): not a reply that lets the command through."""
    reply = decision.reply
    return decision.action is not None or (reply is not None and not reply.positive)


class SessionOver(Exception):
    """The conversation is finished (QUIT, a rule closed it, the client left)."""


class _Refused(Exception):
    """A protocol error reply was sent; counts towards the session's error limit."""


class ScenarioSMTP:
    """One SMTP connection, answering as the current scenario says."""

    # The commands this protocol knows, and the stage each one answers at (LMTP changes both).
    verbs: dict[str, Verb]
    stages: dict[str, Stage] = VERB_STAGES

    @classmethod
    def listener(
        cls, runtime: Runtime, *, implicit_tls: bool = False
    ) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for ``loop.create_server``: one new session per connection."""
        return lambda: cls(runtime, implicit_tls=implicit_tls).wire

    def __init__(self, runtime: Runtime, *, implicit_tls: bool = False) -> None:
        profile = runtime.profile
        settings = profile.settings
        self.wire = Wire(
            idle=settings.idle_timeout,
            line_limit=max(settings.max_line_length, 1001),
            run=self._run,
            on_expired=self._timed_out,
            on_lost=self._lost,
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
        self.chunks: bytearray | None = None  # a BDAT message under way (RFC 3030)
        self.chunks_held = 0  # of it, the bytes reserved from the runtime's budget for bodies
        self.binarymime = False  # MAIL said BODY=BINARYMIME: only BDAT may carry it
        self.errors = 0
        self.awaiting_command = False
        self.closing = False  # a reply-less end (drop, reset, hang) or a close is under way
        self.hanging = False
        self.end_reason: str | None = None
        self._finished = False

    # ------------------------------------------------------------------ life cycle

    @property
    def idle(self) -> bool:
        """Waiting for the client's next command, with the connection open."""
        return self.awaiting_command and self.wire.open and not self.closing

    def say_goodbye(self) -> None:
        """The server is going away: 421 4.3.2 now, then close (RFC 5321 3.8)."""
        self.end_reason = "server shutting down"
        self.write_reply(Stage.UNKNOWN, None, self.profile.shutdown, None, note="shutdown")
        self.close()

    def cut(self, reason: str) -> None:
        """End the connection now, without a reply (FakeSMTP.disconnect(), shutdown's end)."""
        self.end_reason = self.end_reason or reason
        self.hanging = False
        self.wire.abort()

    def _timed_out(self, reason: str) -> None:
        # A real MTA says why it closes (RFC 5321 4.5.3.2: 421 before closing).
        if not self.wire.open:
            return
        if not self.hanging and not self.closing:
            self.write_reply(Stage.UNKNOWN, None, self.profile.timeout, None, note=reason)
        if self.hanging:
            self.end_reason = "timeout while hanging"
        self.end_reason = self.end_reason or reason.replace("idle ", "")
        if self.wire.pending_output():
            # Replies are still waiting: the client reads nothing (or we sit in drain()), and
            # close() would wait for it to read, holding the socket and the session for ever.
            self.wire.abort()
        else:
            self.wire.close()

    def _lost(self) -> None:
        self._finish("client vanished")

    def _finish(self, reason: str) -> None:
        if self._finished or self.record is None:
            return
        self._finished = True
        if self.chunks_held:  # a BDAT message left half-sent gives its bytes back
            self.runtime.bodies.release(self.chunks_held)
            self.chunks_held = 0
        self.record.ended_at = time.time()
        self.record.end = self.end_reason or reason
        self.runtime.session_closed(self)

    async def _run(self, wire: Wire) -> None:
        runtime = self.runtime
        client, port = wire.peer
        self.record = SessionRecord(
            id=new_id(),
            client=client,
            client_port=port,
            listener="smtps" if self.implicit_tls else "smtp",
            tls=self.implicit_tls,
        )
        self.facts = Facts(session_id=self.record.id, client=client, tls=self.implicit_tls)
        over_limit = runtime.session_opened(self)
        try:
            if over_limit:
                self.end_reason = "too many connections"
                await self.send(
                    Stage.CONNECT,
                    None,
                    fixed_reply(421, "4.7.0", "Too many connections, try again later"),
                )
                self.close()
                return
            await self.answer(Stage.CONNECT, None, self.banner(runtime.profile))
            while wire.open and not self.closing:
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
            if wire.open and not self.closing:
                with contextlib.suppress(Exception):
                    self.write_reply(
                        Stage.UNKNOWN,
                        None,
                        fixed_reply(421, "4.3.0", "Internal error, closing connection"),
                        None,
                        note=f"internal error: {type(error).__name__}",
                    )
        finally:
            if not self.hanging:
                self.close()
            self._finish("closed")

    async def _read_line(self, started_within: float | None = None) -> bytes | None:
        """One line from the client (None: too long, discarded); SessionOver when it left."""
        try:
            return await self.wire.read_line(started_within=started_within)
        except Closed:
            self.end_reason = self.end_reason or "client vanished"
            raise SessionOver from None

    async def _one_command(self) -> None:
        runtime = self.runtime
        # One command sees one scenario: a swap at run time applies from the next command on.
        self.profile = runtime.profile
        if runtime.shutting_down:
            self.end_reason = "server shutting down"
            await self.send(Stage.UNKNOWN, None, runtime.profile.shutdown, note="shutdown")
            self.close()
            raise SessionOver
        self.awaiting_command = True
        try:
            # Once a command line has begun it must also end within command_timeout, so one
            # trickling client cannot hold a slot for long.
            line = await self._read_line(self.profile.settings.command_timeout)
        finally:
            self.awaiting_command = False
        # Taken again now the line is here: a swap made while the client was silent applies.
        self.profile = profile = runtime.profile
        too_long = line is None
        line = (line or b"").rstrip(b"\r\n")
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
                await self.refuse(Stage.UNKNOWN, shown, 500, "5.5.2", "Line too long")
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
                await self.send(
                    stage, None, fixed_reply(421, "4.7.0", "Too many errors, closing connection")
                )
                self.close()
                raise SessionOver from None
        except Exception as error:  # our bug: transient and private, never a Python name
            runtime.internal_error(self, error)
            if self.wire.open and not self.closing:
                await self.send(
                    stage, shown, profile.internal, note=f"internal error: {type(error).__name__}"
                )

    def _shown_command(self, verb: str, line: bytes) -> str:
        """The command as transcripts show it: cleaned, bounded, credentials masked."""
        if verb == "AUTH":
            parts = line.decode("ascii", "replace").split()
            return " ".join(parts[:2] + ([_MASK] if len(parts) > 2 else []))
        return _printable(clean_text(line.decode("utf-8", "replace"), 1000))

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

    def write_reply(
        self,
        stage: Stage,
        command: str | None,
        reply: Reply,
        decision: Decision | None,
        note: str | None = None,
    ) -> None:
        """Record the reply in the transcript, then write it (no waiting for the client)."""
        fields = self._fields(decision) if reply.templated else None
        data = self.profile.wire(reply, fields)
        rule = decision.rule_name if decision else None
        status = reply.status if self.profile.enhanced else None  # as the client sees it
        # Recorded before it is written: whoever reads the reply finds it in the transcript.
        text = data.decode("utf-8", "replace").rstrip("\r\n")
        self.log(stage, command, text, rule, note, code=reply.code, status=status)
        self.wire.write(data)

    def log(
        self,
        stage: Stage,
        command: str | None,
        reply: str | None,
        rule: str | None,
        note: str | None = None,
        *,
        code: int | None = None,
        status: str | None = None,
    ) -> None:
        """One line of the transcript."""
        assert self.record is not None
        exchange = Exchange(time.time(), stage.value, command, reply, rule, note, code, status)
        self.runtime.store.record(self.record, exchange)

    async def send(
        self,
        stage: Stage,
        command: str | None,
        reply: Reply,
        decision: Decision | None = None,
        note: str | None = None,
    ) -> None:
        """Write a reply and wait until the client can take more; SessionOver if it is gone."""
        if not self.wire.open:
            raise SessionOver
        self.write_reply(stage, command, reply, decision, note)
        await self.wire.drain()

    async def refuse(
        self, stage: Stage, command: str | None, code: int, status: str, text: str
    ) -> None:
        """A protocol error reply (RFC 5321 500/501/503...), counted against max_errors."""
        await self.send(stage, command, fixed_reply(code, status, text))
        raise _Refused

    def close(self) -> None:
        """Close once what was written has gone out; the session ends."""
        self.closing = True
        self.wire.close()

    async def answer(
        self,
        stage: Stage,
        command: str | None,
        default: Reply,
        *,
        shape: Callable[[Reply], Reply] | None = None,
        commit: Callable[[], Awaitable[Reply | None]] | None = None,
    ) -> Reply:
        """Answer ``command`` as the scenario says, or with ``default``: decide, then respond."""
        assert self.facts is not None
        engine = self.profile.engine
        if engine.awaits:  # counts kept elsewhere (--state): the hit is a round trip
            decision = await engine.decide_async(stage, self.facts)
        else:
            decision = engine.decide(stage, self.facts)
        note = None
        if decision is None and engine.has_rules(stage):  # tell the transcript why none fired
            note = engine.why_not(stage, self.facts)
        return await self.respond(
            stage, command, default, decision, note=note, shape=shape, commit=commit
        )

    async def respond(
        self,
        stage: Stage,
        command: str | None,
        default: Reply,
        decision: Decision | None,
        *,
        note: str | None = None,
        shape: Callable[[Reply], Reply] | None = None,
        commit: Callable[[], Awaitable[Reply | None]] | None = None,
    ) -> Reply:
        """Apply a decision (None: the normal reply): wait, end silently or send, close on 421.

        Returns the reply sent: when it is positive (2xx/3xx), the command takes effect.
        ``shape`` adapts a rule's positive reply (EHLO keeps its extension lines); ``commit``
        runs before a positive reply is sent (end of data stores the message before its 250)
        and may return the reply to send instead.
        """
        reply = default
        if decision is not None:
            note = decision.note  # how many were counted (in the window), for times/after rules
            if decision.delay:
                await self._pause(decision.delay)
            if decision.action in _SILENT:
                await self._end_without_reply(stage, command, decision)
            reply = decision.reply or default
            if shape is not None and reply.positive and decision.reply is not None:
                reply = shape(reply)
        if commit is not None and reply.positive:
            replaced = await commit()
            if replaced is not None:
                reply = replaced
        await self.send(stage, command, reply, decision, note)
        if reply.closes or (decision is not None and decision.action is Action.CLOSE):
            self.end_reason = self.end_reason or ("closed by rule" if decision else "closed")
            self.close()
            raise SessionOver
        return reply

    async def _pause(self, seconds: float) -> None:
        """A rule's delay. Our own slowness is not the client's idleness: the idle timer waits."""
        self.wire.stop_timer()
        await asyncio.sleep(seconds)
        if self.wire.lost:
            raise SessionOver
        self.wire.touch()

    async def _end_without_reply(
        self, stage: Stage, command: str | None, decision: Decision
    ) -> None:
        action = decision.action
        self.log(stage, command, None, decision.rule_name, f"{action} by rule")
        self.closing = True
        if action is Action.DROP:
            self.end_reason = "dropped by rule"
            self.wire.close()
        elif action is Action.RESET:
            self.end_reason = "reset by rule"
            self.wire.reset()
        else:
            self.end_reason = "hung by rule"
            self.hanging = True
            await self.wire.hang()  # until the client leaves or the idle timeout closes it
        raise SessionOver

    # ------------------------------------------------------------------ checks

    async def _need_helo(self, stage: Stage, shown: str) -> None:
        if self.facts is not None and self.facts.helo is None:
            await self.refuse(stage, shown, 503, "5.5.1", "Error: send HELO/EHLO first")

    async def _need_policy(self, stage: Stage, shown: str) -> None:
        """TLS and AUTH requirements, as a hardened submission server enforces them."""
        settings = self.profile.settings
        facts = self.facts
        assert facts is not None
        if settings.tls.required and not facts.tls:
            await self.refuse(stage, shown, 530, "5.7.0", "Must issue a STARTTLS command first")
        if settings.auth is not None and settings.auth.required and facts.user is None:
            await self.refuse(stage, shown, 530, "5.7.0", "Authentication required")

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
        await self.greet(Stage.HELO, arg, shown, extended=False)

    async def smtp_EHLO(self, arg: str, shown: str) -> None:
        await self.greet(Stage.EHLO, arg, shown, extended=True)

    async def greet(self, stage: Stage, arg: str, shown: str, *, extended: bool) -> None:
        """HELO, EHLO (and LMTP's LHLO): a new start, with extensions when ``extended``."""
        facts = self.facts
        assert facts is not None and self.record is not None
        if not arg or not arg.isprintable():
            await self.refuse(stage, shown, 501, "5.5.4", f"Syntax: {stage.value.upper()} hostname")
        profile = self.profile
        previous = facts.helo
        facts.helo = clean_text(arg, 255)
        shape: Callable[[Reply], Reply] | None = None
        if extended:
            lines = profile.ehlo_lines(facts.tls)
            default = Reply(code=250, lines=(profile.settings.hostname, *lines))

            def shape(reply: Reply) -> Reply:
                return Reply(
                    code=reply.code, lines=(reply.lines[0], *lines), templated=reply.templated
                )
        else:
            default = profile.helo_ok
        if (await self.answer(stage, shown, default, shape=shape)).positive:
            self.extended = extended
            self.record.helo = facts.helo
            facts.new_transaction()
            self._new_transaction()
        else:
            facts.helo = previous

    async def smtp_STARTTLS(self, arg: str, shown: str) -> None:
        facts = self.facts
        profile = self.profile
        assert facts is not None and self.record is not None
        if profile.starttls is None:
            await self.refuse(Stage.STARTTLS, shown, 502, "5.5.1", "STARTTLS not available")
        if facts.tls:
            await self.refuse(Stage.STARTTLS, shown, 503, "5.5.1", "TLS already active")
        if arg:
            await self.refuse(Stage.STARTTLS, shown, 501, "5.5.4", "Syntax: STARTTLS")
        await self._need_helo(Stage.STARTTLS, shown)
        if not (await self.answer(Stage.STARTTLS, shown, profile.tls_go)).positive:
            return
        assert profile.starttls is not None
        try:
            # RFC 3207 4.2: anything the client pipelined after STARTTLS is discarded (wire).
            await self.wire.start_tls(profile.starttls)
        except Exception as error:
            # A client that leaves after the 220 can make asyncio fail in odd ways (even an
            # AttributeError on the closed transport): that is the client's doing, not ours.
            if not self.wire.lost and not isinstance(error, TimeoutError | ssl.SSLError | OSError):
                raise
            self.end_reason = f"TLS handshake failed: {type(error).__name__}"
            self.log(Stage.STARTTLS, None, None, None, self.end_reason)
            self.close()
            raise SessionOver from None
        # RFC 3207 4.2: the client must start over, forgetting what it knew before.
        facts.tls = True
        facts.helo = None
        facts.user = None
        facts.new_transaction()
        self._new_transaction()
        self.record.tls = True
        self.extended = False

    async def smtp_AUTH(self, arg: str, shown: str) -> None:
        facts = self.facts
        settings = self.profile.settings
        assert facts is not None and self.record is not None
        # auth.tls_only: without TLS, as if AUTH were not there (Postfix's smtpd_tls_auth_only).
        if settings.auth is None or (settings.auth.tls_only and not facts.tls):
            await self.refuse(Stage.AUTH, shown, 503, "5.5.1", "Error: authentication not enabled")
        if not self.extended:
            await self.refuse(Stage.AUTH, shown, 503, "5.5.1", "Error: send EHLO first")
        if settings.tls.required and not facts.tls:
            await self.refuse(
                Stage.AUTH, shown, 530, "5.7.0", "Must issue a STARTTLS command first"
            )
        if facts.user is not None:
            await self.refuse(Stage.AUTH, shown, 503, "5.5.1", "Error: already authenticated")
        if facts.sender is not None:
            await self.refuse(
                Stage.AUTH, shown, 503, "5.5.1", "Error: MAIL transaction in progress"
            )
        words = arg.split()
        if not words or len(words) > 2:
            await self.refuse(Stage.AUTH, shown, 501, "5.5.4", "Syntax: AUTH mechanism [response]")
        mechanism = words[0].upper()
        if mechanism not in settings.auth.mechanisms:
            await self.refuse(Stage.AUTH, shown, 504, "5.5.4", "Unrecognized authentication type")
        command: list[str | None] = [shown]  # the AUTH line goes with the first reply only

        async def challenge(text: bytes) -> bytes | None:
            shown_now, command[0] = command[0], None
            return await self._challenge(shown_now, text)

        # The whole exchange has a deadline: each 334 answered a little before the idle timer
        # runs out would otherwise hold the connection for ever.
        self.wire.limit(self.wire.loop.time() + settings.auth_timeout, "AUTH deadline")
        try:
            outcome = await authenticate(
                mechanism,
                words[1] if len(words) > 1 else None,
                settings.auth.users,
                challenge,
                hostname=settings.hostname,
            )
        except Undecodable:
            await self.refuse(Stage.AUTH, command[0], 501, "5.5.2", "Cannot decode response")
            return
        finally:
            self.wire.unlimit()
        if outcome is None:  # aborted or undecodable: already answered
            raise _Refused
        username, valid = outcome
        facts.user = username
        default = self.profile.auth_ok if valid else self.profile.auth_bad
        if (await self.answer(Stage.AUTH, command[0], default)).positive:
            self.record.user = username
        else:
            facts.user = None

    async def _challenge(self, command: str | None, text: bytes) -> bytes | None:
        """Send ``334 <base64>`` and read the answer; None after answering an abort or bad data."""
        stage = Stage.AUTH
        await self.send(stage, command, fixed_reply(334, None, base64.b64encode(text).decode()))
        line = await self._read_line()
        if line is None:
            self.log(stage, _MASK, None, None, "client response to 334, too long")
            await self.send(
                stage, None, fixed_reply(500, "5.5.6", "Authentication Exchange line is too long")
            )
            return None
        line = line.strip()
        self.log(stage, _MASK, None, None, "client response to 334")
        if line == b"*":
            await self.send(stage, None, fixed_reply(501, "5.7.0", "Authentication aborted"))
            return None
        try:
            return base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            await self.send(stage, None, fixed_reply(501, "5.5.2", "Cannot decode response"))
            return None

    async def smtp_MAIL(self, arg: str, shown: str) -> None:
        facts = self.facts
        settings = self.profile.settings
        assert facts is not None
        await self._need_helo(Stage.MAIL, shown)
        await self._need_policy(Stage.MAIL, shown)
        if facts.sender is not None:
            await self.refuse(Stage.MAIL, shown, 503, "5.5.1", "Error: nested MAIL command")
        parsed = self._parse_path(arg, "FROM:")
        if parsed is None:
            await self.refuse(Stage.MAIL, shown, 501, "5.5.4", "Syntax: MAIL FROM:<address>")
            return
        address, params = parsed
        if address and not _good_address(address):
            await self.refuse(Stage.MAIL, shown, 501, "5.1.7", "Bad sender address syntax")
        options = await self._mail_params(params, shown)
        if not address.isascii() and not self.smtputf8:
            await self.refuse(
                Stage.MAIL, shown, 553, "5.6.7", "SMTPUTF8 is required for a non-ASCII address"
            )
        if settings.size_limit and self.declared_size > settings.size_limit:
            await self.send(Stage.MAIL, shown, self.profile.mail_too_big)
            raise _Refused
        facts.sender = address
        if (await self.answer(Stage.MAIL, shown, self.profile.mail_ok)).positive:
            self.mail_options = options
        else:
            facts.sender = None
            self._new_transaction()

    async def _mail_params(self, params: list[str], shown: str) -> list[str]:
        extensions = self.profile.extensions
        settings = self.profile.settings
        self.smtputf8 = False
        self.binarymime = False
        self.declared_size = 0
        if params and not self.extended:
            await self.refuse(Stage.MAIL, shown, 501, "5.5.4", "Syntax: MAIL FROM:<address>")
        for param in params:
            if not _PARAM_RE.match(param):
                await self.refuse(
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
            elif name == "BODY" and "BINARYMIME" in extensions and value.upper() == "BINARYMIME":
                self.binarymime = True
            elif name == "SMTPUTF8" and "SMTPUTF8" in extensions and not value:
                self.smtputf8 = True
            elif name in ("RET", "ENVID") and "DSN" in extensions and value:
                if name == "RET" and value.upper() not in ("FULL", "HDRS"):
                    await self.refuse(Stage.MAIL, shown, 501, "5.5.4", "RET takes FULL or HDRS")
            elif name == "AUTH" and settings.auth is not None and value:
                pass  # RFC 4954 5: the submitter's identity, recorded with the envelope
            else:
                await self.refuse(
                    Stage.MAIL, shown, 555, "5.5.4", f"Unsupported option: {_echo(name, 40)}"
                )
        return params

    async def smtp_RCPT(self, arg: str, shown: str) -> None:
        facts = self.facts
        settings = self.profile.settings
        extensions = self.profile.extensions
        assert facts is not None
        await self._need_helo(Stage.RCPT, shown)
        if facts.sender is None:
            await self.refuse(Stage.RCPT, shown, 503, "5.5.1", "Error: need MAIL command")
        parsed = self._parse_path(arg, "TO:")
        if parsed is None:
            await self.refuse(Stage.RCPT, shown, 501, "5.5.4", "Syntax: RCPT TO:<address>")
            return
        address, params = parsed
        if not _good_address(address) and address.lower() != "postmaster":
            await self.refuse(Stage.RCPT, shown, 501, "5.1.3", "Bad recipient address syntax")
        for param in params:
            name, _, value = param.partition("=")
            if not _PARAM_RE.match(param) or not self.extended:
                await self.refuse(Stage.RCPT, shown, 501, "5.5.4", "Syntax: RCPT TO:<address>")
            if name.upper() not in ("NOTIFY", "ORCPT") or "DSN" not in extensions or not value:
                await self.refuse(
                    Stage.RCPT, shown, 555, "5.5.4", f"Unsupported option: {_echo(name, 40)}"
                )
        if not address.isascii() and not self.smtputf8:
            await self.refuse(
                Stage.RCPT, shown, 553, "5.6.7", "SMTPUTF8 is required for a non-ASCII address"
            )
        self.rcpt_attempted = True
        if len(facts.recipients) >= settings.max_recipients:
            await self.send(
                Stage.RCPT, shown, fixed_reply(452, "4.5.3", "Error: too many recipients")
            )
            return
        facts.recipient = address
        try:
            if (await self.answer(Stage.RCPT, shown, self.profile.rcpt_ok)).positive:
                facts.recipients.append(address)
                if params:
                    self.rcpt_options[address] = params
        finally:
            facts.recipient = None

    async def smtp_DATA(self, arg: str, shown: str) -> None:
        facts = self.facts
        assert facts is not None and self.record is not None
        await self._need_helo(Stage.DATA, shown)
        if facts.sender is None:
            await self.refuse(Stage.DATA, shown, 503, "5.5.1", "Error: need MAIL command")
        if not facts.recipients:
            if self.rcpt_attempted:
                await self.refuse(Stage.DATA, shown, 554, "5.5.1", "Error: no valid recipients")
            await self.refuse(Stage.DATA, shown, 503, "5.5.1", "Error: need RCPT command")
        if arg:
            await self.refuse(Stage.DATA, shown, 501, "5.5.4", "Syntax: DATA")
        # RFC 3030 2 and 3: one transaction uses DATA or BDAT, never both, and a BINARYMIME
        # body cannot travel in DATA's dot-terminated lines.
        if self.chunks is not None:
            await self.refuse(Stage.DATA, shown, 503, "5.5.1", "Error: DATA after BDAT")
        if self.binarymime:
            await self.refuse(
                Stage.DATA, shown, 503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT, not DATA"
            )
        # Only a 3xx lets the client send the message; after a 2xx its lines are read as commands.
        if (await self.answer(Stage.DATA, shown, self.profile.data_go)).code // 100 != 3:
            return
        raw, too_big = await self._read_message()
        if too_big and self.wire.no_room:
            # Other sessions' messages fill the memory for bodies: transient, try later.
            await self.send(
                Stage.END_OF_DATA,
                "<message>",
                fixed_reply(452, "4.3.1", "Insufficient system storage, try again later"),
            )
            facts.new_transaction()
            self._new_transaction()
            return
        if too_big:
            self.declared_size = len(raw) if raw else self.declared_size
            await self.send(Stage.END_OF_DATA, "<message>", self.profile.data_too_big)
            facts.new_transaction()
            self._new_transaction()
            return
        facts.raw = raw
        try:
            await self.answer_message(raw)
        finally:
            facts.new_transaction()
            self._new_transaction()

    async def smtp_BDAT(self, arg: str, shown: str) -> None:
        """RFC 3030: ``BDAT size [LAST]`` and exactly ``size`` octets; one reply per chunk.

        The chunk is always read before the reply, even when it is refused (RFC 3030 2: the
        receiver accepts and discards the data of a failed BDAT, including chunks already
        pipelined after it). Each chunk is decided at the ``bdat`` stage; after the LAST one
        the whole message is decided at ``end_of_data`` and kept exactly as DATA keeps it.
        """
        facts = self.facts
        profile = self.profile
        assert facts is not None
        if "CHUNKING" not in profile.extensions:
            await self._unknown(shown)  # not offered: a verb like any unknown one
            return
        syntax = _BDAT_RE.match(arg)
        if syntax is None:
            # Without a size nobody knows where the chunk ends: what follows is read as commands.
            await self.refuse(Stage.BDAT, shown, 501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
            return
        size, last = int(syntax[1]), syntax[2] is not None
        problem = self._bdat_problem()
        settings = profile.settings
        limit = settings.size_limit
        too_big = problem is None and bool(limit) and facts.received + size > limit
        # Kept chunks count against the bytes all sessions may hold mid-message (as DATA's).
        no_room = problem is None and not too_big and not self.runtime.bodies.reserve(size)
        keep = problem is None and not too_big and not no_room
        if keep:
            self.chunks_held += size
        # The same pace as DATA's: a trickling client does not hold its slot for ever.
        pace = (settings.data_timeout, settings.command_timeout, settings.min_data_rate)
        try:
            chunk = await self.wire.read_exactly(size, keep=keep, pace=pace)
        except Closed:
            self.end_reason = self.end_reason or "client vanished during BDAT"
            self._end_message()
            raise SessionOver from None
        if problem is not None:
            await self.refuse(Stage.BDAT, shown, *problem)
        if too_big or no_room:
            self._end_message()
            # Worded as server.size_replies.end_of_data says: the message turned out too big.
            refusal = profile.data_too_big
            if no_room:  # other sessions' messages fill the memory for bodies: try later
                refusal = fixed_reply(452, "4.3.1", "Insufficient system storage, try again later")
            await self.send(Stage.BDAT, shown, refusal)
            return
        if self.chunks is None:
            self.chunks = bytearray()
        self.chunks += chunk
        facts.received += size
        engine = profile.engine
        decision = engine.decide(Stage.BDAT, facts)
        note = engine.why_not(Stage.BDAT, facts) if decision is None else None
        if not last or (decision is not None and _refuses(decision)):
            default = fixed_reply(250, "2.0.0", f"Ok: {size} octets received")
            try:
                reply = await self.respond(Stage.BDAT, shown, default, decision, note=note)
            except SessionOver:
                self._end_message()
                raise
            if not reply.positive:  # a refused chunk fails the whole message
                self._end_message()
            elif last:
                await self._last_chunk(shown)
            return
        if decision is not None and decision.delay:
            await self._pause(decision.delay)
        await self._last_chunk(shown)

    def _bdat_problem(self) -> tuple[int, str, str] | None:
        """Why a BDAT cannot be taken now (RFC 5321/3030 order of checks), or None."""
        facts = self.facts
        settings = self.profile.settings
        assert facts is not None
        if facts.helo is None:
            return 503, "5.5.1", "Error: send HELO/EHLO first"
        if settings.tls.required and not facts.tls:
            return 530, "5.7.0", "Must issue a STARTTLS command first"
        if settings.auth is not None and settings.auth.required and facts.user is None:
            return 530, "5.7.0", "Authentication required"
        if facts.sender is None:
            return 503, "5.5.1", "Error: need MAIL command"
        if not facts.recipients:
            if self.rcpt_attempted:
                return 554, "5.5.1", "Error: no valid recipients"
            return 503, "5.5.1", "Error: need RCPT command"
        return None

    async def _last_chunk(self, shown: str) -> None:
        """The LAST chunk came: the message is whole, and is answered as after DATA's dot.

        One exchange in the transcript: the BDAT command, with the end_of_data reply.
        """
        facts = self.facts
        assert facts is not None and self.chunks is not None
        raw = bytes(self.chunks)
        self.chunks = None
        facts.raw = raw
        try:
            await self.answer_message(raw, shown)
        finally:
            self._end_message()

    def _end_message(self) -> None:
        """The message is over (kept, refused or abandoned): so is the transaction."""
        assert self.facts is not None
        self.facts.new_transaction()
        self._new_transaction()

    def banner(self, profile: Profile) -> Reply:
        """The greeting (LMTP says LMTP)."""
        return profile.banner

    async def answer_message(self, raw: bytes, command: str | None = None) -> None:
        """After the final dot: keep the message, then one reply (LMTP: one per recipient).

        ``command`` is what the transcript shows before the message (BDAT's LAST command).
        """
        message_id = new_id()
        facts = self.facts
        assert facts is not None

        async def store() -> Reply | None:
            return await self.keep_message(message_id, raw, list(facts.recipients))

        queued = fixed_reply(250, "2.0.0", f"Ok: queued as {message_id}")
        shown = message_shown(command, f"<message, {len(raw)} bytes>")
        await self.answer(Stage.END_OF_DATA, shown, queued, commit=store)

    async def keep_message(
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
            self.log(Stage.END_OF_DATA, None, None, None, note)
            return self.profile.internal
        return None

    async def _read_message(self) -> tuple[bytes, bool]:
        """Read up to the lone dot, undoing dot-stuffing; past the size limit, read and discard."""
        try:
            settings = self.profile.settings
            # (whole phase, allowance, bytes a second): a trickling client loses its slot.
            pace = (settings.data_timeout, settings.command_timeout, settings.min_data_rate)
            return await self.wire.read_message(settings.size_limit, pace, self.runtime.bodies)
        except Closed:
            self.end_reason = self.end_reason or "client vanished during DATA"
            raise SessionOver from None

    def _new_transaction(self) -> None:
        if self.chunks_held:  # a BDAT message's bytes go back to the budget for bodies
            self.runtime.bodies.release(self.chunks_held)
            self.chunks_held = 0
        self.chunks = None
        self.binarymime = False
        self.mail_options = []
        self.rcpt_options = {}
        self.declared_size = 0
        self.smtputf8 = False
        self.rcpt_attempted = False

    async def smtp_RSET(self, arg: str, shown: str) -> None:
        if arg:
            await self.refuse(Stage.RSET, shown, 501, "5.5.4", "Syntax: RSET")
        if (await self.answer(Stage.RSET, shown, self.profile.ok)).positive:
            assert self.facts is not None
            self.facts.new_transaction()
            self._new_transaction()

    async def smtp_NOOP(self, arg: str, shown: str) -> None:
        await self.answer(Stage.NOOP, shown, self.profile.ok)

    async def smtp_VRFY(self, arg: str, shown: str) -> None:
        if not arg:
            await self.refuse(Stage.VRFY, shown, 501, "5.5.4", "Syntax: VRFY address")
        await self.answer(Stage.VRFY, shown, self.profile.vrfy)

    async def smtp_EXPN(self, arg: str, shown: str) -> None:
        await self.answer(Stage.EXPN, shown, self.profile.expn)

    async def smtp_HELP(self, arg: str, shown: str) -> None:
        await self.answer(Stage.HELP, shown, self.profile.help)

    async def smtp_QUIT(self, arg: str, shown: str) -> None:
        if (await self.answer(Stage.QUIT, shown, self.profile.quit)).positive:
            self.end_reason = self.end_reason or "quit"
            self.close()
            raise SessionOver

    async def _unknown(self, shown: str) -> None:
        profile = self.profile
        if await self.answer(Stage.UNKNOWN, shown, profile.unknown) is profile.unknown:
            raise _Refused  # the normal 500 counts towards max_errors; a rule's reply does not


Verb = Callable[[ScenarioSMTP, str, str], Awaitable[None]]
ScenarioSMTP.verbs = {verb: getattr(ScenarioSMTP, f"smtp_{verb}") for verb in VERB_STAGES}
