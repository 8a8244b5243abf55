"""How much memory the engine's counters hold when a server is flooded with new keys.

Usage: python benchmarks/counters_memory.py

Three floods against MemoryCounters' default bounds (100,000 keys, 1,000,000 timestamps):
distinct greylisting triplets (counted for ever), many clients under a per-minute limit, and
one key hammered under an hourly window. Prints the keys and timestamps kept and the memory
they hold (tracemalloc), next to what an unbounded dict of counts would have held for the
same hits. Memory only: tracemalloc slows every allocation, so no timing is printed.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

from fakesmtp.counters import MemoryCounters

Hit = Callable[[int], tuple[str, float, float | None, int]]  # n -> key, now, window, limit


def triplets(n: int) -> tuple[str, float, float | None, int]:
    key = f"3\x1f192.0.2.{n % 250}\x1fsender{n}@example.test\x1frcpt{n}@example.test"
    return key, float(n), None, 2


def clients_per_minute(n: int) -> tuple[str, float, float | None, int]:
    return f"1\x1f10.{n % 200}.{(n // 200) % 250}.1", n / 1000, 60.0, 31


def one_key_per_hour(n: int) -> tuple[str, float, float | None, int]:
    return "0\x1f", n / 1000, 3600.0, 1001


def held(fill: Callable[[], object]) -> tuple[object, float]:
    tracemalloc.start()
    kept = fill()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return kept, current / 2**20


def measure(label: str, hit: Hit, hits: int) -> None:
    def bounded() -> MemoryCounters:
        store = MemoryCounters()
        for n in range(hits):
            key, now, window, limit = hit(n)
            store.hit(key, now, window=window, limit=limit)
        return store

    def unbounded() -> dict[str, int]:  # what a plain dict of counts (0.1's engine) keeps
        counts: dict[str, int] = {}
        for n in range(hits):
            key = hit(n)[0]
            counts[key] = counts.get(key, 0) + 1
        return counts

    store, store_mib = held(bounded)
    plain, plain_mib = held(unbounded)
    assert isinstance(store, MemoryCounters) and isinstance(plain, dict)
    print(
        f"{label:<46} {hits:>9,} hits  kept {len(store):>7,} keys {store.events:>9,} stamps"
        f"  {store_mib:6.1f} MiB   (unbounded dict: {len(plain):>9,} keys {plain_mib:6.1f} MiB)"
    )


if __name__ == "__main__":
    measure("distinct triplets, counted for ever", triplets, 300_000)
    measure("50,000 clients, after: 30 within 1m", clients_per_minute, 300_000)
    measure("one key, within 1h, limit 1001", one_key_per_hour, 300_000)
