"""SASL mechanisms as pure functions: the client's answers come from a list, not a socket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Iterable

import pytest

from fakesmtp.session.auth import Undecodable, authenticate

USERS = {"alice": "s3cret"}


def run(mechanism: str, initial: str | None, answers: Iterable[bytes | None]) -> object:
    """authenticate() with a challenge callable that answers from ``answers``; records prompts."""
    pending = list(answers)
    prompts: list[bytes] = []

    async def challenge(text: bytes) -> bytes | None:
        prompts.append(text)
        return pending.pop(0)

    outcome = asyncio.run(authenticate(mechanism, initial, USERS, challenge, hostname="mx.test"))
    return outcome, prompts


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_plain_with_an_initial_response_needs_no_challenge() -> None:
    assert run("PLAIN", b64("\0alice\0s3cret"), []) == (("alice", True), [])
    assert run("PLAIN", b64("\0alice\0wrong"), []) == (("alice", False), [])


def test_plain_without_one_asks_with_an_empty_challenge() -> None:
    assert run("PLAIN", None, [b"\0alice\0s3cret"]) == (("alice", True), [b""])


def test_login_asks_for_the_username_then_the_password() -> None:
    outcome = run("LOGIN", None, [b"alice", b"s3cret"])
    assert outcome == (("alice", True), [b"Username:", b"Password:"])
    assert run("LOGIN", b64("alice"), [b"nope"]) == (("alice", False), [b"Password:"])


def test_cram_md5_checks_the_digest_of_its_own_challenge() -> None:
    async def challenge(text: bytes) -> bytes:
        digest = hmac.new(b"s3cret", text, hashlib.md5).hexdigest()
        return f"alice {digest}".encode()

    assert asyncio.run(authenticate("CRAM-MD5", None, USERS, challenge, hostname="mx.test")) == (
        "alice", True
    )  # fmt: skip
    outcome, [prompt] = run("CRAM-MD5", None, [b"alice 0123"])  # type: ignore[misc]
    assert outcome == ("alice", False) and prompt.endswith(b"@mx.test>")


def test_an_aborted_exchange_gives_none() -> None:
    # The challenge callable answered the client's "*" itself and says so with None.
    assert run("LOGIN", None, [None]) == (None, [b"Username:"])
    assert run("PLAIN", None, [None]) == (None, [b""])


@pytest.mark.parametrize(
    ("mechanism", "initial"), [("PLAIN", "not base64!"), ("PLAIN", b64("no nul bytes")),
                               ("LOGIN", "%%%")],
)  # fmt: skip
def test_a_response_that_does_not_decode_raises(mechanism: str, initial: str) -> None:
    with pytest.raises(Undecodable):
        run(mechanism, initial, [b"s3cret"])
