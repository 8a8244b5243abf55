"""The listening side of ``fakesmtp record``: each client session relayed to the upstream, recorded.

Command by command: a client line goes to the upstream, the upstream's reply (every line of it)
comes back unchanged, and the exchange becomes a step of the recording. The relay offers what
the upstream offers; its own link to the upstream is upgraded with STARTTLS whenever the upstream
offers it, whether or not the client asks for TLS on its side.

The client's side is the session package's ``Wire``, the one seam to the network that ``serve``
uses too: the same line limits, idle timer, STARTTLS, reset and flow control. The rest of the
serving session (verbs, engine, profile, store) has no part here: a relay decides nothing, it
passes on what the upstream decided. The upstream's side is an asyncio stream client
(upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ..session.wire import Closed, Wire
from ..stages import VERB_STAGES, Stage
from ..tls import server_context
from .model import RecordedSession, Recording, Step, UpstreamReply
from .upstream import UpstreamError, UpstreamGone, UpstreamLink, parse_address
from .writer import DELAY_THRESHOLD, AppendError, append_yaml, scenario_yaml

log = logging.getLogger("fakesmtp.record")

CLIENT_LINE_LIMIT = 8192  # a longer command line is refused here, not relayed
IDLE_TIMEOUT = 300.0  # RFC 5321 4.5.3.2.7, on both sides
MAX_RELAYED_MESSAGE = 64 * 1024 * 1024  # a message is held whole before it is passed on
MAX_KEPT_BODY = 256 * 1024  # --keep-bodies: what one message may add to the recording
_MASK = "****"
_ADDRESS = re.compile(r"^\s*(?:FROM|TO):\s*<([^<>]*)>|^\s*(?:FROM|TO):\s*(\S+)", re.IGNORECASE)
_SIZE_PARAM = re.compile(r"\sSIZE=(\d{1,15})(?:\s|$)", re.IGNORECASE)


class SessionEnd(Exception):
    """The relayed session is over (QUIT, the client or the upstream left)."""


def _address(arg: str) -> str:
    match = _ADDRESS.match(arg)
    if match is None:
        return arg.strip()
    address = match.group(1) if match.group(1) is not None else match.group(2)
    return address.split(":")[-1].strip()  # a source route <@a,@b:x@y> names x@y


def _stuffed(message: bytes) -> bytes:
    """A message as DATA sends it: dot-stuffed (RFC 5321 4.5.2), ending with the lone dot."""
    if message and not message.endswith(b"\n"):
        message += b"\r\n"
    lines = message.split(b"\n")
    return b"\n".join(b"." + line if line[:1] == b"." else line for line in lines) + b".\r\n"


class RelaySession:
    """One client connection (a ``Wire``) and the relay's own connection to the upstream."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.wire = Wire(
            idle=recorder.timeout,
            line_limit=CLIENT_LINE_LIMIT,
            run=self.run,
            on_expired=self._timed_out,
            on_lost=self._lost,
        )
        self.record: RecordedSession | None = None
        self.upstream: UpstreamLink | None = None
        self.helo: str | None = None
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.plain_ehlo: UpstreamReply | None = None  # what a client without TLS is offered
        self.upstream_tls_reply: UpstreamReply | None = None  # the upstream's 220 to STARTTLS
        self.upstream_tls_elapsed = 0.0
        self.chunks = bytearray()  # BDAT: the message so far
        self.end = "closed"

    # ------------------------------------------------------------------ life cycle

    async def run(self, wire: Wire) -> None:
        self.recorder.sessions.add(self)
        self.record = self.recorder.recording.open_session(wire.peer[0])
        try:
            await self._converse()
        except SessionEnd:
            pass
        except Closed:
            if self.end == "closed":
                self.end = "client vanished"
        except UpstreamError as error:
            self.end = f"upstream error: {error}"
            await self._say(b"421 4.4.0 fakesmtp record: the upstream misbehaved, closing\r\n")
        except (ConnectionError, OSError, ssl.SSLError) as error:
            if self.end == "closed":
                self.end = f"client vanished ({type(error).__name__})"
        except asyncio.CancelledError:
            if self.end == "closed":
                self.end = "client vanished"
            raise
        except Exception as error:  # our bug: the client hears of it, the log keeps it
            log.error("internal error in relayed session %s", self.record.number, exc_info=error)
            self.end = f"internal error: {type(error).__name__}"
            await self._say(b"421 4.3.0 fakesmtp record: internal error, closing\r\n")
        finally:
            # No await here: closing the wire cancels this task once the connection is gone.
            self.recorder.recording.close_session(self.record, self.end)
            self.recorder.sessions.discard(self)
            if self.upstream is not None:
                polite = self.end.startswith("client vanished")  # QUIT on the client's behalf
                self.recorder.in_background(self.upstream.close(polite=polite))
            self.wire.close()

    def _timed_out(self, reason: str) -> None:
        self.end = f"client {reason}"
        self.wire.write(b"421 4.4.2 fakesmtp record: idle timeout, closing\r\n")
        self.wire.close()

    def _lost(self) -> None:
        """The client's connection is gone; ``run`` is cancelled and cleans up."""

    async def _converse(self) -> None:
        host, port = self.recorder.address
        try:
            self.upstream = await UpstreamLink.open(host, port, self.recorder.timeout)
        except (OSError, TimeoutError) as error:
            self.end = f"upstream unreachable: {error}"
            await self._say(b"421 4.4.1 fakesmtp record: cannot reach the upstream\r\n")
            return
        banner = await self._ask(Stage.CONNECT, None, None)
        await self._pass(banner)
        if banner.code >= 400:
            self.end = f"upstream refused the connection ({banner.code})"
            raise SessionEnd
        while True:
            line = await self.wire.read_line()
            if line is None:  # over CLIENT_LINE_LIMIT: refused here, never relayed
                await self._say(b"500 5.5.2 fakesmtp record: line too long\r\n")
                continue
            verb, _, arg = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape").partition(" ")
            verb = verb.upper()
            handler = getattr(self, f"relay_{verb}", None) if verb.isalpha() else None
            if handler is not None:
                await handler(line, arg)
            else:
                stage = VERB_STAGES.get(verb, Stage.UNKNOWN)
                await self._pass(await self._ask(stage, self._shown(line), line))

    # ------------------------------------------------------------------ the two sides

    async def _say(self, data: bytes) -> None:
        if self.wire.open:
            with contextlib.suppress(ConnectionError):
                self.wire.write(data)
                await self.wire.drain()

    async def _pass(self, reply: UpstreamReply) -> None:
        """The upstream's reply to the client, as it came; a 421 ends both sides (RFC 5321 3.8)."""
        await self._say(reply.wire)
        if reply.code == 421:
            self.end = "upstream closed with 421"
            raise SessionEnd

    def _shown(self, line: bytes) -> str:
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if text[:4].upper() == "AUTH":
            words = text.split()
            return " ".join(words[:2] + ([_MASK] if len(words) > 2 else []))
        return text[:1000]

    async def _ask(
        self,
        stage: Stage,
        shown: str | None,
        line: bytes | None,
        *,
        tried: str | None = None,
        size: int | None = None,
        message: bytes | None = None,
        record: bool = True,
    ) -> UpstreamReply:
        """Send ``line`` (if any), read the reply, record the step; mirror a drop or reset.

        The client's idle timer waits meanwhile: the upstream's slowness is not the client's.
        """
        assert self.upstream is not None
        self.wire.stop_timer()
        started = time.monotonic()
        try:
            if line is not None:
                await self.upstream.send(line)
            reply = await self.upstream.reply()
        except UpstreamGone as gone:
            elapsed = time.monotonic() - started
            self._step(stage, shown, None, gone.how, elapsed, tried, size, message)
            self._mirror(gone.how)
            raise SessionEnd from None
        finally:
            self.wire.touch()
        if stage is Stage.EHLO and reply.code < 400:
            elapsed = time.monotonic() - started
            reply = await self._after_ehlo(reply, tried or "")
            started = time.monotonic() - elapsed
        if record:
            elapsed = time.monotonic() - started
            self._step(stage, shown, reply, None, elapsed, tried, size, message)
        return reply

    def _step(
        self,
        stage: Stage,
        shown: str | None,
        reply: UpstreamReply | None,
        ended: str | None,
        elapsed: float,
        tried: str | None = None,
        size: int | None = None,
        message: bytes | None = None,
    ) -> None:
        assert self.record is not None
        step = Step(
            stage=stage,
            command=shown,
            reply=reply,
            ended=ended,
            elapsed=elapsed,
            tls=self.wire.tls,
            helo=tried if stage in (Stage.HELO, Stage.EHLO) else self.helo,
            sender=tried if stage is Stage.MAIL else self.sender,
            recipient=tried if stage is Stage.RCPT else None,
            recipients=tuple(self.recipients),
            size=size,
            # --keep-bodies: only a refused message's text is ever shown, so only that is kept.
            message=message if reply is None or reply.code >= 400 else None,
        )
        self.recorder.recording.add(self.record, step)

    def _mirror(self, how: str) -> None:
        """The upstream dropped or reset the line: the client gets the same."""
        self.end = "upstream reset the connection" if how == "reset" else "upstream closed"
        if how == "reset":
            self.wire.reset()
        else:
            self.wire.close()

    def _new_transaction(self) -> None:
        self.sender = None
        self.recipients = []
        self.chunks = bytearray()

    # ------------------------------------------------------------------ HELO, EHLO, STARTTLS

    async def relay_HELO(self, line: bytes, arg: str) -> None:
        await self._greet(Stage.HELO, line, arg)

    async def relay_EHLO(self, line: bytes, arg: str) -> None:
        await self._greet(Stage.EHLO, line, arg)

    async def _greet(self, stage: Stage, line: bytes, arg: str) -> None:
        """HELO or EHLO: a greeting the upstream accepts names the client and starts afresh."""
        reply = await self._ask(stage, self._shown(line), line, tried=arg.strip())
        if reply.code < 400:
            self.helo = arg.strip()
            self._new_transaction()
        await self._pass(reply)

    async def _after_ehlo(self, reply: UpstreamReply, helo: str) -> UpstreamReply:
        """Note the capabilities; upgrade the upstream link when offered. Returns what the
        client is shown: a client without TLS sees what the upstream offers without TLS."""
        assert self.upstream is not None and self.record is not None
        record = self.record
        capabilities = reply.lines[1:]
        if not self.upstream.tls:
            record.ehlo_greeting = record.ehlo_greeting or reply.lines[0]
            if record.capabilities is None:
                record.capabilities = capabilities
            self.plain_ehlo = reply
            offered = any(c.upper().split()[:1] == ["STARTTLS"] for c in capabilities)
            if offered and self.upstream_tls_reply is None:
                await self._upgrade_upstream(helo)
            elif self.recorder.require_tls and not offered:
                self.end = "the upstream does not offer STARTTLS (--starttls)"
                await self._say(b"421 4.7.0 fakesmtp record: the upstream offers no STARTTLS\r\n")
                raise SessionEnd
            return reply
        if record.tls_capabilities is None:
            record.tls_capabilities = capabilities
        if not self.wire.tls and self.plain_ehlo is not None:
            return self.plain_ehlo
        return reply

    async def _upgrade_upstream(self, helo: str) -> None:
        """STARTTLS on the relay's own link, then EHLO again there (RFC 3207 4.2)."""
        assert self.upstream is not None and self.record is not None
        started = time.monotonic()
        reply = await self.upstream.command(b"STARTTLS\r\n")
        self.upstream_tls_elapsed = time.monotonic() - started
        self.upstream_tls_reply = reply
        if reply.code != 220:
            if self.recorder.require_tls:
                self.end = f"the upstream refused STARTTLS ({reply.code})"
                await self._say(b"421 4.7.0 fakesmtp record: the upstream refused STARTTLS\r\n")
                raise SessionEnd
            return
        try:
            await self.upstream.starttls(self.recorder.address[0])
        except (ssl.SSLError, OSError, TimeoutError) as error:
            self.end = f"TLS to the upstream failed: {error}"
            await self._say(b"421 4.7.0 fakesmtp record: TLS to the upstream failed\r\n")
            raise SessionEnd from None
        self.record.upstream_tls = True
        again = await self.upstream.command(f"EHLO {helo}\r\n".encode())
        if again.code < 400 and self.record.tls_capabilities is None:
            self.record.tls_capabilities = again.lines[1:]

    async def relay_STARTTLS(self, line: bytes, arg: str) -> None:
        assert self.upstream is not None and self.record is not None
        if self.wire.tls or not self.upstream.tls or self.upstream_tls_reply is None:
            # Not upgraded on our side yet: the upstream itself answers (and may agree now).
            reply = await self._ask(Stage.STARTTLS, "STARTTLS", line)
            await self._pass(reply)
            if reply.code != 220 or self.wire.tls:
                return
            self.upstream_tls_reply = reply
            await self.upstream.starttls(self.recorder.address[0])
            self.record.upstream_tls = True
        else:
            # Our link is TLS already: the client gets the upstream's own answer to STARTTLS.
            reply = self.upstream_tls_reply
            self._step(Stage.STARTTLS, "STARTTLS", reply, None, self.upstream_tls_elapsed)
            await self._pass(reply)
            if reply.code != 220:
                return
        try:
            await self.wire.start_tls(self.recorder.tls_context())
        except (ssl.SSLError, OSError) as error:
            self.end = f"TLS handshake with the client failed: {type(error).__name__}"
            raise SessionEnd from None
        self.helo = None
        self._new_transaction()

    # ------------------------------------------------------------------ AUTH

    def _offered_plain(self, keyword: str) -> bool:
        """Whether the upstream's EHLO without TLS offered ``keyword``."""
        offered = self.plain_ehlo.lines[1:] if self.plain_ehlo is not None else ()
        return any(line.upper().split()[:1] == [keyword] for line in offered)

    async def relay_AUTH(self, line: bytes, arg: str) -> None:
        """Passed through; what the client sends after each 334 goes upstream and nowhere else."""
        assert self.upstream is not None
        shown = self._shown(line)
        if not self.wire.tls and self.upstream.tls and not self._offered_plain("AUTH"):
            # The upstream offers AUTH only over TLS, and our link to it is TLS while the
            # client's is not: relaying would let through what the upstream would refuse.
            # Refused as fakesmtp refuses it (auth.tls_only), and not recorded as the
            # upstream's word; the file says tls_only.
            await self._say(b"503 5.5.1 Error: authentication not enabled\r\n")
            return
        self.wire.stop_timer()
        try:
            await self.upstream.send(line)
            while True:
                started = time.monotonic()
                reply = await self.upstream.reply()
                if reply.code != 334:
                    break
                await self._say(reply.wire)
                self.wire.touch()
                answer = await self.wire.read_line()
                self.wire.stop_timer()
                # Too long for us: "*" cancels the exchange (RFC 4954 4), the upstream says so.
                await self.upstream.send(answer if answer is not None else b"*\r\n")
        except UpstreamGone as gone:
            self._step(Stage.AUTH, shown, None, gone.how, 0.0)
            self._mirror(gone.how)
            raise SessionEnd from None
        finally:
            self.wire.touch()
        self._step(Stage.AUTH, shown, reply, None, time.monotonic() - started)
        await self._pass(reply)

    # ------------------------------------------------------------------ the transaction

    async def relay_MAIL(self, line: bytes, arg: str) -> None:
        address = _address(arg)
        declared = _SIZE_PARAM.search(" " + arg)
        size = int(declared.group(1)) if declared else None
        reply = await self._ask(Stage.MAIL, self._shown(line), line, tried=address, size=size)
        if reply.code < 400:
            self.sender = address
        await self._pass(reply)

    async def relay_RCPT(self, line: bytes, arg: str) -> None:
        address = _address(arg)
        reply = await self._ask(Stage.RCPT, self._shown(line), line, tried=address)
        if reply.code < 400:
            self.recipients.append(address)
        await self._pass(reply)

    async def relay_RSET(self, line: bytes, arg: str) -> None:
        reply = await self._ask(Stage.RSET, self._shown(line), line)
        if reply.code < 400:
            self._new_transaction()
        await self._pass(reply)

    async def relay_QUIT(self, line: bytes, arg: str) -> None:
        await self._say((await self._ask(Stage.QUIT, "QUIT", line)).wire)
        self.end = "quit"
        raise SessionEnd

    async def relay_DATA(self, line: bytes, arg: str) -> None:
        reply = await self._ask(Stage.DATA, self._shown(line), line)
        await self._pass(reply)
        if reply.code // 100 != 3:
            return
        message, too_big = await self.wire.read_message(MAX_RELAYED_MESSAGE)
        if too_big:
            # The upstream is inside DATA: only a close leaves it without a message to deliver.
            self.end = f"message over {MAX_RELAYED_MESSAGE} bytes, not relayed"
            await self._say(b"421 4.3.1 fakesmtp record: message too big to relay, closing\r\n")
            raise SessionEnd
        kept = message[:MAX_KEPT_BODY] if self.recorder.recording.keep_bodies else None
        shown = f"<message, {len(message)} bytes>"
        try:
            reply = await self._ask(
                Stage.END_OF_DATA, shown, _stuffed(message), size=len(message), message=kept
            )
        finally:
            self._new_transaction()
        await self._pass(reply)

    async def relay_BDAT(self, line: bytes, arg: str) -> None:
        """RFC 3030 chunks, passed on as they come. The LAST chunk's reply is the message's
        (``end_of_data``, as fakesmtp decides it); a refused chunk is a ``bdat`` step; the
        250 to each other chunk is not recorded (fakesmtp acknowledges chunks itself)."""
        shown = self._shown(line)
        words = arg.split()
        if not words or not words[0].isdigit():  # no size: the upstream says what is wrong
            await self._pass(await self._ask(Stage.BDAT, shown, line))
            return
        size, last = int(words[0]), len(words) > 1 and words[1].upper() == "LAST"
        chunk = await self.wire.read_exactly(size)
        self.chunks += chunk
        if len(self.chunks) > MAX_RELAYED_MESSAGE:
            self.end = f"message over {MAX_RELAYED_MESSAGE} bytes, not relayed"
            await self._say(b"421 4.3.1 fakesmtp record: message too big to relay, closing\r\n")
            raise SessionEnd
        if last:
            message = bytes(self.chunks)
            kept = message[:MAX_KEPT_BODY] if self.recorder.recording.keep_bodies else None
            try:
                reply = await self._ask(Stage.END_OF_DATA, f"<message, {len(message)} bytes>",
                                        line + chunk, size=len(message), message=kept)  # fmt: skip
            finally:
                self._end_chunks()
        else:
            started = time.monotonic()
            reply = await self._ask(Stage.BDAT, shown, line + chunk, size=size, record=False)
            if reply.code >= 400:  # a refused chunk fails the whole message
                self._step(Stage.BDAT, shown, reply, None, time.monotonic() - started, size=size)
                self._end_chunks()
        await self._pass(reply)

    def _end_chunks(self) -> None:
        self.chunks = bytearray()
        self._new_transaction()


