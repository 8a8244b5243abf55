"""The reply catalog: what every SMTP reply code and enhanced status code means, and what to do.

The data lives in ``catalog.yaml`` next to this module. It is parsed on first use and cached, so
importing this module costs nothing; the server asks it for default texts only while loading a
scenario, never per SMTP command.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pprint import pformat
from types import MappingProxyType
from typing import Any

from . import catalog_defaults
from .reply import parse_reply_line
from .stages import Stage

KINDS = ("success", "intermediate", "transient", "permanent", "not-a-reply")
STAGES = tuple(stage.value for stage in Stage)
LANGS = ("en", "fr")

# The kind of reply each first digit announces (RFC 5321 section 4.2.1).
_DIGIT_KINDS = {
    "1": "not-a-reply",
    "2": "success",
    "3": "intermediate",
    "4": "transient",
    "5": "permanent",
}
_STATUS_RE = re.compile(r"^(?P<cls>\d)\.(?P<subject>\d{1,3})\.(?P<detail>\d{1,3})$")
# In free text: "550 5.7.1", "550-5.7.1"; the look-arounds keep "1550" or "5.5.1.2" out.
_CODE_STATUS_RE = re.compile(
    r"(?<![\d.])(?P<code>[1-5]\d\d)[ -](?P<status>[245]\.\d{1,3}\.\d{1,3})(?![\d.])"
)
_LONE_STATUS_RE = re.compile(r"(?<![\d.])(?P<status>[245]\.\d{1,3}\.\d{1,3})(?![\d.])")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeEntry:
    """One reply code: where it is sent, its usual enhanced status and text, meaning, advice."""

    code: int
    kind: str  # the YAML `class`: success, intermediate, transient, permanent, not-a-reply
    stages: tuple[str, ...]
    status: str | None
    text: str
    meaning: str
    advice: str
    retry: bool
    source: str
    stage_status: Mapping[str, str | None] = field(default_factory=lambda: _EMPTY)
    fr: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    summary: str = ""
    stage_text: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    note: str = ""

    def status_for(self, stage: str | None) -> str | None:
        """The enhanced status that fits best at ``stage`` (the default one elsewhere)."""
        if stage is not None and stage in self.stage_status:
            return self.stage_status[stage]
        return self.status

    def text_for(self, stage: str | None) -> str:
        """The reply text that fits best at ``stage`` (the default one elsewhere)."""
        if stage is not None and stage in self.stage_text:
            return self.stage_text[stage]
        return self.text

    def localized(self, key: str, lang: str = "en") -> str:
        """``summary``, ``meaning`` or ``advice`` in ``lang``, English when there is none."""
        return _localized(self, key, lang)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusEntry:
    """One enhanced status code (RFC 3463) in a given class: 2.x.x, 4.x.x or 5.x.x."""

    status: str  # "X.Y.Z" with X the class digit asked for
    subject: str  # the subject's name, e.g. "Addressing status"
    meaning: str
    advice: str
    kind: str  # success, transient or permanent, from the class digit
    source: str = ""
    registered: bool = True  # False: an unknown detail, explained by its subject only
    fr: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # subject, meaning, advice

    def localized(self, key: str, lang: str = "en") -> str:
        """``subject``, ``meaning`` or ``advice`` in ``lang``, English when there is none."""
        return _localized(self, key, lang)


def _localized(entry: CodeEntry | StatusEntry, key: str, lang: str) -> str:
    if lang == "fr" and entry.fr.get(key):
        return entry.fr[key]
    return str(getattr(entry, key))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplySign:
    """Something a reply can say beyond its codes: a vendor's use of a status, or wording
    (greylisting, DMARC, rate limits...) that tells what happened whatever the codes are."""

    id: str
    summary: str
    meaning: str
    advice: str
    source: str
    vendor: str = ""
    statuses: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()  # (low, high) ranges
    reply_class: str | None = None  # "4" or "5": only replies of that class
    text: re.Pattern[str] | None = None
    fr: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # summary, meaning, advice

    def holds_for_status(self, status_text: str | None) -> bool:
        if not self.statuses:
            return True
        if status_text is None:
            return False
        key = _status_key(status_text)
        return any(low <= key <= high for low, high in self.statuses)

    def holds(self, code: int | None, status_text: str | None, text: str) -> bool:
        if self.reply_class is not None and code is not None and str(code)[0] != self.reply_class:
            return False
        if not self.holds_for_status(status_text):
            return False
        return self.text is None or bool(self.text.search(text))


def _status_key(status_text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in status_text.split("."))


def _reply_sign(raw: Mapping[str, Any]) -> ReplySign:
    ranges = []
    for item in raw.get("status") or ():
        low, _, high = str(item).partition("-")
        ranges.append((_status_key(low), _status_key(high or low)))
    text = raw.get("text")
    return ReplySign(
        id=raw["id"],
        summary=raw["summary"],
        meaning=raw["meaning"],
        advice=raw["advice"],
        source=raw["source"],
        vendor=raw.get("vendor") or "",
        statuses=tuple(ranges),
        reply_class=str(raw["class"]) if raw.get("class") is not None else None,
        text=re.compile(text, re.IGNORECASE) if text else None,
        fr=_frozen(raw.get("fr")),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """What one reply means, taken from what it actually says.

    ``basis`` tells which part of the reply the explanation rests on: ``vendor`` (a vendor's
    known use of this status and wording), ``status`` (the enhanced status), ``text``
    (recognisable wording), ``code`` (the reply code) or ``digits`` (a code nobody lists).
    """

    code: int | None
    status: str | None
    summary: str
    meaning: str
    advice: str
    source: str
    basis: str
    vendor: str = ""
    kind: str = ""
    status_meaning: str = ""  # the registry's words for the status, when there is one
    sign: str = ""  # the id of the reading (catalog.yaml `readings:`) it came from, if any


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class _Catalog:
    codes: Mapping[int, CodeEntry]
    statuses: Mapping[str, Mapping[str, Any]]  # "X.1.1" -> meaning, advice, source, fr
    subjects: Mapping[int, Mapping[str, Any]]
    classes: Mapping[int, Mapping[str, Any]]
    digits: Mapping[str, Any]
    readings: tuple[ReplySign, ...] = ()


class CatalogError(ValueError):
    """catalog.yaml itself is wrong: a packaging or editing mistake, caught by the tests."""


@cache
def _catalog() -> _Catalog:
    # Imported here, not at the top: `import fakesmtp.catalog` must stay cheap.
    import yaml

    text = resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    # The C build of the safe loader when PyYAML has it: same rules, ten times faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(text, Loader=loader)
    codes = {}
    for raw in data["codes"]:
        entry = _code_entry(raw)
        if entry.code in codes:
            raise CatalogError(f"catalog.yaml: code {entry.code} is listed twice")
        codes[entry.code] = entry
    return _Catalog(
        codes=MappingProxyType(dict(sorted(codes.items()))),
        statuses=_frozen(data["statuses"]),
        subjects=_frozen(data["status_subjects"]),
        classes=_frozen(data["status_classes"]),
        digits=_frozen(data["digits"]),
        readings=tuple(_reply_sign(raw) for raw in data.get("readings") or ()),
    )


_CODE_KEYS = frozenset(
    {
        "code",
        "class",
        "summary",
        "stages",
        "status",
        "text",
        "stage_status",
        "stage_text",
        "meaning",
        "advice",
        "retry",
        "source",
        "note",
        "fr",
    }
)


def _code_entry(raw: Mapping[str, Any]) -> CodeEntry:
    code = raw.get("code")
    where = f"catalog.yaml: code {code}"
    unknown = set(raw) - _CODE_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    if raw.get("class") not in KINDS:
        raise CatalogError(f"{where}: class {raw.get('class')!r} is not one of {KINDS}")
    stages = tuple(raw.get("stages") or ())
    stage_status = dict(raw.get("stage_status") or {})
    stage_text = dict(raw.get("stage_text") or {})
    for stage in (*stages, *stage_status, *stage_text):
        if stage not in STAGES:
            raise CatalogError(f"{where}: unknown stage {stage!r}")
    for status in (raw.get("status"), *stage_status.values()):
        if status is not None and not _STATUS_RE.match(str(status)):
            raise CatalogError(f"{where}: {status!r} is not an enhanced status X.Y.Z")
    return CodeEntry(
        code=int(code),
        kind=raw["class"],
        stages=stages,
        status=raw.get("status"),
        text=raw.get("text") or "",
        meaning=raw["meaning"],
        advice=raw["advice"],
        retry=bool(raw["retry"]),
        source=raw["source"],
        stage_status=MappingProxyType(stage_status),
        fr=_frozen(raw.get("fr")),
        summary=raw.get("summary") or "",
        stage_text=MappingProxyType(stage_text),
        note=raw.get("note") or "",
    )


# --------------------------------------------------------------------------- lookups


def code(code: int) -> CodeEntry | None:
    """The catalog entry for a reply code, or None when the catalog does not list it."""
    return _catalog().codes.get(code)


def codes() -> list[CodeEntry]:
    """Every catalog entry, sorted by code."""
    return list(_catalog().codes.values())


def statuses() -> list[StatusEntry]:
    """Every registered enhanced status detail, as X.Y.Z with X the class digit 5 (or 2)."""
    return [s for key in _catalog().statuses if (s := status(_any_class(key))) is not None]


def _any_class(key: str) -> str:
    # X.1.5 and X.6.4 describe successes; every other detail reads best as a failure.
    return key.replace("X", "2" if key in ("X.1.5", "X.6.4") else "5", 1)


def status(text: str) -> StatusEntry | None:
    """Explain an enhanced status code like ``5.1.1`` or ``4.1.1``.

    The class comes from the first digit. A detail the registry does not list is explained
    by its subject (``5.1.99`` -> addressing status). None when the class or the subject is
    not one RFC 3463 defines.
    """
    match = _STATUS_RE.match(text.strip())
    if not match:
        return None
    catalog = _catalog()
    cls, subject_digit = int(match["cls"]), int(match["subject"])
    class_info = catalog.classes.get(cls)
    subject = catalog.subjects.get(subject_digit)
    if class_info is None or subject is None:
        return None
    status_text = f"{cls}.{subject_digit}.{int(match['detail'])}"
    detail = catalog.statuses.get(f"X.{subject_digit}.{int(match['detail'])}")
    subject_fr = subject.get("fr") or {}
    # Details carry no French advice: the subject's keeps the whole text in one language.
    fr = {
        "subject": subject_fr.get("name", ""),
        "meaning": detail.get("fr", "") if detail else subject_fr.get("meaning", ""),
        "advice": subject_fr.get("advice", ""),
    }
    if detail is None:  # an unregistered detail: what its subject says
        meaning, advice = subject["meaning"], subject["advice"]
        source = "RFC 3463 section 2 (subject only; this detail is not registered)"
    else:
        meaning, advice = detail["meaning"], detail.get("advice") or subject["advice"]
        source = detail.get("source", "")
    return StatusEntry(
        status=status_text,
        subject=subject["name"],
        meaning=meaning,
        advice=advice,
        kind=class_info["kind"],
        source=source,
        registered=detail is not None,
        fr=_frozen(fr),
    )


def _check_code(code: int) -> None:
    if not 100 <= code <= 599:
        raise ValueError(f"{code} is not an SMTP reply code: the first digit must be 1 to 5")


def default_reply(code: int, stage: str | None = None) -> tuple[str | None, str]:
    """(enhanced status or None, text) a real server would send with ``code`` at ``stage``.

    A code the catalog does not list gets ``<class>.0.0`` (for 2, 4 and 5) and a text worded
    from its digits. Raises ValueError for a number that is not a reply code at all.
    """
    # Answered from catalog_defaults, the table generated from this catalog (a test keeps the
    # two equal), so a server loading `reply: 550` never parses the whole catalog.
    return catalog_defaults.default_reply(code, stage)


def defaults_module_source() -> str:
    """The text of catalog_defaults.py: each code's default status and text, and the digits'.

    Regenerate after editing catalog.yaml:
    ``python -c "from fakesmtp import catalog; print(catalog.defaults_module_source(), end='')"
    > fakesmtp/catalog_defaults.py``
    """
    codes = {
        entry.code: (
            entry.status,
            entry.text,
            dict(entry.stage_status),
            dict(entry.stage_text),
        )
        for entry in _catalog().codes.values()
    }
    digits = _catalog().digits
    first = {digit: value["short"] for digit, value in digits["first"].items()}
    second = {digit: value["short"] for digit, value in digits["second"].items()}
    return _DEFAULTS_TEMPLATE.format(codes=pformat(codes), first=first, second=second)


_DEFAULTS_TEMPLATE = '''"""Default reply texts, generated from catalog.yaml by catalog.py.

