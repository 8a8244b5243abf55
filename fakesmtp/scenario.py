"""Scenario files -> validated, frozen model. The only module that reads scenario YAML.

YAML 1.1 reads a bare ``on`` key as the boolean ``true``, and ``safe_load`` forgets line numbers,
so the model is built from ``yaml.compose`` nodes: keys stay the words users wrote, and every
value carries the line it came from for error messages. Python data (``FakeSMTP.on()``,
``use(dict)``, ``--banner``) is turned into the same nodes directly, each marked with the
caller's file and line, so it meets the same validator without a trip through YAML text.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from . import yaml_subset
from .patterns import (
    PatternError,
    SizeMatcher,
    TextMatcher,
    compile_cidr,
    compile_count,
    compile_size,
    compile_text,
    parse_duration,
    parse_size,
)
from .reply import Reply, ReplyError
from .stages import MATCH_KEYS, Action, Per, Stage
from .suggest import did_you_mean
from .yaml_errors import explain as explain_yaml_error

EnumT = TypeVar("EnumT", Action, Per)

DEFAULT_HOSTNAME = "mx.fakesmtp.test"
DEFAULT_EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN")
# What `extensions:` may list: the ones the session really implements when they are offered.
KNOWN_EXTENSIONS = frozenset(
    {
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "CHUNKING",  # BDAT (RFC 3030)
        "BINARYMIME",  # BODY=BINARYMIME, sent with BDAT only (RFC 3030 3)
    }
)
# Names a user may reasonably write that would otherwise be accepted and do nothing.
REFUSED_EXTENSIONS = {
    "SIZE": "SIZE is advertised from server.size_limit (set it; 0 turns SIZE off)",
}
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a scenario: where it is, which key, what is wrong, what is allowed."""

    path: str
    line: int
    key: str
    message: str
    allowed: str = ""
    hint: str = ""  # what to write instead, when we know
    excerpt: str = ""  # the offending line, shown with a caret under ``column``
    column: int | None = None

    def __str__(self) -> str:
        allowed = f" (allowed: {self.allowed})" if self.allowed else ""
        # Line 0 is the file as a whole (unreadable, or no such name): no line to jump to.
        where = f"{self.path}:{self.line}" if self.line else self.path
        lines = [f"{where}: {self.key}: {self.message}{allowed}"]
        if self.excerpt:
            # Tabs become single spaces so the caret stays under the character it means.
            lines.append("    " + self.excerpt.replace("\t", " "))
            if self.column is not None:
                lines.append("    " + " " * self.column + "^")
        if self.hint:
            lines.append(f"  {self.hint}")
        return "\n".join(lines)


class ScenarioError(ValueError):
    """A scenario that cannot be loaded. ``str()`` gives one ``FILE:LINE: key: why`` per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        self.path, self.line, self.key, self.message = (
            first.path,
            first.line,
            first.key,
            first.message,
        )
        super().__init__("\n".join(str(p) for p in problems))


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where a rule was written, for errors, logs and transcripts."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """Conditions of a rule, compiled. ``None`` means "not asked"; all given ones must hold."""

    client: TextMatcher | None = None
    helo: TextMatcher | None = None
    sender: TextMatcher | None = None  # the YAML key is `from`
    to: TextMatcher | None = None
    user: TextMatcher | None = None
    tls: bool | None = None
    subject: TextMatcher | None = None
    headers: tuple[tuple[str, TextMatcher], ...] = ()
    body: TextMatcher | None = None
    size: SizeMatcher | None = None
    concurrent: SizeMatcher | None = None  # open sessions now, per the rule's `per`
    keys: tuple[str, ...] = ()  # the keys written, in order: for near-miss reports


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """When (stage + match) -> then (reply, action, delay), limited by times/after/probability."""

    on: Stage
    match: Match = field(default_factory=Match)
    reply: Reply | None = None
    action: Action | None = None
    delay: float = 0.0
    times: int | None = None
    after: int = 0
    per: Per = Per.SERVER
    within: float | None = None  # seconds: count times/after only over this sliding window
    volume: int | None = None  # bytes: fire once the messages counted (per, within) pass it
    probability: float | None = None
    name: str = ""
    source: Source = field(default_factory=lambda: Source(path="<code>", line=0))

    @property
    def label(self) -> str:
        """How logs and transcripts name the rule."""
        return self.name or f"{self.on} rule at {self.source}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSSettings:
    starttls: bool = False
    required: bool = False
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSettings:
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    required: bool = False
    users: Mapping[str, str] = field(default_factory=dict)
    # Offered only once STARTTLS is done, as Postfix's smtpd_tls_auth_only does; MAIL stays
    # open without TLS (tls.required closes it too).
    tls_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """The ``server:`` section: identity, extensions and limits."""

    hostname: str = DEFAULT_HOSTNAME
    size_limit: int = 32 * 1024 * 1024
    # How the limit is worded (server.size_replies): at MAIL for a declared SIZE= over it, after
    # the final dot for a message that turned out bigger. None: fakesmtp's own 552 5.3.4.
    mail_size_reply: Reply | None = None
    data_size_reply: Reply | None = None
    max_recipients: int = 1000
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    tls: TLSSettings = field(default_factory=TLSSettings)
    auth: AuthSettings | None = None
    address_replies: bool = False  # the default scenario: `rcpt-550@x` asks RCPT for a 550
    max_line_length: int = 1000  # command lines, CRLF included (RFC 5321 4.5.3.1.4 says 512)
    idle_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: at least 5 minutes between commands
    # Once a command line has begun, it must end within this: the idle timer only restarts on
    # a complete line, and a client trickling bytes should not hold a connection for minutes.
    command_timeout: float = 60.0
    # A whole DATA phase, and the rate it must keep (Postfix's smtpd_min_data_rate): a client
    # sending a line every few seconds restarts the idle timer each time, yet loses its slot.
    # The rate is owed after the first command_timeout of the phase; 0 asks for no rate.
    data_timeout: float = 600.0
    min_data_rate: int = 500  # bytes a second
    auth_timeout: float = 60.0  # a whole AUTH exchange, its 334 challenges included
    max_connections: int = 1000
    max_errors: int = 20  # protocol errors in one session before 421 and close

    @property
    def enhanced_status(self) -> bool:
        return "ENHANCEDSTATUSCODES" in self.extensions


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A whole scenario: server settings and the rules, first match wins."""

    name: str = "custom"
    description: str = ""
    seed: int | None = None
    server: ServerSettings = field(default_factory=ServerSettings)
    rules: tuple[Rule, ...] = ()
    source: str = "<code>"
    text: str = ""  # the YAML it came from, for GET /api/v1/scenario
    # Where in `text` the AUTH passwords are: public_text() blanks them out.
    secret_spans: tuple[tuple[int, int], ...] = ()

    def public_text(self) -> str:
        """``text`` with every AUTH password replaced: what the API may show."""
        text = self.text
        for start, end in sorted(self.secret_spans, reverse=True):
            text = f"{text[:start]}'*****'{text[end:]}"
        return text


# --------------------------------------------------------------------------- YAML nodes


