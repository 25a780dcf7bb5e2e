"""The README and the manual (docs/, built with MkDocs) cannot drift from the code: the manual builds in strict mode
(a broken link, a missing page or an API reference that no longer resolves fails), the README stays one page, and
every ``ssgan`` command of a ``bash`` block of either runs, in-process, with tiny epochs.

Every ``python`` block runs too, with ``epochs=N`` made 1. A command that needs what a test machine lacks says so
in its comment with ``[needs ...]`` (a GPU, a cluster, a download, the Inception weights; for a python block, in
its first line) and is skipped; the placeholders RUN_DIR and OTHER_RUN_DIR stand for finished
runs, and digit.png, digits/ and digits.npz are images the test writes. Lines that are not ``ssgan`` commands (pip,
pytest, the benchmarks' scripts) are not run here: the CI runs the first two, the benchmarks have their own tests
where they have any.
"""

from __future__ import annotations

import glob
import importlib.util
import re
import shlex
import shutil
import subprocess
import textwrap
import sys
from pathlib import Path

import numpy as np
import pytest

from ssgan.cli import main
from tests.conftest import TINY_SEEDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TINY = [*TINY_SEEDS, "train.checkpoint_every=1"]  # (labels: the command's own, or the data set's)
README_LIMIT = 15 * 1024


def commands(page: Path) -> list:
    """(line number, command, comment) of every ``ssgan`` command in the page's bash blocks; a line ending in a
    backslash continues on the next."""
    found, fence, pending, start = [], None, "", 0
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip()
            continue
        if fence != "bash":
            continue
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue  # a comment line or a blank one
        if not pending:
            start = number
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        text, _, comment = pending.partition(" #")
        pending = ""
        words = shlex.split(text)
        if words[:1] == ["ssgan"] or words[:3] == ["python", "-m", "ssgan"]:
            found.append((start, text.strip(), comment))
    return found


ALL = [(page, number, text, comment) for page in PAGES for number, text, comment in commands(page)]


def python_blocks(page: Path) -> list:
    """(line number, code) of every ``python`` block of the page, dedented (a block inside a list item)."""
    found, fence, lines, start = [], None, [], 0
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            if fence == "python":
                found.append((start, textwrap.dedent("\n".join(lines))))
            fence = None if fence is not None else line.strip()[3:].strip()
            lines, start = [], number + 1
        elif fence == "python":
            lines.append(line)
    return found


PYTHON = [(page, number, code) for page in PAGES for number, code in python_blocks(page)]


def test_the_pages_have_commands_and_mark_what_needs_a_gpu():
    runnable = [c for c in ALL if "[needs " not in c[3]]
    assert len(runnable) >= 20 and len(ALL) > len(runnable)
    gpu_words = ("cifar10", "svhn", "mnist", "slurm", "hydra/launcher=local")
    for page, number, text, comment in runnable:  # a recipe of a downloaded data set or a cluster is marked
        assert not any(word in text for word in gpu_words), f"{page.name}:{number}: {text} (mark it [needs ...])"


def test_the_readme_is_one_page():
    assert (ROOT / "README.md").stat().st_size <= README_LIMIT


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two tiny finished runs of the digits default (seeds 0 and 1), to stand for RUN_DIR and OTHER_RUN_DIR."""
    base = tmp_path_factory.mktemp("doc-runs")
    for seed in (0, 1):
        assert main(["fit", "--seed", str(seed), "--run-dir", str(base / f"run{seed}"), *TINY,
                     "dataset.labels=20"]) == 0
    return base / "run0", base / "run1"


def _inputs(where: Path) -> None:
    """digit.png, digits/ (two images) and digits.npz: the inputs the pages' predict commands name."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = (load_digits().images[:4] * 255 / 16).astype(np.uint8)
    Image.fromarray(images[0]).save(where / "digit.png")
    (where / "digits").mkdir()
    for k in (1, 2):
        Image.fromarray(images[k]).save(where / "digits" / f"d{k}.png")
    np.savez(where / "digits.npz", x=load_digits().images[:4])


