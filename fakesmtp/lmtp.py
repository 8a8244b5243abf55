"""LMTP (RFC 2033): LHLO instead of HELO/EHLO, and one reply per recipient after the final dot.

An LMTP server delivers to each mailbox itself, so after the message it answers once for every
recipient it accepted, in RCPT order. An ``end_of_data`` rule is decided per recipient here
(``to`` is that recipient), which is how a test makes one mailbox full and the others fine.
"""

from __future__ import annotations

from .engine import Decision
from .reply import Reply
from .smtp import Profile, ScenarioSMTP, SessionOver
from .stages import VERB_STAGES, Action, Stage
from .store import new_id

_SILENT = (Action.DROP, Action.RESET, Action.HANG)


class LMTPSession(ScenarioSMTP):
    """One LMTP connection: the SMTP session with LHLO and per-recipient final replies."""

    # LHLO answers at the `ehlo` stage, so rules written for EHLO apply to it.
    stages = {**{v: s for v, s in VERB_STAGES.items() if v not in ("HELO", "EHLO")},
              "LHLO": Stage.EHLO}  # fmt: skip

    def banner(self, profile: Profile) -> Reply:
        return profile.lmtp_banner

    async def smtp_LHLO(self, arg: str, shown: str) -> None:
        await self._greet(Stage.EHLO, arg, shown, extended=True)

    async def _answer_message(self, raw: bytes) -> None:
        facts = self.facts
        assert facts is not None
        recipients = list(facts.recipients)
        engine = self.profile.engine
        message_id = new_id()
        plan: list[tuple[str, Decision | None, Reply]] = []
        try:
            for recipient in recipients:
                facts.recipients = [recipient]  # `to` and {to} mean this recipient
                decision = engine.decide(Stage.END_OF_DATA, facts)
                default = Reply(
                    code=250, status="2.0.0", lines=(f"<{recipient}> Ok: queued as {message_id}",)
                )
                reply = decision.reply if decision is not None and decision.reply else default
                plan.append((recipient, decision, reply))
        finally:
            facts.recipients = recipients
        # Kept for the recipients that will hear a 2xx: those before any silent or closing rule.
        acknowledged = []
        for recipient, decision, reply in plan:
            action = decision.action if decision is not None else None
            if action in _SILENT:
                break
            if reply.positive:
                acknowledged.append(recipient)
            if reply.closes or action is Action.CLOSE:
                break
        failure = await self._keep_message(message_id, raw, acknowledged) if acknowledged else None
        for recipient, decision, reply in plan:
            shown = f"<message for {recipient}, {len(raw)} bytes>"
            facts.recipient = recipient
            try:
                if decision is not None and decision.delay:
                    await self._pause(decision.delay)
                if decision is not None and decision.action in _SILENT:
                    await self._end_without_reply(Stage.END_OF_DATA, shown, decision)
                if failure is not None and reply.positive:
                    reply = failure
                await self._send(Stage.END_OF_DATA, shown, reply, decision)
                if reply.closes or (decision is not None and decision.action is Action.CLOSE):
                    self.end_reason = self.end_reason or "closed by rule"
                    self._close()
                    raise SessionOver
            finally:
                facts.recipient = None


LMTPSession.verbs = {
    **{verb: fn for verb, fn in ScenarioSMTP.verbs.items() if verb not in ("HELO", "EHLO")},
    "LHLO": LMTPSession.smtp_LHLO,
}