def _constructor() -> yaml.constructor.SafeConstructor:
    return yaml.constructor.SafeConstructor()


class _Reader:
    """Walks composed YAML nodes, turning mistakes into Problems instead of exceptions."""

    def __init__(
        self, path: str, file_check: Callable[[str], bool] | None = None, *, from_code: bool = False
    ) -> None:
        self.path = path
        self.from_code = from_code  # built from Python data, not written in a file
        self.problems: list[Problem] = []
        self.file_check = file_check
        self.secret_spans: list[tuple[int, int]] = []
        self._constructor = _constructor()

    def problem(self, node: yaml.Node | None, key: str, message: str, allowed: str = "") -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(self.path, line, key, message, allowed))

    def value(self, node: yaml.Node) -> Any:
        # Strings are most of a scenario: their tag is resolved already, so take the text
        # (a quarter of a 100,000-rule load went to the constructor's bookkeeping).
        if node.tag == _STR_TAG and isinstance(node, yaml.ScalarNode):
            return node.value
        return self._constructor.construct_object(node, deep=True)

    def mapping(
        self, node: yaml.Node, key: str, allowed: tuple[str, ...]
    ) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """Yield (key, key node, value node), reporting unknown and repeated keys."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, key, f"must be a mapping, not {_kind(node)}")
            return
        seen: set[str] = set()
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            if type(name) is not str:
                name = str(name)
            if name in seen:
                self.problem(key_node, f"{key}.{name}" if key else name, "is given twice")
                continue
            seen.add(name)
            if name not in allowed:
                hint = did_you_mean(name, allowed)
                self.problem(
                    key_node,
                    f"{key}.{name}" if key else name,
                    f"unknown key; {hint}" if hint else "unknown key",
                    ", ".join(allowed),
                )
                continue
            yield name, key_node, value_node

    def scalar(self, node: yaml.Node, key: str, kinds: tuple[type, ...], what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, key, f"must be {what}, not {_kind(node)}")
            return None
        value = self.value(node)
        if not _is_kind(value, kinds):
            self.problem(node, key, f"must be {what}, not {value!r}")
            return None
        return value

    def typed(self, node: yaml.Node, key: str, spec: _Value) -> Any:
        """A rule value per its spec: the right kind, then converted, or a problem."""
        value = self.scalar(node, key, spec.kinds, spec.what)
        if value is None:
            return None
        try:
            return spec.convert(value, self.from_code)
        except _Refused as refused:
            self.problem(node, key, refused.message, refused.allowed)
            return None

    def strings(self, node: yaml.Node, key: str) -> str | list[str] | None:
        """A string or a list of strings (a pattern, or "any of" patterns)."""
        if isinstance(node, yaml.SequenceNode):
            items = [self.scalar(item, key, (str, int), "a string") for item in node.value]
            if any(item is None for item in items):
                return None
            if not items:
                self.problem(node, key, "list is empty")
                return None
            return [str(item) for item in items]
        value = self.scalar(node, key, (str, int), "a string or a list of strings")
        return None if value is None else str(value)


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    """``isinstance``, except that YAML's true/false are not numbers."""
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


# --------------------------------------------------------------------------- building

_TOP_KEYS = ("name", "description", "seed", "server", "rules")
_SERVER_KEYS = (
    "hostname",
    "size_limit",
    "size_replies",
    "max_recipients",
    "extensions",
    "tls",
    "auth",
    "address_replies",
    "max_line_length",
    "idle_timeout",
    "command_timeout",
    "data_timeout",
    "min_data_rate",
    "auth_timeout",
    "max_connections",
    "max_errors",
)
_TLS_KEYS = ("starttls", "required", "cert", "key")
_AUTH_KEYS = ("mechanisms", "required", "users", "tls_only")
_SIZE_REPLY_KEYS = ("mail", "end_of_data")
_RULE_KEYS = (
    "on",
    "match",
    "reply",
    "action",
    "delay",
    "times",
    "after",
    "per",
    "within",
    "volume",
    "probability",
    "name",
)
_MATCH_KEYS = (
    "from",
    "to",
    "helo",
    "client",
    "user",
    "tls",
    "subject",
    "header",
    "body",
    "size",
    "concurrent",
)
_REPLY_KEYS = ("code", "status", "text")
_STAGE_WORDS = ", ".join(s.value for s in Stage)

# Which `per` keys need which facts, i.e. from which stage on they mean anything.
_PER_STAGES: dict[Per, frozenset[Stage]] = {
    Per.SENDER: frozenset(s for s in Stage if "from" in MATCH_KEYS[s]),
    Per.RECIPIENT: frozenset({Stage.RCPT, Stage.DATA, Stage.BDAT, Stage.END_OF_DATA}),
    Per.TRIPLET: frozenset({Stage.RCPT, Stage.DATA, Stage.BDAT, Stage.END_OF_DATA}),
}


_ALL_STAGES = frozenset(Stage)

# What `concurrent` can count open sessions per: each of these can have several at once.
_CONCURRENT_PER = (Per.SERVER, Per.CLIENT, Per.SENDER)


_STR_TAG = "tag:yaml.org,2002:str"


@lru_cache(maxsize=1024)
def _default_reply_text(code: int, stage: Stage | None) -> tuple[str | None, str]:
    """The catalog's status and text for a bare code (``reply: 452``)."""
    # The generated table, not the catalog: parsing catalog.yaml would cost start-up ~60 ms.
    from . import catalog_defaults

    return catalog_defaults.default_reply(code, stage.value if stage else None)


def _make_reply(code: int, status: str | None, text: Any, stage: Stage | None) -> Reply:
    if not 200 <= code <= 599:
        raise ReplyError(f"reply code {code} is not between 200 and 599")
    if text is None:
        default_status, default_text = _default_reply_text(code, stage)
        status = status if status is not None else default_status
        # RFC 5321 4.2: greetings and closing replies start with the server's name.
        text = f"{{hostname}} {default_text}" if code in (220, 221, 421) else default_text
    return Reply.make(code, status, text)


_made_reply = lru_cache(maxsize=4096)(_make_reply)
# Replies are frozen: a file saying `550 5.1.1 No such user` 10,000 times needs one.
_parsed_reply = lru_cache(maxsize=4096)(Reply.parse)


