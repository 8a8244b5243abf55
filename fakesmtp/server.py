"""Running a server: listeners, the shared runtime, and ``FakeSMTP`` for tests and scripts.

One asyncio loop carries the SMTP listener(s) and the HTTP API, so swapping the scenario or
resetting counters happens between commands and needs no locks. ``FakeSMTP`` runs that loop in
a background thread (``with FakeSMTP() as smtp:``) or on the caller's loop (``async with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from .access import ApiAccess
from .scenario import (
    Rule,
    Scenario,
    caller,
    load_rule_data,
    load_rule_text,
    load_scenario,
    quick_rule,
    with_rules_first,
)
from .session.lmtp import LMTPSession
from .session.runtime import SHUTDOWN_GRACE, Runtime
from .session.smtp import ScenarioSMTP
from .stages import Stage
from .store import (
    MAX_MEMORY,
    MAX_MESSAGES,
    MAX_SESSIONS,
    CapturedMessage,
    DirStore,
    Exchange,
    MemoryStore,
    Retention,
    SessionRecord,
)

log = logging.getLogger("fakesmtp")

LISTEN_BACKLOG = 1024  # asyncio's default of 100 leaves a burst of clients without a banner

ScenarioSpec = Scenario | Mapping[str, Any] | str | Path | None


class ConsoleLine:
    """One line per exchange on the console: cheap to skip (--quiet), one write per line.

    ``each="session"`` writes one line per session instead, when it ends: what a service
    container left running for hours should log.
    """

    def __init__(self, stream: TextIO | None = None, each: str = "exchange") -> None:
        self.stream = stream or sys.stdout
        self.per_session = each == "session"
        self.broken = False
        # Asked once: a terminal gets each line at once, a pipe or file is written in blocks.
        try:
            self.interactive = self.stream.isatty()
        except (AttributeError, ValueError):
            self.interactive = False

    def __call__(self, kind: str, item: Any) -> None:
        # Called while a reply is being sent: a console that fails (`fakesmtp serve | head`,
        # a closed stdout, a non-UTF-8 locale) must never turn into an SMTP error.
        if self.broken:
            return
        try:
            self._write(kind, item)
        except UnicodeError:
            pass  # this one line cannot be shown in the console's encoding
        except (OSError, ValueError):
            self.broken = True

    def _write(self, kind: str, item: Any) -> None:
        if self.per_session:
            if kind != "ended":
                return
            self.stream.write(self.summary(item) + "\n")
        elif kind == "exchange":
            session, exchange = item
            self.stream.write(self.format(session, exchange) + "\n")
        elif kind == "ended":
            self.stream.write(f"{_clock(item.ended_at)} [{item.id}] session ended: {item.end}\n")
        elif kind == "message":
            self.stream.write(
                f"{_clock(item.received_at)} [{item.session_id}] message "
                f"{item.id} captured: {item.mail_from} -> "
                f"{', '.join(item.rcpt_tos)}, {item.size} bytes\n"
            )
        else:
            return
        if self.interactive:
            self.stream.flush()

    @staticmethod
    def summary(session: SessionRecord) -> str:
        """One line for a whole session: who, how many exchanges and messages, the last reply."""
        count = len(session.exchanges) + session.exchanges_dropped
        last = next((e.reply for e in reversed(session.exchanges) if e.reply), None)
        last_reply = f", last reply {last.splitlines()[-1][:60]!r}" if last else ""
        return (
            f"{_clock(session.ended_at)} [{session.id}] {session.client} "
            f"helo={session.helo or '-'}: {count} exchange(s), "
            f"{len(session.message_ids)} message(s){last_reply}; ended: {session.end}"
        )

    @staticmethod
    def format(session: SessionRecord, exchange: Exchange) -> str:
        command = exchange.command if exchange.command is not None else f"({exchange.stage})"
        reply = exchange.reply.replace("\r\n", " | ") if exchange.reply else f"({exchange.note})"
        rule = f"  [rule: {exchange.rule}]" if exchange.rule else ""
        return f"{_clock(exchange.at)} [{session.id}] {session.client} {command} -> {reply}{rule}"


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    # Formatting local time is the console line's dearest part: once per second is enough.
    return time.strftime("%H:%M:%S", time.localtime(second))


def _clock(at: float | None) -> str:
    at = at or time.time()
    return f"{_second(int(at))}.{int(at % 1 * 1000):03d}"


class FakeSMTP:
    """A fake SMTP server that answers as a scenario says, and keeps what it receives.

    Use it as a context manager, in a background thread::

        with FakeSMTP(scenario="unknown-recipient") as smtp:
            send_mail_with_my_app(host=smtp.host, port=smtp.port)
            assert smtp.messages[0].rcpt_tos == ["bob@example.test"]

    or on a running event loop with ``async with FakeSMTP() as smtp:``.

    ``scenario`` is a built-in name, a file path, YAML text, a dict, a ``Scenario``, or None for
    the default scenario (accept everything; ``rcpt-550@x`` asks RCPT to answer 550).
    ``port=0`` picks a free port; read it back from ``.port``. ``api_port`` starts the HTTP API
    too (0 = a free port). ``store`` is a directory to keep messages in across restarts.
    What is kept is bounded: ``max_messages`` and ``max_memory`` (bytes) in memory, the oldest
    dropped first; ``store_keep`` (``"5000"``, ``"2GiB"``, ``"7d"``) for the directory.
    ``lmtp=True`` speaks LMTP (RFC 2033) instead: LHLO, and one reply per recipient.
    ``loop="uvloop"`` runs the background thread's loop on uvloop (``"auto"``: when installed).
    ``state="redis://host:port/db"`` keeps times/after counts in Redis, shared with every other
    server given the same state and scenario.
    ``api_token`` makes every API route ask for ``Authorization: Bearer TOKEN``;
    ``api_allow_hosts`` adds host names the API answers to (besides localhost and its addresses).
    """

    def __init__(
        self,
        scenario: ScenarioSpec = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_port: int | None = None,
        api_port: int | None = None,
        api_host: str | None = None,
        store: str | Path | MemoryStore | None = None,
        cert: str | None = None,
        key: str | None = None,
        banner: str | int | None = None,
        ehlo: str | int | None = None,
        echo: bool | TextIO = False,
        echo_each: str = "exchange",
        max_messages: int = MAX_MESSAGES,
        max_sessions: int = MAX_SESSIONS,
        max_memory: int = MAX_MEMORY,
        store_keep: str | Retention | None = None,
        lmtp: bool = False,
        loop: str = "asyncio",
        reuse_port: bool = False,
        state: str | None = None,
        api_token: str | None = None,
        api_allow_hosts: tuple[str, ...] | list[str] = (),
    ) -> None:
        overrides = []
        if banner is not None:
            overrides.append(quick_rule(Stage.CONNECT, banner, name="--banner"))
        if ehlo is not None:
            overrides.append(quick_rule(Stage.HELO, ehlo, name="--ehlo"))
            overrides.append(quick_rule(Stage.EHLO, ehlo, name="--ehlo"))
        self._overrides = tuple(overrides)
        # Rules added at run time (on(), add_rule(), the API), by id, tried right after the
        # overrides and before the scenario's own; use() starts over.
        self._added: dict[str, Rule] = {}
        self._rule_ids = itertools.count(1)
        self._initial = self._load(scenario)
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.api_port = api_port
        self.api_host = api_host or host
        # Host names, token, readable directories: see access.py. The token is kept only here.
        self.api_access = ApiAccess.build(
            token=api_token,
            allow_hosts=api_allow_hosts,
            bound_host=self.api_host,
            files=(self._initial.source, cert, key),
        )
        self._store_dir = store
        # Bounds of what is kept: count and bytes in memory, retention on disk (store.py).
        self._limits = {
            "max_messages": max_messages,
            "max_sessions": max_sessions,
            "max_memory": max_memory,
        }
        if isinstance(store_keep, str):
            store_keep = Retention.parse(store_keep)
        self._store_keep = store_keep
        self.lmtp = lmtp
        self._loop_kind = loop
        self.reuse_port = reuse_port  # SO_REUSEPORT: --workers' processes share the port
        self.state = state
        self._shared: Any = None  # the Redis connection, with --state
        self.shutdown_grace = SHUTDOWN_GRACE  # what serve_forever() gives busy sessions
        self._cert, self._key = cert, key
        self._echo = echo
        self._echo_each = echo_each
        self.store: MemoryStore | None = None
        self.runtime: Runtime | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._api: Any = None
        self.metrics: Any = None  # a metrics.Metrics while the API runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    def _load(self, scenario: ScenarioSpec) -> Scenario:
        loaded = load_scenario(scenario)
        overrides = self._overrides
        # A scenario taken from this server (``use(smtp.scenario)``) has them already.
        if not overrides or loaded.rules[: len(overrides)] == overrides:
            return loaded
        return with_rules_first(loaded, overrides)

    # ------------------------------------------------------------------ running

    async def _start_on_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if isinstance(self._store_dir, MemoryStore):  # a store made by the caller (--workers)
            self.store = self._store_dir
        elif self._store_dir is not None:
            self.store = DirStore(self._store_dir, keep=self._store_keep, **self._limits)
        else:
            self.store = MemoryStore(**self._limits)
        counters = None
        if self.state is not None:
            from .redis_counters import RedisConnection

            self._shared = RedisConnection(self.state)
            await self._shared.check()
            counters = self._shared.counters_for
        self.runtime = Runtime(
            self._initial, self.store, loop, cert=self._cert, key=self._key, counters=counters
        )
        if self._echo:
            stream = self._echo if not isinstance(self._echo, bool) else None
            self.store.subscribe(ConsoleLine(stream, self._echo_each))
        # Listeners join self._servers only once all are up: `serve` prints its first line (the
        # ports, the API's included) when it sees them, so they must be final by then.
        servers: list[asyncio.base_events.Server] = []
        try:
            servers = await self._listen(loop, self.runtime)
            if self.api_port is not None:
                from .metrics import Metrics

                self.metrics = Metrics()  # counted from now on, shown on the API's /metrics
                if servers:  # (--workers: the workers count, this process adds their counts up)
                    self.store.subscribe(self.metrics.observe)
                # aiohttp takes longer to import than all of the rest: import it in a thread,
                # while this loop already greets SMTP clients (start-up is "ready" sooner).
                api = await loop.run_in_executor(None, importlib.import_module, "fakesmtp.api")
                start_api = api.start_api

                self._api, self.api_port = await start_api(self, self.api_host, self.api_port)
        except BaseException:
            for bound in servers:  # free what was bound before the failure
                bound.close()
            raise
        self._servers.extend(servers)

    async def _listen(
        self, loop: asyncio.AbstractEventLoop, runtime: Runtime
    ) -> list[asyncio.base_events.Server]:
        """The SMTP listener (and the SMTPS one), serving as soon as they are bound."""
        session_class = LMTPSession if self.lmtp else ScenarioSMTP
        servers: list[asyncio.base_events.Server] = []
        try:
            server = await loop.create_server(
                session_class.listener(runtime),
                self.host,
                self.port,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
                reuse_port=self.reuse_port,
            )
            servers.append(server)
            self.port = server.sockets[0].getsockname()[1]
            if self.tls_port is not None:
                context = runtime.tls_context(runtime.scenario)
                tls_server = await loop.create_server(
                    session_class.listener(runtime, implicit_tls=True),
                    self.host,
                    self.tls_port,
                    ssl=context,
                    backlog=LISTEN_BACKLOG,
                    reuse_address=True,
                    reuse_port=self.reuse_port,
                )
                servers.append(tls_server)
                self.tls_port = tls_server.sockets[0].getsockname()[1]
        except BaseException:
            for bound in servers:
                bound.close()
            raise
        return servers

    async def _stop_on_loop(self, grace: float = SHUTDOWN_GRACE) -> None:
        for server in self._servers:
            server.close()
        if self.runtime is not None:
            await self.runtime.shutdown(grace)
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        if self._api is not None:
            await self._api.cleanup()
            self._api = None
        if self._shared is not None:
            await self._shared.close()
            self._shared = None

    def start(self) -> FakeSMTP:
        """Start in a background thread; returns once the listeners accept connections."""
        from .eventloop import loop_factory

        ready = threading.Event()
        new_loop = loop_factory(self._loop_kind)

        def run() -> None:
            loop = new_loop()
            asyncio.set_event_loop(loop)
            self._stopped = asyncio.Event()
            try:
                loop.run_until_complete(self._start_on_loop())
            except BaseException as error:  # reported to the thread that called start()
                self._startup_error = error
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_until_complete(self._stopped.wait())
            loop.run_until_complete(self._stop_on_loop(self._grace))
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

        self._grace = SHUTDOWN_GRACE
        self._thread = threading.Thread(target=run, name="fakesmtp", daemon=True)
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            error, self._startup_error = self._startup_error, None
            self._thread.join()
            raise error
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop the background server: connected clients get 421 4.3.2, then it closes."""
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        self._grace = grace
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> FakeSMTP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeSMTP:
        await self._start_on_loop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_on_loop(1.0)

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Serve on the current loop until ``stop`` is set (the CLI's foreground mode)."""
        await self._start_on_loop()
        try:
            await stop.wait()
        finally:
            await self._stop_on_loop(self.shutdown_grace)

    # ------------------------------------------------------------------ inspecting

    @property
    def listening(self) -> bool:
        """True once every listener accepts connections (and until stop)."""
        return bool(self._servers)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def scenario(self) -> Scenario:
        """The scenario in force."""
        return self.runtime.scenario if self.runtime is not None else self._initial

    @property
    def initial_scenario(self) -> Scenario:
        """The scenario the server started with: what the API's reset can go back to."""
        return self._initial

    @property
    def messages(self) -> list[CapturedMessage]:
        """Messages accepted with 250, oldest first."""
        return self.store.messages() if self.store is not None else []

    @property
    def sessions(self) -> list[SessionRecord]:
        """Every session's transcript, oldest first."""
        return self.store.sessions() if self.store is not None else []

    def transcript(self) -> str:
        """Every session so far as a learner reads it: commands, replies, rules, meanings."""
        from .transcript import render_all

        return render_all(session.to_json() for session in self.sessions)

    @property
    def errors(self) -> list[BaseException]:
        """Internal errors (our bugs) met while serving; the pytest fixture fails on them."""
        return list(self.runtime.errors) if self.runtime is not None else []

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[CapturedMessage]:
        """Block until ``count`` messages have been captured; raise TimeoutError otherwise.

        In async code (``async with FakeSMTP()``) use ``await wait_for_async(...)``: blocking
        the loop the server runs on would keep every message out.
        """
        if self.store is None:
            raise RuntimeError("the server is not running")
        if self._on_server_loop():
            raise RuntimeError(
                "wait_for() would block the loop the server runs on; "
                "use `await smtp.wait_for_async(count, timeout)` in async code"
            )
        return self.store.wait_for(count, timeout)

    async def wait_for_async(self, count: int = 1, timeout: float = 5.0) -> list[CapturedMessage]:
        """``wait_for`` for async code on the server's own loop (``async with FakeSMTP()``)."""
        if self.store is None:
            raise RuntimeError("the server is not running")
        return await self.store.wait_for_async(count, timeout)

    def wait_for_sessions(self, count: int = 1, timeout: float = 5.0) -> list[SessionRecord]:
        """Block until ``count`` sessions have ended (their transcripts are complete)."""
        deadline = time.monotonic() + timeout
        while True:
            ended = [s for s in self.sessions if s.ended_at is not None]
            if len(ended) >= count:
                return ended
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {timeout:g}s for {count} ended session(s), got {len(ended)}"
                )
            time.sleep(0.01)

    # ------------------------------------------------------------------ changing

    def _on_server_loop(self) -> bool:
        """True when called from the server's own event loop (async mode, or the API)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def disconnect(self) -> int:
        """Cut every live SMTP connection at once, without a reply; returns how many.

        The pytest fixture calls it between tests, so no connection crosses into the next one.
        """
        runtime = self.runtime
        if runtime is None:
            return 0

        return self._on_loop(lambda: runtime.cut_all("cut by FakeSMTP.disconnect()"))

    def _on_loop(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the server's loop and return its result (from any thread)."""
        loop = self._loop
        if loop is None:
            return function()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return function()
        future: Any = asyncio.run_coroutine_threadsafe(_call(function), loop)
        return future.result(timeout=10)

    def use(self, scenario: ScenarioSpec) -> Scenario:
        """Swap the scenario now; raises ScenarioError (and keeps the old one) when invalid."""
        loaded = self._load(scenario)
        self._added = {}
        if self.runtime is None:
            self._initial = loaded
        else:
            runtime = self.runtime
            self._on_loop(lambda: runtime.use(loaded))
        return loaded

    def prepare(self, scenario: Scenario) -> Scenario:
        """The scenario ``use()`` would swap in, its rule table built here: call it from a
        worker thread, then ``use()`` the result on the loop (the API's PUT does), so the loop
        only swaps. Raises as ``use()`` would for a certificate it cannot load."""
        loaded = self._load(scenario)
        if self.runtime is not None:
            self.runtime.prepare(loaded)
        return loaded

    def on(self, stage: str, **options: Any) -> RuleBuilder:
        """Add a rule from Python, the same as one written in YAML::

            smtp.on("rcpt", to="*@full.test").reply("452 4.2.2 Mailbox full")
            smtp.on("mail", from_="*@spammer.test", times=1).reply(451)
            smtp.on("end_of_data", subject="*invoice*").drop()
            smtp.on("data").delay("40s")

        Keyword arguments are the rule's ``match`` keys (``from_`` for ``from``) and its
        ``times``, ``after``, ``per``, ``within``, ``volume``, ``probability`` and ``name``. Rules
        added this way are tried before the scenario's own, in the order they were added;
        ``use()`` starts over. Mistakes raise ScenarioError, as in a file.
        """
        return RuleBuilder(self, stage, options)

    # Whether rules can be added at run time (not yet with --workers: see workers.Supervisor).
    supports_added_rules = True

    def add_rule(self, rule: Rule | Mapping[str, Any] | str) -> str:
        """Add one rule at run time, tried before the scenario's own; returns its id.

        ``rule`` is a ``Rule``, a dict, or YAML/JSON text of one scenario rule, validated as in a
        file (ScenarioError otherwise). Rules added earlier are tried first. The other rules keep
        their counts, so ``times: 1`` means "the next one fails"::

            rule_id = smtp.add_rule({"on": "end_of_data", "times": 1, "reply": 451})
        """
        if isinstance(rule, str):
            rule = load_rule_text(rule, "<rule>")
        elif not isinstance(rule, Rule):
            rule = load_rule_data(rule)
        rule_id = str(next(self._rule_ids))
        self._change_added({**self._added, rule_id: rule})
        return rule_id

    def added_rules(self) -> dict[str, Rule]:
        """The rules added at run time, by id, in the order they are tried."""
        return dict(self._added)

    def remove_rule(self, rule_id: str) -> Rule:
        """Take out one added rule; KeyError when there is none with this id."""
        remaining = dict(self._added)
        rule = remaining.pop(rule_id)
        self._change_added(remaining)
        return rule

    def _change_added(self, added: dict[str, Rule]) -> None:
        if not self.supports_added_rules:
            raise NotImplementedError(
                "rules cannot be added or removed at run time with --workers yet: "
                "put them in the scenario (PUT /api/v1/scenario)"
            )
        current = self.scenario
        first = len(self._overrides)
        own = current.rules[first + len(self._added) :]
        changed = replace(current, rules=(*current.rules[:first], *added.values(), *own))
        if self.runtime is None:
            self._initial = changed
        else:
            runtime = self.runtime
            self._on_loop(lambda: runtime.use(changed, keep_counts=True))
        self._added = added

    def reset(self, messages: bool = True, sessions: bool = True) -> None:
        """Forget counters (times/after, the random generator) and, by default, what was stored."""
        if self.runtime is not None:
            runtime = self.runtime
            self._on_loop(runtime.engine.reset)
            runtime.errors.clear()
        if self.store is not None:
            self.store.clear(messages=messages, sessions=sessions)


