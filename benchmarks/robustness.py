"""Robustness figures for fakesmtp, side by side with a raw aiosmtpd sink measured in the same run.

    python benchmarks/robustness.py            # about a minute; everything on 127.0.0.1

What it measures, for each server (a fresh server process per measurement):

- banners: 1,000 clients connect at once; how many get a 220 within 10 s, and when the last did.
  fakesmtp listens with a backlog of 1024. The raw sink is started the way aiosmtpd users
  usually start it, ``loop.create_server`` with asyncio's default backlog (100); the kernel
  caps both at net.core.somaxconn, printed with the table.
- memory per idle connection: growth of the server's RSS (VmRSS in /proc/PID/status) with those
  1,000 connections open and greeted, divided by 1,000.
- latency of a well-behaved client (connect, EHLO, MAIL, RCPT, 1 KiB message, QUIT), alone and
  while 100 slow clients trickle bytes (one byte every 50 ms each, in a separate process);
  median and 95th percentile of the quietest of 3 rounds of 100 transactions.
- a 50 MB message: peak RSS growth (VmHWM) per MB received, RSS kept afterwards per MB, and the
  time from the first byte to the 250. fakesmtp keeps the message (its in-memory store); the
  sink drops it, as a sink does.

``--long-running`` measures something else, a server left running (issue #11): 20,000
messages of 100 KiB (four clients, 50 messages a session) then 10,000 chatty sessions (EHLO,
30 NOOPs of 900 bytes, QUIT; 20 at a time), against ``fakesmtp serve --max-memory 128MiB``
(and with ``--store``: ``--store-keep 256MiB``). It samples RSS every 0.2 s and prints the
peak, the RSS once the load stops, and after ``DELETE /api/v1/messages`` and
``POST /api/v1/reset?store=true`` (memory given back), the store's own figures from
``/api/v1/health``, and the raw aiosmtpd sink's peak for the same load (it keeps nothing: the
floor). ``--messages N --sessions N`` shorten it.

fakesmtp runs as ``python -m fakesmtp serve --quiet --no-api --port P`` with a scenario that only
raises size_limit to 64 MiB (the default, 32 MiB, would refuse the 50 MB message); the sink gets
the same limit. Figures drift from run to run on shared machines: compare the two columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
CONNECTIONS = 1000
BANNER_WINDOW = 10.0  # seconds a client of the burst waits for its banner
SLOW_CLIENTS = 100
TRICKLE_INTERVAL = 0.05  # seconds between two bytes of one slow client
TRANSACTIONS = 300  # well-behaved transactions per latency figure
MESSAGE_MB = 50

SINK = """
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

async def main(port):
    loop = asyncio.get_running_loop()
    # As aiosmtpd users usually start it: asyncio's default backlog (100).
    await loop.create_server(
        lambda: SMTP(Sink(), hostname="sink.test", data_size_limit=64 * 2**20), "127.0.0.1", port
    )
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


