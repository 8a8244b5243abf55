"""What the server saw: session transcripts and captured messages, in memory or on disk.

The SMTP side calls the store from the event loop; readers (the fixture, `FakeSMTP`, the API)
may be on other threads, so the shared collections sit behind one small lock. Observers are
called on the event loop thread and must be quick (the console line, API waiters).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from .reply import parse_reply_line


def new_id() -> str:
    """A short unique id; also what "queued as" shows."""
    return uuid.uuid4().hex[:12].upper()


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
    exchanges_dropped: int = 0  # past MAX_EXCHANGES_PER_SESSION

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
        return cls(exchanges=exchanges, **fields)


@dataclass(slots=True, eq=False)
class CapturedMessage:
    """A message accepted with 250: its envelope and the raw bytes the client sent."""

    id: str
    session_id: str
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    received_at: float = field(default_factory=time.time)
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: dict[str, list[str]] = field(default_factory=dict)
    _headers: Any = None
    _message: EmailMessage | None = None

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def subject(self) -> str | None:
        """The Subject header, decoded; only the headers are parsed for it."""
        if self._headers is None:
            self._headers = BytesHeaderParser(policy=email.policy.default).parsebytes(self.raw)
        value = self._headers.get("subject")
        return None if value is None else str(value)

    @property
    def message(self) -> EmailMessage:
        """The whole message as an ``email.message.EmailMessage``, parsed on first use."""
        if self._message is None:
            self._message = email.message_from_bytes(  # type: ignore[assignment]
                self.raw, policy=email.policy.default
            )
        return self._message  # type: ignore[return-value]

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


Observer = Callable[[str, Any], None]

MAX_EXCHANGES_PER_SESSION = 10_000


class MemoryStore:
    """Messages and sessions in memory, bounded: past the limit the oldest are dropped."""

    def __init__(self, max_messages: int = 10_000, max_sessions: int = 10_000) -> None:
        self.max_messages = max_messages
        self.max_sessions = max_sessions
        self._messages: OrderedDict[str, CapturedMessage] = OrderedDict()
        self._sessions: OrderedDict[str, SessionRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._observers: list[Observer] = []

    # -- observers
    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(kind, item)`` for "session", "exchange", "ended", "message" events."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def publish(self, kind: str, item: Any) -> None:
        for observer in tuple(self._observers):
            observer(kind, item)

    # -- writing (event loop)
    def open_session(self, record: SessionRecord) -> None:
        with self._lock:
            self._sessions[record.id] = record
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self.publish("session", record)

    def record(self, session: SessionRecord, exchange: Exchange) -> None:
        # A client looping NOOP for hours must not grow memory without end: past the limit,
        # exchanges are counted, not kept (observers such as the console still see them).
        if len(session.exchanges) < MAX_EXCHANGES_PER_SESSION:
            session.exchanges.append(exchange)
        else:
            session.exchanges_dropped += 1
        if self._observers:
            self.publish("exchange", (session, exchange))

    def close_session(self, record: SessionRecord) -> None:
        self.publish("ended", record)

    async def save_message(self, message: CapturedMessage, session: SessionRecord) -> None:
        """Keep a message; when this returns, the 250 may be sent."""
        self._remember(message, session)

    def _remember(self, message: CapturedMessage, session: SessionRecord) -> None:
        with self._changed:
            self._messages[message.id] = message
            session.message_ids.append(message.id)
            while len(self._messages) > self.max_messages:
                self._messages.popitem(last=False)
            self._changed.notify_all()
        self.publish("message", message)

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
                self._messages.clear()
            if sessions:
                self._sessions.clear()

    def delete_messages(self, ids: list[str]) -> list[str]:
        """Forget these messages (unknown ids are skipped); returns the ids that were deleted."""
        with self._lock:
            return [i for i in dict.fromkeys(ids) if self._messages.pop(i, None) is not None]

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


def _write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write to a temporary name, fsync, rename: the file is whole or absent after a crash.

    Without ``sync`` the file is still whole or absent after ``kill -9`` (the kernel keeps
    what the process wrote), only not after a power cut.
    """
    # A name of its own per write: two writes of one file never share a temporary.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirStore(MemoryStore):
    """A MemoryStore that also keeps everything in a directory, safe across ``kill -9``.

    Layout: ``messages/<id>.eml`` (the raw bytes) beside ``messages/<id>.json`` (envelope),
    ``sessions/<id>.json`` (transcripts). A message is on disk, fsynced, before its 250.
    """

    def __init__(self, directory: str | Path, **limits: int) -> None:
        super().__init__(**limits)
        self.directory = Path(directory)
        self._message_dir = self.directory / "messages"
        self._session_dir = self.directory / "sessions"
        self._message_dir.mkdir(parents=True, exist_ok=True)
        self._session_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        for directory in (self._message_dir, self._session_dir):
            for leftover in directory.glob(".*.tmp"):  # a write cut short: never acknowledged
                leftover.unlink(missing_ok=True)
        loaded = []
        for meta_path in self._message_dir.glob("*.json"):
            eml_path = meta_path.with_suffix(".eml")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                raw = eml_path.read_bytes()
            except (OSError, ValueError):
                continue  # a write cut short by a crash: it was never acknowledged
            loaded.append(
                CapturedMessage(
                    id=meta["id"],
                    session_id=meta["session_id"],
                    mail_from=meta["from"],
                    rcpt_tos=meta["to"],
                    raw=raw,
                    received_at=meta["received_at"],
                    mail_options=meta.get("mail_options", []),
                    rcpt_options=meta.get("rcpt_options", {}),
                )
            )
        # The disk keeps everything; memory keeps the newest, as while serving.
        for message in sorted(loaded, key=lambda m: m.received_at)[-self.max_messages :]:
            self._messages[message.id] = message
        sessions = []
        for path in self._session_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                sessions.append(SessionRecord.from_json(json.loads(path.read_text("utf-8"))))
        for record in sorted(sessions, key=lambda s: s.started_at)[-self.max_sessions :]:
            if record.end is None:  # it was live when the previous server died
                record.end = "server stopped without closing it (crash or kill)"
            self._sessions[record.id] = record

    async def save_message(self, message: CapturedMessage, session: SessionRecord) -> None:
        # The transcript as it stands, naming the message: on disk with it, before the 250.
        transcript = session.to_json()
        transcript["message_ids"].append(message.id)
        # fsync takes milliseconds: do it off the loop so other sessions keep being served.
        # Awaited, so one session's writes never overtake each other.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._write_message, message, transcript)
        self._remember(message, session)

    def _write_message(self, message: CapturedMessage, transcript: dict[str, Any]) -> None:
        # The .eml first: a .json is only ever beside a complete .eml.
        _write_durably(self._message_dir / f"{message.id}.eml", message.raw)
        meta = message.to_json()
        _write_durably(self._message_dir / f"{message.id}.json", json.dumps(meta).encode())
        _fsync_dir(self._message_dir)
        # The 250 promises the message, not the transcript: no fsync, so one message costs
        # three, yet the transcript survives kill -9 (it only waits on a power cut).
        path = self._session_dir / f"{transcript['id']}.json"
        _write_durably(path, json.dumps(transcript).encode(), sync=False)

    def close_session(self, record: SessionRecord) -> None:
        super().close_session(record)
        # The session's last write: nothing of it is written after this one, so fire and forget.
        data = json.dumps(record.to_json()).encode()
        path = self._session_dir / f"{record.id}.json"
        try:
            asyncio.get_running_loop().run_in_executor(None, _write_durably, path, data)
        except RuntimeError:  # no running loop: write now
            _write_durably(path, data)

    def delete_messages(self, ids: list[str]) -> list[str]:
        deleted = super().delete_messages(ids)
        for message_id in deleted:
            for suffix in (".json", ".eml"):  # the .json first: it is only ever beside an .eml
                (self._message_dir / f"{message_id}{suffix}").unlink(missing_ok=True)
        return deleted

    def clear(self, messages: bool = True, sessions: bool = True) -> None:
        super().clear(messages, sessions)
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
