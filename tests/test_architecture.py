"""The package's layers (docs/architecture.md), read from the source: commands on top, no
library module importing a command, each layer importing only the layers below it, and no
import circle. A change that breaks one names the module and the import."""

from __future__ import annotations

import ast
from pathlib import Path

import hw1

PACKAGE = Path(hw1.__file__).resolve().parent
# Lowest first: a module may import its own layer and those before it.
LAYERS = [
    "utils",
    "transforms",
    "data",
    "models",
    "reporting",
    "inference",
    "training",
    "benchmarks",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in PACKAGE.rglob("*.py")
        if "conf" not in p.relative_to(PACKAGE).parts
    }


def hw1_imports(path: Path, known: set[str]) -> set[str]:
    """The hw1 modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from hw1.data import demo`` imports the module hw1.data.demo
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n.startswith("hw1")}
    return found


def layer(module: str) -> str:
    """A layer's name: ``command`` for the modules in hw1 itself, ``root`` for hw1 (its
    resolvers and constants, with the utils)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1] if parts[1] in LAYERS else "command"


def rank(module: str) -> int:
    kind = layer(module)
    return {"root": 0, "command": len(LAYERS)}.get(
        kind, LAYERS.index(kind) if kind in LAYERS else 99
    )


# The package's public API, which hw1 itself re-exports lazily (``hw1.load_classifier``,
# imported on first use by a module-level __getattr__): the one import from the root up.
PUBLIC_API = {"hw1": {"hw1.inference.api"}}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {m: hw1_imports(p, known) - {m} - PUBLIC_API.get(m, set()) for m, p in found.items()}


def test_every_subpackage_is_a_known_layer():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} - {"conf"}
    assert packages == set(LAYERS), (
        "a new sub-package needs its place in LAYERS and docs/architecture.md"
    )


def test_no_library_module_imports_a_command():
    wrong = [
        f"{m} imports the command {i}"
        for m, imports in graph().items()
        if layer(m) not in ("command",)
        for i in imports
        if layer(i) == "command"
    ]
    assert not wrong, "\n".join(wrong)


def test_each_layer_imports_only_layers_below_it():
    wrong = [
        f"{m} ({layer(m)}) imports {i} ({layer(i)})"
        for m, imports in graph().items()
        for i in imports
        if layer(m) != "command" and rank(i) > rank(m)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for i in sorted(edges.get(m, ())):
            if state.get(i) == 1:
                circles.append(" -> ".join([*path[path.index(i) :], i]))
            elif i not in state:
                visit(i, [*path, i])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def test_the_checker_sees_a_bad_import(tmp_path):
    """The rules above read real imports: an upward one in a scratch file is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from hw1.training.run import train\n\ndef f():\n    import hw1.train\n")
    assert hw1_imports(bad, set(modules())) == {"hw1.training.run", "hw1.train"}
    assert rank("hw1.training.run") > rank("hw1.data.scan")
    assert layer("hw1.train") == "command"
