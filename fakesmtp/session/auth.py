"""SMTP AUTH mechanisms (RFC 4954): PLAIN, LOGIN, CRAM-MD5 checked against a scenario's users.

A pure function of the mechanism, the initial response, the users and a ``challenge`` callable
that sends ``334 <base64>`` and returns the client's decoded answer; no socket, so each
mechanism is testable with a list of answers. Nothing the client sends is logged here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

# Sends one challenge and returns the client's decoded answer, or None when the exchange is
# over already (the client aborted with "*", or sent bad base64, and was answered).
Challenge = Callable[[bytes], Awaitable[bytes | None]]


class Undecodable(Exception):
    """The client's response is not base64, or not the shape the mechanism wants (501 5.5.2)."""


async def authenticate(
    mechanism: str,
    initial: str | None,
    users: Mapping[str, str],
    challenge: Challenge,
    *,
    hostname: str,
) -> tuple[str, bool] | None:
    """Run the exchange for ``mechanism``: (username, credentials valid), or None if aborted.

    ``initial`` is the optional initial response from the AUTH command line (RFC 4954 4);
    ``hostname`` goes into the CRAM-MD5 challenge. Raises ``Undecodable``.
    """
    if mechanism == "PLAIN":
        if initial is None:
            blob = await challenge(b"")
            if blob is None:
                return None
        else:
            blob = b"" if initial == "=" else _decode(initial)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            raise Undecodable
        username, password = _text(parts[1]), _text(parts[2])
        return username, _same(users.get(username), password)
    if mechanism == "LOGIN":
        if initial is not None:
            name_blob: bytes | None = _decode(initial)
        else:
            name_blob = await challenge(b"Username:")
            if name_blob is None:
                return None
        password_blob = await challenge(b"Password:")
        if password_blob is None:
            return None
        username = _text(name_blob)
        return username, _same(users.get(username), _text(password_blob))
    if mechanism == "CRAM-MD5":
        # RFC 2195: the client proves it knows the password without sending it.
        text = f"<{secrets.randbelow(10**9)}.{int(time.time())}@{hostname}>".encode()
        answer = await challenge(text)
        if answer is None:
            return None
        username, _, digest = _text(answer).rpartition(" ")
        secret = users.get(username)
        if secret is None:
            return username, False
        expected = hmac.new(secret.encode(), text, hashlib.md5).hexdigest()
        return username, hmac.compare_digest(expected, digest.lower())
    raise ValueError(f"unknown mechanism {mechanism!r}")


def _decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Undecodable from None


def _text(blob: bytes) -> str:
    return blob.decode("utf-8", "replace")


def _same(expected: str | None, given: str) -> bool:
    return expected is not None and hmac.compare_digest(expected.encode(), given.encode())