Do not edit: regenerate (tests/test_catalog.py checks the two agree). Loading a scenario with a
bare ``reply: 550`` needs only these, not the whole catalog (parsing it costs start-up ~60 ms).
"""

from __future__ import annotations

# code: (status, text, {{stage: status}}, {{stage: text}})
CODES: dict[int, tuple[str | None, str, dict[str, str | None], dict[str, str]]] = {codes}

FIRST_DIGIT: dict[int, str] = {first}
SECOND_DIGIT: dict[int, str] = {second}


def default_reply(code: int, stage: str | None = None) -> tuple[str | None, str]:
    """See catalog.default_reply."""
    if not 100 <= code <= 599:
        raise ValueError(f"{{code}} is not an SMTP reply code: the first digit must be 1 to 5")
    entry = CODES.get(code)
    if entry is not None:
        status, text, stage_status, stage_text = entry
        if stage is not None:
            return stage_status.get(stage, status), stage_text.get(stage, text)
        return status, text
    first = str(code)[0]
    second = SECOND_DIGIT.get(int(str(code)[1]))
    qualifier = f" ({{second}})" if second else ""
    status_text = f"{{first}}.0.0" if first in "245" else None
    return status_text, f"{{FIRST_DIGIT[int(first)]}}{{qualifier}}"
'''


def kind_of(code: int) -> str:
    """success, intermediate, transient, permanent or not-a-reply, from the catalog or digit."""
    entry = _catalog().codes.get(code)
    return entry.kind if entry is not None else _DIGIT_KINDS.get(str(code)[0], "not-a-reply")


def digits_meaning(code: int, lang: str = "en") -> str:
    """What a code's digits say on their own (RFC 5321 section 4.2.1), for unknown codes."""
    _check_code(code)
    digits = _catalog().digits
    first_digit, second_digit = str(code)[0], int(str(code)[1])
    first = digits["first"][int(first_digit)]
    second = digits["second"].get(second_digit)
    french = lang == "fr"
    lines = [f"{first_digit}yz: {first['name']}. {first['fr'] if french else first['meaning']}"]
    if second is None:
        missing = (
            "aucune signification définie (la RFC 5321 n'utilise que 0 à 5)"
            if french
            else "no defined meaning (RFC 5321 only uses 0 to 5)"
        )
        lines.append(f"x{second_digit}z: {missing}.")
    else:
        lines.append(
            f"x{second_digit}z: {second['name']}: {second['fr' if french else 'meaning']}."
        )
    third = digits["third"]
    lines.append(f"xy{str(code)[2]}: {third['fr'] if french else third['meaning']}")
    return "\n".join(lines)


