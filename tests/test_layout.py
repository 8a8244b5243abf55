"""The package's shape, checked: imports flow one way, and only the wire touches the network.

Every import between fakesmtp's modules counts, including the lazy ones inside functions; those
made only for type checkers (``if TYPE_CHECKING:``) count for layering, not for loops, since
they never run.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import fakesmtp

PACKAGE = Path(fakesmtp.__file__).parent
# What sits below what: a module may import only from its own layer or a lower one.
LAYERS = [
    {"stages", "patterns", "reply", "tls", "suggest", "eventloop", "version", "catalog_defaults"},
    {"yaml_errors", "yaml_subset", "access", "cli_env"},
    {"catalog", "scenario", "transcript"},
    {"store", "metrics", "mailview", "search", "mailpit_send"},
    # counters and stagefilter name engine.Facts for type checkers only
    {"engine", "counters", "redis_counters", "stagefilter"},
    {"session.wire", "session.auth", "session.profile", "session.runtime"},
    {"session.smtp", "session.lmtp", "session"},
    {"bounce"},
    # FakeSMTP starts the API on its own loop, and the API is a view of a FakeSMTP: peers.
    # record relays (no engine of its own); its routes register with api like the others'.
    {"server", "api", "endpoint", "chaos", "rules_api", "mailpit", "mailhog", "record"},
    {"pytest_plugin", "cli", "remote", "startup", "workers", "__main__", ""},
]


@cache
def _tree(path: Path) -> ast.Module:
    """Each module parsed once for all the checks below."""
    return ast.parse(path.read_text())


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            lines |= {child.lineno for child in ast.walk(node) if hasattr(child, "lineno")}
    return lines


def _imports(*, type_only: bool = True) -> dict[str, set[str]]:
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = _tree(path)
        skip = set() if type_only else _type_only(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    target = ".".join([*base, *([node.module] if node.module else [])])
                elif (node.module or "").startswith("fakesmtp"):
                    target = node.module.removeprefix("fakesmtp").lstrip(".")  # type: ignore[union-attr]
                else:
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}" if target else alias.name
                    graph[name].add(full if full in modules else target)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("fakesmtp."):
                        graph[name].add(alias.name.removeprefix("fakesmtp."))
        graph[name].discard(name)
    return graph


def _layer(module: str) -> int:
    """A module's layer; a package's modules share the package's; a new module sits on top."""
    for name in (module, module.partition(".")[0]):
        for index, layer in enumerate(LAYERS):
            if name in layer:
                return index
    return len(LAYERS) - 1


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in _imports().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_import_graph_has_no_loop() -> None:
    graph = _imports(type_only=False)
    loops = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                loops.append(" -> ".join([*path[path.index(target) :], target]))
            elif len(path) < 30:
                visit(target, [*path, target])

    for module in graph:
        visit(module, [module])
    assert sorted(set(loops)) == []


def test_only_the_wire_names_the_network_internals() -> None:
    # The issue's grep, minus our own settings' names (idle_timeout, command_timeout...).
    private = re.compile(r"aiosmtpd|\._reader|\._writer|(?<![a-z])_timeout|call_later|call_at")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "wire.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert found == []


def test_no_module_reaches_into_another_modules_underscore_names() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = _tree(path)
        # Names this module sets itself (self._x = ..., def _x) are its own to use.
        own = {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
        }
        own |= {
            n.name
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom):
                found += [
                    f"{path.relative_to(PACKAGE)}:{node.lineno}: import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert found == []
