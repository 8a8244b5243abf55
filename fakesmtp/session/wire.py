"""The one seam to the network: bytes in and out of one connection, on asyncio's public API.

Everything the session needs from a connection is here, under our own names: read a command
line, read a message up to the final dot, write and drain, close, reset, hang, start TLS, and
one idle timer with hooks for "timed out" and "gone". Nothing else in the package touches a
transport, a socket option or a timer handle.

Why not aiosmtpd's ``SMTP`` protocol: fakesmtp replaced its command loop and every verb, and
kept only the connection life cycle, reached through seven private names and two asyncio
internals (the reader's buffer for RFC 3207, the writer's transport after a failed handshake).
What it gave us is a buffer, a timer and an EOF rule; asyncio's documented ``Protocol``,
``loop.start_tls()`` and ``loop.call_at()`` give the same in a page, with nothing pinned to a
minor version.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from ..store import Budget

IDLE = "idle timeout"


class Closed(Exception):
    """The client closed its side (EOF) or the connection is gone: no more bytes will come."""


class Wire(asyncio.Protocol):
    """One connection: a read buffer, flow control both ways, and one resettable timer.

    ``run(wire)`` is started as a task when the connection is made and cancelled when it is
    lost (a rule's delay, a drain or a store write all end there). ``on_expired(reason)`` is
    called when the timer runs out (``reason`` is "idle timeout" or what ``expire_in`` named);
    the owner answers and closes. ``on_lost()`` is called once, when the connection is gone.
    """

    def __init__(
        self,
        *,
        idle: float,
        line_limit: int,
        run: Callable[[Wire], Awaitable[None]],
        on_expired: Callable[[str], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.idle = idle
        # Longer lines than this are not kept whole: a command line is refused, a body line
        # is taken in pieces. Reading pauses while twice this much is waiting unread.
        self.line_limit = line_limit
        self._high_water = max(2 * line_limit, 65536)
        self._run = run
        self._on_expired = on_expired
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._deadline = float("inf")
        self._limit = float("inf")  # see limit(): a deadline activity cannot push back
        self._held = 0  # bytes of the body being read, reserved from a Budget
        self.no_room = False  # the last body was dropped: no room left for bodies
        self._limit_reason = IDLE
        self._reason = IDLE
        self._timer: asyncio.TimerHandle | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.tls = False

    # ------------------------------------------------------------------ asyncio's hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport: trust the protocol.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        self.tls = transport.get_extra_info("sslcontext") is not None
        self.touch()
        self._task = self.loop.create_task(self._run(self))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._reading_paused and len(self._buffer) > self._high_water:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        # The client shut its side: what it sent before still gets its replies. Over TLS the
        # transport closes itself whatever we return, and returning True only warns.
        self._eof = True
        self._wake()
        self._wake_closed()
        return not self.tls

    def connection_lost(self, error: Exception | None) -> None:
        self._gone()
        if self._task is not None:
            self._task.cancel()
        self._on_lost()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # ------------------------------------------------------------------ state

    @property
    def open(self) -> bool:
        """The connection is there and not closing: replies can still be written."""
        return self.transport is not None and not self.transport.is_closing()

    @property
    def lost(self) -> bool:
        return self._lost

    def pending_output(self) -> int:
        """Bytes written but not yet taken by the client."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def socket_option(self, level: int, option: int, value: bytes) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)

    # ------------------------------------------------------------------ the timer

    def touch(self) -> None:
        """The client did something: the idle timer starts over (cheap: one float).

        Never past a limit set with ``limit()``: a phase's deadline holds however busy the
        client looks.
        """
        if self._lost:
            return
        self._deadline = self.loop.time() + self.idle
        self._reason = IDLE
        if self._limit < self._deadline:
            self._deadline, self._reason = self._limit, self._limit_reason
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._expired)

    def limit(self, until: float, reason: str) -> None:
        """Time out at ``until`` (loop time) at the latest, saying ``reason``, activity or not;
        a later call may move it (a minimum data rate earns time as bytes arrive)."""
        self._limit, self._limit_reason = until, reason
        if until < self._deadline:
            self.expire_in(until - self.loop.time(), reason)

    def unlimit(self) -> None:
        """The phase is over: back to the idle timer alone."""
        self._limit = float("inf")

    def expire_in(self, seconds: float, reason: str) -> None:
        """Time out within ``seconds`` (if sooner than now planned), saying ``reason``."""
        deadline = self.loop.time() + seconds
        if self._lost or deadline >= self._deadline:
            return
        self._deadline = deadline
        self._reason = reason
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(deadline, self._expired)

    def stop_timer(self) -> None:
        """Our own slowness (a rule's delay) is not the client's idleness."""
        self._deadline = float("inf")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._lost:
            return
        left = self._deadline - self.loop.time()
        if left > 0.001:  # touched since this timer was set: wait for the rest
            self._timer = self.loop.call_at(self._deadline, self._expired)
            return
        self._deadline = float("inf")
        self._on_expired(self._reason)

    # ------------------------------------------------------------------ reading

    async def read_line(self, *, started_within: float | None = None) -> bytes | None:
        """The next line, LF included; None when it was longer than ``line_limit`` (discarded).

        ``started_within``: once part of the line has arrived, the rest must follow within
        that many seconds (a client trickling one command cannot hold a connection for long).
        Raises ``Closed`` when the client leaves first.
        """
        buffer = self._buffer
        shortened = False
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                if end > self.line_limit:
                    self._consume(end + 1)
                    return None
                line = bytes(buffer[: end + 1])
                self._consume(end + 1)
                self.touch()
                return line
            if len(buffer) > self.line_limit:
                await self._discard_line()
                return None
            if buffer and started_within is not None and not shortened:
                shortened = True
                self.expire_in(max(started_within, 0.001), "command timeout")
            await self._more()

    async def _discard_line(self) -> None:
        """Throw away the rest of an over-long line, up to and including its LF."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                self._consume(end + 1)
                self.touch()
                return
            self._consume(len(buffer))
            await self._more()

    async def read_message(
        self,
        limit: int | None,
        pace: tuple[float, float, float] | None = None,
        budget: Budget | None = None,
    ) -> tuple[bytes, bool]:
        """A DATA body up to the lone dot, dot-stuffing undone: (bytes, over ``limit``).

        Past the limit the rest is read and dropped, so the client hears the 552 at the end
        as RFC 5321 4.5.3.1.10 wants. Lines are handled in bulk from the buffer; the task
        waits only when the buffer holds no complete line. ``budget`` bounds the bytes all
        sessions hold mid-DATA together: past it this body is dropped too, and ``no_room``
        says so (the answer is then 452, try later, not 552).
        """
        data = bytearray()
        state = BodyReader(limit)
        self.no_room = False
        try:
            return await self._read_body(data, state, pace, budget)
        finally:
            if budget is not None:
                budget.release(self._held)

    async def _read_body(
        self,
        data: bytearray,
        state: BodyReader,
        pace: tuple[float, float, float] | None,
        budget: Budget | None,
    ) -> tuple[bytes, bool]:
        self._held = 0
        started, received = self.loop.time(), 0
        while True:
            if self._buffer:
                done = state.take(self._buffer, data, self.line_limit)
                self._consume(state.used)
                received += state.used
                if budget is not None and not state.too_big and len(data) > self._held:
                    if budget.reserve(len(data) - self._held):
                        self._held = len(data)
                    else:  # every session's bodies together would pass the memory limit
                        self.no_room = state.too_big = True
                        data.clear()
                if pace is not None:
                    # The whole phase has a deadline; within it, time is earned at the
                    # minimum rate, after an allowance for the first lines.
                    whole, allowance, rate = pace
                    earned = allowance + received / rate if rate else whole
                    self.limit(started + min(whole, earned), "DATA too slow or too long")
                if state.used:
                    self.touch()
                if done:
                    self.unlimit()
                    return bytes(data), state.too_big
            elif pace is not None and received == 0:
                whole, allowance, rate = pace
                self.limit(started + min(whole, allowance if rate else whole), "DATA deadline")
            await self._more()

    async def read_exactly(
        self,
        size: int,
        *,
        keep: bool = True,
        pace: tuple[float, float, float] | None = None,
    ) -> bytes:
        """Exactly ``size`` bytes (a BDAT chunk); raises ``Closed`` if the client leaves first.

        Taken from the buffer as they come, so reading never pauses for a chunk larger than
        the buffer; with ``keep`` False they are read and dropped (a chunk being refused).
        ``pace`` is DATA's (whole phase, allowance, bytes a second), here for one chunk.
        """
        data = bytearray()
        left = size
        started = self.loop.time()
        try:
            while left:
                if pace is not None:
                    whole, allowance, rate = pace
                    earned = allowance + (size - left) / rate if rate else whole
                    self.limit(started + min(whole, earned), "BDAT too slow or too long")
                if not self._buffer:
                    await self._more()
                    continue
                take = min(left, len(self._buffer))
                if keep:
                    data += self._buffer[:take]
                self._consume(take)
                left -= take
                self.touch()  # a client sending a long chunk is not idle
        finally:
            if pace is not None:
                self.unlimit()
        return bytes(data)

    def discard_input(self) -> None:
        """Forget everything received and not yet read (RFC 3207 4.2, after STARTTLS's 220)."""
        self._consume(len(self._buffer))

    def _consume(self, size: int) -> None:
        del self._buffer[:size]
        if self._reading_paused and len(self._buffer) <= self.line_limit:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    async def _more(self) -> None:
        """Wait for more bytes; raises ``Closed`` at EOF or when the connection is gone."""
        if self._eof or self._lost:
            raise Closed
        waiter = self.loop.create_future()
        self._data_waiter = waiter
        try:
            await waiter
        finally:
            self._data_waiter = None
        if not self._buffer and (self._eof or self._lost):
            raise Closed

    def _wake(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ writing and ending

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the client takes what was written (when it is slow to read)."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._writing_paused:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter
        if self._lost:
            raise ConnectionResetError("connection lost")

    def close(self) -> None:
        """Close after what was written has gone out."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping unsent output."""
        if self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        """Close with a TCP RST: SO_LINGER with a zero timeout, then abort."""
        self.socket_option(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    async def hang(self) -> None:
        """Say nothing until the client leaves or the timer ends the connection."""
        if self._eof or self._lost:
            return
        waiter = self.loop.create_future()
        self._closed_waiter = waiter
        await waiter

    def _wake_closed(self) -> None:
        waiter = self._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade the connection (STARTTLS); raises what the handshake raised, closed."""
        self.discard_input()
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client left before the handshake")
        try:
            upgraded = await self.loop.start_tls(transport, self, context, server_side=True)
        except BaseException:
            # asyncio closed the transport; after a failed handshake it never tells us.
            transport.abort()
            self._gone()
            raise
        if upgraded is None:
            self._gone()
            raise ConnectionResetError("the client left during the handshake")
        self.transport = upgraded  # type: ignore[assignment]
        self.tls = True

    def _gone(self) -> None:
        if self._lost:
            return
        self._lost = True
        self.stop_timer()
        self._wake()
        self._wake_closed()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()


class BodyReader:
    """The DATA reader's state across buffer fills: where lines start, how much was kept."""

    __slots__ = ("at_line_start", "limit", "size", "too_big", "used")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.size = 0
        self.too_big = False
        self.at_line_start = True
        self.used = 0

    def keep(self, data: bytearray, piece: Any) -> None:
        self.size += len(piece)
        if self.too_big:
            return
        if self.limit and self.size > self.limit:
            self.too_big = True
            data.clear()  # keep reading to the dot, but keep nothing
            return
        data += piece

    def take(self, buffer: bytearray, data: bytearray, line_limit: int) -> bool:
        """Move the buffer's complete lines into ``data``; True once the final dot was read.

        Between two lines that begin with a dot the bytes are copied as they are; only a
        line's leading dot is looked at (RFC 5321 4.5.2).
        """
        view = memoryview(buffer)
        try:
            complete = buffer.rfind(b"\n") + 1  # [0, complete) holds whole lines
            pos = 0
            while pos < complete:
                if self.at_line_start and buffer[pos] == 0x2E:  # "."
                    if buffer.startswith(b".\r\n", pos) or buffer.startswith(b".\n", pos):
                        self.used = buffer.index(b"\n", pos) + 1
                        return True
                    pos += 1  # the stuffed dot
                    self.at_line_start = False
                dotted = buffer.find(b"\n.", pos, complete)
                end = complete if dotted < 0 else dotted + 1
                self.keep(data, view[pos:end])
                pos = end
                self.at_line_start = True
            if len(buffer) - complete > line_limit:
                # A body line longer than the buffer may hold: take it in pieces (MTAs do).
                if self.at_line_start and buffer[complete] == 0x2E:
                    complete += 1
                self.keep(data, view[complete:])
                self.at_line_start = False
                complete = len(buffer)
            self.used = complete
            return False
        finally:
            view.release()
