"""Counters (pure, fast): plain and windowed counts, their memory bounds, and the engine on them."""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest

from fakesmtp.counters import CounterStore, MemoryCounters, SessionGauge
from fakesmtp.engine import Engine, Facts
from fakesmtp.scenario import load_scenario_text
from fakesmtp.stages import Stage


def test_plain_counts_run_for_ever_per_key() -> None:
    store = MemoryCounters()
    assert [store.hit("a", float(t), limit=10) for t in range(3)] == [1, 2, 3]
    assert store.hit("b", 1e9, limit=10) == 1
    assert store.hit("a", 1e9, limit=10) == 4  # no window: time does not matter
    assert isinstance(store, CounterStore)


def test_a_window_counts_only_recent_hits() -> None:
    store = MemoryCounters()
    hit = lambda t: store.hit("k", t, window=60.0, limit=100)  # noqa: E731
    assert [hit(0), hit(10), hit(59)] == [1, 2, 3]
    assert hit(60.5) == 3  # the hit at 0 has left the window
    assert hit(130) == 1  # everything older than 70 is gone
    assert len(store) == 1


def test_a_window_counts_amounts() -> None:
    store = MemoryCounters()
    assert store.hit("k", 0, window=10, limit=10**9, amount=1000) == 1000
    assert store.hit("k", 5, window=10, limit=10**9, amount=500) == 1500
    assert store.hit("k", 12, window=10, limit=10**9, amount=1) == 501


def test_a_window_keeps_only_what_the_limit_needs_and_stays_exact_below_it() -> None:
    # Against a naive log that keeps every hit: min(count, limit) must always agree.
    rng = random.Random(7)
    store = MemoryCounters()
    log: deque[float] = deque()
    now = 0.0
    for _ in range(5000):
        now += rng.choice([0.01, 0.1, 0.5, 2.0, 9.0])
        log.append(now)
        while log[0] <= now - 10.0:
            log.popleft()
        exact = len(log)
        got = store.hit("k", now, window=10.0, limit=20)
        assert min(got, 20) == min(exact, 20)
    assert store.events <= 20


def test_the_least_recently_counted_key_is_forgotten_first() -> None:
    store = MemoryCounters(max_keys=3)
    for key in "abc":
        store.hit(key, 0, limit=5)
    store.hit("a", 1, limit=5)  # a is now the most recent: b goes first
    store.hit("d", 2, limit=5)
    assert len(store) == 3
    assert store.hit("b", 3, limit=5) == 1  # forgotten, counts again from zero
    assert store.hit("a", 4, limit=5) == 3  # kept (c went to make room for b)


def test_expired_windows_are_pruned_as_new_hits_arrive() -> None:
    store = MemoryCounters()
    for n in range(1000):
        store.hit(f"client-{n}", float(n) / 100, window=1.0, limit=5)
    # Keys whose last hit is more than a second old are gone (a few per hit).
    assert len(store) < 150
    assert store.events == len(store)


def test_timestamps_held_are_capped() -> None:
    store = MemoryCounters(max_events=100)
    for n in range(1000):
        store.hit(f"k{n % 50}", float(n), window=1e6, limit=1000)
    assert store.events <= 100
    assert 0 < len(store) <= 50


@pytest.mark.slow
def test_memory_stays_bounded_under_a_flood_of_keys() -> None:
    store = MemoryCounters(max_keys=1000)
    for n in range(50_000):
        store.hit(f"sender-{n}@flood.test", float(n), limit=2)
    assert len(store) == 1000


def test_clear_forgets_everything() -> None:
    store = MemoryCounters()
    store.hit("a", 0, window=5, limit=3)
    store.hit("b", 0, limit=3)
    store.clear()
    assert (len(store), store.events) == (0, 0)


def test_gauge_goes_up_and_down_and_forgets_zeroes() -> None:
    gauge = SessionGauge()
    assert [gauge.add("c"), gauge.add("c"), gauge.add("d")] == [1, 2, 1]
    gauge.remove("c")
    assert gauge.get("c") == 1
    gauge.remove("c")
    gauge.remove("d")
    assert (gauge.get("c"), len(gauge)) == (0, 0)


# --------------------------------------------------------------------------- the engine on them


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RATE_LIMIT = """
rules:
  - name: rate
    on: mail
    after: 2
    per: client
    within: 10s
    reply: "421 4.7.0 Too many messages from {client}"
"""


def codes(engine: Engine, facts: Facts, n: int) -> list[int]:
    decisions = [engine.decide(Stage.MAIL, facts) for _ in range(n)]
    return [d.reply.code if d and d.reply else 250 for d in decisions]


def test_engine_rate_limit_lifts_for_a_client_that_waits() -> None:
    clock = Clock()
    engine = Engine(load_scenario_text(RATE_LIMIT), clock=clock)
    facts = Facts(session_id="s1", client="192.0.2.1", sender="a@x.test")
    other = Facts(session_id="s2", client="192.0.2.2", sender="a@x.test")
    assert codes(engine, facts, 4) == [250, 250, 421, 421]
    assert codes(engine, other, 1) == [250]  # per client
    clock.now += 5
    assert codes(engine, facts, 1) == [421]  # still 5 in the last 10 s
    clock.now += 10.5
    assert codes(engine, facts, 3) == [250, 250, 421]  # the window has passed


