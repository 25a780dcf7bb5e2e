"""The package's layering: each module imports only from the modules below it, so the imports read as one
chain, hydra_state -> config -> data, layers -> models -> ... -> rundir -> records, checkpoint -> ... -> train
-> concurrent -> seeds -> reports -> table -> command_line -> fit_command -> cli, with no arrow back up; only the entry points import
the command line, and the benchmarks never do (they call the library: ssgan.make_table, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

import ssgan

# Lowest first. Modules on one line may not import each other.
LAYERS = [
    ["hydra_state", "fields"],
    ["config"],
    ["data", "layers", "losses", "optim", "plots", "signals", "trust"],
    ["models", "objectives"],
    ["evaluate"],
    ["rundir"],
    ["ood"],
    ["records", "checkpoint", "density"],
    ["engines"],
    ["accelerate", "concurrent", "feed"],
    ["train"],
    ["seeds"],
    ["reports"],
    ["table"],
    ["estimator", "export", "quality"],
    ["command_line"],
    ["fit_command"],
    ["cli"],
    ["launch"],
    ["__main__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
PACKAGE = Path(ssgan.__file__).parent


def _imports(path: Path) -> set:
    """The ssgan modules a file imports, at any depth (inside functions too) and in any form: ``from .x import``,
    ``from . import x``, ``from ssgan.x import``, ``from ssgan import x``, ``import ssgan.x``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or (node.level == 0 and module.split(".")[0] == "ssgan"):
                parts = module.split(".")[node.level == 0:]  # ssgan.x -> x, .x -> x
                names |= {parts[0]} if parts and parts[0] else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ssgan.")}
    return {name for name in names if (PACKAGE / f"{name}.py").exists()} - {"__init__"}  # not ssgan.__version__


def test_every_import_form_is_seen(tmp_path):
    """The checks below see an import however it is written, also one inside a function."""
    forms = ["from .cli import main", "from . import cli", "from ssgan.cli import main", "from ssgan import cli",
             "import ssgan.cli", "import ssgan.cli as c", "def f():\n    from ssgan.cli import main"]
    probe = tmp_path / "probe.py"
    for form in forms:
        probe.write_text(form + "\n")
        assert _imports(probe) == {"cli"}, form
    probe.write_text("import ssgan\nfrom ssgan import __version__\n")
    assert _imports(probe) == set()


def test_every_module_has_a_place_in_the_chain():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(RANK)


def test_no_module_imports_one_above_it():
    for path in PACKAGE.glob("*.py"):
        if path.stem == "__init__":
            continue  # ssgan.SSGANClassifier / ssgan.load, imported on first use
        for name in _imports(path):
            assert RANK[name] < RANK[path.stem], f"{path.name} imports {name}, a module above it in the chain"


COMMAND_LINE = {"cli", "fit_command", "command_line"}  # parsing, printing, exit codes; the library never calls them


def test_only_the_entry_points_import_the_command_line():
    for path in PACKAGE.glob("*.py"):
        if path.stem not in ("launch", "__main__", *COMMAND_LINE):  # (its own modules import each other, upward)
            assert not COMMAND_LINE & _imports(path), path.name
    for path in (PACKAGE.parent / "benchmarks").glob("*.py"):  # they call the library (ssgan.make_table, ...)
        assert not COMMAND_LINE & _imports(path), path.name


def _plain_writes(path: Path) -> list:
    """The lines of a file that write a file other than through rundir's atomic writers: ``open(..., "w")``
    (or "a", "x", binary too), ``Path.write_text`` / ``write_bytes``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("write_text", "write_bytes"):
            found.append(node.lineno)
        elif isinstance(node.func, ast.Name) and node.func.id == "open":
            modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
            if any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wax") for m in modes):
                found.append(node.lineno)
    return found


def test_the_benchmarks_write_their_results_atomically():
    """A benchmark killed while it writes leaves its previous results file, never half of one: the files go
    through rundir.atomic_write. (gpu_*.py, the lent GPU's scripts, are left to their own change.)"""
    for path in (PACKAGE.parent / "benchmarks").glob("*.py"):
        if not path.name.startswith("gpu_"):
            assert not _plain_writes(path), f"{path.name}: plain writes at lines {_plain_writes(path)}"


def test_no_module_over_600_lines_and_no_function_over_50():
    """Sizes a reader can hold: a module on a few screens, a function on one."""
    for path in PACKAGE.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 600, f"{path.name}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 50, f"{path.name}:{node.lineno} {node.name} is {length} lines"
