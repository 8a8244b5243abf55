"""How long a parallel SMTP client waits while ``PUT /api/v1/scenario`` loads a big scenario.

    python benchmarks/put_latency.py                 # 20,000 rules, 3 PUTs, ~15 s
    python benchmarks/put_latency.py --rules 5000 --rounds 5

In one process (as in the test suite): a fakesmtp server with its API, and a raw aiosmtpd server
on its own loop thread beside it, each probed by a client saying NOOP every 20 ms. The scenario
(``- {on: rcpt, match: {to: 'uN@*'}, reply: 550}`` per rule, ~1 MiB at 20,000) is PUT ``--rounds``
times. Both servers share the interpreter (and its GIL) with the worker threads that parse the
scenario, so the raw aiosmtpd column is the floor: what sharing one process costs a loop that
does none of the work. Figures drift on a shared machine: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import socket
import statistics
import threading
import time

from aiosmtpd.smtp import SMTP

from fakesmtp import FakeSMTP


class Probe:
    """NOOP every 20 ms on one connection; keeps each reply's time."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.lines = self.sock.makefile("rb")
        self.lines.readline()  # banner
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.sock.sendall(b"NOOP\r\n")
            assert self.lines.readline().startswith(b"250")
            self.times.append(time.perf_counter() - started)
            self.stop.wait(0.02)

    def finish(self) -> str:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        ms = sorted(t * 1000 for t in self.times)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        late = sum(t >= 100 for t in ms)
        return f"{len(ms):5d} probes  worst {ms[-1]:6.0f} ms  p99 {p99:5.0f} ms  >=100 ms: {late}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rules = "".join(
        f"  - {{on: rcpt, match: {{to: 'u{n}@*'}}, reply: 550}}\n" for n in range(args.rules)
    )
    body = f"rules:\n{rules}".encode()

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    # The raw server on its own loop thread, as FakeSMTP runs its own.
    loop = asyncio.new_event_loop()
    raw = loop.run_until_complete(loop.create_server(lambda: SMTP(Sink()), "127.0.0.1", 0))
    raw_port = raw.sockets[0].getsockname()[1]
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    try:
        with FakeSMTP(api_port=0) as smtp:
            probes = {
                "fakesmtp": Probe(smtp.host, smtp.port),
                "raw aiosmtpd (same process)": Probe("127.0.0.1", raw_port),
            }
            for probe in probes.values():
                probe.thread.start()
            time.sleep(0.5)
            took = []
            for _ in range(args.rounds):
                connection = http.client.HTTPConnection("127.0.0.1", smtp.api_port, timeout=300)
                started = time.perf_counter()
                connection.request("PUT", "/api/v1/scenario", body=body)
                response = connection.getresponse()
                response.read()
                took.append(time.perf_counter() - started)
                connection.close()
                assert response.status == 200, response.status
                time.sleep(0.3)
            print(
                f"{args.rules:,} rules ({len(body) / 1024:.0f} KiB), {args.rounds} PUTs: "
                f"median {statistics.median(took):.2f} s, max {max(took):.2f} s"
            )
            for name, probe in probes.items():
                print(f"  {name:28s} {probe.finish()}")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(5)
        raw.close()
        sessions = asyncio.all_tasks(loop)
        for task in sessions:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*sessions, return_exceptions=True))
        loop.close()


if __name__ == "__main__":
    main()
