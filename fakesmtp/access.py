"""Who may use the HTTP API: requests naming this server, from its own page, with the token.

The API listens on loopback beside the user's browser, so any web page they visit can send it
requests. Three checks keep those pages out:

- ``Host`` must name this server (localhost, a loopback address, the address the API is bound
  to or was reached on, or a name given with ``--api-allow-host``). A DNS-rebinding page has
  its own name in ``Host``; it is refused before anything is read or changed.
- A request a browser marks as coming from another site (``Origin`` or ``Sec-Fetch-Site``) is
  refused: reading is blocked by the browser anyway, and a write must never happen.
- With ``--api-token``, every API route needs ``Authorization: Bearer TOKEN``. The page shell
  (``/`` and ``/static/``) holds no data, so the browser can load it and then ask for the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # aiohttp is imported with the API only: `serve --no-api` starts sooner
    from aiohttp import web

log = logging.getLogger("fakesmtp.api")

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]

# The page and its files: no captured data in them, so no token (a browser must load them to
# be able to ask for it). The Host check still applies.
PAGE_PATHS = ("/", "/index.html")
STATIC_PREFIX = "/static/"
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class ApiAccess:
    """The API's access policy, fixed when the server starts."""

    token: str | None = None
    allow_hosts: frozenset[str] = frozenset()  # extra names, lower case, no port
    bound_host: str = "127.0.0.1"
    # Where a scenario sent through the API may point tls.cert / tls.key: the directories the
    # server was started with. Anything else would let a client probe the server's files.
    file_roots: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def build(
        cls,
        *,
        token: str | None,
        allow_hosts: Iterable[str],
        bound_host: str,
        files: Iterable[str | os.PathLike[str] | None],
    ) -> ApiAccess:
        roots = []
        for name in files:
            if not name:
                continue
            path = Path(os.path.realpath(name))
            if path.is_file():
                roots.append(path.parent)
        names = frozenset(_host_name(h) for h in allow_hosts if h.strip())
        return cls(
            token=token or None,
            allow_hosts=names,
            bound_host=_host_name(bound_host),
            file_roots=tuple(dict.fromkeys(roots)),
        )

    def names_this_server(self, host: str, arrived_on: str | None) -> bool:
        """Whether a ``Host`` value (port and all) names this server."""
        name = _host_name(host)
        if not name:
            return False
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
            return True
        if name in self.allow_hosts or name == self.bound_host:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False  # a name we were not told about: what DNS rebinding looks like
        if address.is_loopback:
            return True
        # Bound to every interface (a container): the address this request arrived on.
        return arrived_on is not None and address == _ip(arrived_on)

    def token_matches(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if header is None:
            return False
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())


def _host_name(host: str) -> str:
    """``[::1]:8025`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _refuse(request: web.Request, status: int, message: str, **headers: str) -> web.Response:
    # Logged (without any header value that could be a secret): a user whose browser or
    # container is refused sees why in the console, and an attack leaves a trace.
    log.warning("API refused %s %s: %s", request.method, request.path, message)
    from aiohttp import web

    return web.json_response({"error": message}, status=status, headers=headers)


def guard(access: ApiAccess) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware enforcing ``access`` on every request."""
    from aiohttp import web

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        arrived_on = sockname[0] if sockname else None
        host = request.headers.get("Host", "")
        if not access.names_this_server(host, arrived_on):
            # Said plainly, so a container user knows which option to add.
            return _refuse(
                request,
                403,
                f"Host {_host_name(host) or '(none)'!r} does not name this server; "
                "if it should, start it with --api-allow-host NAME",
            )
        page = request.path in PAGE_PATHS or request.path.startswith(STATIC_PREFIX)
        origin = request.headers.get("Origin")
        foreign = origin is not None and origin != f"{request.scheme}://{request.host}"
        if foreign and not (page and request.method in ("GET", "HEAD")):
            return _refuse(
                request, 403, f"cross-origin {request.method} refused (Origin: {origin})"
            )
        fetched_from = request.headers.get("Sec-Fetch-Site")
        if fetched_from in ("cross-site", "same-site") and not page:
            return _refuse(
                request,
                403,
                f"cross-site {request.method} refused (Sec-Fetch-Site: {fetched_from})",
            )
        if not page and not access.token_matches(request.headers.get("Authorization")):
            return _refuse(
                request,
                401,
                "this API needs its token: Authorization: Bearer TOKEN (see --api-token)",
                **{"WWW-Authenticate": 'Bearer realm="fakesmtp"'},
            )
        return await handler(request)

    return check


def file_allowed(access: ApiAccess, name: str) -> bool:
    """Whether a file named in a scenario sent through the API lies where it may be read."""
    path = Path(os.path.realpath(name))
    return any(path.is_relative_to(root) for root in access.file_roots)
