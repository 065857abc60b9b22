"""The layout's rules, checked on the source: the store seam holds, imports form no cycle.

* Nothing outside ``syncward/store/`` imports a database driver (``sqlite3``,
  ``aiosqlite``, ``asyncpg``) or names a concrete backend (``syncward.store.sqlite``,
  ``syncward.store.memory``, ``syncward.store.postgres``): the runtime, the actors, the
  command line and the adapters see `Store` and `StoreReader` only.
* Adapters never import the runtime (sources get a `SourcePort`).
* The modules of the package import each other without a cycle at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "syncward"
DRIVERS = {"sqlite3", "aiosqlite", "asyncpg"}
BACKENDS = ("syncward.store.sqlite", "syncward.store.memory", "syncward.store.postgres")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(node: ast.AST) -> set[str]:
    """Every module name an import statement names (``from a import b``: a and a.b)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names.add(node.module)
        names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def all_imports(path: Path) -> set[str]:
    """Imports anywhere in the file: module level, functions, TYPE_CHECKING blocks."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names |= imported(node)
    return names


def import_time_imports(path: Path) -> set[str]:
    """Imports that run when the module is imported (not in functions or TYPE_CHECKING)."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            else:
                names.update(imported(node))

    visit(ast.parse(path.read_text()).body)
    return names


def test_only_the_store_package_touches_drivers_and_backends() -> None:
    offenders = []
    for name, path in modules().items():
        if name == "syncward.store" or name.startswith("syncward.store."):
            continue
        for module in all_imports(path):
            top = module.split(".")[0]
            if top in DRIVERS or module.startswith(BACKENDS):
                offenders.append(f"{name} imports {module}")
    assert offenders == []


def test_the_rules_know_no_backend() -> None:
    """``store/apply.py`` and ``store/port.py`` are above every backend."""
    for name in ("syncward.store.apply", "syncward.store.port", "syncward.store.base"):
        imports = all_imports(modules()[name])
        assert not {m for m in imports if m.split(".")[0] in DRIVERS}
        assert not {m for m in imports if m.startswith(BACKENDS)}


def test_adapters_never_import_the_runtime() -> None:
    offenders = [f"{name} imports {module}"
                 for name, path in modules().items() if name.startswith("syncward.adapters")
                 for module in all_imports(path)
                 if module == "syncward.runtime" or module.startswith("syncward.runtime.")]
    assert offenders == []


def test_no_import_cycle() -> None:
    mods = modules()
    graph = {name: {m for m in import_time_imports(path) if m in mods and m != name}
             for name, path in mods.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            # A package importing its own submodules (re-exports) is not a cycle.
            if node == nxt.rsplit(".", 1)[0] and nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []
