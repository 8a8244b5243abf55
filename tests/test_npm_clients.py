"""Mailpit's and MailHog's own npm clients (``mailpit-api``, ``mailhog``) against fakesmtp.

``tests/js/clients.mjs`` drives them, unchanged but for the address; ``.ci/run`` installs them
from ``tests/js/package-lock.json`` with ``npm ci``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import served

JS = Path(__file__).parent / "js"


@pytest.mark.slow
def test_mailpit_and_mailhog_npm_clients_work_unchanged() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs npm)")
    for package in ("mailpit-api", "mailhog"):
        if not (JS / "node_modules" / package / "package.json").exists():
            pytest.skip(f"the npm client {package} is not installed: run `npm ci` in tests/js")
    with served(api_port=0) as smtp:
        env = {
            **os.environ,
            "FAKESMTP_API": f"http://127.0.0.1:{smtp.api_port}",
            "FAKESMTP_SMTP_PORT": str(smtp.port),
        }
        result = subprocess.run(
            [node, "clients.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=120
        )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert report.count("ok - ") == 12 and "not ok" not in report, report
