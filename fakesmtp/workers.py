"""``serve --workers N``: N processes answer SMTP on one port; one supervisor holds what they saw.

The design, kept plain on purpose:

- Each worker is a ``fakesmtp`` process with its own listening socket on the same address
  (``SO_REUSEPORT``: the kernel spreads connections over them), its own event loop and engine.
- The supervisor (the process you started) listens for no SMTP. It serves the HTTP API and owns
  the one store, so ``/api/v1/messages``, ``/messages/wait``, sessions and ``--store DIR`` see
  every worker's traffic, as with one process.
- A worker talks to the supervisor over a private socket pair (length-prefixed pickles: both
  ends are our own processes). It reports a session with its first message (or when it ends,
  if it has none) and its transcript when it ends, and hands over each message *before* its
  250: the worker waits for the supervisor's acknowledgement (after the disk write with
  ``--store``), so a message a client saw accepted is already in the API, and a supervisor that
  cannot keep it makes the worker answer 451.
- Scenario swaps and counter resets made through the API are passed on to every worker;
  ``/metrics`` asks every worker for its counts and adds them up.
- Counts that span connections (``times``/``after`` per server, client, sender, recipient or
  triplet) would split between workers: they need ``--state redis://...``, which every worker
  shares, or the server refuses to start, naming the rule. Draws of ``probability`` under a
  ``seed`` follow one sequence, which several processes cannot share: refused with N > 1.
- SIGTERM (or Ctrl-C) to the supervisor stops every worker the usual way (421 to idle clients,
  busy ones finish their command), then the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from .scenario import Rule, Scenario
from .server import FakeSMTP
from .stages import Per
from .store import CapturedMessage, MemoryStore, NoCaptureStore, SessionRecord

log = logging.getLogger("fakesmtp.workers")

READY_TIMEOUT = 60.0  # seconds a worker may take to start (imports, certificate, bind)
_LENGTH = struct.Struct("!I")


class WorkersError(Exception):
    """A reason the workers cannot start or serve exactly (one line, for the CLI)."""

    exit_code = 2  # the command line's to fix: one line, no traceback


# --------------------------------------------------------------------------- which rules can run


def unshareable_rules(scenario: Scenario, shared_state: bool) -> list[tuple[Rule, str]]:
    """Rules whose counts or draws would differ between N workers and one process, and why."""
    found = []
    for rule in scenario.rules:
        volume = getattr(rule, "volume", None) is not None
        counted = rule.times is not None or rule.after or volume
        if counted and rule.per is not Per.CONNECTION and not shared_state:
            per = "the whole server" if rule.per is Per.SERVER else f"each {rule.per}"
            what = "volume" if volume else "times/after"
            found.append((rule, f"counts {what} for {per}, across connections"))
        elif rule.probability is not None and scenario.seed is not None:
            found.append((rule, "draws its probability from the one seeded sequence"))
        elif getattr(rule.match, "concurrent", None) is not None:
            found.append((rule, "counts the sessions open at once"))
    return found


def check_shareable(scenario: Scenario, workers: int, shared_state: bool) -> None:
    """Refuse, naming the rule, what would not be exact across ``workers`` processes."""
    if workers <= 1 and not shared_state:
        return
    problems = unshareable_rules(scenario, shared_state)
    if not problems:
        return
    rule, why = problems[0]
    more = f" (and {len(problems) - 1} more rule(s))" if len(problems) > 1 else ""
    where = "instances sharing --state" if workers <= 1 else f"--workers {workers}"
    fix = (
        "run with --workers 1"
        if shared_state or "seeded" in why or "open at once" in why
        else "share the counts with --state redis://HOST:PORT/DB, or run with --workers 1"
    )
    raise WorkersError(
        f"rule {rule.label!r} ({rule.source}) {why}: with {where} the count would not be "
        f"exact{more}; {fix}"
    )


# --------------------------------------------------------------------------- the channel


class Channel:
    """Frames over a socket pair: 4-byte length, then a pickle. Writes never block the loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # Frames leave together: those someone waits for (a message, an acknowledgement) at
        # the end of this turn of the loop, the others (a session opened or ended) within
        # LATER seconds. Each write wakes the other process, and on a busy machine every
        # wake-up takes a core from the sessions.
        self.outgoing: list[bytes] = []
        self.flush_soon: asyncio.Handle | None = None
        self.flush_later: asyncio.Task[None] | None = None

    @classmethod
    async def over(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    LATER = 0.005  # seconds a frame nobody waits for may wait for company

    def send(self, *frame: Any, waited_for: bool = True) -> None:
        if self.writer.is_closing():
            raise ConnectionError("the other process has gone")
        data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        self.outgoing += (_LENGTH.pack(len(data)), data)
        loop = asyncio.get_running_loop()
        if waited_for:
            if self.flush_soon is None:
                self.flush_soon = loop.call_soon(self._flush)
        elif self.flush_later is None and self.flush_soon is None:
            self.flush_later = loop.create_task(self._flush_after(self.LATER))

    async def _flush_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.flush_later = None
        self._flush()

    def _flush(self) -> None:
        if self.flush_soon is not None:
            self.flush_soon.cancel()
        if self.flush_later is not None:
            self.flush_later.cancel()
        self.flush_soon = self.flush_later = None
        data, self.outgoing = b"".join(self.outgoing), []
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def receive(self) -> tuple[Any, ...] | None:
        """The next frame, or None once the other end has closed."""
        try:
            header = await self.reader.readexactly(_LENGTH.size)
            data = await self.reader.readexactly(_LENGTH.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return pickle.loads(data)

    def close(self) -> None:
        if self.outgoing:
            self._flush()
        self.writer.close()


# --------------------------------------------------------------------------- the worker's side


class RelayStore(MemoryStore):
    """A worker's store: keeps live sessions for their transcripts, hands the rest upstairs."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(max_messages=0, max_sessions=0)
        self.channel = channel
        self.pending: dict[str, asyncio.Future[str | None]] = {}
        self.told: set[str] = set()  # sessions the supervisor holds a record of

    def open_session(self, record: SessionRecord) -> None:
        # Not reported yet: the supervisor first hears of a session with its first message (the
        # record rides in the same frame) or when it ends. One frame fewer per session, and a
        # session that only opens and quits costs the supervisor one frame, not two.
        self.publish("session", record)

    def close_session(self, record: SessionRecord) -> None:
        self.told.discard(record.id)
        with contextlib.suppress(ConnectionError):  # the supervisor left: nobody to tell
            # The record itself: pickling a slotted dataclass is C work, unlike a JSON round trip.
            self.channel.send("ended", record, waited_for=False)
        self.publish("ended", record)

    async def save_message(self, message: CapturedMessage, session: SessionRecord) -> None:
        """The 250 waits for the supervisor to have the message (on disk with ``--store``)."""
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.pending[message.id] = answer
        try:
            # The session's record goes with its first message: the supervisor keeps (and with
            # --store writes) the message with its session, as it stands now.
            first = session.id not in self.told
            self.channel.send("message", _message_data(message), message.raw, first and session)
            self.told.add(session.id)
            error = await answer
        finally:
            self.pending.pop(message.id, None)
        if error is not None:
            raise RuntimeError(f"the supervisor could not keep the message: {error}")
        session.message_ids.append(message.id)
        self.publish("message", message)

    def acknowledged(self, message_id: str, error: str | None) -> None:
        answer = self.pending.get(message_id)
        if answer is not None and not answer.done():
            answer.set_result(error)

    def supervisor_gone(self) -> None:
        for answer in self.pending.values():
            if not answer.done():
                answer.set_result("the supervisor has gone")


def _message_data(message: CapturedMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "session_id": message.session_id,
        "mail_from": message.mail_from,
        "rcpt_tos": list(message.rcpt_tos),
        "received_at": message.received_at,
        "mail_options": list(message.mail_options),
        "rcpt_options": {k: list(v) for k, v in message.rcpt_options.items()},
    }


class LineAtomicStream:
    """The console of a worker: whole lines only, so N workers' lines never cut into each other.

    A write of at most PIPE_BUF bytes to a pipe is atomic; lines are gathered and written in
    such pieces, each ending at a line end, at most every ``every`` seconds.
    """

    LIMIT = 4096  # PIPE_BUF on Linux

    def __init__(self, fd: int, every: float = 0.1) -> None:
        self.fd = fd
        self.every = every
        self.lines: list[bytes] = []
        self.size = 0
        self.flush_at = 0.0
        self._isatty = os.isatty(fd)

    def isatty(self) -> bool:
        return self._isatty

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        if self.size + len(data) > self.LIMIT:
            self.flush()
        self.lines.append(data)
        self.size += len(data)
        now = time.monotonic()
        if now >= self.flush_at:
            self.flush()
            self.flush_at = now + self.every

    def flush(self) -> None:
        if self.lines:
            data, self.lines, self.size = b"".join(self.lines), [], 0
            while data:  # only a line longer than LIMIT itself is ever split
                written = os.write(self.fd, data[: self.LIMIT])
                data = data[written:]


def worker_main(fd: int) -> None:
    """A worker process: ``python -m fakesmtp.workers FD`` (FD: its end of the socket pair)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which says stop
    sock = socket.socket(fileno=fd)
    from .eventloop import loop_factory

    options = _read_options(sock)
    with asyncio.Runner(loop_factory=loop_factory(options.pop("loop"))) as runner:
        runner.run(_serve_worker(sock, options))


def _read_options(sock: socket.socket) -> dict[str, Any]:
    """The first frame, read before the loop starts: what to serve, as the supervisor was told."""
    sock.setblocking(True)
    header = _recv_exactly(sock, _LENGTH.size)
    frame = pickle.loads(_recv_exactly(sock, _LENGTH.unpack(header)[0]))
    assert frame[0] == "options"
    return dict(frame[1])


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SystemExit(0)  # the supervisor went away before we started
        data += chunk
    return data


async def _serve_worker(sock: socket.socket, options: dict[str, Any]) -> None:
    from .scenario import load_scenario_text

    channel = await Channel.over(sock)
    store = RelayStore(channel)
    echo = options.pop("echo")
    console = LineAtomicStream(sys.stdout.fileno()) if echo else False
    scenario = options.pop("scenario")
    if isinstance(scenario, tuple):  # the supervisor's own text, named as it was
        scenario = load_scenario_text(*scenario)
    if not options.pop("capture"):
        store = NoCaptureStore()  # nothing to hand over: the counts go to /metrics
    server = FakeSMTP(scenario, store=store, echo=console, **options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    serving = asyncio.create_task(server.serve_forever(stop))
    while not server.listening:
        if serving.done():
            await serving  # start-up failed: the error is shown, the supervisor sees the exit
            return
        await asyncio.sleep(0.005)
    from .metrics import Metrics

    metrics = Metrics()
    server.store.subscribe(metrics.observe)
    if isinstance(console, LineAtomicStream):  # lines written lately reach a pipe soon too
        flushing = asyncio.create_task(_flush_every(console, console.every))
    channel.send("ready", os.getpid())
    grace = 5.0
    while True:
        frame = await channel.receive()
        if frame is None:  # the supervisor has gone: stop serving
            store.supervisor_gone()
            break
        kind = frame[0]
        if kind == "ack":
            store.acknowledged(frame[1], frame[2])
        elif kind == "metrics":
            channel.send("metrics", frame[1], metrics.snapshot())
        elif kind == "use":
            server.use(load_scenario_text(frame[1], frame[2]))
        elif kind == "reset":
            server.reset(messages=False, sessions=False)
        elif kind == "stop":
            grace = frame[1]
            break
    server.shutdown_grace = grace
    stop.set()
    await serving
    if isinstance(console, LineAtomicStream):
        flushing.cancel()
        console.flush()
    channel.close()


async def _flush_every(console: LineAtomicStream, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        with contextlib.suppress(OSError):
            console.flush()


# --------------------------------------------------------------------------- the supervisor's side


class Worker:
    """The supervisor's handle on one worker process."""

    def __init__(self, index: int, process: subprocess.Popen[bytes], channel: Channel) -> None:
        self.index = index
        self.process = process
        self.channel = channel
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.reading: asyncio.Task[None] | None = None


def spawn(index: int) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start one worker process; returns it and the supervisor's end of its socket pair."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "fakesmtp.workers", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        start_new_session=False,
    )
    theirs.close()
    return process, ours


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` (0: a free one) for the workers, without listening on it.

    The socket is bound with SO_REUSEPORT like the workers' own, so they can bind beside it; as
    it never listens, the kernel hands it no connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(SessionRecord))


class Supervisor(FakeSMTP):
    """``serve --workers N``: starts N worker processes and serves the API over what they see.

    It is a FakeSMTP that opens no SMTP listener of its own: its store, runtime and API are the
    usual ones, fed by the workers through ``Channel``s.
    """

    # Workers receive scenarios as YAML text; a rule added at run time is not sent to them yet.
    supports_added_rules = False

    def __init__(
        self,
        scenario: Any,
        *,
        workers: int,
        state: str | None = None,
        worker_options: dict[str, Any],
        **options: Any,
    ) -> None:
        super().__init__(scenario, echo=False, **options)
        check_shareable(self.initial_scenario, workers, state is not None)
        self.worker_count = workers
        self.state = state
        self.worker_options = worker_options  # lmtp, cert, key, banner, ehlo, echo, loop
        self._scenario_spec = scenario
        self.workers: list[Worker] = []
        self._reserved: list[socket.socket] = []
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._request_ids = itertools.count()
        self._workers_up = False

    async def _listen(self, loop: asyncio.AbstractEventLoop, runtime: Any) -> list[Any]:
        # No SMTP here: hold the ports so that port 0 means one port for all the workers.
        self._reserved.append(reserve_port(self.host, self.port))
        self.port = self._reserved[0].getsockname()[1]
        if self.tls_port is not None:
            self._reserved.append(reserve_port(self.host, self.tls_port))
            self.tls_port = self._reserved[1].getsockname()[1]
        return []

    async def _start_on_loop(self) -> None:
        try:
            await super()._start_on_loop()
            assert self.runtime is not None
            self._watch_swaps(self.runtime)
            if self.metrics is not None:
                self.metrics.refresh = self.gather_metrics
            for index in range(self.worker_count):
                process, sock = spawn(index)
                worker = Worker(index, process, await Channel.over(sock))
                self.workers.append(worker)
                worker.channel.send("options", self._options_for_workers())
                worker.reading = asyncio.create_task(self._read(worker))
            waiting = [asyncio.wait_for(w.ready, READY_TIMEOUT) for w in self.workers]
            await asyncio.gather(*waiting)
        except BaseException:
            await self._stop_workers(0.0)
            for sock in self._reserved:
                sock.close()
            raise
        self._workers_up = True

    @property
    def listening(self) -> bool:
        """True once every worker listens (this process itself listens for no SMTP)."""
        return self._workers_up

    def _options_for_workers(self) -> dict[str, Any]:
        scenario = self._initial_text()
        return {
            "scenario": scenario,
            "host": self.host,
            "port": self.port,
            "tls_port": self.tls_port,
            "reuse_port": True,
            **self.worker_options,
        }

    def _initial_text(self) -> Any:
        """What the workers load: the same text the supervisor loaded (stdin can't be re-read)."""
        spec = self._scenario_spec
        if spec is None:
            return None
        text = self.initial_scenario.text
        return (text, self.initial_scenario.source) if text else spec

    async def _stop_on_loop(self, grace: float = 5.0) -> None:
        self._workers_up = False
        await self._stop_workers(grace)
        await super()._stop_on_loop(grace)
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()

    async def _stop_workers(self, grace: float) -> None:
        """Every worker stops as one server would (421 to idle clients), then exits."""
        for worker in self.workers:
            with contextlib.suppress(ConnectionError):
                worker.channel.send("stop", grace)
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            try:
                await asyncio.wait_for(loop.run_in_executor(None, worker.process.wait), grace + 10)
            except TimeoutError:
                worker.process.kill()
                await loop.run_in_executor(None, worker.process.wait)
            if worker.reading is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(worker.reading, 5)
            worker.channel.close()
        self.workers.clear()

    # ------------------------------------------------------------------ what workers report

    async def _read(self, worker: Worker) -> None:
        store = self.store
        assert store is not None
        while (frame := await worker.channel.receive()) is not None:
            kind = frame[0]
            try:
                if kind == "message":
                    if frame[3] and store.session(frame[3].id) is None:
                        store.open_session(frame[3])  # the session's first message
                    await self._take_message(worker, frame[1], frame[2])
                elif kind == "ended":
                    self._take_ended(frame[1])
                elif kind == "metrics":
                    answer = self._requests.pop(frame[1], None)
                    if answer is not None and not answer.done():
                        answer.set_result(frame[2])
                elif kind == "ready":
                    worker.ready.set_result(frame[1])
            except Exception as error:  # our bug: said once, and the worker keeps being heard
                log.exception("worker %d: %s report not taken", worker.index + 1, kind)
                if self.runtime is not None:
                    self.runtime.errors.append(error)
        if not worker.ready.done():
            code = await asyncio.get_running_loop().run_in_executor(None, worker.process.wait)
            worker.ready.set_exception(
                WorkersError(f"worker {worker.index + 1} exited with status {code} at start-up")
            )

    async def _take_message(self, worker: Worker, data: dict[str, Any], raw: bytes) -> None:
        store = self.store
        assert store is not None
        error = None
        try:
            message = CapturedMessage(raw=raw, **data)
            record = store.session(message.session_id)
            if record is None:  # already dropped past the store's limit: keep the message
                record = SessionRecord(id=message.session_id, client="", client_port=0)
            await store.save_message(message, record)
        except Exception as failure:  # the worker answers 451: nothing unkept gets a 250
            error = f"{type(failure).__name__}: {failure}"
        with contextlib.suppress(ConnectionError):
            worker.channel.send("ack", data["id"], error)

    def _take_ended(self, final: SessionRecord) -> None:
        store = self.store
        assert store is not None
        record = store.session(final.id)
        if record is None:
            store.open_session(final)
            record = final
        else:  # the same object the API already lists, now complete
            for name in _RECORD_FIELDS:
                setattr(record, name, getattr(final, name))
        store.close_session(record)

    async def gather_metrics(self) -> None:
        """Before a scrape: every worker's counts, fresh (a worker that does not answer within
        a second keeps its previous ones)."""
        assert self.metrics is not None
        loop = asyncio.get_running_loop()
        asked = []
        for worker in self.workers:
            request = next(self._request_ids)
            answer: asyncio.Future[Any] = loop.create_future()
            self._requests[request] = answer
            with contextlib.suppress(ConnectionError):
                worker.channel.send("metrics", request)
            asked.append((worker, request, answer))
        for worker, request, answer in asked:
            try:
                snapshot = await asyncio.wait_for(answer, 1.0)
            except TimeoutError:
                self._requests.pop(request, None)
                continue
            self.metrics.merge(worker.index, snapshot)

    # ------------------------------------------------------------------ changes from the API

    def _watch_swaps(self, runtime: Any) -> None:
        """Scenario swaps made through the API reach every worker.

        The API swaps by calling ``runtime.use``; this supervisor's runtime passes the new
        scenario on (as YAML text: compiled rules do not pickle) after checking it can be served
        exactly by several workers.
        """
        swap = runtime.use

        def use(scenario: Scenario) -> None:
            try:
                check_shareable(scenario, self.worker_count, self.state is not None)
            except WorkersError as error:
                raise ValueError(str(error)) from None
            if not scenario.text:
                raise ValueError("with --workers, a scenario must be given as YAML")
            swap(scenario)
            for worker in self.workers:
                with contextlib.suppress(ConnectionError):
                    worker.channel.send("use", scenario.text, scenario.source)

        runtime.use = use

    def reset(self, messages: bool = True, sessions: bool = True) -> None:
        super().reset(messages, sessions)
        for worker in self.workers:
            with contextlib.suppress(ConnectionError):
                worker.channel.send("reset")


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
