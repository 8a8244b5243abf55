"""Counts behind ``times``/``after`` and open sessions behind ``concurrent``, in bounded memory.

The engine asks one question of a counter store: "count one more event for this key; how many
are there now?", optionally within a sliding window (``within: 1m``). ``CounterStore`` is that
question as a protocol, so another backend (Redis, shared by several workers) can answer it;
``MemoryCounters`` answers it in this process. Keys are strings so any backend can hold them.

Memory is bounded two ways (a server left running for days must not grow without end):

- LRU: at most ``max_keys`` keys are kept; counting a key makes it the most recent, and the
  least recently counted key is forgotten first. A forgotten key starts again from zero, as an
  entry that expired from a real greylisting database would.
- Windows: a windowed key keeps only the timestamps it needs to decide (``limit``, below) and is
  dropped once its whole window has passed without a hit; the total number of timestamps held
  is capped by ``max_events`` (least recently counted keys go first).

``SessionGauge`` counts what is open right now: it goes up when a session opens and down when it
ends, so it is exact as sessions come and go. ``OpenSessions`` uses it to answer ``concurrent``
conditions per server, client address or sender.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .stages import Per

if TYPE_CHECKING:
    from .engine import Facts

DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_EVENTS = 1_000_000


@runtime_checkable
class CounterStore(Protocol):
    """Where times/after counts are kept. Every call is one atomic step.

    ``hit`` adds ``amount`` (1 for an event; a size for volume limits) to ``key`` at time
    ``now`` (seconds, from the engine's clock) and returns the total, this hit included: over
    the whole life of the key when ``window`` is None, else over the last ``window`` seconds.

    ``limit`` says how far the caller needs an exact answer: a store may stop keeping detail
    once a key's total reaches ``limit``, and then return any number >= ``limit``. (The engine
    passes ``after + times + 1``: beyond that the rule no longer fires, however far beyond.)
    A Redis store can implement a window as a sorted set of timestamps trimmed to the window,
    or as INCRBY on a per-window key with EXPIRE; a plain count is INCRBY.
    """

    def hit(
        self, key: str, now: float, *, window: float | None = None, limit: int, amount: int = 1
    ) -> int: ...

    def clear(self) -> None:
        """Forget every count (the API's counter reset)."""
        ...

    def __len__(self) -> int:
        """How many keys are held now (for bounds and metrics)."""
        ...


class _Window:
    """The recent hits of one windowed key, oldest first, and their running total.

    Plain lists with a moving start (compacted now and then) rather than deques: a deque costs
    over 600 bytes even when it holds two timestamps, and a server may hold 100,000 of these.
    ``amounts`` stays None while every hit counts one (all but volume rules).
    """

    __slots__ = ("amounts", "start", "times", "total", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.times: list[float] = []
        self.amounts: list[int] | None = None
        self.start = 0  # times[:start] are forgotten, awaiting compaction
        self.total = 0

    def __len__(self) -> int:
        return len(self.times) - self.start

    @property
    def newest(self) -> float:
        return self.times[-1]

    def add(self, now: float, amount: int) -> None:
        if amount != 1 and self.amounts is None:
            self.amounts = [1] * len(self.times)
        self.times.append(now)
        if self.amounts is not None:
            self.amounts.append(amount)
        self.total += amount

    def _amount(self, index: int) -> int:
        return 1 if self.amounts is None else self.amounts[index]

    def _drop_oldest(self) -> None:
        self.total -= self._amount(self.start)
        self.start += 1

    def expire(self, now: float) -> int:
        """Forget hits older than the window; return how many were forgotten."""
        before = len(self)
        edge = now - self.window
        while len(self) and self.times[self.start] <= edge:
            self._drop_oldest()
        self._compact()
        return before - len(self)

    def trim(self, limit: int) -> int:
        """Drop the oldest hits while the newer ones alone reach ``limit``.

        Whatever the window later does, ``min(total in window, limit)`` stays exact: a dropped
        hit still inside the window means every newer (kept) hit is inside it too, and those
        already sum to ``limit`` or more.
        """
        before = len(self)
        while len(self) and self.total - self._amount(self.start) >= limit:
            self._drop_oldest()
        self._compact()
        return before - len(self)

    def _compact(self) -> None:
        # Amortised O(1): the forgotten head is cut once it is as long as what is kept.
        if self.start > 16 and self.start * 2 > len(self.times):
            del self.times[: self.start]
            if self.amounts is not None:
                del self.amounts[: self.start]
            self.start = 0


class MemoryCounters:
    """The in-process ``CounterStore``: exact, synchronous, bounded (see the module docstring)."""

    def __init__(
        self, *, max_keys: int = DEFAULT_MAX_KEYS, max_events: int = DEFAULT_MAX_EVENTS
    ) -> None:
        if max_keys < 1 or max_events < 1:
            raise ValueError("max_keys and max_events must be 1 or more")
        self.max_keys = max_keys
        self.max_events = max_events
        # One LRU order for both kinds, so max_keys bounds them together.
        self._keys: OrderedDict[str, int | _Window] = OrderedDict()
        self._events = 0  # timestamps held by all windows

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def events(self) -> int:
        """Timestamps held by windowed keys (bounded by ``max_events``)."""
        return self._events

    def clear(self) -> None:
        self._keys.clear()
        self._events = 0

    def hit(
        self, key: str, now: float, *, window: float | None = None, limit: int, amount: int = 1
    ) -> int:
        keys = self._keys
        entry = keys.get(key)
        if entry is not None:
            keys.move_to_end(key)
        if window is None:
            total = (entry if isinstance(entry, int) else 0) + amount
            keys[key] = total
            if entry is None:
                self._bound(now)
            return total
        if not isinstance(entry, _Window) or entry.window != window:
            if isinstance(entry, _Window):
                self._events -= len(entry)
            entry = keys[key] = _Window(window)
        self._events -= entry.expire(now)
        entry.add(now, amount)
        self._events += 1 - entry.trim(limit)
        total = entry.total
        self._bound(now)
        return total

    def _bound(self, now: float) -> None:
        """Prune expired windows at the old end, then evict least recently counted keys."""
        keys = self._keys
        for _ in range(4):  # a few per hit keeps pruning amortised O(1)
            if not keys:
                break
            oldest_key, oldest = next(iter(keys.items()))
            if not isinstance(oldest, _Window):
                break
            if len(oldest) and oldest.newest > now - oldest.window:
                break
            self._events -= len(oldest)
            del keys[oldest_key]
        while len(keys) > self.max_keys or self._events > self.max_events:
            _, evicted = keys.popitem(last=False)
            if isinstance(evicted, _Window):
                self._events -= len(evicted)


class SessionGauge:
    """Open sessions per key (``server``, a client address, a sender): up on open, down on close.

    Zero counts are removed, so the gauge holds only keys with a session open right now: its
    size is bounded by the number of open connections.
    """

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, key: str) -> int:
        count = self._open.get(key, 0) + 1
        self._open[key] = count
        return count

    def remove(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def get(self, key: str) -> int:
        return self._open.get(key, 0)


class OpenSessions:
    """The sessions open right now, for ``match: {concurrent: ">3"}`` (counted per ``per``).

    The server registers each session's Facts when it opens and when it ends; a session's own
    Facts point back here, so the engine reads the count without any I/O. Per server and per
    client are gauges kept as sessions come and go; per sender looks at the open sessions'
    current senders (MAIL accepted or being decided), which only rules asking for it pay for.
    """

    def __init__(self) -> None:
        self._gauge = SessionGauge()
        self._live: set[Facts] = set()

    def __len__(self) -> int:
        return len(self._live)

    def opened(self, facts: Facts) -> None:
        if facts in self._live:
            return
        self._live.add(facts)
        self._gauge.add("server")
        self._gauge.add(f"client\x1f{facts.client}")
        facts.sessions = self

    def closed(self, facts: Facts) -> None:
        if facts not in self._live:
            return
        self._live.discard(facts)
        self._gauge.remove("server")
        self._gauge.remove(f"client\x1f{facts.client}")

    def count(self, per: Per, facts: Facts) -> int:
        """Open sessions sharing ``facts``' server, client or sender, this one included."""
        if per is Per.CLIENT:
            return self._gauge.get(f"client\x1f{facts.client}")
        if per is Per.SENDER:
            if facts.sender is None:
                return 0
            sender = facts.sender.lower()
            return sum(1 for f in self._live if f.sender is not None and f.sender.lower() == sender)
        return self._gauge.get("server")
