"""README examples are tests: every YAML block is a valid scenario, every Python block runs.

(A ```yaml block is a scenario; other YAML, such as a CI workflow snippet, is tagged ```yml.)
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from fakesmtp.scenario import load_scenario_text

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
YAML = [body for lang, body in BLOCKS if lang == "yaml"]
# Each Python block with the YAML block before it: an example may load it as `repro.yaml`.
PYTHON = [
    (body, next((b for lang, b in reversed(BLOCKS[:n]) if lang == "yaml"), ""))
    for n, (lang, body) in enumerate(BLOCKS)
    if lang == "python"
]

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("text", YAML, ids=[f"yaml-{n}" for n in range(len(YAML))])
def test_yaml_examples_are_valid_scenarios(text: str) -> None:
    load_scenario_text(text, "README.md")


@pytest.mark.parametrize(("code", "yaml_before"), PYTHON,
                         ids=[f"python-{n}" for n in range(len(PYTHON))])  # fmt: skip
@pytest.mark.slow
def test_python_examples_run(code: str, yaml_before: str, pytester: pytest.Pytester) -> None:
    if "def test_" in code:  # a pytest example: run it as a test file, with our plugin
        pytester.makefile(".yaml", repro=yaml_before)
        pytester.makepyfile(test_example=textwrap.dedent(code))
        result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=code.count("def test_"))
    else:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