def codes_with_status(status_text: str) -> list[tuple[int, str | None]]:
    """(code, stage) pairs whose usual enhanced status is this one: stage None = by default."""
    found = []
    for entry in codes():
        if entry.status == status_text:
            found.append((entry.code, None))
        for stage, stage_status in entry.stage_status.items():
            if stage_status == status_text and entry.status != status_text:
                found.append((entry.code, stage))
    return found


def _is_precise(entry: StatusEntry) -> bool:
    """Whether a status names the problem by itself, so that it outweighs wording and code.

    X.Y.0 says only the subject, and X.7.1 ("delivery not authorized") covers every policy
    refusal from relaying to spam: for those, the text says more than the status does.
    """
    detail = entry.status.split(".", 2)[2]
    return entry.registered and detail != "0" and entry.status[2:] != "7.1"


def _says_otherwise(status_entry: StatusEntry, code_entry: CodeEntry | None) -> bool:
    """Whether a broad status still names another subject than the code usually means.

    X.0.0 says nothing; X.3.0 with 451 (whose usual status is 4.3.0) says what 451 says. But
    552 5.7.0 is about policy and 550 5.4.312 about routing, whatever 552 and 550 usually mean.
    """
    subject = status_entry.status.split(".")[1]
    if subject == "0":
        return False
    if code_entry is None or code_entry.status is None:
        return True
    return code_entry.status.split(".")[1] != subject


