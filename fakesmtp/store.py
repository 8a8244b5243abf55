"""What the server saw: session transcripts and captured messages, in memory or on disk.

The SMTP side calls the store from the event loop; readers (the fixture, `FakeSMTP`, the API)
may be on other threads, so the shared collections sit behind one small lock. Observers are
called on the event loop thread and must be quick (the console line, API waiters).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the email package is imported when a message is first read, not at start
    from email.message import EmailMessage

from .reply import parse_reply_line

log = logging.getLogger("fakesmtp.store")


def new_id() -> str:
    """A short unique id; also what "queued as" shows."""
    return os.urandom(6).hex().upper()  # as random as uuid4's bits, without importing uuid


@dataclass(slots=True)
class Exchange:
    """One step of a conversation: what the client sent and what the server answered."""

    at: float
    stage: str
    command: str | None  # None for the banner; credentials are masked
    reply: str | None  # None when no reply was sent (drop, reset, hang)
    rule: str | None = None  # the rule that fired, if any
    note: str | None = None  # e.g. "dropped by rule", "internal error"
    # Recorded when the reply is made, so no reader parses them back out of the text.
    code: int | None = None
    status: str | None = None  # the enhanced status as sent (None when the scenario sends none)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "stage": self.stage,
            "command": self.command,
            "reply": self.reply,
            "rule": self.rule,
            "note": self.note,
            "code": self.code,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Exchange:
        names = {f.name for f in dataclass_fields(cls)}
        exchange = cls(**{k: v for k, v in data.items() if k in names})
        if "code" not in data and exchange.reply:  # written before code/status were recorded
            first = parse_reply_line(exchange.reply)
            if first is not None:
                exchange.code, exchange.status = first.code, first.status
        return exchange


@dataclass(slots=True)
class SessionRecord:
    """One SMTP connection, from banner to close, as a transcript."""

    id: str
    client: str
    client_port: int
    listener: str = "smtp"  # "smtp" or "smtps" (implicit TLS)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end: str | None = None  # quit, closed by rule, dropped by rule, client vanished, timeout...
    helo: str | None = None
    tls: bool = False
    user: str | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    exchanges_dropped: int = 0  # cut from the middle of a transcript past its byte limit
    bytes_dropped: int = 0
    cut_at: int | None = None  # where in `exchanges` the cut is: what came before is the start
    kept_bytes: int = 0  # what the kept exchanges cost, roughly, for the store's byte limit

    def to_json(self, transcript: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "client": self.client,
            "client_port": self.client_port,
            "listener": self.listener,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end": self.end,
            "helo": self.helo,
            "tls": self.tls,
            "user": self.user,
            "message_ids": list(self.message_ids),
            "exchange_count": len(self.exchanges) + self.exchanges_dropped,
            "exchanges_dropped": self.exchanges_dropped,
        }
        if self.cut_at is not None:
            # Where the transcript was cut and what went: its start and its end are kept.
            data["cut"] = {
                "after": self.cut_at,
                "exchanges": self.exchanges_dropped,
                "bytes": self.bytes_dropped,
            }
        if transcript:
            data["transcript"] = [exchange.to_json() for exchange in list(self.exchanges)]
        return data

    def __str__(self) -> str:
        """The conversation as a learner reads it (see fakesmtp.transcript)."""
        from .transcript import render  # the renderer reads the catalog: only when asked

        return render(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        exchanges = [Exchange.from_json(item) for item in data.get("transcript", [])]
        fields = {
            k: data[k]
            for k in (
                "id",
                "client",
                "client_port",
                "listener",
                "started_at",
                "ended_at",
                "end",
                "helo",
                "tls",
                "user",
                "message_ids",
                "exchanges_dropped",
            )
            if k in data
        }
        cut = data.get("cut")
        if isinstance(cut, dict):
            fields["cut_at"] = cut.get("after")
            fields["bytes_dropped"] = cut.get("bytes", 0)
        record = cls(exchanges=exchanges, **fields)
        record.kept_bytes = sum(exchange_cost(e) for e in exchanges)
        return record


class CapturedMessage:
    """A message accepted with 250: its envelope and the raw bytes the client sent.

    A message kept by a ``--store`` directory holds only its envelope in memory; ``raw`` reads
    the bytes from its file each time they are asked for.
    """

    __slots__ = (
        "_headers",
        "_path",
        "_raw",
        "_size",
        "_subject",
        "id",
        "mail_from",
        "mail_options",
        "rcpt_options",
        "rcpt_tos",
        "received_at",
        "session_id",
    )

    def __init__(
        self,
        id: str,
        session_id: str,
        mail_from: str,
        rcpt_tos: list[str],
        raw: bytes | None = None,
        received_at: float | None = None,
        mail_options: list[str] | None = None,
        rcpt_options: dict[str, list[str]] | None = None,
        *,
        path: Path | None = None,
        size: int | None = None,
        subject: str | None = None,
    ) -> None:
        self.id = id
        self.session_id = session_id
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self._raw = raw
        self._path = path
        self._size = len(raw) if raw is not None else (size or 0)
        self.received_at = time.time() if received_at is None else received_at
        self.mail_options = mail_options if mail_options is not None else []
        self.rcpt_options = rcpt_options if rcpt_options is not None else {}
        self._headers: Any = None
        self._subject = subject

    def __repr__(self) -> str:
        return (
            f"CapturedMessage(id={self.id!r}, mail_from={self.mail_from!r}, "
            f"rcpt_tos={self.rcpt_tos!r}, size={self.size})"
        )

    @property
    def raw(self) -> bytes:
        """The bytes as the client sent them (after dot-unstuffing)."""
        if self._raw is not None:
            return self._raw
        if self._path is None:
            return b""
        return self._path.read_bytes()

    @property
    def size(self) -> int:
        return self._size

    @property
    def footprint(self) -> int:
        """Roughly what this message costs in memory: its bytes, if held, and its envelope."""
        held = self._size if self._raw is not None else 0
        return held + 512 + sum(len(r) for r in self.rcpt_tos)

    def release(self, path: Path) -> None:
        """Keep the bytes only on disk, at ``path``, from now on."""
        if self._subject is None:
            self._subject = self.subject or ""
        self._path = path
        self._raw = None
        self._headers = None

    @property
    def subject(self) -> str | None:
        """The Subject header, decoded; only the headers are parsed for it."""
        if self._subject is not None:
            return self._subject or None
        if self._headers is None:
            import email.policy
            from email.parser import BytesHeaderParser

            self._headers = BytesHeaderParser(policy=email.policy.default).parsebytes(self.raw)
        value = self._headers.get("subject")
        return None if value is None else str(value)

    @property
    def message(self) -> EmailMessage:
        """The whole message as an ``email.message.EmailMessage``, parsed anew on each use.

        Not kept: a parsed message costs several times its bytes, which the store's memory
        limit would not see.
        """
        return parse_message(self.raw)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "from": self.mail_from,
            "to": list(self.rcpt_tos),
            "subject": self.subject,
            "size": self.size,
            "received_at": self.received_at,
            "mail_options": list(self.mail_options),
            "rcpt_options": {k: list(v) for k, v in self.rcpt_options.items()},
        }


MAX_MIME_CONTAINERS = 100  # multipart parts in one message that the parser is asked to walk


class MessageTooNested(ValueError):
    """A message with more multipart containers than MAX_MIME_CONTAINERS."""


def parse_message(raw: bytes) -> EmailMessage:
    """The whole message as an ``EmailMessage``; ``MessageTooNested`` past the container limit.

    The email package checks every enclosing boundary on every line and recurses once per
    level: a thousand nested multiparts took seconds of the event loop, then raised
    RecursionError. Real mail has a handful; the count is one pass over the bytes.
    """
    containers = raw.lower().count(b"multipart/")
    if containers > MAX_MIME_CONTAINERS:
        raise MessageTooNested(
            f"{containers} multipart parts: more than the {MAX_MIME_CONTAINERS} "
            "fakesmtp parses (the raw message is kept whole)"
        )
    import email.policy

    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def exchange_cost(exchange: Exchange) -> int:
    """What one exchange costs in memory: the object, its strings, the time and a list slot."""
    cost = 160  # the slotted object (~100), its float, its place in the list, the allocator's
    for text in (exchange.command, exchange.reply, exchange.rule, exchange.note, exchange.status):
        if text is not None:
            cost += sys.getsizeof(text)
    return cost


class Budget:
    """Bytes all sessions may hold mid-DATA together (twenty clients parked mid-DATA once held
    600 MB); each body reserves what it keeps and gives it back once read."""

    __slots__ = ("held", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0

    def reserve(self, amount: int) -> bool:
        if self.held + amount > self.size:
            return False
        self.held += amount
        return True

    def release(self, amount: int) -> None:
        self.held = max(0, self.held - amount)


def give_back_memory() -> None:
    """Ask glibc to return freed heap pages to the system (no-op elsewhere).

    Freed messages below malloc's mmap threshold go back to its free lists, not to the
    system, so RSS would stay at its peak after DELETE or reset without this.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


