"""Messages per second through `fakesmtp serve`, side by side with a raw aiosmtpd sink.

Every server runs as its own process, started by this script in the same run, and gets the same
load: 20 concurrent client sessions sending small messages, a fixed count. The load comes from
Postfix's `smtp-source` when it is installed (it uses ~20% of a core, so the server is the
limit), otherwise from a small asyncio client in another process.

    python benchmarks/throughput.py                 # 3 runs each, medians
    python benchmarks/throughput.py --runs 1 --messages 1000 --client python
    python benchmarks/throughput.py --profile       # and where the time goes per message

Also printed: the time from process start to the first banner ("ready"), ratios to the raw
aiosmtpd sink and to Postfix's smtp-sink (the practical ceiling, in C) when it is installed,
`--workers N` rows, and a shared-state row (`--workers N --state redis://`, a rule counted per
triplet, so every message costs a Redis round trip) when redis-server is installed. Runs go
round robin over the servers, so a noisy neighbour weighs on all of them alike.
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
    command: list[str], port: int, quiet_output: bool = True, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet_output else None,
        env=env,
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


def shared_state_rules(directory: Path) -> Path:
    """A rule counted per triplet that never fires: every RCPT costs one shared-state hit."""
    path = directory / "shared-state.yaml"
    path.write_text(
        "name: shared-state\nrules:\n  - on: rcpt\n    after: 1000000000\n"
        "    per: triplet\n    reply: 451 4.7.1 Greylisted\n"
    )
    return path


def start_redis(work: Path) -> tuple[subprocess.Popen | None, str | None]:
    """Debian's redis-server on a free port, for the shared-state row (None without it)."""
    if shutil.which("redis-server") is None:
        return None, None
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None, None