def _status_summary(entry: StatusEntry) -> str:
    if not entry.registered:  # an unknown detail: its subject is all we know
        return entry.subject
    head = re.split(r"[:;]| \(|, so |\. ", entry.meaning, maxsplit=1)[0].strip().rstrip(".")
    return head if len(head) <= 70 else head[:67].rstrip() + "..."


def signs_for_status(status_text: str) -> list[ReplySign]:
    """Vendor uses of this very status (not wording-only signs), for ``explain 5.1.10``."""
    # Only a sign's first status (or range) is its own; the others are where the same wording
    # may also turn up, which is worth matching but not worth listing under every status.
    key = _status_key(status_text)
    return [
        sign
        for sign in _catalog().readings
        if sign.statuses and sign.statuses[0][0] <= key <= sign.statuses[0][1]
    ]


def read_reply(code: int | None, status_text: str | None = None, text: str = "") -> Reading:
    """Explain one reply from what it says: vendor fact, precise status, wording, status, code.

    ``code`` may be None when only a status is known. A status given with a code of another
    class is still read (clients act on the code, but the status is what the server meant).
    """
    catalog = _catalog()
    status_entry = status(status_text) if status_text else None
    status_meaning = status_entry.meaning if status_entry is not None else ""
    kind = kind_of(code) if code is not None else (status_entry.kind if status_entry else "")

    def from_sign(sign: ReplySign, basis: str) -> Reading:
        return Reading(
            code=code,
            status=status_text,
            summary=sign.summary,
            meaning=sign.meaning,
            advice=sign.advice,
            source=sign.source,
            basis=basis,
            vendor=sign.vendor,
            kind=kind,
            status_meaning=status_meaning,
            sign=sign.id,
        )

    def from_status(entry: StatusEntry) -> Reading:
        return Reading(
            code=code,
            status=entry.status,
            summary=_status_summary(entry),
            meaning=entry.meaning,
            advice=entry.advice,
            source=entry.source,
            basis="status",
            kind=kind,
            status_meaning=status_meaning,
        )

    for sign in catalog.readings:
        if sign.statuses and sign.holds(code, status_text, text):
            return from_sign(sign, "vendor")
    if status_entry is not None and _is_precise(status_entry):
        return from_status(status_entry)
    for sign in catalog.readings:
        if not sign.statuses and sign.text is not None and sign.holds(code, status_text, text):
            return from_sign(sign, "text")
    if status_entry is not None and status_entry.registered and status_entry.status[2:] == "7.1":
        return from_status(status_entry)
    entry = catalog.codes.get(code) if code is not None else None
    if status_entry is not None and _says_otherwise(status_entry, entry):
        return from_status(status_entry)  # 552 5.7.0 is a policy refusal, not a full mailbox
    if entry is not None:
        return Reading(
            code=code,
            status=status_text,
            summary=entry.summary,
            meaning=entry.meaning,
            advice=entry.advice,
            source=entry.source,
            basis="code",
            kind=kind,
            status_meaning=status_meaning,
        )
    if status_entry is not None:
        return from_status(status_entry)
    meaning = digits_meaning(code) if code is not None else ""
    return Reading(
        code=code,
        status=status_text,
        summary=_KIND_NAMES["en"].get(kind, kind),
        meaning=" ".join(meaning.split()),
        advice="",
        source="RFC 5321 section 4.2.1",
        basis="digits",
        kind=kind,
    )


