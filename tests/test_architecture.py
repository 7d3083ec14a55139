"""The architecture stays what docs/ARCHITECTURE.md says: no import cycles in the
core, plugins on the public surface only, and that surface documented.

Read from the source (``ast``), so a violation fails here with the module and the
line, before it becomes an import-order bug at start-up."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parent.parent
CORE = ROOT / "clasp_gateway"


def module_name(path: Path, root: Path = ROOT) -> str:
    """``clasp_gateway/wire/upstream.py`` -> ``clasp_gateway.wire.upstream``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: top level, and inside top-level
    ``if``/``try`` blocks, but not in functions, classes or ``if TYPE_CHECKING:``."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                todo[:0] = node.body
            todo[:0] = node.orelse
        elif isinstance(node, ast.Try):
            todo[:0] = [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = CORE) -> dict[str, dict[str, int]]:
    """``{module: {imported core module: line}}`` for every module of ``root``."""
    files = {module_name(p, root.parent): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), str(path))
        for node in module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = resolve(name, path.name == "__init__.py", node)
                # ``from pkg import sub`` depends on the submodule; ``from pkg import name``
                # on the package's ``__init__``.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                if target in files and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_core_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "clasp_gateway.wire.upstream" in graph and graph["clasp_gateway.wire.direct"]  # the graph is read
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("import cycle in clasp_gateway:\n  " + "\n  ".join(steps))


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    """The check itself: a two-module cycle through a relative import is found, one
    through a TYPE_CHECKING block or a function body is not."""
    pkg = tmp_path / "clasp_gateway"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import B\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n"
                              "def f():\n    from .a import A\n")
    assert find_cycle(import_graph(pkg)) is None
    (pkg / "b.py").write_text("from . import a\n")
    assert find_cycle(import_graph(pkg)) == ["clasp_gateway.a", "clasp_gateway.b", "clasp_gateway.a"]


def test_module_docstrings_say_what_each_module_is_for() -> None:
    """Every core module opens with a docstring: a newcomer finds a feature by its
    folder, and learns from the first lines of each file what it is for."""
    missing = [module_name(p) for p in sorted(CORE.rglob("*.py"))
               if p.name != "__init__.py" and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"


# --- the public surface ---------------------------------------------------------------------------

PLUGIN_MODULES = sorted(p for p in ROOT.glob("plugins/*/clasp_*/**/*.py"))


def test_plugins_import_only_the_public_api() -> None:
    """A plugin imports ``clasp_gateway`` itself, never one of its submodules (the core's
    internals) nor a ``_private`` name: the public API is what ``__all__`` lists."""
    assert len(PLUGIN_MODULES) >= 20, "the plugin packages were not found"
    import clasp_gateway

    public = set(clasp_gateway.__all__)
    problems = []
    for path in PLUGIN_MODULES:
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("clasp_gateway."):
                        problems.append(f"{where}:{node.lineno}: import {alias.name}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clasp_gateway":
                if node.module != "clasp_gateway":
                    problems.append(f"{where}:{node.lineno}: from {node.module} import ...")
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") or alias.name not in public:
                        problems.append(f"{where}:{node.lineno}: {alias.name} is not in clasp_gateway.__all__")
    assert not problems, "plugins reach past the public API:\n  " + "\n  ".join(problems)


def _definition(module: str, name: str, seen: int = 0) -> tuple[str, ast.stmt, ast.stmt | None]:
    """Where ``module.name`` is defined (following re-exports): the module, its statement
    and the statement after it (an attribute docstring, if any)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    body = ast.parse(path.read_text()).body
    for i, node in enumerate(body):
        following = body[i + 1] if i + 1 < len(body) else None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return module, node, following
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node, following
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return module, node, following
    for node in body:
        if isinstance(node, ast.ImportFrom) and seen < 5:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = resolve(module, path.name == "__init__.py", node)
                    return _definition(source, alias.name, seen + 1)
    raise AssertionError(f"{module}.{name}: definition not found")


def test_every_public_name_is_documented() -> None:
    """Each name of ``clasp_gateway.__all__`` is a class or function with a docstring,
    or a value (constant, type alias) with an attribute docstring: the public API
    explains itself where a plugin author looks it up."""
    import clasp_gateway

    undocumented = []
    for name in clasp_gateway.__all__:
        if name.startswith("__"):
            continue
        assert hasattr(clasp_gateway, name), f"{name} is in __all__ but not importable"
        module, node, following = _definition("clasp_gateway", name)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            documented = bool(ast.get_docstring(node))
        else:
            documented = (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                          and isinstance(following.value.value, str))
        if not documented:
            undocumented.append(f"{name} ({module})")
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_the_package_is_typed() -> None:
    """``py.typed`` ships with the package (PEP 561), so a plugin type-checks against it."""
    assert (CORE / "py.typed").exists()
    assert 'clasp_gateway = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
