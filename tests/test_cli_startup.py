"""The command line starts fast: ``import ssgan``, ``ssgan --help``, every command's ``--help`` and a usage error
load no torch or torchvision (4-8 s on a busy 2-core machine); a command imports what it runs in its own body.
Each check runs in a fresh interpreter, where ``sys.modules`` shows what was really imported."""

from __future__ import annotations

import json
import subprocess
import sys

from ssgan.cli import COMMANDS, EXPORT_FORMATS

HEAVY = ("torch", "torchvision", "sklearn", "matplotlib")


def _imported_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; which of HEAVY it imported, and what it printed."""
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    *printed, heavy = done.stdout.strip().splitlines()
    return {"heavy": json.loads(heavy), "stdout": "\n".join(printed), "stderr": done.stderr}


def test_import_ssgan_loads_no_torch():
    assert _imported_after("import ssgan")["heavy"] == []


def test_help_and_usage_errors_load_no_torch():
    calls = [["--help"], ["--version"], *[[command, "--help"] for command in COMMANDS],
             ["nosuchcommand"], ["fit", "--labels", "many"], ["fit", "stray"], ["fit", "train.epochs=-1"],
             ["fit", "--seeds", "0"], ["table"], ["evaluate"], ["sample", "run", "--no-grid"],
             ["export", "run", "--format", "pickle"]]
    seen = _imported_after(
        "import contextlib, io\n"
        "from ssgan.cli import main\n"
        f"for argv in {calls!r}:\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        "    print(argv, code, repr(err.getvalue().strip().splitlines()[-1:]))\n")
    lines = seen["stdout"].splitlines()
    assert len(lines) == len(calls)
    help_calls, errors = lines[:2 + len(COMMANDS)], lines[2 + len(COMMANDS):]
    assert all(" 0 " in line for line in help_calls), help_calls
    assert all(" 2 " in line and "error" in line for line in errors), errors  # one line each, exit code 2
    assert seen["heavy"] == [], seen["heavy"]


def test_the_export_formats_of_the_parser_are_export_formats():
    from ssgan.export import FORMATS

    assert set(EXPORT_FORMATS) == set(FORMATS)
