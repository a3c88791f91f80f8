"""The package's layers point one way: teacher/ does not reach up into pseudolabel/, data/ has no import cycle,
and no module of these layers imports semisam inside a function (the usual way of hiding a cycle)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "semisam"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_top_level)`` of every ``semisam`` import of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("semisam"):
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names if alias.name.startswith("semisam")]
    return found


def test_teacher_imports_nothing_above_it_and_nothing_inside_functions():
    for path in sorted((PACKAGE / "teacher").glob("*.py")):
        for module, top in _imports(path):
            assert top, f"{path.name} imports {module} inside a function"
            assert not module.startswith(("semisam.pseudolabel", "semisam.methods", "semisam.engine")), path.name


def test_data_imports_point_one_way():
    graph = {}
    for path in sorted((PACKAGE / "data").glob("*.py")):
        imports = _imports(path)
        assert all(top for _, top in imports), f"{path.name} imports semisam inside a function"
        graph[path.stem] = {m.rsplit(".", 1)[1] for m, _ in imports if m.startswith("semisam.data.")}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import cycle in semisam.data: {' -> '.join((*trail, name))}"
        for child in graph.get(name, ()):
            visit(child, (*trail, name))

    for name in graph:
        visit(name, ())
