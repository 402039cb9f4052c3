"""The package's modules import each other without cycles (type-checking imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import tempme_composer

ROOT = Path(tempme_composer.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its code (a package import names its ``__init__``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def test_no_import_cycles():
    files = {_module_name(p): p for p in ROOT.rglob('*.py')}
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    graph = {m: {d for d in deps if not m.startswith(d + '.')} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError('import cycle: ' + ' -> '.join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
