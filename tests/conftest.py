"""Shared test helpers: a real server on 127.0.0.1:0 and real clients talking to it."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from fakesmtp import FakeSMTP


@contextmanager
def served(
    scenario: Any = None, *, errors_expected: bool = False, **options: Any
) -> Iterator[FakeSMTP]:
    """The one way tests start a server: ``with served("rules: ...") as server:``.

    On the way out it stops the server and fails the test if the server met an internal error
    (our bug), unless the test provokes one on purpose (``errors_expected=True``).
    """
    server = FakeSMTP(scenario, **options).start()
    try:
        yield server
    finally:
        server.stop(grace=0.2)
    if not errors_expected:
        assert not server.errors, f"internal errors in the server: {server.errors!r}"


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeSMTP]]:
    """``served()`` as a fixture: ``server = serve("rules: ...", banner=None)``, stopped after."""
    with ExitStack() as stack:
        yield lambda scenario=None, **options: stack.enter_context(served(scenario, **options))


def connect(server: FakeSMTP, timeout: float = 5.0) -> smtplib.SMTP:
    """An smtplib client, connected (banner read)."""
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


class RawClient:
    """A byte-level client for what smtplib cannot do: pipelining, bad lines, vanishing."""

    def __init__(self, server: FakeSMTP | str, port: int = 0, timeout: float = 5.0) -> None:
        """Connect to a FakeSMTP, or to ``host, port`` (another listener of it)."""
        address = (server, port) if isinstance(server, str) else (server.host, server.port)
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self) -> list[str]:
        """One whole reply (all its lines), without CRLF."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by server; pending {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def closed(self, timeout: float = 3.0) -> bool:
        """True when the server closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client() -> Iterator[Callable[[FakeSMTP], RawClient]]:
    clients: list[RawClient] = []

    def make(server: FakeSMTP) -> RawClient:
        client = RawClient(server)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
