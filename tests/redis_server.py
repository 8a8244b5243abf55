"""A real Redis server (Debian's ``redis-server``) on a free loopback port, for one test module."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

REDIS = shutil.which("redis-server")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisServer:
    """``redis-server`` with no persistence, stopped (and its directory removed) at the end."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        assert REDIS is not None
        self.host = host
        self.port = free_port(host)
        self.directory = tempfile.mkdtemp(prefix="fakesmtp-redis-")
        self.process = subprocess.Popen(
            [REDIS, "--bind", host, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.directory, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self, *words: str) -> bytes:
        """One command in RESP, the whole reply's first line back (enough for PING, DBSIZE)."""
        payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(payload.encode())
            return sock.recv(4096).split(b"\r\n")[0]

    def ping(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