# --------------------------------------------------------------------------- explain

_LABELS: Mapping[str, Mapping[str, str]] = {
    "en": {
        "meaning": "Meaning",
        "stages": "Sent at",
        "typical": "Typical",
        "retry": "Retry",
        "advice": "What to do",
        "source": "Source",
        "note": "Note",
        "reply": "Reply",
        "status": "Enhanced status",
        "used_with": "Usually with",
        "read_from": "Read from",
        "vendor_use": "Vendor use",
        "basis_vendor": "{vendor}'s use of this status and the reply's text",
        "basis_vendor_text": "the reply's text, as {vendor} words it",
        "basis_text": "the reply's text",
        "digits": "not in the catalog; its digits say (RFC 5321 section 4.2.1)",
        "unknown_status": "not a registered detail; its subject says",
        "retry_yes": "yes, later: nothing needs to change for it to work",
        "retry_no": "no, not unchanged: fix the cause first",
        "retry_none": "not applicable",
        "retry_connect": "only once the connection problem is found and fixed",
        "mismatch": (
            "its class ({status_class}) disagrees with the reply code ({code_class}xx); "
            "RFC 3463 asks them to agree, and clients act on the reply code"
        ),
        "nowhere": "nowhere: no server sends it",
        "at": "at",
        "unknown_class": "not an enhanced status class RFC 3463 defines",
    },
    "fr": {
        "meaning": "Sens",
        "stages": "Envoyé à",
        "typical": "Exemple",
        "retry": "Réessayer",
        "advice": "Que faire",
        "source": "Source",
        "note": "Remarque",
        "reply": "Réponse",
        "status": "Statut étendu",
        "used_with": "Souvent avec",
        "read_from": "Lu dans",
        "vendor_use": "Usage éditeur",
        "basis_vendor": "l'usage de ce statut par {vendor} et le texte de la réponse",
        "basis_vendor_text": "le texte de la réponse, tel que {vendor} le formule",
        "basis_text": "le texte de la réponse",
        "digits": "absent du catalogue ; ses chiffres disent (RFC 5321, section 4.2.1)",
        "unknown_status": "détail non enregistré ; son sujet dit",
        "retry_yes": "oui, plus tard : rien n'a besoin de changer pour que cela marche",
        "retry_no": "non, pas tel quel : corrigez d'abord la cause",
        "retry_none": "sans objet",
        "retry_connect": "seulement une fois le problème de connexion trouvé et réglé",
        "mismatch": (
            "sa classe ({status_class}) contredit le code de réponse ({code_class}xx) ; "
            "la RFC 3463 demande qu'ils concordent, et les clients suivent le code de réponse"
        ),
        "nowhere": "nulle part : aucun serveur ne l'envoie",
        "at": "à",
        "unknown_class": "pas une classe de statut étendu définie par la RFC 3463",
    },
}
_KIND_NAMES: Mapping[str, Mapping[str, str]] = {
    "en": {
        "success": "success",
        "intermediate": "intermediate (go on)",
        "transient": "transient failure",
        "permanent": "permanent failure",
        "not-a-reply": "not a server reply",
    },
    "fr": {
        "success": "succès",
        "intermediate": "intermédiaire (continuer)",
        "transient": "échec temporaire",
        "permanent": "échec permanent",
        "not-a-reply": "pas une réponse de serveur",
    },
}
_WIDTH = 78
_LABEL_WIDTH = 14


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r} (choose from: {', '.join(LANGS)})")


