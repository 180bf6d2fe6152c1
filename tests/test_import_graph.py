"""modprompt's import graph has no cycle: no module imports, directly or through others, a module that imports it.

The graph is read from the source with :mod:`ast` (nothing is imported). Its nodes are the modules under
``modprompt/``; ``import a.b.c`` and ``from a.b import c`` are edges to every module among ``a``, ``a.b``,
``a.b.c`` (Python runs a package's ``__init__`` before its modules), relative imports included.

How imports count:

* module-level imports (anywhere in a module's body that runs on import, class bodies and ``try`` blocks
  included) make the *eager* graph, which must have no cycle at all;
* imports inside functions are deferred, not absent: a function-level import of a module that imports
  this one is still a back-reference. They join the eager edges in the *full* graph, which must have no
  cycle either, except for the lazy edges of :data:`LAZY_PLUGIN_EDGES`: a registry loading the modules
  that register into it on first use (each with the reason it is lazy);
* imports under ``if TYPE_CHECKING:`` never run and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "modprompt"

#: (importer, imported) lazy edges allowed to close a cycle, and why
LAZY_PLUGIN_EDGES = {
    ("modprompt.data.task", "modprompt.data.builtin"): "the built-in tasks register only when a task is "
    "first looked up, so importing modprompt reads no files and registers nothing until asked",
    ("modprompt.adapt.registry", "modprompt.adapt.methods"): "the built-in adaptation methods register on the "
    "first lookup (as the built-in tasks do), so registering a method of one's own imports no torch",
    ("modprompt.adapt.registry", "modprompt.baselines.adapt_methods"): "the baselines' methods register on the "
    "first lookup, with the built-in ones",
}

Graph = dict[str, set[str]]


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is named by its ``__init__``)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> tuple[list[str], list[str]]:
    """The dotted names a module imports: (module-level, function-level)."""
    eager: list[str] = []
    lazy: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        target = lazy if in_function else eager
        if isinstance(node, ast.Import):
            target.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            target.append(base)
            target.extend(f"{base}.{alias.name}" for alias in node.names)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return eager, lazy


def import_graphs() -> tuple[Graph, Graph]:
    """(eager, lazy) edges between modprompt's modules: importer -> imported modules."""
    names = module_names()
    eager: Graph = {name: set() for name in names}
    lazy: Graph = {name: set() for name in names}

    def within(dotted: str) -> set[str]:
        parts = dotted.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & names.keys()

    for name, path in names.items():
        found_eager, found_lazy = _imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py")
        for dotted in found_eager:
            eager[name] |= within(dotted) - {name}
        for dotted in found_lazy:
            lazy[name] |= within(dotted) - {name}
    return eager, lazy


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_known_imports():
    eager, lazy = import_graphs()
    assert "modprompt.data.mrc" in eager["modprompt.data.task"]
    assert "modprompt.data" in eager["modprompt.data.task"]  # the package runs first
    assert "modprompt.data.builtin" in lazy["modprompt.data.task"]
    assert set(LAZY_PLUGIN_EDGES) <= {(a, b) for a, targets in lazy.items() for b in targets}


def test_no_module_level_import_cycle():
    eager, _ = import_graphs()
    assert find_cycle(eager) is None, " -> ".join(find_cycle(eager))


def test_no_import_cycle_through_function_level_imports():
    eager, lazy = import_graphs()
    full = {name: eager[name] | {b for b in lazy[name] if (name, b) not in LAZY_PLUGIN_EDGES} for name in eager}
    cycle = find_cycle(full)
    assert cycle is None, " -> ".join(cycle)


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
