"""Reads every import of a package and reports what breaks its layering: an upward import, a cycle, a module
placed in no layer, a private name imported from another module.

The layer table is the README's architecture table; ``tests/test_layers.py`` keeps the two the same.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    names: tuple[str, ...]
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def imports(package: Path) -> list[Import]:
    """Every import of the package's own modules, wherever it sits (top level or inside a function; also
    ``import_module("literal")``), except those under ``if TYPE_CHECKING:``, which never run."""
    known = modules(package)
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = {id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                found += [Import(name, a.name, (), node.lineno) for a in node.names if a.name in known]
            elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args
                  and isinstance(node.args[0], ast.Constant) and node.args[0].value in known):
                found.append(Import(name, node.args[0].value, (), node.lineno))  # importlib.import_module("...")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in known:  # ``from mechtest.methods import evaluation``
                        found.append(Import(name, sub, (), node.lineno))
                    else:
                        found.append(Import(name, node.module, (alias.name,), node.lineno))
    return found


def _is_type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int | None:
    for i, (_, patterns) in enumerate(layers):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    return None


def violations(package: Path, layers: list[tuple[str, list[str]]]) -> list[str]:
    """Human-readable problems; empty when the package keeps its layering."""
    known = modules(package)
    found = imports(package)
    problems = [f"{m} is in no layer" for m in known if layer_of(m, layers) is None]
    for imp in found:
        a, b = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
        if a is not None and b is not None and b < a:
            problems.append(f"{imp.importer}:{imp.line} imports {imp.imported} from a higher layer "
                            f"({layers[a][0]} -> {layers[b][0]})")
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private and imp.importer != imp.imported:
            problems.append(f"{imp.importer}:{imp.line} imports private {', '.join(private)} from {imp.imported}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles({(i.importer, i.imported) for i in found})]
    return problems


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out
