"""Default reply texts, generated from catalog.yaml by catalog.py.

Do not edit: regenerate (tests/test_catalog.py checks the two agree). Loading a scenario with a
bare ``reply: 550`` needs only these, not the whole catalog (parsing it costs start-up ~60 ms).
"""

from __future__ import annotations

# code: (status, text, {stage: status}, {stage: text})
CODES: dict[int, tuple[str | None, str, dict[str, str | None], dict[str, str]]] = {
    101: (None, "", {}, {}),
    111: (None, "", {}, {}),
    211: ("2.0.0", "System status: all services running", {}, {}),
    214: ("2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY", {}, {}),
    220: (None, "ESMTP service ready", {"starttls": "2.0.0"}, {"starttls": "Ready to start TLS"}),
    221: ("2.0.0", "Service closing transmission channel", {}, {}),
    235: ("2.7.0", "Authentication successful", {}, {}),
    250: (
        "2.0.0",
        "OK",
        {"ehlo": None, "helo": None, "mail": "2.1.0", "rcpt": "2.1.5"},
        {
            "ehlo": "Hello, pleased to meet you",
            "end_of_data": "Message accepted for delivery",
            "helo": "Hello, pleased to meet you",
            "mail": "Sender OK",
            "rcpt": "Recipient OK",
        },
    ),
    251: ("2.1.5", "User not local; will forward", {}, {}),
    252: (
        "2.0.0",
        "Cannot verify this user, but will accept mail for it and attempt delivery",
        {},
        {},
    ),
    334: (None, "VXNlcm5hbWU6", {}, {}),
    354: (None, "End data with <CR><LF>.<CR><LF>", {}, {}),
    420: ("4.4.2", "Timeout connection problem", {}, {}),
    421: ("4.3.2", "Service not available, closing transmission channel", {}, {}),
    422: ("4.2.2", "Recipient mailbox is over its storage limit", {}, {}),
    431: ("4.3.1", "Insufficient system resources", {}, {}),
    432: (
        "4.7.12",
        "A password transition is needed",
        {"connect": "4.3.2", "rcpt": "4.3.2"},
        {"connect": "Incoming mail queue is stopped", "rcpt": "Incoming mail queue is stopped"},
    ),
    441: ("4.4.1", "No answer from the next host", {}, {}),
    442: ("4.4.2", "Connection dropped during transmission", {}, {}),
    446: ("4.4.6", "Maximum hop count exceeded, routing loop detected", {}, {}),
    447: ("4.4.7", "Message delayed, delivery time expired", {}, {}),
    449: ("4.4.0", "Routing error", {}, {}),
    450: (
        "4.2.0",
        "Mailbox temporarily unavailable",
        {"mail": "4.1.8"},
        {"mail": "Sender domain cannot be checked right now"},
    ),
    451: ("4.3.0", "Local error in processing", {}, {}),
    452: (
        "4.3.1",
        "Insufficient system storage",
        {"rcpt": "4.5.3"},
        {"rcpt": "Too many recipients"},
    ),
    454: (
        "4.7.0",
        "Temporary authentication failure",
        {},
        {"starttls": "TLS not available due to a temporary reason"},
    ),
    455: ("4.5.4", "Server unable to accommodate parameters", {}, {}),
    471: ("4.7.1", "Message deferred by the content filter", {}, {}),
    500: (
        "5.5.2",
        "Syntax error, command unrecognized",
        {"auth": "5.5.6"},
        {"auth": "Authentication exchange line is too long"},
    ),
    501: (
        "5.5.4",
        "Syntax error in parameters or arguments",
        {"auth": "5.5.2", "mail": "5.1.7", "rcpt": "5.1.3"},
        {
            "auth": "Cannot decode the base64 response",
            "mail": "Bad sender address syntax",
            "rcpt": "Bad recipient address syntax",
        },
    ),
    502: ("5.5.1", "Command not implemented", {}, {}),
    503: ("5.5.1", "Bad sequence of commands", {}, {}),
    504: (
        "5.5.4",
        "Command parameter not implemented",
        {"ehlo": "5.5.2", "helo": "5.5.2"},
        {
            "auth": "Unrecognized authentication type",
            "ehlo": "Need a fully-qualified hostname",
            "helo": "Need a fully-qualified hostname",
        },
    ),
    510: ("5.1.0", "Bad email address", {}, {}),
    511: ("5.1.1", "Bad destination mailbox address", {}, {}),
    512: (
        "5.1.2",
        "Bad destination system address, domain not found",
        {"mail": "5.1.8"},
        {"mail": "Sender domain not found"},
    ),
    513: ("5.1.3", "Address type is incorrect", {"mail": "5.1.7"}, {}),
    521: ("5.3.2", "Host does not accept mail", {}, {}),
    523: (
        "5.3.4",
        "Total message size exceeds the recipient server's limits",
        {"auth": "5.7.10"},
        {"auth": "Encryption needed"},
    ),
    530: ("5.7.0", "Authentication required", {}, {}),
    534: ("5.7.9", "Authentication mechanism is too weak", {}, {}),
    535: ("5.7.8", "Authentication credentials invalid", {}, {}),
    538: ("5.7.11", "Encryption required for requested authentication mechanism", {}, {}),
    541: ("5.7.1", "Message rejected by the recipient's spam filter", {}, {}),
    550: (
        "5.1.1",
        "Mailbox unavailable, no such user",
        {
            "data": "5.7.1",
            "ehlo": "5.7.1",
            "end_of_data": "5.7.1",
            "helo": "5.7.1",
            "mail": "5.7.1",
        },
        {
            "data": "Message refused by policy",
            "ehlo": "Access denied",
            "end_of_data": "Message refused by policy",
            "helo": "Access denied",
            "mail": "Sender address rejected, access denied",
        },
    ),
    551: ("5.1.6", "User not local; please try the forwarding address", {}, {}),
    552: (
        "5.3.4",
        "Message size exceeds fixed maximum message size",
        {"rcpt": "5.2.2"},
        {"rcpt": "Mailbox full"},
    ),
    553: (
        "5.1.3",
        "Mailbox name not allowed",
        {"mail": "5.1.7"},
        {"mail": "Sender address not allowed"},
    ),
    554: (
        "5.7.1",
        "Transaction failed",
        {"data": "5.5.1"},
        {
            "connect": "No SMTP service here",
            "data": "No valid recipients",
            "end_of_data": "Message rejected",
        },
    ),
    555: ("5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented", {}, {}),
    556: ("5.1.10", "Domain does not accept mail", {}, {}),
}

FIRST_DIGIT: dict[int, str] = {
    1: "Preliminary reply",
    2: "Completed",
    3: "Go ahead",
    4: "Temporary failure",
    5: "Permanent failure",
}
SECOND_DIGIT: dict[int, str] = {
    0: "syntax",
    1: "information",
    2: "connection",
    3: "unspecified",
    4: "unspecified",
    5: "mail system",
}


def default_reply(code: int, stage: str | None = None) -> tuple[str | None, str]:
    """See catalog.default_reply."""
    if not 100 <= code <= 599:
        raise ValueError(f"{code} is not an SMTP reply code: the first digit must be 1 to 5")
    entry = CODES.get(code)
    if entry is not None:
        status, text, stage_status, stage_text = entry
        if stage is not None:
            return stage_status.get(stage, status), stage_text.get(stage, text)
        return status, text
    first = str(code)[0]
    second = SECOND_DIGIT.get(int(str(code)[1]))
    qualifier = f" ({second})" if second else ""
    status_text = f"{first}.0.0" if first in "245" else None
    return status_text, f"{FIRST_DIGIT[int(first)]}{qualifier}"