class _Builder:
    def __init__(
        self, path: str, file_check: Callable[[str], bool] | None = None, *, from_code: bool = False
    ) -> None:
        self.read = _Reader(path, file_check, from_code=from_code)
        self.patterns: dict[tuple[Callable[..., Any], str | tuple[str, ...]], Any] = {}

    def pattern(self, compile_fn: Callable[..., Any], spec: str | list[str]) -> Any:
        """Compile a pattern once per load: matchers are pure functions, so rules that
        repeat `to: "*@x.test"` share one (a regex compile costs ~15 us)."""
        key = (compile_fn, spec if isinstance(spec, str) else tuple(spec))
        matcher = self.patterns.get(key)
        if matcher is None:
            matcher = self.patterns[key] = compile_fn(spec)
        return matcher

    # -- top level
    def scenario(self, root: yaml.Node | None, text: str) -> Scenario | None:
        r = self.read
        if root is None:
            r.problem(None, "scenario", "file is empty", "name, description, seed, server, rules")
            return None
        fields: dict[str, Any] = {"source": r.path, "text": text}
        for key, _, node in r.mapping(root, "", _TOP_KEYS):
            if key in ("name", "description"):
                value = r.scalar(node, key, (str,), "a string")
                if value is not None:
                    fields[key] = value
            elif key == "seed":
                value = r.scalar(node, key, (int,), "a whole number")
                if value is not None:
                    fields["seed"] = value
            elif key == "server":
                fields["server"] = self.server(node)
            elif key == "rules":
                fields["rules"] = self.rules(node)
        if r.problems:
            return None
        if "name" not in fields and not r.from_code and r.path not in ("<code>", "<text>", "-"):
            fields["name"] = Path(r.path).stem
        return Scenario(secret_spans=tuple(r.secret_spans), **fields)

    def server(self, node: yaml.Node) -> ServerSettings:
        r = self.read
        settings: dict[str, Any] = {}
        for key, _, value_node in r.mapping(node, "server", _SERVER_KEYS):
            where = f"server.{key}"
            if key == "hostname":
                value = r.scalar(value_node, where, (str,), "a host name")
                if value is not None:
                    settings[key] = value
            elif key in ("size_limit", "max_line_length", "min_data_rate"):
                value = r.scalar(value_node, where, (str, int), "a size like 10MiB")
                if value is not None:
                    try:
                        settings[key] = parse_size(value)
                    except PatternError as error:
                        r.problem(value_node, where, str(error))
            elif key == "size_replies":
                settings.update(self.size_replies(value_node))
            elif key in ("max_recipients", "max_connections", "max_errors"):
                value = r.scalar(value_node, where, (int,), "a whole number")
                if value is not None:
                    if value < 1:
                        r.problem(value_node, where, "must be 1 or more")
                    settings[key] = value
            elif key in ("idle_timeout", "command_timeout", "data_timeout", "auth_timeout"):
                value = r.scalar(value_node, where, (str, int, float), "a duration like 30s")
                if value is not None:
                    try:
                        settings[key] = parse_duration(value)
                    except PatternError as error:
                        r.problem(value_node, where, str(error))
                    else:
                        if settings[key] <= 0:  # a zero timer would close every connection
                            r.problem(value_node, where, "must be more than 0")
            elif key == "address_replies":
                value = r.scalar(value_node, where, (bool,), "true or false")
                if value is not None:
                    settings[key] = value
            elif key == "extensions":
                settings[key] = self.extensions(value_node)
            elif key == "tls":
                settings[key] = self.tls(value_node)
            elif key == "auth":
                settings[key] = self.auth(value_node)
        return ServerSettings(**settings)

    def extensions(self, node: yaml.Node) -> tuple[str, ...]:
        r = self.read
        if not isinstance(node, yaml.SequenceNode):
            r.problem(
                node, "server.extensions", "must be a list", ", ".join(sorted(KNOWN_EXTENSIONS))
            )
            return DEFAULT_EXTENSIONS
        names = []
        for item in node.value:
            value = r.scalar(item, "server.extensions", (str,), "an extension name")
            if value is None:
                continue
            name = value.upper()
            if name in REFUSED_EXTENSIONS:
                r.problem(item, "server.extensions", REFUSED_EXTENSIONS[name])
            elif name not in KNOWN_EXTENSIONS:
                r.problem(
                    item,
                    "server.extensions",
                    f"unknown extension {value!r}",
                    ", ".join(sorted(KNOWN_EXTENSIONS)),
                )
            names.append(name)
        if "BINARYMIME" in names and "CHUNKING" not in names:
            # RFC 3030 3: a BINARYMIME message can only be sent with BDAT.
            r.problem(
                node,
                "server.extensions",
                "BINARYMIME needs CHUNKING: binary messages are sent with BDAT only",
                "add CHUNKING, or remove BINARYMIME",
            )
        return tuple(names)

    def tls(self, node: yaml.Node) -> TLSSettings:
        r = self.read
        settings: dict[str, Any] = {}
        for key, _, value_node in r.mapping(node, "server.tls", _TLS_KEYS):
            where = f"server.tls.{key}"
            if key in ("starttls", "required"):
                value = r.scalar(value_node, where, (bool,), "true or false")
            else:
                value = r.scalar(value_node, where, (str,), "a file path")
                if value is not None and r.file_check is not None and not r.file_check(value):
                    # Checked before existence: an answer about any other path would tell a
                    # client of the API which files the server has.
                    r.problem(
                        value_node,
                        where,
                        "only files in the directories this server was started with "
                        "(its scenario's, --cert's) can be named here",
                    )
                    value = None
                elif value is not None and not Path(value).is_file():
                    r.problem(value_node, where, f"no such file: {value}")
            if value is not None:
                settings[key] = value
        if ("cert" in settings) != ("key" in settings):
            r.problem(node, "server.tls", "cert and key go together: give both or neither")
        if settings.get("required") and "starttls" not in settings:
            settings["starttls"] = True  # requiring TLS implies offering it
        return TLSSettings(**settings)

    def size_replies(self, node: yaml.Node) -> dict[str, Reply]:
        """``{mail: REPLY, end_of_data: REPLY}``: refusals, so 4xx or 5xx."""
        found = {}
        for key, _, value_node in self.read.mapping(node, "server.size_replies", _SIZE_REPLY_KEYS):
            reply = self.rule_reply(value_node, Stage(key))
            if reply is None:
                continue
            if reply.code < 400:
                self.read.problem(
                    value_node, f"server.size_replies.{key}", "must refuse", "4xx or 5xx"
                )
                continue
            found["mail_size_reply" if key == "mail" else "data_size_reply"] = reply
        return found

    def auth(self, node: yaml.Node) -> AuthSettings:
        r = self.read
        settings: dict[str, Any] = {}
        for key, _, value_node in r.mapping(node, "server.auth", _AUTH_KEYS):
            where = f"server.auth.{key}"
            if key in ("required", "tls_only"):
                value = r.scalar(value_node, where, (bool,), "true or false")
                if value is not None:
                    settings[key] = value
            elif key == "mechanisms":
                names = r.strings(value_node, where)
                names = [names] if isinstance(names, str) else names
                if names is not None:
                    upper = tuple(n.upper() for n in names)
                    for name in upper:
                        if name not in AUTH_MECHANISMS:
                            r.problem(
                                value_node,
                                where,
                                f"unknown mechanism {name!r}",
                                ", ".join(AUTH_MECHANISMS),
                            )
                    settings[key] = upper
            elif key == "users":
                users: dict[str, str] = {}
                for user, _, password_node in r.mapping(value_node, where, _AnyKey()):
                    r.secret_spans.append(
                        (password_node.start_mark.index, password_node.end_mark.index)
                    )
                    password = r.scalar(password_node, f"{where}.{user}", (str, int), "a password")
                    if password is not None:
                        users[user] = str(password)
                settings[key] = users
        return AuthSettings(**settings)

    # -- rules
    def rules(self, node: yaml.Node) -> tuple[Rule, ...]:
        r = self.read
        if not isinstance(node, yaml.SequenceNode):
            hint = (
                '; start each rule with "- " (- on: rcpt)'
                if isinstance(node, yaml.MappingNode)
                else ""
            )
            r.problem(node, "rules", f"must be a list of rules, not {_kind(node)}{hint}")
            return ()
        rules = []
        # An alias (`- *common`) is its anchor's very node: build it once, then copy the rule
        # (the engine tells rules apart by identity); a wrong one is reported once, at its line.
        built: dict[int, Rule | None] = {}
        for index, item in enumerate(node.value):
            if id(item) in built:
                rule = built[id(item)]
                if rule is not None:
                    rules.append(replace(rule))
                continue
            rule = built[id(item)] = self.rule(item, index)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, node: yaml.Node, index: int) -> Rule | None:
        r = self.read
        before = len(r.problems)
        nodes = {
            key: (key_node, value_node)
            for key, key_node, value_node in r.mapping(node, f"rules[{index}]", _RULE_KEYS)
        }
        if not isinstance(node, yaml.MappingNode):
            return None
        stage = None
        if "on" not in nodes:
            r.problem(node, "on", "every rule needs a stage", _STAGE_WORDS)
        else:
            value = r.scalar(nodes["on"][1], "on", (str,), "a stage name")
            if value is not None:
                stage = _STAGES.get(value)  # a dict lookup: Stage(value) costs a few us
                if stage is None:
                    hint = did_you_mean(value, [s.value for s in Stage])
                    hint = f"; {hint}" if hint else ""
                    r.problem(nodes["on"][1], "on", f"unknown stage {value!r}{hint}", _STAGE_WORDS)
        fields: dict[str, Any] = {
            "source": Source(path=r.path, line=node.start_mark.line + 1),
        }
        if stage is not None:
            fields["on"] = stage
        for key, (_, value_node) in nodes.items():
            if key == "on":
                continue
            spec = _RULE_VALUES.get(key)
            if spec is not None:
                value = r.typed(value_node, key, spec)
            elif key == "match":
                value = self.rule_match(value_node, stage)
            else:
                value = self.rule_reply(value_node, stage)
            if value is not None:
                fields[key] = value
        if stage is None or len(r.problems) > before:
            return None
        conflict = _rule_conflict(stage, fields)
        if conflict is not None:
            key, message, allowed = conflict
            r.problem(node if key == "reply" else nodes[key][1], key, message, allowed)
            return None
        return Rule(**fields)

    def rule_match(self, node: yaml.Node, stage: Stage | None) -> Match | None:
        r = self.read
        fields: dict[str, Any] = {}
        keys = []
        for key, key_node, value_node in r.mapping(node, "match", _MATCH_KEYS):
            where = f"match.{key}"
            if stage is not None and key not in MATCH_KEYS[stage]:
                allowed = ", ".join(k for k in _MATCH_KEYS if k in MATCH_KEYS[stage])
                r.problem(key_node, where, f"stage {stage} cannot match on {key}", allowed)
                continue
            keys.append(key)
            spec = _MATCH_VALUES.get(key)
            if spec is not None:
                value = r.typed(value_node, where, spec)
                if value is not None:
                    fields[key] = value
                continue
            try:
                if key == "header":
                    headers = []
                    for name, _, pattern_node in r.mapping(value_node, where, _AnyKey()):
                        pattern = r.strings(pattern_node, f"{where}.{name}")
                        if pattern is not None:
                            headers.append((name, self.pattern(compile_text, pattern)))
                    fields["headers"] = tuple(headers)
                else:
                    pattern = r.strings(value_node, where)
                    if pattern is not None:
                        compile_fn = compile_cidr if key == "client" else compile_text
                        fields["sender" if key == "from" else key] = self.pattern(
                            compile_fn, pattern
                        )
            except PatternError as error:
                r.problem(value_node, where, str(error))
        return Match(keys=tuple(keys), **fields)

    def rule_reply(self, node: yaml.Node, stage: Stage | None) -> Reply | None:
        r = self.read
        try:
            if isinstance(node, yaml.MappingNode):
                parts: dict[str, Any] = {}
                for key, _, value_node in r.mapping(node, "reply", _REPLY_KEYS):
                    if key == "code":
                        parts[key] = r.scalar(value_node, "reply.code", (int,), "a 3-digit code")
                    elif key == "status":
                        parts[key] = r.scalar(value_node, "reply.status", (str,), "like 5.1.1")
                    else:
                        parts[key] = r.strings(value_node, "reply.text")
                if "code" not in parts:
                    r.problem(node, "reply.code", "a reply needs a code", "200 to 599")
                    return None
                if parts["code"] is None or any(v is None for v in parts.values()):
                    return None
                return _reply(parts["code"], parts.get("status"), parts.get("text"), stage)
            value = r.scalar(node, "reply", (str, int), 'a reply like "550 5.1.1 text"')
            if value is None:
                return None
            return _reply_line(value, stage)
        except ReplyError as error:
            allowed = "200 to 599" if "code" in str(error) and "between" in str(error) else ""
            r.problem(node, "reply", str(error), allowed)
            return None

    # -- rules read by yaml_subset: plain data, files only

    def quick_rules(self, items: list[Any], lines: list[int]) -> tuple[Rule, ...] | None:
        """The rules of a file the subset reader read, or None at the first thing not plainly
        right: the caller then loads the file the thorough way, which says what is wrong.

        Values arrive typed as the YAML loader types them, so this takes exactly what
        ``rule()`` takes and builds the same rules (tests/test_yaml_subset.py compares them);
        it only never words a problem. Written for speed: it runs once per rule of files
        with 100,000 of them.
        """
        rules = []
        path = self.read.path
        matches: dict[int, Match] = {}  # the reader hands one dict for a repeated match line
        replies: dict[tuple[Any, Stage], Reply] = {}
        stages, values, match_keys = _STAGES, _QUICK_VALUES, MATCH_KEYS
        for data, line in zip(items, lines, strict=True):
            if type(data) is not dict:
                return None
            on = data.get("on")
            stage = stages.get(on) if type(on) is str else None
            if stage is None:
                return None
            fields: dict[str, Any] = {"source": Source(path=path, line=line), "on": stage}
            for key, value in data.items():
                if key == "match":
                    match = matches.get(id(value))
                    if match is None or not match_keys[stage].issuperset(match.keys):
                        match = self.quick_match(value, stage)
                        if match is None:
                            return None
                        matches[id(value)] = match
                    fields["match"] = match
                elif key == "reply":
                    cache_key = (value, stage) if type(value) in (str, int) else None
                    reply = replies.get(cache_key) if cache_key else None  # type: ignore[arg-type]
                    if reply is None:
                        reply = _quick_reply(value, stage)
                        if reply is None:
                            return None
                        if cache_key:
                            replies[cache_key] = reply
                    fields["reply"] = reply
                elif key != "on":
                    found = values.get(key)
                    if found is None or type(value) not in found[0]:
                        return None
                    try:
                        fields[key] = found[1](value, False)
                    except _Refused:
                        return None
            if _rule_conflict(stage, fields) is not None:
                return None
            rules.append(Rule(**fields))
        return tuple(rules)

    def quick_match(self, data: Any, stage: Stage) -> Match | None:
        if type(data) is not dict:
            return None
        allowed = MATCH_KEYS[stage]
        fields: dict[str, Any] = {}
        try:
            for key, value in data.items():
                if key not in allowed:
                    return None
                spec = _QUICK_MATCH_VALUES.get(key)
                if spec is not None:
                    if type(value) not in spec[0]:
                        return None
                    fields[key] = spec[1](value, False)
                elif key == "header":
                    if type(value) is not dict:
                        return None
                    headers = []
                    for name, written in value.items():
                        pattern = _quick_strings(written)
                        if pattern is None:
                            return None
                        headers.append((name, self.pattern(compile_text, pattern)))
                    fields["headers"] = tuple(headers)
                else:
                    pattern = _quick_strings(value)
                    if pattern is None:
                        return None
                    compile_fn = compile_cidr if key == "client" else compile_text
                    fields["sender" if key == "from" else key] = self.pattern(compile_fn, pattern)
        except (PatternError, _Refused):
            return None
        return Match(keys=tuple(data), **fields)


