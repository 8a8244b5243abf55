"""What a bounce reader finds: one Finding per reply, per recipient, and what was seen besides."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


class BounceError(ValueError):
    """The input holds no SMTP reply this package can read; the message says what was looked for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One reply the remote server gave, as the bounce tells it."""

    recipient: str | None
    code: int
    status: str | None
    text: tuple[str, ...]
    stage: str | None  # None: the bounce does not say at which command the reply came
    remote_mta: str | None
    # How many times this reply was given before the recipient got further (delivered, or met a
    # different reply), as a log shows; 0 when nothing later is known, so the reply always fires.
    transient_then_delivered: int = 0
    origin: str
    notes: tuple[str, ...] = ()  # what was inferred while reading, shown as comments
    family: str = "generic"  # the reader (MTA family) that recognised the layout
    evidence: str = ""  # the bounce's own words the reply was read from, squashed to one line


@dataclass(slots=True)
class Hints:
    """What was seen that is not a reply, so that "nothing found" can say why."""

    delivered: int = 0
    # The bounce's own words for failures the reporting server decided itself (DNS, timeout,
    # expiry, a local mailbox): no remote server answered.
    no_reply: list[str] = field(default_factory=list)
    # A family reader recognised its layout and found the failure local: the DSN's Diagnostic-Code
    # is then that server's own summary, not a remote reply.
    local_failure: bool = False

    def local(self, words: str) -> None:
        """A family reader's verdict: the reporting server failed on its own, in these words."""
        self.no_reply.append(words)
        self.local_failure = True


def reply_key(f: Finding) -> tuple[object, ...]:
    """What makes two findings the same reply: merged into one rule when they share it."""
    return (f.code, f.status, f.text, f.stage)


@dataclass(frozen=True, slots=True)
class Event:
    """One log line's outcome for a recipient: a reply, or None for a delivery."""

    recipient: str
    finding: Finding | None


def collapse(events: list[Event]) -> list[Finding]:
    """Per recipient, one finding per distinct reply, limited to N when something came after."""
    by_rcpt: dict[str, list[Event]] = {}
    for event in events:
        by_rcpt.setdefault(event.recipient.casefold(), []).append(event)
    findings: list[Finding] = []
    for seq in by_rcpt.values():
        replies: dict[tuple[object, ...], list[int]] = {}
        for i, event in enumerate(seq):
            if event.finding is not None:
                replies.setdefault(reply_key(event.finding), []).append(i)
        for positions in replies.values():
            first = seq[positions[0]].finding
            assert first is not None
            # Something happened after this reply's last occurrence: the remote server let the
            # recipient through (or answered differently) after it had said this N times.
            limited = positions[-1] < len(seq) - 1
            count = len(positions) if limited else 0
            findings.append(replace(first, transient_then_delivered=count))
    return findings
