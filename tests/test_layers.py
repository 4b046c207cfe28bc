"""The package's layers, read from its own imports: each module imports only its own layer or those
below, no two modules import each other (directly or round a loop), and a qacompress import inside a
function says why it is deferred."""

from __future__ import annotations

import ast
from pathlib import Path

import qacompress

PACKAGE = Path(qacompress.__file__).parent
#: Bottom to top; the package root (`__init__`, `__main__`) sits above all of them.
LAYERS = ("core", "data", "model", "ir", "compression", "inference", "measure", "training", "jobs", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def _imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported qacompress module, line, inside a function, the line's text) for each import."""
    source = path.read_text()
    lines = source.splitlines()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("qacompress"):
                for alias in child.names:  # `from qacompress.core import atomic` imports a module
                    name = f"{child.module}.{alias.name}"
                    target = name if (PACKAGE.parent / (name.replace(".", "/") + ".py")).is_file() else child.module
                    found.append((target, child.lineno, in_function, lines[child.lineno - 1]))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("qacompress"):
                        found.append((alias.name, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def _graph() -> dict[str, list[tuple[str, int, bool, str]]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer():
    stray = [m for m in _graph() if m.count(".") == 1 and m not in ("qacompress.__main__",) and m.split(".")[1] not in LAYERS]
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


def test_imports_point_only_downward():
    upward = [
        f"{module}:{line} imports {target} ({LAYERS[_layer(target)]} is above {LAYERS[_layer(module)]})"
        for module, imports in _graph().items()
        if _layer(module) < len(LAYERS)
        for target, line, _, _ in imports
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {m: sorted({t for t, *_ in imports if t != m and not t.endswith(("__init__",))}) for m, imports in _graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if target == "qacompress":  # the API facade: imports its verbs lazily, nobody below imports it
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target):], target]))
            elif not state.get(target):
                walk(target, [*stack, target])
        state[node] = 2

    for module in graph:
        if not state.get(module):
            walk(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_deferred_imports_say_why():
    unexplained = [
        f"{module}:{line}: {text.strip()}"
        for module, imports in _graph().items()
        for target, line, in_function, text in imports
        if in_function and "# deferred:" not in text
    ]
    assert not unexplained, (
        "qacompress imports inside functions without a '# deferred: <why>' comment "
        "(import at the top unless it defers a heavy import on purpose):\n" + "\n".join(unexplained)
    )


def test_code_map_names_every_module():
    """docs/code-map.md is where a newcomer finds a module: each one is in its layer's rows."""
    text = (PACKAGE.parent.parent / "docs" / "code-map.md").read_text()
    rows = {}
    layer = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and line.startswith("|") and not all(c and set(c) <= {"-"} for c in cells):
            layer = cells[0].strip("`") or layer
            rows.setdefault(layer, "")
            rows[layer] += cells[1]
    missing = [
        str(p.relative_to(PACKAGE))
        for p in sorted(PACKAGE.glob("*/*.py"))
        if p.parent.name in LAYERS and f"`{p.name}`" not in rows.get(p.parent.name, "")
        and not (p.name == "__init__.py" and p.parent.name != "cli")
    ]
    assert not missing, f"modules missing from docs/code-map.md (under their layer): {missing}"