def _quick_strings(value: Any) -> str | list[str] | None:
    """What ``_Reader.strings`` makes of plain data; None where it would report a problem."""
    if type(value) is str:
        return value
    if type(value) is list:
        if not value or not all(_is_kind(item, (str, int)) for item in value):
            return None
        return [str(item) for item in value]
    return str(value) if _is_kind(value, (int,)) else None


def _quick_reply(value: Any, stage: Stage) -> Reply | None:
    """What ``rule_reply`` makes of plain data; None where it would report a problem."""
    try:
        if type(value) is dict:
            if "code" not in value or not set(value) <= _REPLY_KEY_SET:
                return None
            code, status, text = value["code"], value.get("status"), value.get("text")
            if not _is_kind(code, (int,)) or ("status" in value and type(status) is not str):
                return None
            if "text" in value:
                text = _quick_strings(text)
                if text is None:
                    return None
            return _reply(code, status, text, stage)
        if not _is_kind(value, (str, int)):
            return None
        return _reply_line(value, stage)
    except ReplyError:
        return None


def _reply(code: int, status: str | None, text: Any, stage: Stage | None) -> Reply:
    if text is None or isinstance(text, str):
        return _made_reply(code, status, text, stage)  # frozen: one per distinct reply
    return _make_reply(code, status, text, stage)


