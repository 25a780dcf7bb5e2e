"""The package's layering: each module imports only from the modules below it, so the imports read as one
chain, config -> data, layers -> models -> ... -> train -> concurrent -> seeds -> reports -> cli, with no
arrow back up; only the entry points import the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import ssgan

# Lowest first. Modules on one line may not import each other.
LAYERS = [
    ["config"],
    ["data", "layers", "losses", "optim", "plots"],
    ["models", "density"],
    ["evaluate"],
    ["rundir"],
    ["engines"],
    ["accelerate", "concurrent"],
    ["train"],
    ["seeds"],
    ["reports"],
    ["estimator", "export", "quality"],
    ["cli"],
    ["launch"],
    ["__main__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
PACKAGE = Path(ssgan.__file__).parent


def _imports(path: Path) -> set:
    """The ssgan modules a file imports (``from .x import``, ``from . import x``, ``import ssgan.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssgan."):
            names.add(node.module.split(".")[1])
    return {name for name in names if (PACKAGE / f"{name}.py").exists()} - {"__init__"}  # not ssgan.__version__


def test_every_module_has_a_place_in_the_chain():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(RANK)


def test_no_module_imports_one_above_it():
    for path in PACKAGE.glob("*.py"):
        if path.stem == "__init__":
            continue  # ssgan.SSGANClassifier / ssgan.load, imported on first use
        for name in _imports(path):
            assert RANK[name] < RANK[path.stem], f"{path.name} imports {name}, a module above it in the chain"


def test_only_the_entry_points_import_the_command_line():
    for path in PACKAGE.glob("*.py"):
        if path.stem not in ("cli", "launch", "__main__"):
            assert "cli" not in _imports(path), path.name
    for path in (PACKAGE.parent / "benchmarks").glob("*.py"):
        assert "from ssgan.cli" not in path.read_text(encoding="utf-8"), path.name
