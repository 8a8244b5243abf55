"""Where bounces come from: one file, standard input, or a directory (a Maildir's cur/ and new/,
or any folder of .eml files), each read with bounded size and count."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from .findings import BounceError, Finding

MAX_INPUT = 32 * 1024 * 1024  # a bounce is a few KB; a log this big wants grep first
MAX_FILES = 10_000  # a directory of bounces: more files than this is not one customer's case
MAX_TOTAL = 256 * 1024 * 1024


@dataclass(slots=True)
class Source:
    """The text of one input, named as the user named it."""

    name: str
    text: str


@dataclass(slots=True)
class Collected:
    """The findings of every input read, and why each input without one gave none."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def _read_limited(handle: IO[bytes], name: str) -> str:
    data = handle.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        raise BounceError(
            f"{name} is over the {MAX_INPUT // (1024 * 1024)} MB from-bounce reads: a bounce "
            "is a few KB (for a log, grep the lines first)"
        )
    return data.decode("utf-8", errors="replace")


def read_stdin(handle: IO[bytes]) -> Source:
    return Source("-", _read_limited(handle, "standard input"))


def read_path(path: str) -> list[Source]:
    """One file, or every file of a directory (a Maildir reads cur/ and new/), in name order."""
    p = Path(path)
    if not p.is_dir():
        with p.open("rb") as handle:
            return [Source(path, _read_limited(handle, path))]
    files = _directory_files(p)
    if not files:
        raise BounceError(f"{path}: no files in this directory")
    sources: list[Source] = []
    total = 0
    for f in files:
        with f.open("rb") as handle:
            text = _read_limited(handle, str(f))
        total += len(text)
        if total > MAX_TOTAL:
            raise BounceError(
                f"{path}: more than {MAX_TOTAL // (1024 * 1024)} MB of bounces; "
                "give a smaller directory"
            )
        sources.append(Source(str(f), text))
    return sources


def _directory_files(root: Path) -> list[Path]:
    maildir = [root / sub for sub in ("cur", "new") if (root / sub).is_dir()]
    found: list[Path] = []
    for top in maildir or [root]:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "tmp")
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                found.append(Path(dirpath) / name)
                if len(found) > MAX_FILES:
                    raise BounceError(f"{root}: more than {MAX_FILES} files; give a smaller one")
    return found


def named(findings: list[Finding], source: str) -> list[Finding]:
    """Findings whose origin names the file they came from (when several files are read)."""
    return [replace(f, origin=f"{source}: {f.origin}") for f in findings]
