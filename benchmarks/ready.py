"""Start-up alone: process start to the first 220 banner, many times, servers taking turns.

throughput.py prints ready times too, but from 3 starts each between load runs, where a noisy
neighbour moves them by half. This starts each server N times, one after the other in round
robin (so noise weighs on all alike), with bytecode written as an installed package has it,
and prints the median and the minimum against the raw aiosmtpd sink.

    python benchmarks/ready.py            # 15 starts each
    python benchmarks/ready.py --starts 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from throughput import HERE, bytecode_env, fifty_rules, free_port, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fakesmtp-ready-"))
    env = bytecode_env(work)
    serve = [sys.executable, "-m", "fakesmtp", "serve", "--no-api", "--quiet"]
    servers = {
        "raw aiosmtpd sink (baseline)": lambda p: [sys.executable, str(HERE), "--raw-sink", str(p)],
        "fakesmtp, default scenario": lambda p: [*serve, "--port", str(p)],
        "fakesmtp, 50 rules": lambda p: [*serve, "--port", str(p), "-s", str(fifty_rules(work))],
    }
    times: dict[str, list[float]] = {name: [] for name in servers}
    for turn in range(args.starts + 1):  # the first turn only writes bytecode
        for name, command in servers.items():
            port = free_port()
            process, seconds = start(command(port), port, env=env)
            process.kill()
            process.wait()
            if turn:
                times[name].append(seconds * 1000)
        time.sleep(0.05)
    raw = statistics.median(times["raw aiosmtpd sink (baseline)"])
    print(f"{args.starts} starts each, round robin; median and minimum ms to the first banner")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32} {median:6.0f} ms  min {min(values):4.0f} ms  {median / raw:5.2f}x raw")


if __name__ == "__main__":
    main()
