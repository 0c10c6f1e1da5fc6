"""The package's import graph: no circles, and no module imports one above it (DESIGN.md).

Every ``import`` inside ``physgrad`` counts, also the ones inside functions (a lazy import is still a
dependency); only imports under ``if TYPE_CHECKING:`` are left out. ``problems/`` and
``experiments/`` count as one node each (their modules may import each other).
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "physgrad"

# The layers, bottom (1) to top. A module may import only from strictly lower layers.
LAYERS = {
    "errors": 1, "linesearch": 1, "machine": 1, "external": 1,
    "linalg": 2, "problem": 2,
    "views": 3, "nn": 3, "matfree": 3, "lm": 3,
    "updates": 4, "inverse": 4,
    "batched": 5, "problems": 5, "bounds": 5, "theory": 5,
    "optimize": 6, "experiments": 6,
    "__init__": 7, "plotting": 7, "runs": 7,
    "bench_batch": 8, "widgets": 8,
    "bench": 9, "interactive": 9,
}


def _node(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _is_type_checking(test) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: pathlib.Path):
    """The physgrad nodes ``path`` imports (absolute ``physgrad.x`` or relative ``.x``/``..x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(PKG)
    pkg_parts = list(rel.parts[:-1])          # the package the file lives in, below physgrad
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "physgrad":
                    continue
                target = parts[1:]
            else:
                base = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:   # `from . import x, y` at the top level: modules, or names of __init__
                for a in node.names:
                    name = a.name.split(".")[0]
                    is_module = (PKG / f"{name}.py").exists() or (PKG / name).is_dir()
                    found.add(name if is_module else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "physgrad" and len(parts) > 1:
                    found.add(parts[1])
    return found


def _graph():
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        src = _node(path)
        graph.setdefault(src, set()).update(t for t in _imports(path) if t != src)
    return graph


def test_every_module_has_a_layer():
    missing = sorted(set(_graph()) - set(LAYERS))
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


def test_no_module_imports_one_above_it():
    graph = _graph()
    up = [(a, b) for a, bs in graph.items() for b in bs
          if a in LAYERS and b in LAYERS and LAYERS[b] >= LAYERS[a]]
    assert not up, "imports that do not go down a layer: " + ", ".join(
        f"{a} (layer {LAYERS[a]}) -> {b} (layer {LAYERS[b]})" for a, b in sorted(up))


def test_no_import_circle():
    graph = _graph()
    state = {}

    def visit(n, path):
        state[n] = "open"
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_the_checker_sees_lazy_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The scanner itself: a function-level relative import and an absolute one are both found,
    and a TYPE_CHECKING import is not."""
    pkg = tmp_path / "physgrad"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n"
        "def f():\n    from .b import g\n    import physgrad.d\n")
    (pkg / "sub" / "m.py").write_text("from ..e import x\nfrom . import n\n")
    (pkg / "top.py").write_text("from . import a, __version__\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    assert _imports(pkg / "a.py") == {"b", "d"}
    assert _imports(pkg / "sub" / "m.py") == {"e", "sub"}
    assert _imports(pkg / "top.py") == {"a", "__init__"}
