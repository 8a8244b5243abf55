"""The quick reader of big scenarios agrees with the YAML loader, or steps aside.

yaml_subset reads the block YAML most scenarios use without building YAML nodes, and
scenario._load_quickly builds rules from what it read. Neither may ever decide anything the
thorough path (libyaml nodes, then the validator) would decide differently: for any text,
the quick path either gives the very Scenario the thorough path gives, or gives None. These
tests hold it to that on every scenario file we ship and on generated text built to hit the
corners of YAML (typing of plain words, quotes, comments, flow, indentation, mistakes).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakesmtp import patterns, yaml_subset
from fakesmtp import scenario as scenario_module
from fakesmtp.scenario import ScenarioError, load_scenario_text

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- reader vs YAML


def _as_read(node: yaml.Node) -> Any:
    """What the YAML loader makes of a node, as the scenario builder sees it: mapping keys
    stay the words written (`on` is not True), values are typed by the safe constructor."""
    if isinstance(node, yaml.MappingNode):
        return {key.value: _as_read(value) for key, value in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_as_read(item) for item in node.value]
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _loader_view(text: str) -> tuple[list[Any], list[int]] | None:
    """The loader's reading of a block sequence text: items and their start lines (1-based)."""
    try:
        root = scenario_module._compose(text)  # libyaml, and PyYAML where libyaml refuses
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.SequenceNode):
        return None
    try:
        items = [_as_read(item) for item in root.value]
    except yaml.YAMLError:
        return None
    return items, [item.start_mark.line + 1 for item in root.value]


def _assert_agrees(text: str) -> bool:
    """The reader's answer is the loader's, or None. True when the reader answered."""
    read = yaml_subset.read_sequence(text, 1)
    if read is None:
        return False
    loaded = _loader_view(text)
    assert loaded is not None, f"the reader took text the YAML loader refuses:\n{text}"
    assert (read.items, read.lines) == loaded, text
    return True


PLAIN_SCALARS = [
    "rcpt", "550 5.1.1 No such user", "'*@x.test'", '"u1@x.test"', "1", "{to: '*@x'}",
    "[a, 'b c']", "x # comment", "{to: [a, b], from: c}", "'it''s'", "true", "1m",
]  # fmt: skip
SCALARS = [
    "rcpt", "on", "yes", "No", "off", "550", "0x1F", "0o17", "017", "1e3", "1_000", "1:30",
    "3.5", ".inf", "~", "null", "", "2026-01-01", "2026-01-01 10:00:00", "=", "<<",
    "a: b", "a:b", "a #b", "a#b", "x y  z", "*@x.test", "&a", "*a", "!tag x", "!!str 5",
    "|", ">-", "-1", "- x", "-", "?x", "? x", "%x", "@x", "`x", "é", "x\ty",
    "'q'", "'it''s'", "'open", "'a' b", '"dq"', '"a\\"b"', '"\\x41\\u00e9"', '"\\q"', '"open',
    '"a" # c', "'a'#c", "[a, b]", "[a, b,]", "[]", "[a, [b]]", "{to: x}", "{to: [a, 'b']}",
    "{to: 'a''b'}", '{"to": "x"}', "{to:x}", "{a: 1, a: 2}", "{to: }", "{}", "{to: x} y",
    "{to: x, from: [a,b]}", "[a, {b: c}]", "x # comment", "550 5.1.1 <x@y> [z]",
    "a\u2028b", "a\x85b", "a\ufeffb", "{b: c}#x", "'a'#x", "a\x7fb", "\u00e9t\u00e9",
]  # fmt: skip
KEYS = ["on", "match", "reply", "to", "X-Foo", "times", "a b", '"on"', "<<", "on"]


def _scalar(draw: st.DrawFn) -> str:
    """Mostly what scenarios hold, now and then a corner of YAML."""
    pool = SCALARS if draw(st.integers(0, 9)) < 3 else PLAIN_SCALARS
    return draw(st.sampled_from(pool))


def _block(draw: st.DrawFn, depth: int, indent: int) -> list[str]:
    """Lines of a random block node at ``indent``: mostly mappings and sequences, some wrong."""
    pad = " " * indent
    lines: list[str] = []
    if depth > 2 or draw(st.integers(0, 4)) == 0:
        return [pad + _scalar(draw)]
    if draw(st.booleans()):  # a sequence
        for _ in range(draw(st.integers(1, 3))):
            style = draw(st.integers(0, 3))
            if style == 0:
                lines.append(pad + "- " + _scalar(draw))
            elif style == 1:  # `- key: value` then the rest of the mapping under it
                inner = _mapping_lines(draw, depth + 1, indent + 2)
                lines.append(pad + "- " + inner[0].lstrip(" "))
                lines.extend(inner[1:])
            else:  # `-` alone, the node below
                lines.append(pad + "-")
                lines.extend(_block(draw, depth + 1, indent + draw(st.sampled_from([1, 2, 4]))))
    else:
        lines.extend(_mapping_lines(draw, depth, indent))
    return lines


