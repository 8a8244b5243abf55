"""Mailpit's ``POST /api/v1/send``: a message from JSON, submitted over SMTP to this server.

Mailpit stores such a message directly; fakesmtp hands it to its own SMTP listener instead, so
the scenario's rules answer it as they answer any client: a refusal comes back as the SMTP
reply (``{"error": "550 5.1.1 ...", "stage": "rcpt"}``, status 400), and an accepted message
is captured and listed like any other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

SEND_TIMEOUT = 30.0  # seconds for the whole exchange: a scenario's delay: can make it slow
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class SendError(Exception):
    """Bad JSON (status 400), or a reply from the scenario that refused it."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage


def _address(item: Any, where: str) -> tuple[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("Email"), str) or not item["Email"]:
        raise SendError(f"{where} must be {{Email, Name}} with an Email")
    return str(item.get("Name") or ""), item["Email"]


def _addresses(body: dict[str, Any], key: str) -> list[tuple[str, str]]:
    items = body.get(key) or []
    if not isinstance(items, list):
        raise SendError(f"{key} must be a list")
    if key == "Bcc":  # Mailpit's Bcc is a list of plain addresses
        return [("", str(item)) for item in items]
    return [_address(item, f"{key}[{n}]") for n, item in enumerate(items)]


def build(body: dict[str, Any]) -> tuple[str, list[str], bytes]:
    """Mailpit's send request -> (sender, recipients, the message's bytes)."""
    name, sender = _address(body.get("From"), "From")
    to, cc, bcc = _addresses(body, "To"), _addresses(body, "Cc"), _addresses(body, "Bcc")
    if not (to or cc or bcc):
        raise SendError("at least one recipient is needed (To, Cc or Bcc)")
    message = EmailMessage()
    message["From"] = formataddr((name, sender))
    for key, found in (("To", to), ("Cc", cc)):
        if found:
            message[key] = ", ".join(formataddr(pair) for pair in found)
    reply_to = _addresses(body, "ReplyTo")
    if reply_to:
        message["Reply-To"] = ", ".join(formataddr(pair) for pair in reply_to)
    message["Subject"] = str(body.get("Subject") or "")
    for header, value in (body.get("Headers") or {}).items():
        message[str(header)] = str(value)
    if body.get("Tags"):
        message["X-Tags"] = ", ".join(str(tag) for tag in body["Tags"])
    message.set_content(str(body.get("Text") or ""))
    if body.get("HTML"):
        message.add_alternative(str(body["HTML"]), subtype="html")
    for n, attachment in enumerate(body.get("Attachments") or []):
        try:
            content = base64.b64decode(attachment["Content"], validate=True)
            filename = str(attachment["Filename"])
        except (KeyError, TypeError, binascii.Error):
            raise SendError(f"Attachments[{n}] needs base64 Content and a Filename") from None
        kind = str(attachment.get("ContentType") or "application/octet-stream")
        maintype, _, subtype = kind.partition("/")
        message.add_attachment(content, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=filename)  # fmt: skip
        if attachment.get("ContentID"):
            part = message.get_payload()[-1]  # type: ignore[index]
            part.replace_header("Content-Disposition", f'inline; filename="{filename}"')
            part["Content-ID"] = f"<{attachment['ContentID']}>"
    Address(addr_spec=sender)  # a malformed address fails here, before any SMTP
    recipients = [address for _, address in (*to, *cc, *bcc)]
    return sender, recipients, message.as_bytes()


async def submit(host: str, port: int, sender: str, recipients: list[str], raw: bytes) -> str:
    """One SMTP transaction to ``host:port``; returns the queued id, or raises SendError."""
    reader, writer = await asyncio.open_connection(LOOPBACK.get(host, host), port)
    try:
        return await asyncio.wait_for(
            _converse(reader, writer, sender, recipients, raw), SEND_TIMEOUT
        )
    except TimeoutError:
        raise SendError(f"no reply from the SMTP listener within {SEND_TIMEOUT:g}s") from None
    finally:
        writer.close()


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            raise SendError("the SMTP listener closed the connection")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), " | ".join(lines)


async def _converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sender: str,
                    recipients: list[str], raw: bytes) -> str:  # fmt: skip
    async def step(stage: str, line: bytes | None, wanted: int) -> str:
        if line is not None:
            writer.write(line)
            await writer.drain()
        code, text = await _reply(reader)
        if code != wanted:
            raise SendError(text, stage)
        return text

    await step("connect", None, 220)
    await step("ehlo", b"EHLO fakesmtp.api\r\n", 250)
    await step("mail", f"MAIL FROM:<{sender}>\r\n".encode(), 250)
    for recipient in recipients:
        await step("rcpt", f"RCPT TO:<{recipient}>\r\n".encode(), 250)
    await step("data", b"DATA\r\n", 354)
    body = re.sub(rb"(?m)^\.", b"..", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    text = await step("end_of_data", body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n",
                      250)  # fmt: skip
    writer.write(b"QUIT\r\n")
    await writer.drain()
    return text.rsplit(" ", 1)[-1]  # "250 2.0.0 Ok: queued as ID"
