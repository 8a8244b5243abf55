"""Messages per second through `fakesmtp serve`, side by side with a raw aiosmtpd sink.

Every server runs as its own process, started by this script in the same run, and gets the same
load: 20 concurrent client sessions sending small messages, a fixed count. The load comes from
Postfix's `smtp-source` when it is installed (it uses ~20% of a core, so the server is the
limit), otherwise from a small asyncio client in another process.

    python benchmarks/throughput.py                 # 3 runs each, medians
    python benchmarks/throughput.py --runs 1 --messages 1000 --client python

Also printed: the time from process start to the first banner ("ready").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SESSIONS = 20


# --------------------------------------------------------------------------- the baseline


def raw_sink(port: int) -> None:
    """The baseline: aiosmtpd's SMTP with a handler that answers 250 and keeps nothing."""
    from aiosmtpd.smtp import SMTP

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # aiosmtpd names its hooks
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Same listen backlog and no name lookup, as fakesmtp does: compare the servers, not that.
        server = await loop.create_server(
            lambda: SMTP(Sink(), hostname="sink.test", loop=loop), "127.0.0.1", port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------- load


def python_client(port: int, messages: int, per_session: int) -> None:
    """A minimal SMTP client: SESSIONS concurrent sessions, `messages` in all."""

    async def session(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def reply() -> bytes:
            while True:
                line = await reader.readline()
                if line[3:4] != b"-":
                    return line

        await reply()
        writer.write(b"EHLO bench.test\r\n")
        await reply()
        for _ in range(count):
            writer.write(b"MAIL FROM:<a@bench.test>\r\n")
            await reply()
            writer.write(b"RCPT TO:<b@bench.test>\r\n")
            await reply()
            writer.write(b"DATA\r\n")
            await reply()
            writer.write(b"Subject: bench\r\n\r\n" + b"x" * 1000 + b"\r\n.\r\n")
            await reply()
        writer.write(b"QUIT\r\n")
        await reply()
        writer.close()

    async def main() -> None:
        queue = [per_session] * (messages // per_session)
        lock = asyncio.Lock()

        async def worker() -> None:
            while True:
                async with lock:
                    if not queue:
                        return
                    count = queue.pop()
                await session(count)

        await asyncio.gather(*(worker() for _ in range(SESSIONS)))

    asyncio.run(main())


def run_load(port: int, messages: int, per_session: int, client: str) -> float:
    """Send the load; return messages per second."""
    if client == "smtp-source":
        command = ["smtp-source", "-M", "bench.test", "-s", str(SESSIONS), "-m", str(messages),
                   "-l", "1024"]  # fmt: skip
        if per_session > 1:
            command.append("-d")  # keep sessions open: several messages per session
        command.append(f"127.0.0.1:{port}")
    else:
        command = [sys.executable, str(HERE), "--load", str(port), str(messages), str(per_session)]
    started = time.perf_counter()
    subprocess.run(command, check=True, timeout=300, stdout=subprocess.DEVNULL)
    return messages / (time.perf_counter() - started)


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_banner(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.002)
    raise RuntimeError("server never became ready")


def start(
    command: list[str], port: int, quiet_output: bool = True
) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet_output else None
    )
    wait_for_banner(port, process)
    return process, time.perf_counter() - started


def fifty_rules(directory: Path) -> Path:
    """50 rules that never fire, so every command pays for checking all of them."""
    lines = ["name: fifty-rules", "rules:"]
    for n in range(45):
        stage = ("mail", "rcpt")[n % 2]
        key = "from" if stage == "mail" else "to"
        lines += [f"  - on: {stage}", f'    match: {{{key}: "*@never-{n}.test"}}', "    reply: 550"]
    for n in range(5):  # these look at the message: the parse happens, lazily, once
        lines += ["  - on: end_of_data", f'    match: {{subject: "*never-{n}*"}}', "    reply: 554"]
    path = directory / "fifty-rules.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--client",
        choices=["smtp-source", "python"],
        default="smtp-source" if shutil.which("smtp-source") else "python",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fakesmtp-bench-"))
    serve = [sys.executable, "-m", "fakesmtp", "serve", "--no-api"]
    empty = work / "no-rules.yaml"
    empty.write_text("name: no-rules\n")
    servers = {
        "raw aiosmtpd sink (baseline)": lambda p: [sys.executable, str(HERE), "--raw-sink", str(p)],
        "fakesmtp, no rules": lambda p: [*serve, "--quiet", "--port", str(p), "-s", str(empty)],
        "fakesmtp, default scenario": lambda p: [*serve, "--quiet", "--port", str(p)],
        "fakesmtp, 50 rules": lambda p: [*serve, "--quiet", "--port", str(p), "-s",
                                         str(fifty_rules(work))],
        "fakesmtp, no rules, console line on": lambda p: [*serve, "--port", str(p), "-s",
                                                          str(empty)],
    }  # fmt: skip
    workloads = {"1 msg/session": 1, "10 msgs/session": 10}
    print(f"load: {args.client}, {SESSIONS} concurrent sessions, {args.messages} messages of "
          f"~1 KiB, median of {args.runs} run(s); Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    for name, command in servers.items():
        rates: dict[str, list[float]] = {w: [] for w in workloads}
        ready: list[float] = []
        for _ in range(args.runs):
            port = free_port()
            process, ready_after = start(command(port), port)
            ready.append(ready_after)
            try:
                for workload, per_session in workloads.items():
                    rates[workload].append(run_load(port, args.messages, per_session, args.client))
            finally:
                process.terminate()
                process.wait(timeout=30)
        results[name] = {w: statistics.median(r) for w, r in rates.items()}
        results[name]["ready ms"] = statistics.median(ready) * 1000
    baseline = results["raw aiosmtpd sink (baseline)"]
    header = f"{'server':<38} {'ready ms':>9}"
    for workload in workloads:
        header += f" {workload + ' msg/s':>22} {'ratio':>6}"
    print(header)
    for name, figures in results.items():
        row = f"{name:<38} {figures['ready ms']:>9.0f}"
        for workload in workloads:
            row += f" {figures[workload]:>22,.0f} {figures[workload] / baseline[workload]:>5.2f}x"
        print(row)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--raw-sink":
        raw_sink(int(sys.argv[2]))
    elif len(sys.argv) > 4 and sys.argv[1] == "--load":
        python_client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