def _mapping_lines(draw: st.DrawFn, depth: int, indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    pool = KEYS if draw(st.integers(0, 9)) < 2 else KEYS[:6]
    for key in draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=pool != KEYS)):
        if draw(st.integers(0, 2)) == 0 and depth < 3:
            lines.append(f"{pad}{key}:" + draw(st.sampled_from(["", " ", "  # c"])))
            compact = draw(st.integers(0, 3)) == 0
            lines.extend(_block(draw, depth + 1, indent if compact else indent + 2))
        else:
            lines.append(f"{pad}{key}: {_scalar(draw)}")
        if draw(st.integers(0, 6)) == 0:
            lines.append(draw(st.sampled_from(["", "# note", pad + "  # indented note", "   "])))
    return lines


@st.composite
def block_texts(draw: st.DrawFn) -> str:
    lines = _block(draw, 0, draw(st.sampled_from([0, 2])))
    if draw(st.integers(0, 9)) == 0:  # a stray line at a random indent
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, " " * draw(st.integers(0, 6)) + _scalar(draw))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    return ending.join(lines) + draw(st.sampled_from([ending, ""]))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_texts())
def test_the_reader_gives_what_the_yaml_loader_gives_or_steps_aside(text: str) -> None:
    _assert_agrees(text)


@pytest.mark.parametrize(
    "text",
    [
        "- on: rcpt\n  match: {to: '*@x.test'}\n  reply: 550 5.1.1 No such user\n",
        "  - on: rcpt  # trailing comment\n    times: 1\n\n  # between\n  - on: mail\n",
        "-\n  on: rcpt\n  reply: '550'\n- on: data\n",
        "- match:\n    to:\n    - a@x\n    - b@x\n  on: rcpt\n",
        "- {on: rcpt, reply: 550}\n- [a, 'b c', \"d\"]\n",
        '- on: rcpt\r\n  reply: "550 it\'s"\r\n',
        "- reply: yes\n  times: 0x10\n  name: 2026-01-01\n",
        '- reply: "\\x41 \\u00e9"\n',
    ],
)
def test_the_reader_reads_the_shapes_scenarios_use(text: str) -> None:
    assert _assert_agrees(text), f"expected the reader to take:\n{text}"


@pytest.mark.parametrize(
    "text",
    [
        "- on: &r rcpt\n- on: *r\n",  # anchors and aliases
        "- reply: |\n    550 text\n",  # block scalar
        "- reply: 550 a\n    continued\n",  # multi-line plain scalar
        "- on: rcpt\n  on: mail\n",  # a key twice
        "- on: rcpt\n\treply: 550\n",  # a tab
        "- on: rcpt\n   reply: 550\n",  # odd indentation
        "- on: 'open\n  quote'\n",  # a quoted scalar over two lines
        "- on: !!str rcpt\n",  # a tag
        "- on: rcpt\x0c\n",  # a character YAML refuses
        "- on: rc\u2028pt\n",  # a line break to YAML 1.1, not to Python's $
        "- header: {" + "x" * 1100 + ": v}\n",  # a key longer than YAML allows
        "".join(" " * n + "- a:\n" for n in range(0, 2000, 2)),  # nested past any scenario
    ],
)
def test_the_reader_leaves_the_rest_to_the_loader(text: str) -> None:
    assert yaml_subset.read_sequence(text, 1) is None


# --------------------------------------------------------------------------- quick vs thorough


@pytest.fixture
def comparable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Matchers as data, so that two loads of one text compare equal field by field."""
    for name in ("compile_text", "compile_cidr", "compile_size", "compile_count"):

        def describe(spec: Any, name: str = name) -> tuple[str, Any]:
            getattr(patterns, name)(spec)  # refuses what the real one refuses
            return (name, spec if isinstance(spec, str | int) else tuple(spec))

        monkeypatch.setattr(scenario_module, name, describe)


def _thorough(text: str, source: str) -> Any:
    original = scenario_module._load_quickly
    scenario_module._load_quickly = lambda *args: None  # type: ignore[assignment]
    try:
        return load_scenario_text(text, source)
    except ScenarioError as error:
        return error
    finally:
        scenario_module._load_quickly = original  # type: ignore[assignment]


def _assert_same_scenario(text: str, source: str = "s.yaml") -> bool:
    """The quick path gives the thorough path's Scenario, or None. True when it answered."""
    quick = scenario_module._load_quickly(text, source, None)
    if quick is None:
        return False
    thorough = _thorough(text, source)
    assert not isinstance(thorough, ScenarioError), f"quick path took a refused file:\n{text}"
    assert quick == thorough, text
    return True


SHIPPED = sorted(
    glob.glob(str(ROOT / "scenarios" / "*.yaml"))
    + glob.glob(str(ROOT / "tests" / "**" / "*.yaml"), recursive=True)
)


@pytest.mark.usefixtures("comparable")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: Path(p).name)
def test_each_shipped_scenario_loads_the_same_either_way(path: str) -> None:
    _assert_same_scenario(Path(path).read_text(), path)


