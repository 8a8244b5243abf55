"""Mailpit's Chaos triggers (Sender, Recipient, Authentication) as ordinary fakesmtp rules.

``PUT /api/v1/chaos {"Recipient": {"ErrorCode": 451, "Probability": 50}}`` adds one run-time
rule, ``on: rcpt``, ``reply: 451``, ``probability: 0.5``, named ``chaos: Recipient``: it shows in
transcripts and in ``GET /api/v1/rules`` like any other. Unlike Mailpit, the reply follows the
rules every other reply follows: a 421 closes the connection (RFC 5321 3.8), and the text and
enhanced status come from the catalog. A scenario's ``seed:`` makes the draws repeatable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import FakeSMTP

# Trigger -> (stage, Mailpit's default error code)
TRIGGERS = {"Sender": ("mail", 451), "Recipient": ("rcpt", 451), "Authentication": ("auth", 535)}
ALIASES = {"sender": "Sender", "recipient": "Recipient", "recipients": "Recipient",
           "auth": "Authentication", "authentication": "Authentication"}  # fmt: skip
PREFIX = "chaos: "


def parse(body: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Mailpit's request body -> {trigger: (error code, probability %)}; omitted ones are off.

    Raises ValueError with Mailpit's wording for a bad code or probability or trigger name.
    """
    wanted = {name: (default, 0) for name, (_, default) in TRIGGERS.items()}
    for key, value in body.items():
        name = ALIASES.get(str(key).lower())
        if name is None:
            raise ValueError(f"unknown key {key} (allowed: {', '.join(TRIGGERS)})")
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be an object: {{ErrorCode, Probability}}")
        code = value.get("ErrorCode") or TRIGGERS[name][1]
        probability = value.get("Probability", 0) or 0
        if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 599:
            raise ValueError("error code must be between 400 and 599")
        if not isinstance(probability, int) or isinstance(probability, bool):
            raise ValueError("probability must be a whole number between 0 and 100")
        if not 0 <= probability <= 100:
            raise ValueError("probability must be between 0 and 100")
        wanted[name] = (code, probability)
    return wanted


def rule_for(name: str, code: int, probability: int) -> dict[str, Any]:
    """The scenario rule one trigger stands for."""
    rule: dict[str, Any] = {"on": TRIGGERS[name][0], "reply": code, "name": PREFIX + name}
    if probability < 100:  # 100% needs no draw: other rules' seeded draws stay as they were
        rule["probability"] = probability / 100
    return rule


def current(fake: FakeSMTP) -> dict[str, dict[str, int]]:
    """Mailpit's view of the triggers, read back from the run-time rules in force."""
    found = {name: {"ErrorCode": code, "Probability": 0} for name, (_, code) in TRIGGERS.items()}
    for rule in fake.added_rules().values():
        name = rule.name.removeprefix(PREFIX)
        if rule.name.startswith(PREFIX) and name in found and rule.reply is not None:
            chance = 1.0 if rule.probability is None else rule.probability
            found[name] = {"ErrorCode": rule.reply.code, "Probability": round(chance * 100)}
    return found


def apply(fake: FakeSMTP, triggers: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """Replace the chaos rules with these triggers (probability 0: no rule); return the view."""
    for rule_id, rule in fake.added_rules().items():
        if rule.name.startswith(PREFIX):
            fake.remove_rule(rule_id)
    for name, (code, probability) in triggers.items():
        if probability > 0:
            fake.add_rule(rule_for(name, code, probability))
    return current(fake)
