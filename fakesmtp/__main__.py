"""``python -m fakesmtp`` is the ``fakesmtp`` command."""

from .cli import main

main()