def _reply_line(value: str | int, stage: Stage | None) -> Reply:
    """``reply: 550``, ``reply: "550 5.1.1"`` (catalog text) or a whole reply line."""
    if isinstance(value, int) or str(value).strip().isdigit():
        return _reply(int(value), None, None, stage)
    reply = _parsed_reply(str(value))
    if reply.lines == ("",):  # "550 5.1.1" alone: the catalog's text
        return _reply(reply.code, reply.status, None, stage)
    return reply


def _rule_conflict(stage: Stage, fields: dict[str, Any]) -> tuple[str, str, str] | None:
    """Keys each right alone but wrong together: (the key to blame, why, what is allowed).
    "reply" blames the rule as a whole."""
    if "reply" not in fields and "action" not in fields and "delay" not in fields:
        return "reply", "a rule must say what to do", "reply, action, delay"
    match = fields.get("match")
    if (
        "per" not in fields
        and "action" not in fields
        and "volume" not in fields
        and "within" not in fields
        and (match is None or match.concurrent is None)
    ):
        return None  # nothing below can apply: most rules stop here
    action = fields.get("action")
    if action in (Action.DROP, Action.RESET, Action.HANG) and "reply" in fields:
        return (
            "action",
            f"{action} gives no reply, so this rule's reply would never be sent",
            "close (reply then close), or remove reply",
        )
    per = fields.get("per", Per.SERVER)
    if "per" in fields and stage not in _PER_STAGES.get(per, _ALL_STAGES):
        return (
            "per",
            f"per {per} means nothing at stage {stage}: it has no {per} yet",
            ", ".join(p.value for p in Per if stage in _PER_STAGES.get(p, _ALL_STAGES)),
        )
    if match is not None and match.concurrent is not None and per not in _CONCURRENT_PER:
        return (
            "per",
            f"concurrent counts open sessions per server, client or sender, not per {per}",
            ", ".join(p.value for p in _CONCURRENT_PER),
        )
    if "volume" in fields and ("times" in fields or "after" in fields):
        return (
            "volume",
            "counts bytes, and times/after count matches: a rule limits one or the other",
            "volume, or times/after",
        )
    if "volume" in fields and stage is not Stage.END_OF_DATA:
        return (
            "volume",
            f"counts the bytes of messages, which stage {stage} has not seen",
            "on: end_of_data",
        )
    counted = "times" in fields or "after" in fields or "volume" in fields
    if "within" in fields and not counted:
        return (
            "within",
            "counts the matches that times/after limit, but this rule has neither",
            "add times or after (or volume), or remove within",
        )
    return None


# --------------------------------------------------------------------------- rule values


