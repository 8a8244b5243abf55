"""Counters for ``/metrics``: fed by store events, shown in Prometheus' text format on scrape.

The hot path pays a few dictionary increments per exchange, nothing more: the counts are plain
ints in plain dicts, kept by a store observer. ``prometheus_client`` is imported, and its
metric families built, only when someone scrapes. The counts are a picklable dict
(``snapshot()``), so the workers of ``--workers N`` can hand theirs to the process that serves
the API, which adds them up (``merge``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from .stages import Stage
from .store import CapturedMessage, Exchange, SessionRecord

# A label's values must stay few: address-driven replies are named after the address
# ("address rcpt-550@x.test"), so they are all counted under one name.
ADDRESS_RULE = "(address-driven reply)"
END_OF_DATA = Stage.END_OF_DATA.value

Snapshot = dict[str, Any]


class Metrics:
    """What the server did, counted as it happens. Subscribe ``observe`` to a store."""

    def __init__(self) -> None:
        self.sessions = 0
        self.ended: Counter[str] = Counter()  # by how the session ended
        self.commands: Counter[str] = Counter()  # by stage
        self.replies: Counter[tuple[str, str]] = Counter()  # by (stage, code)
        self.rules: Counter[str] = Counter()  # by rule name
        self.messages: Counter[str] = Counter()  # by outcome: kept, refused, dropped
        self.message_bytes = 0
        self.merged: dict[Any, Snapshot] = {}  # other processes' snapshots, by who sent them
        # --workers: asks every worker for its counts (into ``merged``) before a scrape.
        self.refresh: Callable[[], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ counting

    def observe(self, kind: str, item: Any) -> None:
        """The store observer: called on the event loop for each session event."""
        if kind == "exchange":
            self.exchange(item[1])
        elif kind == "message":
            self.kept(item)
        elif kind == "session":
            self.sessions += 1
        elif kind == "ended":
            self.session_ended(item)
        elif kind == "dropped":
            self.dropped(item.size)

    def exchange(self, exchange: Exchange) -> None:
        stage = exchange.stage
        if exchange.command is not None and exchange.reply is not None:
            self.commands[stage] += 1
        reply = exchange.reply
        if reply is not None:
            code = reply[:3]
            self.replies[stage, code] += 1
            if stage == END_OF_DATA and code[0] in "45":
                self.messages["refused"] += 1
        elif exchange.command is not None and exchange.note is not None:
            self.commands[stage] += 1  # answered by a drop, reset or hang
        rule = exchange.rule
        if rule is not None:
            self.rules[ADDRESS_RULE if rule.startswith("address ") else rule] += 1

    def kept(self, message: CapturedMessage) -> None:
        self.messages["kept"] += 1
        self.message_bytes += message.size

    def dropped(self, size: int) -> None:
        """A message acknowledged with 250 but not kept (``--no-capture``)."""
        self.messages["dropped"] += 1
        self.message_bytes += size

    def session_ended(self, record: SessionRecord) -> None:
        self.ended[_end_reason(record.end)] += 1

    # ------------------------------------------------------------------ several processes

    def snapshot(self) -> Snapshot:
        """This process's counts, as plain data (picklable, summable)."""
        return {
            "sessions": self.sessions,
            "ended": dict(self.ended),
            "commands": dict(self.commands),
            "replies": dict(self.replies),
            "rules": dict(self.rules),
            "messages": dict(self.messages),
            "message_bytes": self.message_bytes,
        }

    def merge(self, source: Any, snapshot: Snapshot) -> None:
        """Take ``source``'s latest counts (a worker's); they replace that source's previous."""
        self.merged[source] = snapshot

    def total(self) -> Snapshot:
        """This process's counts plus every merged snapshot."""
        total = self.snapshot()
        for other in self.merged.values():
            for key, value in other.items():
                if isinstance(value, dict):
                    counts = total[key]
                    for label, count in value.items():
                        counts[label] = counts.get(label, 0) + count
                else:
                    total[key] += value
        return total

    # ------------------------------------------------------------------ exposition

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The Prometheus exposition (text, or OpenMetrics when ``accept`` asks for it)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.total()))
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type


async def serve_metrics(request: Any, metrics: Metrics) -> Any:
    """``GET /metrics``: the API's route (aiohttp is imported by the API, never here first)."""
    from aiohttp import web

    if metrics.refresh is not None:  # --workers: fresh counts from every worker first
        await metrics.refresh()
    body, content_type = metrics.render(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type  # carries its own version and charset
    return response


def _end_reason(end: str | None) -> str:
    """How a session ended, without the details that would make label values unbounded."""
    if not end:
        return "unknown"
    return end.split(":", 1)[0]  # "TLS handshake failed: SSLError" -> "TLS handshake failed"


class _Collector:
    """Builds the metric families from one snapshot, at scrape time."""

    def __init__(self, counts: Snapshot) -> None:
        self.counts = counts

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self.counts
        sessions = CounterMetricFamily("fakesmtp_sessions", "SMTP connections accepted.")
        sessions.add_metric([], counts["sessions"])
        yield sessions
        ended = CounterMetricFamily(
            "fakesmtp_sessions_ended", "SMTP sessions ended, by how they ended.", labels=["end"]
        )
        for reason, count in sorted(counts["ended"].items()):
            ended.add_metric([reason], count)
        yield ended
        current = GaugeMetricFamily("fakesmtp_connections", "SMTP connections open now.")
        # Every session publishes its start and its end, so the difference is what is open.
        current.add_metric([], counts["sessions"] - sum(counts["ended"].values()))
        yield current
        commands = CounterMetricFamily(
            "fakesmtp_commands", "Commands received, by the stage they answer at.", labels=["stage"]
        )
        for stage, count in sorted(counts["commands"].items()):
            commands.add_metric([stage], count)
        yield commands
        replies = CounterMetricFamily(
            "fakesmtp_replies", "Replies sent, by stage and reply code.", labels=["stage", "code"]
        )
        for (stage, code), count in sorted(counts["replies"].items()):
            replies.add_metric([stage, code], count)
        yield replies
        rules = CounterMetricFamily(
            "fakesmtp_rule_fires", "Times a scenario rule decided the answer.", labels=["rule"]
        )
        for rule, count in sorted(counts["rules"].items()):
            rules.add_metric([rule], count)
        yield rules
        messages = CounterMetricFamily(
            "fakesmtp_messages",
            "Messages that reached the final dot: kept (captured after 250), refused (4xx/5xx "
            "after the dot), dropped (250 without capture, --no-capture).",
            labels=["outcome"],
        )
        for outcome in ("kept", "refused", "dropped"):
            messages.add_metric([outcome], counts["messages"].get(outcome, 0))
        yield messages
        size = CounterMetricFamily(
            "fakesmtp_received_message_bytes",
            "Bytes of message content acknowledged with 250 (after dot-unstuffing).",
        )
        size.add_metric([], counts["message_bytes"])
        yield size