def _field(label: str, value: str, *, blank_label: bool = False) -> str:
    """One "Label:  value" block, wrapped with the value's lines aligned."""
    prefix = " " * (_LABEL_WIDTH + 2) if blank_label else f"  {label + ':':<{_LABEL_WIDTH}}"
    return textwrap.fill(
        " ".join(value.split()),
        width=_WIDTH,
        initial_indent=prefix,
        subsequent_indent=" " * len(prefix),
        break_on_hyphens=False,
    )


# How stages read in explanations; the rest are their SMTP verbs.
_STAGE_NAMES: Mapping[str, Mapping[str, str]] = {
    "en": {
        "connect": "connection (greeting)",
        "unknown": "unknown command",
        "end_of_data": "end of DATA",
        "end_of_data_long": "end of DATA (after the final dot)",
        "mail": "MAIL FROM",
        "rcpt": "RCPT TO",
    },
    "fr": {
        "connect": "connexion (bannière)",
        "unknown": "commande inconnue",
        "end_of_data": "fin de DATA",
        "end_of_data_long": "fin de DATA (après le point final)",
        "mail": "MAIL FROM",
        "rcpt": "RCPT TO",
    },
}


def _stage_name(stage: str, lang: str, *, long: bool = False) -> str:
    names = _STAGE_NAMES[lang]
    if long and f"{stage}_long" in names:
        return names[f"{stage}_long"]
    return names.get(stage, stage.upper())


def _reply_line(code: int, status_text: str | None, text: str) -> str:
    return " ".join(part for part in (str(code), status_text, text) if part)


def _explain_code(entry: CodeEntry, lang: str, *, advice: bool = True) -> list[str]:
    labels = _LABELS[lang]
    kind = _KIND_NAMES[lang][entry.kind]
    out = [f"{entry.code} {entry.localized('summary', lang)} ({kind})"]
    out.append(_field(labels["meaning"], entry.localized("meaning", lang)))
    where = ", ".join(_stage_name(s, lang, long=True) for s in entry.stages) or labels["nowhere"]
    out.append(_field(labels["stages"], where))
    if entry.kind != "not-a-reply":
        default = _reply_line(entry.code, entry.status, entry.text)
        # Stages that differ from the default, grouped when they share a reply.
        by_reply: dict[str, list[str]] = {}
        for stage in entry.stages:
            line = _reply_line(entry.code, entry.status_for(stage), entry.text_for(stage))
            if line != default:
                by_reply.setdefault(line, []).append(_stage_name(stage, lang))
        out.append(_field(labels["typical"], default))
        out.extend(
            _field("", f"{labels['at']} {', '.join(stages)}: {line}", blank_label=True)
            for line, stages in by_reply.items()
        )
    if entry.kind in ("success", "intermediate"):
        retry = labels["retry_none"]
    elif entry.kind == "not-a-reply":
        retry = labels["retry_connect"]
    else:
        retry = labels["retry_yes"] if entry.retry else labels["retry_no"]
    out.append(_field(labels["retry"], retry))
    if advice:
        out.append(_field(labels["advice"], entry.localized("advice", lang)))
    if entry.note:
        out.append(_field(labels["note"], entry.note))
    out.append(_field(labels["source"], entry.source))
    return out


def _explain_unknown_code(code: int, lang: str) -> list[str]:
    labels = _LABELS[lang]
    kind = _KIND_NAMES[lang][kind_of(code)]
    out = [f"{code} ({kind}): {labels['digits']}"]
    out.extend(
        _field(line.split(":", 1)[0], line.split(":", 1)[1])
        for line in digits_meaning(code, lang).splitlines()
    )
    if str(code)[0] in "45":
        out.append(_field(labels["retry"], labels["retry_yes" if code < 500 else "retry_no"]))
    return out


def _explain_status(
    status_text: str, lang: str, code_class: str | None = None, *, shown: str = ""
) -> list[str]:
    labels = _LABELS[lang]
    entry = status(status_text)
    if entry is None:
        return [f"{labels['status']} {status_text}: {labels['unknown_class']}"]
    kind = _KIND_NAMES[lang][entry.kind]
    head = f"{labels['status']} {entry.status}: {entry.localized('subject', lang)} ({kind})"
    out = [head]
    if not entry.registered:
        out.append(
            _field(
                labels["meaning"], f"{labels['unknown_status']}: {entry.localized('meaning', lang)}"
            )
        )
    else:
        out.append(_field(labels["meaning"], entry.localized("meaning", lang)))
    out.append(_field(labels["advice"], entry.localized("advice", lang)))
    if code_class is None:
        stages_by_code: dict[int, list[str]] = {}
        for reply_code, stage in codes_with_status(entry.status):
            stages_by_code.setdefault(reply_code, [])
            if stage is not None:
                stages_by_code[reply_code].append(_stage_name(stage, lang))

        # The codes the RFCs pair with this status first, vendors' private codes after; among
        # them, codes that carry it by default before those that carry it at some stages only.
        def rfc_first(item: tuple[int, list[str]]) -> tuple[bool, bool, int]:
            entry = code(item[0])
            vendor = entry is None or not entry.source.startswith("RFC")
            return (vendor, bool(item[1]), item[0])

        used = [
            f"{c} ({labels['at']} {', '.join(stages)})" if stages else str(c)
            for c, stages in sorted(stages_by_code.items(), key=rfc_first)
        ]
        if used:
            out.append(_field(labels["used_with"], "; ".join(used)))
    elif code_class != entry.status[0]:
        out.append(
            _field(
                labels["note"],
                labels["mismatch"].format(status_class=entry.status[0], code_class=code_class),
            )
        )
    out.extend(
        _field(labels["vendor_use"], f"{sign.vendor}: {sign.summary}. {sign.advice}")
        for sign in signs_for_status(entry.status)
        if sign.summary != shown  # already the lead block
    )
    if entry.source:
        out.append(_field(labels["source"], entry.source))
    return out