@pytest.mark.usefixtures("comparable")
def test_most_shipped_scenarios_take_the_quick_path() -> None:
    quick = [p for p in SHIPPED if scenario_module._load_quickly(Path(p).read_text(), p, None)]
    # Not a promise about any one file (a block scalar sends a file the thorough way), but
    # if this falls, the quick path stopped covering what scenarios are written like.
    assert len(quick) >= len(SHIPPED) // 2, quick


RULE_VALUES: dict[str, list[str]] = {
    # The first three of each are right in most rules; the others are corners and mistakes.
    "on": ["rcpt", "end_of_data", "data", "mail", "connect", "RCPT", "nope", "yes", "[rcpt]"],
    "reply": [
        "550", "550 5.1.1 No such user", "{code: 550, text: Full}", "'550 5.1.1'", "250 ok",
        "612", "abc", "452", "{code: 550, status: 5.2.2}", "{code: '550'}", "{text: x}",
        "{code: 550, text: [a, b]}", "421 {hostname} closing", "true", "550-x",
    ],
    "times": ["1", "3", "10", "0", "'1'", "-1", "2.5", "yes"],
    "after": ["0", "3", "1", "-1", "x"],
    "per": ["recipient", "triplet", "connection", "client", "sender", "Server", "x"],
    "within": ["1m", "30s", "2h", "0s", "5", "x"],
    "volume": ["10MiB", "1", "5kB", "0", "x"],
    "delay": ["2s", "500ms", "0", "5", "x"],
    "action": ["close", "drop", "reset", "hang", "nope"],
    "probability": ["0.5", "1", "0.25", "0", "2", "x"],
    "name": ["first", "'quoted name'", "second", "5", "[a]"],
    "match": [
        "{to: '*@x.test'}", "{to: ['u1@*', '*@y.test']}", "{to: '/^u[0-9]+@z[.]test$/'}",
        "{from: 'bounce-*@*'}", "{subject: '*invoice*'}", "{to: '/(?=a)/'}",
        "{client: 192.0.2.0/24}", "{client: nope}", "{tls: true}", "{tls: yes}", "{size: '>1MiB'}",
        "{size: 'big'}", "{concurrent: '>3'}", "{header: {X-Foo: bar}}", "{body: '*GTUBE*'}",
        "{to: []}", "{to: 5}", "{to: [true]}", "{helo: x, to: y}", "{nope: x}", "{}",
    ],
    "nope": ["1"],
}  # fmt: skip


@st.composite
def scenario_texts(draw: st.DrawFn) -> str:
    lines = ["name: generated", "rules:"]
    for _ in range(draw(st.integers(1, 6))):
        keys = draw(st.lists(st.sampled_from(sorted(RULE_VALUES)), min_size=1, max_size=4))
        if draw(st.integers(0, 9)) < 8:  # mostly rules that are right as a whole too
            others = [k for k in dict.fromkeys(keys) if k in ("match", "times", "name")]
            keys = ["on", "reply", *others]
        first = True
        for key in keys:
            choices = RULE_VALUES[key]
            value = draw(st.sampled_from(choices if draw(st.integers(0, 9)) < 2 else choices[:3]))
            lines.append(("  - " if first else "    ") + f"{key}: {value}")
            first = False
    if draw(st.booleans()):
        lines.append("server:\n  hostname: mx.test\n  auth: {users: {bob: secret}}")
    return "\n".join(lines) + "\n"


@pytest.mark.usefixtures("comparable")
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_texts())
def test_the_quick_path_builds_the_thorough_paths_rules_or_steps_aside(text: str) -> None:
    _assert_same_scenario(text)


@pytest.mark.usefixtures("comparable")
def test_the_generated_benchmark_scenario_takes_the_quick_path() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from scenario_load import scenario_text
    finally:
        sys.path.pop(0)
    assert _assert_same_scenario(scenario_text(500), "big.yaml")


def test_secrets_after_the_rules_are_still_hidden() -> None:
    text = (
        "rules:\n  - on: rcpt  # a long comment that moves what follows\n    reply: 550\n"
        "server:\n  auth:\n    users: {bob: 'hunter2'}\n"
    )
    loaded = load_scenario_text(text, "s.yaml")
    assert loaded.rules and scenario_module._load_quickly(text, "s.yaml", None) is not None
    assert "hunter2" not in loaded.public_text()
    assert "bob: '*****'" in loaded.public_text()


def test_a_mistake_in_a_big_file_is_worded_by_the_thorough_path() -> None:
    rules = "".join(
        f"  - on: rcpt\n    match: {{to: 'u{n}@x.test'}}\n    reply: 550\n" for n in range(50)
    )
    text = "name: big\nrules:\n" + rules + "  - on: rcpt\n    reply: 550\n    times: 0\n"
    with pytest.raises(ScenarioError) as raised:
        load_scenario_text(text, "big.yaml")
    assert str(raised.value) == "big.yaml:155: times: must be 1 or more"
