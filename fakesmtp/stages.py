"""The stages of an SMTP conversation a rule can answer, and what each stage can match on."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """Where in the conversation a reply is given. The values are the YAML ``on:`` words."""

    CONNECT = "connect"
    HELO = "helo"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BDAT = "bdat"  # one BDAT chunk (RFC 3030); after the LAST one, end_of_data decides
    END_OF_DATA = "end_of_data"
    RSET = "rset"
    NOOP = "noop"
    VRFY = "vrfy"
    EXPN = "expn"
    HELP = "help"
    QUIT = "quit"
    UNKNOWN = "unknown"


class Action(StrEnum):
    """What happens to the connection once a rule has fired."""

    CLOSE = "close"  # reply, then close
    DROP = "drop"  # close without replying
    RESET = "reset"  # TCP RST without replying
    HANG = "hang"  # never reply; the idle timeout ends it


class Per(StrEnum):
    """What the ``times`` / ``after`` counters of a rule are kept per."""

    SERVER = "server"
    CONNECTION = "connection"
    CLIENT = "client"
    SENDER = "sender"
    RECIPIENT = "recipient"
    TRIPLET = "triplet"


# The verb a client sends -> the stage that answers it. Anything else is Stage.UNKNOWN.
VERB_STAGES: dict[str, Stage] = {
    "HELO": Stage.HELO,
    "EHLO": Stage.EHLO,
    "STARTTLS": Stage.STARTTLS,
    "AUTH": Stage.AUTH,
    "MAIL": Stage.MAIL,
    "RCPT": Stage.RCPT,
    "DATA": Stage.DATA,
    "BDAT": Stage.BDAT,
    "RSET": Stage.RSET,
    "NOOP": Stage.NOOP,
    "VRFY": Stage.VRFY,
    "EXPN": Stage.EXPN,
    "HELP": Stage.HELP,
    "QUIT": Stage.QUIT,
}

_SESSION_KEYS = frozenset({"client", "tls", "concurrent"})
_GREETED_KEYS = _SESSION_KEYS | {"helo"}
_AUTH_KEYS = _GREETED_KEYS | {"user"}
_TRANSACTION_KEYS = _AUTH_KEYS | {"from", "to"}
MESSAGE_KEYS = frozenset({"subject", "header", "body", "size"})

# Which `match:` keys make sense at each stage. Facts carry forward: `from` holds from MAIL on,
# `to` is the recipient being tried at RCPT and "any accepted recipient" later.
MATCH_KEYS: dict[Stage, frozenset[str]] = {
    Stage.CONNECT: _SESSION_KEYS,
    Stage.HELO: _GREETED_KEYS,
    Stage.EHLO: _GREETED_KEYS,
    Stage.STARTTLS: _GREETED_KEYS,
    Stage.AUTH: _AUTH_KEYS,
    Stage.MAIL: _AUTH_KEYS | {"from"},
    Stage.RCPT: _TRANSACTION_KEYS,
    Stage.DATA: _TRANSACTION_KEYS,
    # `size` at a chunk: the bytes received so far in this message, this chunk included.
    Stage.BDAT: _TRANSACTION_KEYS | {"size"},
    Stage.END_OF_DATA: _TRANSACTION_KEYS | MESSAGE_KEYS,
    Stage.RSET: _TRANSACTION_KEYS,
    Stage.NOOP: _TRANSACTION_KEYS,
    Stage.VRFY: _TRANSACTION_KEYS,
    Stage.EXPN: _TRANSACTION_KEYS,
    Stage.HELP: _TRANSACTION_KEYS,
    Stage.QUIT: _TRANSACTION_KEYS,
    Stage.UNKNOWN: _TRANSACTION_KEYS,
}
