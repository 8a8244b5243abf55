"""The one "did you mean ...?" for every name a user can mistype.

Stages, scenario keys, ``per`` and ``action`` words, built-in scenario names, command options
and ``FAKESMTP_*`` variables all go through :func:`closest`, so a mistake gets the same kind of
hint wherever it is made: case does not matter (``RCPT`` is ``rcpt``), the words people reach
for first are known (``recipient`` means ``to`` in a match and ``rcpt`` as a stage), and
otherwise the nearest spelling wins.
"""

from __future__ import annotations

from collections.abc import Iterable

# Words people write for one of ours; the first target that is among the choices wins, so
# `recipient` suggests the match key `to` in a match and the stage `rcpt` in `on:`.
ALIASES: dict[str, tuple[str, ...]] = {
    "recipient": ("to", "rcpt"),
    "recipients": ("to", "rcpt"),
    "rcpt_to": ("to", "rcpt"),
    "rcptto": ("to", "rcpt"),
    "sender": ("from", "mail"),
    "mail_from": ("from", "mail"),
    "mailfrom": ("from", "mail"),
    "envelope_from": ("from",),
    "ip": ("client",),
    "host": ("client", "helo"),
    "hostname": ("helo", "hostname"),
    "banner": ("connect",),
    "greeting": ("connect",),
    "connection": ("connect", "connection"),
    "hello": ("helo",),
    "lhlo": ("ehlo",),
    "eod": ("end_of_data",),
    "eom": ("end_of_data",),
    "dot": ("end_of_data",),
    "message": ("end_of_data",),
    "end_of_message": ("end_of_data",),
    "headers": ("header",),
    "stage": ("on",),
    "when": ("on",),
    "response": ("reply",),
    "answer": ("reply",),
    "count": ("times",),
    "limit": ("times",),
    "sleep": ("delay",),
    "wait": ("delay",),
    "chance": ("probability",),
    "disconnect": ("close", "drop"),
    "timeout": ("hang",),
}


def _normal(word: str) -> str:
    return word.strip().lower().replace("-", "_")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice the user most likely meant by ``word``, or None when nothing is close.

    Case-insensitive, ``-`` and ``_`` alike; known aliases first, then the nearest spelling.
    The choice is returned as it is spelled in ``choices``.
    """
    by_normal: dict[str, str] = {}
    for choice in choices:
        by_normal.setdefault(_normal(choice), choice)
    wanted = _normal(word)
    if not wanted:
        return None
    if wanted in by_normal and by_normal[wanted] != word:
        return by_normal[wanted]  # only the case (or a dash) differs
    for target in ALIASES.get(wanted, ()):
        if target in by_normal and by_normal[target] != word:
            return by_normal[target]
    import difflib  # only a mistake pays for it

    near = difflib.get_close_matches(wanted, list(by_normal), n=1, cutoff=0.6)
    if near and by_normal[near[0]] != word:
        return by_normal[near[0]]
    return None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'rcpt'?"`` for a mistyped ``word``, or ``""`` when nothing is close."""
    found = closest(word, choices)
    return f"did you mean {found!r}?" if found is not None else ""


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 rule``, ``2 rules``, ``0 messages``: the count with its noun in the right number."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"
