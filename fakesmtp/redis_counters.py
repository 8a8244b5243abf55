"""Counters in Redis (or Valkey), so several workers or machines count ``times``/``after`` as one.

``--state redis://HOST:PORT/DB`` gives every engine a ``RedisCounters`` in place of the
in-process store. One counted match is one round trip: a Lua script that increments atomically
on the Redis server, so two instances counting the same greylisting triplet at the same moment
see 1 and 2, never 1 and 1.

- A plain count is ``INCRBY``; the key expires after ``ttl`` seconds without a hit (a
  greylisting database forgets old triplets too), which bounds what Redis holds.
- A window (``within: 1m``) is a sorted set of the hits' times, taken from Redis' own clock
  (``TIME``) so instances whose clocks differ still agree; hits older than the window are
  removed, the oldest are trimmed once the newer ones reach the caller's ``limit`` (the
  answer stays exact up to it, as in ``counters.MemoryCounters``), and the key expires with
  its window.
- Keys are ``fakesmtp:<scenario fingerprint>:<generation>:<rule>\\x1f<per key>``: every instance
  serving the same scenario shares counts, and a reset (``POST /api/v1/reset``) moves all of
  them to a new generation at once, however many instances there are.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .scenario import Scenario

DEFAULT_TTL = 7 * 24 * 3600  # seconds a plain count lives without a hit

# KEYS[1]: the generation key. ARGV: prefix, key, window in ms ("" for none), limit, amount, ttl.
_HIT = """
local generation = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. generation .. ':' .. ARGV[2]
local amount = tonumber(ARGV[5])
if ARGV[3] == '' then
  local total = redis.call('INCRBY', key, amount)
  redis.call('EXPIRE', key, tonumber(ARGV[6]))
  return total
end
local window = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local sequence = redis.call('INCR', key .. ':n')
redis.call('ZADD', key, now, sequence .. ':' .. amount)
local hits = redis.call('ZRANGE', key, 0, -1)
local total = 0
for _, hit in ipairs(hits) do
  total = total + tonumber(string.match(hit, ':(%d+)$'))
end
for _, hit in ipairs(hits) do
  local oldest = tonumber(string.match(hit, ':(%d+)$'))
  if total - oldest < limit then break end
  redis.call('ZREM', key, hit)
  total = total - oldest
end
redis.call('PEXPIRE', key, window)
redis.call('PEXPIRE', key .. ':n', window)
return total
"""


class StateError(Exception):
    """The shared state cannot be used: a bad URL, or Redis is unreachable."""

    exit_code = 2  # the command line's to fix: one line, no traceback


def check_url(url: str) -> str:
    """``redis://HOST:PORT/DB`` (or ``rediss://`` for TLS); anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise StateError(
            f"--state {url!r}: give redis://HOST:PORT/DB (a Redis or Valkey server), "
            "e.g. redis://127.0.0.1:6379/0"
        )
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise StateError(f"--state {url!r}: the database must be a number (/0, /1, ...)")
    return url


def fingerprint(text: str) -> str:
    """Names a scenario by its content: instances serving the same one share counts."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RedisConnection:
    """One client (a connection pool) per process, shared by every scenario's counters."""

    def __init__(self, url: str) -> None:
        self.url = check_url(url)
        try:
            import redis.asyncio  # only --state pays for importing it
        except ImportError:
            raise StateError(
                f"--state {url}: the Redis client is not installed: pip install 'fakesmtp[redis]'"
            ) from None
        self.client: Any = redis.asyncio.Redis.from_url(url)
        self.script: Any = self.client.register_script(_HIT)

    async def check(self) -> None:
        """Fail at start-up, with a clear message, rather than at the first counted rule."""
        try:
            await asyncio.wait_for(self.client.ping(), 5)
        except Exception as error:
            raise StateError(f"--state {self.url}: cannot reach Redis: {error}") from None

    def counters(self, scenario_text: str, ttl: int = DEFAULT_TTL) -> RedisCounters:
        return RedisCounters(self, fingerprint(scenario_text), ttl)

    def counters_for(self, scenario: Scenario) -> RedisCounters:
        """One scenario's counters: named by its YAML and rules, so equal scenarios share them."""
        rules = "\n".join(f"{rule.label}|{rule.on}|{rule.source}" for rule in scenario.rules)
        return self.counters(f"{scenario.text}\n--\n{rules}")

    async def close(self) -> None:
        await self.client.aclose()


class RedisCounters:
    """A ``counters.CounterStore`` whose ``hit`` is awaited: the engine uses ``decide_async``."""

    awaits = True  # the engine must use decide_async() with this store

    def __init__(self, connection: RedisConnection, scenario: str, ttl: int) -> None:
        self.connection = connection
        self.prefix = f"fakesmtp:{scenario}:"
        self.ttl = ttl
        self._clearing: asyncio.Task[Any] | None = None

    async def hit(
        self, key: str, now: float, *, window: float | None = None, limit: int, amount: int = 1
    ) -> int:
        # `now` is this process's clock; windows use Redis' one clock instead, which every
        # instance shares.
        if self._clearing is not None:  # a reset asked before this hit comes first
            await self._clearing
        window_ms = "" if window is None else str(max(1, round(window * 1000)))
        total = await self.connection.script(
            keys=[self.prefix + "generation"],
            args=[self.prefix, key, window_ms, limit, amount, self.ttl],
        )
        return int(total)

    def clear(self) -> None:
        """Forget every count, for all instances: the next hits count in a new generation."""
        self._clearing = asyncio.get_running_loop().create_task(self.new_generation())

    async def new_generation(self) -> None:
        await self.connection.client.incr(self.prefix + "generation")

    def __len__(self) -> int:
        return 0  # the keys live in Redis, bounded there by their expiry
