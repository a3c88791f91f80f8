"""The package's layers point one way: a module imports only from its own layer or below, never in a cycle, and
never inside a function to dodge one. Read from the source (every ``import`` statement, wherever it stands)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semisam"

# Bottom first. A module may import from its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("utils", "version", "distributed", "config"),
    ("data",),
    ("student",),
    ("teacher",),
    ("evaluation",),
    ("run_logger",),  # TensorBoard + metrics.csv records: the trainer's and the online refresher's
    ("methods",),
    ("pseudolabel",),
    ("engine",),
    ("workflow",),
    ("benchmark",),
    ("cli",),
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}
# Imports that may stand inside a function, with the reason: the command-line helpers import the error types only
# when an error is reported, so that ``--help`` stays fast (nothing cyclic).
LAZY_ALLOWED = {"semisam.cli"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool]]:
    """``(imported semisam module, inside a function)`` for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{a.name}" for a in child.names]
            else:
                visit(child, inner)
                continue
            for name in names:
                target = _resolve(name) if name.startswith("semisam") else None
                if target and target != module:
                    found.append((target, in_function))

    visit(tree, False)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # semisam/__init__.py
        return len(LAYERS)
    if parts[1] not in LEVEL:
        pytest.fail(f"{module}: semisam.{parts[1]} has no place in tests/test_layers.py LAYERS; give it one")
    return LEVEL[parts[1]]


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_import_points_down_or_sideways():
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in GRAPH.items()
        for t, _ in targets
        if _layer(t) > _layer(m)
    ]
    assert upward == []


def test_the_issue_s_named_rules():
    """engine does not import pseudolabel; evaluation does not import engine."""
    for m, targets in GRAPH.items():
        for t, _ in targets:
            assert not (m.startswith("semisam.engine") and t.startswith("semisam.pseudolabel")), (m, t)
            assert not (m.startswith("semisam.evaluation") and t.startswith("semisam.engine")), (m, t)


def test_no_import_cycle_between_modules():
    """Tarjan's strongly connected components over the module graph (function-level imports included)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            strong(v)
    assert cycles == []


def test_no_semisam_import_inside_a_function():
    lazy = sorted({f"{m} -> {t}" for m, targets in GRAPH.items() for t, inner in targets if inner})
    assert [x for x in lazy if x.split(" -> ")[0] not in LAZY_ALLOWED] == []


def test_the_checker_sees_upward_and_lazy_imports(tmp_path, monkeypatch):
    """The rules above can fail: a module of a low layer importing a high one, inside a function, is caught."""
    fake = tmp_path / "semisam" / "data"
    fake.mkdir(parents=True)
    source = "def f():\n    from semisam.engine.trainer import Trainer\n    return Trainer\n"
    (fake / "bad.py").write_text(source)
    monkeypatch.setitem(MODULES, "semisam.data.bad", fake / "bad.py")
    found = _imports("semisam.data.bad")
    assert found == [("semisam.engine.trainer", True)]
    assert _layer("semisam.engine.trainer") > _layer("semisam.data.bad")
