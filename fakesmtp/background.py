"""``fakesmtp serve --detach``: the server as a background process, returning once it listens.

CI jobs need a server that outlives the step that started it and a step that fails when the
server could not start. The parent starts ``python -m fakesmtp serve ...`` in a new session and
waits for it to write its ready file (the ports it bound, so ``--port 0`` works too) or to die;
a child that dies gets its own error message shown and its exit status passed on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

READY_TIMEOUT = 30.0  # seconds; a cold CI machine imports, binds and makes a certificate in 1-2


class DetachError(Exception):
    """The background server did not start: ``status`` to exit with, ``message`` to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def write_ready(path: str, info: dict[str, Any]) -> None:
    """The child's side: say where it listens, in one rename (the parent never reads half)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    Path(temporary).write_text(json.dumps(info), encoding="utf-8")
    os.replace(temporary, path)


def start(arguments: list[str], log_file: str | None) -> tuple[int, dict[str, Any]]:
    """Start ``fakesmtp serve ARGUMENTS`` in the background; returns (pid, where it listens).

    Its console lines go to ``log_file`` (appended), or nowhere. Raises DetachError.
    """
    ready = Path(tempfile.mkdtemp(prefix="fakesmtp-")) / "ready.json"
    if log_file is None:
        arguments = [*arguments, "--quiet"]  # nobody reads them: do not write them at all
    # A FAKESMTP_SERVE_DETACH=1 in the environment must not make the child detach again.
    env = {k: v for k, v in os.environ.items() if k != "FAKESMTP_SERVE_DETACH"}
    output = open(log_file, "ab") if log_file else tempfile.TemporaryFile()  # noqa: SIM115
    with output:
        child = subprocess.Popen(
            [sys.executable, "-m", "fakesmtp", "serve", *arguments, "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the starting shell, or its end, leaves it be
        )
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while not ready.exists():
                status = child.poll()
                if status is not None:
                    raise DetachError(status or 1, _said(output, log_file) or "it exited")
                if time.monotonic() > deadline:
                    child.kill()
                    raise DetachError(1, f"not listening after {READY_TIMEOUT:g}s; stopped it")
                time.sleep(0.02)
            info: dict[str, Any] = json.loads(ready.read_text(encoding="utf-8"))
        finally:
            ready.unlink(missing_ok=True)
            ready.parent.rmdir()
    return child.pid, info


def _said(output: Any, log_file: str | None) -> str:
    """The last lines the child wrote: its own one-line error, usually."""
    try:
        if log_file is not None:
            text = Path(log_file).read_text(encoding="utf-8", errors="replace")
        else:
            output.seek(0)
            text = output.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-5:])
