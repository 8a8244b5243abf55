"""LMTP (RFC 2033): LHLO instead of HELO/EHLO, and one reply per recipient after the final dot.

An LMTP server delivers to each mailbox itself, so after the message it answers once for every
recipient it accepted, in RCPT order. An ``end_of_data`` rule is decided per recipient here
(``to`` is that recipient), which is how a test makes one mailbox full and the others fine.
"""

from __future__ import annotations

from ..engine import Decision
from ..reply import Reply
from ..stages import VERB_STAGES, Action, Stage
from ..store import new_id
from .profile import Profile
from .smtp import ScenarioSMTP, message_shown

_SILENT = (Action.DROP, Action.RESET, Action.HANG)


class LMTPSession(ScenarioSMTP):
    """One LMTP connection: the SMTP session with LHLO and per-recipient final replies."""

    # LHLO answers at the `ehlo` stage, so rules written for EHLO apply to it.
    stages = {**{v: s for v, s in VERB_STAGES.items() if v not in ("HELO", "EHLO")},
              "LHLO": Stage.EHLO}  # fmt: skip

    def banner(self, profile: Profile) -> Reply:
        return profile.lmtp_banner

    async def smtp_LHLO(self, arg: str, shown: str) -> None:
        await self.greet(Stage.EHLO, arg, shown, extended=True)

    async def answer_message(self, raw: bytes, command: str | None = None) -> None:
        facts = self.facts
        assert facts is not None
        recipients = list(facts.recipients)
        engine = self.profile.engine
        message_id = new_id()
        plan: list[tuple[str, Decision | None, Reply]] = []
        try:
            for recipient in recipients:
                facts.recipients = [recipient]  # `to` and {to} mean this recipient
                if engine.awaits:  # counts kept elsewhere (--state)
                    decision = await engine.decide_async(Stage.END_OF_DATA, facts)
                else:
                    decision = engine.decide(Stage.END_OF_DATA, facts)
                default = Reply(
                    code=250, status="2.0.0", lines=(f"<{recipient}> Ok: queued as {message_id}",)
                )
                plan.append((recipient, decision, default))
        finally:
            facts.recipients = recipients
        # Kept for the recipients that will hear a 2xx: those before any silent or closing rule.
        acknowledged = []
        for recipient, decision, default in plan:
            reply = decision.reply if decision is not None and decision.reply else default
            action = decision.action if decision is not None else None
            if action in _SILENT:
                break
            if reply.positive:
                acknowledged.append(recipient)
            if reply.closes or action is Action.CLOSE:
                break
        failure = await self.keep_message(message_id, raw, acknowledged) if acknowledged else None

        async def stored() -> Reply | None:  # the 451 instead of a 250 if keeping it failed
            return failure

        for recipient, decision, default in plan:
            facts.recipient = recipient
            try:
                shown = message_shown(command, f"<message for {recipient}, {len(raw)} bytes>")
                await self.respond(Stage.END_OF_DATA, shown, default, decision, commit=stored)
            finally:
                facts.recipient = None


LMTPSession.verbs = {
    **{verb: fn for verb, fn in ScenarioSMTP.verbs.items() if verb not in ("HELO", "EHLO")},
    "LHLO": LMTPSession.smtp_LHLO,
}