class _Refused(Exception):
    """A value of the right kind that still cannot be taken: why, and what is allowed."""

    def __init__(self, message: str, allowed: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class _Value:
    """A rule key whose value is one scalar: the kinds it may be, how to name them, and how to
    turn it into the model's value (``convert(value, from_code)``, raising _Refused)."""

    kinds: tuple[type, ...]
    what: str
    convert: Callable[[Any, bool], Any]


def _choice(key: str, kind: type[EnumT]) -> Callable[[Any, bool], EnumT]:
    """One of an enum's words (action, per)."""
    members: dict[str, EnumT] = {member.value: member for member in kind}  # type: ignore[attr-defined]

    def convert(value: str, from_code: bool) -> EnumT:
        member = members.get(value)
        if member is None:
            hint = did_you_mean(value, list(members))
            hint = f"; {hint}" if hint else ""
            raise _Refused(f"unknown {key} {value!r}{hint}", ", ".join(members))
        return member

    return convert


def _delay(value: str | float, from_code: bool) -> float:
    # A bare number is refused in files: SMTP tools disagree on the unit (Mailpit's chaos
    # and many MTAs count milliseconds, others seconds), and a 5 read as the wrong one is
    # a test that waits 1000 times too long or not at all. From Python, a number is seconds.
    if isinstance(value, int | float) and value != 0 and not from_code:
        raise _Refused(f"{value} has no unit: write {value}s (seconds) or {value}ms (milliseconds)")
    return _parsed(parse_duration, value)


def _parsed(parse: Callable[[Any], Any], value: Any) -> Any:
    try:
        return parse(value)
    except PatternError as error:
        raise _Refused(str(error)) from None


def _more_than_zero(parse: Callable[[Any], Any], refusal: str) -> Callable[[Any, bool], Any]:
    """A size or a duration that must not be 0: a `volume`, a `within` window."""

    def convert(value: Any, from_code: bool) -> Any:
        parsed = _parsed(parse, value)
        if parsed <= 0:
            raise _Refused(refusal)
        return parsed

    return convert


def _at_least(minimum: int) -> Callable[[int, bool], int]:
    def convert(value: int, from_code: bool) -> int:
        if value < minimum:
            raise _Refused(f"must be {minimum} or more")
        return value

    return convert


def _probability(value: float, from_code: bool) -> float:
    if not 0 < value <= 1:
        raise _Refused(f"{value} is not in (0, 1]", "0 < p <= 1")
    return float(value)


def _unchanged(value: Any, from_code: bool) -> Any:
    return value


# Every rule key but on, match and reply (each a mapping or more).
_RULE_VALUES: dict[str, _Value] = {
    "action": _Value((str,), "an action", _choice("action", Action)),
    "delay": _Value((str, int, float), "a duration like 2s or 500ms", _delay),
    "times": _Value((int,), "a whole number", _at_least(1)),
    "after": _Value((int,), "a whole number", _at_least(0)),
    "per": _Value((str,), "what the counts are kept per", _choice("per", Per)),
    "volume": _Value(
        (str, int), "a size like 10MiB", _more_than_zero(parse_size, "must be 1 byte or more")
    ),
    # An empty window would count nothing, and the rule never fire.
    "within": _Value(
        (str, int, float),
        "a duration like 1m or 30s",
        _more_than_zero(parse_duration, "must be more than 0"),
    ),
    "probability": _Value((int, float), "a number from 0 to 1", _probability),
    "name": _Value((str,), "a string", _unchanged),
}
# The match keys whose value is one scalar (the others are patterns and header mappings).
_MATCH_VALUES: dict[str, _Value] = {
    "tls": _Value((bool,), "true or false", _unchanged),
    "size": _Value(
        (str, int), "a comparison like >1MiB", lambda value, _: _parsed(compile_size, value)
    ),
    "concurrent": _Value(
        (str, int), "a comparison like >3", lambda value, _: _parsed(compile_count, value)
    ),
}


def _exact(table: dict[str, _Value]) -> dict[str, tuple[frozenset[type], Callable[..., Any]]]:
    """A table for data read from YAML, where a value's type is exactly one of the kinds (no
    subclasses; true is not a number): one set lookup instead of ``_is_kind``."""
    return {key: (frozenset(spec.kinds), spec.convert) for key, spec in table.items()}


_QUICK_VALUES = _exact(_RULE_VALUES)
_QUICK_MATCH_VALUES = _exact(_MATCH_VALUES)
_REPLY_KEY_SET = frozenset(_REPLY_KEYS)
_STAGES = {stage.value: stage for stage in Stage}


class _AnyKey(tuple):
    """An `allowed` list that allows every key (user names, header names)."""

    def __contains__(self, item: object) -> bool:
        return True


# --------------------------------------------------------------------------- loading


# libyaml's build of the safe loader composes ~15x faster; the same safe resolver, no tags
# beyond YAML's own. Where it is missing, the pure-Python SafeLoader does the same job.
_C_SAFE_LOADER = getattr(yaml, "CSafeLoader", None)


if _C_SAFE_LOADER is not None:

    class _CachingSafeLoader(_C_SAFE_LOADER):  # type: ignore[misc,valid-type]
        """libyaml's safe loader, remembering how each plain scalar resolved.

        libyaml parses in C but asks PyYAML's Python resolver for every scalar's tag, trying
        its regexes one by one. The safe loader has no path resolvers, so a tag depends only on
        the text and on whether it was plain: a quoted scalar is always a string, and each
        distinct plain text (keys and stage words repeat thousands of times) is resolved once
        per document.
        """

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.plain: dict[str, str] | None = None if self.yaml_path_resolvers else {}

        def resolve(self, kind: type, value: Any, implicit: Any) -> str:
            plain = self.plain
            if kind is not yaml.ScalarNode or plain is None:
                return super().resolve(kind, value, implicit)
            if not implicit[0]:
                return _STR_TAG
            tag = plain.get(value)
            if tag is None:
                tag = plain[value] = super().resolve(kind, value, implicit)
            return tag

    _FAST_SAFE_LOADER: type | None = _CachingSafeLoader
else:
    _FAST_SAFE_LOADER = None


def _compose(text: str) -> yaml.Node | None:
    """YAML text -> nodes (with line marks), never anything but the safe loader."""
    if _FAST_SAFE_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_SAFE_LOADER)
        except yaml.YAMLError as error:
            # libyaml stops at 1,000 levels of nesting; the pure-Python loader would recurse
            # until Python's own limit and fail with a traceback instead: keep libyaml's word.
            if "nesting depth" in str(error):
                raise
            # Otherwise the pure-Python loader words its errors better: let it say what is wrong.
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise _TooDeep() from None


class _TooDeep(yaml.YAMLError):
    """Nesting deeper than the pure-Python loader can follow (it recurses once per level)."""

    problem = "nested too deeply (a scenario needs a few levels, this has hundreds)"
    problem_mark = None
    context_mark = None


def load_scenario_text(
    text: str, source: str = "<text>", *, file_check: Callable[[str], bool] | None = None
) -> Scenario:
    """Build a Scenario from YAML text; raise ScenarioError listing every problem.

    ``file_check(path)`` says whether a file the scenario names (``tls.cert``) may be read;
    the API passes one so a client cannot make the server read, or probe, other files.
    """
    with collector_paused():
        return _load_text(text, source, file_check)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Keep Python's cycle collector out of a load.

    A big scenario allocates hundreds of thousands of nodes and rules, none of them garbage
    cycles; the collector would walk them all again and again (a 100,000-rule load took three
    times as long), holding the GIL the SMTP loop needs when the API loads in a worker thread.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What the load built is long-lived (rules, matchers), but re-enabled as it is, the
        # collector would walk all of it at the next allocation (half a second, holding the GIL,
        # for 100,000 rules) only to promote it. freeze + unfreeze moves every tracked object to
        # the oldest generation at once, without that walk; a full collection still visits them.
        # Skipped when someone froze objects on purpose (a pre-forking server): not ours to thaw.
        if not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def _load_text(text: str, source: str, file_check: Callable[[str], bool] | None) -> Scenario:
    scenario = _load_quickly(text, source, file_check)
    if scenario is not None:
        return scenario
    try:
        root = _compose(text)
    except yaml.YAMLError as error:
        mistake = explain_yaml_error(error, text)
        lines = text.splitlines()
        excerpt = lines[mistake.line - 1] if 0 < mistake.line <= len(lines) else ""
        problem = Problem(
            source,
            mistake.line,
            "yaml",
            f"not valid YAML: {mistake.reason}",
            hint=mistake.hint,
            excerpt=excerpt,
            column=mistake.column if excerpt else None,
        )
        raise ScenarioError([problem]) from None
    # Aliases need an anchor, and an anchor is written with '&': a file without one has none,
    # and its cost is already proportional to its length.
    if root is not None and "&" in text:
        alias_problem = _alias_problem(root, source)
        if alias_problem is not None:
            raise ScenarioError([alias_problem])
    builder = _Builder(source, file_check)
    scenario = builder.scenario(root, text)
    _dismantle(root)
    if builder.read.problems or scenario is None:
        raise ScenarioError(builder.read.problems)
    return scenario