Observer = Callable[[str, Any], None]

MAX_MESSAGES = 10_000
MAX_SESSIONS = 10_000
MAX_MEMORY = 256 * 1024 * 1024
TRANSCRIPT_LIMIT = 64 * 1024  # bytes of transcript kept per session: its start and its end


class MemoryStore:
    """Messages and sessions in memory, bounded by count and by bytes: past either limit the
    oldest are dropped (and counted), so a server left running for days stays the same size.
    """

    def __init__(
        self,
        max_messages: int = MAX_MESSAGES,
        max_sessions: int = MAX_SESSIONS,
        max_memory: int = MAX_MEMORY,
        transcript_limit: int = TRANSCRIPT_LIMIT,
    ) -> None:
        self.max_messages = max_messages
        self.max_sessions = max_sessions
        self.max_memory = max_memory
        self.transcript_limit = transcript_limit
        self.dropped_messages = 0
        self.dropped_sessions = 0
        self._bytes = 0  # footprints of the messages and ended sessions kept
        self._session_bytes = 0  # the ended sessions' share of it
        # Bodies being received come out of the same memory: a quarter of it, shared by all
        # sessions mid-DATA; the messages and transcripts kept get the rest.
        self.bodies = Budget(max_memory // 4)
        self._messages: OrderedDict[str, CapturedMessage] = OrderedDict()
        self._sessions: OrderedDict[str, SessionRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._observers: list[Observer] = []

    # -- observers
    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(kind, item)`` for "session", "exchange", "ended", "message" events
        (and "dropped": a message acknowledged but not kept, with ``--no-capture``)."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def publish(self, kind: str, item: Any) -> None:
        for observer in tuple(self._observers):
            observer(kind, item)

    # -- writing (event loop)
    def open_session(self, record: SessionRecord) -> None:
        with self._lock:
            self._sessions[record.id] = record
            self._evict()
        self.publish("session", record)

    def record(self, session: SessionRecord, exchange: Exchange) -> None:
        # A client looping NOOP for hours must not grow memory without end: past the byte
        # limit the middle of the transcript goes, its start and its latest exchanges stay
        # (observers such as the console still see every exchange).
        cost = exchange_cost(exchange)
        limit = self.transcript_limit
        if session.kept_bytes + cost > limit:
            exchanges = session.exchanges
            if session.cut_at is None:
                head, used = 0, 0
                while head < len(exchanges) and used + exchange_cost(exchanges[head]) <= limit // 2:
                    used += exchange_cost(exchanges[head])
                    head += 1
                session.cut_at = max(head, 1)
            while session.kept_bytes + cost > limit and len(exchanges) > session.cut_at:
                gone = exchanges.pop(session.cut_at)
                gone_cost = exchange_cost(gone)
                session.kept_bytes -= gone_cost
                session.bytes_dropped += gone_cost
                session.exchanges_dropped += 1
        session.exchanges.append(exchange)
        session.kept_bytes += cost
        if self._observers:
            self.publish("exchange", (session, exchange))

    def close_session(self, record: SessionRecord) -> None:
        # Ended, its transcript no longer grows: from now on it counts against the byte limit.
        with self._lock:
            if record.id in self._sessions:
                self._bytes += record.kept_bytes
                self._session_bytes += record.kept_bytes
                self._evict()
        self.publish("ended", record)

    async def save_message(self, message: CapturedMessage, session: SessionRecord) -> None:
        """Keep a message; when this returns, the 250 may be sent."""
        self._remember(message, session)

    def _remember(self, message: CapturedMessage, session: SessionRecord) -> None:
        with self._changed:
            self._messages[message.id] = message
            self._bytes += message.footprint
            session.message_ids.append(message.id)
            self._evict()
            self._changed.notify_all()
        self.publish("message", message)

    def _evict(self) -> None:
        """Drop the oldest messages and ended sessions while over a limit (lock held).

        Transcripts may take half the memory at most, so a flood of chatty sessions pushes
        out older transcripts, not the messages a test is waiting for.
        """
        while len(self._messages) > self.max_messages:
            self._drop_message()
        while len(self._sessions) > self.max_sessions:
            self._drop_session()
        limit = self.max_memory - self.bodies.size
        while self._session_bytes > limit // 2 and self._sessions:
            self._drop_session()
        while self._bytes > limit and self._messages:
            self._drop_message()
        while self._bytes > limit and self._sessions:
            self._drop_session()

    def _drop_message(self) -> None:
        _, message = self._messages.popitem(last=False)
        self._bytes -= message.footprint
        self.dropped_messages += 1
        self.forget_message(message)

    def _drop_session(self) -> None:
        _, record = self._sessions.popitem(last=False)
        if record.ended_at is not None or record.end is not None:
            self._bytes -= record.kept_bytes  # a live one was not counted yet
            self._session_bytes -= record.kept_bytes
        self.dropped_sessions += 1

    def forget_message(self, message: CapturedMessage) -> None:
        """A message left the store (dropped past a limit); a DirStore deletes its files."""

    def usage(self) -> dict[str, Any]:
        """What is kept and what was dropped, against the limits: for the API's health."""
        with self._lock:
            return {
                "messages": len(self._messages),
                "sessions": len(self._sessions),
                "bytes": self._bytes,
                "max_messages": self.max_messages,
                "max_sessions": self.max_sessions,
                "max_memory": self.max_memory,
                "dropped_messages": self.dropped_messages,
                "dropped_sessions": self.dropped_sessions,
            }

    # -- reading (any thread)
    def messages(self) -> list[CapturedMessage]:
        """Oldest first."""
        with self._lock:
            return list(self._messages.values())

    def message(self, message_id: str) -> CapturedMessage | None:
        with self._lock:
            return self._messages.get(message_id)

    def sessions(self) -> list[SessionRecord]:
        with self._lock:
            return list(self._sessions.values())

    def session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._sessions.get(session_id)

    def clear(self, messages: bool = True, sessions: bool = True) -> None:
        with self._lock:
            if messages:
                for message in self._messages.values():
                    self._bytes -= message.footprint
                self._messages.clear()
            if sessions:
                for record in self._sessions.values():
                    if record.ended_at is not None or record.end is not None:
                        self._bytes -= record.kept_bytes
                self._session_bytes = 0
                self._sessions.clear()
        give_back_memory()

    def delete_messages(self, ids: list[str]) -> list[str]:
        """Forget these messages (unknown ids are skipped); returns the ids that were deleted."""
        deleted = []
        with self._lock:
            for message_id in dict.fromkeys(ids):
                message = self._messages.pop(message_id, None)
                if message is not None:
                    self._bytes -= message.footprint
                    deleted.append(message_id)
        give_back_memory()
        return deleted

    def wait_for(self, count: int, timeout: float) -> list[CapturedMessage]:
        """Block this thread until ``count`` messages are stored, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"waited {timeout:g}s for {count} message(s), got {len(self._messages)}"
                    )
                self._changed.wait(remaining)
            return list(self._messages.values())

    async def wait_for_async(
        self,
        count: int,
        timeout: float,
        match: Callable[[CapturedMessage], bool] | None = None,
    ) -> list[CapturedMessage]:
        """On the event loop: wait until ``count`` messages (those ``match`` accepts) are stored.

        The store is scanned once, when the wait begins; after that each new message is tested
        alone, as it arrives (six waits over 10,000 stored messages used to rescan them all for
        every message, and throughput fell from 486 to 18 messages a second). Raises TimeoutError.
        """
        found = [m for m in self.messages() if match is None or match(m)]
        arrived = asyncio.Event()

        def observer(kind: str, item: Any) -> None:
            if kind == "message" and (match is None or match(item)):
                found.append(item)
                if len(found) >= count:
                    arrived.set()

        unsubscribe = self.subscribe(observer)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                if len(found) >= count:
                    # Deleted meanwhile (DELETE, reset, the oldest dropped)? Those do not count.
                    with self._lock:
                        found[:] = [m for m in found if m.id in self._messages]
                    if len(found) >= count:
                        return list(found)
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise TimeoutError(
                        f"waited {timeout:g}s for {count} message(s), got {len(found)}"
                    )
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)
        finally:
            unsubscribe()

    def count(self) -> int:
        with self._lock:
            return len(self._messages)


class StoreError(OSError):
    """The ``--store`` directory cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Retention:
    """``--store-keep``: how much a store directory keeps; the oldest beyond it are deleted."""

    count: int | None = None
    size: int | None = None  # bytes of messages on disk
    age: float | None = None  # seconds

    @classmethod
    def parse(cls, text: str) -> Retention:
        """``5000`` (messages), ``2GiB`` (bytes on disk) or ``7d`` / ``12h`` / ``30m`` (age)."""
        from .patterns import PatternError, parse_duration, parse_size

        text = text.strip()
        if text.isdigit():
            count = int(text)
            if count < 1:
                raise ValueError("keep at least 1 message")
            return cls(count=count)
        if text[-1:] in ("d", "w"):
            number = text[:-1]
            try:
                days = float(number) * (7 if text[-1] == "w" else 1)
            except ValueError:
                raise ValueError(f"{text!r} is not a number of days") from None
            return cls(age=days * 86400)
        with contextlib.suppress(PatternError):
            return (
                cls(age=parse_duration(text)) if text[-1] in "smh" else cls(size=parse_size(text))
            )
        raise ValueError(f"{text!r} is not a count (5000), a size (2GiB) or an age (7d, 12h, 30m)")


def _write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write to a temporary name, fsync, rename: the file is whole or absent after a crash.

    Without ``sync`` the file is still whole or absent after ``kill -9`` (the kernel keeps
    what the process wrote), only not after a power cut. Files are the owner's alone (0600):
    captured mail is nobody else's business on a shared machine.
    """
    # A name of its own per write: two writes of one file never share a temporary.
    temporary = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) or make an existing one ours alone."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours to change: it still works
        path.chmod(0o700)


class DirStore(MemoryStore):
    """A MemoryStore that keeps everything in a directory too, safe across ``kill -9``.

    Layout: ``messages/<id>.eml`` (the raw bytes) beside ``messages/<id>.json`` (envelope),
    ``sessions/<id>.json`` (transcripts). A message is on disk, fsynced, before its 250.
    Memory holds only the envelopes (an index); the bytes are read from disk when asked for.
    ``keep`` bounds the directory: the oldest messages beyond it are deleted.
    """

    def __init__(self, directory: str | Path, keep: Retention | None = None, **limits: Any) -> None:
        super().__init__(**limits)
        self.keep = keep or Retention(count=self.max_messages)
        if self.keep.count is not None:
            self.max_messages = self.keep.count
        self.directory = Path(directory)
        self._message_dir = self.directory / "messages"
        self._session_dir = self.directory / "sessions"
        self._disk_bytes = 0
        try:
            _private_dir(self.directory)
            _private_dir(self._message_dir)
            _private_dir(self._session_dir)
            probe = self.directory / f".probe-{os.urandom(4).hex()}"
            _write_durably(probe, b"", sync=False)
            probe.unlink()
        except OSError as error:
            raise StoreError(
                f"cannot write to the store directory {self.directory}: {error.strerror or error}"
            ) from None
        self._load()

    # -- start-up: index, do not load
    def _load(self) -> None:
        for directory in (self._message_dir, self._session_dir):
            for leftover in directory.glob(".*.tmp"):  # a write cut short: never acknowledged
                leftover.unlink(missing_ok=True)
        index = []
        for meta_path in self._message_dir.glob("*.json"):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                index.append(
                    CapturedMessage(
                        id=str(meta["id"]),
                        session_id=str(meta["session_id"]),
                        mail_from=str(meta["from"]),
                        rcpt_tos=[str(to) for to in meta["to"]],
                        received_at=float(meta["received_at"]),
                        mail_options=list(meta.get("mail_options", [])),
                        rcpt_options=dict(meta.get("rcpt_options", {})),
                        path=meta_path.with_suffix(".eml"),
                        size=int(meta["size"]),
                        subject=meta.get("subject") or "",
                    )
                )
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                # One bad file (edited by hand, another tool's) must not stop the server.
                log.warning("store: skipping %s: %s", meta_path.name, error)
        with self._lock:
            for message in sorted(index, key=lambda m: m.received_at):
                self._messages[message.id] = message
                self._bytes += message.footprint
                self._disk_bytes += message.size
            self._evict()
        self._load_sessions()

    def _load_sessions(self) -> None:
        # Newest first, by the files' times, so only those kept are read at all.
        paths = []
        for path in self._session_dir.glob("*.json"):
            with contextlib.suppress(OSError):
                paths.append((path.stat().st_mtime, path))
        paths.sort(reverse=True)
        budget = self.max_memory // 4  # transcripts may take a quarter of the memory limit
        loaded: list[SessionRecord] = []
        for _, path in paths:
            if len(loaded) >= self.max_sessions or budget <= 0:
                path.unlink(missing_ok=True)  # beyond what the store keeps
                continue
            try:
                record = SessionRecord.from_json(json.loads(path.read_text("utf-8")))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                log.warning("store: skipping %s: %s", path.name, error)
                continue
            if record.end is None:  # it was live when the previous server died
                record.end = "server stopped without closing it (crash or kill)"
            budget -= record.kept_bytes
            loaded.append(record)
        with self._lock:
            for record in sorted(loaded, key=lambda r: r.started_at):
                self._sessions[record.id] = record
                self._bytes += record.kept_bytes
                self._session_bytes += record.kept_bytes
            self._evict()

    # -- writing
    async def save_message(self, message: CapturedMessage, session: SessionRecord) -> None:
        # The transcript as it stands, naming the message: on disk with it, before the 250.
        transcript = session.to_json()
        transcript["message_ids"].append(message.id)
        # fsync takes milliseconds: do it off the loop so other sessions keep being served.
        # Awaited, so one session's writes never overtake each other.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._write_message, message, transcript)
        message.release(self._message_dir / f"{message.id}.eml")
        self._disk_bytes += message.size
        self._remember(message, session)

    def _write_message(self, message: CapturedMessage, transcript: dict[str, Any]) -> None:
        eml = self._message_dir / f"{message.id}.eml"
        meta = self._message_dir / f"{message.id}.json"
        try:
            # The .eml first: a .json is only ever beside a complete .eml.
            _write_durably(eml, message.raw)
            _write_durably(meta, json.dumps(message.to_json()).encode())
            _fsync_dir(self._message_dir)
        except BaseException:
            # The client gets 451: then nothing may be left to reappear after a restart.
            meta.unlink(missing_ok=True)
            eml.unlink(missing_ok=True)
            raise
        # The message is durable: from here on the answer is 250, whatever happens next. The
        # transcript is a record of the session, not of the message: a failure is logged.
        # No fsync, so one message costs three, yet it survives kill -9 (not a power cut).
        path = self._session_dir / f"{transcript['id']}.json"
        try:
            _write_durably(path, json.dumps(transcript).encode(), sync=False)
        except OSError as error:
            log.warning("store: transcript %s not written: %s", transcript["id"], error)

    def close_session(self, record: SessionRecord) -> None:
        super().close_session(record)
        # The session's last write: nothing of it is written after this one, so fire and forget.
        data = json.dumps(record.to_json()).encode()
        path = self._session_dir / f"{record.id}.json"
        try:
            asyncio.get_running_loop().run_in_executor(None, _write_quietly, path, data)
        except RuntimeError:  # no running loop: write now
            _write_quietly(path, data)

    # -- retention
    def _evict(self) -> None:
        super()._evict()
        keep = self.keep
        if keep.size is not None:
            while self._messages and self._disk_bytes > keep.size:
                self._drop_message()
        if keep.age is not None:
            oldest = time.time() - keep.age
            while self._messages and next(iter(self._messages.values())).received_at < oldest:
                self._drop_message()
            while self._sessions and next(iter(self._sessions.values())).started_at < oldest:
                self._drop_session()

    def forget_message(self, message: CapturedMessage) -> None:
        self._disk_bytes -= message.size
        self._unlink_message(message.id)

    def _drop_session(self) -> None:
        record = next(iter(self._sessions.values()))
        super()._drop_session()
        (self._session_dir / f"{record.id}.json").unlink(missing_ok=True)

    def _unlink_message(self, message_id: str) -> None:
        for suffix in (".json", ".eml"):  # the .json first: it is only ever beside an .eml
            (self._message_dir / f"{message_id}{suffix}").unlink(missing_ok=True)

    def usage(self) -> dict[str, Any]:
        usage = super().usage()
        usage["disk_bytes"] = self._disk_bytes
        return usage

    def delete_messages(self, ids: list[str]) -> list[str]:
        with self._lock:
            sizes = {i: self._messages[i].size for i in ids if i in self._messages}
        deleted = super().delete_messages(ids)
        for message_id in deleted:
            self._disk_bytes -= sizes.get(message_id, 0)
            self._unlink_message(message_id)
        return deleted

    def clear(self, messages: bool = True, sessions: bool = True) -> None:
        super().clear(messages, sessions)
        if messages:
            self._disk_bytes = 0
        for wanted, directory in ((messages, self._message_dir), (sessions, self._session_dir)):
            if wanted:
                for path in directory.iterdir():
                    path.unlink(missing_ok=True)


class NoCaptureStore(MemoryStore):
    """``--no-capture``: observers (the console line, /metrics) see everything; nothing is kept.

    For load tests, where keeping every message and transcript would cost memory and time for
    nothing: a message is acknowledged and published as "dropped" (its size counted), not stored.
    """

    def __init__(self) -> None:
        super().__init__(max_messages=0, max_sessions=0)

    def open_session(self, record: SessionRecord) -> None:
        self.publish("session", record)

    async def save_message(self, message: CapturedMessage, session: SessionRecord) -> None:
        self.publish("dropped", message)


def _write_quietly(path: Path, data: bytes) -> None:
    try:
        _write_durably(path, data, sync=False)
    except OSError as error:
        log.warning("store: transcript %s not written: %s", path.stem, error)