# ------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    """A server process: started, waited for, measured through /proc, then stopped."""

    def __init__(self, kind: str, scenario: Path) -> None:
        self.kind = kind
        self.port = free_port()
        if kind == "fakesmtp":
            command = [sys.executable, "-m", "fakesmtp", "serve", "--quiet", "--no-api"]
            command += ["--port", str(self.port), "--scenario", str(scenario)]
        else:
            command = [sys.executable, "-c", SINK, str(self.port)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()  # fakesmtp's "SMTP on ..." line, or the sink's "ready"
        deadline = time.monotonic() + 10
        while True:  # and make sure it accepts
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start")
            time.sleep(0.05)
        time.sleep(0.2)  # let that probe session end

    def status(self, field: str) -> int:
        """A /proc/PID/status figure (VmRSS, VmHWM) in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def running(kind: str, scenario: Path) -> Iterator[Server]:
    server = Server(kind, scenario)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------- measurements


def burst(server: Server) -> dict[str, float]:
    """1,000 connections at once: banners within the window, time of the last, RSS per conn."""
    rss_before = server.status("VmRSS")

    async def one(started: float) -> tuple[float | None, asyncio.StreamWriter | None]:
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
        except OSError:
            return None, None
        try:
            line = await asyncio.wait_for(reader.readline(), BANNER_WINDOW)
        except (TimeoutError, OSError):
            return None, writer
        return (time.monotonic() - started if line.startswith(b"220") else None), writer

    async def run() -> dict[str, float]:
        started = time.monotonic()
        tasks = [asyncio.create_task(one(started)) for _ in range(CONNECTIONS)]
        done = await asyncio.wait_for(asyncio.gather(*tasks), BANNER_WINDOW + 30)
        times = [t for t, _ in done if t is not None]
        await asyncio.sleep(0.3)  # idle, greeted connections
        rss_open = server.status("VmRSS")
        for _, writer in done:
            if writer is not None:
                writer.close()
        return {
            "banners": len(times),
            "last_banner_s": max(times) if times else float("nan"),
            "kib_per_conn": (rss_open - rss_before) / CONNECTIONS,
        }

    return asyncio.run(run())


MESSAGE_1K = "Subject: x\r\n\r\n" + ("x" * 100 + "\r\n") * 10


def transaction(port: int) -> float:
    started = time.perf_counter()
    with smtplib.SMTP(HOST, port, timeout=30) as smtp:
        smtp.sendmail("good@client.test", ["bob@mx.test"], MESSAGE_1K)
    return time.perf_counter() - started


def latencies(port: int) -> tuple[float, float]:
    """Median and 95th percentile, in ms, of sequential transactions: the best of 3 rounds.

    Other work on a shared machine only ever adds latency, so the quietest round is the one
    that says most about the server.
    """
    rounds = []
    for _ in range(3):
        samples = sorted(transaction(port) * 1000 for _ in range(TRANSACTIONS // 3))
        rounds.append((statistics.median(samples), samples[int(len(samples) * 0.95) - 1]))
    return min(rounds)


def with_slow_clients(port: int) -> tuple[float, float]:
    trickle = subprocess.Popen(
        [sys.executable, __file__, "--trickle", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert trickle.stdout is not None
    trickle.stdout.readline()  # "trickling": every slow client is connected
    try:
        return latencies(port)
    finally:
        trickle.terminate()
        trickle.wait(10)


async def _trickle(port: int) -> None:
    """The slow clients: each sends NOOP lines one byte every TRICKLE_INTERVAL, reads nothing."""
    connections = await asyncio.gather(
        *(asyncio.open_connection(HOST, port) for _ in range(SLOW_CLIENTS))
    )

    async def slow(writer: asyncio.StreamWriter, offset: float) -> None:
        await asyncio.sleep(offset)
        data = b"NOOP\r\n" * 1000
        for byte in data:
            writer.write(bytes([byte]))
            await asyncio.sleep(TRICKLE_INTERVAL)

    print("trickling", flush=True)
    await asyncio.gather(
        *(
            slow(writer, TRICKLE_INTERVAL * n / SLOW_CLIENTS)
            for n, (_, writer) in enumerate(connections)
        )
    )


def big_message(server: Server) -> dict[str, float]:
    """Send one MESSAGE_MB message; peak and kept RSS growth per MB, and the time it took."""
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (MESSAGE_MB * 1_000_000 // len(line)) + b".\r\n"
    rss_before = server.status("VmRSS")
    hwm_before = server.status("VmHWM")
    with socket.create_connection((HOST, server.port), timeout=120) as sock:
        reader = sock.makefile("rb")

        def command(text: bytes) -> bytes:
            sock.sendall(text)
            while True:
                reply = reader.readline()
                if reply[3:4] != b"-":
                    return reply

        reader.readline()
        command(b"EHLO client.test\r\n")
        command(b"MAIL FROM:<a@client.test>\r\n")
        command(b"RCPT TO:<b@mx.test>\r\n")
        assert command(b"DATA\r\n").startswith(b"354")
        started = time.monotonic()
        reply = command(body)
        elapsed = time.monotonic() - started
        assert reply.startswith(b"250"), reply
        command(b"QUIT\r\n")
    megabytes = len(body) / 1_000_000
    peak = max(server.status("VmHWM"), hwm_before) - rss_before
    time.sleep(0.3)
    kept = server.status("VmRSS") - rss_before
    return {
        "peak_mb_per_mb": peak / 1024 / megabytes,
        "kept_mb_per_mb": kept / 1024 / megabytes,
        "seconds": elapsed,
    }


# ------------------------------------------------------------------------- report


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # children inherit it
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def measure(kind: str, scenario: Path) -> dict[str, object]:
    figures: dict[str, object] = {}
    with running(kind, scenario) as server:
        figures.update(burst(server))
    with running(kind, scenario) as server:
        figures["alone"] = latencies(server.port)
        figures["slow"] = with_slow_clients(server.port)
    with running(kind, scenario) as server:
        figures.update(big_message(server))
    return figures


# ------------------------------------------------------------------------- long-running

LONG_MEMORY_MIB = 128
LONG_STORE_KEEP = "256MiB"


class Sampler:
    """RSS of a process every 0.2 s, in a thread: the peak and the last value, in MiB."""

    def __init__(self, pid: int) -> None:
        import threading

        self.path = Path(f"/proc/{pid}/status")
        self.peak = 0.0
        self.last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> float:
        for line in self.path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError):
                self.last = self.rss()
                self.peak = max(self.peak, self.last)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _send_messages(port: int, count: int, clients: int = 4, per_session: int = 50) -> float:
    import threading

    body = b"Subject: long run\r\n\r\n" + (b"y" * 998 + b"\r\n") * 102  # 100 KiB
    started = time.monotonic()

    def client(share: int) -> None:
        sent = 0
        while sent < share:
            with smtplib.SMTP(HOST, port, timeout=60) as smtp:
                for _ in range(min(per_session, share - sent)):
                    smtp.sendmail("a@client.test", ["b@mx.test"], body)
                    sent += 1

    threads = [threading.Thread(target=client, args=(count // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


async def _chatty(port: int, sessions: int, parallel: int = 20, noops: int = 30) -> None:
    noop = b"NOOP " + b"z" * 900 + b"\r\n"  # under the 1000-octet line limit
    queue = iter(range(sessions))

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    async def worker() -> None:
        for _ in queue:
            reader, writer = await asyncio.open_connection(HOST, port)
            await reply(reader)
            for line in [b"EHLO chatty.test\r\n", *([noop] * noops), b"QUIT\r\n"]:
                writer.write(line)
                await reply(reader)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(parallel)))


def _api(port: int, method: str, path: str) -> dict[str, object]:
    import json
    import urllib.request

    request = urllib.request.Request(f"http://{HOST}:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def long_running(kind: str, messages: int, sessions: int, store: Path | None) -> dict[str, object]:
    port, api_port = free_port(), free_port()
    if kind == "fakesmtp":
        command = [sys.executable, "-m", "fakesmtp", "serve", "--quiet", "--port", str(port),
                   "--api-port", str(api_port),
                   "--max-memory", f"{LONG_MEMORY_MIB}MiB"]  # fmt: skip
        if store is not None:
            command += ["--store", str(store), "--store-keep", LONG_STORE_KEEP]
    else:
        command = [sys.executable, "-c", SINK, str(port)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        time.sleep(0.3)
        sampler = Sampler(process.pid)
        start_rss = sampler.rss()
        message_s = _send_messages(port, messages)
        started = time.monotonic()
        asyncio.run(_chatty(port, sessions))
        session_s = time.monotonic() - started
        time.sleep(1.0)
        figures: dict[str, object] = {
            "start": start_rss,
            "peak": sampler.peak,
            "loaded": sampler.rss(),
            "message_s": message_s,
            "session_s": session_s,
        }
        if kind == "fakesmtp":
            figures["health"] = _api(api_port, "GET", "/api/v1/health")["store"]
            if store is not None:
                figures["disk_mib"] = _size_of(store) / 2**20
            _api(api_port, "DELETE", "/api/v1/messages")
            _api(api_port, "POST", "/api/v1/reset?store=true")
            time.sleep(1.0)
            figures["after_reset"] = sampler.rss()
        sampler.stop()
        return figures
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def report_long_running(messages: int, sessions: int) -> None:
    started = time.monotonic()
    runs: dict[str, dict[str, object]] = {}
    runs["fakesmtp (memory)"] = long_running("fakesmtp", messages, sessions, None)
    with tempfile.TemporaryDirectory() as directory:
        store = Path(directory) / "store"
        runs["fakesmtp --store"] = long_running("fakesmtp", messages, sessions, store)
    runs["raw aiosmtpd sink"] = long_running("aiosmtpd", messages, sessions, None)
    print(
        f"long-running: {messages} messages of 100 KiB, then {sessions} chatty sessions; "
        f"fakesmtp --max-memory {LONG_MEMORY_MIB}MiB (RSS must stay under "
        f"{LONG_MEMORY_MIB + 64} MiB), --store-keep {LONG_STORE_KEEP}"
    )
    for name, f in runs.items():
        line = (
            f"{name:<20} RSS MiB: start {f['start']:.0f}, peak {f['peak']:.0f}, "
            f"after the load {f['loaded']:.0f}"
        )
        if "after_reset" in f:
            line += f", after DELETE+reset {f['after_reset']:.0f}"
        line += f"; {f['message_s']:.0f} s for the messages, {f['session_s']:.0f} s for sessions"
        print(line)
        if "health" in f:
            h = f["health"]
            assert isinstance(h, dict)
            disk = f", on disk {f['disk_mib']:.0f} MiB" if "disk_mib" in f else ""
            print(
                f"{'':<20} kept {h['messages']} messages, {h['sessions']} sessions, "
                f"{h['bytes'] / 2**20:.0f} MiB counted; dropped {h['dropped_messages']} "
                f"messages, {h['dropped_sessions']} sessions{disk}"
            )
    print(f"took {time.monotonic() - started:.0f} s, {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trickle", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--long-running", action="store_true", help="the long-running part")
    parser.add_argument("--messages", type=int, default=20_000, help="with --long-running")
    parser.add_argument("--sessions", type=int, default=10_000, help="with --long-running")
    args = parser.parse_args()
    if args.trickle:
        asyncio.run(_trickle(args.trickle))
        return
    if args.long_running:
        report_long_running(args.messages, args.sessions)
        return
    fds = raise_fd_limit(4 * CONNECTIONS)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        scenario = Path(directory) / "bench.yaml"
        scenario.write_text("name: bench\nserver: {size_limit: 64MiB}\n")
        results = {kind: measure(kind, scenario) for kind in ("fakesmtp", "aiosmtpd")}
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()

    f, a = results["fakesmtp"], results["aiosmtpd"]

    def ms(pair: object) -> str:
        median, p95 = pair  # type: ignore[misc]
        return f"{median:.1f} / {p95:.1f}"

    rows = [
        ("listen backlog", "1024", "100 (asyncio default)"),
        (
            f"banners, {CONNECTIONS} simultaneous connections ({BANNER_WINDOW:g} s window)",
            f"{f['banners']}",
            f"{a['banners']}",
        ),
        (
            "time until the last banner (s)",
            f"{f['last_banner_s']:.2f}",
            f"{a['last_banner_s']:.2f}",
        ),
        ("RSS per idle connection (KiB)", f"{f['kib_per_conn']:.1f}", f"{a['kib_per_conn']:.1f}"),
        ("transaction latency, alone (median / p95 ms)", ms(f["alone"]), ms(a["alone"])),
        (
            f"same, {SLOW_CLIENTS} slow clients trickling (median / p95 ms)",
            ms(f["slow"]),
            ms(a["slow"]),
        ),
        (
            f"{MESSAGE_MB} MB message: peak RSS growth per MB",
            f"{f['peak_mb_per_mb']:.2f}",
            f"{a['peak_mb_per_mb']:.2f}",
        ),
        (
            f"{MESSAGE_MB} MB message: RSS kept afterwards per MB",
            f"{f['kept_mb_per_mb']:.2f}",
            f"{a['kept_mb_per_mb']:.2f}",
        ),
        (
            f"{MESSAGE_MB} MB message: seconds to the 250",
            f"{f['seconds']:.2f}",
            f"{a['seconds']:.2f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'fakesmtp':>12}  {'raw aiosmtpd sink':>22}")
    for name, ours, theirs in rows:
        print(f"{name:<{width}}  {ours:>12}  {theirs:>22}")
    print(
        f"\nnet.core.somaxconn = {somaxconn}, open-file limit = {fds}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"took {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