async def _call(function: Callable[[], Any]) -> Any:
    return function()


_RULE_OPTIONS = frozenset({"times", "after", "per", "within", "volume", "probability", "name"})


class RuleBuilder:
    """``FakeSMTP.on(...)``'s second half: say what the rule does, and it is in force."""

    def __init__(self, server: FakeSMTP, stage: str, options: dict[str, Any]) -> None:
        self._server = server
        self._source = caller()  # the on() line: errors and transcripts point there
        self._rule: dict[str, Any] = {"on": stage}
        match = {}
        for key, value in options.items():
            if key in _RULE_OPTIONS:
                self._rule[key] = value
            else:
                match["from" if key == "from_" else key] = value
        if match:
            self._rule["match"] = match

    def _add(self, **then: Any) -> Rule:
        rule = load_rule_data({**self._rule, **then}, self._source)
        self._server.add_rule(rule)
        return rule

    def reply(self, reply: str | int | dict[str, Any], *, delay: str | float | None = None,
              close: bool = False) -> Rule:  # fmt: skip
        """Answer with this reply (``"550 5.1.1 text"``, a code, or ``{code, status, text}``)."""
        then: dict[str, Any] = {"reply": reply}
        if delay is not None:
            then["delay"] = delay
        if close:
            then["action"] = "close"
        return self._add(**then)

    def delay(self, delay: str | float) -> Rule:
        """Give the normal reply, late (``"2s"``, ``"500ms"``, or seconds)."""
        return self._add(delay=delay)

    def drop(self) -> Rule:
        """Close the connection without replying."""
        return self._add(action="drop")

    def reset(self) -> Rule:
        """Send a TCP reset, without replying."""
        return self._add(action="reset")

    def hang(self) -> Rule:
        """Never reply; the idle timeout ends the session."""
        return self._add(action="hang")
