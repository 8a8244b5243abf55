"""The reply catalog: complete entries, consistent statuses, lookups, explain, the table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fakesmtp import catalog
from fakesmtp.reply import Reply
from fakesmtp.stages import Stage

# Every code the seed article lists, and those RFC 5321, 4954, 3207, 1870 and 7504 add.
SEED_CODES = {
    101, 111, 211, 214, 220, 221, 250, 251, 252, 354, 420, 421, 422, 431, 432, 441, 442, 446,
    447, 449, 450, 451, 452, 471, 500, 501, 502, 503, 504, 510, 511, 512, 513, 523, 530, 541,
    550, 551, 552, 553, 554,
}  # fmt: skip
RFC_CODES = {
    211, 214, 220, 221, 250, 251, 252, 354, 421, 450, 451, 452, 455, 500, 501, 502, 503, 504,
    550, 551, 552, 553, 554, 555,  # RFC 5321
    334, 235, 432, 454, 530, 534, 535, 538,  # RFC 4954 (454 and 530 also RFC 3207)
    521, 556,  # RFC 7504
}  # fmt: skip
CLASS_OF_DIGIT = {"1": "not-a-reply", "2": "success", "3": "intermediate", "4": "transient",
                  "5": "permanent"}  # fmt: skip
ENTRIES = catalog.codes()
SERVER_ENTRIES = [entry for entry in ENTRIES if entry.kind != "not-a-reply"]


def ids(entry: catalog.CodeEntry) -> str:
    return str(entry.code)


# --------------------------------------------------------------------------- the data


def test_every_documented_code_is_in_the_catalog() -> None:
    listed = {entry.code for entry in ENTRIES}
    assert listed >= SEED_CODES | RFC_CODES


def test_codes_are_sorted_and_unique() -> None:
    numbers = [entry.code for entry in ENTRIES]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("entry", ENTRIES, ids=ids)
def test_entry_is_complete(entry: catalog.CodeEntry) -> None:
    assert entry.kind == CLASS_OF_DIGIT[str(entry.code)[0]]
    for name in ("summary", "meaning", "advice", "source"):
        assert getattr(entry, name).strip(), f"{entry.code} has no {name}"
    for name in ("summary", "meaning", "advice"):
        assert entry.fr.get(name, "").strip(), f"{entry.code} has no French {name}"
    assert set(entry.stages) <= {stage.value for stage in Stage}
    assert len(set(entry.stages)) == len(entry.stages)
    assert set(entry.stage_status) <= set(entry.stages)
    assert set(entry.stage_text) <= set(entry.stages)


@pytest.mark.parametrize("entry", SERVER_ENTRIES, ids=ids)
def test_server_codes_have_stages_and_a_sendable_default_reply(entry: catalog.CodeEntry) -> None:
    assert entry.stages, f"{entry.code}: a server sends it somewhere"
    assert entry.text
    for stage in (None, *entry.stages):
        status, text = catalog.default_reply(entry.code, stage)
        # The reply module's own checks: status class agrees with the code, no stray braces.
        reply = Reply.make(entry.code, status, text)
        assert reply.render().endswith(b"\r\n")


@pytest.mark.parametrize("entry", SERVER_ENTRIES, ids=ids)
def test_every_status_a_code_uses_is_registered(entry: catalog.CodeEntry) -> None:
    for status in {entry.status, *entry.stage_status.values()} - {None}:
        found = catalog.status(status)
        assert found is not None and found.registered, f"{entry.code} uses unknown {status}"
        assert status[0] == str(entry.code)[0]


def test_client_side_errors_are_not_replies() -> None:
    for number in (101, 111):
        entry = catalog.code(number)
        assert entry is not None
        assert entry.kind == "not-a-reply"
        assert entry.stages == ()
        assert entry.status is None
        assert entry.source.startswith("Not an SMTP reply")
    assert "refused" in catalog.code(111).source
    assert "unreachable" in catalog.code(101).source


def test_retry_follows_the_class() -> None:
    for entry in ENTRIES:
        if entry.kind in ("success", "intermediate", "permanent"):
            assert entry.retry is False, entry.code
        elif entry.kind == "transient" and entry.code != 446:
            assert entry.retry is True, entry.code
    # A routing loop is transient by class, but waiting alone never fixes it; the note says so.
    loop = catalog.code(446)
    assert loop.retry is False and "routing" in loop.note


def test_vendor_codes_name_their_vendor() -> None:
    assert "GroupWise" in catalog.code(420).source
    assert "Exchange" in catalog.code(449).source
    for number in (441, 442, 446, 447):
        assert "Vendor private use" in catalog.code(number).source


def test_432_gives_both_meanings() -> None:
    entry = catalog.code(432)
    assert "RFC 4954" in entry.meaning and "Exchange" in entry.meaning
    assert entry.status_for("auth") == "4.7.12"
    assert entry.status_for("rcpt") == "4.3.2"
    assert "queue" in entry.text_for("rcpt")


@pytest.mark.parametrize(
    ("code", "stage", "status"),
    [
        (552, "mail", "5.3.4"),
        (552, "end_of_data", "5.3.4"),
        (552, "rcpt", "5.2.2"),
        (550, "rcpt", "5.1.1"),
        (550, "mail", "5.7.1"),
        (451, None, "4.3.0"),
        (451, "rcpt", "4.3.0"),
        (452, "rcpt", "4.5.3"),
        (452, "mail", "4.3.1"),
        (530, "mail", "5.7.0"),
        (535, "auth", "5.7.8"),
        (556, "rcpt", "5.1.10"),
        (521, "connect", "5.3.2"),
        (220, "connect", None),  # RFC 2034: no enhanced status in the greeting
        (220, "starttls", "2.0.0"),
        (250, "ehlo", None),
        (250, "rcpt", "2.1.5"),
        (354, "data", None),
    ],
)
def test_status_for_stage(code: int, stage: str | None, status: str | None) -> None:
    assert catalog.code(code).status_for(stage) == status
    assert catalog.default_reply(code, stage)[0] == status


def test_default_reply_texts() -> None:
    assert catalog.default_reply(552, "rcpt") == ("5.2.2", "Mailbox full")
    assert catalog.default_reply(452, "rcpt") == ("4.5.3", "Too many recipients")
    assert catalog.default_reply(454, "starttls")[1].startswith("TLS not available")
    assert catalog.default_reply(554, "connect") == ("5.7.1", "No SMTP service here")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (437, ("4.0.0", "Temporary failure (unspecified)")),
        (526, ("5.0.0", "Permanent failure (connection)")),
        (259, ("2.0.0", "Completed (mail system)")),
        (345, (None, "Go ahead (unspecified)")),
        (399, (None, "Go ahead")),  # second digit 9: no defined meaning
        (180, (None, "Preliminary reply")),  # second digit 8: no defined meaning
    ],
)
def test_default_reply_for_unknown_codes(code: int, expected: tuple[str | None, str]) -> None:
    assert catalog.code(code) is None
    assert catalog.default_reply(code) == expected


@pytest.mark.parametrize("number", [0, 99, 612, 999])
def test_default_reply_rejects_non_codes(number: int) -> None:
    with pytest.raises(ValueError, match=r"is not an SMTP reply code: the first digit must be 1"):
        catalog.default_reply(number)


# --------------------------------------------------------------------------- enhanced statuses


def test_status_lookup() -> None:
    entry = catalog.status("5.1.1")
    assert entry.status == "5.1.1"
    assert entry.kind == "permanent"
    assert entry.subject == "Addressing status"
    assert "does not exist" in entry.meaning
    assert entry.source == "RFC 3463 section 3.2"
    transient = catalog.status("4.1.1")
    assert transient.status == "4.1.1" and transient.kind == "transient"
    assert transient.meaning == entry.meaning
    assert catalog.status("2.1.5").kind == "success"


def test_unknown_detail_falls_back_to_the_subject() -> None:
    entry = catalog.status("5.7.99")
    assert entry is not None and not entry.registered
    assert entry.subject == "Security or policy status"
    assert "policy" in entry.meaning


@pytest.mark.parametrize("text", ["5.9.1", "3.1.1", "6.0.0", "5.1", "x.1.1", "", "550"])
def test_status_rejects_what_is_not_a_status(text: str) -> None:
    assert catalog.status(text) is None


@pytest.mark.parametrize(
    "status",
    [
        "5.7.8", "5.7.9", "5.7.11", "4.7.12", "5.7.0", "5.6.7", "5.6.8", "5.6.9", "5.6.10",
        "5.7.13", "5.7.17", "5.1.10", "5.7.18", "5.7.20", "5.7.23", "5.7.25", "5.7.26",
        "5.7.27", "5.5.6", "5.7.10",
    ],
)  # fmt: skip
def test_later_registrations_are_known(status: str) -> None:
    entry = catalog.status(status)
    assert entry is not None and entry.registered and entry.source


def test_every_status_detail_is_complete() -> None:
    entries = catalog.statuses()
    assert len(entries) > 70
    for entry in entries:
        assert entry.meaning and entry.advice and entry.source, entry.status
        assert entry.fr.get("meaning"), entry.status
    subjects = {entry.status.split(".")[1] for entry in entries}
    assert subjects == {str(n) for n in range(8)}


def test_unauthenticated_mail_status() -> None:
    assert "Multiple authentication checks failed" in catalog.status("5.7.26").meaning


# --------------------------------------------------------------------------- digits


def test_digits_meaning() -> None:
    text = catalog.digits_meaning(437)
    assert text.splitlines()[0].startswith("4yz: Transient negative completion reply.")
    assert text.splitlines()[1] == "x3z: Unspecified: not assigned a meaning by RFC 5321."
    assert "third digit" in text.splitlines()[2]
    assert "x8z: no defined meaning (RFC 5321 only uses 0 to 5)." in catalog.digits_meaning(580)
    assert catalog.digits_meaning(521, lang="fr").startswith("5yz: Permanent negative")
    assert "connexion" in catalog.digits_meaning(521, lang="fr")


# --------------------------------------------------------------------------- explain


def test_explain_a_code() -> None:
    text = catalog.explain("550")
    first = text.splitlines()[0]
    assert first == "550 Mailbox unavailable, or rejected by policy (permanent failure)"
    assert "Meaning:" in text and "What to do:" in text and "Source:" in text
    assert "RCPT TO" in text  # where it is sent
    assert "Retry:        no, not unchanged: fix the cause first" in text
    assert "550 5.1.1 Mailbox unavailable, no such user" in text
    assert "at MAIL FROM: 550 5.7.1 Sender address rejected, access denied" in text


def test_explain_a_transient_code_says_retry() -> None:
    text = catalog.explain("451")
    assert "(transient failure)" in text.splitlines()[0]
    assert "Retry:        yes, later" in text


def test_explain_a_status() -> None:
    text = catalog.explain("5.1.1")
    assert text.splitlines()[0] == "Enhanced status 5.1.1: Addressing status (permanent failure)"
    assert "Usually with: 550; 511" in text  # the RFC's code first, the vendors' after


def test_explain_a_pasted_reply() -> None:
    text = catalog.explain("550 5.7.1 Message rejected as spam")
    assert text.splitlines()[0] == "Reply: 550 5.7.1 Message rejected as spam"
    assert "550 Mailbox unavailable" in text
    assert "Enhanced status 5.7.1: Security or policy status (permanent failure)" in text
    assert "Delivery not authorized" in text


def test_explain_a_multi_line_reply() -> None:
    pasted = "550-5.7.26 This mail is unauthenticated.\r\n550 5.7.26 See the sender's DMARC policy."
    text = catalog.explain(pasted)
    assert text.splitlines()[:2] == [
        "Reply: 550-5.7.26 This mail is unauthenticated.",
        "       550 5.7.26 See the sender's DMARC policy.",
    ]
    assert "Multiple authentication checks failed" in text


def test_explain_a_reply_quoted_in_a_log_line() -> None:
    line = (
        "to=<bob@example.test>, status=bounced (host mx.example.test said: "
        "552 5.2.2 <bob@example.test>: Mailbox full (in reply to RCPT TO command))"
    )
    text = catalog.explain(line)
    assert text.splitlines()[0].startswith("Reply: 552 5.2.2 <bob@example.test>: Mailbox full")
    assert "Enhanced status 5.2.2: Mailbox status" in text


def test_explain_a_status_whose_class_disagrees() -> None:
    text = catalog.explain("550 4.2.2 Mailbox full")
    assert "its class (4) disagrees with the reply code (5xx)" in " ".join(text.split())


def test_explain_an_unknown_code_uses_the_digits() -> None:
    text = catalog.explain("437")
    assert text.splitlines()[0] == (
        "437 (transient failure): not in the catalog; its digits say (RFC 5321 section 4.2.1)"
    )
    assert "Transient negative completion reply" in text
    assert "Unspecified" in text


def test_explain_never_fails_on_a_reply_code() -> None:
    for number in range(100, 600):
        assert catalog.explain(str(number)).startswith(str(number))


def test_explain_client_side_errors() -> None:
    text = catalog.explain("111")
    assert "(not a server reply)" in text.splitlines()[0]
    assert "Sent at:      nowhere: no server sends it" in text


def test_explain_in_french() -> None:
    text = catalog.explain("550", lang="fr")
    assert text.splitlines()[0] == "550 Boîte indisponible, ou refus par règle (échec permanent)"
    assert "Que faire:" in text and "Réessayer:" in text
    status_text = catalog.explain("5.2.2", lang="fr")
    assert "Boîte pleine" in status_text


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("", "nothing to explain: give a code (550), a status (5.1.1) or a reply"),
        ("   ", "nothing to explain: give a code (550), a status (5.1.1) or a reply"),
        ("hello world", "no reply code (550) or enhanced status (5.1.1) found in 'hello world'"),
        ("612", "612 is not an SMTP reply code: the first digit must be 1 to 5"),
        ("3.1.1", "3.1.1: an enhanced status starts with 2, 4 or 5"),
        ("700 nope", "700 is not an SMTP reply code: the first digit must be 1 to 5"),
    ],
)
def test_explain_rejects_unparseable_input(arg: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        catalog.explain(arg)
    assert str(caught.value) == message


def test_explain_rejects_an_unknown_language() -> None:
    with pytest.raises(ValueError, match="unknown language 'de'"):
        catalog.explain("550", lang="de")


# --------------------------------------------------------------------------- the table


def test_render_codes_table() -> None:
    lines = catalog.render_codes().splitlines()
    assert lines[0].split() == ["CODE", "CLASS", "STAGES", "STATUS", "MEANING"]
    assert len(lines) == len(ENTRIES) + 1
    row = next(line for line in lines if line.startswith("556 "))
    assert row.split()[:4] == ["556", "permanent", "rcpt", "5.1.10"]
    assert next(line for line in lines if line.startswith("421 ")).split()[2] == "any"


def test_render_codes_filters() -> None:
    transient = catalog.render_codes(kind="transient").splitlines()[1:]
    assert transient and all(line.split()[1] == "transient" for line in transient)
    auth = {int(line.split()[0]) for line in catalog.render_codes(stage="auth").splitlines()[1:]}
    assert {235, 334, 432, 454, 534, 535, 538} <= auth
    assert 550 not in auth


def test_render_codes_json() -> None:
    data = json.loads(catalog.render_codes(as_json=True))
    assert [item["code"] for item in data] == [entry.code for entry in ENTRIES]
    first = data[0]
    assert first["class"] == "not-a-reply" and first["stages"] == []
    french = json.loads(catalog.render_codes(kind="permanent", as_json=True, lang="fr"))
    assert all(item["class"] == "permanent" for item in french)
    assert french[0]["meaning"] == catalog.code(french[0]["code"]).fr["meaning"]


def test_render_codes_in_french() -> None:
    assert catalog.render_codes(lang="fr").splitlines()[0].split() == [
        "CODE", "CLASSE", "ÉTAPES", "STATUT", "SENS",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "fatal"}, "unknown class 'fatal'"),
        ({"stage": "eod"}, "unknown stage 'eod'"),
        ({"lang": "de"}, "unknown language 'de'"),
    ],
)
def test_render_codes_rejects_bad_filters(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        catalog.render_codes(**options)


# --------------------------------------------------------------------------- cost


@pytest.mark.slow
def test_import_does_not_parse_the_yaml() -> None:
    # A fresh interpreter: importing the module must leave the cache empty.
    code = "import fakesmtp.catalog as c; print(c._catalog.cache_info().currsize)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "0"


def test_generated_default_table_matches_the_catalog() -> None:
    """catalog_defaults.py (what a server loading `reply: 550` reads) says what catalog.yaml says;
    after editing catalog.yaml, regenerate it as catalog.defaults_module_source() explains."""
    from fakesmtp import catalog_defaults

    generated: dict[str, object] = {}
    exec(catalog.defaults_module_source(), generated)
    assert generated["CODES"] == catalog_defaults.CODES
    assert generated["FIRST_DIGIT"] == catalog_defaults.FIRST_DIGIT
    assert generated["SECOND_DIGIT"] == catalog_defaults.SECOND_DIGIT
    assert len(catalog_defaults.CODES) == len(catalog.codes())
