"""The import rules of the package, checked on its source (AST, nothing imported).

Layers, top to bottom: cli → {experiment, bench} → synth → {export, train, evaluate} →
{engines, models, data} → core. A module may import its own package and the layers below it;
never a layer above, never a sibling package of its own layer. fertk imports sit at module top
level (function-level ones only in CLI command bodies, which import their library lazily to keep
`fertk --help` fast); heavy third-party packages may be imported in functions anywhere. No
module-level import cycle, and no private (`_name`) import across modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit" / "fertk"

LAYERS: dict[str, float] = {
    "core": 1,
    "engines": 2, "models": 2, "data": 2,
    "export": 3, "train": 3, "evaluate": 3,
    "synth": 4,
    "experiment": 5, "bench": 5,
    "cli": 6,
}
TOP_LEVEL: dict[str, float] = {"fertk": 1.5, "fertk.__main__": 7}  # the root re-exports core (anyone may read __version__); __main__ runs the CLI


@dataclass(frozen=True)
class Import:
    """One fertk-internal import: importer module, target module, names, line, at module level or not."""

    source: str
    target: str
    names: tuple[str, ...]
    line: int
    top_level: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve_relative(source: str, path: Path, node: ast.ImportFrom) -> str:
    base = source.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    # Imports under `if TYPE_CHECKING:` at top level count as top level (never run, never cycle).
    for node in tree.body:
        if isinstance(node, ast.If):
            top.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve_relative(source, path, node) if node.level else (node.module or "")
            if not target.startswith("fertk"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                # `from fertk.x import y` where y is a module imports that module.
                yield Import(source, full if full in known else target, (alias.name,), node.lineno, id(node) in top)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fertk"):
                    yield Import(source, alias.name, (), node.lineno, id(node) in top)


def all_imports() -> list[Import]:
    mods = modules()
    known = set(mods)
    return [imp for name, path in mods.items() for imp in imports_of(name, path, known)]


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and module not in TOP_LEVEL else module


def rank_of(module: str) -> float:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    package = package_of(module)
    assert package in LAYERS, f"{module}: package {package!r} has no layer; add it to LAYERS in {__file__}"
    return LAYERS[package]


def layer_violations(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        a, b = package_of(imp.source), package_of(imp.target)
        if a == b:
            continue
        if rank_of(imp.target) >= rank_of(imp.source):
            out.append(f"{imp.source}:{imp.line} imports {imp.target} ({a} → {b}: "
                       f"{'upward' if rank_of(imp.target) > rank_of(imp.source) else 'sideways'})")
    return out


def function_level_violations(imports: list[Import]) -> list[str]:
    return [f"{imp.source}:{imp.line} imports {imp.target} inside a function"
            for imp in imports if not imp.top_level and package_of(imp.source) != "cli"]


def private_violations(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private and imp.target != imp.source:
            out.append(f"{imp.source}:{imp.line} imports private {', '.join(private)} from {imp.target}")
        # A private module (a `_name` path segment) may be imported only from inside its package.
        segments = imp.target.split(".")
        for i, seg in enumerate(segments):
            if seg.startswith("_") and not seg.startswith("__"):
                owner = ".".join(segments[:i])
                if not (imp.source == owner or imp.source.startswith(owner + ".")):
                    out.append(f"{imp.source}:{imp.line} imports private module {imp.target}")
                break
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """Module-level import cycles (strongly connected components of more than one module)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.top_level and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# -- the checker itself can fail ------------------------------------------------------------------
def test_checker_sees_an_upward_import_a_cycle_and_a_private_name():
    fake = [Import("fertk.engines.x", "fertk.export.y", ("f",), 1, True),
            Import("fertk.export.y", "fertk.engines.x", ("_g",), 2, True),
            Import("fertk.models.a", "fertk.data.b", ("h",), 3, True),
            Import("fertk.synth.run", "fertk.models.c", ("k",), 4, False)]
    assert len(layer_violations(fake)) == 2                      # engines → export, models → data
    assert cycles(fake) == [["fertk.engines.x", "fertk.export.y"]]
    assert private_violations(fake) == ["fertk.export.y:2 imports private _g from fertk.engines.x"]
    assert function_level_violations(fake) == ["fertk.synth.run:4 imports fertk.models.c inside a function"]


def test_every_package_has_a_layer():
    for name in modules():
        rank_of(name)


@pytest.mark.parametrize("rule", ["layers", "cycles", "private", "function-level"])
def test_imports_point_one_way(rule):
    imports = all_imports()
    found = {"layers": layer_violations, "private": private_violations,
             "function-level": function_level_violations}.get(rule)
    problems = found(imports) if found else [" ↔ ".join(c) for c in cycles(imports)]
    assert not problems, f"{len(problems)} import(s) break the {rule} rule:\n" + "\n".join(problems)
