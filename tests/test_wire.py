"""The network seam (session/wire.py), pinned on a real loopback socket and as a pure reader.

These are the asyncio behaviours the session relies on; if a Python upgrade moves any of them
(EOF handling, flow control, the timer), this file fails before the SMTP tests do.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakesmtp.session.wire import BodyReader, Closed, Wire

Script = Callable[[Wire], Awaitable[object]]
T = TypeVar("T")
_LOOP: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]


def _run(coroutine: Awaitable[T]) -> T:
    with asyncio.Runner(loop_factory=_LOOP[0]) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]


@pytest.fixture(params=["asyncio", "uvloop"])
def each_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """The wire must behave the same on asyncio's loop and on uvloop (serve's default)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed ('fast' extra)")
        _LOOP[0] = uvloop.new_event_loop
    yield
    _LOOP[0] = asyncio.new_event_loop


async def _exchange(
    script: Script, sent: list[bytes], *, idle: float = 5.0, line_limit: int = 100,
    half_close: bool = False,
) -> tuple[object, list[str], bytes]:  # fmt: skip
    """Run ``script`` on the server side of one connection while a client sends ``sent``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()
    timeouts: list[str] = []

    async def run(wire: Wire) -> None:
        try:
            done.set_result(await script(wire))
        except asyncio.CancelledError:  # the connection went away under the script
            done.set_result("cancelled")
            raise
        except Exception as error:
            done.set_result(error)
        finally:
            wire.close()

    def on_expired(reason: str) -> None:
        timeouts.append(reason)
        wire_box[0].close()

    wire_box: list[Wire] = []

    def make() -> Wire:
        wire = Wire(idle=idle, line_limit=line_limit, run=run, on_expired=on_expired,
                    on_lost=lambda: None)  # fmt: skip
        wire_box.append(wire)
        return wire

    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in sent:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)
    if half_close:
        writer.write_eof()
    received = await asyncio.wait_for(reader.read(), 5)
    result = await asyncio.wait_for(done, 5)
    writer.close()
    server.close()
    return result, timeouts, received


def exchange(
    script: Script, sent: list[bytes], **options: object
) -> tuple[object, list[str], bytes]:
    return _run(_exchange(script, sent, **options))  # type: ignore[arg-type]


async def _lines(wire: Wire, count: int) -> list[bytes | None]:
    return [await wire.read_line() for _ in range(count)]


@pytest.mark.usefixtures("each_loop")
def test_pipelined_lines_come_one_at_a_time() -> None:
    result, _, _ = exchange(
        lambda w: _lines(w, 3), [b"EHLO a\r\nMAIL FROM:<x>\r\n", b"RCPT TO:<y>\r\n"]
    )
    assert result == [b"EHLO a\r\n", b"MAIL FROM:<x>\r\n", b"RCPT TO:<y>\r\n"]


@pytest.mark.usefixtures("each_loop")
def test_an_over_long_line_is_discarded_and_the_next_one_read() -> None:
    result, _, _ = exchange(lambda w: _lines(w, 2), [b"X" * 150, b"Y" * 150 + b"\r\nNOOP\r\n"])
    assert result == [None, b"NOOP\r\n"]


@pytest.mark.usefixtures("each_loop")
def test_what_came_before_eof_is_still_read_then_closed() -> None:
    async def script(wire: Wire) -> object:
        lines = await _lines(wire, 2)
        try:
            await wire.read_line()
        except Closed:
            return lines, "closed"
        return lines, "not closed"

    result, _, _ = exchange(script, [b"NOOP\r\nQUIT\r\n"], half_close=True)
    assert result == ([b"NOOP\r\n", b"QUIT\r\n"], "closed")


@pytest.mark.usefixtures("each_loop")
def test_replies_still_reach_a_client_that_shut_its_side() -> None:
    async def script(wire: Wire) -> object:
        line = await wire.read_line()
        wire.write(b"221 Bye\r\n")
        await wire.drain()
        return line

    result, _, received = exchange(script, [b"QUIT\r\n"], half_close=True)
    assert (result, received) == (b"QUIT\r\n", b"221 Bye\r\n")


@pytest.mark.usefixtures("each_loop")
def test_a_trickled_line_times_out_as_a_command_timeout() -> None:
    result, timeouts, _ = exchange(lambda w: w.read_line(started_within=0.2), [b"NOO"], idle=10)
    assert (result, timeouts) == ("cancelled", ["command timeout"])


@pytest.mark.usefixtures("each_loop")
def test_silence_times_out_as_an_idle_timeout_and_stop_timer_holds_it() -> None:
    async def script(wire: Wire) -> object:
        wire.stop_timer()  # a rule's delay: our slowness is not the client's idleness
        await asyncio.sleep(0.2)
        wire.touch()
        return await wire.read_line()

    result, timeouts, _ = exchange(script, [], idle=0.1)
    assert (result, timeouts) == ("cancelled", ["idle timeout"])


@pytest.mark.usefixtures("each_loop")
def test_hang_ends_when_the_client_leaves() -> None:
    result, timeouts, _ = exchange(lambda w: w.hang(), [b"x"], idle=10, half_close=True)
    assert (result, timeouts) == (None, [])


@pytest.mark.usefixtures("each_loop")
def test_reset_sends_a_tcp_rst() -> None:
    async def main() -> type[BaseException] | None:
        loop = asyncio.get_running_loop()

        async def run(wire: Wire) -> None:
            await wire.read_line()
            wire.reset()

        server = await loop.create_server(
            lambda: Wire(idle=5, line_limit=100, run=run, on_expired=print, on_lost=lambda: None),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"NOOP\r\n")
        sock.settimeout(5)
        try:
            await loop.run_in_executor(None, sock.recv, 10)
            outcome = None
        except ConnectionResetError as error:
            outcome = type(error)
        sock.close()
        server.close()
        return outcome

    assert _run(main()) is ConnectionResetError


@pytest.mark.usefixtures("each_loop")
def test_a_message_is_read_to_the_lone_dot_unstuffed() -> None:
    body = [b"Subject: x\r\n\r\n..leading dot\r\n", b".", b"\r\n", b"NOOP\r\n"]

    async def script(wire: Wire) -> object:
        return await wire.read_message(None), await wire.read_line()

    result, _, _ = exchange(script, body)
    assert result == ((b"Subject: x\r\n\r\n.leading dot\r\n", False), b"NOOP\r\n")


@pytest.mark.usefixtures("each_loop")
def test_a_message_past_the_limit_is_read_to_the_dot_and_dropped() -> None:
    async def script(wire: Wire) -> object:
        return await wire.read_message(20)

    result, _, _ = exchange(script, [b"a" * 30 + b"\r\n.\r\n"])
    assert result == (b"", True)


def _reference_body(stream: bytes) -> tuple[bytes, int]:
    """The RFC 5321 4.5.2 reading, one line at a time: (body, bytes used through the dot)."""
    out, used = bytearray(), 0
    for line in stream.splitlines(keepends=True):
        used += len(line)
        if line in (b".\r\n", b".\n"):
            return bytes(out), used
        out += line[1:] if line.startswith(b".") else line
    raise AssertionError("no final dot")


@given(
    lines=st.lists(
        st.sampled_from([b"text\r\n", b".dot\r\n", b"..\r\n", b"\r\n", b"bare lf\n", b"."]),
        max_size=12,
    ).map(lambda parts: b"".join(parts)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_the_body_reader_agrees_with_a_line_by_line_reading(lines: bytes, cuts: list[int]) -> None:
    # Any chunking of the stream gives the same body as the textbook line-by-line reading.
    stream = lines + (b"\r\n" if lines and not lines.endswith(b"\n") else b"") + b".\r\nNEXT\r\n"
    expected = _reference_body(stream)
    reader, data, buffer = BodyReader(None), bytearray(), bytearray()
    consumed = 0
    for end in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
        buffer += stream[consumed + len(buffer) : end]
        done = reader.take(buffer, data, line_limit=1000)
        consumed += reader.used
        del buffer[: reader.used]
        if done:
            break
    assert (bytes(data), consumed) == expected


@pytest.mark.parametrize("limit", [1, 10, 1000])
def test_a_long_body_line_is_taken_in_pieces(limit: int) -> None:
    reader, data = BodyReader(None), bytearray()
    buffer = bytearray(b"." + b"x" * 50)
    assert not reader.take(buffer, data, line_limit=limit) or limit >= 50
    if limit < 50:
        assert data == b"x" * 50  # the stuffed dot went, the rest kept