def _argv(text: str, run: Path, other: Path) -> list:
    """The command's words, placeholders replaced, tiny epochs added where it trains."""
    words = shlex.split(text)
    words = words[3:] if words[0] == "python" else words[1:]
    words = [w.replace("OTHER_RUN_DIR", str(other)).replace("RUN_DIR", str(run)) for w in words]
    words = [sorted(glob.glob(w.replace("<timestamp>", "*")))[-1] if "<timestamp>" in w else w for w in words]
    if words[0] in ("fit", "table") and "--help" not in words and "--from" not in words:
        if "--resume" in words:  # a finished tiny run: train one more epoch
            words = [w for w in words if not w.startswith("train.epochs=")] + ["train.epochs=2"]
        else:
            if "--epochs" in words:  # the page's epochs, made tiny (a flag and train.epochs= would contradict)
                words[words.index("--epochs") + 1] = "1"
            tiny = [w for w in TINY if not (w.startswith("train.epochs=") and "--epochs" in words)]
            words = words + [w for w in tiny if w.split("=")[0] not in " ".join(words)]
    return words


@pytest.mark.parametrize("page, number, text, comment", ALL,
                         ids=[f"{p.name}:{n}" for p, n, _, _ in ALL])
def test_every_command_of_the_pages_runs(page, number, text, comment, finished_runs, tmp_path, monkeypatch,
                                          capsys):
    if "[needs " in comment:
        pytest.skip(comment.split("[needs ", 1)[1].split("]")[0])
    monkeypatch.chdir(tmp_path)
    run, other = (shutil.copytree(r, tmp_path / "given" / r.name) for r in finished_runs)  # fresh: none is reused
    _inputs(tmp_path)
    if "--from" in text and "multirun" in text:  # the sweep it aggregates, trained as the pages train it
        assert main(["fit", "-m", "seed=0,1", *TINY]) == 0
    code = main(_argv(text, run, other))
    captured = capsys.readouterr()
    assert code == 0, f"{page.name}:{number}: {text}\n{captured.err[-2000:]}"


@pytest.mark.parametrize("page, number, code", PYTHON, ids=[f"{p.name}:{n}" for p, n, _ in PYTHON])
def test_every_python_block_of_the_pages_runs(page, number, code, finished_runs, tmp_path, monkeypatch, capsys):
    """The README's and the manual's Python, with tiny epochs (epochs=N -> epochs=1) and RUN_DIR a finished run
    (exported first where the block reads its ONNX file)."""
    if "[needs " in code.splitlines()[0]:
        pytest.skip(code.splitlines()[0].split("[needs ", 1)[1].split("]")[0])
    monkeypatch.chdir(tmp_path)
    run = shutil.copytree(finished_runs[0], tmp_path / "run")
    if "model.onnx" in code:
        pytest.importorskip("onnxruntime")
        assert main(["export", str(run), "--format", "onnx"]) == 0
    code = re.sub(r"epochs=\d+", "epochs=1", code).replace("RUN_DIR", str(run))
    exec(compile(code, f"{page.name}:{number}", "exec"), {"__name__": "__doc_block__"})


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs and mkdocstrings[python] are not installed (the dev extra)")
def test_the_manual_builds_in_strict_mode(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "estimator" / "index.html").is_file()


def test_every_page_of_the_manual_is_in_its_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    missing = sorted(p for p in pages if not re.search(rf":\s*{re.escape(p)}\s*$", nav, re.MULTILINE))
    assert missing == []


def test_the_readmes_links_lead_to_files():
    links = re.findall(r"\]\(([^)#]+)\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert links and [link for link in links if not link.startswith("http") and not (ROOT / link).exists()] == []


def test_the_module_map_lists_every_module_in_the_order_of_the_layers():
    from tests.test_layout import LAYERS

    listed = re.findall(r"^::: ssgan\.(\w+)$", (ROOT / "docs" / "reference" / "index.md").read_text(), re.MULTILINE)
    assert listed == [name for layer in LAYERS for name in layer if name != "__main__"]
