"""How catalog.read_reply's explanations compare with Sisimai's reasons on real bounces.

Usage: python benchmarks/readings_vs_sisimai.py [../shared/bounces/expected.json]

For every failed recipient in the corpus (real bounces nobody here wrote), the remote reply's
code, status and text go through read_reply; its summary is mapped to the Sisimai reasons that
mean the same thing, and compared with the reason Sisimai's own analyser gave. Prints how many
replies each basis (vendor, status, text, code) explained, and the agreement per category.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from fakesmtp.catalog import read_reply

# Our summaries -> the Sisimai reasons that say the same thing.
CATEGORIES = {
    "unknown recipient": (
        {"userunknown", "filtered", "rejected"},
        (
            "Bad destination mailbox address",
            "Recipient not found",
            "Recipient rejected at",
        ),
    ),
    "mailbox full": ({"mailboxfull", "exceedlimit"}, ("Mailbox full",)),
    "block list / reputation": (
        {"blocked", "badreputation", "rejected"},
        (
            "block list",
            "banned by Microsoft",
        ),
    ),
    "spam": ({"spamdetected", "contenterror", "policyviolation"}, ("as spam", "likely spam")),
    "authentication": (
        {"authfailure", "policyviolation", "securityerror", "rejected"},
        (
            "authentication",
            "Unauthenticated",
            "not authenticated",
            "SPF",
            "DKIM",
        ),
    ),
    "rate / volume": (
        {"speeding", "toomanyconn", "blocked", "badreputation"},
        (
            "Rate limited",
            "Deferred by Yahoo",
        ),
    ),
    "greylisting": ({"blocked", "policyviolation", "speeding", "undefined"}, ("Greylisted",)),
    "size": ({"mesgtoobig", "exceedlimit"}, ("too big", "length exceeds")),
    "relaying": ({"norelaying", "securityerror", "rejected"}, ("Relaying denied",)),
    "reverse dns": ({"requireptr", "blocked"}, ("reverse DNS",)),
    "direct from dynamic ip": ({"blocked", "badreputation"}, ("may not send mail directly",)),
    "too many recipients": (
        {"toomanyconn", "exceedlimit", "syntaxerror"},
        ("Too many recipients",),
    ),
    "virus": ({"virusdetected"}, ("virus",)),
    "unknown domain": ({"hostunknown", "networkerror"}, ("domain could not be found",)),
    "accepts no mail": ({"notaccept", "hostunknown"}, ("null MX",)),
    "expired": ({"expired", "networkerror"}, ("retrying for too long",)),
}


def category(summary: str) -> str | None:
    for name, (_, words) in CATEGORIES.items():
        if any(word.lower() in summary.lower() for word in words):
            return name
    return None


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/bounces/expected.json")
    data = json.loads(path.read_text())
    bases: Counter[str] = Counter()
    agree: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses = []
    for message in data["messages"]:
        for failure in message.get("failures", []):
            if not failure.get("code"):
                continue
            reading = read_reply(failure["code"], failure.get("status"), failure.get("text") or "")
            bases[reading.basis] += 1
            name = category(reading.summary)
            reason = (failure.get("sisimai") or {}).get("reason")
            if name is None or not reason:
                continue
            agree[name][1] += 1
            if reason in CATEGORIES[name][0]:
                agree[name][0] += 1
            else:
                misses.append((message["file"], name, reason, failure["code"], failure.get("text")))
    total = sum(bases.values())
    print(
        f"replies explained: {total}; by " + ", ".join(f"{k} {v}" for k, v in bases.most_common())
    )
    ok = sum(a for a, _ in agree.values())
    seen = sum(n for _, n in agree.values())
    print(f"categorised: {seen}; agreeing with Sisimai's reason: {ok}/{seen}")
    for name, (a, n) in sorted(agree.items()):
        print(f"  {name:<24} {a}/{n}")
    for miss in misses:
        print("  differs:", *miss)


if __name__ == "__main__":
    main()
