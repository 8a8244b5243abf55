"""Which event loop runs the server: uvloop when installed (``fakesmtp[fast]``), else asyncio's.

uvloop is a drop-in loop written in C on libuv: about a tenth more messages per second for the
same sessions. Nothing in the server depends on it; ``--loop asyncio`` keeps the standard one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

CHOICES = ("auto", "asyncio", "uvloop")


class LoopUnavailable(Exception):
    """``--loop uvloop`` asked for, but uvloop is not installed."""


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of the kind asked for ("auto": uvloop if installed)."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LoopUnavailable(
                "--loop uvloop: uvloop is not installed (pip install 'fakesmtp[fast]')"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The loop's kind, "uvloop" or "asyncio", for the start-up line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