def bytecode_env(work: Path) -> dict[str, str]:
    """Every server may write and reuse bytecode, as an installed package has it: a checkout
    run with PYTHONDONTWRITEBYTECODE would compile fakesmtp's sources at each start and
    measure that instead of start-up. (A warm-up start of each server writes it.)"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def profile(work: Path, messages: int, client: str, env: dict[str, str]) -> None:
    """Where the time goes per message: fakesmtp (50 rules, console line) under cProfile."""
    import pstats

    port = free_port()
    output = work / "profile.out"
    command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "fakesmtp", "serve",
               "--no-api", "--port", str(port), "-s", str(fifty_rules(work))]  # fmt: skip
    process, _ = start(command, port, env=env)
    try:
        run_load(port, messages, 1, client)
    finally:
        process.terminate()
        process.wait(timeout=60)
    stats = pstats.Stats(str(output))
    entries = sorted(stats.stats.items(), key=lambda item: -item[1][2])  # type: ignore[attr-defined]
    total = sum(entry[1][2] for entry in entries)
    print(f"\nprofile: fakesmtp, 50 rules + console line, {messages} messages, 1 per session "
          f"(cProfile slows everything; read the shares): {total / messages * 1e6:.0f} us of "
          "CPU per message in all, of which, by function (own time):")  # fmt: skip
    for (path, line, name), (_, _, own, _, _) in entries[:18]:
        where = f"{Path(path).name}:{line}" if line else path
        print(f"  {own / messages * 1e6:7.1f} us  {own / total:5.1%}  {name}  ({where})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--client",
        choices=["smtp-source", "python"],
        default="smtp-source" if shutil.which("smtp-source") else "python",
    )
    parser.add_argument("--workers", type=int, default=2, help="the --workers rows (0: none)")
    parser.add_argument("--only", help="only the servers whose name holds this text")
    parser.add_argument("--profile", action="store_true", help="also profile one fakesmtp run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fakesmtp-bench-"))
    env = bytecode_env(work)
    serve = [sys.executable, "-m", "fakesmtp", "serve", "--no-api"]
    fifty = str(fifty_rules(work))
    redis, state = start_redis(work)
    servers = {
        "raw aiosmtpd sink (baseline)": lambda p: [sys.executable, str(HERE), "--raw-sink", str(p)],
        "fakesmtp, default scenario": lambda p: [*serve, "--quiet", "--port", str(p)],
        "fakesmtp, 50 rules": lambda p: [*serve, "--quiet", "--port", str(p), "-s", fifty],
        "fakesmtp, 50 rules + console line": lambda p: [*serve, "--port", str(p), "-s", fifty],
        # The same without uvloop: what the loop adds, and what the code alone does.
        "fakesmtp, 50 rules + console line, --loop asyncio": lambda p: [
            *serve, "--port", str(p), "-s", fifty, "--loop", "asyncio"],
    }  # fmt: skip
    if args.workers > 1:
        w = str(args.workers)
        servers[f"fakesmtp --workers {w}, 50 rules"] = lambda p: [
            *serve, "--quiet", "--port", str(p), "-s", fifty, "--workers", w]  # fmt: skip
        if state:
            rules = str(shared_state_rules(work))
            servers[f"fakesmtp --workers {w} --state redis, per-triplet rule"] = lambda p: [
                *serve, "--quiet", "--port", str(p), "-s", rules, "--workers", w, "--state",
                state]  # fmt: skip
    if shutil.which("smtp-sink"):
        root = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
        servers["Postfix smtp-sink (C)"] = lambda p: ["smtp-sink", *root, f"127.0.0.1:{p}", "1024"]
    if args.only:
        keep = {"raw aiosmtpd sink (baseline)", "Postfix smtp-sink (C)"}
        servers = {k: v for k, v in servers.items() if args.only in k or k in keep}
    workloads = {"1 msg/session": 1, "10 msgs/session": 10}
    print(f"load: {args.client}, {SESSIONS} concurrent sessions, {args.messages} messages of "
          f"~1 KiB, median of {args.runs} run(s), all servers in this one sitting; Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the start\n")  # fmt: skip
    for command in servers.values():  # warm-up: bytecode written, files in the page cache
        port = free_port()
        process, _ = start(command(port), port, env=env)
        process.terminate()
        process.wait(timeout=30)
    rates: dict[str, dict[str, list[float]]] = {n: {w: [] for w in workloads} for n in servers}
    ready: dict[str, list[float]] = {n: [] for n in servers}
    for _ in range(args.runs):  # round robin: each run meets the machine's noise alike
        for name, command in servers.items():
            port = free_port()
            process, ready_after = start(command(port), port, env=env)
            ready[name].append(ready_after)
            try:
                for workload, per_session in workloads.items():
                    rate = run_load(port, args.messages, per_session, args.client)
                    rates[name][workload].append(rate)
            finally:
                process.terminate()
                process.wait(timeout=60)
    results = {
        name: {**{w: statistics.median(r) for w, r in rates[name].items()},
               "ready ms": statistics.median(ready[name]) * 1000}
        for name in servers
    }  # fmt: skip
    baseline = results["raw aiosmtpd sink (baseline)"]
    sink = results.get("Postfix smtp-sink (C)")
    header = f"{'server':<56} {'ready ms':>9} {'x raw':>6}"
    for workload in workloads:
        header += f" {workload + ' msg/s':>22} {'x raw':>6}" + (f" {'x sink':>6}" if sink else "")
    print(header)
    for name, figures in results.items():
        row = f"{name:<56} {figures['ready ms']:>9.0f} "
        row += f"{figures['ready ms'] / baseline['ready ms']:>5.2f}x"
        for workload in workloads:
            row += f" {figures[workload]:>22,.0f} {figures[workload] / baseline[workload]:>5.2f}x"
            if sink:
                row += f" {figures[workload] / sink[workload]:>5.2f}x"
        print(row)
    if args.profile:
        profile(work, args.messages, args.client, env)
    if redis is not None:
        redis.terminate()
        redis.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--raw-sink":
        raw_sink(int(sys.argv[2]))
    elif len(sys.argv) > 4 and sys.argv[1] == "--load":
        python_client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