def _explain_reading(query: _Query, lang: str) -> list[str]:
    """The lead block for a pasted reply whose wording (or vendor) says more than its codes."""
    reply_text = " ".join(query.reply.split()) if query.reply else ""
    reading = read_reply(query.code, query.status, reply_text)
    if reading.basis not in ("vendor", "text"):
        return []
    labels = _LABELS[lang]
    if reading.basis == "vendor":
        basis = labels["basis_vendor"].format(vendor=reading.vendor)
    elif reading.vendor:
        basis = labels["basis_vendor_text"].format(vendor=reading.vendor)
    else:
        basis = labels["basis_text"]
    kind = _KIND_NAMES[lang].get(reading.kind, reading.kind)
    sign = next((r for r in _catalog().readings if r.id == reading.sign), None)
    words = dict(sign.fr) if lang == "fr" and sign is not None else {}
    summary = words.get("summary") or reading.summary
    return [
        f"{summary} ({kind})" if kind else summary,
        _field(labels["read_from"], basis),
        _field(labels["meaning"], words.get("meaning") or reading.meaning),
        _field(labels["advice"], words.get("advice") or reading.advice),
        _field(labels["source"], reading.source),
        "",
    ]


@dataclass(frozen=True, slots=True)
class _Query:
    code: int | None = None
    status: str | None = None
    reply: str | None = None  # the pasted reply, when there was one


def _parse(arg: str) -> _Query:
    text = arg.strip()
    if not text:
        raise ValueError("nothing to explain: give a code (550), a status (5.1.1) or a reply")
    if re.fullmatch(r"\d{3}", text):
        _check_code(int(text))
        return _Query(code=int(text))
    if _STATUS_RE.match(text):
        if text[0] not in "245":
            raise ValueError(f"{text}: an enhanced status starts with 2, 4 or 5")
        return _Query(status=text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0][:3].isdigit() and lines[0][3:4] in ("", " ", "-"):
        _check_code(int(lines[0][:3]))  # "612 ..." is a mistake to name, not text to search
    first = parse_reply_line(lines[0])
    if first:
        reply_code = first.code
        # A multi-line reply repeats its code on every line; keep those lines' text.
        parts = []
        for line in lines:
            read = parse_reply_line(line)
            if read and read.code == reply_code:
                parts.append(f"{read.status} {read.text}".strip() if read.status else read.text)
        return _Query(code=reply_code, status=first.status, reply=_joined(reply_code, parts))
    # A reply quoted inside other text: an MTA log line, a bounce ("said: 550 5.1.1 ...").
    found = _CODE_STATUS_RE.search(text)
    if found:
        return _Query(
            code=int(found["code"]),
            status=found["status"],
            reply=" ".join(text[found.start() :].split()),
        )
    found = _LONE_STATUS_RE.search(text)
    if found:
        return _Query(status=found["status"])
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise ValueError(f"no reply code (550) or enhanced status (5.1.1) found in {shown!r}")


def _joined(code: int, parts: list[str]) -> str:
    return "\n".join(
        f"{code}{'-' if n < len(parts) - 1 else ' '}{part}".rstrip() for n, part in enumerate(parts)
    )


