"""The client side of the relay: one connection to the upstream the user named, on asyncio streams.

Reads whole replies (every line of a multi-line one), keeps their bytes to pass on unchanged,
upgrades the link with STARTTLS, and tells a close (``drop``) from a TCP reset (``reset``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from ..reply import ReplyError, check_status
from .model import UpstreamReply

DEFAULT_PORT = 25
MAX_REPLY_LINES = 200  # a server sending more is broken or hostile: stop reading
LINE_LIMIT = 64 * 1024


class UpstreamGone(Exception):
    """The upstream ended the connection instead of replying: ``how`` is "drop" or "reset"."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class UpstreamError(Exception):
    """The upstream said something that is not an SMTP reply, or never answered."""


def parse_address(spec: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[v6]:PORT`` -> (host, port); ValueError with a reason."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{spec!r} is not HOST[:PORT]")
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
    else:
        host, port_text = spec, ""
    if not host:
        raise ValueError(f"{spec!r} names no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a port number (1 to 65535)")
    return host, int(port_text)


def parse_reply(raw_lines: list[bytes]) -> UpstreamReply:
    """The lines of one reply (CRLF kept) -> code, enhanced status, text lines, and the bytes.

    The status is the first word of each line when it is an RFC 3463 code of the reply's class
    and every line carries the same one (how servers write it); otherwise it stays in the text.
    """
    texts: list[str] = []
    code = 0
    for raw in raw_lines:
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
            raise UpstreamError(f"not an SMTP reply line: {line[:80]!r}")
        code = code or int(line[:3])
        texts.append(line[4:])
    statuses = set()
    for text in texts:
        first = text.split(" ", 1)[0]
        try:
            statuses.add(check_status(first, code))
        except ReplyError:
            statuses.add(None)
    status = statuses.pop() if len(statuses) == 1 else None
    if status is not None:
        texts = [text[len(status) + 1 :] for text in texts]
    if not 200 <= code <= 599:
        raise UpstreamError(f"reply code {code} is not between 200 and 599")
    return UpstreamReply(code=code, status=status, lines=tuple(texts), wire=b"".join(raw_lines))


class UpstreamLink:
    """One connection to the upstream server."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.tls = False

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> UpstreamLink:
        """Connect (OSError or TimeoutError when the upstream cannot be reached)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=LINE_LIMIT), timeout
        )
        return cls(reader, writer, timeout)

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionResetError:
            raise UpstreamGone("reset") from None
        except (BrokenPipeError, ConnectionError):
            raise UpstreamGone("drop") from None

    async def reply(self) -> UpstreamReply:
        """Read one whole reply; UpstreamGone when the upstream closes or resets instead."""
        lines: list[bytes] = []
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.timeout)
            except asyncio.IncompleteReadError as partial:
                if partial.partial and lines:
                    raise UpstreamError("the upstream closed in the middle of a reply") from None
                raise UpstreamGone("drop") from None
            except ConnectionResetError:
                raise UpstreamGone("reset") from None
            except asyncio.LimitOverrunError:
                raise UpstreamError("a reply line longer than 64 KiB") from None
            except TimeoutError:
                raise UpstreamError(f"no reply within {self.timeout:g}s") from None
            lines.append(raw)
            if len(raw) < 4 or raw[3:4] != b"-":
                return parse_reply(lines)
            if len(lines) >= MAX_REPLY_LINES:
                raise UpstreamError(f"a reply of more than {MAX_REPLY_LINES} lines")

    async def command(self, line: bytes) -> UpstreamReply:
        await self.send(line)
        return await self.reply()

    async def starttls(self, server_hostname: str) -> None:
        """Upgrade after a 220 to STARTTLS. Certificates are not verified: like an MTA's
        opportunistic TLS, this protects the link from eavesdroppers, not from impostors."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await asyncio.wait_for(
            self.writer.start_tls(context, server_hostname=server_hostname), self.timeout
        )
        self.tls = True

    async def close(self, polite: bool = False) -> None:
        """Close; ``polite`` says QUIT first (the client left without it)."""
        if polite and not self.writer.is_closing():
            with contextlib.suppress(UpstreamGone, UpstreamError, OSError, TimeoutError):
                await asyncio.wait_for(self.command(b"QUIT\r\n"), 2.0)
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
