"""``--state redis://``: several servers count as one, exactly, whichever one a client reaches.

Redis is Debian's ``redis-server``, started here on a free port. The multi-machine case is built
for real: two ``fakesmtp serve`` processes, each in a network namespace of its own with its own
address on a bridge, behind Debian's HAProxy in TCP mode (round robin), so that a client's retry
reaches the other instance. It needs root (``ip netns``) and skips with the reason otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fakesmtp import FakeSMTP

from .redis_server import REDIS, RedisServer, free_port, redis_server  # noqa: F401
from .test_cli import Served

pytest.importorskip("redis", reason="the redis client library is not installed")

SCENARIO = """\
name: shared
rules:
  - name: greylist
    on: rcpt
    match: {to: "*@grey.test"}
    times: 1
    per: triplet
    reply: 451 4.7.1 Greylisted, try again later
  - name: burst
    on: mail
    match: {from: "*@burst.test"}
    after: 17
    reply: 452 4.3.1 Too many messages, slow down
"""
BURST_ALLOWED = 17  # the first 17 MAIL FROM *@burst.test are accepted, across all instances


def rcpt(host: str, port: int, sender: str, recipient: str) -> int:
    """One session up to RCPT; the RCPT reply code."""
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        return client.rcpt(recipient)[0]


def mail(host: str, port: int, sender: str) -> int:
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.ehlo("client.test")
        return client.mail(sender)[0]


def greylisting_is_exact(address: Callable[[int], tuple[str, int]], triplets: int) -> None:
    """Each triplet's first try is deferred and its retry accepted, wherever each one lands.

    ``address(n)`` says where the n-th session goes: alternating servers, or one address.
    """
    session = 0
    for n in range(triplets):
        sender, recipient = f"s{n}@client.test", f"r{n}@grey.test"
        first = rcpt(*address(session), sender, recipient)
        retry = rcpt(*address(session + 1), sender, recipient)
        session += 2
        assert (first, retry) == (451, 250), f"triplet {n}"


def burst_is_exact(address: Callable[[int], tuple[str, int]], clients: int) -> None:
    """50 clients at once: exactly BURST_ALLOWED of their MAIL commands are accepted."""
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda n: mail(*address(n), f"c{n}@burst.test"), range(clients)))
    assert codes.count(250) == BURST_ALLOWED
    assert codes.count(452) == clients - BURST_ALLOWED


# --------------------------------------------------------------------------- two servers, one Redis


@pytest.fixture
def two_servers(redis_server: RedisServer) -> Iterator[list[FakeSMTP]]:  # noqa: F811
    redis_server.command("FLUSHALL")
    servers = [FakeSMTP(SCENARIO, state=redis_server.url).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop(grace=0.2)
        assert not server.errors


def test_two_servers_share_greylisting_and_counts(two_servers: list[FakeSMTP]) -> None:
    def alternate(n: int) -> tuple[str, int]:
        return two_servers[n % 2].address

    greylisting_is_exact(alternate, 40)
    burst_is_exact(alternate, 60)
    # What each server's transcript says is the count they shared.
    notes = [
        e.note
        for server in two_servers
        for s in server.sessions
        for e in s.exchanges
        if e.rule == "greylist"
    ]
    assert notes and all("counted 1 per triplet" in note for note in notes)


def test_a_reset_on_one_server_resets_the_shared_counts(two_servers: list[FakeSMTP]) -> None:
    a, b = two_servers
    assert rcpt(*a.address, "x@client.test", "y@grey.test") == 451
    assert rcpt(*b.address, "x@client.test", "y@grey.test") == 250
    a.reset()
    assert rcpt(*b.address, "x@client.test", "y@grey.test") == 451  # b sees a's reset


def test_an_unreachable_redis_stops_the_start_with_one_line() -> None:
    command = [sys.executable, "-m", "fakesmtp", "serve", "--port", "0", "--no-api"]
    result = subprocess.run(
        [*command, "--state", f"redis://127.0.0.1:{free_port()}/0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("--state redis://127.0.0.1:")
    assert "cannot reach Redis" in result.stderr and "Traceback" not in result.stderr
    bad = subprocess.run([*command, "--state", "mysql://x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "give redis://HOST:PORT/DB" in bad.stderr


# --------------------------------------------------------------------------- --workers 2, one place


@pytest.mark.slow
def test_two_workers_on_one_address_count_as_one(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    redis_server.command("FLUSHALL")
    scenario = tmp_path / "shared.yaml"
    scenario.write_text(SCENARIO)
    served = Served("--port", "0", "--no-api", "--quiet", "--workers", "2", "--state",
                    redis_server.url, "-s", str(scenario))  # fmt: skip
    try:
        assert "2 workers" in served.banner_line and redis_server.url in served.banner_line

        def one(n: int) -> tuple[str, int]:
            return "127.0.0.1", served.port

        greylisting_is_exact(one, 1000)
        burst_is_exact(one, 200)
    finally:
        assert served.stop()[0] == 0


# --------------------------------------------------------------------------- two machines, HAProxy


class Namespaces:
    """A bridge with one address in this namespace and one network namespace per instance."""

    def __init__(self, count: int) -> None:
        self.tag = f"fs{os.getpid() % 10000}{random.randrange(100)}"
        self.subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        self.bridge = f"{self.tag}br"
        self.gateway = f"{self.subnet}.1"
        self.names: list[str] = []
        self.addresses: list[str] = []
        try:
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            self._ip("link", "set", self.bridge, "up")
            for n in range(count):
                name, outside, inside = f"{self.tag}n{n}", f"{self.tag}v{n}", f"{self.tag}p{n}"
                address = f"{self.subnet}.{n + 2}"
                self._ip("netns", "add", name)
                self.names.append(name)
                self._ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                self._ip("link", "set", outside, "master", self.bridge, "up")
                self._ip("link", "set", inside, "netns", name)
                self._ip("-n", name, "addr", "add", f"{address}/24", "dev", inside)
                self._ip("-n", name, "link", "set", inside, "up")
                self._ip("-n", name, "link", "set", "lo", "up")
                self.addresses.append(address)
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _ip(*words: str) -> None:
        subprocess.run(["ip", *words], check=True, capture_output=True, timeout=10)

    def remove(self) -> None:
        for name in self.names:  # the veth pairs go with their namespace
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)


def _why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    for tool in ("ip", "haproxy"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2, haproxy)"
    if REDIS is None:
        return "redis-server is not installed (Debian: redis-server)"
    probe = f"fsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class HAProxy:
    """HAProxy in TCP mode on a loopback port, round robin over the given servers."""

    def __init__(self, servers: list[tuple[str, int]]) -> None:
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="fakesmtp-haproxy-")
        config = Path(self.directory) / "haproxy.cfg"
        backends = "\n".join(f"  server s{n} {h}:{p}" for n, (h, p) in enumerate(servers))
        config.write_text(
            "global\n  maxconn 4096\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
            "  timeout server 60s\n"
            f"frontend smtp\n  bind 127.0.0.1:{self.port}\n  default_backend fakesmtp\n"
            f"backend fakesmtp\n  balance roundrobin\n{backends}\n"
        )
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(3) == b"220":
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("haproxy did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.mark.slow
def test_two_instances_in_their_own_namespaces_behind_haproxy(tmp_path: Path) -> None:
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    scenario = tmp_path / "shared.yaml"
    scenario.write_text(SCENARIO)
    namespaces = Namespaces(2)
    started: list[Served] = []
    redis = proxy = None
    try:
        redis = RedisServer(host=namespaces.gateway)
        for name, address in zip(namespaces.names, namespaces.addresses, strict=True):
            command = ["ip", "netns", "exec", name, sys.executable, "-m", "fakesmtp", "serve"]
            options = ["--host", address, "--port", "0", "--no-api", "--quiet"]
            options += ["--state", redis.url, "-s", str(scenario)]
            started.append(Served(*options, command=command))
        proxy = HAProxy([(a, s.port) for a, s in zip(namespaces.addresses, started, strict=True)])
        # The probe above used one backend's session: restart the alternation from a known point.
        front = ("127.0.0.1", proxy.port)
        burst_is_exact(lambda n: front, 200)  # 50 at once through the proxy, both instances

        # Sequential sessions alternate between the two instances (round robin): every retry
        # reaches the instance that did not defer it.
        greylisting_is_exact(lambda n: front, 1000)
    finally:
        if proxy is not None:
            proxy.stop()
        codes = [served.stop()[0] for served in started]
        if redis is not None:
            redis.stop()
        namespaces.remove()
    assert codes == [0, 0]