def explain(arg: str, lang: str = "en") -> str:
    """Explain a reply code ("550"), an enhanced status ("5.1.1") or a pasted reply.

    A pasted reply may be multi-line ("550-...\\n550 ...") or quoted inside a log line. Says the
    class, the meaning, where in the conversation it is sent, whether to retry and what to do.
    A code the catalog does not list is explained by its digits. Raises ValueError with a
    one-line message when ``arg`` holds neither a code nor a status.
    """
    _check_lang(lang)
    query = _parse(arg)
    out: list[str] = []
    if query.reply is not None:
        out.append(f"{_LABELS[lang]['reply']}: {query.reply.splitlines()[0]}")
        out.extend(
            f"{' ' * (len(_LABELS[lang]['reply']) + 2)}{line}"
            for line in query.reply.splitlines()[1:]
        )
        out.append("")
    reading = None
    if query.reply is not None:
        reading = read_reply(query.code, query.status, " ".join(query.reply.split()))
        out.extend(_explain_reading(query, lang))
    # The enhanced status first: it says more precisely than the code what went wrong.
    if query.status is not None:
        code_class = str(query.code)[0] if query.code is not None else None
        shown = reading.summary if reading is not None else ""
        out.extend(_explain_status(query.status, lang, code_class, shown=shown))
        if query.code is not None:
            out.append("")
    if query.code is not None:
        entry = code(query.code)
        # The code's generic advice ("For 5.1.1, remove the address") only when nothing more
        # precise was said: it must never contradict the status or the text above it.
        generic_ok = reading is None or reading.basis == "code"
        out.extend(
            _explain_code(entry, lang, advice=generic_ok)
            if entry
            else _explain_unknown_code(query.code, lang)
        )
    return "\n".join(out)


def explain_data(arg: str, lang: str = "en") -> dict[str, Any]:
    """``explain`` as data (``fakesmtp explain --json``): the reading, the status, the code."""
    _check_lang(lang)
    query = _parse(arg)
    reply_text = " ".join(query.reply.split()) if query.reply else ""
    reading = read_reply(query.code, query.status, reply_text)
    data: dict[str, Any] = {
        "reply": query.reply,
        "code": query.code,
        "status": query.status,
        "reading": {
            "summary": reading.summary,
            "meaning": reading.meaning,
            "advice": reading.advice,
            "source": reading.source,
            "explained_by": reading.basis,
            "vendor": reading.vendor or None,
            "kind": reading.kind,
        },
    }
    if query.status is not None and (entry := status(query.status)) is not None:
        data["status_entry"] = {
            "status": entry.status,
            "subject": entry.localized("subject", lang),
            "meaning": entry.localized("meaning", lang),
            "advice": entry.localized("advice", lang),
            "registered": entry.registered,
            "source": entry.source,
            "usually_with": [c for c, _ in codes_with_status(entry.status)],
            "vendor_uses": [
                {"vendor": sign.vendor, "summary": sign.summary, "source": sign.source}
                for sign in signs_for_status(entry.status)
            ],
        }
    if query.code is not None and (entry_code := code(query.code)) is not None:
        data["code_entry"] = _as_dict(entry_code, lang)
    return data


# --------------------------------------------------------------------------- codes table

_HEADERS: Mapping[str, tuple[str, ...]] = {
    "en": ("CODE", "CLASS", "STAGES", "STATUS", "MEANING"),
    "fr": ("CODE", "CLASSE", "ÉTAPES", "STATUT", "SENS"),
}
_STAGES_WIDTH = 30


def _stages_cell(entry: CodeEntry) -> str:
    if not entry.stages:
        return "-"
    if len(entry.stages) >= len(STAGES) - 2:  # 421: any command at all
        return "any"
    cell = ",".join(entry.stages)
    return cell if len(cell) <= _STAGES_WIDTH else cell[: _STAGES_WIDTH - 1] + "…"


def render_codes(
    kind: str | None = None,
    stage: str | None = None,
    as_json: bool = False,
    lang: str = "en",
) -> str:
    """The catalog as a plain-text table (code, class, stages, status, short meaning) or JSON.

    ``kind`` keeps one class (success, transient...), ``stage`` the codes sent at that stage.
    Raises ValueError for an unknown class, stage or language.
    """
    _check_lang(lang)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown class {kind!r} (choose from: {', '.join(KINDS)})")
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (choose from: {', '.join(STAGES)})")
    entries = [
        entry
        for entry in codes()
        if (kind is None or entry.kind == kind) and (stage is None or stage in entry.stages)
    ]
    if as_json:
        import json

        return json.dumps(
            [_as_dict(entry, lang) for entry in entries], indent=2, ensure_ascii=False
        )
    rows = [_HEADERS[lang]]
    rows.extend(
        (str(e.code), e.kind, _stages_cell(e), e.status or "-", e.localized("summary", lang))
        for e in entries
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    )


def _as_dict(entry: CodeEntry, lang: str) -> dict[str, Any]:
    return {
        "code": entry.code,
        "class": entry.kind,
        "summary": entry.localized("summary", lang),
        "stages": list(entry.stages),
        "status": entry.status,
        "text": entry.text,
        "stage_status": dict(entry.stage_status),
        "stage_text": dict(entry.stage_text),
        "meaning": entry.localized("meaning", lang),
        "advice": entry.localized("advice", lang),
        "retry": entry.retry,
        "source": entry.source,
        "note": entry.note,
    }
