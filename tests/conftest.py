"""Shared test helpers: a real server on 127.0.0.1:0 and real clients talking to it."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakesmtp import FakeSMTP


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeSMTP]]:
    """Start a FakeSMTP for this test: ``server = serve("rules: ...", banner=None)``."""
    started: list[FakeSMTP] = []

    def start(scenario: Any = None, **options: Any) -> FakeSMTP:
        server = FakeSMTP(scenario, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0.2)
        assert not server.errors, f"internal errors in the server: {server.errors!r}"


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
