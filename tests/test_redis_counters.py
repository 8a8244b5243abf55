"""RedisCounters against a real redis-server: exact counts shared by separate connections."""

from __future__ import annotations

import asyncio

import pytest

from fakesmtp.counters import MemoryCounters
from fakesmtp.redis_counters import RedisConnection, StateError, check_url

from .redis_server import RedisServer, redis_server  # noqa: F401  (the fixture)

pytest.importorskip("redis", reason="the redis client library is not installed")


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_two_connections_count_as_one(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> list[int]:
        # Two connections: what two workers or two machines have.
        first, second = RedisConnection(redis_server.url), RedisConnection(redis_server.url)
        a, b = first.counters("scenario one"), second.counters("scenario one")
        other = first.counters("scenario two")
        hits = [(a, b)[n % 2].hit("0\x1fclient", 0, limit=100) for n in range(100)]
        totals = await asyncio.gather(*hits)
        assert await other.hit("0\x1fclient", 0, limit=100) == 1  # another scenario: its own
        await first.close()
        await second.close()
        return sorted(totals)

    assert run(main()) == list(range(1, 101))  # 100 concurrent hits, each total seen once


def test_a_reset_starts_every_instance_again(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        first, second = RedisConnection(redis_server.url), RedisConnection(redis_server.url)
        a, b = first.counters("reset"), second.counters("reset")
        assert [await a.hit("k", 0, limit=9) for _ in range(3)] == [1, 2, 3]
        a.clear()
        assert await a.hit("k", 0, limit=9) == 1  # waits for its own reset to land first
        assert await b.hit("k", 0, limit=9) == 2  # the other instance sees the new generation
        await first.close()
        await second.close()

    run(main())


def test_a_window_counts_like_the_memory_store(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        connection = RedisConnection(redis_server.url)
        shared = connection.counters("window")
        memory = MemoryCounters()
        for _ in range(3):
            assert await shared.hit("w", 0, window=0.4, limit=10) == memory.hit(
                "w", 0, window=0.4, limit=10
            )
        await asyncio.sleep(0.5)  # the window passes: counting starts again
        assert await shared.hit("w", 0, window=0.4, limit=10) == 1
        # Past the limit only "limit or more" is promised; the set stays small.
        totals = [await shared.hit("trim", 0, window=60, limit=3) for _ in range(20)]
        assert totals[:3] == [1, 2, 3] and min(totals[3:]) >= 3
        size = await connection.client.zcard(f"{shared.prefix}0:trim")
        assert size <= 3
        # Volume (amount > 1) adds up too.
        assert await shared.hit("bytes", 0, window=60, limit=10**9, amount=1000) == 1000
        assert await shared.hit("bytes", 0, window=60, limit=10**9, amount=24) == 1024
        await connection.close()

    run(main())


def test_plain_counts_expire(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        connection = RedisConnection(redis_server.url)
        counters = connection.counters("ttl", ttl=1)
        assert await counters.hit("t", 0, limit=5) == 1
        assert 0 < await connection.client.ttl(f"{counters.prefix}0:t") <= 1
        await connection.close()

    run(main())


def test_bad_urls_and_unreachable_redis_are_one_line_errors() -> None:
    with pytest.raises(StateError, match=r"give redis://HOST:PORT/DB"):
        check_url("http://127.0.0.1:6379")
    with pytest.raises(StateError, match=r"the database must be a number"):
        check_url("redis://127.0.0.1:6379/zero")

    async def main() -> None:
        from .redis_server import free_port

        connection = RedisConnection(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
        with pytest.raises(StateError, match=r"cannot reach Redis"):
            await connection.check()
        await connection.close()

    run(main())
