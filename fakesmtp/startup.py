"""Start-up checks for ``fakesmtp serve``: every listening problem at once, named by its option.

Binding fails one socket at a time, and the OS names an address, not the setting behind it. So
before starting, each address the server will listen on is tried once, and every refusal is
worded with the option (or ``FAKESMTP_SERVE_*`` variable) that asked for it and what to try.
A port taken between this check and the real bind is still caught, less kindly, by the server.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Listener:
    """One address the server will listen on, and how the user asked for it."""

    option: str  # "--port", "--api-port", "--tls-port"
    host: str
    port: int
    label: str  # "--api-port 8025" or "FAKESMTP_SERVE_API_PORT=8025"
    host_label: str  # "--host 10.0.0.9" or "FAKESMTP_SERVE_HOST=10.0.0.9"
    alternatives: str  # "--api-port 0 or --no-api"


def _try_bind(host: str, port: int) -> OSError | None:
    """None when ``host:port`` can be listened on now (with the server's own socket options)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return OSError(errno.EADDRNOTAVAIL, str(error.strerror or error))
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # asyncio's create_server sets SO_REUSEADDR too: a port in TIME_WAIT is fine,
            # a port someone listens on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                return error
    return None


def _unprivileged(port: int) -> int:
    return {25: 2525, 465: 4650, 587: 5870, 80: 8080}.get(port, port + 1024 if port < 1024 else 0)


def describe(listener: Listener, error: OSError) -> str:
    """One line: what went wrong with this listener and what to try instead."""
    if error.errno == errno.EADDRINUSE:
        return f"{listener.label} is in use (another fakesmtp? try {listener.alternatives})"
    if error.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{listener.label} needs privileges this user lacks "
            f"(ports below 1024 usually do; try {listener.option} {_unprivileged(listener.port)})"
        )
    if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return (
            f"{listener.host_label} is not an address of this machine "
            f"(try 127.0.0.1, or 0.0.0.0 for every address)"
        )
    return f"{listener.label}: cannot listen: {error.strerror or error}"


def listen_problems(
    listeners: list[Listener], try_bind: Callable[[str, int], OSError | None] = _try_bind
) -> list[str]:
    """Every listener that cannot be bound, worded by ``describe``; the same host said once."""
    problems: list[str] = []
    for listener in listeners:
        error = try_bind(listener.host, listener.port)
        if error is not None:
            line = describe(listener, error)
            if line not in problems:
                problems.append(line)
    return problems