def test_engine_transcript_note_says_how_many_were_counted_in_the_window() -> None:
    engine = Engine(load_scenario_text(RATE_LIMIT), clock=Clock())
    facts = Facts(session_id="s1", client="192.0.2.1")
    assert engine.decide(Stage.MAIL, facts) is None
    assert engine.why_not(Stage.MAIL, facts) == (
        "no rule fired (rate: matched, but counted 1 per client within 10s (it fires after 2))"
    )
    engine.decide(Stage.MAIL, facts)
    decision = engine.decide(Stage.MAIL, facts)
    assert decision is not None and decision.note == "counted 3 or more per client within 10s"


def test_engine_per_connection_counts_end_with_the_session_and_reset() -> None:
    text = "rules:\n  - on: mail\n    times: 1\n    per: connection\n    reply: 451\n"
    engine = Engine(load_scenario_text(text))
    first, second = Facts(session_id="1", client="c"), Facts(session_id="2", client="c")
    assert engine.decide(Stage.MAIL, first) is not None
    assert engine.decide(Stage.MAIL, first) is None
    assert engine.decide(Stage.MAIL, second) is not None
    assert len(engine.counters) == 0  # nothing kept server-side for per: connection
    engine.reset()
    assert engine.decide(Stage.MAIL, first) is not None


class SlowStore(MemoryCounters):
    """A store whose hit() must be awaited, as a networked one's would."""

    def hit(self, key, now, *, window=None, limit, amount=1):  # type: ignore[override]
        total = super().hit(key, now, window=window, limit=limit, amount=amount)

        async def later() -> int:
            await asyncio.sleep(0)
            return total

        return later()


def test_decide_async_awaits_a_networked_store() -> None:
    engine = Engine(load_scenario_text(RATE_LIMIT), counters=SlowStore(), clock=Clock())
    facts = Facts(session_id="s1", client="192.0.2.1")

    async def run() -> list[int]:
        results = [await engine.decide_async(Stage.MAIL, facts) for _ in range(3)]
        return [r.reply.code if r and r.reply else 250 for r in results]

    assert asyncio.run(run()) == [250, 250, 421]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("per: triplet\n    on: rcpt", "0\x1f192.0.2.1\x1fa@x.test\x1fb@y.test"),
        ("per: sender\n    on: rcpt", "0\x1fa@x.test"),
        ("on: rcpt", "0\x1f"),
    ],
)
def test_counter_keys_are_strings_any_backend_can_hold(text: str, key: str) -> None:
    store = MemoryCounters()
    engine = Engine(load_scenario_text(f"rules:\n  - {text}\n    times: 1\n    reply: 451\n"))
    engine.counters = store
    facts = Facts(session_id="s", client="192.0.2.1", sender="A@x.test", recipient="b@y.test")
    engine.decide(Stage.RCPT, facts)
    assert store.hit(key, 0, limit=5) == 2


def test_open_sessions_count_per_server_client_and_sender() -> None:
    from fakesmtp.counters import OpenSessions
    from fakesmtp.stages import Per

    sessions = OpenSessions()
    a1, a2 = Facts(session_id="1", client="192.0.2.1"), Facts(session_id="2", client="192.0.2.1")
    b = Facts(session_id="3", client="192.0.2.2")
    for facts in (a1, a2, b):
        sessions.opened(facts)
    sessions.opened(a1)  # registering twice counts once
    assert a1.sessions is sessions
    assert (sessions.count(Per.SERVER, b), sessions.count(Per.CLIENT, a1)) == (3, 2)
    a1.sender, b.sender = "Bulk@x.test", "bulk@x.test"
    assert sessions.count(Per.SENDER, b) == 2 and sessions.count(Per.SENDER, a2) == 0
    sessions.closed(a1)
    sessions.closed(a1)  # closing twice counts once
    assert (sessions.count(Per.SERVER, b), sessions.count(Per.CLIENT, a2)) == (2, 1)
    assert sessions.count(Per.SENDER, b) == 1
    sessions.closed(a2)
    sessions.closed(b)
    assert len(sessions) == 0 and sessions.count(Per.CLIENT, a1) == 0


def test_engine_volume_counts_bytes_per_sender_within_the_window() -> None:
    clock = Clock()
    text = (
        "rules:\n  - name: hourly volume\n    on: end_of_data\n    volume: 1KiB\n"
        "    per: sender\n    within: 1h\n    reply: 452 4.3.1 Over the hourly volume\n"
    )
    engine = Engine(load_scenario_text(text), clock=clock)

    def message(sender: str, size: int) -> int:
        facts = Facts(session_id="s", client="c", sender=sender, raw=b"x" * size)
        decision = engine.decide(Stage.END_OF_DATA, facts)
        return decision.reply.code if decision and decision.reply else 250

    assert [message("a@x.test", 400) for _ in range(3)] == [250, 250, 452]  # 1200 > 1024
    assert engine.why_not(Stage.END_OF_DATA, Facts(session_id="s", client="c")) is not None
    assert message("b@x.test", 1000) == 250  # per sender
    clock.now += 3601
    assert message("a@x.test", 1024) == 250  # exactly the volume is still fine
    assert message("a@x.test", 1) == 452
