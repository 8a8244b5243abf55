"""What a recording holds: each relayed session as steps (stage, envelope facts, upstream reply).

Pure data, filled in by the relay and read by the writer. Nothing here holds a credential or, unless
the user asked for bodies, a message: AUTH lines are masked before they become a step, and a message
is only its size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..stages import Stage


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamReply:
    """One reply as the upstream sent it: code, enhanced status, text lines, and the bytes."""

    code: int
    status: str | None  # the enhanced status, when every line carries the same one
    lines: tuple[str, ...]  # the text of each line, without code, separator and status
    wire: bytes  # exactly what came over the wire, passed back to the client unchanged

    def text(self) -> str:
        """One line per reply line, as transcripts and comments show it."""
        status = f"{self.status} " if self.status else ""
        return " | ".join(f"{self.code} {status}{line}".rstrip() for line in self.lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One command of a relayed session and how the upstream answered it.

    ``reply`` is None when the upstream ended the connection instead (``ended`` says how:
    ``drop`` for a close, ``reset`` for a TCP reset). The envelope facts are those the command
    was decided with: at RCPT, ``recipient`` is the one being tried and ``recipients`` those
    accepted before it.
    """

    stage: Stage
    command: str | None  # None for the banner; AUTH arguments masked; a message as its size
    reply: UpstreamReply | None
    ended: str | None = None
    at: float = field(default_factory=time.time)
    elapsed: float = 0.0  # seconds from the command to the reply's last line
    tls: bool = False  # the client's side of the relay
    helo: str | None = None
    sender: str | None = None
    recipient: str | None = None
    recipients: tuple[str, ...] = ()
    size: int | None = None  # end_of_data: the message's size in bytes
    message: bytes | None = None  # end_of_data, only with --keep-bodies


@dataclass(slots=True)
class RecordedSession:
    """One client connection relayed to the upstream."""

    number: int
    client: str
    upstream: str  # HOST:PORT as the user named it
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end: str | None = None
    upstream_tls: bool = False  # the relay upgraded its link to the upstream with STARTTLS
    # EHLO capability lines (the words after "250-"), as offered before and after STARTTLS.
    capabilities: tuple[str, ...] | None = None
    tls_capabilities: tuple[str, ...] | None = None
    ehlo_greeting: str | None = None  # the first line of the EHLO reply (the upstream's name...)
    steps: list[Step] = field(default_factory=list)
    kept: bool = True  # False past the recording's bounds: relayed, not recorded


Observer = Callable[[str, RecordedSession], None]

# A recorder left running must not grow without end: past these, sessions are still relayed
# but no longer recorded (the file says so), and message text is no longer kept.
MAX_SESSIONS = 10_000
MAX_KEPT_BODIES = 16 * 1024 * 1024


class Recording:
    """Every session relayed so far, in order. Observers hear of each step and each session end.

    The relay appends from the event loop; the API, the CLI and tests read from anywhere, so
    readers get copies taken under a lock.
    """

    def __init__(
        self,
        upstream: str,
        *,
        keep_bodies: bool = False,
        max_sessions: int = MAX_SESSIONS,
        max_kept_bodies: int = MAX_KEPT_BODIES,
    ) -> None:
        self.upstream = upstream
        self.keep_bodies = keep_bodies
        self.started_at = time.time()
        self.max_sessions = max_sessions
        self.not_recorded = 0  # sessions relayed past max_sessions
        self._body_room = max_kept_bodies
        self._sessions: list[RecordedSession] = []
        self._lock = threading.Lock()
        self._observers: list[Observer] = []

    def subscribe(self, observer: Observer) -> None:
        """``observer(kind, session)`` with kind "step" or "ended", called on the relay's loop."""
        self._observers.append(observer)

    def open_session(self, client: str) -> RecordedSession:
        with self._lock:
            number = len(self._sessions) + self.not_recorded + 1
            session = RecordedSession(number=number, client=client, upstream=self.upstream)
            if len(self._sessions) < self.max_sessions:
                self._sessions.append(session)
            else:
                session.kept = False
                self.not_recorded += 1
        return session

    def add(self, session: RecordedSession, step: Step) -> None:
        if step.message is not None:
            with self._lock:
                room = self._body_room
                self._body_room = max(room - len(step.message), 0)
            if room < len(step.message):
                step = replace(step, message=None)
        with self._lock:
            if session.kept:
                session.steps.append(step)
        self._tell("step", session)

    def close_session(self, session: RecordedSession, end: str) -> None:
        with self._lock:
            if session.end is not None:
                return
            session.end = end
        # Observers first (the file is rewritten), then the session counts as ended: whoever
        # waits for ended sessions finds the file up to date.
        self._tell("ended", session)
        with self._lock:
            session.ended_at = time.time()

    def _tell(self, kind: str, session: RecordedSession) -> None:
        for observer in self._observers:
            observer(kind, session)

    def sessions(self) -> list[RecordedSession]:
        """A snapshot: each session with its steps so far."""
        with self._lock:
            return [
                RecordedSession(
                    number=s.number,
                    client=s.client,
                    upstream=s.upstream,
                    started_at=s.started_at,
                    ended_at=s.ended_at,
                    end=s.end,
                    upstream_tls=s.upstream_tls,
                    capabilities=s.capabilities,
                    tls_capabilities=s.tls_capabilities,
                    ehlo_greeting=s.ehlo_greeting,
                    steps=list(s.steps),
                )
                for s in self._sessions
            ]