# A top-level `rules:` line with nothing after it but a comment; and where a top-level block
# ends: the next line that starts at column 0 with anything but a comment or a "- " item.
# (Both start at a line feed rather than with ^ and MULTILINE: the regex engine then skips
# ahead to each line feed instead of trying every character, 7x faster over megabytes.)
_RULES_LINE = re.compile(r"rules: *(?:#[^\n]*)?\r?$", re.MULTILINE)
_TOP_LEVEL_LINE = re.compile(r"\n(?:[^ \n\r#-]|-[^ \n\r])")


def _load_quickly(
    text: str, source: str, file_check: Callable[[str], bool] | None
) -> Scenario | None:
    """The Scenario the thorough path would build, for a file whose rules yaml_subset can
    read and that has no mistake; otherwise None, and the thorough path reads it all.

    The rules are read by yaml_subset and built from plain data (`_Builder.quick_rules`). The
    rest of the file (name, server: ...) goes through the YAML loader and the same builder as
    always, with the rules' lines left empty so that every line keeps its number.
    """
    at = 0 if text.startswith("rules:") else text.find("\nrules:") + 1
    found = _RULES_LINE.match(text, at) if text.startswith("rules:", at) else None
    if found is None or text.find("\nrules:", found.end()) >= 0:
        return None  # no top-level `rules:` line, or two: the loader says what is wrong
    body_start = found.end() + 1
    following = _TOP_LEVEL_LINE.search(text, found.end())
    body_end = following.start() + 1 if following else len(text)
    rules_line = text.count("\n", 0, found.start())  # 0-based, as YAML marks count
    read = yaml_subset.read_sequence(text[body_start:body_end], rules_line + 2)
    if read is None:
        return None
    builder = _Builder(source, file_check)
    rules = builder.quick_rules(read.items, read.lines)
    if rules is None:
        return None
    region = text[found.start() : body_end]
    stand_in = "rules: []" + "\n" * region.count("\n")
    rest = text[: found.start()] + stand_in + text[body_end:]
    try:
        root = _compose(rest)
    except yaml.YAMLError:
        return None
    if not _holds_stand_in(root, rules_line):
        return None
    if "&" in rest and _alias_problem(root, source) is not None:
        return None
    scenario = builder.scenario(root, text)
    if scenario is None or builder.read.problems:
        return None
    # Secret spans were found in `rest`: past the stand-in, they move by what it saved.
    moved, saved = found.start() + len(stand_in), len(region) - len(stand_in)
    spans = tuple(
        (start + saved, end + saved) if start >= moved else (start, end)
        for start, end in scenario.secret_spans
    )
    return replace(scenario, rules=rules, secret_spans=spans)


def _holds_stand_in(root: yaml.Node | None, line: int) -> bool:
    """Whether the file's one `rules` key is the line that was found, now `rules: []`: the
    found line was the top-level key, not text inside some other value."""
    if not isinstance(root, yaml.MappingNode):
        return False
    found = [
        (key, value)
        for key, value in root.value
        if isinstance(key, yaml.ScalarNode) and key.value == "rules"
    ]
    if len(found) != 1:
        return False
    key, value = found[0]
    return (
        key.start_mark.line == line
        and key.start_mark.column == 0
        and isinstance(value, yaml.SequenceNode)
        and not value.value
        and value.flow_style is True
    )


# How many nodes aliases may add to a scenario once expanded. The composed graph shares an
# aliased node, but validation walks it once per use: ten levels of ten aliases each ("billion
# laughs") is a few hundred bytes and 10**10 visits. A shared `match:` used by 10,000 rules adds
# about 100,000; past this bound a load would take seconds for no scenario anyone writes.
# A whole rule repeated by alias (`- *common`) is built once (_Builder.rules), yet still counts
# in full: every copy is a rule the engine tries for every message.
ALIAS_EXPANSION_LIMIT = 1_000_000


def _alias_problem(root: yaml.Node, source: str) -> Problem | None:
    """A Problem if aliases loop or expand the document past ALIAS_EXPANSION_LIMIT, else None.

    One pass over the distinct nodes (each shared node is sized once), so a bomb costs what
    its text costs. Iterative: libyaml allows 1,000 levels, more than Python's recursion.
    """
    sizes: dict[int, int] = {}  # id(node) -> nodes it stands for once aliases are expanded
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = _children(node)
        if children_done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            continue
        if key in sizes:
            continue
        if key in in_progress:
            return Problem(
                source,
                node.start_mark.line + 1,
                "yaml",
                "an alias here refers to a node that contains it; a scenario cannot loop",
            )
        in_progress.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:  # a loop: the anchor's node is still being sized
                return Problem(
                    source,
                    child.start_mark.line + 1,
                    "yaml",
                    "an alias refers to this node from inside it; a scenario cannot loop",
                )
            if id(child) not in sizes:
                stack.append((child, False))
    total, written = sizes[id(root)], len(sizes)
    if total - written <= ALIAS_EXPANSION_LIMIT:
        return None
    # Point at the smallest part that alone passes the bound: where the repetition is.
    node = root
    while True:
        biggest = max(_children(node), key=lambda child: sizes[id(child)], default=None)
        if biggest is None or sizes[id(biggest)] <= ALIAS_EXPANSION_LIMIT:
            break
        node = biggest
    return Problem(
        source,
        node.start_mark.line + 1,
        "yaml",
        f"aliases expand this scenario to {total:,} nodes from {written:,} written "
        f"({sizes[id(node)]:,} here); at most {ALIAS_EXPANSION_LIMIT:,} more than written "
        "are allowed",
    )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _dismantle(root: yaml.Node | None) -> None:
    """Free the node tree a piece at a time.

    Dropped at once, a tree of 100,000 rules is freed in one C call that holds the GIL for
    a large fraction of a second; when the API loads a scenario in a worker thread, that
    would stall the event loop serving every SMTP session. Popping the rules one by one
    lets the interpreter switch threads between them.
    """
    if root is None or not isinstance(root.value, list):
        return
    for pair in root.value:
        value = pair[1] if isinstance(pair, tuple) else pair
        if isinstance(value, yaml.SequenceNode | yaml.MappingNode):
            items = value.value
            while items:
                items.pop()


