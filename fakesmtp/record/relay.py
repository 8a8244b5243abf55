"""The listening side of ``fakesmtp record``: each client session relayed to the upstream, recorded.

Command by command: a client line goes to the upstream, the upstream's reply (every line of it)
comes back unchanged, and the exchange becomes a step of the recording. The relay offers what
the upstream offers; its own link to the upstream is upgraded with STARTTLS whenever the upstream
offers it, whether or not the client asks for TLS on its side.

Built on asyncio streams rather than the serving session: a relay decides nothing, so the scenario
session's verbs, engine and store have no part in it; what both need from the wire (a line read
with a limit, STARTTLS on the server side, a TCP reset) is a few stream calls here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
from pathlib import Path

from ..stages import VERB_STAGES, Stage
from ..tls import server_context
from .model import RecordedSession, Recording, Step, UpstreamReply
from .upstream import UpstreamError, UpstreamGone, UpstreamLink, parse_address
from .writer import DELAY_THRESHOLD, AppendError, append_yaml, scenario_yaml

log = logging.getLogger("fakesmtp.record")

CLIENT_LINE_LIMIT = 64 * 1024
IDLE_TIMEOUT = 300.0  # RFC 5321 4.5.3.2.7, on both sides
MAX_KEPT_BODY = 256 * 1024  # --keep-bodies: what one message may add to the recording
_MASK = "****"
_ADDRESS = re.compile(r"^\s*(?:FROM|TO):\s*<([^<>]*)>|^\s*(?:FROM|TO):\s*(\S+)", re.IGNORECASE)


class SessionEnd(Exception):
    """The relayed session is over (QUIT, the client or the upstream left)."""


def _address(arg: str) -> str:
    match = _ADDRESS.match(arg)
    if match is None:
        return arg.strip()
    address = match.group(1) if match.group(1) is not None else match.group(2)
    return address.split(":")[-1].strip()  # a source route <@a,@b:x@y> names x@y


class RelaySession:
    """One client connection and its own connection to the upstream."""

    def __init__(
        self,
        recorder: Recorder,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.recorder = recorder
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.record: RecordedSession = recorder.recording.open_session(str(peer[0]))
        self.upstream: UpstreamLink | None = None
        self.client_tls = False
        self.helo: str | None = None
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.plain_ehlo: UpstreamReply | None = None  # what a client without TLS is offered
        self.upstream_tls_reply: UpstreamReply | None = None  # the upstream's 220 to STARTTLS
        self.upstream_tls_elapsed = 0.0
        self.end = "closed"

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> None:
        try:
            await self._converse()
        except SessionEnd:
            pass
        except UpstreamError as error:
            self.end = f"upstream error: {error}"
            await self._say(b"421 4.4.0 fakesmtp record: the upstream misbehaved, closing\r\n")
        except (ConnectionError, OSError, TimeoutError, ssl.SSLError) as error:
            if self.end == "closed":
                self.end = f"client vanished ({type(error).__name__})"
        except Exception as error:  # our bug: the client hears of it, the log keeps it
            log.error("internal error in relayed session %s", self.record.number, exc_info=error)
            self.end = f"internal error: {type(error).__name__}"
            await self._say(b"421 4.3.0 fakesmtp record: internal error, closing\r\n")
        finally:
            if self.upstream is not None:
                await self.upstream.close(polite=self.end.startswith("client vanished"))
            if not self.writer.is_closing():
                self.writer.close()
            self.recorder.recording.close_session(self.record, self.end)

    async def _converse(self) -> None:
        host, port = self.recorder.address
        try:
            self.upstream = await UpstreamLink.open(host, port, self.recorder.timeout)
        except (OSError, TimeoutError) as error:
            self.end = f"upstream unreachable: {error}"
            await self._say(b"421 4.4.1 fakesmtp record: cannot reach the upstream\r\n")
            return
        banner = await self._ask(Stage.CONNECT, None, None)
        await self._say(banner.wire)
        if banner.code >= 400:
            self.end = f"upstream refused the connection ({banner.code})"
            raise SessionEnd
        while True:
            line = await self._client_line()
            verb, _, arg = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape").partition(" ")
            verb = verb.upper()
            handler = getattr(self, f"relay_{verb}", None) if verb.isalpha() else None
            if handler is not None:
                await handler(line, arg)
            else:
                stage = VERB_STAGES.get(verb, Stage.UNKNOWN)
                reply = await self._ask(stage, self._shown(line), line)
                await self._say(reply.wire)

    # ------------------------------------------------------------------ the two sides

    async def _client_line(self) -> bytes:
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.recorder.timeout)
        except asyncio.IncompleteReadError:
            self.end = "client vanished"
            raise SessionEnd from None
        except asyncio.LimitOverrunError:
            self.end = "client sent a line longer than 64 KiB"
            await self._say(b"500 5.5.2 fakesmtp record: line too long, closing\r\n")
            raise SessionEnd from None
        except TimeoutError:
            self.end = "client idle timeout"
            await self._say(b"421 4.4.2 fakesmtp record: idle timeout, closing\r\n")
            raise SessionEnd from None
        return line

    async def _say(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(data)
            await self.writer.drain()

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
        size: int | None = None,
        message: bytes | None = None,
        record: bool = True,
    ) -> UpstreamReply:
        """Send ``line`` (if any), read the reply, record the step; mirror a drop or reset."""
        assert self.upstream is not None
        started = time.monotonic()
        try:
            if line is not None:
                await self.upstream.send(line)
            reply = await self.upstream.reply()
        except UpstreamGone as gone:
            self._step(stage, shown, None, gone.how, time.monotonic() - started, size, message)
            await self._mirror(gone.how)
            raise SessionEnd from None
        if record:
            self._step(stage, shown, reply, None, time.monotonic() - started, size, message)
        return reply

    def _step(
        self,
        stage: Stage,
        shown: str | None,
        reply: UpstreamReply | None,
        ended: str | None,
        elapsed: float,
        size: int | None = None,
        message: bytes | None = None,
        *,
        tried: str | None = None,
    ) -> None:
        step = Step(
            stage=stage,
            command=shown,
            reply=reply,
            ended=ended,
            elapsed=elapsed,
            tls=self.client_tls,
            helo=tried if stage in (Stage.HELO, Stage.EHLO) else self.helo,
            sender=tried if stage is Stage.MAIL else self.sender,
            recipient=tried if stage is Stage.RCPT else None,
            recipients=tuple(self.recipients),
            size=size,
            message=message if self.recorder.recording.keep_bodies else None,
        )
        self.recorder.recording.add(self.record, step)

    async def _mirror(self, how: str) -> None:
        """The upstream dropped or reset the line: the client gets the same."""
        self.end = "upstream reset the connection" if how == "reset" else "upstream closed"
        if how == "reset":
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()

    def _new_transaction(self) -> None:
        self.sender = None
        self.recipients = []

    # ------------------------------------------------------------------ commands with state

    async def _relay_tried(self, stage: Stage, line: bytes, tried: str) -> UpstreamReply:
        """A command whose step records the value being tried (HELO name, sender, recipient)."""
        assert self.upstream is not None
        started = time.monotonic()
        try:
            reply = await self.upstream.command(line)
        except UpstreamGone as gone:
            self._step(stage, self._shown(line), None, gone.how, time.monotonic() - started,
                       tried=tried)  # fmt: skip
            await self._mirror(gone.how)
            raise SessionEnd from None
        elapsed = time.monotonic() - started
        if stage is Stage.EHLO and reply.code < 400:
            reply = await self._after_ehlo(reply, tried)
        self._step(stage, self._shown(line), reply, None, elapsed, tried=tried)
        return reply

    async def relay_HELO(self, line: bytes, arg: str) -> None:
        reply = await self._relay_tried(Stage.HELO, line, arg.strip())
        if reply.code < 400:
            self.helo = arg.strip()
            self._new_transaction()
        await self._say(reply.wire)

    async def relay_EHLO(self, line: bytes, arg: str) -> None:
        reply = await self._relay_tried(Stage.EHLO, line, arg.strip())
        if reply.code < 400:
            self.helo = arg.strip()
            self._new_transaction()
        await self._say(reply.wire)

    async def _after_ehlo(self, reply: UpstreamReply, helo: str) -> UpstreamReply:
        """Note the capabilities; upgrade the upstream link when offered. Returns what the
        client is shown: a client without TLS sees what the upstream offers without TLS."""
        assert self.upstream is not None
        record = self.record
        capabilities = reply.lines[1:]
        if not self.upstream.tls:
            record.ehlo_greeting = record.ehlo_greeting or reply.lines[0]
            if record.capabilities is None:
                record.capabilities = capabilities
            self.plain_ehlo = reply
            offered = any(c.split()[:1] == ["STARTTLS"] for c in map(str.upper, capabilities))
            if offered and self.upstream_tls_reply is None:
                await self._upgrade_upstream(helo)
            elif self.recorder.require_tls and not offered:
                self.end = "the upstream does not offer STARTTLS (--starttls)"
                await self._say(b"421 4.7.0 fakesmtp record: the upstream offers no STARTTLS\r\n")
                raise SessionEnd
            return reply
        if record.tls_capabilities is None:
            record.tls_capabilities = capabilities
        if not self.client_tls and self.plain_ehlo is not None:
            return self.plain_ehlo
        return reply

    async def _upgrade_upstream(self, helo: str) -> None:
        """STARTTLS on the relay's own link, then EHLO again there (RFC 3207 4.2)."""
        assert self.upstream is not None
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
        assert self.upstream is not None
        if self.client_tls or not self.upstream.tls or self.upstream_tls_reply is None:
            # Not upgraded on our side yet: the upstream itself answers (and may agree now).
            reply = await self._ask(Stage.STARTTLS, "STARTTLS", line)
            await self._say(reply.wire)
            if reply.code != 220 or self.client_tls:
                return
            self.upstream_tls_reply = reply
            await self.upstream.starttls(self.recorder.address[0])
            self.record.upstream_tls = True
        else:
            # Our link is already TLS: the client gets the upstream's own answer to STARTTLS.
            reply = self.upstream_tls_reply
            self._step(Stage.STARTTLS, "STARTTLS", reply, None, self.upstream_tls_elapsed)
            await self._say(reply.wire)
            if reply.code != 220:
                return
        await self._client_starttls()

    async def _client_starttls(self) -> None:
        try:
            await asyncio.wait_for(
                self.writer.start_tls(self.recorder.tls_context()), self.recorder.timeout
            )
        except (ssl.SSLError, OSError, TimeoutError) as error:
            self.end = f"TLS handshake with the client failed: {type(error).__name__}"
            raise SessionEnd from None
        self.client_tls = True
        self.helo = None
        self._new_transaction()

    async def relay_AUTH(self, line: bytes, arg: str) -> None:
        """Passed through; what the client sends after each 334 goes upstream and nowhere else."""
        assert self.upstream is not None
        shown = self._shown(line)
        try:
            await self.upstream.send(line)
            while True:
                started = time.monotonic()
                reply = await self.upstream.reply()
                if reply.code != 334:
                    break
                await self._say(reply.wire)
                answer = await self._client_line()
                await self.upstream.send(answer)
        except UpstreamGone as gone:
            self._step(Stage.AUTH, shown, None, gone.how, 0.0)
            await self._mirror(gone.how)
            raise SessionEnd from None
        self._step(Stage.AUTH, shown, reply, None, time.monotonic() - started)
        await self._say(reply.wire)

    async def relay_MAIL(self, line: bytes, arg: str) -> None:
        address = _address(arg)
        reply = await self._relay_tried(Stage.MAIL, line, address)
        if reply.code < 400:
            self.sender = address
        await self._say(reply.wire)

    async def relay_RCPT(self, line: bytes, arg: str) -> None:
        address = _address(arg)
        reply = await self._relay_tried(Stage.RCPT, line, address)
        if reply.code < 400:
            self.recipients.append(address)
        await self._say(reply.wire)

    async def relay_RSET(self, line: bytes, arg: str) -> None:
        reply = await self._ask(Stage.RSET, self._shown(line), line)
        if reply.code < 400:
            self._new_transaction()
        await self._say(reply.wire)

    async def relay_QUIT(self, line: bytes, arg: str) -> None:
        reply = await self._ask(Stage.QUIT, "QUIT", line)
        await self._say(reply.wire)
        self.end = "quit"
        raise SessionEnd

    async def relay_DATA(self, line: bytes, arg: str) -> None:
        reply = await self._ask(Stage.DATA, self._shown(line), line)
        await self._say(reply.wire)
        if reply.code // 100 != 3:
            return
        size, kept = await self._relay_message()
        shown = f"<message, {size} bytes>"
        try:
            reply = await self._ask(Stage.END_OF_DATA, shown, None, size=size, message=kept)
        finally:
            self._new_transaction()
        await self._say(reply.wire)

    async def _relay_message(self) -> tuple[int, bytes | None]:
        """The client's message, passed as it comes (dot-stuffed) up to the lone dot."""
        assert self.upstream is not None
        size = 0
        keep = self.recorder.recording.keep_bodies
        kept = bytearray()
        pending = bytearray()
        at_line_start = True
        while True:
            try:
                chunk = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.recorder.timeout)
            except asyncio.LimitOverrunError as overrun:
                chunk = await self.reader.readexactly(overrun.consumed)
            except asyncio.IncompleteReadError:
                self.end = "client vanished during DATA"
                raise SessionEnd from None
            pending += chunk
            last = at_line_start and chunk in (b".\r\n", b".\n")
            if not last:
                body = chunk[1:] if at_line_start and chunk[:1] == b"." else chunk
                size += len(body)
                if keep and len(kept) < MAX_KEPT_BODY:
                    kept += body[: MAX_KEPT_BODY - len(kept)]
            at_line_start = chunk.endswith(b"\n")
            if last or len(pending) >= 64 * 1024:
                try:
                    await self.upstream.send(bytes(pending))
                except UpstreamGone as gone:
                    if not last:  # keep reading to the dot, then record what happened
                        await self._drain_message(at_line_start)
                    self._step(Stage.END_OF_DATA, f"<message, {size} bytes>", None, gone.how, 0)
                    await self._mirror(gone.how)
                    raise SessionEnd from None
                pending.clear()
            if last:
                return size, bytes(kept) if keep else None

    async def _drain_message(self, at_line_start: bool) -> None:
        while True:
            try:
                chunk = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as overrun:
                chunk = await self.reader.readexactly(overrun.consumed)
            except asyncio.IncompleteReadError:
                return
            if at_line_start and chunk in (b".\r\n", b".\n"):
                return
            at_line_start = chunk.endswith(b"\n")

    async def relay_BDAT(self, line: bytes, arg: str) -> None:
        """RFC 3030 chunks: the size's bytes follow the command; passed on, not made rules."""
        assert self.upstream is not None
        words = arg.split()
        if not words or not words[0].isdigit():
            reply = await self._ask(Stage.UNKNOWN, self._shown(line), line, record=False)
            await self._say(reply.wire)
            return
        chunk = await self.reader.readexactly(int(words[0]))
        reply = await self._ask(Stage.UNKNOWN, self._shown(line), line + chunk, record=False)
        await self._say(reply.wire)


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
        self._sessions: set[asyncio.Task[None]] = set()
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
        return scenario_yaml(sessions, self.upstream, **options)

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
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=CLIENT_LINE_LIMIT, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await RelaySession(self, reader, writer).run()
        finally:
            self._sessions.discard(task)

    async def stop(self) -> None:
        """Stop listening, end the sessions under way, and write the file one last time."""
        if self._server is not None:
            self._server.close()
            for task in list(self._sessions):
                task.cancel()
            if self._sessions:
                await asyncio.wait(list(self._sessions), timeout=5)
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
