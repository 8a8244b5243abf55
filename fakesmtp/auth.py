"""SMTP AUTH mechanisms (RFC 4954): PLAIN, LOGIN, CRAM-MD5 against the scenario's users."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

from .stages import Stage

if TYPE_CHECKING:
    from .smtp import ScenarioSMTP


async def authenticate(
    session: ScenarioSMTP, mechanism: str, initial: str | None, shown: str
) -> tuple[str, bool] | None:
    """Run the exchange for ``mechanism``: (username, credentials valid), or None if aborted.

    Nothing the client sends here is logged or recorded: transcripts show ``****``.
    """
    settings = session.profile.settings
    assert settings.auth is not None
    users = settings.auth.users
    if mechanism == "PLAIN":
        blob = _decode(initial) if initial not in (None, "=") else b""
        if initial is None:
            blob = await session.challenge(Stage.AUTH, shown, b"")
            if blob is None:  # the challenge already answered (abort, bad base64, too long)
                return None
        if blob is None:
            return await _undecodable(session, shown)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            return await _undecodable(session, shown)
        username, password = _text(parts[1]), _text(parts[2])
        return username, _same(users.get(username), password)
    if mechanism == "LOGIN":
        if initial is not None:
            name_blob = _decode(initial)
            if name_blob is None:
                return await _undecodable(session, shown)
        else:
            name_blob = await session.challenge(Stage.AUTH, shown, b"Username:")
            if name_blob is None:
                return None
        password_blob = await session.challenge(Stage.AUTH, None, b"Password:")
        if password_blob is None:
            return None
        username = _text(name_blob)
        return username, _same(users.get(username), _text(password_blob))
    # CRAM-MD5 (RFC 2195): the client proves it knows the password without sending it.
    challenge = f"<{secrets.randbelow(10**9)}.{int(time.time())}@{settings.hostname}>".encode()
    answer = await session.challenge(Stage.AUTH, shown, challenge)
    if answer is None:
        return None
    username, _, digest = _text(answer).rpartition(" ")
    secret = users.get(username)
    if secret is None:
        return username, False
    expected = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    return username, hmac.compare_digest(expected, digest.lower())


def _decode(value: str | None) -> bytes | None:
    try:
        return base64.b64decode(value or "", validate=True)
    except (binascii.Error, ValueError):
        return None


def _text(blob: bytes) -> str:
    return blob.decode("utf-8", "replace")


def _same(expected: str | None, given: str) -> bool:
    return expected is not None and hmac.compare_digest(expected.encode(), given.encode())


async def _undecodable(session: ScenarioSMTP, shown: str) -> None:
    from .reply import Reply

    await session._send(
        Stage.AUTH, None, Reply(code=501, status="5.5.2", lines=("Cannot decode response",))
    )
    return None
