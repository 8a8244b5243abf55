"""What every session of one server shares: the scenario's profile, the store, live sessions.

It sits below the sessions (they hold it) and above nothing of theirs: it knows a live session
only by the few public things it asks of it (``LiveSession``), so there is no import loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from ..counters import CounterStore, OpenSessions
from ..engine import Engine, Facts
from ..scenario import Scenario, collector_paused
from ..store import MemoryStore, SessionRecord
from ..tls import server_context
from .profile import Profile

log = logging.getLogger("fakesmtp")

SHUTDOWN_GRACE = 5.0  # seconds a session mid-command gets to finish before it is cut


class LiveSession(Protocol):
    """What the runtime asks of a connected session."""

    record: SessionRecord | None
    facts: Facts | None
    hanging: bool

    @property
    def idle(self) -> bool:
        """Waiting for the client's next command (nothing of ours under way)."""
        ...

    def say_goodbye(self) -> None:
        """421 4.3.2 and close, now (the server is shutting down)."""
        ...

    def cut(self, reason: str) -> None:
        """End the connection now, without a reply."""
        ...


class Runtime:
    """What every session of one server shares: scenario, engine, store, live sessions."""

    def __init__(
        self,
        scenario: Scenario,
        store: MemoryStore,
        loop: asyncio.AbstractEventLoop,
        *,
        cert: str | None = None,
        key: str | None = None,
        counters: Callable[[Scenario], CounterStore] | None = None,
    ) -> None:
        self.loop = loop
        self.store = store
        self.cert, self.key = cert, key
        self.counters = counters  # where each scenario's engine counts (--state: Redis)
        self.profile = self._profile(scenario)
        # A profile built ahead in a worker thread (prepare), taken by use() for that scenario.
        self._prepared: tuple[Scenario, Profile] | None = None
        self.active: set[LiveSession] = set()
        self.open_sessions = OpenSessions()  # for `concurrent` conditions; outlives swaps
        self.shutting_down = False
        self.errors: list[BaseException] = []
        # Bodies being received count too: a quarter of the store's memory limit for all of
        # them together (64 MiB by default); a body past it is dropped and answered 452.
        self.bodies = store.bodies

    def _profile(self, scenario: Scenario) -> Profile:
        tls = scenario.server.tls
        context = self.tls_context(scenario) if tls.starttls or tls.required else None
        counters = self.counters(scenario) if self.counters is not None else None
        with collector_paused():  # a big rule table is built 4x faster without its walks
            return Profile(scenario, context, counters)

    def tls_context(self, scenario: Scenario) -> ssl.SSLContext:
        """From the command line's certificate, else the scenario's, else a generated one."""
        tls = scenario.server.tls
        cert, key = (self.cert, self.key) if self.cert else (tls.cert, tls.key)
        return server_context(scenario.server.hostname, cert, key)

    @property
    def engine(self) -> Engine:
        """The current scenario's rule engine (counters, random generator)."""
        return self.profile.engine

    @property
    def scenario(self) -> Scenario:
        return self.profile.scenario

    def prepare(self, scenario: Scenario) -> None:
        """Build ``scenario``'s profile now, in any thread, for a later ``use(scenario)``.

        A rule table of 20,000 rules takes ~50 ms of CPU (more on a busy machine); built on
        the loop, every SMTP session waits for it. Nothing here touches the loop's state.
        """
        self._prepared = (scenario, self._profile(scenario))

    def use(self, scenario: Scenario, keep_counts: bool = False) -> None:
        """Swap the scenario (on the loop thread): the next command of every session sees it.

        One assignment swaps settings and rules together; a command already under way keeps
        the profile (and engine) it began with. ``keep_counts``: rules the two scenarios share
        keep their times/after counts (a rule added or removed at run time).
        """
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is scenario:
            profile = prepared[1]
        else:
            profile = self._profile(scenario)  # may build a certificate: before the swap
        if keep_counts:
            profile.engine.keep_counts_of(self.profile.engine)
        self.profile = profile

    def session_opened(self, session: LiveSession) -> bool:
        """Register a session; True when it is over the connection limit."""
        assert session.record is not None
        self.active.add(session)
        self.store.open_session(session.record)
        if session.facts is not None:
            self.open_sessions.opened(session.facts)
        return len(self.active) > self.profile.settings.max_connections

    def session_closed(self, session: LiveSession) -> None:
        self.active.discard(session)
        if session.facts is not None:
            self.open_sessions.closed(session.facts)
        assert session.record is not None
        self.store.close_session(session.record)

    def internal_error(self, session: LiveSession, error: BaseException) -> None:
        """Our own bug: logged once with its traceback, kept for the test to see."""
        log.error(
            "internal error in session %s",
            session.record.id if session.record else "?",
            exc_info=error,
        )
        self.errors.append(error)

    def cut_all(self, reason: str) -> int:
        """End every live connection now, without a reply; returns how many there were."""
        live = list(self.active)
        for session in live:
            session.cut(reason)
        return len(live)

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """421 to idle sessions at once; busy ones finish their command, then get theirs."""
        self.shutting_down = True
        for session in list(self.active):
            if session.idle:
                session.say_goodbye()
            elif session.hanging:  # it will never finish its command
                session.cut("server shutting down")
        deadline = time.monotonic() + grace
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # Grace is over. Those still mid-command (a slow DATA) hear 421 4.3.2 too, rather
        # than a silent cut they would retry as a network error.
        for session in list(self.active):
            if not session.hanging and not session.closing and session.wire.open:
                session.say_goodbye()
        if self.active:
            await asyncio.sleep(0.05)  # for the 421 to leave
        self.cut_all("server shutting down")