class Recorder:
    """``fakesmtp record``: listen like ``serve``, relay every session to one upstream, record it.

    Run it on a loop (``await recorder.start()`` ... ``await recorder.stop()``) or in a thread
    (``with Recorder("mx.example.test:25", out="mx.yaml") as recorder:``). ``recorder.port`` is
    where clients connect; ``recorder.yaml()`` is the scenario so far, and with ``out`` the file
    is rewritten after each session.
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        out: str | Path | None = None,
        append: bool = False,
        require_tls: bool = False,
        keep_bodies: bool = False,
        cert: str | None = None,
        key: str | None = None,
        delay_threshold: float = DELAY_THRESHOLD,
        timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.address = parse_address(upstream)
        self.upstream = upstream
        self.host = host
        self.port = port
        self.out = Path(out) if out is not None else None
        self.require_tls = require_tls
        self.delay_threshold = delay_threshold
        self.timeout = timeout
        self.cert, self.key = cert, key
        self.recording = Recording(upstream, keep_bodies=keep_bodies)
        self.base: str | None = None  # --append: the file as it was
        if append and self.out is not None and self.out.exists():
            self.base = self.out.read_text(encoding="utf-8")
            append_yaml(self.base, [], upstream, source=str(self.out))  # AppendError early
        self._context: ssl.SSLContext | None = None
        self._server: asyncio.base_events.Server | None = None
        self.sessions: set[RelaySession] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        if self.out is not None:
            self.recording.subscribe(self._save_on_end)

    # ------------------------------------------------------------------ the scenario

    def yaml(self) -> str:
        """The scenario recorded so far (merged into the original file with ``append``)."""
        sessions = self.recording.sessions()
        options = {
            "keep_bodies": self.recording.keep_bodies,
            "delay_threshold": self.delay_threshold,
        }
        if self.base is not None:
            return append_yaml(self.base, sessions, self.upstream, source=str(self.out), **options)
        return scenario_yaml(
            sessions, self.upstream, not_recorded=self.recording.not_recorded, **options
        )

    def save(self) -> None:
        """Write the scenario to ``out`` in one step (a reader never sees half a file)."""
        if self.out is None:
            return
        text = self.yaml()
        directory = self.out.resolve().parent
        fd, temporary = tempfile.mkstemp(prefix=".fakesmtp-record-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, self.out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _save_on_end(self, kind: str, session: RecordedSession) -> None:
        if kind == "ended":
            try:
                self.save()
            except (OSError, AppendError) as error:
                log.error("cannot write %s: %s", self.out, error)

    def tls_context(self) -> ssl.SSLContext:
        """The certificate the relay shows clients that ask for STARTTLS."""
        if self._context is None:
            session = next((s for s in self.recording.sessions() if s.ehlo_greeting), None)
            name = session.ehlo_greeting.split()[0] if session else "fakesmtp.record"
            self._context = server_context(name, self.cert, self.key)
        return self._context

    # ------------------------------------------------------------------ running on a loop

    async def start(self) -> None:
        """Listen (``port`` 0 picks a free one); returns once clients can connect."""
        self._loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: RelaySession(self).wire, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (an upstream's close) on a task of its own, kept until it is done."""
        assert self._loop is not None
        task = self._loop.create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        """Stop listening, end the sessions under way, and write the file one last time."""
        if self._server is not None:
            self._server.close()
            for session in list(self.sessions):
                session.wire.abort()  # its run() is cancelled and records how it ended
            deadline = time.monotonic() + 5
            while self.sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self._closing:
                await asyncio.wait(list(self._closing), timeout=5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        self.save()

    @property
    def running(self) -> bool:
        return self._server is not None

    # ------------------------------------------------------------------ in a thread

    def start_background(self) -> Recorder:
        """Run in a thread of its own; returns once listening."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._stopped = asyncio.Event()
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:
                self._startup_error = error
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_until_complete(self._stopped.wait())
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fakesmtp-record", daemon=True)
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            error, self._startup_error = self._startup_error, None
            raise error
        return self

    def stop_background(self) -> None:
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join()
        self._thread = None

    def wait_for_sessions(self, count: int, timeout: float = 10.0) -> list[RecordedSession]:
        """Block until ``count`` relayed sessions have ended."""
        deadline = time.monotonic() + timeout
        while True:
            ended = [s for s in self.recording.sessions() if s.ended_at is not None]
            if len(ended) >= count:
                return ended
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g}s for {count} sessions, got {len(ended)}")
            time.sleep(0.02)

    def __enter__(self) -> Recorder:
        return self.start_background()

    def __exit__(self, *exc: object) -> None:
        self.stop_background()