def load_scenario_file(path: str | Path) -> Scenario:
    """Read and build one scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ScenarioError([Problem(str(path), 0, "file", f"cannot read: {reason}")]) from None
    return _load_text_cached(text, str(path))


@lru_cache(maxsize=64)
def _load_text_cached(text: str, source: str) -> Scenario:
    # Scenarios are frozen, so one built from the same text can be shared: a test suite that
    # starts a server per test reads the default scenario once, not once per test.
    return load_scenario_text(text, source)


def builtin_dir() -> Path:
    """Where the built-in scenarios are: in the wheel, or at the top of a source checkout."""
    # An installed wheel has them beside this file, a checkout one level up: no need to ask
    # importlib.resources (its import alone costs a start-up ~10 ms).
    here = Path(__file__).resolve().parent
    for directory in (here / "scenarios", here.parent / "scenarios"):
        if (directory / "default.yaml").is_file():
            return directory
    from importlib import resources

    packaged = resources.files("fakesmtp").joinpath("scenarios")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "scenarios"


def builtin_scenarios() -> dict[str, Path]:
    """Built-in scenario names -> files."""
    directory = builtin_dir()
    if not directory.is_dir():
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))}


def default_scenario() -> Scenario:
    """No ``--scenario``: accept everything; addresses like ``rcpt-550@x`` ask for a reply."""
    path = builtin_scenarios().get("default")
    if path is not None:
        return load_scenario_file(path)
    return Scenario(name="default", server=ServerSettings(address_replies=True))


def load_scenario(spec: Scenario | Mapping[str, Any] | str | Path | None = None) -> Scenario:
    """Load a scenario from a Scenario, a dict, a file path, a built-in name, or YAML text.

    ``None`` gives the default scenario. Raises ScenarioError with ``FILE:LINE: key: why``.
    """
    if spec is None:
        return default_scenario()
    if isinstance(spec, Scenario):
        return spec
    if isinstance(spec, Mapping):
        return load_scenario_data(spec, caller())
    if isinstance(spec, Path):
        return load_scenario_file(spec)
    if "\n" not in spec:
        if Path(spec).is_file():
            return load_scenario_file(spec)
        builtin = builtin_scenarios().get(spec)
        if builtin is not None:
            return load_scenario_file(builtin)
        if ":" not in spec:
            raise unknown_scenario(spec)
    return load_scenario_text(spec)


def unknown_scenario(spec: str) -> ScenarioError:
    """The error for a name that is neither a file nor a built-in, with the closest built-in."""
    names = list(builtin_scenarios())
    hint = did_you_mean(Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec, names)
    message = "no such file or built-in scenario" + (f"; {hint}" if hint else "")
    return ScenarioError([Problem(spec, 0, "scenario", message, ", ".join(names))])


def quick_rule(stage: Stage | str, reply: str | int, *, name: str = "") -> Rule:
    """A rule from a stage and a reply, as ``serve --banner 421`` builds it.

    ``reply`` is a code (text and enhanced status from the catalog) or a whole reply line.
    Errors name what the user typed: "--banner 612: reply: reply code 612 is not between...".
    """
    rule: dict[str, Any] = {"on": Stage(stage).value, "reply": str(reply)}
    if name:
        rule["name"] = name
    return load_rule_data(rule, Source(path=f"{name} {reply}" if name else str(reply), line=0))


# --------------------------------------------------------------------------- Python data


def caller() -> Source:
    """The first frame outside fakesmtp (and pytest's own machinery): where the user wrote it."""
    package = str(Path(__file__).resolve().parent) + os.sep
    machinery = (f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}")
    frame = inspect.currentframe()
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(package) and not any(part in path for part in machinery):
            break
        frame = frame.f_back
    if frame is None:
        return Source(path="<code>", line=0)
    here = os.getcwd() + os.sep
    return Source(path=path.removeprefix(here), line=frame.f_lineno)


def _node(data: Any, mark: yaml.Mark) -> yaml.Node:
    """Python data as the YAML nodes a file would give, every one marked ``mark``."""
    if isinstance(data, Mapping):
        pairs = [
            # A `True` key is an `on` that went through YAML 1.1 on the caller's side.
            (_node("on" if key is True else key, mark), _node(value, mark))
            for key, value in data.items()
        ]
        return yaml.MappingNode("tag:yaml.org,2002:map", pairs, mark, mark)
    if isinstance(data, list | tuple):
        return yaml.SequenceNode(
            "tag:yaml.org,2002:seq", [_node(v, mark) for v in data], mark, mark
        )
    if data is None:
        return yaml.ScalarNode("tag:yaml.org,2002:null", "null", mark, mark)
    if isinstance(data, bool):
        return yaml.ScalarNode("tag:yaml.org,2002:bool", "true" if data else "false", mark, mark)
    if isinstance(data, int):
        return yaml.ScalarNode("tag:yaml.org,2002:int", str(data), mark, mark)
    if isinstance(data, float):
        return yaml.ScalarNode("tag:yaml.org,2002:float", repr(data), mark, mark)
    return yaml.ScalarNode("tag:yaml.org,2002:str", str(data), mark, mark)


def _mark(source: Source) -> yaml.Mark:
    return yaml.Mark(source.path, 0, source.line - 1, 0, None, None)


def load_scenario_data(data: Mapping[str, Any], source: Source | None = None) -> Scenario:
    """A scenario from Python data (what a YAML file would hold), validated as a file is.

    Errors and transcripts name ``source`` (by default the caller's file and line).
    """
    source = source or caller()
    builder = _Builder(source.path, from_code=True)
    scenario = builder.scenario(_node(data, _mark(source)), "")
    if builder.read.problems or scenario is None:
        raise ScenarioError(builder.read.problems)
    return scenario


def load_rule_data(data: Mapping[str, Any], source: Source | None = None) -> Rule:
    """One rule from Python data (a ``rules:`` item), validated as in a file.

    Errors and the rule's ``source`` (shown in transcripts) name ``source``, by default the
    caller's file and line: ``tests/test_x.py:12: on: unknown stage 'RCPT'...``.
    """
    source = source or caller()
    builder = _Builder(source.path, from_code=True)
    node = _node(data, _mark(source))
    rule = builder.rule(node, 0)
    problems = [replace(p, key=p.key.replace("rules[0]", "rule")) for p in builder.read.problems]
    if problems or rule is None:
        raise ScenarioError(problems or [Problem(source.path, source.line, "rule", "not a rule")])
    return rule


def with_rules_first(scenario: Scenario, rules: tuple[Rule, ...]) -> Scenario:
    """The same scenario with ``rules`` tried before its own."""
    return replace(scenario, rules=(*rules, *scenario.rules))


def load_rule_text(text: str, source: str = "<rule>") -> Rule:
    """One rule from YAML or JSON text (a scenario's ``rules:`` item), validated as in a file.

    Errors name the lines of ``text`` itself: it is placed under ``rules:`` two lines down.
    """
    body = "".join("    " + line for line in text.splitlines(True))
    try:
        scenario = load_scenario_text("rules:\n  -\n" + body, source)
    except ScenarioError as error:
        problems = [
            replace(p, line=max(p.line - 2, 1), key=p.key.replace("rules[0]", "rule"))
            for p in error.problems
        ]
        raise ScenarioError(problems) from None
    if len(scenario.rules) != 1:
        raise ScenarioError([Problem(source, 1, "rule", "send exactly one rule (a mapping)")])
    rule = scenario.rules[0]
    return replace(rule, source=replace(rule.source, line=max(rule.source.line - 2, 1)))
