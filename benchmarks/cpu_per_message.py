"""Server CPU time per message: fakesmtp beside a raw aiosmtpd sink, robust on a busy machine.

Messages per second move with whatever else the machine runs; the CPU time the server process
itself spends per message moves much less, so this is the figure to compare across a change.
Each server runs as its own process and gets the same load from Postfix's `smtp-source`
(20 concurrent sessions): 1 message per session, 10 per session, and 100 KiB messages. Runs go
round robin over the servers; medians are printed with the ratio to the raw sink.

    python benchmarks/cpu_per_message.py                     # this checkout, asyncio and uvloop
    python benchmarks/cpu_per_message.py --also /tmp/old     # and another checkout (git archive)

Linux only (reads /proc/PID/stat).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TICK = os.sysconf("SC_CLK_TCK")
LOADS = {  # name: (messages, bytes each, keep sessions open for several messages)
    "1 msg/session": (2000, 1024, False),
    "10 msgs/session": (2000, 1024, True),
    "100 KiB msgs": (300, 102400, True),
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_banner(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("server never became ready")


def servers(checkouts: dict[str, Path]) -> dict[str, tuple[list[str], Path]]:
    sink = HERE.parent / "throughput.py"
    found = {
        "raw aiosmtpd sink": ([sys.executable, str(sink), "--raw-sink", "{port}"], HERE.parent)
    }
    loops = ["asyncio"] + (["uvloop"] if _has_uvloop() else [])
    for label, directory in checkouts.items():
        for loop in loops:
            command = [sys.executable, "-m", "fakesmtp", "serve", "--no-api", "--quiet",
                       "--loop", loop, "--port", "{port}"]  # fmt: skip
            found[f"fakesmtp {label}, {loop}"] = (command, directory)
    return found


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another checkout to measure beside this one")  # fmt: skip
    args = parser.parse_args()
    if not shutil.which("smtp-source"):
        sys.exit("needs Postfix's smtp-source (apt-get install postfix)")
    checkouts = {"(this checkout)": HERE.parent.parent}
    checkouts.update({f"({path})": path for path in args.also})
    table = servers(checkouts)
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        for name, (template, directory) in table.items():
            port = free_port()
            command = [part.replace("{port}", str(port)) for part in template]
            process = subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                wait_for_banner(port, process)
                for load, (count, size, keep) in LOADS.items():
                    load_command = ["smtp-source", "-M", "bench.test", "-s", "20", "-m",
                                    str(count), "-l", str(size), *(["-d"] if keep else []),
                                    f"127.0.0.1:{port}"]  # fmt: skip
                    spent, started = cpu_seconds(process.pid), time.perf_counter()
                    subprocess.run(load_command, check=True, stdout=subprocess.DEVNULL, timeout=600)
                    wall = time.perf_counter() - started
                    per_message = (cpu_seconds(process.pid) - spent) / count * 1e6
                    figures.setdefault((name, load), []).append((per_message, count / wall))
            finally:
                process.terminate()
                process.wait(timeout=30)
    load_average = os.getloadavg()[0]
    print(f"server CPU µs per message (lower is better), median of {args.runs}; load average "
          f"{load_average:.1f} on {os.cpu_count()} CPUs; ratio = raw sink / this\n")  # fmt: skip
    print(f"{'server':<40}" + "".join(f"{load:>24}" for load in LOADS))
    base = {load: statistics.median(f for f, _ in figures[("raw aiosmtpd sink", load)])
            for load in LOADS}  # fmt: skip
    for name in table:
        row = f"{name:<40}"
        for load in LOADS:
            value = statistics.median(f for f, _ in figures[(name, load)])
            row += f"{value:>14,.0f} ({base[load] / value:4.2f}x)"
        print(row)


if __name__ == "__main__":
    main()
